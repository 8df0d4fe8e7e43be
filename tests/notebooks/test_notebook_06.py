"""Notebook 06 in the shared reduced chain (papermill, small smoke size): frozen R / TIRR rows and cards, the
trained LLM baselines' rows (TALLRec-like SFT, S-DPO, LLaRA, ReRe), the "not run" paper rows and the
significance file, with the chain's real RTA and PPR rows (notebooks 04, 05) as AgenticRec.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from recrepro.config import load_profile
from tests.notebooks.conftest import REDUCED_OVERRIDES

RUN = load_profile("smoke", REDUCED_OVERRIDES)  # where the shared chain writes
N_EVAL = REDUCED_OVERRIDES["agent.eval_instances"]
TRAINED = ("TALLRec-like (SFT)", "S-DPO", "LLaRA", "ReRe")


@pytest.fixture(scope="module")
def chain_root(reduced_chain):
    root, results = reduced_chain
    return root, results[:7]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the shared chain's time when this test is the first to need it
def test_notebook_06_writes_frozen_rows_cards_and_trajectories(chain_root):
    root, results = chain_root
    assert (results[6].notebook, results[6].status) == ("06_evaluate.ipynb", "ran")
    results_dir = RUN.results_dir(root)
    table2 = pd.read_csv(results_dir / "table2.csv")
    ours = table2[table2["source"] != "paper"].set_index("model")
    assert {"Chance", "frozen-R", "frozen-TIRR"} <= set(ours.index)
    assert (table2["source"] == "paper").any()  # the paper's frozen rows beside ours
    table1 = pd.read_csv(results_dir / "table1.csv")
    names = set(table1.loc[table1["source"] == "measured", "model"])
    assert {"LLMRank-like (frozen R)", "InteRecAgent-like (frozen TIRR)"} <= names
    assert (ours.loc[["frozen-R", "frozen-TIRR"], "n"] == N_EVAL).all()
    for model in ("frozen-R", "frozen-TIRR"):
        row = ours.loc[model]
        assert 0.0 <= row["H@1"] <= row["H@5"] <= row["H@10"] <= 1.0
    cards = json.loads((results_dir / "eval_card.json").read_text())
    assert {"ml-100k/frozen-R", "ml-100k/frozen-TIRR", *(f"ml-100k/{name}" for name in TRAINED)} <= set(cards)
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
@pytest.mark.timeout(1800)
def test_notebook_06_adds_sft_row_not_run_rows_and_significance(chain_root):
    root, _ = chain_root
    results_dir = RUN.results_dir(root)
    table1 = pd.read_csv(results_dir / "table1.csv")
    measured = table1[table1["source"] == "measured"].set_index("model")
    for name in TRAINED:  # every trained LLM baseline on the agent's test lists
        row = measured.loc[name]
        assert row["n"] == N_EVAL and 0.0 <= row["H@1"] <= row["H@10"] <= 1.0
    for stage, steps, instances in (("sft", 2, 8), ("sdpo", 1, 4), ("llara", 1, 4), ("rere", 1, 4)):
        info = json.loads((RUN.run_dir(root) / stage / "ml-100k/final" / f"{stage}_info.json").read_text())
        assert info["steps"] == steps and info["instances"] == instances
    not_run = table1[table1["source"] == "not run"]
    # ReaRec (ERL, PRL), TALLRec (-like), S-DPO, LLaRA and ReRe run in smoke: only the GPT-4 rows are not run.
    assert sorted(not_run["model"]) == ["InteRecAgent", "LLMRank"]
    assert set(not_run["dataset"]) == {"ml-100k"} and not_run["H@1"].isna().all()
    assert "## Not run by this kit" in (results_dir / "table1.md").read_text()

    significance = pd.read_csv(results_dir / "significance.csv")
    assert significance["metric"].tolist() == ["H@1", "H@5", "H@10", "N@5", "N@10"]
    assert set(significance["ours_model"]) == {"AgenticRec (RTA+PPR)"}  # notebook 05 ran in the chain
    ours_rows = measured.drop(index=[m for m in measured.index if m.startswith("AgenticRec")])
    assert set(significance["baseline_model"]) == {ours_rows["N@10"].idxmax()}
    assert (significance["n"] == N_EVAL).all()  # the agent subset lies inside the test split
    ours = measured.loc["AgenticRec (RTA+PPR)"]
    assert significance.set_index("metric").loc["H@10", "ours"] == pytest.approx(ours["H@10"])
    assert significance["p_value"].between(1 / 1001, 1.0).all()
    assert (results_dir / "significance.md").read_text().startswith("# Paired significance")
