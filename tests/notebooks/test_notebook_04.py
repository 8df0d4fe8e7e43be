"""Notebook 04 in the shared reduced chain (papermill, small smoke size): RTA training of both variants, logs, rows."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from recrepro.config import load_profile
from recrepro.stages.rta import run_rta
from tests.notebooks.conftest import REDUCED_OVERRIDES

RUN = load_profile("smoke", REDUCED_OVERRIDES)  # where the shared chain writes
STEPS = REDUCED_OVERRIDES["rta.max_steps"]


@pytest.fixture(scope="module")
def chain_root(reduced_chain):
    root, results = reduced_chain
    return root, results[:5]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the shared chain's time when this test is the first to need it
def test_chain_00_to_04_trains_both_variants_and_writes_rows(chain_root):
    root, results = chain_root  # results: notebooks 00-04 of the shared chain
    assert [(r.notebook[:2], r.status) for r in results] == [(f"0{i}", "ran") for i in range(5)]
    assert (RUN.run_dir(root) / "notebooks/04_rta.ipynb").is_file()
    rta = RUN.run_dir(root) / "rta/ml-100k"
    log = pd.read_csv(rta / "train_log.csv")
    assert list(log["step"]) == list(range(STEPS + 1))
    assert log["val_H@10"].notna().tolist() == [True] * (STEPS + 1)  # before, and after the last step
    for column in ("reward", "valid_share", "tool_calls_mean", "dropped_group_share", "loss", "calls_get_user_profile"):
        assert log[column].iloc[1:].notna().all(), column
    assert log["reward"].iloc[1:].between(-1.0, 1.1).all()
    assert len(pd.read_csv(rta / "train_log_r.csv")) == STEPS + 1
    for variant in ("tirr", "r"):
        assert (rta / variant / "final" / "config.json").is_file()
        assert (rta / variant / "final" / "tokenizer_config.json").is_file()
        assert (rta / variant / "checkpoints" / f"checkpoint-{STEPS}" / "optimizer.pt").is_file()
    table2 = pd.read_csv(RUN.results_dir(root) / "table2.csv")
    ours = table2[table2["source"] == "measured"].set_index("model")
    assert {"trained-TIRR-RTA", "trained-R"} <= set(ours.index)
    assert (ours.loc[["trained-TIRR-RTA", "trained-R"], "n"] == REDUCED_OVERRIDES["agent.eval_instances"]).all()
    assert (table2["source"] == "paper").any() and "trained-TIRR-RTA" in set(table2[table2["source"] == "paper"]["model"])
    table1 = pd.read_csv(RUN.results_dir(root) / "table1.csv")
    assert "AgenticRec (RTA)" in set(table1[table1["source"] == "measured"]["model"])
    cards = json.loads((RUN.results_dir(root) / "eval_card.json").read_text())
    assert {"ml-100k/trained-TIRR-RTA", "ml-100k/trained-R"} <= set(cards)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_rerun_skips_training_with_unchanged_config(chain_root):
    root, _ = chain_root
    messages = []
    again = run_rta(load_profile("smoke", REDUCED_OVERRIDES), root, variant="both", log=messages.append)
    assert set(again["runs"]) == {"ml-100k/tirr", "ml-100k/r"}
    assert all(r["skipped"] for r in again["runs"].values())
    assert len(messages) == 2 and all("skipping" in m for m in messages)
