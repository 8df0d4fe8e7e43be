"""Batched multi-turn rollouts: many instances x several samples, all live trajectories in one call.

The engine runs the ReAct loop of PAPER.md 1.3 for many trajectories at once: each round generates
for all unfinished trajectories in one batched call, parses every new turn with
:mod:`recrepro.agent.parser` and executes its tool calls in the trajectory's own
:class:`~recrepro.agent.env.RecAgentEnv`, until each has answered, broken a rule or hit a token limit.
Token bookkeeping follows TRL 1.16's tool loop (no re-tokenising), so what the model saw in a rollout
is exactly what a trainer will score. Generation settings and the back ends live in
:mod:`recrepro.agent.generators`.

Details (the loop step by step, token bookkeeping): docs/internals.md, "agent/rollout.py".
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from recrepro.agent.env import Episode, RecAgentEnv, ToolCallRecord, env_tools, tool_schemas
from recrepro.agent.parser import TrajectoryVerdict, check_call_against_schema, parse_tool_calls
from recrepro.agent.generators import GenOutput, GenRequest, Generator, RolloutSettings
from recrepro.agent.prompt import render_prompt
from recrepro.progress import Progress, format_duration, say, spaced


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
        With ``settings.progress``, each turn reports its generate calls (``batch k/n``, ETA of the turn)
        and how many trajectories have finished, at most one line per 10 s over all turns, and the run
        ends with a summary line (:mod:`recrepro.progress`).
        """
        live = [self._start(key, task, s) for key, (task, s) in
                enumerate(((t, s) for t in tasks for s in range(n_samples)), start=first_key)]
        self._share_prefix([t.ids for t in live])
        done: dict[int, TrajectoryRecord] = {}
        n, show = len(live), self.settings.progress and bool(live)
        write, began = spaced(), time.perf_counter()
        if show:
            say(f"{desc}: rolling out {n} trajectories")
        step = 0
        while live:
            still = []
            chunks = self._chunks(live)
            bar = Progress(f"{desc} turn {step + 1}", len(chunks), unit="batch", enabled=show, write=write)
            for chunk in chunks:
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
                bar.update(1, note=f"{len(done)}/{n} trajectories finished")
            bar.close()
            live = still
            step += 1
        if show:
            say(f"{desc}: {n} trajectories finished in {step} turn(s), {format_duration(time.perf_counter() - began)}")
        return [done[key] for key in sorted(done)]

    def run_one_by_one(self, tasks: Sequence[AgentTask], n_samples: int = 1,
                       desc: str = "one at a time") -> list[TrajectoryRecord]:
        """The reference loop: each trajectory runs alone to its end (batch of one)."""
        records = []
        self._share_prefix([self._prompt_ids(task) for task in tasks])  # the same prefix the batched run uses
        progress = self.settings.progress
        self.settings = _replace(self.settings, progress=False)
        try:
            with Progress(desc, len(tasks) * n_samples, unit="trajectory", enabled=progress) as bar:
                for t, task in enumerate(tasks):
                    for s in range(n_samples):
                        record = self.run([task], 1, first_key=t * n_samples + s)[0]
                        record.sample_index = s
                        records.append(record)
                        bar.update(1)
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
        text = render_prompt(self.tokenizer, task.messages, tools, self.settings.enable_thinking)
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
