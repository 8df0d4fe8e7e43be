"""The paper profile's data path end to end: download from a local server, parse, build the benchmark."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from recrepro.config import load_profile
from recrepro.data.pipeline import load_benchmark
from recrepro.data.schema import DataError
from recrepro.stages.data import run_data
from tests.unit.test_amazon import FileServer, gz_lines, meta, review

DAY = 86_400
WINDOW_START = 1_664_582_400  # 2022-10-01 UTC


@pytest.fixture
def served(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    srv = FileServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    rng = np.random.default_rng(0)
    reviews = []
    for u in range(40):
        for k in range(4):
            ts = WINDOW_START + int(rng.integers(0, 390)) * DAY
            reviews.append(review(f"U{u}", f"P{int(rng.integers(0, 60))}", ts * 1000, float(rng.integers(1, 6))))
    reviews.append(review("U0", "P1", (WINDOW_START - 10 * DAY) * 1000))  # before the window
    reviews.append(review(None, "P1", WINDOW_START * 1000 + 5))  # no user: counted skip
    reviews.append(review("U1", "P2", WINDOW_START * 1000 + 7, 0.0))  # zero stars: off the 1-5 scale, counted
    metas = [meta(f"P{i}") for i in range(60)] + [meta("P60", title="")]
    srv.files["/raw/review_categories/Video_Games.jsonl.gz"] = gz_lines(reviews)
    srv.files["/raw/meta_categories/meta_Video_Games.jsonl.gz"] = gz_lines(metas)
    yield srv
    srv.shutdown()
    srv.server_close()


def test_paper_profile_data_stage_on_served_fixture(served, tmp_path):
    profile = load_profile("paper", {"data.datasets": ["Video_Games"], "data.base_url": served.url("/raw")})
    stats = run_data(profile, tmp_path)
    row = stats.iloc[0]
    assert row["dataset"] == "Video_Games" and row["profile"].startswith("paper+")
    assert row["paper_users"] == 6251 and row["paper_items"] == 3003 and row["paper_interactions"] == 11457
    assert row["skipped_review_missing_user"] == 1 and row["skipped_review_outside_window"] == 1
    assert row["skipped_review_rating_out_of_scale"] == 1
    bench = load_benchmark(profile, "Video_Games", tmp_path)
    assert bench.interactions["timestamp"].min() >= WINDOW_START
    assert set(bench.items.columns) >= {"title", "categories", "price", "store"}
    test = bench.samples["test"]
    assert len(test) > 0 and all(len(c) == 20 for c in test["candidates"])
    assert (tmp_path / "data" / "raw" / "Video_Games" / "downloads.json").is_file()
    requests = len(served.log)
    served.shutdown()  # a second run needs no network: recorded hashes match
    run_data(profile, tmp_path)
    assert len(served.log) == requests
    again = load_benchmark(profile, "Video_Games", tmp_path)
    pd.testing.assert_frame_equal(again.samples["test"], test)


def test_an_empty_metadata_file_stops_the_data_stage_naming_it_and_the_dataset(served, tmp_path):
    """Issue 15: not "no interaction survives filtering" after every item lost its title."""
    served.files["/raw/meta_categories/meta_Video_Games.jsonl.gz"] = gz_lines([])
    profile = load_profile("paper", {"data.datasets": ["Video_Games"], "data.base_url": served.url("/raw")})
    meta_path = tmp_path / "data" / "raw" / "Video_Games" / "meta_Video_Games.jsonl.gz"
    with pytest.raises(DataError) as error:
        run_data(profile, tmp_path)
    assert str(error.value) == (f"{meta_path}: the metadata file of dataset 'Video_Games' is empty (no JSON line); "
                                "delete it and run fetch_category('Video_Games') again")
