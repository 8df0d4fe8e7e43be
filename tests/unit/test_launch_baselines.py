"""A trained baseline under a real multi-process launcher, on CPU (issue 16's GPU entry point, issue 14's check).

``torchrun --nproc_per_node 2`` starts two processes that accelerate reads as one distributed run (gloo on
CPU); ``accelerate launch --cpu --num_processes 2`` starts only one without MPI (accelerate 1.15), so the
test uses torchrun. Two processes must take the same optimiser steps on the same global batch as one, save
one model (the main process), and leave a folder the one-process stage picks up without retraining.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recrepro.config import load_profile
from recrepro.stages.data import run_data
from recrepro.stages.evaluate import main, train_and_score
from tests.unit import rta_fixtures as rf

REPO = Path(__file__).resolve().parents[2]


def _sets(model: str) -> list[str]:
    return ["run.name=smoke", "data.max_users=40", f"agent.model_name_or_path={model}", "sft.steps=2",
            "sft.train_instances=4", "sft.batch_size=2", "sdpo.steps=2", "sdpo.train_instances=4",
            "agent.eval_instances=2"]


def _train(root: Path, model: str, processes: int) -> None:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                 "--master_port", "29517"] if processes > 1 else [sys.executable])
    command = [*launcher, "-m", "recrepro.stages.evaluate", "--profile", "smoke", "--root", str(root),
               "--baseline", "sdpo", "--stage", "train", "--set", *_sets(model)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-6000:]


def _info(root: Path, stage: str) -> dict:
    return json.loads((root / "runs/smoke" / stage / "ml-100k/final" / f"{stage}_info.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_processes_train_like_one_and_the_stage_reuses_their_model(tmp_path):
    model = str(rf.tiny_policy_dir(str(tmp_path / "model")))
    roots = {n: tmp_path / f"root{n}" for n in (1, 2)}
    for root in roots.values():
        run_data(load_profile("smoke", {"run.name": "smoke", "data.max_users": 40}), root)
    for n, root in roots.items():
        _train(root, model, n)
    for stage in ("sft", "sdpo"):
        one, two = _info(roots[1], stage), _info(roots[2], stage)
        assert one["steps"] == two["steps"] == 2 and one["instances"] == two["instances"] == 4
        assert two["losses"] == pytest.approx(one["losses"], rel=1e-3)  # same global batches, float-level noise
        assert two["losses"][0] == pytest.approx(one["losses"][0], rel=1e-6)  # the same first batch, same weights
    leftovers = [p.name for p in (roots[2] / "runs/smoke/sdpo/ml-100k").iterdir() if p.name != "final"]
    assert leftovers == []  # one saved model, no replica or temporary folder
    # The one-process stage (notebook 06, or --stage all) finds the launched training and only evaluates
    profile = load_profile("smoke", {"run.name": "smoke", "data.max_users": 40, "agent.model_name_or_path": model,
                                     "sft.steps": 2, "sft.train_instances": 4, "sft.batch_size": 2,
                                     "sdpo.steps": 2, "sdpo.train_instances": 4, "agent.eval_instances": 2})
    messages: list[str] = []
    row = train_and_score(profile, roots[2], "ml-100k", "sdpo", log=messages.append)
    assert messages[:2] == ["[sft] ml-100k: config and start model unchanged, skipping training",
                            "[sdpo] ml-100k: config and SFT model unchanged, skipping training"]
    assert row["model"] == "S-DPO" and row["n"] == 2


def test_evaluation_refuses_several_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="--stage all evaluates on one process"):
        main(["--profile", "smoke", "--baseline", "sdpo", "--stage", "all"])


def test_the_global_batch_must_split_over_the_processes():
    from recrepro.baselines.sft import per_process_batch

    assert per_process_batch(64, 4) == 16 and per_process_batch(4, 1) == 4
    with pytest.raises(ValueError, match="sft.batch_size=4 is not a multiple of the 3 processes"):
        per_process_batch(4, 3)
