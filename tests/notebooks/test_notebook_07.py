"""Notebooks 00-07 headless (papermill) at small smoke size: Figure 3 from notebook 04's log, the G and
backbone sweeps (real RTA runs, kept out of Table 1/2), their long CSVs and Figures 3-5 as PNG + PDF."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from recrepro.config import load_profile
from tests.notebooks.conftest import REDUCED_OVERRIDES

RUN = load_profile("smoke", REDUCED_OVERRIDES)  # where the chain of this module writes


METRICS = {"H@1", "H@5", "H@10", "N@5", "N@10"}
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # every test here needs the chain fixture


@pytest.fixture(scope="module")
def chain_root(reduced_chain):
    return reduced_chain


def test_chain_00_to_07_draws_the_three_figures(chain_root):
    root, results = chain_root
    assert results[-1].notebook == "07_figures.ipynb" and all(r.status == "ran" for r in results)
    assert (RUN.run_dir(root) / "notebooks/07_figures.ipynb").is_file()
    figures = RUN.figures_dir(root)
    for stem in ("fig3_tool_usage", "fig4_group_size", "fig5_backbone_size"):
        assert (figures / f"{stem}.png").stat().st_size > 10_000, stem
        assert (figures / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-", stem


def test_sweep_results_are_long_tables_of_real_runs(chain_root):
    root, _ = chain_root
    fig4 = pd.read_csv(RUN.results_dir(root) / "fig4_group_size.csv")
    assert sorted(fig4["group_size"].unique()) == [2, 4, 8] and set(fig4["metric"]) == METRICS
    assert (fig4["profile"] == RUN.run.name).all() and (fig4["n"] == 3).all()
    assert fig4["value"].between(0, 1).all() and (fig4["backbone"] == "tiny-qwen3-s").all()
    fig5 = pd.read_csv(RUN.results_dir(root) / "fig5_backbone_size.csv")
    sizes = fig5.drop_duplicates("backbone")
    assert list(sizes["backbone"]) == ["tiny-qwen3-s", "tiny-qwen3-m", "tiny-qwen3-l"]
    assert sizes["parameters"].is_monotonic_increasing and sizes["parameters"].nunique() == 3
    assert (fig5["group_size"] == 2).all() and (fig5["n"] == 3).all()
    # Every backbone has a stage-1 row set and a stage 1 + PPR row set (sweeps.backbone_ppr).
    assert fig5.groupby(["backbone", "stage"]).size().to_dict() == {
        (b, stage): 5 for b in ("tiny-qwen3-s", "tiny-qwen3-m", "tiny-qwen3-l") for stage in ("RTA", "RTA+PPR")}
    # Figure 5's stage-1 size-s point is Figure 4's G=2 run: the same numbers.
    s_point = fig5[(fig5["backbone"] == "tiny-qwen3-s") & (fig5["stage"] == "RTA")].set_index("metric")["value"]
    g2 = fig4[fig4["group_size"] == 2].set_index("metric")["value"]
    assert s_point.to_dict() == g2.to_dict()
    sweeps = RUN.run_dir(root) / "sweeps/ml-100k"
    for name in ("tiny-qwen3-s-G2", "tiny-qwen3-s-G4", "tiny-qwen3-s-G8", "tiny-qwen3-m-G2", "tiny-qwen3-l-G2"):
        assert (sweeps / name / "final" / "config.json").is_file(), name
        log = pd.read_csv(sweeps / name / "train_log.csv")
        assert list(log["step"]) == [0, 1] and log["val_H@10"].notna().all(), name
    for name in ("tiny-qwen3-s-G2", "tiny-qwen3-m-G2", "tiny-qwen3-l-G2"):
        ppr = sweeps / name / "ppr"
        assert (ppr / "final" / "config.json").is_file() and (ppr / "preference_accuracy.json").is_file(), name
        assert (ppr / "round1" / "pairs" / "manifest.json").is_file(), name
    runs = json.loads((sweeps / "sweeps.json").read_text())
    assert len(runs) == 5 + 3


def test_sweeps_stay_out_of_the_main_tables(chain_root):
    root, _ = chain_root
    for stem in ("table1", "table2"):
        table = pd.read_csv(RUN.results_dir(root) / f"{stem}.csv")
        assert not table["model"].str.startswith("sweep").any(), stem
    # The main stage-1 run keeps its own folder and warm-started start model.
    assert (RUN.run_dir(root) / "rta/ml-100k/tirr/final/config.json").is_file()
    warm = json.loads((RUN.run_dir(root) / "models/tiny-qwen3-s-warm/warmstart_info.json").read_text())
    assert warm["settings"]["steps"] == 20  # the chain's warm start, not the sweep's 2 steps
    assert json.loads((RUN.run_dir(root) / "models/tiny-qwen3-m-warm/warmstart_info.json").read_text())[
        "settings"]["steps"] == 2
