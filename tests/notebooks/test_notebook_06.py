"""Notebook 06 headless at small smoke size: frozen R / TIRR rows and cards, the trained LLM baselines'
rows (TALLRec-like SFT, S-DPO, LLaRA, ReRe), the "not run" paper rows and the significance file.

Notebook 04 (RTA training) is too slow to run here; an "AgenticRec (RTA)" per-instance file is
planted on the agent's test subset instead, so the significance test runs on real baseline files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recrepro.config import load_profile
from recrepro.runner import run_chain

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = {"data.max_users": 40, "recbole.epochs": 1, "agent.eval_instances": 12,
             "agent.max_new_tokens_per_turn": 128, "warmstart.steps": 6, "warmstart.instances": 12,
             "sft.steps": 2, "sft.train_instances": 8, "sft.batch_size": 2, "sft.max_new_tokens": 48,
             "sdpo.steps": 2, "sdpo.train_instances": 4, "llara.steps": 2, "llara.train_instances": 4,
             "rere.steps": 1, "rere.train_instances": 2, "rere.group_size": 2, "rta.batch_size": 2}
TRAINED = ("TALLRec-like (SFT)", "S-DPO", "LLaRA", "ReRe")
PLANTED = "AgenticRec (RTA)"
RUN = load_profile("smoke", OVERRIDES)  # where the chain of this module writes


def plant_agenticrec(root: Path) -> list[int]:
    """A fake RTA per-instance file on the agent's test subset: a hit at rank 1 on every other instance."""
    from recrepro.agent.evaluate import eval_subset
    from recrepro.data.pipeline import load_benchmark
    from recrepro.evaluation import save_per_instance

    profile = load_profile("smoke", OVERRIDES)
    ids = eval_subset(profile, load_benchmark(profile, "ml-100k", root).samples["test"])["sample_id"].tolist()
    hits = np.arange(len(ids)) % 2 == 0
    values = {m: hits.astype(float) for m in ("H@1", "H@5", "H@10", "N@5", "N@10")}
    save_per_instance(profile, "ml-100k", PLANTED, ids, values, root)
    return ids


@pytest.fixture(scope="module")
def chain_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain06")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    run_chain("smoke", root, stop=3, overrides=OVERRIDES, log=lambda _: None)
    plant_agenticrec(root)
    results = run_chain("smoke", root, start=6, stop=6, overrides=OVERRIDES, log=lambda _: None)
    return root, results


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_notebook_06_writes_frozen_rows_cards_and_trajectories(chain_root):
    root, results = chain_root
    assert [r.notebook for r in results if r.status == "ran"] == ["06_evaluate.ipynb"]
    results_dir = RUN.results_dir(root)
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
    assert set(cards) == {"ml-100k/frozen-R", "ml-100k/frozen-TIRR", *(f"ml-100k/{name}" for name in TRAINED)}
    assert cards["ml-100k/ReRe"]["valid_share"] == 1.0  # decoded under the candidate-list constraint
    for card in cards.values():
        assert 0.0 <= card["valid_share"] <= 1.0
        assert abs(card["valid_share"] + sum(card["invalid_reasons"].values()) - 1.0) < 1e-9
    assert cards["ml-100k/frozen-R"]["tool_calls_per_trajectory"]["mean"] == 0.0 or \
        cards["ml-100k/frozen-R"]["invalid_reasons"]["bad_tool_call"] > 0
    assert (results_dir / "eval_card.md").read_text().startswith("# Agent evaluation cards")
    lines = (RUN.run_dir(root) / "agent_eval" / "ml-100k" / "frozen-TIRR.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["messages"][0]["role"] == "system" and "turns" in first
    assert (RUN.run_dir(root) / "models" / "tiny-qwen3-s-warm" / "warmstart_info.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_notebook_06_adds_sft_row_not_run_rows_and_significance(chain_root):
    root, _ = chain_root
    results_dir = RUN.results_dir(root)
    table1 = pd.read_csv(results_dir / "table1.csv")
    measured = table1[table1["source"] == "measured"].set_index("model")
    for name in TRAINED:  # every trained LLM baseline on the agent's test lists
        row = measured.loc[name]
        assert row["n"] == OVERRIDES["agent.eval_instances"] and 0.0 <= row["H@1"] <= row["H@10"] <= 1.0
    for stage, steps, instances in (("sft", 2, 8), ("sdpo", 2, 4), ("llara", 2, 4), ("rere", 1, 2)):
        info = json.loads((RUN.run_dir(root) / stage / "ml-100k/final" / f"{stage}_info.json").read_text())
        assert info["steps"] == steps and info["instances"] == instances
    not_run = table1[table1["source"] == "not run"]
    # ReaRec (ERL, PRL), TALLRec (-like), S-DPO, LLaRA and ReRe run in smoke: only the GPT-4 rows are not run.
    assert sorted(not_run["model"]) == ["InteRecAgent", "LLMRank"]
    assert set(not_run["dataset"]) == {"ml-100k"} and not_run["H@1"].isna().all()
    assert "## Not run by this kit" in (results_dir / "table1.md").read_text()

    significance = pd.read_csv(results_dir / "significance.csv")
    assert significance["metric"].tolist() == ["H@1", "H@5", "H@10", "N@5", "N@10"]
    assert set(significance["ours_model"]) == {PLANTED}
    ours_rows = measured.drop(index=[m for m in measured.index if m.startswith("AgenticRec")])
    assert set(significance["baseline_model"]) == {ours_rows["N@10"].idxmax()}
    assert (significance["n"] == OVERRIDES["agent.eval_instances"]).all()  # the agent subset lies inside the test split
    assert significance["ours"].iloc[0] == 0.5  # the planted file: a hit on every other instance
    assert significance["p_value"].between(1 / 1001, 1.0).all()
    assert (results_dir / "significance.md").read_text().startswith("# Paired significance")
