"""Notebooks 00-02 through papermill at smoke size: the data stage and the classic baselines."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from recrepro.config import load_profile
from recrepro.runner import run_chain
from tests.conftest import REPO_ROOT

SMALL = {"data.max_users": 60, "recbole.epochs": 1}
RUN = load_profile("smoke", SMALL)  # where the chain of this module writes


@pytest.fixture(scope="module")
def chain_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    shutil.copytree(REPO_ROOT / "notebooks", root / "notebooks")
    results = run_chain("smoke", root, stop=2, overrides=SMALL, log=lambda _: None)
    return root, results


@pytest.mark.slow
def test_notebooks_00_to_02_produce_stats_and_table1(chain_root):
    root, results = chain_root
    assert [r.status for r in results] == ["ran", "ran", "ran"]
    for name in ("00_setup", "01_data", "02_sasrec"):
        assert (RUN.run_dir(root) / "notebooks" / f"{name}.ipynb").is_file()
    stats = pd.read_csv(RUN.results_dir(root) / "dataset_stats.csv")
    assert stats.loc[0, "dataset"] == "ml-100k" and stats.loc[0, "users"] == 60
    table = pd.read_csv(RUN.results_dir(root) / "table1.csv")
    assert list(table.columns[:10]) == ["dataset", "model", "H@1", "H@5", "H@10", "N@5", "N@10", "n",
                                        "profile", "source"]
    ours = table[table["source"] != "paper"].set_index("model")
    assert {"Chance", "Random", "MostPop", "SASRec", "GRU4Rec", "Caser"} <= set(ours.index)
    assert (ours["profile"] == RUN.run.name).all() and (ours["dataset"] == "ml-100k").all()
    assert ours.loc["Chance", "H@10"] == pytest.approx(0.5)
    n_test = stats.loc[0, "samples_test"]
    assert (ours["n"] == n_test).all()
    for model in ("Random", "MostPop", "SASRec", "GRU4Rec", "Caser"):
        assert 0.0 <= ours.loc[model, "H@1"] <= ours.loc[model, "H@5"] <= ours.loc[model, "H@10"] <= 1.0
    assert (table["source"] == "paper").any()
    assert (RUN.results_dir(root) / "table1.md").is_file()
    assert (RUN.run_dir(root) / "models" / "ml-100k" / "SASRec" / "weights.safetensors").is_file()


@pytest.mark.slow
def test_rerun_with_nothing_changed_skips_every_stage(chain_root):
    root, _ = chain_root
    again = run_chain("smoke", root, stop=2, overrides=SMALL, log=lambda _: None)
    assert [r.status for r in again] == ["skipped"] * 3
