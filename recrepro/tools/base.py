"""Types every tool module shares: the result of one call, the error a tool raises, error kinds.

A tool never raises out of :meth:`recrepro.tools.toolkit.InstanceTools.call`. Implementations signal
an agent mistake (an unknown item, an empty name) by raising :class:`ToolError`; the dispatcher turns
it into a short text with ``ok=False`` and the error kind, so the reward of the next stage can treat
the call as invalid (PAPER.md 1.4: "a bad tool call" makes a trajectory invalid).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
