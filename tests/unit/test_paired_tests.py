"""Paired comparisons: bootstrap interval and p-value floor, exact McNemar, Wilcoxon, the comparisons file."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

import recrepro.metrics as metrics
from recrepro.evaluation import FIRST_TEN, save_per_instance
from recrepro.metrics import paired_bootstrap, paired_bootstrap_columns
from recrepro.significance import (COMPARISON_COLUMNS, COMPARISONS, MCNEMAR, WILCOXON, bootstrap_p_text,
                                   compare_rows, floor_bound, format_p, mcnemar_exact, paired_comparison,
                                   run_comparisons, second_test, wilcoxon_p)

METRICS = ["H@1", "H@5", "H@10", "N@5", "N@10"]


def _frame(ids, columns: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": ids, **{m: np.asarray(v, float) for m, v in columns.items()}})


def test_floor_bound_and_p_text():
    assert floor_bound(1000) == 0.001 and floor_bound(10000) == 0.0001
    assert floor_bound(999) == 0.002 and floor_bound(99) == pytest.approx(0.02)
    assert bootstrap_p_text(1 / 1001, True, 1000) == "< 0.001 (1,000 resamples)"
    assert bootstrap_p_text(1 / 10001, True, 10000) == "< 0.0001 (10,000 resamples)"
    assert bootstrap_p_text(13 / 1001, False, 1000) == "0.0130"
    assert format_p(0.0123) == "0.0123" and format_p(1.2e-6) == "1.2e-06" and format_p(float("nan")) == "–"


def test_identical_rows_give_zero_difference_and_p_one():
    values = {"H@10": [1, 0, 1, 0, 1], "N@10": [0.5, 0.0, 1.0, 0.0, 0.3]}
    rows = paired_comparison(_frame(range(5), values), _frame(range(5), values), ["H@10", "N@10"], 1000, 7)
    for row in rows:
        assert row["diff"] == 0.0 and row["diff_lo"] == 0.0 and row["diff_hi"] == 0.0
        assert row["p_value"] == 1.0 and row["p_text"] == "1.0000" and row["second_p"] == 1.0
    assert [r["second_test"] for r in rows] == [MCNEMAR, WILCOXON]


def test_always_better_row_sits_at_the_floor_and_prints_a_bound():
    ours = _frame(range(30), {m: np.ones(30) for m in METRICS})
    base = _frame(range(30), {m: np.zeros(30) for m in METRICS})
    rows = paired_comparison(ours, base, METRICS, reps=1000, seed=7)
    for row in rows:
        assert row["diff"] == 1.0 and (row["diff_lo"], row["diff_hi"]) == (1.0, 1.0)
        assert row["p_value"] == row["p_floor"] == 1 / 1001 and row["p_text"] == "< 0.001 (1,000 resamples)"
        assert row["second_test"] == MCNEMAR and row["second_p"] == pytest.approx(2 * 0.5 ** 30, rel=1e-12)
    # two-sided: the other direction is at the floor too
    assert paired_bootstrap(np.zeros(30), np.ones(30), 1000, 7).at_floor


def test_bootstrap_interval_and_p_follow_the_documented_procedure():
    a = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    b = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    diff = a - b
    draws = np.random.default_rng(3).integers(0, 8, size=(200, 8))
    means = diff[draws].mean(axis=1)
    result = paired_bootstrap(a, b, reps=200, seed=3)
    assert result.diff == 0.25 and result.n == 8 and result.reps == 200
    assert (result.lo, result.hi) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), abs=1e-12)
    extreme = np.sum(np.abs(means - 0.25) >= 0.25)
    assert result.p_value == (extreme + 1) / 201 and not result.at_floor


def test_chunking_does_not_change_the_draws(monkeypatch):
    draws = np.random.default_rng(11).integers(0, 37, size=(500, 37))
    expected = np.stack([np.bincount(row, minlength=37) for row in draws])
    whole = np.concatenate(list(metrics.resample_counts(37, 500, 11)))
    diffs = np.random.default_rng(0).normal(size=(37, 3))
    before = paired_bootstrap_columns(diffs, 500, 11)
    monkeypatch.setattr(metrics, "BOOTSTRAP_CHUNK_ELEMENTS", 37 * 7)  # 72 chunks, the last one short
    chunked = np.concatenate(list(metrics.resample_counts(37, 500, 11)))
    assert (whole == expected).all() and (chunked == expected).all()
    after = paired_bootstrap_columns(diffs, 500, 11)  # equal up to the rounding of the matrix product
    for x, y in zip(before, after):
        assert (x.p_value, x.lo, x.hi) == pytest.approx((y.p_value, y.lo, y.hi), abs=1e-12)


def test_ten_thousand_resamples_of_400_take_well_under_a_second():
    rng = np.random.default_rng(1)
    ours = _frame(range(400), {m: (rng.random(400) < 0.6).astype(float) for m in METRICS})
    base = _frame(range(400), {m: (rng.random(400) < 0.5).astype(float) for m in METRICS})
    best = float("inf")
    for _ in range(3):  # the best of three: the machine is shared
        began = time.perf_counter()
        rows = paired_comparison(ours, base, METRICS, reps=10_000, seed=7)
        best = min(best, time.perf_counter() - began)
    assert best < 1.0 and len(rows) == 5


def test_exact_mcnemar_on_a_hand_made_case():
    a = np.array([1, 1, 1, 1, 1, 0, 1, 0], float)
    b = np.array([0, 0, 0, 0, 0, 1, 1, 0], float)
    # 5 pairs only ours hit, 1 only the baseline: P(X <= 1) + P(X >= 5) for X ~ Bin(6, 1/2) = 14/64
    assert mcnemar_exact(a, b) == pytest.approx(14 / 64, rel=1e-12)
    assert mcnemar_exact(b, a) == pytest.approx(14 / 64, rel=1e-12)
    assert mcnemar_exact(a, a) == 1.0
    assert second_test(a, b) == (MCNEMAR, pytest.approx(14 / 64, rel=1e-12))


def test_wilcoxon_on_a_hand_made_case():
    a = np.array([0.3, 0.4, 0.5, 0.6, 0.7, 0.25])
    b = np.array([0.2, 0.2, 0.2, 0.2, 0.2, 0.25])  # differences 0.1..0.5 and one zero, dropped
    # exact null distribution of 5 signed ranks: all positive has probability 1/32, two-sided 2/32
    assert wilcoxon_p(a, b) == pytest.approx(0.0625, rel=1e-12)
    assert wilcoxon_p(a, a) == 1.0
    # hit values that are expectations over tied scores (0.5) are not 0/1: Wilcoxon, not McNemar
    assert second_test(np.array([1.0, 0.5, 0.0]), np.array([0.0, 0.0, 0.0]))[0] == WILCOXON


def test_compare_rows_reads_the_saved_files(tmp_path, smoke_profile):
    save_per_instance(smoke_profile, "ml-100k", "trained-TIRR-RTA", [1, 2, 3, 4],
                      {m: np.array([1.0, 1.0, 0.0, 1.0]) for m in METRICS}, tmp_path)
    save_per_instance(smoke_profile, "ml-100k", "MostPop", [0, 1, 2, 3, 4, 5],
                      {m: np.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0]) for m in METRICS}, tmp_path)
    rows = compare_rows(smoke_profile, tmp_path, "ml-100k", "trained-TIRR-RTA", "MostPop", ["H@10", "N@10"])
    assert [r["metric"] for r in rows] == ["H@10", "N@10"]
    row = rows[0]
    assert row["dataset"] == "ml-100k" and row["ours_model"] == "trained-TIRR-RTA" and row["baseline_model"] == "MostPop"
    assert row["n"] == 4 and row["ours"] == 0.75 and row["baseline"] == 0.25 and row["diff"] == 0.5
    assert row["p_floor"] == 1 / 1001 and row["test"] == "paired bootstrap, two-sided, 1000 resamples"
    assert row["second_test"] == MCNEMAR and row["second_p"] == 0.5  # ours only: ids 1 and 4; base only: 3
    with pytest.raises(FileNotFoundError, match="trained-R"):
        compare_rows(smoke_profile, tmp_path, "ml-100k", "trained-R", "MostPop", ["H@10"])


def test_run_comparisons_writes_the_pairs_whose_files_exist(tmp_path, smoke_profile):
    ids = list(range(10))
    ones, zeros = {m: np.ones(10) for m in METRICS}, {m: np.zeros(10) for m in METRICS}
    save_per_instance(smoke_profile, "ml-100k", "trained-TIRR-RTA", ids, ones, tmp_path)
    save_per_instance(smoke_profile, "ml-100k", "frozen-TIRR", ids, ones, tmp_path)
    save_per_instance(smoke_profile, "ml-100k", FIRST_TEN, ids, zeros, tmp_path)
    frame = run_comparisons(smoke_profile, tmp_path)
    results = smoke_profile.results_dir(tmp_path)
    assert pd.read_csv(results / "comparisons.csv").columns.tolist() == COMPARISON_COLUMNS
    assert list(dict.fromkeys(frame["comparison"])) == ["RTA vs its starting policy", "RTA vs positions"]
    same = frame[frame["comparison"] == "RTA vs its starting policy"]
    assert (same["diff"] == 0).all() and (same["p_value"] == 1).all() and (same["p_text"] == "1.0000").all()
    better = frame[frame["comparison"] == "RTA vs positions"]
    assert (better["p_text"] == "< 0.001 (1,000 resamples)").all() and (better["diff"] == 1).all()
    text = (results / "comparisons.md").read_text()
    assert "| RTA vs positions | trained-TIRR-RTA | First ten candidates | H@10 | 1.0000 | 0.0000 | " \
           "1.0000 [1.0000, 1.0000] | < 0.001 (1,000 resamples) | 0.0020 (exact McNemar) | 10 |" in text
    assert "Not compared (a per-instance file is missing): tools vs reasoning only (trained-TIRR-RTA vs trained-R)" \
        in text


def test_comparison_names_are_the_rows_the_chain_writes():
    from recrepro.agent.evaluate import FROZEN_LABELS
    from recrepro.rl.ppr import TABLE2_NAME
    from recrepro.rl.rta import ROW_NAMES

    from recrepro.baselines import llara, rere, sdpo, sft

    written = {FROZEN_LABELS["tirr"][0], ROW_NAMES["tirr"][0], ROW_NAMES["r"][0], TABLE2_NAME, FIRST_TEN, "MostPop",
               sft.TABLE1_NAME, sdpo.TABLE1_NAME, rere.TABLE1_NAME, llara.TABLE1_NAME}
    assert {name for _, ours, base in COMPARISONS for name in (ours, base)} == written
