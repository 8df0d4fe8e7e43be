"""Live progress with an ETA, and where a stage's output goes: its log file, the console, the notebook.

Stages report through :class:`Progress` (throttled progress lines with an ETA; :func:`trainer_progress`
for a transformers ``Trainer``), :func:`say` (a ``[<label>] message`` line for the console) and
:func:`log` (bulk output for the log file). Under the chain runner every line goes to
``runs/<profile>/logs/<notebook>.log`` and the runner relays the ``[<label>]`` lines; a side-by-side
job writes to stderr, its log; anywhere else progress goes to stderr and bulk lines to stdout.
Output only: progress reads the clock, never a random number generator, and changes nothing computed.

Details (throttling, the environment variables, each kind of process): docs/internals.md, "progress.py".
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from recrepro.quiet import quiet_known_warnings

LOG_ENV = "RECREPRO_LOG"  # the log file of this stage (set by the runner for a notebook's kernel)
LABEL_ENV = "RECREPRO_LABEL"  # the bracketed name of this process's console lines ("04 rta", a job's name)
DEFAULT_LABEL = "recrepro"
MIN_GAP_S = 10.0  # never two progress lines of one loop closer than this (but the last)
HEARTBEAT_S = 60.0  # a line at least this often while the loop advances
SHARES = 10  # and one each tenth of the way


# ------------------------------------------------------------------------------------------------
# Lines
# ------------------------------------------------------------------------------------------------

def format_duration(seconds: float) -> str:
    """``45s``, ``3m12s``, ``1h02m`` (whole seconds, rounded down)."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def progress_text(what: str, done: int, total: int | None, elapsed: float, unit: str = "step", start: int = 0,
                  note: str | None = None) -> str:
    """``what: step 7/20  35%  elapsed 3m12s  ETA 5m56s  (note)``.

    The ETA assumes the remaining units take as long as those done in this run (``done - start``:
    a resumed run's earlier steps took no time here); it is ``?`` before the first unit, and absent
    without a total or once done.
    """
    head = f"{what}: " if what else ""
    if not total:
        text = f"{head}{unit} {done}  elapsed {format_duration(elapsed)}"
    else:
        text = f"{head}{unit} {done}/{total}  {int(100 * done / total)}%  elapsed {format_duration(elapsed)}"
        if done < total:
            eta = format_duration(elapsed * (total - done) / (done - start)) if done > start else "?"
            text += f"  ETA {eta}"
    return text + (f"  ({note})" if note else "")


def label() -> str:
    return os.environ.get(LABEL_ENV) or DEFAULT_LABEL


def log_path() -> Path | None:
    """The stage's log file, when the runner (or a caller) set one."""
    value = os.environ.get(LOG_ENV)
    return Path(value) if value else None


def _write(line: str, stream: Any) -> None:
    path = log_path()
    if path is None:
        print(line, file=stream, flush=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def say(message: str) -> None:
    """A console line, ``[<label>] message``: appended to the stage's log (relayed), else on stderr."""
    _write(f"[{label()}] {message}", sys.stderr)


def log(message: str) -> None:
    """A bulk line (per-step metrics, notes): appended to the stage's log, else on stdout."""
    _write(message, sys.stdout)


# ------------------------------------------------------------------------------------------------
# Progress of one loop
# ------------------------------------------------------------------------------------------------

class Progress:
    """Progress of a loop of ``total`` units, written through ``write`` (:func:`say`) when due.

    A line is due at the first update, at the last (``done == total``, or :meth:`close`), when a
    new tenth of the way is reached, and every ``heartbeat_s``; never two within ``min_gap_s``
    (but the last). ``clock`` is injectable for tests. With ``enabled`` False nothing is written.
    """

    def __init__(self, what: str, total: int | None, unit: str = "step", start: int = 0, enabled: bool = True,
                 write: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 min_gap_s: float = MIN_GAP_S, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.what, self.total, self.unit, self.start = what, total, unit, start
        self.enabled, self.write, self.clock = enabled, write or say, clock
        self.min_gap_s, self.heartbeat_s = min_gap_s, heartbeat_s
        self.done = start
        self.note: str | None = None
        self.began = clock()
        self._shown_at: float | None = None  # clock of the last line
        self._shown: tuple[int, str | None] | None = None  # (done, note) of the last line
        self._share = self._share_of(start)

    def _share_of(self, done: int) -> int:
        return int(SHARES * done / self.total) if self.total else 0

    def update(self, n: int = 1, note: str | None = None) -> None:
        self.set(self.done + n, note)

    def set(self, done: int, note: str | None = None) -> None:
        self.done = done
        if note is not None:
            self.note = note
        if self.enabled and self._due(self.clock()):
            self._show()

    def _due(self, now: float) -> bool:
        if self.total and self.done >= self.total:
            return self._shown is None or self._shown[0] < self.done
        if self._shown_at is None:
            return True
        gap = now - self._shown_at
        return gap >= self.min_gap_s and (self._share_of(self.done) > self._share or gap >= self.heartbeat_s)

    def _show(self) -> None:
        now = self.clock()
        self.write(progress_text(self.what, self.done, self.total, now - self.began, self.unit, self.start, self.note))
        self._shown_at, self._shown, self._share = now, (self.done, self.note), self._share_of(self.done)

    def close(self) -> None:
        """Show the last state if its line was held back (or nothing was shown)."""
        if self.enabled and self._shown != (self.done, self.note):
            self._show()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def spaced(write: Callable[[str], None] | None = None, min_gap_s: float = MIN_GAP_S,
           clock: Callable[[], float] = time.monotonic) -> Callable[[str], None]:
    """``write`` (:func:`say`) for the lines of several short loops that make one task (a rollout's
    turns): a line within ``min_gap_s`` of the last one shown is dropped."""
    write = write or say
    last: list[float] = []

    def spaced_write(line: str) -> None:
        now = clock()
        if not last or now - last[0] >= min_gap_s:
            last[:] = [now]
            write(line)

    return spaced_write


def trainer_progress(what: str, note_key: str | None = None) -> Any:
    """A transformers ``TrainerCallback`` showing optimiser steps as :class:`Progress` lines.

    With ``note_key`` (e.g. ``"loss"``) the line is updated when a log holding that key arrives
    (logged steps only) and shows its latest value; else at every step end. It only reads the
    trainer's state.
    """
    return _trainer_progress_class()(what, note_key)


@functools.lru_cache(maxsize=1)
def _trainer_progress_class() -> type:
    from transformers import TrainerCallback

    class TrainerProgress(TrainerCallback):
        def __init__(self, what: str, note_key: str | None) -> None:
            self.what, self.note_key = what, note_key
            self.bar: Progress | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = Progress(self.what, state.max_steps, "step", start=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None and self.note_key is None:
                self.bar.set(state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and self.note_key is not None and self.note_key in (logs or {}):
                self.bar.set(state.global_step, note=f"{self.note_key} {float(logs[self.note_key]):.3f}")

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.set(state.global_step)
                self.bar.close()

    return TrainerProgress


# ------------------------------------------------------------------------------------------------
# Stage entry points
# ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def stage_output() -> Iterator[Path | None]:
    """With a log file set: everything printed (stdout and stderr) goes to it meanwhile; yields the file."""
    path = log_path()
    if path is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", buffering=1) as handle, \
            contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        yield path


def shown(path: Path) -> str:
    """``path`` relative to the working directory when inside it (the repository root in a notebook)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def stage_entry(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a stage's ``run_*``: known warnings quiet, its output in the stage's log file.

    When the stage wrote to the log, the notebook cell gets one line naming the file.
    """

    @functools.wraps(func)
    def entry(*args: Any, **kwargs: Any) -> Any:
        quiet_known_warnings()
        path = log_path()
        size = path.stat().st_size if path is not None and path.is_file() else 0
        began = time.monotonic()
        with stage_output():
            result = func(*args, **kwargs)
        if path is not None and path.is_file() and path.stat().st_size > size:
            print(f"{func.__name__}: {format_duration(time.monotonic() - began)}; its log: {shown(path)}")
        return result

    return entry


# ------------------------------------------------------------------------------------------------
# Reading a log as it grows
# ------------------------------------------------------------------------------------------------

def read_new_lines(path: Path | str, offset: int) -> tuple[list[str], int]:
    """The complete, non-empty lines of ``path`` after byte ``offset``, and the offset after them.

    A line still being written (no newline yet) waits for the next call; a carriage return
    (a progress bar redrawing itself) ends a line too.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    text = data[:end].decode("utf-8", errors="replace").replace("\r", "\n")
    return [line for line in text.split("\n") if line], offset + end


class LogRelay:
    """Tails ``path`` in a background thread: every new complete line that ``keep`` accepts goes to ``emit``.

    :meth:`stop` ends the thread after one last read, so no line written before it is lost.
    """

    def __init__(self, path: Path | str, emit: Callable[[str], None], keep: Callable[[str], bool] | None = None,
                 poll_s: float = 0.5, offset: int = 0) -> None:
        self.path, self.emit, self.keep, self.poll_s = Path(path), emit, keep or (lambda line: True), poll_s
        self.offset = offset
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"log relay {self.path.name}", daemon=True)

    def _pass(self) -> None:
        with self._lock:
            lines, self.offset = read_new_lines(self.path, self.offset)
            for line in lines:
                if self.keep(line):
                    self.emit(line)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._pass()

    def start(self) -> "LogRelay":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._pass()

    def __enter__(self) -> "LogRelay":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
