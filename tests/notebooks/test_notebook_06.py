"""Notebook 06 (zero-shot part) headless at small smoke size: frozen R and frozen TIRR rows, cards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from recrepro.runner import run_chain

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = {"data.max_users": 40, "recbole.epochs": 1, "agent.eval_instances": 12,
             "agent.max_new_tokens_per_turn": 128, "warmstart.steps": 6, "warmstart.instances": 12}


@pytest.fixture(scope="module")
def chain_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain06")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    run_chain("smoke", root, stop=3, overrides=OVERRIDES, log=lambda _: None)
    results = run_chain("smoke", root, start=6, stop=6, overrides=OVERRIDES, log=lambda _: None)
    return root, results


@pytest.mark.slow
def test_notebook_06_writes_frozen_rows_cards_and_trajectories(chain_root):
    root, results = chain_root
    assert [r.notebook for r in results if r.status == "ran"] == ["06_evaluate.ipynb"]
    results_dir = root / "results" / "smoke"
    table2 = pd.read_csv(results_dir / "table2.csv")
    ours = table2[table2["source"] != "paper"].set_index("model")
    assert {"Chance", "frozen-R", "frozen-TIRR"} <= set(ours.index)
    assert (table2["source"] == "paper").any()  # the paper's frozen rows beside ours
    table1 = pd.read_csv(results_dir / "table1.csv")
    names = set(table1.loc[table1["source"] == "measured", "model"])
    assert {"LLMRank-like (frozen R)", "InteRecAgent-like (frozen TIRR)"} <= names
    assert (ours.loc[["frozen-R", "frozen-TIRR"], "n"] == OVERRIDES["agent.eval_instances"]).all()
    for model in ("frozen-R", "frozen-TIRR"):
        row = ours.loc[model]
        assert 0.0 <= row["H@1"] <= row["H@5"] <= row["H@10"] <= 1.0
    cards = json.loads((results_dir / "eval_card.json").read_text())
    assert set(cards) == {"ml-100k/frozen-R", "ml-100k/frozen-TIRR"}
    for card in cards.values():
        assert 0.0 <= card["valid_share"] <= 1.0
        assert abs(card["valid_share"] + sum(card["invalid_reasons"].values()) - 1.0) < 1e-9
    assert cards["ml-100k/frozen-R"]["tool_calls_per_trajectory"]["mean"] == 0.0 or \
        cards["ml-100k/frozen-R"]["invalid_reasons"]["bad_tool_call"] > 0
    assert (results_dir / "eval_card.md").read_text().startswith("# Agent evaluation cards")
    lines = (root / "runs" / "smoke" / "agent_eval" / "ml-100k" / "frozen-TIRR.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["messages"][0]["role"] == "system" and "turns" in first
    assert (root / "runs" / "smoke" / "models" / "tiny-qwen3-s-warm" / "warmstart_info.json").is_file()
