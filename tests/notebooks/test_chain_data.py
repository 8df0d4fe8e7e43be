"""Notebooks 00-02 in the shared reduced chain (papermill, smoke size): the data stage and the classic baselines."""

from __future__ import annotations

import pandas as pd
import pytest

from recrepro.config import load_profile
from recrepro.runner import run_chain
from tests.notebooks.conftest import REDUCED_OVERRIDES

RUN = load_profile("smoke", REDUCED_OVERRIDES)  # where the shared chain writes


@pytest.fixture(scope="module")
def chain_root(reduced_chain):
    root, results = reduced_chain
    return root, results[:3]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the shared chain's time when this test is the first to need it
def test_notebooks_00_to_02_produce_stats_and_table1(chain_root):
    root, results = chain_root
    assert [r.status for r in results] == ["ran", "ran", "ran"]
    for name in ("00_setup", "01_data", "02_sasrec"):
        assert (RUN.run_dir(root) / "notebooks" / f"{name}.ipynb").is_file()
    stats = pd.read_csv(RUN.results_dir(root) / "dataset_stats.csv")
    assert stats.loc[0, "dataset"] == "ml-100k" and stats.loc[0, "users"] == REDUCED_OVERRIDES["data.max_users"]
    table = pd.read_csv(RUN.results_dir(root) / "table1.csv")
    assert list(table.columns[:10]) == ["dataset", "model", "H@1", "H@5", "H@10", "N@5", "N@10", "n",
                                        "profile", "source"]
    ours = table[table["source"] != "paper"].set_index("model")
    assert {"Chance", "Random", "MostPop", "SASRec", "GRU4Rec", "Caser", "ReaRec-ERL", "ReaRec-PRL"} <= set(ours.index)
    assert (ours["profile"] == RUN.run.name).all() and (ours["dataset"] == "ml-100k").all()
    assert ours.loc["Chance", "H@10"] == pytest.approx(0.5)
    n_test = stats.loc[0, "samples_test"]
    classic = ["Random", "MostPop", "SASRec", "GRU4Rec", "Caser", "ReaRec-ERL", "ReaRec-PRL"]
    assert (ours.loc[["Chance", *classic], "n"] == n_test).all()  # the LLM rows use agent.eval_instances
    for model in classic:
        assert 0.0 <= ours.loc[model, "H@1"] <= ours.loc[model, "H@5"] <= ours.loc[model, "H@10"] <= 1.0
    assert (table["source"] == "paper").any()
    assert (RUN.results_dir(root) / "table1.md").is_file()
    assert (RUN.run_dir(root) / "models" / "ml-100k" / "SASRec" / "weights.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_rerun_with_nothing_changed_skips_every_stage(chain_root):
    root, _ = chain_root
    again = run_chain("smoke", root, stop=2, overrides=REDUCED_OVERRIDES, log=lambda _: None)
    assert [r.status for r in again] == ["skipped"] * 3
