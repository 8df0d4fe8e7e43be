"""Headless chain runner: executes ``notebooks/NN_*.ipynb`` in order through papermill.

Each executed notebook lands in ``runs/<profile>/notebooks/``. A notebook is skipped when its
*stamp* is unchanged: the SHA-256 of the notebook file, the profile sections it declares in its
metadata (``metadata.recrepro.sections``), the library code the notebook actually uses (every module
its imports reach, :mod:`recrepro.imports`, plus the package's data files) and the stamp of the
notebook before it. So a rerun with nothing changed skips every stage, editing one stage's module
re-runs that stage and the ones after it, and a change upstream re-runs everything downstream of it.
``force`` re-runs regardless.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from recrepro.config import Profile, load_profile
from recrepro.imports import all_modules, closure, import_graph, notebook_imports
from recrepro import stamps
from recrepro.io import atomic_path
from recrepro.progress import LABEL_ENV, LOG_ENV, LogRelay
from recrepro.reference import stamp_results

PACKAGE_DIR = Path(__file__).parent
KERNEL_NAME = "python3"
# ipykernel 7 warns at every start that its sockets are TCP without encryption: jupyter_client's default
# transport, on localhost, for a kernel this process starts and stops. Harmless, and printed on the console
# between the stage's lines, so the kernel logs errors only (the notebook's own output is not affected).
KERNEL_ARGUMENTS = ["--log-level=ERROR"]
STAGE_KIND = "stage"  # the kind of a notebook stage's stamp (runs/<profile>/stamps/<notebook>.json)


@dataclass(frozen=True)
class StageResult:
    notebook: str
    status: str  # "ran" or "skipped"
    seconds: float
    output: Path


def find_notebooks(root: Path | str) -> list[Path]:
    """The chain, ``<root>/notebooks/NN_*.ipynb`` in number order.

    A root without them raises FileNotFoundError naming the folder: a chain of no notebooks would
    otherwise "finish" having run nothing.
    """
    folder = Path(root) / "notebooks"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; the root must be the repository root, "
                                "which holds notebooks/")
    notebooks = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"{folder}: no NN_*.ipynb notebooks (two digits, '_', a name, e.g. 00_setup.ipynb)")
    return notebooks


def _number(notebook: Path) -> int:
    return int(notebook.name[:2])


def code_hash(notebook: Path, graph: dict | None = None) -> str:
    """SHA-256 of the library modules ``notebook`` reaches through its imports, and of the package data.

    ``graph`` (:func:`recrepro.imports.import_graph` of the package) is parsed once per chain by the caller.
    """
    modules = all_modules(PACKAGE_DIR)
    used = closure(notebook_imports(notebook, modules), graph if graph is not None else import_graph(PACKAGE_DIR))
    files = [modules[name] for name in sorted(used)]
    files += [p for p in sorted(PACKAGE_DIR.rglob("*")) if p.suffix in (".yaml", ".csv", ".txt")
              and "__pycache__" not in p.parts]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _declared_sections(notebook: Path) -> list[str]:
    meta = json.loads(notebook.read_text()).get("metadata", {}).get("recrepro", {})
    return list(meta.get("sections", []))


def notebook_source_hash(notebook: Path) -> str:
    """SHA-256 of what a notebook does: its cells' types and sources, and its ``metadata.recrepro``.

    Outputs, execution counts and other metadata are left out, so stepping through a notebook in
    JupyterLab and saving it does not invalidate the chain's cache.
    """
    content = json.loads(notebook.read_text())
    cells = [[cell.get("cell_type"), "".join(cell.get("source", ""))] for cell in content.get("cells", [])]
    payload = {"cells": cells, "recrepro": content.get("metadata", {}).get("recrepro", {})}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def stage_inputs(notebook: Path, profile: Profile, previous: str, code: str) -> dict[str, str]:
    """What decides a notebook stage: its cells, its declared config sections, the code it imports and
    the stamp of the stage before it (so a re-run stage re-runs everything after it)."""
    sections = _declared_sections(notebook)
    unknown = [s for s in sections if s not in profile.to_dict()]
    if unknown:
        raise ValueError(f"{notebook}: metadata.recrepro.sections names unknown profile section(s) {unknown}")
    return {
        "notebook": notebook_source_hash(notebook),
        "config": profile.section_hash("run", *sections),
        "code": code,
        "previous": previous,
    }


def stage_stamp(notebook: Path, profile: Profile, previous: str, code: str) -> str:
    """The digest of :func:`stage_inputs` (the kit's stamp scheme, :mod:`recrepro.stamps`)."""
    return stamps.digest(stage_inputs(notebook, profile, previous, code))


def stage_label(notebook: Path) -> str:
    """The bracketed name of a notebook's progress lines: ``04_rta.ipynb`` -> ``04 rta``."""
    return notebook.stem.replace("_", " ", 1)


def _shown(path: Path, root: Path) -> str:
    """``path`` relative to the working directory, else to ``root``, else absolute."""
    for base in (Path.cwd().resolve(), root):
        try:
            return str(path.relative_to(base))
        except ValueError:
            continue
    return str(path)


@contextlib.contextmanager
def _stage_log(notebook: Path, log_file: Path, profile_name: str, log: Callable[[str], None]) -> Iterator[None]:
    """A fresh log file for the notebook, named to its kernel (``RECREPRO_LOG``, ``RECREPRO_LABEL``) while it
    runs, and its progress lines (``[04 rta] ...``) relayed to ``log`` as they are written."""
    label = stage_label(notebook)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text(f"# {notebook.name}, profile {profile_name}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    saved = {name: os.environ.get(name) for name in (LOG_ENV, LABEL_ENV)}
    os.environ[LOG_ENV], os.environ[LABEL_ENV] = str(log_file), label  # the kernel inherits the environment
    relay = LogRelay(log_file, log, keep=lambda line: line.startswith(f"[{label}] ")).start()
    try:
        yield
    finally:
        relay.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_chain(profile_name: str, root: Path | str = ".", start: int | None = None, stop: int | None = None,
              force: bool = False, overrides: dict[str, Any] | None = None, log=print) -> list[StageResult]:
    """Run notebooks ``start``..``stop`` (inclusive, by number) of the chain for one profile.

    Each notebook that runs gets its log, ``runs/<profile>/logs/<notebook>.log`` (named on the console):
    its stage's output and progress lines; the progress lines (with their ETA) are relayed to ``log``
    while the notebook runs (:mod:`recrepro.progress`).
    """
    import papermill

    root = Path(root).resolve()
    profile = load_profile(profile_name, overrides)
    run_dir = profile.run_dir(root)
    out_dir, stamp_dir, log_dir = run_dir / "notebooks", run_dir / "stamps", run_dir / "logs"
    results: list[StageResult] = []
    previous = ""
    graph = import_graph(PACKAGE_DIR)  # parsed once, not once per notebook
    for notebook in find_notebooks(root):
        number = _number(notebook)
        inputs = stage_inputs(notebook, profile, previous, code_hash(notebook, graph))
        previous = stamps.digest(inputs)
        if (start is not None and number < start) or (stop is not None and number > stop):
            continue
        output = out_dir / notebook.name
        stamp_file = stamp_dir / f"{notebook.stem}.json"
        if not force and output.is_file() and stamps.is_current(stamp_file, STAGE_KIND, inputs):
            log(f"[skip] {notebook.name}: inputs and config unchanged")
            results.append(StageResult(notebook.name, "skipped", 0.0, output))
            continue
        log_file = log_dir / f"{notebook.stem}.log"
        log(f"[run ] {notebook.name}  (log: {_shown(log_file, root)})")
        began = time.perf_counter()
        out_dir.mkdir(parents=True, exist_ok=True)
        failed = out_dir / f"{notebook.stem}.failed.ipynb"
        with atomic_path(output) as tmp, _stage_log(notebook, log_file, profile_name, log):
            try:
                papermill.execute_notebook(
                    str(notebook), str(tmp), parameters={"profile": profile_name, "root": str(root),
                                                         "overrides": overrides or {}},
                    kernel_name=KERNEL_NAME, cwd=str(root), progress_bar=False, language="python",
                    extra_arguments=KERNEL_ARGUMENTS,
                )
            except papermill.PapermillExecutionError:
                # The previous good output stays; the failed run is kept beside it for inspection.
                shutil.copyfile(tmp, failed)
                log(f"[fail] {notebook.name}: executed copy at {failed}; log {_shown(log_file, root)}")
                raise
        failed.unlink(missing_ok=True)
        seconds = time.perf_counter() - began
        stamps.write(stamp_file, STAGE_KIND, inputs, seconds=round(seconds, 2))
        stamp_results(profile, root)  # every table the stage wrote names its run and config
        log(f"[done] {notebook.name} in {seconds:.1f} s")
        results.append(StageResult(notebook.name, "ran", seconds, output))
    return results
