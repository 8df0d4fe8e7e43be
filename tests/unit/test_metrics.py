"""Exact values for HitRate@K / NDCG@K, tie handling, invalid lists and bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recrepro.metrics import (bootstrap_ci, bucket_means, chance_metrics, list_metrics, list_ranks, metric_names,
                              paired_bootstrap_pvalue, rank_metrics, score_metrics)


def test_rank_metrics_exact_values():
    got = rank_metrics(np.array([1, 2, 5, 6, 10, 11, 0]))
    assert got["H@1"].tolist() == [1, 0, 0, 0, 0, 0, 0]
    assert got["H@5"].tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert got["H@10"].tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert got["N@5"][:3] == pytest.approx([1.0, 1 / math.log2(3), 1 / math.log2(6)])
    assert got["N@5"][3:].tolist() == [0, 0, 0, 0]
    assert got["N@10"] == pytest.approx([1.0, 1 / math.log2(3), 1 / math.log2(6), 1 / math.log2(7),
                                         1 / math.log2(11), 0.0, 0.0])


def test_list_metrics_invalid_and_missing_are_misses():
    preds = [[3, 1, 2], None, [], [5, 6, 7], [9, 4]]
    targets = [1, 1, 1, 1, 4]
    got = list_metrics(preds, targets)
    assert got["H@5"].tolist() == [1, 0, 0, 0, 1]
    assert got["N@5"][0] == pytest.approx(1 / math.log2(3))
    assert got["N@5"][4] == pytest.approx(1 / math.log2(3))
    assert got["H@1"].tolist() == [0, 0, 0, 0, 0]


def test_scores_without_ties_match_rank_metrics():
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [0.4, 0.3, 0.2, 0.1]])
    got = score_metrics(scores, np.array([3, 4]), ks=(1, 2, 3))
    # target 3 (score 0.5) is ranked 2nd; target 4 (0.1) is ranked 4th
    assert got["H@1"].tolist() == [0, 0]
    assert got["H@2"].tolist() == [1, 0]
    assert got["N@3"] == pytest.approx([1 / math.log2(3), 0.0])


def test_constant_scorer_gets_exactly_chance_not_one():
    scores = np.zeros((3, 20))
    got = score_metrics(scores, np.array([1, 7, 20]))
    assert got["H@1"] == pytest.approx([0.05] * 3)
    assert got["H@10"] == pytest.approx([0.5] * 3)
    pess = score_metrics(scores, np.array([1, 7, 20]), tie_policy="pessimistic")
    assert pess["H@1"].tolist() == [0, 0, 0]


def test_partial_tie_expectation():
    # target ties with one other candidate, one candidate strictly better: rank 2 or 3 equally likely
    scores = np.array([[5.0, 3.0, 3.0, 1.0]])
    got = score_metrics(scores, np.array([2]), ks=(1, 2, 3))
    assert got["H@1"][0] == 0.0
    assert got["H@2"][0] == pytest.approx(0.5)
    assert got["H@3"][0] == pytest.approx(1.0)
    assert got["N@2"][0] == pytest.approx(0.5 / math.log2(3))
    assert got["N@3"][0] == pytest.approx(0.5 * (1 / math.log2(3) + 1 / math.log2(4)))


def test_nan_and_inf_scores_are_lowest():
    scores = np.array([[np.nan, -np.inf, 0.0]])
    got = score_metrics(scores, np.array([1]), ks=(1, 2))
    assert got["H@1"][0] == 0.0
    assert got["H@2"][0] == pytest.approx(0.5)


def test_chance_levels_match_paper_section_1_1():
    chance = chance_metrics(20)
    assert chance["H@1"] == pytest.approx(0.05)
    assert chance["H@5"] == pytest.approx(0.25)
    assert chance["H@10"] == pytest.approx(0.5)
    assert round(chance["N@5"], 3) == 0.147
    assert round(chance["N@10"], 3) == 0.227


def test_metric_names_order():
    assert metric_names((1, 5, 10)) == ["H@1", "H@5", "H@10", "N@5", "N@10"]


def test_bootstrap_interval_contains_mean_and_is_seed_stable():
    values = {"H@1": np.r_[np.ones(30), np.zeros(70)]}
    a = bootstrap_ci(values, reps=500, seed=3)
    b = bootstrap_ci(values, reps=500, seed=3)
    assert a == b
    lo, hi = a["H@1"]
    assert lo < 0.3 < hi and 0.15 < lo and hi < 0.45


def test_paired_bootstrap_pvalue_known_cases():
    same = np.r_[np.ones(50), np.zeros(50)]
    assert paired_bootstrap_pvalue(same, same, reps=200, seed=0) == 1.0
    better = np.ones(200)
    worse = np.r_[np.ones(20), np.zeros(180)]
    assert paired_bootstrap_pvalue(better, worse, reps=200, seed=0) == pytest.approx(1 / 201)


# ---------------------------------------------------------------- target positions outside 1..n (issue 15)


@pytest.mark.parametrize("positions, message", [
    ([1, 0, 3], "target position 0 (row 1) is not within 1..4"),  # numpy read 0 as the last column
    ([-1, 2, 3], "target position -1 (row 0) is not within 1..4"),
    ([1, 2, 5], "target position 5 (row 2) is not within 1..4"),  # was an IndexError
    (np.array([1.0, 4.0, 9.0]), "target position 9.0 (row 2) is not within 1..4"),
    ([1, 2.5, 3], "target positions must be whole numbers, got [1.0, 2.5, 3.0]"),
    ([True, True, True], "target positions must be whole numbers, got [True, True, True]"),
    ([1, 2], "2 target positions for 3 rows of scores"),
    ([[1], [2], [3]], "target positions: expected one per instance, got an array of shape (3, 1)"),
])
def test_score_metrics_rejects_positions_outside_the_candidates(positions, message):
    scores = np.arange(12, dtype=float).reshape(3, 4)
    with pytest.raises(ValueError) as error:
        score_metrics(scores, positions)
    assert str(error.value) == message
    for policy in ("expected", "pessimistic"):
        assert score_metrics(scores, np.array([1.0, 4.0, 2.0]), tie_policy=policy)["H@1"].tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match=r"scores: expected a matrix \[instances, candidates\], got shape \(4,\)"):
        score_metrics(np.zeros(4), [1])


def test_list_metrics_rejects_positions_outside_the_candidates():
    with pytest.raises(ValueError, match=r"target position 0 \(row 1\) is not at least 1"):
        list_metrics([[1, 2], [1, 2]], [1, 0])  # no candidate count given: only positions below 1 are known bad
    with pytest.raises(ValueError, match=r"target position 21 \(row 0\) is not within 1..20"):
        list_metrics([[21, 1]], [21], n_candidates=20)
    with pytest.raises(ValueError, match="3 predictions for 2 targets"):
        list_ranks([None, None, None], [1, 2])
    assert list_ranks([[3, 20], None], [20, 1], n_candidates=20).tolist() == [2, 0]
    assert list_metrics([], [], n_candidates=20)["H@1"].tolist() == []


def test_bucket_means_and_chance_reject_bad_positions():
    with pytest.raises(ValueError, match=r"target position 21 \(row 1\) is not within 1..20"):
        bucket_means([1, 21], {"H@10": [1.0, 0.0]}, 20)  # fell in no bucket, silently
    with pytest.raises(ValueError, match=r"target position 0 \(row 0\) is not within 1..20"):
        bucket_means(np.array([0]), {"H@10": [1.0]}, 20)
    with pytest.raises(ValueError, match="H@10: 1 values for 2 positions"):
        bucket_means([1, 2], {"H@10": [1.0]}, 20)
    with pytest.raises(ValueError, match="n_candidates must be at least 1, got 0"):
        chance_metrics(0)
