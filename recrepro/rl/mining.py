"""Hard-pair mining for Progressive Preference Refinement (PPR, PAPER.md 1.5, [N]).

The stage-1 policy ranks training instances; wherever the target is not ranked first, its
mistakes become pairs:

* target at rank r (2..K): the hard-negative pool is the r-1 items ranked above it;
* target missing from a valid list: the pool is the whole list;
* target ranked first: no pair; an invalid answer: skipped and counted.

One negative is drawn uniformly from the pool with a generator seeded once per mining run, and
which of the two items is shown as "A" is drawn with the same generator, so the answer's letter
carries no position information. Every pair keeps its provenance (instance, the policy's list,
target rank, pool size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

PAIR_COLUMNS = (
    "pair_id", "sample_id", "user_id", "target_index", "negative_index", "target_item", "negative_item",
    "target_rank", "pool_size", "policy_ranking", "a_is_target",
)


@dataclass(frozen=True)
class PolicyOutput:
    """What mining needs from one stage-1 trajectory."""

    sample_id: int
    user_id: str
    candidates: tuple[str, ...]
    target_index: int  # 1-based position of the target among the candidates
    ranking: tuple[int, ...] | None  # the valid answer, or None when the trajectory was invalid


def hard_negative_pool(ranking: Sequence[int] | None, target_index: int) -> list[int] | None:
    """Candidate positions to draw the negative from; [] when the target is first, None when invalid."""
    if ranking is None:
        return None
    ranking = list(ranking)
    if target_index in ranking:
        return ranking[: ranking.index(target_index)]
    return ranking


def mine_pairs(outputs: Sequence[PolicyOutput], seed: int) -> tuple[pd.DataFrame, dict]:
    """Pairs (one per instance whose target was not ranked first) and the mining statistics."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    n_invalid = n_first = 0
    pool_sizes: list[int] = []
    for out in sorted(outputs, key=lambda o: o.sample_id):
        pool = hard_negative_pool(out.ranking, out.target_index)
        if pool is None:
            n_invalid += 1
            continue
        if not pool:
            n_first += 1
            continue
        negative = int(pool[int(rng.integers(0, len(pool)))])
        ranking = list(out.ranking or ())
        rows.append({
            "pair_id": len(rows),
            "sample_id": int(out.sample_id),
            "user_id": out.user_id,
            "target_index": int(out.target_index),
            "negative_index": negative,
            "target_item": out.candidates[out.target_index - 1],
            "negative_item": out.candidates[negative - 1],
            "target_rank": ranking.index(out.target_index) + 1 if out.target_index in ranking else 0,
            "pool_size": len(pool),
            "policy_ranking": ranking,
            "a_is_target": bool(rng.integers(0, 2)),
        })
        pool_sizes.append(len(pool))
    valid = len(outputs) - n_invalid
    stats = {
        "instances": len(outputs),
        "invalid_skipped": n_invalid,
        "target_first": n_first,
        "pairs": len(rows),
        "violation_rate": (len(rows) / valid) if valid else float("nan"),
        "target_missing": sum(1 for r in rows if r["target_rank"] == 0),
        "mean_pool_size": float(np.mean(pool_sizes)) if pool_sizes else float("nan"),
        "a_is_target_share": float(np.mean([r["a_is_target"] for r in rows])) if rows else float("nan"),
    }
    return pd.DataFrame(rows, columns=list(PAIR_COLUMNS)), stats


def correct_letter(a_is_target: bool, direction: str) -> str:
    """The right answer: the target for "more", the negative for "less" (PAPER.md 1.5)."""
    if direction not in ("more", "less"):
        raise ValueError(f"direction must be 'more' or 'less', got {direction!r}")
    target_letter = "A" if a_is_target else "B"
    if direction == "more":
        return target_letter
    return "B" if target_letter == "A" else "A"
