"""The list-wise trajectory reward of stage 1 (PAPER.md 1.4, [N]), as one function.

For a trajectory whose verdict (from :mod:`recrepro.agent.parser`, the one parser) is valid with
ranking r, and a target at candidate position y, with K = ``agent.top_k`` (10):

* NDCG@K of y in r, i.e. 1/log2(rank + 1), when r contains y;
* ``reward.miss`` (-0.5) when r is valid and misses y;
* ``reward.invalid`` (-1) when the trajectory is invalid for any reason of the parser (no answer,
  bad format, wrong length, out of range, duplicate, truncated, a bad tool call, more than
  ``agent.max_tool_calls`` tool calls);
* plus ``reward.first_with_tool_bonus`` (0.1) when y is ranked first and at least one tool was
  called, so the maximum is 1.1.

Every constant comes from the profile's ``reward`` section; the breakdown keeps each component so
training logs can show where the reward came from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from recrepro.agent.parser import TrajectoryVerdict
from recrepro.config import RewardConfig
from recrepro.metrics import rank_metrics


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
