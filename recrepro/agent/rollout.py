"""Batched multi-turn rollouts: many instances x several samples, all live trajectories in one call.

The engine runs the ReAct loop of PAPER.md 1.3 for a whole set of trajectories at once:

1. every trajectory starts from its prompt rendered with the chat template (tools listed through
   ``tools=`` for the tool-using variant);
2. all unfinished trajectories are generated for in ONE batched call (left padding; with
   ``settings.batch_size`` set, in chunks of at most that many);
3. each new turn is parsed with :mod:`recrepro.agent.parser`; tool calls are executed through the
   trajectory's own :class:`~recrepro.agent.env.RecAgentEnv`; the tool messages are appended in the
   chat template's own format; a turn without tool calls is the final answer;
4. steps 2-3 repeat until every trajectory has answered, broken a rule (bad tool call, budget) or
   hit a token limit.

Token bookkeeping follows TRL 1.16's tool loop: a trajectory's tokens are the prompt, then the
tokens the model generated, then the chat template's rendering of the tool messages (computed the
way ``GRPOTrainer._get_tool_suffix_ids`` does), concatenated without re-tokenising. So what the
model saw in a rollout is exactly what a trainer will score, and ``completion_mask`` marks which
tokens the model produced (1) and which came from tools (0).

Generation settings are set explicitly in a :class:`transformers.GenerationConfig` built here from
:class:`RolloutSettings`; nothing is inherited from the model's own generation config (a hub
model's defaults, such as top_k=20, would silently change sampling). Greedy mode
(``do_sample=False``) is for tests and benchmarks. Sampled rollouts are reproducible for the same
seed and the same batch composition.

Generators (the ``generate`` back ends): :class:`HFGenerator` (transformers ``model.generate``,
CPU or GPU, with optional reuse of each trajectory's KV cache across turns); :class:`VLLMGenerator`
(vLLM, used when installed and a GPU is present; code path kept, not run in CI);
:class:`OpenAICompletionsGenerator` (an OpenAI-compatible ``/v1/completions`` endpoint; off by
default, code path only).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

from recrepro.agent.env import Episode, RecAgentEnv, ToolCallRecord, env_tools, tool_schemas
from recrepro.agent.parser import TrajectoryVerdict, check_call_against_schema, parse_tool_calls
from recrepro.agent.prompt import render_prompt


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RolloutSettings:
    """Every knob of generation, set explicitly (never read from the model's generation config)."""

    do_sample: bool = False  # False = greedy (tests, benchmarks, deterministic evaluation)
    temperature: float = 0.6  # [N] PAPER.md 1.4 rollout temperature; used only when sampling
    top_p: float = 1.0  # [G] no nucleus cut unless asked
    top_k: int = 0  # [G] 0 = off (transformers' own default would be 50)
    max_new_tokens_per_turn: int = 256  # [G] one assistant turn
    max_new_tokens_total: int = 6144  # [N] PAPER.md 1.4 maximum generation, summed over turns
    max_context_tokens: int | None = None  # None = the model's max_position_embeddings
    seed: int = 0
    batch_size: int | None = None  # None = every live trajectory in one generate call
    reuse_cache: bool = True  # HFGenerator: keep each trajectory's KV cache across turns
    # Tokens per generate call within a turn; None = a whole turn per call. With a value, turns that
    # have ended leave the batch between calls instead of idling until the longest turn ends (a
    # cheap form of continuous batching; with reuse_cache nothing is encoded twice). Greedy output
    # is the same either way.
    segment_tokens: int | None = None
    progress: bool = True  # tqdm bar over finished trajectories


def build_generation_config(settings: RolloutSettings, eos_token_ids: Sequence[int], pad_token_id: int,
                            max_new_tokens: int) -> Any:
    """A GenerationConfig from our settings only; sampling knobs are dropped in greedy mode."""
    from transformers import GenerationConfig

    common = dict(max_new_tokens=max_new_tokens, eos_token_id=list(eos_token_ids), pad_token_id=pad_token_id,
                  use_cache=True, num_beams=1, repetition_penalty=1.0, return_dict_in_generate=True)
    if not settings.do_sample:
        return GenerationConfig(do_sample=False, **common)
    return GenerationConfig(do_sample=True, temperature=settings.temperature, top_p=settings.top_p,
                            top_k=settings.top_k, **common)


def stop_token_ids(tokenizer: Any) -> list[int]:
    """End-of-turn ids: ``<|im_end|>`` (the Qwen3 eos) and ``<|endoftext|>`` where present."""
    ids = [tokenizer.eos_token_id]
    extra = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(extra, int) and extra != tokenizer.unk_token_id and extra not in ids:
        ids.append(extra)
    return [i for i in ids if i is not None]


# --------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GenRequest:
    key: int  # trajectory id, stable across turns (lets a generator keep per-trajectory state)
    ids: list[int]  # the whole sequence so far


@dataclass(frozen=True)
class GenOutput:
    new_ids: list[int]  # up to and including the first stop token, or up to the limit
    stopped: bool  # a stop token ended the turn


class Generator(Protocol):
    def generate(self, requests: Sequence[GenRequest], settings: RolloutSettings, max_new_tokens: int,
                 seed: int) -> list[GenOutput]: ...

    def release(self, key: int) -> None: ...


def _cut_at_stop(tokens: Sequence[int], stops: set[int]) -> GenOutput:
    for i, token in enumerate(tokens):
        if token in stops:
            return GenOutput(list(tokens[: i + 1]), True)
    return GenOutput(list(tokens), False)


class HFGenerator:
    """transformers ``model.generate`` on a left-padded batch, optionally reusing KV caches.

    With ``settings.reuse_cache``, the keys and values a trajectory's tokens produced in earlier
    turns are kept (compactly, without padding) and handed back as ``past_key_values``, so a turn
    only encodes its new tokens (the tool results). Those are encoded row by row, unpadded (on a CPU
    a padded prefill costs two to three times more per row, for the padding mask and the slower
    masked attention kernel), all but the last token; the batched ``generate`` call then gets one
    new token per row over a left-padded cache, ``[pad][cached tokens][new token]``, and does all
    the decoding. transformers derives position ids from the attention mask's cumulative sum, so
    every real token keeps the position it has in the unpadded sequence and the result equals
    encoding the whole sequence again (up to float rounding).

    A registered prefix (:meth:`register_prefix`: the system turn and tool schemas every prompt
    shares) is encoded once, unpadded, and serves as the cached part of every trajectory's first
    turn -- what vLLM's automatic prefix caching does on a GPU.
    """

    def __init__(self, model: Any, tokenizer: Any, device: str | None = None) -> None:
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.device = device or str(next(model.parameters()).device)
        self.stops = stop_token_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stops[0]
        self._torch = torch
        self._kv: dict[int, tuple[int, list[tuple[Any, Any]]]] = {}  # key -> (n cached tokens, per-layer (k, v))
        self._prefixes: list[tuple[tuple[int, ...], list[tuple[Any, Any]]]] = []

    def release(self, key: int) -> None:
        self._kv.pop(key, None)

    def register_prefix(self, ids: Sequence[int]) -> None:
        """Encode ``ids`` once; trajectories whose tokens start with it reuse its keys and values."""
        ids = tuple(int(i) for i in ids)
        if not ids or any(prefix == ids for prefix, _ in self._prefixes):
            return
        with self._torch.no_grad():
            out = self.model(input_ids=self._torch.tensor([ids], device=self.device), use_cache=True)
        layers = [(layer.keys[0].clone(), layer.values[0].clone()) for layer in out.past_key_values.layers]
        self._prefixes.append((ids, layers))

    def _cached(self, request: GenRequest, settings: RolloutSettings) -> tuple[int, list] | None:
        """(n cached tokens, per-layer keys/values) for a request: its own cache, else a prefix."""
        if not settings.reuse_cache:
            return None
        own = self._kv.get(request.key)
        if own is not None and own[0] < len(request.ids):
            return own
        best = None
        for prefix, layers in self._prefixes:
            n = len(prefix)
            if n < len(request.ids) and tuple(request.ids[:n]) == prefix and (best is None or n > best[0]):
                best = (n, layers)
        return best

    def generate(self, requests: Sequence[GenRequest], settings: RolloutSettings, max_new_tokens: int,
                 seed: int) -> list[GenOutput]:
        torch = self._torch
        config = build_generation_config(settings, self.stops, self.pad_id, max_new_tokens)
        cached = [self._cached(r, settings) for r in requests]
        if settings.reuse_cache:
            # Encode each row's new tokens but the last on its own (unpadded: the fast causal kernel,
            # no padding mask); the batched call then starts from one new token per row.
            cached = [self._encode_row(c, r.ids) if len(r.ids) - (c[0] if c else 0) > 1 else c
                      for c, r in zip(cached, requests)]
        n_cached = [c[0] if c is not None else 0 for c in cached]
        if not any(n_cached):
            cached = [None] * len(requests)
        width_c = max(n_cached)
        width_n = max(len(r.ids) - n for r, n in zip(requests, n_cached))
        ids = torch.full((len(requests), width_c + width_n), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (request, n) in enumerate(zip(requests, n_cached)):
            new = request.ids[n:]
            ids[row, width_c - n: width_c] = torch.tensor(request.ids[:n], dtype=torch.long)
            ids[row, width_c + width_n - len(new):] = torch.tensor(new, dtype=torch.long)
            mask[row, width_c - n: width_c] = 1
            mask[row, width_c + width_n - len(new):] = 1
        kwargs: dict[str, Any] = {}
        if width_c:
            kwargs["past_key_values"] = self._batch_cache(cached, n_cached, width_c)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      generation_config=config, **kwargs)
        sequences = out.sequences.cpu()
        results = [_cut_at_stop(sequences[row, ids.shape[1]:].tolist(), set(self.stops))
                   for row in range(len(requests))]
        if settings.reuse_cache:
            self._keep_cache(requests, results, mask, out.past_key_values)
        return results

    def _encode_row(self, entry: tuple[int, list] | None, ids: Sequence[int]) -> tuple[int, list]:
        """Extend one row's cache over ``ids[n:-1]`` with a batch-of-one forward pass."""
        from transformers import DynamicCache

        torch = self._torch
        n = entry[0] if entry is not None else 0
        cache = DynamicCache(config=self.model.config)
        if entry is not None:
            for layer, (keys, values) in enumerate(entry[1]):
                cache.update(keys[:, :n].unsqueeze(0), values[:, :n].unsqueeze(0), layer)
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([list(ids[n:-1])], device=self.device), past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
        return len(ids) - 1, [(layer.keys[0], layer.values[0]) for layer in out.past_key_values.layers]

    def _batch_cache(self, cached: list, n_cached: list[int], width: int) -> Any:
        """A DynamicCache of ``width`` positions; row i holds its cached tokens right-aligned.

        (A StaticCache, written in place instead of grown by concatenation, measured no faster for a
        batch on CPU here and twice as slow for a batch of one, so the default cache stays.)
        """
        from transformers import DynamicCache

        torch = self._torch
        cache = DynamicCache(config=self.model.config)
        template = next(c for c in cached if c is not None)[1]
        for layer, (k0, v0) in enumerate(template):
            keys = torch.zeros((len(cached), k0.shape[0], width, k0.shape[-1]), dtype=k0.dtype, device=k0.device)
            values = torch.zeros_like(keys)
            for row, (entry, n) in enumerate(zip(cached, n_cached)):
                if entry is not None and n:
                    keys[row, :, width - n:] = entry[1][layer][0][:, :n]
                    values[row, :, width - n:] = entry[1][layer][1][:, :n]
            cache.update(keys, values, layer)
        return cache

    def _keep_cache(self, requests: Sequence[GenRequest], results: list[GenOutput], mask: Any, cache: Any) -> None:
        """Store each row's keys/values for its real tokens (all but the last generated one)."""
        torch = self._torch
        width = mask.shape[1]
        for row, (request, result) in enumerate(zip(requests, results)):
            # The cache holds the input plus every generated token but the last (never fed back).
            real_input = mask[row].nonzero().flatten()
            n_gen_fed = max(len(result.new_ids) - 1, 0)
            positions = torch.cat([real_input, torch.arange(width, width + n_gen_fed)]).to(cache.layers[0].keys.device)
            layers = [(layer.keys[row][:, positions].clone(), layer.values[row][:, positions].clone())
                      for layer in cache.layers]
            self._kv[request.key] = (len(request.ids) + n_gen_fed, layers)


class VLLMGenerator:
    """vLLM back end (GPU): token-id prompts, prefix caching does the cross-turn reuse.

    Kept as a code path for the paper profile; it is not exercised on CPU machines.
    """

    def __init__(self, llm: Any, tokenizer: Any) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.stops = stop_token_ids(tokenizer)

    @classmethod
    def from_pretrained(cls, name_or_path: str, tokenizer: Any, **engine_kwargs: Any) -> "VLLMGenerator":
        from vllm import LLM  # guarded: only the gpu extra installs vLLM

        llm = LLM(model=str(name_or_path), enable_prefix_caching=True, **engine_kwargs)
        return cls(llm, tokenizer)

    def release(self, key: int) -> None:
        return None

    def generate(self, requests: Sequence[GenRequest], settings: RolloutSettings, max_new_tokens: int,
                 seed: int) -> list[GenOutput]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            max_tokens=max_new_tokens, stop_token_ids=self.stops, seed=seed, skip_special_tokens=False,
            temperature=settings.temperature if settings.do_sample else 0.0,
            top_p=settings.top_p if settings.do_sample else 1.0,
            top_k=(settings.top_k or -1) if settings.do_sample else -1,
        )
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=r.ids) for r in requests], params, use_tqdm=False)
        return [_cut_at_stop(list(o.outputs[0].token_ids), set(self.stops)) for o in outputs]


class OpenAICompletionsGenerator:
    """An OpenAI-compatible ``/v1/completions`` endpoint as the model (off by default; code path only).

    The rendered prompt text is sent as is and the returned text re-tokenised with our tokenizer,
    so the endpoint must serve a model whose tokenizer matches ``tokenizer``.
    """

    def __init__(self, base_url: str, model: str, tokenizer: Any, api_key: str | None = None,
                 timeout_s: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.tokenizer = tokenizer
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.stops = stop_token_ids(tokenizer)

    def release(self, key: int) -> None:
        return None

    def generate(self, requests: Sequence[GenRequest], settings: RolloutSettings, max_new_tokens: int,
                 seed: int) -> list[GenOutput]:
        import json
        import urllib.request

        prompts = [self.tokenizer.decode(r.ids, skip_special_tokens=False) for r in requests]
        body = {"model": self.model, "prompt": prompts, "max_tokens": max_new_tokens, "seed": seed,
                "temperature": settings.temperature if settings.do_sample else 0.0,
                "top_p": settings.top_p if settings.do_sample else 1.0,
                "stop": [self.tokenizer.convert_ids_to_tokens(i) for i in self.stops]}
        request = urllib.request.Request(f"{self.base_url}/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            choices = sorted(json.loads(response.read())["choices"], key=lambda c: c["index"])
        outputs = []
        for choice in choices:
            ids = self.tokenizer.encode(choice["text"], add_special_tokens=False)
            stopped = choice.get("finish_reason") == "stop"
            outputs.append(GenOutput(ids + ([self.stops[0]] if stopped else []), stopped))
        return outputs


def vllm_available() -> bool:
    """True when vLLM imports and a CUDA GPU is visible (the only case the vLLM path is used)."""
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


# --------------------------------------------------------------------------------------------
# Tasks, records and the engine
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AgentTask:
    """One benchmark instance to roll out: the dataset row (for ``env.reset``) and its prompt."""

    row: Mapping[str, Any]
    messages: list[dict[str, Any]]
    uses_tools: bool
    sample_id: int
    n_candidates: int
    target_index: int | None = None


@dataclass
class TrajectoryRecord:
    """Everything one trajectory produced; ``answer`` is None unless the answer is valid."""

    sample_id: int
    sample_index: int  # which of the n samples of this instance
    target_index: int | None
    messages: list[dict[str, Any]]
    turns: list[str]
    answer: tuple[int, ...] | None
    invalid_reason: str | None
    detail: str
    n_tool_calls: int
    calls_per_tool: dict[str, int]
    tool_calls: list[ToolCallRecord]
    n_tool_errors: int
    prompt_tokens: int
    tokens_generated: int  # tokens the model produced (tool tokens excluded)
    truncated: bool
    wall_s: float  # from the trajectory's first generate call to its end (batched: shared time)
    n_out_of_range: int = 0
    n_duplicates: int = 0
    prompt_ids: list[int] = field(default_factory=list, repr=False)
    completion_ids: list[int] = field(default_factory=list, repr=False)
    completion_mask: list[int] = field(default_factory=list, repr=False)  # 1 generated, 0 tool tokens

    @property
    def valid(self) -> bool:
        return self.invalid_reason is None


@dataclass
class _Live:
    key: int
    task: AgentTask
    sample_index: int
    env: RecAgentEnv
    ids: list[int]
    prompt_len: int
    messages: list[dict[str, Any]]
    mask: list[int] = field(default_factory=list)
    turns: list[str] = field(default_factory=list)
    partial: list[int] = field(default_factory=list)  # tokens of the turn being generated
    generated: int = 0
    truncated: bool = False
    started: float = 0.0


def tool_suffix_text(tokenizer: Any, tool_messages: Sequence[Mapping[str, Any]]) -> str:
    """What the chat template appends after an assistant turn for ``tool_messages``, up to and
    including the next assistant header.

    Same result as TRL's ``GRPOTrainer._get_tool_suffix_ids``: render a dummy tool-calling exchange
    with and without the tool messages and keep what follows the assistant turn's end-of-turn
    token. TRL first swaps in a prefix-preserving training template because Qwen3's own template
    renders the last assistant turn differently (an empty think block); counting end-of-turn tokens
    instead of comparing prefixes gives the same suffix without that swap (checked in the tests).
    """
    dummy = [{"role": "user", "content": "dummy"},
             {"role": "assistant", "content": "",
              "tool_calls": [{"type": "function", "function": {"name": "dummy", "arguments": {}}}]}]
    prefix = tokenizer.apply_chat_template(dummy, tokenize=False)
    full = tokenizer.apply_chat_template(dummy + [dict(m) for m in tool_messages], tokenize=False,
                                         add_generation_prompt=True)
    eos = tokenizer.eos_token
    if not eos or eos not in prefix:
        raise ValueError("the chat template does not end turns with the tokenizer's eos token")
    end, seen = -1, 0
    while seen < prefix.count(eos):
        end = full.index(eos, end + 1)
        seen += 1
    return full[end + len(eos):]


class RolloutEngine:
    """Runs tasks x n_samples trajectories through multi-turn tool calling, batched.

    ``env_factory`` makes one environment per trajectory (TRL's ``environment_factory`` contract);
    ``generator`` is one of the generators above (or a scripted stand-in in tests).
    """

    def __init__(self, generator: Generator, tokenizer: Any, env_factory: Callable[[], RecAgentEnv],
                 settings: RolloutSettings, top_k: int = 10, max_tool_calls: int = 10,
                 max_context_tokens: int | None = None) -> None:
        self.generator = generator
        self.tokenizer = tokenizer
        self.env_factory = env_factory
        self.settings = settings
        self.top_k = top_k
        self.max_tool_calls = max_tool_calls
        self.max_context = settings.max_context_tokens or max_context_tokens or 1 << 30
        probe = env_factory()
        self.schemas = tool_schemas(probe)
        self._probe_tools = env_tools(probe)

    # -- public --

    def run(self, tasks: Sequence[AgentTask], n_samples: int = 1, desc: str = "rollouts",
            first_key: int = 0) -> list[TrajectoryRecord]:
        """All trajectories of all tasks, batched; records in (task, sample) order.

        Trajectory keys (what generators see) are ``first_key + task_index * n_samples + sample``.
        """
        live = [self._start(key, task, s) for key, (task, s) in
                enumerate(((t, s) for t in tasks for s in range(n_samples)), start=first_key)]
        self._share_prefix([t.ids for t in live])
        done: dict[int, TrajectoryRecord] = {}
        bar = _progress(len(live), desc, self.settings.progress)
        step = 0
        while live:
            still = []
            for chunk in self._chunks(live):
                limit = max(self._turn_limit(t) for t in chunk)
                if self.settings.segment_tokens:
                    limit = min(limit, self.settings.segment_tokens)
                # One seed per (run, turn); the first key enters it so that the one-by-one loop's
                # samples of one instance differ from each other as the batched ones do.
                seed = self.settings.seed * 1_000_003 + first_key * 1_009 + step
                outputs = self.generator.generate([GenRequest(t.key, t.ids) for t in chunk], self.settings, limit,
                                                  seed)
                for traj, output in zip(chunk, outputs):
                    if self._advance(traj, output):
                        still.append(traj)
                    else:
                        done[traj.key] = self._finish(traj)
                        self.generator.release(traj.key)
                        bar.update(1)
            live = still
            step += 1
        bar.close()
        return [done[key] for key in sorted(done)]

    def run_one_by_one(self, tasks: Sequence[AgentTask], n_samples: int = 1,
                       desc: str = "one at a time") -> list[TrajectoryRecord]:
        """The reference loop: each trajectory runs alone to its end (batch of one)."""
        records = []
        self._share_prefix([self._prompt_ids(task) for task in tasks])  # the same prefix the batched run uses
        progress = self.settings.progress
        self.settings = _replace(self.settings, progress=False)
        try:
            bar = _progress(len(tasks) * n_samples, desc, progress)
            for t, task in enumerate(tasks):
                for s in range(n_samples):
                    record = self.run([task], 1, first_key=t * n_samples + s)[0]
                    record.sample_index = s
                    records.append(record)
                    bar.update(1)
            bar.close()
        finally:
            self.settings = _replace(self.settings, progress=progress)
        return records

    # -- internals --

    def _share_prefix(self, prompts: Sequence[Sequence[int]], min_tokens: int = 16) -> None:
        """Hand the prompts' longest common prefix to a generator that can encode it once."""
        distinct = {tuple(p) for p in prompts}
        register = getattr(self.generator, "register_prefix", None)
        if register is None or len(distinct) < 2:
            return
        first, *rest = distinct
        n = min(len(p) for p in distinct)
        for other in rest:
            n = next((i for i in range(n) if first[i] != other[i]), n)
        if n >= min_tokens:
            register(first[:n])

    def _prompt_ids(self, task: AgentTask) -> list[int]:
        tools = self._probe_tools if task.uses_tools else None
        text = render_prompt(self.tokenizer, task.messages, tools)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _start(self, key: int, task: AgentTask, sample_index: int) -> _Live:
        env = self.env_factory()
        env.reset(**dict(task.row))
        ids = self._prompt_ids(task)
        return _Live(key=key, task=task, sample_index=sample_index, env=env, ids=list(ids), prompt_len=len(ids),
                     messages=copy.deepcopy(task.messages), started=time.perf_counter())

    def _chunks(self, live: list[_Live]) -> list[list[_Live]]:
        size = self.settings.batch_size or len(live)
        ordered = sorted(live, key=lambda t: len(t.ids))  # similar lengths together: less padding
        return [ordered[i: i + size] for i in range(0, len(ordered), size)]

    def _turn_limit(self, traj: _Live) -> int:
        """New tokens this trajectory may still generate in its current turn."""
        left_turn = self.settings.max_new_tokens_per_turn - len(traj.partial)
        left_total = self.settings.max_new_tokens_total - traj.generated
        left_context = self.max_context - len(traj.ids)
        return max(1, min(left_turn, left_total, left_context))

    def _advance(self, traj: _Live, output: GenOutput) -> bool:
        """Apply one generate call's output; True if the trajectory needs another call."""
        limit = self._turn_limit(traj)
        new = output.new_ids[:limit]
        stopped = output.stopped and len(output.new_ids) <= limit
        traj.ids += new
        traj.mask += [1] * len(new)
        traj.generated += len(new)
        traj.partial += new
        if self.settings.segment_tokens and not stopped and len(new) < limit:
            return True  # a segment ended inside the turn: keep generating the same turn
        turn, traj.partial = traj.partial, []
        body = turn[:-1] if stopped else turn
        text = self.tokenizer.decode(body, skip_special_tokens=False)
        traj.turns.append(text)
        traj.messages.append({"role": "assistant", "content": text})
        if not stopped:
            traj.truncated = True
            return False
        parsed = parse_tool_calls(text)
        if parsed.n_attempted == 0:
            return False  # the final answer turn
        if not traj.task.uses_tools or not parsed.ok:
            return False  # bad tool call: the verdict is fixed, stop spending tokens
        if any(check_call_against_schema(call, self.schemas) for call in parsed.calls):
            return False
        traj.env.episode.turn = len(traj.turns)
        tool_messages = []
        for call in parsed.calls:
            result = getattr(traj.env, call.name)(**call.arguments)
            tool_messages.append({"role": "tool", "name": call.name, "content": str(result)})
            if traj.env.episode.over_budget:
                break
        traj.messages += tool_messages
        if traj.env.episode.over_budget or traj.env.episode.n_agent_errors:
            return False  # the verdict is fixed (too many calls / bad tool call): stop spending tokens
        suffix = self.tokenizer.encode(tool_suffix_text(self.tokenizer, tool_messages), add_special_tokens=False)
        if len(traj.ids) + len(suffix) >= self.max_context or traj.generated >= self.settings.max_new_tokens_total:
            traj.truncated = True
            return False
        traj.ids += suffix
        traj.mask += [0] * len(suffix)
        return True

    def _finish(self, traj: _Live) -> TrajectoryRecord:
        episode: Episode = traj.env.episode
        schemas = self.schemas if traj.task.uses_tools else None
        verdict: TrajectoryVerdict = episode.finish(traj.turns, self.top_k, schemas, traj.truncated)
        answer = verdict.answer
        return TrajectoryRecord(
            sample_id=traj.task.sample_id, sample_index=traj.sample_index, target_index=traj.task.target_index,
            messages=traj.messages, turns=traj.turns, answer=answer.ranking,
            invalid_reason=None if answer.reason is None else answer.reason.value, detail=answer.detail,
            n_tool_calls=verdict.n_tool_calls, calls_per_tool=episode.calls_per_tool(),
            tool_calls=list(episode.calls), n_tool_errors=sum(1 for c in episode.calls if not c.ok),
            prompt_tokens=traj.prompt_len, tokens_generated=traj.generated, truncated=traj.truncated,
            wall_s=time.perf_counter() - traj.started, n_out_of_range=answer.n_out_of_range,
            n_duplicates=answer.n_duplicates, prompt_ids=traj.ids[: traj.prompt_len],
            completion_ids=traj.ids[traj.prompt_len:], completion_mask=traj.mask,
        )


def _replace(settings: RolloutSettings, **changes: Any) -> RolloutSettings:
    import dataclasses

    return dataclasses.replace(settings, **changes)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)
