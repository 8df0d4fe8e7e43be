"""Stage-1 RTA, PPR and a sweep point trained by two processes through a real launcher, on CPU (issue 14).

On GPUs these trainings run under ``accelerate launch``; on CPU, ``accelerate launch --cpu
--num_processes 2`` starts one process without MPI (accelerate 1.15), so the test uses torchrun, which
accelerate reads the same way (gloo). Each training runs in a copy of the shared reduced chain,
whose notebooks trained the same policies in one process. Checked per training:

* the same optimiser steps and the same global batch as the one-process run: every step's
  group count (``groups_total``, counted after TRL gathers the rewards of all processes, so a
  group's G rollouts are scored and dropped together) equals the one-process log's;
* every process ends with identical weights (``replicas.json``: two equal digests);
* the notebook's one-process stage picks the launched policy up: it evaluates it, does not train
  it again, and its evaluation record names the launched weights.

Sampled rollouts differ between one and two processes (each process draws its own), so losses and
rewards are not compared; ``test_launch_baselines.py`` compares losses where training is deterministic.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from recrepro.config import load_profile
from recrepro.jobs import profile_file
from recrepro.rl import grpo, ppr, rta, sweeps
from recrepro.rl.mining import PolicyOutput
from recrepro.rl.pairs import read_pairs
from recrepro.stages.sweeps import all_points
from tests.conftest import REPO_ROOT
from tests.notebooks.conftest import REDUCED_OVERRIDES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
DATASET = "ml-100k"


@pytest.fixture(scope="module")
def launched(reduced_chain, tmp_path_factory):
    """A copy of the reduced chain in which the three trainings are redone by two processes; returns
    (root, one-process logs, profile, policy folders)."""
    source, _ = reduced_chain
    return launch_all(source, tmp_path_factory.mktemp("launched") / "root")


def launch_all(source: Path, root: Path):
    shutil.copytree(source, root)
    profile = load_profile("smoke", REDUCED_OVERRIDES)
    point = _figure4_point(profile)
    places = {"rta": rta.variant_dir(profile, root, DATASET, "tirr"),
              "ppr": ppr.ppr_dir(profile, root, DATASET) / "final",
              "sweep": sweeps.sweep_dir(profile, root, DATASET) / point}
    ppr_log = ppr.ppr_dir(profile, root, DATASET) / "train_log.csv"
    one_process = {"rta": pd.read_csv(rta.train_log_path(profile, root, DATASET, "tirr")),
                   "sweep": pd.read_csv(places["sweep"] / "train_log.csv")}
    settings = str(profile_file(profile, root))
    shutil.rmtree(places["rta"])
    _launch(root, "recrepro.stages.rta", "--profile", settings, "--root", str(root), "--variant", "tirr",
            "--stage", "train")
    with pytest.raises(ValueError, match="mined by another policy or config"):  # mined by the chain's stage 1
        ppr.train_stage(profile, root, DATASET)
    _mine_as_a_fifth_place_policy(profile, root)
    ppr_train = ("recrepro.stages.ppr", "--profile", settings, "--root", str(root), "--stage", "train")
    _run(root, *ppr_train)  # the one-process reference: the chain's policy gave no pairs to train on
    one_process["ppr"] = pd.read_csv(ppr_log)
    shutil.rmtree(places["ppr"])
    shutil.rmtree(ppr.round_dir(profile, root, DATASET, 1) / "checkpoints")
    ppr_log.unlink()
    _launch(root, *ppr_train)
    shutil.rmtree(places["sweep"])
    _launch(root, "recrepro.stages.sweeps", "--profile", settings, "--root", str(root), "--point", point,
            "--stage", "train")
    return root, one_process, profile, places


def fifth_place_outputs(profile, backend, ctx, samples) -> list[PolicyOutput]:
    """What a policy that always ranks the target fifth answers: every list gives training pairs. The
    reduced chain's 20-step policy answers too few lists validly to mine any."""
    outputs = []
    for sample in samples.to_dict("records"):
        target, n = int(sample["target_index"]), len(sample["candidates"])
        others = [i for i in range(1, n + 1) if i != target]
        outputs.append(PolicyOutput(sample_id=int(sample["sample_id"]), user_id=str(sample["user_id"]),
                                    candidates=tuple(str(c) for c in sample["candidates"]), target_index=target,
                                    ranking=tuple(others[:4] + [target] + others[4:9])))
    return outputs


def _mine_as_a_fifth_place_policy(profile, root: Path) -> None:
    """Round 1's pairs for the current stage-1 policy, through the kit's own mining (one process)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ppr, "policy_outputs", fifth_place_outputs)
        folder = ppr.mine_stage(profile, root, DATASET)
    assert len(read_pairs(folder)[0]["train"]) > 0


def _figure4_point(profile) -> str:
    return next(name for name, point in all_points(profile).items() if point.group_size == 4)


def _launch(root: Path, module: str, *args: str) -> None:
    _run(root, "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531", "-m", module, *args)


def _run(root: Path, module: str, *args: str) -> None:
    command = [sys.executable, "-m", module, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{module}: {done.stderr[-6000:]}"


def _replicas(final: Path) -> dict:
    return json.loads((final / grpo.REPLICAS_FILE).read_text())


@pytest.mark.parametrize("training", ["rta", "ppr", "sweep"])
def test_two_processes_take_the_same_steps_on_the_same_global_batch(launched, training):
    root, one_process, profile, places = launched
    logs = {"rta": rta.train_log_path(profile, root, DATASET, "tirr"),
            "ppr": places["ppr"].parent / "train_log.csv", "sweep": places["sweep"] / "train_log.csv"}
    two = pd.read_csv(logs[training])
    one = one_process[training]
    steps = lambda log: log.dropna(subset=["groups_total"])  # noqa: E731 (validation rows carry no groups)
    assert list(steps(two)["step"]) == list(steps(one)["step"]) and len(steps(two)) >= 1
    instances = {"rta": profile.rta.batch_size, "ppr": profile.ppr.batch_size, "sweep": profile.sweeps.batch_size}
    group = {"rta": profile.rta.group_size, "ppr": profile.rta.group_size, "sweep": 4}
    assert list(steps(two)["groups_total"]) == list(steps(one)["groups_total"])
    assert (steps(two)["groups_total"] == instances[training]).all()  # global, not per process
    assert (steps(two)["effective_batch"] == steps(two)["groups_kept"] * group[training]).all()


@pytest.mark.parametrize("training", ["rta", "ppr", "sweep"])
def test_every_process_ends_with_the_same_weights(launched, training):
    _, _, _, places = launched
    final = places[training] / "final" if training != "ppr" else places["ppr"]
    replicas = _replicas(final)
    assert replicas["processes"] == 2 and len(set(replicas["sha256"])) == 1


def test_the_notebooks_evaluate_the_launched_policies_without_training_them_again(launched):
    root, _, profile, places = launched
    messages: list[str] = []
    result = rta.run_variant(profile, root, DATASET, "tirr", log=messages.append)
    assert not result["skipped"]  # the chain's evaluation record named other weights
    assert any("trained with this config" in m and "reusing it" in m for m in messages)
    assert result["policy"] == grpo.policy_id(places["rta"] / "final")
    messages.clear()
    again = rta.run_variant(profile, root, DATASET, "tirr", log=messages.append)
    assert again["skipped"] and messages == [f"[rta] {DATASET}/tirr: final policy and its evaluation are up to date; "
                                             "skipping"]
    messages.clear()
    stage2 = ppr.run_dataset(profile, root, DATASET, log=messages.append)
    assert not stage2["skipped"] and stage2["policy"] == grpo.policy_id(places["ppr"])
    assert any("trained with this config" in m and "reusing it" in m for m in messages)
    messages.clear()
    point = all_points(profile)[places["sweep"].name]
    swept = sweeps.run_point(profile, root, DATASET, point, log=messages.append)
    assert not swept["skipped"] and swept["final"] == str(places["sweep"] / "final")
    assert any("trained with this config" in m and "reusing it" in m for m in messages)


def test_with_colocated_vllm_ppr_trains_each_round_in_a_process_of_its_own(reduced_chain, tmp_path, monkeypatch):
    """TRL's colocated engine outlives training, so on GPUs notebook 05 mines here, trains each round as a
    job (``--stage train``) and only measures and evaluates in its own process."""
    from recrepro.stages.ppr import run_ppr

    source, _ = reduced_chain
    root = tmp_path / "root"
    shutil.copytree(source, root)
    profile = load_profile("smoke", REDUCED_OVERRIDES)
    monkeypatch.setattr(grpo, "vllm_colocate_available", lambda _: True)  # the job itself runs on CPU
    monkeypatch.setattr(ppr, "policy_outputs", fifth_place_outputs)  # pairs to train on (mined here)
    messages: list[str] = []
    out = run_ppr(profile, root, force=True, log=messages.append)
    job_logs = list((root / "runs" / profile.run.name / "jobs").glob("ppr-ml-100k-round1*"))
    assert job_logs, "round 1 was not trained as a job"
    assert any("trained with this config" in m and "reusing it" in m for m in messages)
    assert not out["runs"][DATASET]["skipped"] and out["runs"][DATASET]["policy"] == grpo.policy_id(
        ppr.ppr_dir(profile, root, DATASET) / "final")
