"""Independent jobs side by side: subprocesses with one torch thread each, a log file each, live progress.

The CPU profiles run on two cores. Training the R and TIRR policies, or the sweep points, are
independent jobs; run one after the other in one process they leave a core idle, and two torch
processes with two threads each thrash (README, "The agent runtime"). So each job is a subprocess of
``python -m <module> ...`` with ``OMP_NUM_THREADS=1``, at most ``run.jobs`` at a time. A job's output
goes to its own log file (``runs/<profile>/jobs/<job>.log``, named when the job starts). A job's
console lines are labelled with its name (``RECREPRO_LABEL``, :mod:`recrepro.progress`): with ``say``
the parent relays those (progress with the job's ETA) as console lines and its other bracketed lines
(per-step metrics) to ``log``; without, every bracketed line goes to ``log``, prefixed by the job's
name. A failed job stops the batch with an error naming the job and its log, and shows its last lines.

Jobs write only their own outputs (a policy folder and its stamp); whatever several jobs would share,
such as a table, is written afterwards by the calling process, which finds the finished work and
reuses it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import yaml

from recrepro import paths
from recrepro.config import Profile
from recrepro.io import write_text_atomic
from recrepro.progress import LABEL_ENV, LOG_ENV, read_new_lines

POLL_S = 2.0  # how often running jobs are checked and their new progress lines echoed
TAIL_LINES = 25  # lines of a failed job's log shown in the error


@dataclass(frozen=True)
class Job:
    name: str  # shown in progress lines and the log file's name
    module: str  # run as ``python -m module``
    args: tuple[str, ...]
    after: str | None = None  # the name of a job that must have finished first (e.g. it builds a shared model)


class JobFailed(RuntimeError):
    """A job exited with a non-zero status; the message names it, its log and its last lines."""


def profile_file(profile: Profile, root: Path | str) -> Path:
    """The resolved profile (overrides applied) as YAML under ``runs/<profile>/jobs/``, for ``--profile``."""
    text = yaml.safe_dump(profile.to_dict(), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = paths.jobs_dir(profile, root) / f"profile-{digest}.yaml"
    if not path.is_file():
        write_text_atomic(path, text)
    return path


def job_environment(name: str | None = None) -> dict[str, str]:
    """The parent's environment with one thread per numeric library; a job writes its lines to its own
    output (its log file), labelled with ``name``, never into the parent's stage log."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = "1"
    env.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the log as they are printed, so they are relayed live
    env.pop(LOG_ENV, None)
    if name is not None:
        env[LABEL_ENV] = name
    return env


class _Running:
    def __init__(self, job: Job, log_path: Path, cwd: Path) -> None:
        self.job = job
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "w", encoding="utf-8")
        self.began = time.monotonic()
        self.process = subprocess.Popen([sys.executable, "-m", job.module, *job.args], cwd=cwd,
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        env=job_environment(job.name))
        self._echoed = 0

    def new_progress_lines(self) -> list[str]:
        """New complete bracketed lines of the log (a line still being written waits for the next poll)."""
        lines, self._echoed = read_new_lines(self.log_path, self._echoed)
        return [line for line in lines if line.startswith("[")]

    def close(self) -> None:
        self._log.close()

    def tail(self) -> str:
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-TAIL_LINES:])


def run_jobs(jobs: Sequence[Job], max_parallel: int, log_dir: Path, cwd: Path | str = ".",
             log: Callable[[str], None] = print, say: Callable[[str], None] | None = None) -> dict[str, float]:
    """Run ``jobs``, at most ``max_parallel`` at a time; returns each job's wall seconds.

    Without ``say`` every line goes to ``log``: the batch's own (``[jobs] ...``) and the jobs' bracketed
    lines, prefixed by the job's name. With ``say`` (:func:`recrepro.progress.say`), the batch's lines
    and the jobs' own labelled lines (their progress) go to ``say`` as ``jobs: ...`` and ``<job>: ...``,
    and only the jobs' other bracketed lines go to ``log``.
    Raises :class:`JobFailed` on the first failure, after stopping the jobs still running.
    """
    def batch(message: str) -> None:
        (say or log)(f"jobs: {message}" if say else f"[jobs] {message}")

    def echo(name: str, line: str) -> None:
        if say is not None and line.startswith(f"[{name}] "):
            say(f"{name}: {line[len(name) + 3:]}")
        else:
            log(f"[{name}] {line}")

    if max_parallel < 1:
        raise ValueError(f"run.jobs must be at least 1, got {max_parallel}")
    names = {job.name for job in jobs}
    unknown = [job.after for job in jobs if job.after is not None and job.after not in names]
    if unknown:
        raise ValueError(f"jobs wait for unknown job(s): {unknown}")
    waiting, running, walls = list(jobs), [], {}
    batch(f"{len(waiting)} job(s), {max_parallel} at a time; logs in {log_dir}")
    try:
        while waiting or running:
            while len(running) < max_parallel:
                ready = [job for job in waiting if job.after is None or job.after in walls]
                if not ready:
                    break
                job = ready[0]
                waiting.remove(job)
                running.append(_Running(job, Path(log_dir) / f"{job.name}.log", Path(cwd)))
                batch(f"started {job.name}" + (f" (log {running[-1].log_path})" if say else ""))
            time.sleep(POLL_S)
            for item in list(running):
                for line in item.new_progress_lines():
                    echo(item.job.name, line)
                status = item.process.poll()
                if status is None:
                    continue
                for line in item.new_progress_lines():  # what it wrote between the read and its exit
                    echo(item.job.name, line)
                item.close()
                running.remove(item)
                walls[item.job.name] = time.monotonic() - item.began
                if status != 0:
                    raise JobFailed(f"job {item.job.name} failed (exit {status}); log {item.log_path}; "
                                    f"last lines:\n{item.tail()}")
                batch(f"finished {item.job.name} in {walls[item.job.name]:.0f} s")
    finally:
        for item in running:
            item.process.kill()
            item.process.wait()
            item.close()
    return walls
