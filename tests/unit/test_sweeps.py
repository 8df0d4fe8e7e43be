"""Sweep points, per-point profiles, parameter counting and the long result CSVs of Figures 4/5."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from recrepro.config import load_profile
from recrepro.rl import sweeps
from recrepro.stages import sweeps as sweep_stage
from recrepro.rl.sweeps import RESULT_COLUMNS, TIMING_COLUMNS, SweepPoint, count_parameters, point_profile, sweep_points


def test_points_follow_the_profile():
    smoke = load_profile("smoke")
    points = sweep_points(smoke)
    # tiny-qwen3 is tiny-qwen3-s: one name, so the G=2 run serves both figures.
    assert [p.name for p in points["group_size"]] == ["tiny-qwen3-s-G2", "tiny-qwen3-s-G4", "tiny-qwen3-s-G8"]
    assert [p.name for p in points["backbone"]] == ["tiny-qwen3-s-G2", "tiny-qwen3-m-G2", "tiny-qwen3-l-G2"]
    paper = sweep_points(load_profile("paper"))
    assert [p.group_size for p in paper["group_size"]] == [2, 4, 8]  # PAPER.md 1.6 Figure 4
    assert [p.name for p in paper["backbone"]] == ["Qwen3-1.7B-G8", "Qwen3-4B-Instruct-2507-G8", "Qwen3-8B-G8"]


def test_point_profile_overrides_only_the_sweep_settings():
    smoke = load_profile("smoke")
    main = point_profile(smoke, SweepPoint("tiny-qwen3-s", 8))
    assert (main.rta.group_size, main.rta.max_steps, main.rta.train_instances, main.rta.batch_size) == (8, 2, 16, 2)
    assert (main.rta.eval_every, main.rta.eval_instances, main.agent.eval_instances) == (2, 4, 16)
    assert main.rta.learning_rate == smoke.rta.learning_rate and main.reward == smoke.reward
    assert main.warmstart == smoke.warmstart  # the main backbone's cached warm start is reused
    # Figure 5's PPR mines and trains at the sweep's sizes; its rewards and rounds stay the profile's.
    assert (main.ppr.train_instances, main.ppr.valid_instances, main.ppr.max_steps, main.ppr.batch_size) == (16, 4, 2, 2)
    assert (main.ppr.rounds, main.ppr.correct_reward, main.ppr.epochs) == (1, 1.0, smoke.ppr.epochs)
    other = point_profile(smoke, SweepPoint("tiny-qwen3-m", 2))
    assert other.agent.model_name_or_path == "tiny-qwen3-m"
    assert other.warmstart.steps == 24 and other.warmstart.instances == smoke.warmstart.instances


def test_points_need_a_real_group():
    bad = load_profile("smoke", {"sweeps.group_sizes": [1, 4]})
    with pytest.raises(ValueError, match="sweeps.group_sizes"):
        sweep_points(bad)


def test_count_parameters_reads_safetensors_headers(tmp_path):
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, tmp_path / "model-00001.safetensors")
    save_file({"c": torch.zeros(2, 2, 2)}, tmp_path / "model-00002.safetensors")
    assert count_parameters(tmp_path) == 12 + 5 + 8
    with pytest.raises(FileNotFoundError, match="safetensors"):
        count_parameters(tmp_path / "missing")


def test_run_sweeps_writes_long_csvs_and_runs_shared_points_once(tmp_path, monkeypatch):
    profile = load_profile("smoke")
    calls = []

    def fake_run_point(profile, root, dataset, point, force=False, log=print):
        calls.append(point.name)
        row = {"model": f"sweep {point.name}", "n": 16, "H@1": 0.1 * point.group_size, "H@1_lo": 0.0,
               "H@1_hi": 0.5, "H@5": 0.5, "H@10": 0.75, "N@5": 0.3, "N@10": 0.4}
        return {"row": row, "parameters": 1000 * len(point.backbone), "skipped": False, "wall_s_train": 1.5,
                "valid_share": 0.5, "final": f"{point.name}/final", "stage": "RTA"}

    def fake_run_point_ppr(profile, root, dataset, point, stage1, force=False, log=print):
        calls.append(f"{point.name}+PPR from {stage1['final']}")
        row = {**stage1["row"], "model": sweeps.row_name(point, "RTA+PPR"), "H@1": stage1["row"]["H@1"] + 0.05}
        return {**stage1, "row": row, "stage": "RTA+PPR", "valid_share": 0.25}

    monkeypatch.setattr(sweep_stage, "run_point", fake_run_point)
    monkeypatch.setattr(sweep_stage, "run_point_ppr", fake_run_point_ppr)
    out = sweep_stage.run_sweeps(profile, tmp_path, log=lambda _: None)
    # The G=2 run of the profile's backbone is Figure 5's size-s point: 5 runs, not 6.
    # Each Figure 5 point then gets PPR on its own stage-1 policy.
    assert calls == ["tiny-qwen3-s-G2", "tiny-qwen3-s-G4", "tiny-qwen3-s-G8",
                     "tiny-qwen3-s-G2+PPR from tiny-qwen3-s-G2/final", "tiny-qwen3-m-G2",
                     "tiny-qwen3-m-G2+PPR from tiny-qwen3-m-G2/final", "tiny-qwen3-l-G2",
                     "tiny-qwen3-l-G2+PPR from tiny-qwen3-l-G2/final"]
    fig4 = pd.read_csv(profile.results_dir(tmp_path) / "fig4_group_size.csv")
    assert tuple(fig4.columns) == tuple(c for c in RESULT_COLUMNS if c not in TIMING_COLUMNS)
    timings = pd.read_csv(profile.results_dir(tmp_path) / "fig4_group_size_timings.csv")
    assert list(timings.columns) == ["dataset", "sweep", "name", "stage", "metric", "wall_s_train"]
    assert len(fig4) == 3 * 5 and set(fig4["metric"]) == {"H@1", "H@5", "H@10", "N@5", "N@10"}
    assert set(fig4["stage"]) == {"RTA"}
    assert (fig4["profile"] == "smoke").all() and (fig4["n"] == 16).all() and (fig4["dataset"] == "ml-100k").all()
    h1 = fig4[fig4["metric"] == "H@1"].set_index("group_size")["value"]
    assert h1.to_dict() == pytest.approx({2: 0.2, 4: 0.4, 8: 0.8})
    fig5 = pd.read_csv(profile.results_dir(tmp_path) / "fig5_backbone_size.csv")
    assert list(fig5["backbone"].unique()) == ["tiny-qwen3-s", "tiny-qwen3-m", "tiny-qwen3-l"]
    assert list(fig5.drop_duplicates("backbone")["parameters"]) == [12000, 12000, 12000]
    assert set(fig5["sweep"]) == {"backbone"} and set(fig5["group_size"]) == {2}
    assert len(fig5) == 3 * 2 * 5 and fig5.groupby("stage").size().to_dict() == {"RTA": 15, "RTA+PPR": 15}
    h1 = fig5[fig5["metric"] == "H@1"].set_index(["backbone", "stage"])["value"]
    assert h1[("tiny-qwen3-m", "RTA+PPR")] == pytest.approx(h1[("tiny-qwen3-m", "RTA")] + 0.05)
    assert out["group_size"].drop(columns=list(TIMING_COLUMNS)).shape == fig4.shape


def test_disabled_sweeps_do_nothing(tmp_path):
    out = sweep_stage.run_sweeps(load_profile("smoke", {"sweeps.enabled": False}), tmp_path, log=lambda _: None)
    assert out["runs"] == {} and not (tmp_path / "results").exists()


def test_without_backbone_ppr_figure_5_is_stage_1_only(tmp_path, monkeypatch):
    profile = load_profile("smoke", {"sweeps.backbone_ppr": False})
    row = {"model": "x", "n": 16, "H@1": 0.1, "H@5": 0.5, "H@10": 0.75, "N@5": 0.3, "N@10": 0.4}
    monkeypatch.setattr(sweep_stage, "run_point", lambda *a, **k: {"row": row, "parameters": 1, "skipped": False,
                                                               "wall_s_train": 1.0, "valid_share": 1.0, "stage": "RTA"})
    monkeypatch.setattr(sweep_stage, "run_point_ppr", lambda *a, **k: pytest.fail("PPR ran with backbone_ppr off"))
    out = sweep_stage.run_sweeps(profile, tmp_path, log=lambda _: None)
    assert set(out["backbone"]["stage"]) == {"RTA"}


def test_cli_lists_points_and_trains_one_by_name(monkeypatch, tmp_path, capsys):
    assert sweep_stage.main(["--list"]) == 0
    listed = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert [row[0] for row in listed] == ["tiny-qwen3-s-G2", "tiny-qwen3-s-G4", "tiny-qwen3-s-G8", "tiny-qwen3-m-G2",
                                          "tiny-qwen3-l-G2"]
    assert listed[1][3] == "Figure 4" and listed[3][3] == "Figure 5 (+PPR)"
    trained = []
    monkeypatch.setattr(sweep_stage, "train_point", lambda profile, root, point: trained.append(
        (point, profile.sweeps.max_steps)) or tmp_path)
    assert sweep_stage.main(["--point", "tiny-qwen3-s-G4", "--set", "sweeps.max_steps=3"]) == 0
    assert trained == [(SweepPoint("tiny-qwen3-s", 4), 3)]
    with pytest.raises(SystemExit, match="'Qwen3-8B-G8' is not a sweep point of profile smoke"):
        sweep_stage.main(["--point", "Qwen3-8B-G8"])
    with pytest.raises(SystemExit, match="tiny-qwen3-s-G4 gets no PPR"):
        sweep_stage.main(["--point", "tiny-qwen3-s-G4", "--stage", "ppr-mine"])


def test_cli_ppr_stages_use_the_notebooks_folder_start_and_sizes(monkeypatch, tmp_path):
    from recrepro.rl import ppr

    point = SweepPoint("tiny-qwen3-m", 2)
    with pytest.raises(FileNotFoundError, match="tiny-qwen3-m-G2/final: train the point's stage 1 first"):
        sweep_stage.main(["--root", str(tmp_path), "--point", point.name, "--stage", "ppr-mine"])
    final = tmp_path / "runs/smoke/sweeps/ml-100k/tiny-qwen3-m-G2/final"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    calls = []
    monkeypatch.setattr(ppr, "mine_stage", lambda profile, root, dataset, folder, start: calls.append(
        ("mine", profile.ppr.train_instances, dataset, folder, start)) or folder)
    monkeypatch.setattr(ppr, "train_stage", lambda profile, root, dataset, folder, start, row_name: calls.append(
        ("train", profile.ppr.max_steps, dataset, folder, start, row_name)) or {"final": folder / "final"})
    for stage in ("ppr-mine", "ppr-train"):
        assert sweep_stage.main(["--root", str(tmp_path), "--point", point.name, "--stage", stage]) == 0
    folder = final.parent / "ppr"
    assert calls == [("mine", 16, "ml-100k", folder, final),
                     ("train", 2, "ml-100k", folder, final, "sweep tiny-qwen3-m-G2+PPR")]
    # run_point_ppr (notebook 07) uses the same folder, start and row name.
    seen = {}
    monkeypatch.setattr(ppr, "run_dataset", lambda profile, root, dataset, **kw: seen.update(kw) or {
        "rounds": [{"mining": {}}], "rows": [{}], "skipped": True, "final": str(folder / "final")})
    sweeps.run_point_ppr(load_profile("smoke"), tmp_path, "ml-100k", point, {"final": str(final), "parameters": 1})
    assert (seen["folder"], Path(seen["start"]), seen["row_name"]) == (folder, final, "sweep tiny-qwen3-m-G2+PPR")


def test_neighbour_pairs_of_the_cpu_sweeps():
    """The paired tests behind Figures 4 and 5 compare each point with its smaller neighbour."""
    from recrepro.rl.sweeps import neighbour_pairs

    pairs = neighbour_pairs(sweep_points(load_profile("cpu")))
    assert pairs == (("G=4 vs G=2", "sweep tiny-qwen3-m-G4", "sweep tiny-qwen3-m-G2"),
                     ("G=8 vs G=4", "sweep tiny-qwen3-m-G8", "sweep tiny-qwen3-m-G4"),
                     ("tiny-qwen3-m vs tiny-qwen3-s", "sweep tiny-qwen3-m-G8", "sweep tiny-qwen3-s-G8"),
                     ("tiny-qwen3-l vs tiny-qwen3-m", "sweep tiny-qwen3-l-G8", "sweep tiny-qwen3-m-G8"))
