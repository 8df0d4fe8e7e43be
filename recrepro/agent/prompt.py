"""The agent's prompt: a versioned system prompt and the user turn that shows one benchmark instance.

The paper does not publish its prompts (PAPER.md 1.3, [G]); ours state the task of PAPER.md 1.1 and
the output contract of PAPER.md 1.3. Texts live in ``recrepro/prompts/agent_*_<version>.txt``; bump
:data:`PROMPT_VERSION` (and the file suffix) whenever a text changes, because the version is part of
every evaluation card and cache key. Variants: ``tirr`` (tools through the chat template's
``tools=``; styles ``react`` or ``apa``) and ``r`` (reasoning only). With ``agent.affinity_order`` > 0
[G] the user turn ends with the candidates ordered by category affinity with the history.

Details (output contract, variants and styles, the user turn, why the affinity line):
docs/internals.md, "agent/prompt.py".
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, Callable, Mapping, Sequence

from recrepro.data.labels import catalogue_labels

PROMPT_VERSION = "v1"
VARIANTS = ("tirr", "r")
STYLES = ("react", "apa")
MAX_TITLE_CHARS = 120  # [G] long Amazon titles are cut so 20 candidates fit a modest context
MAX_CATEGORY_LABELS = 3  # [G] the most specific labels; general ones ("Books") say little

_PROMPT_FILES = {
    ("tirr", "react"): "agent_tirr_react",
    ("tirr", "apa"): "agent_tirr_apa",
    ("r", "react"): "agent_r",
    ("r", "apa"): "agent_r",  # the reasoning-only prompt has no action phases
}


@dataclass(frozen=True)
class ItemView:
    """What the prompt shows of one item."""

    item_id: str
    title: str
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentInstance:
    """One benchmark instance as the agent sees it; ``target_index`` is kept for scoring only."""

    sample_id: int
    user_id: str
    history: tuple[ItemView, ...]
    candidates: tuple[ItemView, ...]
    target_index: int | None = None

    @property
    def n_candidates(self) -> int:
        return len(self.candidates)


@dataclass(frozen=True)
class PromptSpec:
    """Which prompt to build: variant, style and the numbers the instructions quote."""

    variant: str = "tirr"
    style: str = "react"
    top_k: int = 10  # [N] PAPER.md 1.1
    max_tool_calls: int = 10  # [N] PAPER.md 1.3
    affinity_order: int = 0  # [G] agent.affinity_order: candidates on the affinity line; 0 = no line

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"prompt variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.style not in STYLES:
            raise ValueError(f"prompt style must be one of {STYLES}, got {self.style!r}")

    @property
    def uses_tools(self) -> bool:
        return self.variant == "tirr"


PROMPT_DIR = Path(__file__).resolve().parent.parent / "prompts"  # recrepro/prompts (package data)


def _prompt_text(stem: str) -> str:
    # A path beside the package, not importlib.resources: with an editable install the package can
    # resolve as a namespace package when run from another directory, which resources rejects.
    return (PROMPT_DIR / f"{stem}_{PROMPT_VERSION}.txt").read_text(encoding="utf-8").strip()


def prompt_fingerprint() -> str:
    """SHA-256 over every agent prompt text and the version; recorded in evaluation cards."""
    digest = hashlib.sha256(PROMPT_VERSION.encode())
    for stem in sorted(set(_PROMPT_FILES.values())):
        digest.update(_prompt_text(stem).encode())
    return digest.hexdigest()[:16]


def system_prompt(spec: PromptSpec, n_candidates: int = 20) -> str:
    """The system turn's own text (the chat template appends the tool schemas for ``tirr``)."""
    template = Template(_prompt_text(_PROMPT_FILES[(spec.variant, spec.style)]))
    return template.substitute(top_k=spec.top_k, n_candidates=n_candidates, max_tool_calls=spec.max_tool_calls)


def _shorten(title: str) -> str:
    title = " ".join(str(title).split())
    return title if len(title) <= MAX_TITLE_CHARS else title[: MAX_TITLE_CHARS - 3].rstrip() + "..."


def describe_item(item: ItemView) -> str:
    """``Title (cat1, cat2)``; categories are omitted when unknown."""
    labels = [c for c in item.categories if c][-MAX_CATEGORY_LABELS:]
    title = _shorten(item.title)
    return f"{title} ({', '.join(labels)})" if labels else title


def history_affinity(history: Sequence[ItemView], item: ItemView) -> int:
    """How many times the history's items carry the item's categories: the sum, over the item's
    categories, of the number of history items that carry each one."""
    counts = Counter(c for seen in history for c in seen.categories)
    return sum(counts.get(c, 0) for c in item.categories)


def affinity_ranking(instance: AgentInstance) -> list[int]:
    """Candidate numbers by :func:`history_affinity`, highest first; ties keep candidate order."""
    scores = [history_affinity(instance.history, item) for item in instance.candidates]
    return sorted(range(1, len(scores) + 1), key=lambda k: (-scores[k - 1], k))


def affinity_line(instance: AgentInstance, top: int) -> str:
    """The ``top`` candidates by affinity in the answer's list syntax ``{[a, b, ...]}``, so that a tiny
    model can copy it as it copies candidates_analyze's popularity line (recrepro/tools/impl.py)."""
    order = affinity_ranking(instance)[:top]
    return "By category affinity with the history, highest first: {[" + ", ".join(map(str, order)) + "]}"


def user_prompt(instance: AgentInstance, spec: PromptSpec) -> str:
    """History (oldest first) and the numbered candidates, then a one-line reminder of the task and,
    with ``spec.affinity_order``, the affinity line last (nearest the answer that copies it)."""
    lines = [f"The user's history, oldest first ({len(instance.history)} items):"]
    lines += [f"{i}. {describe_item(item)}" for i, item in enumerate(instance.history, start=1)]
    lines += ["", f"Candidates ({instance.n_candidates}):"]
    lines += [f"[{i}] {describe_item(item)}" for i, item in enumerate(instance.candidates, start=1)]
    lines += ["", f"Rank the {spec.top_k} candidates this user is most likely to choose next. "
              f"Answer with <answer>\\boxed{{[...]}}</answer> holding {spec.top_k} candidate numbers."]
    if spec.affinity_order > 0:
        lines.append(affinity_line(instance, spec.affinity_order))
    return "\n".join(lines)


def profile_spec(agent: Any, variant: str) -> PromptSpec:
    """The prompt of ``variant`` as a profile's ``agent`` section sets it up."""
    return PromptSpec(variant=variant, style=agent.prompt_style, top_k=agent.top_k,
                      max_tool_calls=agent.max_tool_calls, affinity_order=agent.affinity_order)


def build_messages(instance: AgentInstance, spec: PromptSpec) -> list[dict[str, str]]:
    """The conversation before the agent's first turn: system and user messages."""
    return [
        {"role": "system", "content": system_prompt(spec, instance.n_candidates)},
        {"role": "user", "content": user_prompt(instance, spec)},
    ]


def render_prompt(tokenizer: Any, messages: Sequence[Mapping[str, Any]],
                  tools: Sequence[Callable | Mapping[str, Any]] | None = None, enable_thinking: bool | None = None) -> str:
    """The text the model continues: chat template with tools (for ``tirr``) and the assistant header.

    ``tools`` are the environment's bound tool methods (as TRL passes them) or their JSON schemas;
    ``None`` or an empty list renders no tool section. ``enable_thinking`` (``agent.enable_thinking``)
    reaches Qwen3 hybrid templates; None passes nothing, so the template's default applies.
    """
    extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return tokenizer.apply_chat_template(list(messages), tools=list(tools) if tools else None,
                                         add_generation_prompt=True, tokenize=False, **extra)


def item_views(items: Any) -> dict[str, ItemView]:
    """item_id -> ItemView from the canonical items table (recrepro.data.schema).

    Categories are the ones the tools use in their aggregates (``recrepro.data.labels.
    catalogue_labels``: dataset-wide root labels dropped, the most specific three kept), so the
    prompt and the tool outputs name an item's categories the same way.
    """
    _, shown, _ = catalogue_labels(items["categories"])
    return {str(i): ItemView(str(i), str(t), tuple(labels))
            for i, t, labels in zip(items["item_id"], items["title"], shown)}


def instance_from_sample(row: Mapping[str, Any], views: Mapping[str, ItemView]) -> AgentInstance:
    """An AgentInstance from one ``samples_<split>`` row; unknown item ids show as their id."""
    def view(item_id: Any) -> ItemView:
        key = str(item_id)
        return views.get(key) or ItemView(key, key)

    target = row.get("target_index")
    return AgentInstance(
        sample_id=int(row["sample_id"]),
        user_id=str(row["user_id"]),
        history=tuple(view(i) for i in row["history_items"]),
        candidates=tuple(view(i) for i in row["candidates"]),
        target_index=None if target is None else int(target),
    )
