"""Constrained decoding to the candidate list: every completion is a valid ``<answer>`` list of ``top_k``
distinct candidate positions in the answer parser's own format (:mod:`recrepro.agent.parser`).

ReRe (arXiv 2510.12211, :mod:`recrepro.baselines.rere`) generates under an item-trie constraint during
training (beam search) and at test time; this is that constraint on the kit's protocol (PAPER.md 1.1),
as a transformers ``LogitsProcessor`` and a context that adds it to a model's ``generate``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from recrepro.agent.generators import stop_token_ids
from recrepro.agent.parser import ANSWER_CLOSE, ANSWER_OPEN, BOXED, format_answer
from recrepro.baselines.sft import target_ranking

ANSWER_PREFIX = f"{ANSWER_OPEN}{BOXED}["  # what format_answer writes before the first index
ANSWER_SUFFIX = f"]}}{ANSWER_CLOSE}"  # and after the last
SEPARATOR = ", "


def answer_token_budget(n_candidates: int, top_k: int) -> int:
    """Tokens the longest answer can take (no token is empty), end of turn included."""
    return len(format_answer(range(n_candidates - top_k + 1, n_candidates + 1))) + 1


class CandidateListGrammar:
    """The token sequences of valid answers for one tokenizer, ``n_candidates`` and ``top_k``.

    An answer is written in its pieces' own tokens, as the tokenizer encodes them: the prefix
    ``<answer>\\boxed{[``, the first index, then ``, <index>`` per further index, then
    ``]}</answer>`` and the end of turn (the first of ``stop_ids``); each index in 1..n, none twice, exactly
    ``top_k``. The tokenizer must encode a whole answer as the concatenation of its pieces (checked
    here; true of byte-level BPE, whose pre-tokenizer splits digits from punctuation). One token
    sequence per answer, so distinct beams are distinct answers (ReRe's item trie does the same).
    A state is (phase, indices written, tokens of the piece under way); an index is committed when
    the next piece starts (``1`` may still become ``12``).
    """

    def __init__(self, tokenizer: Any, n_candidates: int, top_k: int, stop_ids: Sequence[int] | None = None) -> None:
        if not 1 <= top_k <= n_candidates:
            raise ValueError(f"top_k={top_k} needs 1 <= top_k <= n_candidates={n_candidates}")
        self.n, self.top_k = int(n_candidates), int(top_k)
        self.stop_ids = tuple(int(i) for i in (stop_ids if stop_ids is not None else stop_token_ids(tokenizer)))

        def encode(text: str) -> tuple[int, ...]:
            return tuple(tokenizer.encode(text, add_special_tokens=False))

        self.open, self.close = encode(ANSWER_PREFIX), encode(ANSWER_SUFFIX)
        self.first = {i: encode(str(i)) for i in range(1, self.n + 1)}
        self.then = {i: encode(SEPARATOR + str(i)) for i in range(1, self.n + 1)}
        for first in range(1, self.n + 1):  # every index once first, and after others
            ranking = target_ranking(self.n, first, self.top_k)
            if encode(format_answer(ranking)) != self.tokens(ranking):
                raise ValueError(f"the tokenizer does not encode {format_answer(ranking)!r} as its pieces")
        pieces = (self.open, self.close, *self.first.values(), *self.then.values())
        self.pool = sorted({t for seq in pieces for t in seq})
        self.start: tuple = ("open", frozenset(), ())
        self._allowed: dict[tuple, list[int]] = {}

    def tokens(self, ranking: Sequence[int]) -> tuple[int, ...]:
        """The token ids of the answer for ``ranking`` (without the end of turn)."""
        ranking = [int(i) for i in ranking]
        return sum((self.then[i] for i in ranking[1:]), self.open + self.first[ranking[0]]) + self.close

    def _pieces(self, used: frozenset) -> dict[int | None, tuple[int, ...]]:
        """What may come next after the indices ``used``: an unused index (key) or the closing (None)."""
        if len(used) == self.top_k:
            return {None: self.close}
        pieces = self.then if used else self.first
        return {i: seq for i, seq in pieces.items() if i not in used}

    def advance(self, state: tuple | None, token: int) -> tuple | None:
        """The state after ``token``, or None when the answer cannot continue with it."""
        if state is None or state[0] == "end":
            return None
        phase, used, partial = state
        extended = partial + (int(token),)
        if phase == "open":
            if self.open[:len(extended)] != extended:
                return None
            return ("body", used, ()) if extended == self.open else ("open", used, extended)
        pieces = self._pieces(used)
        if any(seq[:len(extended)] == extended for seq in pieces.values()):
            return ("end", used, ()) if pieces.get(None) == extended else ("body", used, extended)
        done = next((i for i, seq in pieces.items() if i is not None and seq == partial), None)
        return None if done is None else self.advance(("body", used | {done}, ()), token)

    def allowed(self, state: tuple) -> list[int]:
        """Token ids that may come next: the first stop id once the answer is complete (one way to end,
        or two beams could be one answer)."""
        if state not in self._allowed:
            self._allowed[state] = (list(self.stop_ids[:1]) if state[0] == "end"
                                    else [t for t in self.pool if self.advance(state, t) is not None])
        return self._allowed[state]


class CandidateListLogitsProcessor(LogitsProcessor):
    """Masks (to -inf) every token that cannot continue a valid answer (:class:`CandidateListGrammar`). A row's
    answer starts at ``prompt_length`` (the left-padded prompt width); a row holding a stop id is finished
    and left alone; a row outside the grammar (only a beam already scored -inf can be) may only stop."""

    def __init__(self, grammar: CandidateListGrammar, prompt_length: int) -> None:
        self.grammar, self.prompt_length = grammar, int(prompt_length)
        self._states: dict[tuple[int, ...], tuple | None] = {(): grammar.start}
        self.dead_rows = 0

    def state(self, ids: tuple[int, ...]) -> tuple | None:
        if ids not in self._states:
            self._states[ids] = self.grammar.advance(self.state(ids[:-1]), ids[-1])
        return self._states[ids]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        keep = torch.zeros_like(scores, dtype=torch.bool)
        stops = set(self.grammar.stop_ids)
        for row, ids in enumerate(input_ids[:, self.prompt_length:].tolist()):
            if stops.intersection(ids):
                keep[row] = True
                continue
            state = self.state(tuple(ids))
            if state is None:
                self.dead_rows += 1
            allowed = self.grammar.allowed(state) if state is not None else list(self.grammar.stop_ids)
            keep[row, allowed] = True
        return scores.masked_fill(~keep, float("-inf"))


def _first_of_groups(tensor: torch.Tensor, group: int) -> torch.Tensor:
    if tensor.shape[0] % group or not all(torch.equal(tensor[i], tensor[i - i % group])
                                          for i in range(tensor.shape[0])):
        raise ValueError(f"beam search needs the rows in whole groups of {group} identical prompts; got "
                         f"{tensor.shape[0]} rows (keep rta.batch_size a multiple of processes x accumulation)")
    return tensor[::group]


@contextlib.contextmanager
def constrained_generation(model: Any, grammar: CandidateListGrammar) -> Iterator[None]:
    """While open, ``model.generate`` (what TRL's transformers path calls) adds the candidate-list
    processor and ignores the model's ``generation_config``: every setting comes from the config passed
    by the caller or transformers' global defaults, never from a ``generation_config.json``. With
    ``num_return_sequences`` = G > 1 (beam search) the rows come in groups of G identical prompts:
    each group is generated once and its G beams, best first, fill the group."""
    if "generate" in vars(model):
        raise RuntimeError("model.generate is already replaced on this instance")
    original = model.generate
    holder = model.get_base_model() if hasattr(model, "get_base_model") else model

    def generate(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 generation_config: GenerationConfig | None = None, **kwargs: Any) -> torch.Tensor:
        group = int(getattr(generation_config, "num_return_sequences", None) or 1)
        if group > 1:
            input_ids = _first_of_groups(input_ids, group)
            attention_mask = None if attention_mask is None else _first_of_groups(attention_mask, group)
        processor = CandidateListLogitsProcessor(grammar, input_ids.shape[1])
        saved, holder.generation_config = holder.generation_config, GenerationConfig()
        try:
            return original(input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config,
                            logits_processor=LogitsProcessorList([processor]), **kwargs)
        finally:
            holder.generation_config = saved

    model.generate = generate
    try:
        yield
    finally:
        del model.generate
