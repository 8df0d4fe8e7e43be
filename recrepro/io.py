"""Atomic artifact writing, SHA-256 manifests and their verification.

Every stage writes into a temporary sibling path and renames it into place, so a failed stage never
leaves a half-written artifact or destroys the previous one. A stage's artifact folder carries a
``manifest.json`` with the SHA-256 of each file, the config that produced it and row counts; later
stages call :func:`verify_manifest` and refuse to run on files whose hashes do not match.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST_NAME = "manifest.json"


class ManifestError(RuntimeError):
    """An artifact is missing or its bytes differ from what its manifest recorded."""


def _public_mode(path: Path, is_dir: bool) -> None:
    """mkstemp/mkdtemp create owner-only files; give artifacts the usual umask-based mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if is_dir else 0o666) & ~umask)


def sha256_file(path: Path | str, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix last: tools such as papermill check it.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _public_mode(tmp, is_dir=False)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``final`` (old copy removed after)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        _public_mode(tmp, is_dir=True)
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text_atomic(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


TIMINGS_SUFFIX = "_timings"  # ``<stem>_timings.csv``: a table's volatile columns, never part of a reference


def write_csv_split(path: Path | str, frame: pd.DataFrame, volatile: list[str], keys: list[str]) -> None:
    """``frame`` without its ``volatile`` columns (wall times, cache counts) at ``path``, and those columns
    beside ``keys`` in ``<stem>_timings.csv``, so a reproduced run rewrites ``path`` byte for byte."""
    path = Path(path)
    present = [c for c in volatile if c in frame.columns]
    write_text_atomic(path, frame.drop(columns=present).to_csv(index=False))
    if present:
        timings = frame[[c for c in keys if c in frame.columns] + present]
        write_text_atomic(path.with_name(f"{path.stem}{TIMINGS_SUFFIX}.csv"), timings.to_csv(index=False))


def write_json_atomic(path: Path | str, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_parquet(frame: pd.DataFrame, path: Path | str) -> None:
    """Write a frame as parquet with fixed settings so equal frames give equal bytes."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    # Drop the pandas metadata blob: it is derived and would only add noise to the bytes.
    table = table.replace_schema_metadata(None)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", use_dictionary=True, write_statistics=False)


def read_parquet(path: Path | str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: artifact missing; run the stage that writes it")
    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"{path}: unreadable parquet ({exc})") from exc


def write_manifest(folder: Path | str, config: dict[str, Any], rows: dict[str, int],
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hash every file in ``folder`` (except the manifest) and write ``manifest.json``."""
    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME and not p.name.startswith(".")
    }
    manifest = {"files": files, "config": config, "rows": rows, **(extra or {})}
    write_json_atomic(folder / MANIFEST_NAME, manifest)
    return manifest


def read_manifest(folder: Path | str) -> dict[str, Any]:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: manifest missing; the stage that writes {folder} has not run")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ManifestError(f"{path}: field 'files' missing or not a mapping")
    return manifest


def verify_manifest(folder: Path | str) -> dict[str, Any]:
    """Check every file listed in the manifest; raise :class:`ManifestError` naming the first bad one."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise ManifestError(f"{path}: listed in {folder / MANIFEST_NAME} but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ManifestError(
                f"{path}: SHA-256 {actual[:12]}... does not match the manifest ({expected[:12]}...); "
                "the artifact changed after it was written; rerun its stage with --force"
            )
    return manifest
