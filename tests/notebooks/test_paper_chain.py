"""The paper profile's notebooks 00-07 on a CPU, through papermill (issue 14, deliverable 4).

Four Amazon Reviews 2023-format datasets are downloaded from a local server and parsed; profiles are
written by the LLM writer; stage 1 runs with G = 8 and no warm start, PPR, the trained baselines and
both sweeps follow. Only what ``tests/paper_cpu_overrides.yaml`` names differs from the paper profile
(tiny models, few instances and steps). The numbers mean nothing (untrained tiny models); the test
checks that every paper-only branch runs and leaves its outputs where the notebooks read them.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from recrepro.config import load_profile
from tests.paper_fixture import OVERRIDES_FILE, paper_cpu_overrides, paper_datasets, run_paper_on_cpu

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
DATASETS = ["CDs_and_Vinyl", "Musical_Instruments", "Office_Products", "Video_Games"]


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_on_cpu")
    run_paper_on_cpu(root, log=lambda _: None)
    profile = load_profile("paper", paper_cpu_overrides("http://127.0.0.1:0/raw"))
    run_dirs = sorted((root / "runs").glob("paper+*"))
    assert len(run_dirs) == 1
    return root, run_dirs[0], profile


def test_the_override_set_changes_only_the_keys_it_names():
    paper = _flat(load_profile("paper").to_dict())
    ours = _flat(load_profile("paper", paper_cpu_overrides("http://127.0.0.1:0/raw")).to_dict())
    changed = {key for key in paper if paper[key] != ours[key] and key not in ("run.name", "source_path")}
    named = set(yaml.safe_load(OVERRIDES_FILE.read_text())) | {"data.base_url"}
    assert changed <= named
    assert paper_datasets() == DATASETS
    for key in ("rta.group_size", "agent.max_tool_calls", "warmstart.enabled", "rta.use_lora", "sweeps.dataset",
                "sweeps.group_sizes", "user_profile.generator", "agent.enable_thinking"):
        assert ours[key] == paper[key], key


def test_four_amazon_datasets_are_downloaded_parsed_and_described(paper_run):
    root, run_dir, _ = paper_run
    stats = pd.read_csv(run_dir / "results" / "dataset_stats.csv")
    assert list(stats["dataset"]) == DATASETS and (stats["samples_test"] > 0).all()
    for dataset in DATASETS:
        downloads = json.loads((root / "data" / "raw" / dataset / "downloads.json").read_text())
        assert len(downloads) == 2  # reviews and metadata, with their sizes and hashes


def test_profiles_are_written_by_the_llm_writer(paper_run):
    _, run_dir, _ = paper_run
    written = pd.read_csv(run_dir / "results" / "user_profiles.csv")
    assert list(written["dataset"]) == DATASETS
    assert set(written["generator"]) == {"llm"} and set(written["model"]) == {"tiny-qwen3"}
    assert (written["profiles"] == written["instances"]).all()


def test_every_table1_row_is_there_for_every_dataset(paper_run):
    _, run_dir, _ = paper_run
    table = pd.read_csv(run_dir / "results" / "table1.csv")
    wanted = {"Chance", "First ten candidates", "MostPop", "SASRec", "GRU4Rec", "Caser", "ReaRec-ERL", "ReaRec-PRL",
              "TALLRec-like (SFT)", "S-DPO", "LLaRA", "ReRe", "AgenticRec (RTA)", "AgenticRec (RTA+PPR)"}
    for dataset in DATASETS:
        rows = set(table.loc[table["dataset"] == dataset, "model"])
        assert wanted <= rows, (dataset, sorted(wanted - rows))


def test_stage1_trains_groups_of_eight_from_the_instruct_model_without_warm_start(paper_run):
    _, run_dir, profile = paper_run
    for dataset in DATASETS:
        log = pd.read_csv(run_dir / "rta" / dataset / "train_log.csv").dropna(subset=["groups_total"])
        assert (log["groups_total"] == profile.rta.batch_size).all()
        assert (log["effective_batch"] == log["groups_kept"] * 8).all()
        stamp = json.loads((run_dir / "rta" / dataset / "tirr" / "final" / "stamp.json").read_text())
        assert stamp["kind"] == "policy" and stamp["inputs"]["start_model"]["path"].endswith("models/tiny-qwen3-s")  # the backbone itself
    assert not (run_dir / "warmstart").exists()


def test_the_sweeps_run_on_the_named_dataset_with_the_paper_group_sizes(paper_run):
    _, run_dir, _ = paper_run
    fig4 = pd.read_csv(run_dir / "results" / "fig4_group_size.csv")
    fig5 = pd.read_csv(run_dir / "results" / "fig5_backbone_size.csv")
    assert sorted(set(fig4["group_size"])) == [2, 4, 8] and set(fig4["dataset"]) == {"Office_Products"}
    assert fig5["backbone"].nunique() == 3 and set(fig5["dataset"]) == {"Office_Products"}


def test_the_figures_and_the_executed_notebooks_are_saved(paper_run):
    _, run_dir, _ = paper_run
    figures = {p.name for p in (run_dir / "figures").glob("*.png")}
    assert {"fig3_tool_usage.png", "fig4_group_size.png", "fig5_backbone_size.png"} <= figures
    assert {f"table1_glance_{d}.png" for d in DATASETS} <= figures
    executed = sorted(p.name for p in (run_dir / "notebooks").glob("*.ipynb"))
    assert len(executed) == 8
