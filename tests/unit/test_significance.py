"""Paired significance test: the bootstrap p-value on known cases, pairing by sample id, baseline choice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recrepro.evaluation import save_per_instance
from recrepro.metrics import paired_bootstrap_pvalue
from recrepro.significance import (describe_test, paired_comparison, render_markdown, run_significance,
                                   strongest_baseline)

METRICS = ["H@1", "H@5", "H@10", "N@5", "N@10"]


def _per_instance(ids, values) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": ids, **{m: np.asarray(values, float) for m in METRICS}})


def test_identical_rows_give_p_one():
    a = np.array([1.0, 0.0, 0.5, 0.0, 1.0])
    assert paired_bootstrap_pvalue(a, a, reps=999, seed=7) == 1.0


def test_dominated_case_gives_the_smallest_possible_p():
    # ours always one better: every centred resample mean is 0, never as extreme as the observed 1
    a, b = np.ones(30), np.zeros(30)
    assert paired_bootstrap_pvalue(a, b, reps=999, seed=7) == pytest.approx(1 / 1000)
    assert paired_bootstrap_pvalue(b, a, reps=999, seed=7) == pytest.approx(1 / 1000)  # two-sided


def test_p_value_is_exact_for_a_fixed_seed():
    a = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    b = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    # the same call twice is the same number; recomputed by hand from the documented procedure
    diff = a - b
    rng = np.random.default_rng(3)
    means = (diff - diff.mean())[rng.integers(0, 8, size=(200, 8))].mean(axis=1)
    expected = (np.sum(np.abs(means) >= abs(diff.mean())) + 1) / 201
    assert paired_bootstrap_pvalue(a, b, reps=200, seed=3) == expected
    assert 0.0 < expected < 1.0


def test_pairing_uses_only_shared_sample_ids():
    ours = _per_instance([1, 2, 3, 4], [1, 1, 1, 1])
    base = _per_instance([3, 4, 5, 6, 7], [0, 1, 0, 0, 0])  # shares ids 3 and 4
    rows = paired_comparison(ours, base, METRICS, reps=99, seed=7)
    assert [r["metric"] for r in rows] == METRICS
    first = rows[0]
    assert first["n"] == 2 and first["ours"] == 1.0 and first["baseline"] == 0.5 and first["diff"] == 0.5
    assert first["test"] == describe_test(99) == "paired bootstrap, two-sided, 99 resamples"


def test_duplicate_sample_ids_are_an_error():
    with pytest.raises(ValueError, match="ours: per-instance table repeats a sample_id"):
        paired_comparison(_per_instance([1, 1], [1, 0]), _per_instance([1], [0]), METRICS, 9, 0)


def test_strongest_baseline_skips_agenticrec_paper_and_not_run_rows():
    table = pd.DataFrame({
        "dataset": ["ml-100k"] * 5 + ["other"],
        "model": ["SASRec", "MostPop", "AgenticRec (RTA)", "LLaRA", "ReRe", "GRU4Rec"],
        "source": ["measured", "measured", "measured", "paper", "not run", "measured"],
        "N@10": [0.6, 0.4, 0.9, 0.99, np.nan, 0.95],
    })
    assert strongest_baseline(table, "ml-100k") == "SASRec"
    assert strongest_baseline(table, "missing") is None


def test_run_significance_prefers_ppr_and_writes_csv_and_md(tmp_path, smoke_profile):
    ids = list(range(10))
    save_per_instance(smoke_profile, "ml-100k", "AgenticRec (RTA)", ids, {m: np.zeros(10) for m in METRICS}, tmp_path)
    ones = {m: np.ones(10) for m in METRICS}
    save_per_instance(smoke_profile, "ml-100k", "AgenticRec (RTA+PPR)", ids, ones, tmp_path)
    save_per_instance(smoke_profile, "ml-100k", "SASRec", list(range(20)), {m: np.zeros(20) for m in METRICS}, tmp_path)
    results = smoke_profile.results_dir(tmp_path)
    results.mkdir(parents=True)
    pd.DataFrame({"dataset": ["ml-100k"], "model": ["SASRec"], "source": ["measured"], "N@10": [0.5]}).to_csv(
        results / "table1.csv", index=False)
    frame = run_significance(smoke_profile, tmp_path)
    assert list(frame["ours_model"].unique()) == ["AgenticRec (RTA+PPR)"]
    assert list(frame["baseline_model"].unique()) == ["SASRec"]
    assert (frame["n"] == 10).all() and (frame["diff"] == 1.0).all()
    assert frame["p_value"].tolist() == pytest.approx([1 / 1001] * 5)  # eval.bootstrap_reps = 1000
    assert pd.read_csv(results / "significance.csv").columns.tolist()[:4] == ["dataset", "metric", "ours_model",
                                                                             "baseline_model"]
    # the p-value at the floor 1/1001 prints as a bound, never as "0.0010"; McNemar: 2 * 0.5**10 = 0.00195
    assert ("| ml-100k | N@10 | AgenticRec (RTA+PPR) | SASRec | 1.0000 | 0.0000 | 1.0000 [1.0000, 1.0000] | < 0.001 (1,000 resamples) "
            "| 0.0020 (exact McNemar) | 10 |") in (results / "significance.md").read_text()
    assert (frame["p_text"] == "< 0.001 (1,000 resamples)").all() and (frame["p_floor"] == 1 / 1001).all()


def test_without_agenticrec_the_file_says_why(tmp_path, smoke_profile):
    frame = run_significance(smoke_profile, tmp_path)
    assert len(frame) == 1 and frame["n"].iloc[0] == 0
    assert frame["test"].iloc[0] == "not run: no AgenticRec per-instance file (run notebook 04)"
    assert "not run: no AgenticRec" in render_markdown(frame, "smoke")
