"""Types every tool module shares: the instance a tool sees, its statistics, the result of one call,
the error a tool raises, error kinds.

A tool never raises out of :meth:`recrepro.tools.toolkit.InstanceTools.call`. Implementations signal
an agent mistake (an unknown item, an empty name) by raising :class:`ToolError`; the dispatcher turns
it into a short text with ``ok=False`` and the error kind, so the reward of the next stage can treat
the call as invalid (PAPER.md 1.4: "a bad tool call" makes a trajectory invalid).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

# Every error kind a ToolResult can carry. Agent mistakes first, then problems of the kit itself.
ERROR_KINDS: tuple[str, ...] = (
    "unknown_tool",         # no tool of that name
    "bad_arguments",        # the arguments are not a JSON object (dict)
    "missing_argument",     # a required argument is absent
    "unexpected_argument",  # an argument the tool does not take (or too many positional ones)
    "wrong_type",           # e.g. a number or null where a string is required
    "empty_argument",       # an empty or blank string
    "too_long",             # an argument longer than the tool accepts
    "unknown_item",         # a name that resolves to no item
    "internal",             # a bug in the kit: the tool failed; counted separately by InstanceTools
)
RECENT_DAYS = 30  # [G] item_info_search's "recent" popularity window, in days
AGENT_ERROR_KINDS: frozenset[str] = frozenset(ERROR_KINDS) - {"internal"}


class ToolError(Exception):
    """Raised inside a tool for an agent mistake; ``text`` is what the agent reads."""

    def __init__(self, kind: str, text: str) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown tool error kind {kind!r}; known: {ERROR_KINDS}")
        super().__init__(text)
        self.kind = kind
        self.text = text


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one tool call, as the environment logs it.

    ``text`` is the observation fed back to the model (already bounded by ``tools.max_lines`` and
    ``tools.max_chars``); ``ok`` is False exactly when ``error_kind`` is set.
    """

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    ok: bool = True
    error_kind: str | None = None
    latency_s: float = 0.0


@dataclass(frozen=True)
class Instance:
    """What the tools may know of one benchmark instance: no target item, no target rating."""

    user_id: str
    target_time: int
    history_items: tuple[str, ...]
    history_times: tuple[int, ...]
    history_ratings: tuple[float, ...]
    candidates: tuple[str, ...]
    sample_id: int = -1
    split: str = ""
    # How the prompt names the candidates when not by number (PPR: ("A", "B")); empty: [1] .. [n].
    candidate_labels: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Instance":
        """From a ``samples_<split>`` row (a dict or a pandas row); target columns are ignored.

        An optional ``candidate_labels`` column names the candidates in the tools' outputs
        (:func:`recrepro.agent.env.pair_columns` sets it for PPR's A/B questions).
        """
        labels = row.get("candidate_labels")
        return cls(
            user_id=str(row["user_id"]),
            target_time=int(row["target_time"]),
            history_items=tuple(str(i) for i in row["history_items"]),
            history_times=tuple(int(t) for t in row["history_times"]),
            history_ratings=tuple(float(r) for r in row["history_ratings"]),
            candidates=tuple(str(c) for c in row["candidates"]),
            sample_id=int(row.get("sample_id", -1)),
            split=str(row.get("split", "")),
            candidate_labels=() if labels is None else tuple(str(label) for label in labels),
        )

    @property
    def key(self) -> tuple:
        return (self.user_id, self.target_time, self.history_items)


@dataclass(frozen=True)
class Neighbour:
    user_id: str
    similarity: float
    items: tuple[str, ...]  # most recent first, all dated strictly before the instance time
    times: tuple[int, ...]


@dataclass(frozen=True)
class SimilarUsers:
    status: str  # "ok", "unavailable", "no_snapshot", "no_known_history"
    snapshot_time: int | None
    neighbours: tuple[Neighbour, ...] = ()


@dataclass(frozen=True)
class ItemStats:
    n_before: int  # interactions dated strictly before the instance time
    n_recent: int  # of those, within RECENT_DAYS before it
    n_rated: int
    mean_rating: float | None
