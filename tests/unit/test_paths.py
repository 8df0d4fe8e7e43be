"""The run layout of recrepro/paths.py, spelled out: every folder a stage writes."""

from __future__ import annotations

import pytest

from recrepro import paths
from recrepro.config import load_profile


def test_every_run_folder_of_the_layout():
    profile = load_profile("smoke")
    run = "r/runs/smoke"
    assert paths.data_dir(profile, "ml-100k", "r").as_posix() == f"{run}/data/ml-100k"
    assert paths.recbole_work_dir(profile, "ml-100k", "r").as_posix() == f"{run}/recbole_work/ml-100k"
    assert paths.classic_models_dir(profile, "ml-100k", "r").as_posix() == f"{run}/models/ml-100k"
    assert paths.user_profiles_file(profile, "ml-100k", "template", "v1", "r").as_posix() == \
        f"{run}/user_profiles/ml-100k/template-v1.parquet"
    assert paths.per_instance_file(profile, "ml-100k", "AgenticRec (RTA)", "r").as_posix() == \
        f"{run}/eval/ml-100k/AgenticRec_(RTA).parquet"
    assert paths.trajectories_file(profile, "ml-100k", "frozen-R", "r").as_posix() == f"{run}/agent_eval/ml-100k/frozen-R.jsonl"
    assert [paths.stage_dir(profile, s, "d", "r").as_posix() for s in ("sft", "rta", "ppr", "sweeps")] == \
        [f"{run}/sft/d", f"{run}/rta/d", f"{run}/ppr/d", f"{run}/sweeps/d"]
    assert paths.jobs_dir(profile, "r").as_posix() == f"{run}/jobs"
    assert paths.environment_file(profile, "r").as_posix() == f"{run}/environment.json"


def test_an_unknown_stage_folder_is_refused():
    with pytest.raises(ValueError, match="unknown training stage folder 'rtaa'"):
        paths.stage_dir(load_profile("smoke"), "rtaa", "d")
