"""The scripted, target-blind teachers whose transcripts warm-start the tiny models (:mod:`recrepro.agent.warmstart`).

The category teacher [G] (``warmstart.teacher: category``) ranks first the candidates that share the
history's two most frequent categories, after a fixed plan of tool calls that depends only on the
prompt; the mixed teacher (``warmstart.teacher: mixed``) draws one strategy per tool-using example
(:data:`STRATEGIES`); PPR examples (stage 2, PAPER.md 1.5) prefer the item of higher history
affinity. No teacher ever sees the target, so they teach the format, not the answer.
:func:`encode_transcript` lays a transcript out exactly as the rollout engine does, with loss only on
the tokens the model would generate, as in GRPO (PAPER.md 1.4).

Details (each teacher's plan and answer, the PPR format): docs/internals.md, "agent/teacher.py".
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from recrepro.agent.env import RecAgentEnv, env_tools, pair_columns
from recrepro.agent.pairwise import ppr_messages
from recrepro.agent.parser import format_answer, format_choice, format_tool_call
from recrepro.agent.prompt import (AgentInstance, PromptSpec, affinity_ranking, build_messages, history_affinity,
                                   render_prompt)
from recrepro.agent.rollout import tool_suffix_text

TEACHER_VERSION = "v1"


@dataclass(frozen=True)
class Transcript:
    """A teacher trajectory: prompt messages, the raw assistant turns and the tool messages after each."""

    messages: list[dict[str, Any]]  # system, user, then alternating assistant / tool messages
    turns: list[str]
    tool_messages: list[list[dict[str, Any]]]  # after turn i (empty after the final turn)
    uses_tools: bool


def _history_categories(instance: AgentInstance) -> Counter:
    return Counter(c for item in instance.history for c in item.categories)


SHORT_HISTORY = 5  # [G] below this many history items the teacher also asks for similar items


def _top_categories(instance: AgentInstance) -> list[str]:
    ranked = sorted(_history_categories(instance).items(), key=lambda kv: (-kv[1], kv[0]))
    return [c for c, _ in ranked[:2]]


def teacher_ranking(instance: AgentInstance, top_k: int, affinity: bool = False) -> list[int]:
    """Candidates sharing one of the history's two top categories first, then the rest; each in order.

    With ``affinity`` (the prompt shows the affinity line), the affinity order the line shows."""
    if affinity:
        return affinity_ranking(instance)[:top_k]
    top = set(_top_categories(instance))
    first = [i for i, item in enumerate(instance.candidates, start=1) if top & set(item.categories)]
    rest = [i for i in range(1, instance.n_candidates + 1) if i not in set(first)]
    return (first + rest)[:top_k]


def _favourites(instance: AgentInstance) -> str:
    top = _top_categories(instance)
    return " and ".join(top) if top else "no clear category"


def teacher_plan(instance: AgentInstance) -> list[tuple[str, dict[str, Any]]]:
    """The tool calls the teacher makes for this instance, one per turn (two or three)."""
    plan: list[tuple[str, dict[str, Any]]] = [("get_user_profile", {}), ("candidates_analyze", {})]
    if instance.history and len(instance.history) < SHORT_HISTORY:
        plan.append(("get_similar_items", {"item_title": instance.history[-1].title}))
    return plan


_THOUGHTS = {
    ("react", "get_user_profile"): "The history leans to {fav}. I will read the user's profile first.",
    ("react", "candidates_analyze"): "Next I check how the candidates split by category.",
    ("react", "get_similar_items"): "I look for items similar to the latest one.",
    ("apa", "get_user_profile"): "Analyze: the history leans to {fav}, but I know little else. "
                                 "Plan: read the user's profile. Act: call get_user_profile.",
    ("apa", "candidates_analyze"): "Analyze: I still need the candidates' categories. "
                                   "Plan: summarise the candidates. Act: call candidates_analyze.",
    ("apa", "get_similar_items"): "Analyze: collaborative evidence is missing. "
                                  "Plan: find items similar to the latest one. Act: call get_similar_items.",
}
_FINAL = "Candidates in {fav} fit this user best, so they go first."
_AFFINITY_FINAL = "The candidates whose categories the history holds most often go first."


def _thought(text: str) -> str:
    return f"<think>\n{text}\n</think>\n\n"


def teacher_transcript(instance: AgentInstance, spec: PromptSpec, env: RecAgentEnv | None = None,
                       strategy: str = "category") -> Transcript:
    """The teacher's trajectory for ``instance``; ``env`` (reset to the instance) answers the calls.

    ``strategy`` "category" is the v1 teacher; the mixed teacher's strategies are in :data:`STRATEGIES`.
    """
    if strategy != "category":
        return _mixed_transcript(instance, spec, env, strategy)
    fav = _favourites(instance)
    messages = build_messages(instance, spec)
    turns: list[str] = []
    tool_messages: list[list[dict[str, Any]]] = []
    if spec.uses_tools:
        if env is None:
            raise ValueError("the tool-using teacher needs an environment reset to the instance")
        for name, args in teacher_plan(instance):
            text = _thought(_THOUGHTS[(spec.style, name)].format(fav=fav)) + format_tool_call(name, args)
            result = getattr(env, name)(**args)
            tool = [{"role": "tool", "name": name, "content": str(result)}]
            turns.append(text)
            tool_messages.append(tool)
            messages += [{"role": "assistant", "content": text}] + tool
    closing = _AFFINITY_FINAL if spec.affinity_order > 0 else _FINAL.format(fav=fav)
    final = _thought(closing) + format_answer(teacher_ranking(instance, spec.top_k, spec.affinity_order > 0))
    turns.append(final)
    tool_messages.append([])
    messages.append({"role": "assistant", "content": final})
    return Transcript(messages, turns, tool_messages, spec.uses_tools)


# The mixed teacher [G] (``warmstart.teacher: mixed``). Each tool-using example follows one strategy,
# drawn with the run seed, never from the target, so the warm policy is a mixture whose first
# generated words ("I rank the candidates by ...") choose the strategy. Stage 1 can then show that
# it learns: the strategies differ in quality, and GRPO has to find and amplify the better one.
#   "history":    no tool call; the category-overlap ranking of the v1 teacher (what R can do too);
#   "popularity": one candidates_analyze call; the answer copies its popularity line.
STRATEGIES = ("history", "popularity")
MIXED_TEACHER_VERSION = "mixed-v2"  # v2: the popularity line is the last line of candidates_analyze
_MIXED_OPENING = {"history": "I rank the candidates by the categories in the history: {fav} first.",
                  "popularity": "I rank the candidates by popularity; candidates_analyze lists it."}
_MIXED_FINAL = "The most popular candidates before now go first."
_POPULARITY_LIST = re.compile(r"\{\[([0-9, ]+)\]\}")


def popularity_from_tool(text: str, top_k: int) -> list[int]:
    """The candidate numbers of candidates_analyze's popularity line (``{[a, b, ...]}``)."""
    found = _POPULARITY_LIST.search(text)
    if found is None:
        raise ValueError("candidates_analyze shows no popularity line; set tools.popularity_order > 0 "
                         "for warmstart.teacher: mixed")
    numbers = [int(x) for x in found.group(1).split(",")]
    if len(numbers) < top_k:
        raise ValueError(f"the popularity line lists {len(numbers)} candidates, fewer than top_k = {top_k}")
    return numbers[:top_k]


def _mixed_transcript(instance: AgentInstance, spec: PromptSpec, env: RecAgentEnv | None,
                      strategy: str) -> Transcript:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown teacher strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    messages = build_messages(instance, spec)
    opening = _thought(_MIXED_OPENING[strategy].format(fav=_favourites(instance)))
    if strategy == "history":
        final = opening + format_answer(teacher_ranking(instance, spec.top_k, spec.affinity_order > 0))
        messages.append({"role": "assistant", "content": final})
        return Transcript(messages, [final], [[]], spec.uses_tools)
    if env is None:
        raise ValueError("the popularity strategy needs an environment reset to the instance")
    first = opening + format_tool_call("candidates_analyze", {})
    tool = [{"role": "tool", "name": "candidates_analyze", "content": str(env.candidates_analyze())}]
    final = _thought(_MIXED_FINAL) + format_answer(popularity_from_tool(tool[0]["content"], spec.top_k))
    messages += [{"role": "assistant", "content": first}, *tool, {"role": "assistant", "content": final}]
    return Transcript(messages, [first, final], [tool, []], True)


def teacher_strategies(n: int, teacher: str, seed: int) -> list[str]:
    """The strategy of each of ``n`` tool-using examples: all "category", or a seeded balanced mix."""
    if teacher == "category":
        return ["category"] * n
    if teacher != "mixed":
        raise ValueError(f"unknown warmstart.teacher {teacher!r}; known: category, mixed")
    drawn = [STRATEGIES[i % len(STRATEGIES)] for i in range(n)]
    random.Random(seed).shuffle(drawn)
    return drawn


def encode_transcript(tokenizer: Any, transcript: Transcript, tools: Sequence[Callable] | None
                      ) -> tuple[list[int], list[int]]:
    """(token ids, loss mask) exactly as the rollout engine lays a trajectory out.

    prompt (chat template) | turn + end-of-turn (mask 1) | tool suffix (mask 0) | ... | final turn.
    """
    prompt = render_prompt(tokenizer, transcript.messages[:2], tools if transcript.uses_tools else None)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    mask = [0] * len(ids)
    for turn, tool in zip(transcript.turns, transcript.tool_messages):
        turn_ids = tokenizer.encode(turn, add_special_tokens=False) + [tokenizer.eos_token_id]
        ids += turn_ids
        mask += [1] * len(turn_ids)
        if tool:
            suffix = tokenizer.encode(tool_suffix_text(tokenizer, tool), add_special_tokens=False)
            ids += suffix
            mask += [0] * len(suffix)
    return ids, mask


PPR_TEACHER_VERSION = "v1"
_PPR_FINAL = {"more": "Item {pick} shares more of the user's favourite categories ({fav}), so the user is more likely "
                      "to choose it.",
              "less": "Item {pick} shares fewer of the user's favourite categories ({fav}), so the user is less likely "
                      "to choose it."}
_PPR_FIRST = "I compare A and B with the user's taste. The history leans to {fav}; I read the profile first."


def ppr_teacher_letter(instance: AgentInstance, item_a: Any, item_b: Any, direction: str) -> str:
    """MORE: the item with the higher affinity (A on a tie); LESS: the other one."""
    more = "A" if history_affinity(instance.history, item_a) >= history_affinity(instance.history, item_b) else "B"
    if direction == "more":
        return more
    return "B" if more == "A" else "A"


def ppr_teacher_transcript(instance: AgentInstance, positions: tuple[int, int], direction: str,
                           max_tool_calls: int, env: RecAgentEnv, show_affinity: bool = False) -> Transcript:
    """A pairwise (PPR) trajectory on candidates ``positions`` (1-based, shown as A and B)."""

    item_a, item_b = (instance.candidates[p - 1] for p in positions)
    fav = _favourites(instance)
    messages = ppr_messages(instance.history, item_a, item_b, direction, max_tool_calls, show_affinity)
    first = _thought(_PPR_FIRST.format(fav=fav)) + format_tool_call("get_user_profile", {})
    tool = [{"role": "tool", "name": "get_user_profile", "content": str(env.get_user_profile())}]
    letter = ppr_teacher_letter(instance, item_a, item_b, direction)
    final = _thought(_PPR_FINAL[direction].format(pick=letter, fav=fav)) + format_choice(letter)
    messages += [{"role": "assistant", "content": first}, *tool, {"role": "assistant", "content": final}]
    return Transcript(messages, [first, final], [tool, []], True)


def ppr_teacher_examples(tokenizer: Any, instances: Sequence[AgentInstance], rows: Sequence[dict],
                         env_factory: Callable[[], RecAgentEnv], n: int, seed: int, max_tool_calls: int,
                         show_affinity: bool = False) -> list[tuple[list[int], list[int]]]:
    """``n`` encoded PPR transcripts, cycling over the instances; pair and direction drawn with ``seed``."""
    if n <= 0 or not instances:
        return []
    rng = random.Random(seed)
    probe_tools = env_tools(env_factory())
    examples = []
    for i in range(n):
        instance, row = instances[i % len(instances)], rows[i % len(rows)]
        positions = tuple(rng.sample(range(1, instance.n_candidates + 1), 2))
        direction = ("more", "less")[i % 2]
        env = env_factory()
        # Bound to the two shown items, as PPR rollouts are (the tools then name them [A] and [B]).
        env.reset(**{**row, **pair_columns(*(instance.candidates[p - 1].item_id for p in positions))})
        transcript = ppr_teacher_transcript(instance, positions, direction, max_tool_calls, env, show_affinity)
        examples.append(encode_transcript(tokenizer, transcript, probe_tools))
    return examples


def n_ppr_examples(n_ranking: int, share: float) -> int:
    """PPR examples so that they make up ``share`` of all examples (``warmstart.ppr_share``)."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"warmstart.ppr_share must be in [0, 1), got {share}")
    return int(round(n_ranking * share / (1.0 - share)))


def teacher_examples(tokenizer: Any, instances: Sequence[AgentInstance], rows: Sequence[dict],
                     env_factory: Callable[[], RecAgentEnv], specs: Sequence[PromptSpec],
                     teacher: str = "category", seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Encoded teacher transcripts: every instance under every spec (tool variants get a fresh env).

    With ``teacher="mixed"`` the tool-using examples follow :func:`teacher_strategies`; the
    reasoning-only (R) examples always use the category rule, the only one R's prompt supports.
    """
    examples = []
    probe_tools = env_tools(env_factory())
    for instance, row, strategy in zip(instances, rows, teacher_strategies(len(instances), teacher, seed)):
        for spec in specs:
            env = None
            if spec.uses_tools:
                env = env_factory()
                env.reset(**row)
            transcript = teacher_transcript(instance, spec, env, strategy if spec.uses_tools else "category")
            examples.append(encode_transcript(tokenizer, transcript, probe_tools))
    return examples
