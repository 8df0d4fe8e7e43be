"""The kit's one stamp scheme, for notebook stages and for every artifact a stage builds.

A stamp records the inputs that decide an artifact: its recipe version, the config sections it reads,
the stamps of the artifacts it starts from. It is a JSON object ``{"kind", "digest", "inputs"}``; the
digest is the SHA-256 of the canonical inputs. An artifact folder keeps its stamp in ``stamp.json``,
written inside the same atomic step as the artifact; a notebook stage keeps its own in
``runs/<profile>/stamps/``; a record that is one JSON file (a stage's rows, an evaluation) carries it
under its ``"stamp"`` key. Whatever holds it is reused only while the stamp has the same kind and digest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from recrepro.io import sha256_file, write_json_atomic

STAMP_FILE = "stamp.json"
RECORD_FILE = "record.json"  # a stage's stamped record beside its artifacts (e.g. a trained policy's rows)
IDENTITY_FILES = ("config.json", "weights_sha256.json")  # what names a saved model beside its stamp


def json_default(value: Any) -> Any:
    """numpy scalars as Python numbers, anything else JSON cannot hold (paths) as its text."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def canonical(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``inputs`` as plain JSON values (what reading the stamp back gives)."""
    return json.loads(json.dumps(dict(inputs), default=json_default))


def digest(inputs: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical inputs (sorted keys, compact separators)."""
    text = json.dumps(canonical(inputs), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def make(kind: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "digest": digest(inputs), "inputs": canonical(inputs)}


def read_json(path: Path | str) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when it is absent, unreadable or not an object (a torn write
    reads as "no stamp", so the artifact is rebuilt rather than trusted)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def matches(recorded: Any, kind: str, inputs: Mapping[str, Any]) -> bool:
    """Whether ``recorded`` (a stamp object, or anything else) is the stamp of ``kind`` and ``inputs``."""
    return (isinstance(recorded, Mapping) and recorded.get("kind") == kind
            and recorded.get("digest") == digest(inputs))


def write(path: Path | str, kind: str, inputs: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """Write the stamp of ``kind`` and ``inputs`` (plus ``extra`` fields that do not decide anything,
    such as a stage's seconds) to ``path`` atomically; returns the stamp."""
    stamp = make(kind, inputs)
    write_json_atomic(path, {**canonical(extra), **stamp})
    return stamp


def write_record(path: Path | str, kind: str, inputs: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """Write a one-file record (``fields`` with its stamp under ``"stamp"``) atomically; returns the record."""
    record = {**canonical(fields), "stamp": make(kind, inputs)}
    write_json_atomic(path, record)
    return record


def read_record(path: Path | str, kind: str, inputs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record at ``path`` if its stamp is the one of ``kind`` and ``inputs``; None when it is absent,
    unreadable or stamped otherwise."""
    record = read_json(path)
    return record if record is not None and matches(record.get("stamp"), kind, inputs) else None


def write_beside(folder: Path | str, kind: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Stamp the artifact ``folder`` (``folder/stamp.json``)."""
    return write(Path(folder) / STAMP_FILE, kind, inputs)


def is_current(path: Path | str, kind: str, inputs: Mapping[str, Any]) -> bool:
    """Whether the stamp file ``path`` exists and names ``kind`` and ``inputs``."""
    return matches(read_json(path), kind, inputs)


def folder_is_current(folder: Path | str, kind: str, inputs: Mapping[str, Any], *needs: str) -> bool:
    """Whether the artifact ``folder`` carries the stamp of ``kind`` and ``inputs`` and holds every file
    in ``needs`` (e.g. ``config.json`` of a saved model)."""
    folder = Path(folder)
    return is_current(folder / STAMP_FILE, kind, inputs) and all((folder / name).is_file() for name in needs)


def recorded_inputs(folder: Path | str) -> dict[str, Any] | None:
    """The inputs of the stamp in ``folder`` (what an artifact built on it records as its origin)."""
    stamp = read_json(Path(folder) / STAMP_FILE)
    return stamp.get("inputs") if stamp else None


def recorded_digest(folder: Path | str) -> str | None:
    stamp = read_json(Path(folder) / STAMP_FILE)
    return stamp.get("digest") if stamp else None


def model_origin(model: Path | str) -> dict[str, Any]:
    """How an artifact built on ``model`` records it: a local folder by its absolute path (``--root .`` and
    a notebook's absolute root must agree), its stamp's digest and the hashes of its identity files; a hub
    name as given."""
    folder = Path(model)
    if not folder.is_dir():
        return {"path": str(model)}
    origin: dict[str, Any] = {"path": str(folder.resolve()), "stamp": recorded_digest(folder)}
    for name in IDENTITY_FILES:
        if (folder / name).is_file():
            origin[name] = sha256_file(folder / name)
    return origin
