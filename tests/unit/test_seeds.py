"""The seed repeat of issue 12 (a): seeded profiles stay apart from the main run; exact aggregation."""

from __future__ import annotations

import pandas as pd
import pytest

from recrepro.config import load_profile
from recrepro.stages.seeds import aggregate, render, seed_profile, summarize


def test_seed_profile_has_its_own_seed_folders_and_one_job():
    profile = load_profile("cpu")
    seeded = seed_profile(profile, 7)
    assert (seeded.run.seed, seeded.run.name, seeded.run.jobs) == (7, "cpu-seed7", 1)
    assert seeded.run_dir("r").as_posix() == "r/runs/cpu-seed7"
    assert seeded.results_dir("r").as_posix() == "r/runs/cpu-seed7/results"
    assert profile.run.seed == 2026 and profile.run.name == "cpu"  # the main profile is not changed
    assert seeded.rta == profile.rta and seeded.warmstart == profile.warmstart


def _rows(diffs: list[float], lows: list[float]) -> pd.DataFrame:
    return pd.DataFrame([{"seed": s, "dataset": "d", "metric": "N@10", "ours": 0.4 + d, "baseline": 0.4,
                          "diff": d, "diff_lo": lo, "diff_hi": d + 0.05, "p_text": "0.01", "second_test": "x",
                          "second_p": 0.01, "n": 10} for s, d, lo in zip((1, 2, 3), diffs, lows)])


def test_aggregate_mean_and_sample_sd_over_seeds():
    summary = aggregate(_rows([0.1, 0.2, 0.3], [0.05, -0.01, 0.2])).iloc[0]
    assert summary["diff_mean"] == pytest.approx(0.2)
    assert summary["diff_std"] == pytest.approx(0.1)  # ddof 1: sqrt((0.01 + 0 + 0.01) / 2)
    assert summary["ours_mean"] == pytest.approx(0.6)
    assert summary["baseline_std"] == pytest.approx(0.0)
    assert (summary["seeds"], summary["diff_positive"]) == (3, 2)


def test_render_prints_each_seed_and_the_spread():
    frame = _rows([0.1, 0.2, 0.3], [0.05, -0.01, 0.2])
    text = render(frame, aggregate(frame), "cpu")
    assert "| 0.200 ± 0.100 | 2 of 3 |" in text
    assert text.count("| N@10 | 0.") == 3


def test_summarize_without_any_run_names_the_missing_rows(tmp_path):
    with pytest.raises(FileNotFoundError, match="trained-TIRR-RTA"):
        summarize(load_profile("cpu"), tmp_path, [1])


def test_one_seed_builds_its_start_model_before_stage_1(monkeypatch, tmp_path):
    """The getters only find the warm-started model; a seed's run must build it (the bug that stopped
    ``python -m recrepro.stages.seeds`` with ModelNotBuilt once the getters stopped building)."""
    from recrepro.stages import seeds

    calls: list[str] = []
    monkeypatch.setattr(seeds, "run_chain", lambda *a, **k: calls.append("chain"))
    monkeypatch.setattr(seeds, "build_starting_model", lambda profile, root: calls.append("build"))
    monkeypatch.setattr(seeds, "run_variant", lambda profile, root, dataset, variant, log=print:
                        calls.append(f"rta {dataset} {variant}"))
    monkeypatch.setattr(seeds, "run_zero_shot", lambda profile, root, variants: calls.append(f"frozen {variants}"))
    seeds.run_one_seed(seed_profile(load_profile("cpu"), 1), tmp_path / "p.yaml", tmp_path, log=lambda _: None)
    assert calls == ["chain", "build", "rta ml-100k tirr", "frozen ('tirr',)"]
