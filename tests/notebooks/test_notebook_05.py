"""Notebook 05 in the shared reduced chain (papermill, small smoke size): PPR mining artifact, accuracy, rows, skip on rerun."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from recrepro.config import load_profile
from recrepro.io import verify_manifest
from recrepro.stages.ppr import run_ppr
from tests.notebooks.conftest import REDUCED_OVERRIDES

RUN = load_profile("smoke", REDUCED_OVERRIDES)  # where the chain of this module writes



@pytest.fixture(scope="module")
def chain_root(reduced_chain):
    root, results = reduced_chain
    return root, results[:6]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_chain_00_to_05_mines_pairs_and_writes_accuracy_and_rows(chain_root):
    root, results = chain_root
    assert [(r.notebook[:2], r.status) for r in results] == [(f"0{i}", "ran") for i in range(6)]
    folder = RUN.run_dir(root) / "ppr/ml-100k"
    manifest = verify_manifest(folder / "round1/pairs")
    stats = json.loads((folder / "round1/pairs/mining_stats.json").read_text())
    assert stats["train"]["instances"] == 8 and stats["valid"]["instances"] == 6
    assert manifest["rows"] == {"pairs_train": stats["train"]["pairs"], "pairs_valid": stats["valid"]["pairs"]}
    pairs = pd.read_parquet(folder / "round1/pairs/pairs_train.parquet")
    assert (pairs["negative_item"] != pairs["target_item"]).all()
    assert (folder / "final/config.json").is_file()
    record = json.loads((folder / "record.json").read_text())
    trained = record["rounds"][0]["trained"]
    assert trained == (stats["train"]["pairs"] > 0)  # no pairs: the stage-1 policy is carried forward
    if trained:
        assert len(pd.read_csv(folder / "train_log.csv")) >= 1
    accuracy = json.loads((folder / "preference_accuracy.json").read_text())
    assert accuracy["before"]["n_pairs"] == accuracy["after"]["n_pairs"] == stats["valid"]["pairs"]
    table = pd.read_csv(RUN.results_dir(root) / "preference_accuracy.csv")
    assert set(table["source"]) == {"measured", "paper"}
    assert table[table["source"] == "paper"]["all"].tolist() == [0.19, 0.24]
    table2 = pd.read_csv(RUN.results_dir(root) / "table2.csv")
    ours = table2[table2["source"] == "measured"].set_index("model")
    assert {"trained-TIRR-RTA", "trained-TIRR-RTA+PPR"} <= set(ours.index)
    assert ours.loc["trained-TIRR-RTA+PPR", "n"] == 6
    table1 = pd.read_csv(RUN.results_dir(root) / "table1.csv")
    assert "AgenticRec (RTA+PPR)" in set(table1[table1["source"] == "measured"]["model"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_rerun_skips_ppr_with_unchanged_config(chain_root):
    root, _ = chain_root
    messages = []
    again = run_ppr(load_profile("smoke", REDUCED_OVERRIDES), root, log=messages.append)
    assert again["runs"]["ml-100k"]["skipped"] is True
    assert len(messages) == 1 and "skipping" in messages[0]
    assert set(again["accuracy"]["stage"]) == {"RTA", "RTA+PPR"}
