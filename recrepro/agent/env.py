"""The agent environment: one object per rollout, bound to one benchmark instance.

:class:`RecAgentEnv` is the single place where tools are executed, counted and recorded, for our
own rollout engine and for TRL 1.16 ``GRPOTrainer(environment_factory=...)`` alike (DESIGN.md 2:
one environment for training and evaluation). It follows TRL's environment contract: besides
``reset`` its public functions are the seven tool methods of :class:`recrepro.tools.ToolMethods`,
and all bookkeeping lives in the :class:`Episode` of its ``episode`` attribute. Budget (PAPER.md
1.3, [N]): at most ``max_tool_calls`` (10) calls per trajectory; one more makes it invalid, as does a
call the tools reject as the agent's mistake (PAPER.md 1.4); a failure of the kit itself is not.

Details (TRL's contract as read, budget, error kinds): docs/internals.md, "agent/env.py".
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from recrepro.agent.parser import CHOICE_LETTERS, InvalidReason, TrajectoryVerdict, judge_trajectory, with_reason
from recrepro.tools.base import AGENT_ERROR_KINDS, ToolResult
from recrepro.tools.registry import TOOL_NAMES, ToolMethods

OVER_BUDGET = "over_budget"  # our error kind for the refused call after the budget
BUDGET_MESSAGE = "Error: tool-call budget exhausted ({max} calls); the trajectory is invalid."
NOT_RESET_MESSAGE = "Error: the environment has not been reset to an instance."


@dataclass(frozen=True)
class ToolCallRecord:
    """One executed (or refused) tool call."""

    turn: int
    name: str
    arguments: dict[str, Any]
    ok: bool
    error_kind: str | None
    latency_s: float
    response_chars: int

    @property
    def agent_error(self) -> bool:
        """The agent's mistake (a bad tool call), as opposed to a failure of the kit."""
        return self.error_kind in AGENT_ERROR_KINDS


@dataclass
class Episode:
    """Bookkeeping of one trajectory: the instance it is bound to and every tool call made."""

    sample_id: int | None = None
    candidates: tuple[str, ...] = ()
    max_tool_calls: int = 10
    calls: list[ToolCallRecord] = field(default_factory=list)
    over_budget: bool = False
    turn: int = 0  # set by the rollout engine before it executes a turn's calls

    @property
    def n_calls(self) -> int:
        """Calls attempted so far, the refused over-budget one included."""
        return len(self.calls)

    @property
    def n_candidates(self) -> int:
        return len(self.candidates)

    @property
    def n_agent_errors(self) -> int:
        return sum(1 for call in self.calls if call.agent_error)

    def calls_per_tool(self) -> dict[str, int]:
        counts = {name: 0 for name in TOOL_NAMES}
        for call in self.calls:
            counts[call.name] = counts.get(call.name, 0) + 1
        return counts

    def finish(self, turns: Sequence[str], top_k: int, schemas: Mapping[str, Mapping[str, Any]] | None,
               truncated: bool = False) -> TrajectoryVerdict:
        """The verdict on the trajectory whose assistant turns are ``turns`` (raw text, in order).

        The text decides format, answer and malformed calls (:func:`judge_trajectory`); the
        episode's records add what only execution reveals: the refused over-budget call and calls
        the tools rejected as the agent's mistake.
        """
        verdict = judge_trajectory(turns, self.n_candidates, top_k, self.max_tool_calls, schemas, truncated)
        if self.over_budget and verdict.reason is not InvalidReason.TOO_MANY_TOOL_CALLS:
            return with_reason(verdict, InvalidReason.TOO_MANY_TOOL_CALLS,
                               f"{self.n_calls} tool calls, budget {self.max_tool_calls}")
        rejected = [c for c in self.calls if c.agent_error]
        if rejected and verdict.reason not in (InvalidReason.TOO_MANY_TOOL_CALLS, InvalidReason.BAD_TOOL_CALL):
            return with_reason(verdict, InvalidReason.BAD_TOOL_CALL,
                               f"{rejected[0].name}: rejected by the tool ({rejected[0].error_kind})")
        return verdict


class RecAgentEnv(ToolMethods):
    """A rollout's environment: ``reset(**row)`` binds it to one instance; the seven tools follow.

    ``binder(row)`` returns the instance-bound tools (``ToolKit.bind``: an object whose
    ``call(name, arguments)`` returns a :class:`~recrepro.tools.ToolResult` and never raises);
    ``max_tool_calls`` is the per-trajectory budget (``agent.max_tool_calls``).
    """

    def __init__(self, binder: Callable[[Mapping[str, Any]], Any] | None = None, max_tool_calls: int = 10) -> None:
        self._binder = binder
        self._bound: Any = None
        self._max_tool_calls = max_tool_calls
        self.episode = Episode(max_tool_calls=max_tool_calls)

    def reset(self, **row: Any) -> None:
        """Bind to the instance in ``row`` (a dataset row: sample_id, user_id, candidates, ...)."""
        if self._binder is None:
            raise RuntimeError("RecAgentEnv was built without a binder; use make_env_factory(...)")
        self._bound = self._binder(row)
        sample_id = row.get("sample_id")
        self.episode = Episode(sample_id=None if sample_id is None else int(sample_id),
                               candidates=tuple(str(c) for c in row.get("candidates", ())),
                               max_tool_calls=self._max_tool_calls)
        return None

    def _call_tool(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        """Execute one tool call within the budget and record it (every tool method routes here)."""
        episode = self.episode
        if episode.n_calls >= episode.max_tool_calls:
            episode.over_budget = True
            result = ToolResult(name, dict(arguments), BUDGET_MESSAGE.format(max=episode.max_tool_calls), False,
                                OVER_BUDGET)
        elif self._bound is None:
            result = ToolResult(name, dict(arguments), NOT_RESET_MESSAGE, False, "internal")
        else:
            began = time.perf_counter()
            result = self._bound.call(name, dict(arguments))
            result = dataclasses.replace(result, latency_s=time.perf_counter() - began)
        episode.calls.append(ToolCallRecord(episode.turn, name, dict(arguments), result.ok, result.error_kind,
                                            result.latency_s, len(result.text)))
        return result


def env_tools(env: RecAgentEnv) -> list[Callable[..., str]]:
    """The bound tool methods of ``env``, found exactly as TRL 1.16 finds them (sorted by name)."""
    return [getattr(env, name) for name, _ in inspect.getmembers(type(env), predicate=inspect.isfunction)
            if name not in ("reset", "get_reward") and not name.startswith("_")]


def tool_schemas(env: RecAgentEnv) -> dict[str, dict[str, Any]]:
    """Tool name -> JSON schema as the chat template renders it (transformers' ``get_json_schema``)."""
    from transformers.utils import get_json_schema

    return {tool.__name__: get_json_schema(tool) for tool in env_tools(env)}


def pair_columns(item_a: str, item_b: str) -> dict[str, Any]:
    """The columns that bind an environment to a pairwise (PPR) question, for ``reset(**row)``.

    The two shown items become the candidates, named by their letters, so the tools write them
    ``[A]`` and ``[B]`` as the prompt does instead of ``[1]`` and ``[2]`` (``Instance.candidate_labels``).
    PPR's training and evaluation rows and the PPR warm-start transcripts all bind through this.
    """
    return {"candidates": [str(item_a), str(item_b)], "candidate_labels": list(CHOICE_LETTERS)}


def make_env_factory(binder: Callable[[Mapping[str, Any]], Any], max_tool_calls: int = 10,
                     env_class: type[RecAgentEnv] = RecAgentEnv) -> Callable[[], RecAgentEnv]:
    """A zero-argument factory, the form TRL's ``environment_factory`` expects."""
    def factory() -> RecAgentEnv:
        return env_class(binder, max_tool_calls)

    return factory
