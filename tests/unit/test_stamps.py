"""The one stamp scheme (recrepro.stamps): digests, stamp files, records, and that every stage and
artifact of the library goes through it."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from recrepro import stamps

PACKAGE = Path(stamps.__file__).parent


def test_digest_is_the_sha256_of_the_canonical_inputs():
    inputs = {"b": 2, "a": Path("x/y"), "n": np.int64(3)}
    expected = hashlib.sha256(b'{"a":"x/y","b":2,"n":3}').hexdigest()
    assert stamps.digest(inputs) == expected
    assert stamps.digest({"n": 3, "a": "x/y", "b": 2}) == expected  # key order and numpy types do not matter
    assert stamps.make("k", inputs) == {"kind": "k", "digest": expected, "inputs": {"a": "x/y", "b": 2, "n": 3}}


def test_a_stamped_folder_is_current_only_for_its_kind_inputs_and_files(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    stamps.write_beside(folder, "policy", {"seed": 1})
    assert not stamps.folder_is_current(folder, "policy", {"seed": 1}, "config.json")  # the artifact is missing
    (folder / "config.json").write_text("{}")
    assert stamps.folder_is_current(folder, "policy", {"seed": 1}, "config.json")
    assert not stamps.folder_is_current(folder, "policy", {"seed": 2}, "config.json")
    assert not stamps.folder_is_current(folder, "warm-start", {"seed": 1}, "config.json")
    assert stamps.recorded_inputs(folder) == {"seed": 1}
    assert stamps.recorded_digest(folder) == stamps.digest({"seed": 1})


def test_torn_or_foreign_stamp_files_read_as_no_stamp(tmp_path):
    path = tmp_path / stamps.STAMP_FILE
    for text in ('{"kind": "policy", "dig', "[1, 2]", '{"kind": "policy"}', ""):
        path.write_text(text)
        assert not stamps.is_current(path, "policy", {}), text
    assert stamps.read_json(tmp_path / "absent.json") is None


def test_records_carry_their_stamp_and_are_read_back_only_under_it(tmp_path):
    path = tmp_path / stamps.RECORD_FILE
    record = stamps.write_record(path, "rta-run", {"seed": 1}, rows=[{"n": np.int64(4)}], policy=None)
    assert record == {"rows": [{"n": 4}], "policy": None, "stamp": stamps.make("rta-run", {"seed": 1})}
    assert json.loads(path.read_text()) == record
    assert stamps.read_record(path, "rta-run", {"seed": 1}) == record
    assert stamps.read_record(path, "rta-run", {"seed": 2}) is None
    assert stamps.read_record(path, "ppr-run", {"seed": 1}) is None


def test_stage_stamps_keep_fields_that_decide_nothing(tmp_path):
    path = tmp_path / "00_setup.json"
    stamps.write(path, "stage", {"notebook": "abc"}, seconds=1.5)
    assert stamps.is_current(path, "stage", {"notebook": "abc"}) and json.loads(path.read_text())["seconds"] == 1.5


def test_a_model_origin_names_a_folder_by_absolute_path_and_its_stamp(tmp_path, monkeypatch):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    stamps.write_beside(folder, "tiny-model", {"size": "s"})
    monkeypatch.chdir(tmp_path)
    origin = stamps.model_origin("m")
    assert origin == {"path": str(folder.resolve()), "stamp": stamps.digest({"size": "s"}),
                      "config.json": hashlib.sha256(b"{}").hexdigest()}
    assert stamps.model_origin("Qwen/Qwen3-4B-Instruct-2507") == {"path": "Qwen/Qwen3-4B-Instruct-2507"}


def test_no_module_keeps_a_stamp_scheme_of_its_own():
    """Issue 13: one stamp scheme. Stamp files are written and compared only through recrepro.stamps."""
    private = re.compile(r'_stamp\.json|\.get\("stamp"\)\s*[!=]=|\["stamp"\]\s*[!=]=|"recipe"\)\s*==')
    offenders = [f"{path.relative_to(PACKAGE)}:{n}" for path in sorted(PACKAGE.rglob("*.py")) if path.name != "stamps.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1) if private.search(line)]
    assert not offenders, offenders
