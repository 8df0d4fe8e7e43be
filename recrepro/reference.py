"""Run stamps, the committed reference outputs, and the comparison of a run against them (issue 15).

:func:`stamp_results` writes the run's name and config digest into every table of
``runs/<name>/results/``, so a reproduced run rewrites each table byte for byte. ``results/<name>/``
and ``figures/<name>/`` hold the committed reference, changed only by :func:`promote`.
:func:`compare` checks a run against it: bit-reproducible rows and every count exactly, RecBole rows
within :data:`RECBOLE_TOL`, LLM rows within :data:`LLM_TOL`, every other file byte for byte. The
verdict is a match when the config digests are equal, Tables 1 and 2 agree within those tolerances,
and every file of :data:`DETERMINISTIC_FILES` is identical.

Details (stamp formats, what promote leaves out, why the tolerances): docs/internals.md, "reference.py".
"""

from __future__ import annotations

import csv
import difflib
import io as text_io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recrepro.config import Profile
from recrepro.io import TIMINGS_SUFFIX, write_text_atomic
from recrepro.paths import notebooks_dir, reference_dir

STAMP_COLUMNS = ("run", "config")
MD_STAMP = "Run: "
TEX_STAMP = "% Run: "
EXACT_MODELS = {"Chance", "First ten candidates", "Random", "MostPop"}
RECBOLE_MODELS = {"SASRec", "GRU4Rec", "Caser"}
RECBOLE_TOL = 0.02
LLM_TOL = 0.10
ROW_TABLES = ("table1.csv", "table2.csv")
DETERMINISTIC_FILES = ("dataset_stats.csv", "user_profiles.csv")
METRIC_PREFIXES = ("H@", "N@")
NOTEBOOKS_FOLDER = "notebooks"  # results/<name>/notebooks: the reference run's executed notebooks


def config_digest(profile: Profile) -> str:
    """Twelve hex digits of the SHA-256 of the whole resolved profile."""
    return profile.section_hash(*profile.to_dict())[:12]


def stamp_text(profile: Profile) -> str:
    return f"`{profile.run.name}` · config `{config_digest(profile)}`"


def is_volatile(path: Path) -> bool:
    """Files that hold wall times or cache counts (never stamped, promoted or compared)."""
    return TIMINGS_SUFFIX in path.stem or path.stem == "eval_timings"


def _stamped_csv(text: str, run: str, digest: str) -> str:
    """The CSV with ``run`` and ``config`` as its last two columns (earlier stamp columns dropped); fields
    are copied as text, so numbers keep the precision their writer chose."""
    rows = list(csv.reader(text_io.StringIO(text)))
    if not rows:
        return text
    kept = [i for i, name in enumerate(rows[0]) if name not in STAMP_COLUMNS]
    out = text_io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([rows[0][i] for i in kept] + list(STAMP_COLUMNS))
    for row in rows[1:]:
        writer.writerow([row[i] if i < len(row) else "" for i in kept] + [run, digest])
    return out.getvalue()


def _stamped_md(text: str, stamp: str) -> str:
    """The stamp as a paragraph right under the title (replacing an earlier stamp and its blank line)."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith(MD_STAMP):
            start = i - 1 if i and lines[i - 1] == "" else i
            del lines[start:i + 1]
            break
    at = 1 if lines and lines[0].startswith("#") else 0
    lines[at:at] = ["", MD_STAMP + stamp] if at else [MD_STAMP + stamp, ""]
    return "\n".join(lines)


def _stamped_tex(text: str, stamp: str) -> str:
    lines = [line for line in text.split("\n") if not line.startswith(TEX_STAMP)]
    return "\n".join([TEX_STAMP + stamp.replace("`", "")] + lines)


def stamp_results(profile: Profile, root: Path | str = ".") -> list[Path]:
    """Write the run's stamps into every table of its results folder; returns the files changed."""
    folder = profile.results_dir(root)
    if not folder.is_dir():
        return []
    changed = []
    run, digest, stamp = profile.run.name, config_digest(profile), stamp_text(profile)
    for path in sorted(folder.iterdir()):
        if not path.is_file() or is_volatile(path):
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".csv":
            new = _stamped_csv(text, run, digest)
        elif path.suffix == ".md":
            new = _stamped_md(text, stamp)
        elif path.suffix == ".tex":
            new = _stamped_tex(text, stamp)
        else:
            continue
        if new != text:
            write_text_atomic(path, new)
            changed.append(path)
    return changed


def _kept(path: Path) -> bool:
    """Outputs worth a reference: not volatile, not a temporary or a failed notebook."""
    return path.is_file() and not is_volatile(path) and not path.name.startswith(".") and ".failed." not in path.name


def _copy_outputs(source: Path, target: Path) -> list[str]:
    """Replace ``target``'s files with ``source``'s kept ones (:func:`_kept`); returns the names copied."""
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: the run has no outputs here; run the chain first")
    target.mkdir(parents=True, exist_ok=True)
    produced = {p.name for p in source.iterdir() if _kept(p)}
    for stale in target.iterdir():
        if stale.is_file() and stale.name not in produced:
            stale.unlink()
    for name in sorted(produced):
        shutil.copyfile(source / name, target / name)
    return sorted(produced)


def promote(profile: Profile, root: Path | str = ".") -> dict[str, list[str]]:
    """Make the run's tables, figures and executed notebooks the committed reference (the only way it
    changes). The executed notebooks go to ``results/<name>/notebooks/``, so a reader sees every output
    without running anything; :func:`compare` does not read them (their logs hold wall times)."""
    stamp_results(profile, root)
    results = reference_dir(profile, "results", root)
    copied = {"results": _copy_outputs(profile.results_dir(root), results),
              "figures": _copy_outputs(profile.figures_dir(root), reference_dir(profile, "figures", root))}
    notebooks = notebooks_dir(profile, root)
    if notebooks.is_dir():
        copied["notebooks"] = _copy_outputs(notebooks, results / NOTEBOOKS_FOLDER)
    return copied


def tolerance_for(model: str) -> float:
    if model in EXACT_MODELS:
        return 0.0
    return RECBOLE_TOL if model in RECBOLE_MODELS else LLM_TOL


def _scored_rows(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    table = table[table["source"].isin(["measured", "analytic", "reference"])]
    return table.set_index(["dataset", "model"]).sort_index()


def compare_rows(fresh: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    """Differences between two scored tables (indexed by dataset, model), one line each; empty when they agree."""
    problems = []
    if set(fresh.index) != set(reference.index):
        problems.append(f"rows differ: only in the run {sorted(set(fresh.index) - set(reference.index))}, "
                        f"only in the reference {sorted(set(reference.index) - set(fresh.index))}")
    metrics = [c for c in reference.columns if c.startswith(METRIC_PREFIXES) and not c.endswith(("_lo", "_hi"))]
    for key in sorted(set(fresh.index) & set(reference.index)):
        tol = tolerance_for(key[1])
        if fresh.loc[key, "n"] != reference.loc[key, "n"]:
            problems.append(f"{key}: n {fresh.loc[key, 'n']} != {reference.loc[key, 'n']}")
        for metric in metrics:
            ours, ref = float(fresh.loc[key, metric]), float(reference.loc[key, metric])
            if not np.isclose(ours, ref, rtol=0.0, atol=tol + 1e-12):
                problems.append(f"{key} {metric}: {ours:.4f} vs reference {ref:.4f} (tolerance {tol})")
    return problems


def _text_diff(ours: Path, ref: Path, lines: int = 6) -> list[str]:
    diff = difflib.unified_diff(ref.read_text().splitlines(), ours.read_text().splitlines(),
                                fromfile=f"reference/{ref.name}", tofile=f"run/{ours.name}", lineterm="", n=0)
    return list(diff)[:lines + 2]


@dataclass
class Comparison:
    """What :func:`compare` found; ``match`` is the verdict."""

    run_config: str
    reference_config: str | None
    problems: list[str] = field(default_factory=list)  # break the match
    notes: list[str] = field(default_factory=list)  # differences within the stated tolerances

    @property
    def match(self) -> bool:
        return not self.problems

    def report(self) -> str:
        head = "MATCH" if self.match else "NO MATCH"
        lines = [f"{head}: run config {self.run_config}, reference config {self.reference_config or 'unknown'}"]
        lines += [f"  problem: {p}" for p in self.problems] + [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _reference_config(folder: Path) -> str | None:
    table = folder / "table1.csv"
    if not table.is_file():
        return None
    values = pd.read_csv(table, dtype=str).get("config")
    return None if values is None or values.dropna().empty else str(values.dropna().iloc[0])


def compare(profile: Profile, root: Path | str = ".") -> Comparison:
    """The run of ``profile`` under ``root`` against the committed reference (see the module docstring)."""
    ours, ref = profile.results_dir(root), reference_dir(profile, "results", root)
    if not ref.is_dir():
        raise FileNotFoundError(f"{ref}: no committed reference for {profile.run.name!r}")
    if not ours.is_dir():
        raise FileNotFoundError(f"{ours}: no run outputs to compare; run `python -m recrepro run --profile "
                                f"{profile.run.name}` first")
    stamp_results(profile, root)
    result = Comparison(config_digest(profile), _reference_config(ref))
    if result.reference_config is not None and result.reference_config != result.run_config:
        result.problems.append("the run's config differs from the reference's: not the same experiment")
    for path in sorted(p for p in ref.iterdir() if p.is_file() and not is_volatile(p)):
        mine = ours / path.name
        if not mine.is_file():
            result.problems.append(f"{path.name}: missing from the run")
        elif path.name in ROW_TABLES:
            result.problems += [f"{path.name} {p}" for p in compare_rows(_scored_rows(mine), _scored_rows(path))]
            if mine.read_bytes() != path.read_bytes():
                result.notes.append(f"{path.name}: not byte-identical, within the row tolerances")
        elif mine.read_bytes() != path.read_bytes():
            target = result.problems if path.name in DETERMINISTIC_FILES else result.notes
            target.append(f"{path.name} differs:\n    " + "\n    ".join(_text_diff(mine, path)))
    return result
