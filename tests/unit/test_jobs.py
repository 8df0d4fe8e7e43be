"""recrepro.jobs: parallel subprocess jobs, progress echo, failure with the log's tail, resolved profiles."""

from __future__ import annotations

import time

import pytest

from recrepro.config import load_profile
from recrepro.jobs import Job, JobFailed, job_environment, profile_file, run_jobs

WORKER = '''\
import os, sys, time
name = sys.argv[1]
print("noise without a bracket", flush=True)
print(f"[work] {name} threads={os.environ['OMP_NUM_THREADS']}", flush=True)
time.sleep(float(sys.argv[2]))
open(f"done-{name}", "w").write("ok")
sys.exit(int(sys.argv[3]))
'''


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "jobworker.py").write_text(WORKER)
    return tmp_path


def test_jobs_run_side_by_side_and_echo_only_progress_lines(workdir):
    lines: list[str] = []
    began = time.monotonic()
    walls = run_jobs([Job("a", "jobworker", ("a", "1.5", "0")), Job("b", "jobworker", ("b", "1.5", "0"))],
                     max_parallel=2, log_dir=workdir / "logs", cwd=workdir, log=lines.append)
    assert time.monotonic() - began < 2 * 1.5 + 2.5  # side by side, not one after the other (+ start-up)
    assert set(walls) == {"a", "b"} and (workdir / "done-a").is_file() and (workdir / "done-b").is_file()
    assert "[a] [work] a threads=1" in lines and "[b] [work] b threads=1" in lines
    assert not any("noise" in line for line in lines)
    assert (workdir / "logs" / "a.log").read_text().startswith("noise without a bracket")


def test_a_failed_job_names_itself_and_its_log_and_stops_the_others(workdir):
    with pytest.raises(JobFailed, match=r"job bad failed \(exit 3\); log .*bad\.log; last lines:\nnoise without a bracket\n\[work\] bad threads=1"):
        run_jobs([Job("bad", "jobworker", ("bad", "0", "3")), Job("slow", "jobworker", ("slow", "30", "0"))],
                 max_parallel=2, log_dir=workdir / "logs", cwd=workdir, log=lambda _: None)
    assert not (workdir / "done-slow").exists()  # killed, not left running


def test_jobs_limit_and_environment(workdir):
    with pytest.raises(ValueError, match="run.jobs"):
        run_jobs([], max_parallel=0, log_dir=workdir)
    assert job_environment()["OMP_NUM_THREADS"] == "1"


def test_the_resolved_profile_file_loads_back_to_the_same_profile(tmp_path):
    profile = load_profile("cpu", {"rta.max_steps": 3, "run.seed": 5})
    path = profile_file(profile, tmp_path)
    assert path.parent == profile.run_dir(tmp_path) / "jobs"
    again = load_profile(path)
    assert again.to_dict() == profile.to_dict()
    assert again.section_hash("rta", "agent", "warmstart") == profile.section_hash("rta", "agent", "warmstart")
    assert profile_file(profile, tmp_path) == path  # same content, same file


def test_a_job_waits_for_the_job_it_comes_after(workdir):
    lines: list[str] = []
    run_jobs([Job("first", "jobworker", ("first", "1.0", "0")),
              Job("second", "jobworker", ("second", "0", "0"), after="first")],
             max_parallel=2, log_dir=workdir / "logs", cwd=workdir, log=lines.append)
    order = [line for line in lines if line.startswith("[jobs] started") or line.startswith("[jobs] finished")]
    assert order.index("[jobs] started second") > next(i for i, line in enumerate(order) if "finished first" in line)
    with pytest.raises(ValueError, match="unknown job"):
        run_jobs([Job("x", "jobworker", ("x", "0", "0"), after="nobody")], 1, workdir / "logs", cwd=workdir)
