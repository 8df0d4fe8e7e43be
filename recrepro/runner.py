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

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recrepro.config import Profile, load_profile
from recrepro.imports import all_modules, closure, import_graph, notebook_imports
from recrepro.io import atomic_path, write_json_atomic

PACKAGE_DIR = Path(__file__).parent
KERNEL_NAME = "python3"


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


def stage_stamp(notebook: Path, profile: Profile, previous: str, code: str) -> str:
    sections = _declared_sections(notebook)
    unknown = [s for s in sections if s not in profile.to_dict()]
    if unknown:
        raise ValueError(f"{notebook}: metadata.recrepro.sections names unknown profile section(s) {unknown}")
    payload = {
        "notebook": notebook_source_hash(notebook),
        "config": profile.section_hash("run", *sections),
        "code": code,
        "previous": previous,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def run_chain(profile_name: str, root: Path | str = ".", start: int | None = None, stop: int | None = None,
              force: bool = False, overrides: dict[str, Any] | None = None, log=print) -> list[StageResult]:
    """Run notebooks ``start``..``stop`` (inclusive, by number) of the chain for one profile."""
    import papermill

    root = Path(root).resolve()
    profile = load_profile(profile_name, overrides)
    run_dir = profile.run_dir(root)
    out_dir, stamp_dir = run_dir / "notebooks", run_dir / "stamps"
    results: list[StageResult] = []
    previous = ""
    graph = import_graph(PACKAGE_DIR)  # parsed once, not once per notebook
    for notebook in find_notebooks(root):
        number = _number(notebook)
        stamp = stage_stamp(notebook, profile, previous, code_hash(notebook, graph))
        previous = stamp
        if (start is not None and number < start) or (stop is not None and number > stop):
            continue
        output = out_dir / notebook.name
        stamp_file = stamp_dir / f"{notebook.stem}.json"
        if not force and output.is_file() and stamp_file.is_file() and \
                json.loads(stamp_file.read_text()).get("stamp") == stamp:
            log(f"[skip] {notebook.name}: inputs and config unchanged")
            results.append(StageResult(notebook.name, "skipped", 0.0, output))
            continue
        log(f"[run ] {notebook.name}")
        began = time.perf_counter()
        out_dir.mkdir(parents=True, exist_ok=True)
        failed = out_dir / f"{notebook.stem}.failed.ipynb"
        with atomic_path(output) as tmp:
            try:
                papermill.execute_notebook(
                    str(notebook), str(tmp), parameters={"profile": profile_name, "root": str(root),
                                                         "overrides": overrides or {}},
                    kernel_name=KERNEL_NAME, cwd=str(root), progress_bar=False, language="python",
                )
            except papermill.PapermillExecutionError:
                # The previous good output stays; the failed run is kept beside it for inspection.
                shutil.copyfile(tmp, failed)
                log(f"[fail] {notebook.name}: executed copy at {failed}")
                raise
        failed.unlink(missing_ok=True)
        seconds = time.perf_counter() - began
        write_json_atomic(stamp_file, {"stamp": stamp, "seconds": round(seconds, 2)})
        log(f"[done] {notebook.name} in {seconds:.1f} s")
        results.append(StageResult(notebook.name, "ran", seconds, output))
    return results
