"""The list-wise trajectory reward of stage 1 (PAPER.md 1.4, [N]), as one function.

For a valid ranking r and the target's candidate position y (K = ``agent.top_k``, 10): NDCG@K of y in
r when r contains y, else ``reward.miss`` (-0.5); ``reward.invalid`` (-1) for a trajectory invalid for
any reason of the one parser; plus ``reward.first_with_tool_bonus`` (0.1) when y is first and a tool
was called (maximum 1.1). :class:`ListwiseRewardFunc` is the TRL reward function around it, judging
each completion with the environment's ``Episode.finish`` (the same rules as evaluation).

Details (the invalid reasons, how TRL completions are judged, known differences from the rollout
engine): docs/internals.md, "rl/reward.py".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from recrepro.agent.env import Episode, RecAgentEnv
from recrepro.agent.parser import TrajectoryVerdict, check_call_against_schema, parse_tool_calls
from recrepro.config import RewardConfig
from recrepro.metrics import rank_metrics

if TYPE_CHECKING:
    from recrepro.config import Profile
    from recrepro.rl.grpo import RolloutTrace


@dataclass(frozen=True)
class RewardBreakdown:
    total: float
    ranking: float  # NDCG@K of the target, or the miss penalty, or 0 when invalid
    invalid: float  # the invalid penalty, or 0
    tool_bonus: float  # the first-place-with-a-tool bonus, or 0
    valid: bool
    rank: int  # 1-based rank of the target in the answer, 0 when missing or invalid
    n_tool_calls: int
    reason: str | None  # the parser's invalid reason

    def as_dict(self) -> dict:
        return asdict(self)


def ndcg_at_rank(rank: int, k: int) -> float:
    """NDCG@k of a single target at 1-based ``rank`` (0 = missing), from the one metrics module."""
    values = rank_metrics(np.array([rank]), ks=(1, k))
    return float(values[f"N@{k}"][0]) if k > 1 else float(values["H@1"][0])


def listwise_reward(verdict: TrajectoryVerdict, target_index: int, cfg: RewardConfig, top_k: int) -> RewardBreakdown:
    """The stage-1 reward of one trajectory (PAPER.md 1.4)."""
    n_calls = verdict.n_tool_calls
    reason = verdict.reason.value if verdict.reason is not None else None
    if not verdict.valid:
        return RewardBreakdown(cfg.invalid, 0.0, cfg.invalid, 0.0, False, 0, n_calls, reason)
    ranking = list(verdict.ranking or ())
    rank = ranking.index(target_index) + 1 if target_index in ranking else 0
    score = ndcg_at_rank(rank, top_k) if rank else cfg.miss
    bonus = cfg.first_with_tool_bonus if rank == 1 and n_calls > 0 else 0.0
    return RewardBreakdown(score + bonus, score, 0.0, bonus, True, rank, n_calls, None)


def assistant_turns(ids: Sequence[int], mask: Sequence[int] | None, stops: set[int], tokenizer: Any
                    ) -> tuple[list[str], bool]:
    """(raw text of each assistant turn, truncated) from a completion's ids and TRL's tool mask.

    Runs of mask 1 are the tokens the model generated, one run per turn; a run ends with an
    end-of-turn token unless a token limit cut it. A cut turn ends the trajectory for our verdict
    (the engine stops there), so later turns are ignored.
    """
    runs: list[list[int]] = []
    current: list[int] = []
    for i, token in enumerate(ids):
        if mask is None or mask[i]:
            current.append(int(token))
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    turns: list[str] = []
    for run in runs:
        stopped = run[-1] in stops
        body = run[:-1] if stopped else run
        turns.append(tokenizer.decode(body, skip_special_tokens=False))
        if not stopped:
            return turns, True
    return turns, not turns


def _unanswered_calls(turn: str, schemas: Mapping[str, Any] | None, n_calls_before: int, budget: int) -> bool:
    """The final turn holds well-formed, known calls within budget: TRL stopped before answering them."""
    if schemas is None:
        return False
    parsed = parse_tool_calls(turn)
    if not parsed.calls or not parsed.ok:
        return False
    if any(check_call_against_schema(call, schemas) for call in parsed.calls):
        return False
    return n_calls_before + parsed.n_attempted <= budget


class ListwiseRewardFunc:
    """TRL reward function: the parser's verdict per completion, then :func:`listwise_reward`.

    Receives TRL's ``completion_ids``, the ``environments`` of the rollouts (tool variant) and the
    dataset columns ``target_index`` and ``candidates``; logs the reward's components and tool use
    through TRL's ``log_metric`` (means over the step's trajectories).
    """

    __name__ = "listwise"

    def __init__(self, profile: "Profile", tokenizer: Any, schemas: Mapping[str, Any] | None, trace: "RolloutTrace",
                 stops: Sequence[int]) -> None:
        self.reward_cfg = profile.reward
        self.top_k = profile.agent.top_k
        self.max_tool_calls = profile.agent.max_tool_calls
        self.tokenizer = tokenizer
        self.schemas = schemas
        self.trace = trace
        self.stops = set(int(s) for s in stops)
        self.last: list[Any] = []  # breakdowns of the last call (tests, debugging)

    def verdict(self, ids: Sequence[int], mask: Sequence[int] | None, episode: Episode):
        turns, truncated = assistant_turns(ids, mask, self.stops, self.tokenizer)
        if turns and not truncated:
            before = sum(parse_tool_calls(t).n_attempted for t in turns[:-1])
            truncated = _unanswered_calls(turns[-1], self.schemas, before, self.max_tool_calls)
        return episode.finish(turns, self.top_k, self.schemas, truncated)

    def __call__(self, prompts: list, completions: list, completion_ids: list, target_index: list,
                 candidates: list, environments: list[RecAgentEnv] | None = None,
                 log_metric: Callable[[str, float], None] | None = None, **_: Any) -> list[float]:
        masks = self.trace.tool_masks if self.schemas is not None else None
        totals, self.last = [], []
        for i, ids in enumerate(completion_ids):
            if environments is not None:
                episode = environments[i].episode
            else:  # reasoning-only variant: no environment, nothing was executed
                episode = Episode(candidates=tuple(str(c) for c in candidates[i]), max_tool_calls=self.max_tool_calls)
            verdict = self.verdict(ids, masks[i] if masks is not None else None, episode)
            breakdown = listwise_reward(verdict, int(target_index[i]), self.reward_cfg, self.top_k)
            self.last.append(breakdown)
            totals.append(breakdown.total)
            if log_metric is not None:
                self._log(log_metric, breakdown, episode)
        return totals

    @staticmethod
    def _log(log_metric: Callable[[str, float], None], b: Any, episode: Episode) -> None:
        log_metric("rta/reward", b.total)
        log_metric("rta/reward_ranking", b.ranking)
        log_metric("rta/reward_invalid", b.invalid)
        log_metric("rta/reward_tool_bonus", b.tool_bonus)
        log_metric("rta/valid", float(b.valid))
        log_metric("rta/tool_calls", float(b.n_tool_calls))
        log_metric("rta/positive", float(b.total > 0))
        if b.total > 0:  # Figure 3a: of the positively rewarded trajectories, the share that used a tool
            log_metric("rta/positive_with_tool", float(b.n_tool_calls > 0))
        for name, count in episode.calls_per_tool().items():
            log_metric(f"rta/calls/{name}", float(count))
