"""Notebooks 00-05 headless (papermill) at small smoke size: PPR mining artifact, accuracy, rows, skip on rerun."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from recrepro.config import load_profile
from recrepro.io import verify_manifest
from recrepro.rl.ppr import run_ppr
from recrepro.runner import run_chain

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = {"data.max_users": 40, "recbole.epochs": 1, "warmstart.steps": 20, "warmstart.instances": 16,
             "rta.max_steps": 1, "rta.train_instances": 4, "rta.batch_size": 4, "rta.eval_instances": 4,
             "agent.eval_instances": 6, "ppr.train_instances": 8, "ppr.valid_instances": 6, "ppr.batch_size": 2,
             "ppr.max_steps": 1}


@pytest.fixture(scope="module")
def chain_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain05")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    results = run_chain("smoke", root, stop=5, overrides=OVERRIDES, log=lambda _: None)
    return root, results


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_chain_00_to_05_mines_pairs_and_writes_accuracy_and_rows(chain_root):
    root, results = chain_root
    assert [(r.notebook[:2], r.status) for r in results] == [(f"0{i}", "ran") for i in range(6)]
    folder = root / "runs/smoke/ppr/ml-100k"
    manifest = verify_manifest(folder / "round1/pairs")
    stats = json.loads((folder / "round1/pairs/mining_stats.json").read_text())
    assert stats["train"]["instances"] == 8 and stats["valid"]["instances"] == 6
    assert manifest["rows"] == {"pairs_train": stats["train"]["pairs"], "pairs_valid": stats["valid"]["pairs"]}
    pairs = pd.read_parquet(folder / "round1/pairs/pairs_train.parquet")
    assert (pairs["negative_item"] != pairs["target_item"]).all()
    assert (folder / "final/config.json").is_file()
    record = json.loads((folder / "stamp.json").read_text())
    trained = record["rounds"][0]["trained"]
    assert trained == (stats["train"]["pairs"] > 0)  # no pairs: the stage-1 policy is carried forward
    if trained:
        assert len(pd.read_csv(folder / "train_log.csv")) >= 1
    accuracy = json.loads((folder / "preference_accuracy.json").read_text())
    assert accuracy["before"]["n_pairs"] == accuracy["after"]["n_pairs"] == stats["valid"]["pairs"]
    table = pd.read_csv(root / "results/smoke/preference_accuracy.csv")
    assert set(table["source"]) == {"measured", "paper"}
    assert table[table["source"] == "paper"]["all"].tolist() == [0.19, 0.24]
    table2 = pd.read_csv(root / "results/smoke/table2.csv")
    ours = table2[table2["source"] == "measured"].set_index("model")
    assert {"trained-TIRR-RTA", "trained-TIRR-RTA+PPR"} <= set(ours.index)
    assert ours.loc["trained-TIRR-RTA+PPR", "n"] == 6
    table1 = pd.read_csv(root / "results/smoke/table1.csv")
    assert "AgenticRec (RTA+PPR)" in set(table1[table1["source"] == "measured"]["model"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_rerun_skips_ppr_with_unchanged_config(chain_root):
    root, _ = chain_root
    messages = []
    again = run_ppr(load_profile("smoke", OVERRIDES), root, log=messages.append)
    assert again["runs"]["ml-100k"]["skipped"] is True
    assert len(messages) == 1 and "skipping" in messages[0]
    assert set(again["accuracy"]["stage"]) == {"RTA", "RTA+PPR"}
