"""recrepro.progress: progress lines with an ETA, throttling, where lines go, the log relay, quiet warnings,
the jobs' labels and the runner naming and relaying a notebook's log (issue 15, item 2)."""

from __future__ import annotations

import json
import sys
import threading
import time
import warnings
from types import SimpleNamespace

import nbformat
import pytest

from recrepro import progress
from recrepro.jobs import Job, job_environment, run_jobs
from recrepro.progress import (LABEL_ENV, LOG_ENV, LogRelay, Progress, format_duration, progress_text,
                               read_new_lines, stage_entry, trainer_progress)
from recrepro.quiet import KNOWN_WARNINGS, quiet_known_warnings
from recrepro.runner import run_chain, stage_label


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def no_stage_log(monkeypatch):
    monkeypatch.delenv(LOG_ENV, raising=False)
    monkeypatch.delenv(LABEL_ENV, raising=False)


# ------------------------------------------------------------------------------------------------
# Lines and ETA
# ------------------------------------------------------------------------------------------------

def test_durations():
    assert [format_duration(s) for s in (0, 0.9, 45, 59.99, 60, 192, 356.6, 3599, 3600, 3725, 90061)] == \
        ["0s", "0s", "45s", "59s", "1m00s", "3m12s", "5m56s", "59m59s", "1h00m", "1h02m", "25h01m"]
    assert format_duration(-3) == "0s"


def test_progress_text_and_eta_arithmetic():
    # 7 of 20 steps in 192 s: 13 left at 192/7 s each = 356.6 s
    assert progress_text("warm start", 7, 20, 192) == "warm start: step 7/20  35%  elapsed 3m12s  ETA 5m56s"
    assert progress_text("", 7, 20, 192) == "step 7/20  35%  elapsed 3m12s  ETA 5m56s"
    assert progress_text("rollouts", 0, 64, 3, unit="batch") == "rollouts: batch 0/64  0%  elapsed 3s  ETA ?"
    assert progress_text("x", 20, 20, 600) == "x: step 20/20  100%  elapsed 10m00s"  # done: no ETA
    assert progress_text("x", 5, None, 61, unit="item") == "x: item 5  elapsed 1m01s"  # no total: no share, no ETA
    # resumed at step 10: the 2 steps done here took 60 s, so the 8 left take 240 s
    assert progress_text("x", 12, 20, 60, start=10) == "x: step 12/20  60%  elapsed 1m00s  ETA 4m00s"
    assert progress_text("x", 1, 4, 10, note="loss 0.641") == "x: step 1/4  25%  elapsed 10s  ETA 30s  (loss 0.641)"


def test_progress_throttles_to_tenths_a_minimum_gap_and_the_last_line():
    clock, lines = Clock(), []
    bar = Progress("train", 100, write=lines.append, clock=clock)
    for _ in range(100):
        clock.now += 2.0  # 2 s a step: a tenth every 20 s, above the 10 s gap
        bar.update(1)
    bar.close()
    assert lines[0] == "train: step 1/100  1%  elapsed 2s  ETA 3m18s"  # the first update is always shown
    assert [line.split(":")[1].split()[1] for line in lines] == \
        ["1/100", "10/100", "20/100", "30/100", "40/100", "50/100", "60/100", "70/100", "80/100", "90/100", "100/100"]
    assert lines[-1] == "train: step 100/100  100%  elapsed 3m20s"
    assert len(lines) == 11  # close() after the last line adds nothing


def test_fast_loops_are_held_to_the_gap_and_slow_ones_get_a_heartbeat():
    clock, lines = Clock(), []
    bar = Progress("fast", 1000, write=lines.append, clock=clock)
    for _ in range(1000):
        clock.now += 0.01  # 10 s in all: a tenth every second, under the 10 s gap
        bar.update(1)
    assert [line.split()[2] for line in lines] == ["1/1000", "1000/1000"]

    clock, lines = Clock(), []
    bar = Progress("slow", 1000, write=lines.append, clock=clock)
    for _ in range(3):
        clock.now += 61.0  # a step a minute: far from the next tenth, the heartbeat shows each
        bar.update(1)
    assert [line.split()[2] for line in lines] == ["1/1000", "2/1000", "3/1000"]


def test_close_shows_a_held_back_state_and_disabled_progress_writes_nothing():
    clock, lines = Clock(), []
    with Progress("eval", 10, unit="batch", write=lines.append, clock=clock) as bar:
        clock.now += 1
        bar.update(1)
        clock.now += 1
        bar.update(1, note="2/40 finished")  # held back: 1 s after the last line
    assert lines == ["eval: batch 1/10  10%  elapsed 1s  ETA 9s",
                     "eval: batch 2/10  20%  elapsed 2s  ETA 8s  (2/40 finished)"]
    quiet: list[str] = []
    with Progress("off", 3, write=quiet.append, enabled=False) as bar:
        bar.update(3)
    assert quiet == []


# ------------------------------------------------------------------------------------------------
# Where lines go
# ------------------------------------------------------------------------------------------------

def test_say_and_log_without_a_stage_log_use_stderr_and_stdout(no_stage_log, capsys):
    progress.say("hello")
    progress.log("bulk")
    out = capsys.readouterr()
    assert out.err == "[recrepro] hello\n" and out.out == "bulk\n"


def test_say_and_log_with_a_stage_log_append_to_it(tmp_path, monkeypatch, capsys):
    path = tmp_path / "logs" / "04_rta.log"
    monkeypatch.setenv(LOG_ENV, str(path))
    monkeypatch.setenv(LABEL_ENV, "04 rta")
    progress.say("warm start: step 1/8")
    progress.log("[rta] step 1: reward 0.5")
    assert path.read_text() == "[04 rta] warm start: step 1/8\n[rta] step 1: reward 0.5\n"
    assert capsys.readouterr() == ("", "")


def test_a_stage_entry_sends_output_and_warnings_to_the_log_and_names_it(tmp_path, monkeypatch, capsys):
    path = tmp_path / "runs" / "logs" / "05_ppr.log"
    monkeypatch.setenv(LOG_ENV, str(path))
    monkeypatch.setenv(LABEL_ENV, "05 ppr")
    monkeypatch.chdir(tmp_path)

    @stage_entry
    def run_something(x):
        print({"loss": 1.5, "epoch": 0.1})
        print("a library's note", file=sys.stderr)
        warnings.warn("an unknown warning stays visible in the log", UserWarning)
        progress.say("something: step 1/1")
        return x + 1

    def show(message, category, filename, lineno, file=None, line=None):  # as Python's own, without pytest's capture
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert run_something(1) == 2
    out = capsys.readouterr()
    assert out.err == "" and out.out.startswith("run_something: 0s; its log: runs/logs/05_ppr.log")
    text = path.read_text()
    for expected in ("{'loss': 1.5, 'epoch': 0.1}", "a library's note", "an unknown warning stays visible",
                     "[05 ppr] something: step 1/1"):
        assert expected in text


def test_a_stage_entry_without_a_stage_log_changes_nothing(no_stage_log, capsys):
    @stage_entry
    def run_plain():
        print("shown in the cell")
        return "table"

    assert run_plain() == "table" and capsys.readouterr().out == "shown in the cell\n"


def test_known_warnings_are_quiet_and_others_are_not(monkeypatch):
    from tqdm import TqdmWarning

    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)  # restored after the test
    known = [
        ("IProgress not found. Please update jupyter and ipywidgets. See https://ipywidgets.readthedocs.io",
         TqdmWarning),
        ("You are using 'environment_factory', which is an experimental feature. This API may change", UserWarning),
        ("`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing`",
         FutureWarning),
        ("`gradient_checkpointing` is deprecated and will be removed in v6. Use `activation_checkpointing` instead.",
         FutureWarning),
    ]
    assert len(known) == len(KNOWN_WARNINGS) and all(why for _, _, why in KNOWN_WARNINGS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        n_filters = len(warnings.filters)
        quiet_known_warnings()
        assert len(warnings.filters) == n_filters  # called by every entry point: the filters do not pile up
        for message, category in known:
            warnings.warn(message, category)
        warnings.warn("`something_else` is deprecated", FutureWarning)
        warnings.warn("You are using 'rollout_func', which is an experimental feature", UserWarning)
        warnings.warn("IProgress not found, in another category", DeprecationWarning)
    assert [str(w.message) for w in caught] == ["`something_else` is deprecated",
                                                "You are using 'rollout_func', which is an experimental feature",
                                                "IProgress not found, in another category"]
    assert __import__("os").environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


def test_trainer_progress_reports_steps_and_the_logged_loss(tmp_path, monkeypatch):
    path = tmp_path / "04.log"
    monkeypatch.setenv(LOG_ENV, str(path))
    monkeypatch.setenv(LABEL_ENV, "04 rta")
    callback = trainer_progress("warm start", note_key="loss")
    state = SimpleNamespace(max_steps=3, global_step=0)
    callback.on_train_begin(None, state, None)
    for step, loss in ((1, 8.3441), (2, 0.641), (3, 0.2)):
        state.global_step = step
        callback.on_step_end(None, state, None)
        callback.on_log(None, state, None, logs={"loss": loss, "learning_rate": 1e-3})
    callback.on_log(None, state, None, logs={"train_runtime": 1.0})  # the summary is not a step
    callback.on_train_end(None, state, None)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("[04 rta] warm start: step 1/3  33%  elapsed ") and lines[0].endswith("(loss 8.344)")
    assert lines[-1].startswith("[04 rta] warm start: step 3/3  100%  elapsed ") and lines[-1].endswith("(loss 0.200)")
    assert len(lines) == 2  # step 2 came within the 10 s gap


# ------------------------------------------------------------------------------------------------
# Reading a growing log
# ------------------------------------------------------------------------------------------------

def test_read_new_lines_waits_for_a_line_end(tmp_path):
    path = tmp_path / "x.log"
    assert read_new_lines(path, 0) == ([], 0)  # not there yet
    path.write_bytes("[a] one\n[a] tw".encode())
    lines, offset = read_new_lines(path, 0)
    assert lines == ["[a] one"] and offset == len("[a] one\n")
    with open(path, "ab") as handle:
        handle.write("o ü\nbar\r[a] three\n\n".encode())
    lines, offset = read_new_lines(path, offset)
    assert lines == ["[a] two ü", "bar", "[a] three"] and offset == path.stat().st_size


def test_the_relay_passes_lines_written_by_another_thread_to_the_console(tmp_path):
    path = tmp_path / "04_rta.log"
    path.write_text("# header\n")
    received: list[str] = []
    relayed_live = threading.Event()

    def writer():
        for i in range(5):
            with open(path, "a") as handle:
                handle.write(f"[04 rta] step {i + 1}/5\n")
                handle.write(f"bulk {i}\n")
            if i == 0:  # the first line reaches the console while the stage still runs
                deadline = time.monotonic() + 10
                while not received and time.monotonic() < deadline:
                    time.sleep(0.01)
                relayed_live.set() if received else None
            time.sleep(0.02)

    with LogRelay(path, received.append, keep=lambda line: line.startswith("[04 rta] "), poll_s=0.02):
        thread = threading.Thread(target=writer)
        thread.start()
        thread.join()
    assert relayed_live.is_set()
    assert received == [f"[04 rta] step {i}/5" for i in range(1, 6)]  # in order; stop() reads the last ones


# ------------------------------------------------------------------------------------------------
# Jobs and the runner
# ------------------------------------------------------------------------------------------------

WORKER = '''\
import os, sys
label = os.environ.get("RECREPRO_LABEL")
print(f"[{label}] training: step 1/2  50%  elapsed 1s  ETA 1s", file=sys.stderr)
print("[rta] step 1: reward 0.5")
print(f"log file seen: {os.environ.get('RECREPRO_LOG')}")
'''


def test_jobs_get_their_name_as_label_and_never_the_stage_log(tmp_path, monkeypatch):
    monkeypatch.setenv(LOG_ENV, str(tmp_path / "parent.log"))
    env = job_environment("rta-ml-100k-tirr")
    assert env[LABEL_ENV] == "rta-ml-100k-tirr" and LOG_ENV not in env and env["PYTHONUNBUFFERED"] == "1"
    (tmp_path / "labelworker.py").write_text(WORKER)
    said, logged = [], []
    run_jobs([Job("a", "labelworker", ())], 1, tmp_path / "logs", cwd=tmp_path, log=logged.append, say=said.append)
    assert said[0].startswith("jobs: 1 job(s)") and said[1] == f"jobs: started a (log {tmp_path / 'logs' / 'a.log'})"
    assert "a: training: step 1/2  50%  elapsed 1s  ETA 1s" in said and said[-1].startswith("jobs: finished a in ")
    assert logged == ["[a] [rta] step 1: reward 0.5"]
    assert "log file seen: None" in (tmp_path / "logs" / "a.log").read_text()


def test_stage_labels():
    from pathlib import Path

    assert stage_label(Path("notebooks/04_rta.ipynb")) == "04 rta"
    assert stage_label(Path("06_evaluate_all.ipynb")) == "06 evaluate_all"


NOTEBOOK_CELL = '''\
from recrepro.progress import Progress, stage_entry

@stage_entry
def run_work():
    print("bulk line for the log")
    with Progress("work", 3, unit="item") as bar:
        for _ in range(3):
            bar.update(1)
    return "summary table"

run_work()'''


def test_the_runner_names_the_log_and_relays_progress_lines(tmp_path, monkeypatch):
    monkeypatch.delenv(LOG_ENV, raising=False)
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "recrepro": {"sections": []}}
    params = nbformat.v4.new_code_cell('profile = "smoke"\nroot = "."\noverrides = {}')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(NOTEBOOK_CELL)]
    nbformat.write(nb, tmp_path / "notebooks" / "00_step.ipynb")
    console: list[str] = []
    run_chain("smoke", tmp_path, log=console.append)
    assert console[0] == "[run ] 00_step.ipynb  (log: runs/smoke/logs/00_step.log)"
    assert "[00 step] work: item 1/3  33%  elapsed 0s  ETA 0s" in console
    assert any(line.startswith("[00 step] work: item 3/3  100%") for line in console)
    assert console[-1].startswith("[done] 00_step.ipynb")
    log_text = (tmp_path / "runs" / "smoke" / "logs" / "00_step.log").read_text()
    assert log_text.startswith("# 00_step.ipynb, profile smoke, started ") and "bulk line for the log" in log_text
    executed = json.loads((tmp_path / "runs" / "smoke" / "notebooks" / "00_step.ipynb").read_text())
    outputs = json.dumps(executed["cells"][-1]["outputs"])  # papermill inserts the parameters before it
    assert "summary table" in outputs and "its log: runs/smoke/logs/00_step.log" in outputs
    assert "bulk line" not in outputs and "work: item" not in outputs
    assert LOG_ENV not in __import__("os").environ  # restored after the notebook


def test_spaced_lines_of_several_loops_keep_the_gap():
    clock, lines = Clock(), []
    write = progress.spaced(lines.append, min_gap_s=10, clock=clock)
    for t, line in ((0, "turn 1"), (4, "turn 2"), (11, "turn 3"), (12, "turn 4"), (25, "turn 5")):
        clock.now = 1000.0 + t
        write(line)
    assert lines == ["turn 1", "turn 3", "turn 5"]
