"""Notebooks 00-03 in the shared reduced chain (papermill, small smoke profile); 03 shows every tool's answer."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from recrepro.config import load_profile
from recrepro.tools import TOOL_NAMES
from recrepro.stages.profiles import run_user_profiles
from tests.notebooks.conftest import REDUCED_OVERRIDES

RUN = load_profile("smoke", REDUCED_OVERRIDES)  # where the shared chain writes


def notebook_text(path: Path) -> str:
    """Every stream and text output of an executed notebook, concatenated."""
    parts = []
    for cell in json.loads(path.read_text())["cells"]:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append("".join(output["text"]))
            elif "data" in output:
                parts.append("".join(output["data"].get("text/plain", "")))
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_chain_00_to_03(reduced_chain):
    tmp_path, results = reduced_chain
    assert [(r.notebook[:2], r.status) for r in results[:4]] == [("00", "ran"), ("01", "ran"), ("02", "ran"), ("03", "ran")]

    cache = RUN.run_dir(tmp_path) / "user_profiles/ml-100k/template-v1.parquet"
    profiles = pd.read_parquet(cache)
    assert len(profiles) > 100 and (profiles["last_time"] < profiles["cutoff_time"]).all()
    assert (RUN.results_dir(tmp_path) / "user_profiles.csv").is_file()

    text = notebook_text(RUN.run_dir(tmp_path) / "notebooks/03_profiles.ipynb")
    assert "collaborative space = SASRec" in text  # notebook 02's export was found
    for name in TOOL_NAMES:
        assert f"### {name}(" in text
    answers = text.split("### get_similar_users(", 1)[1]
    assert "Users most similar to this user (SASRec representations" in answers
    assert text.count("-> ok=True") == len(TOOL_NAMES) and "-> ok=False" not in text
    assert "calls 11, errors 4" in text

    # Running the stage again reuses every cached profile and leaves the cache as it was.
    again = run_user_profiles(load_profile("smoke", REDUCED_OVERRIDES), tmp_path, progress=False).iloc[0]
    assert (again["generated"], again["reused"]) == (0, len(profiles))
    assert pd.read_parquet(cache).equals(profiles)
