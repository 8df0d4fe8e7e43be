"""The First ten candidates reference row and H@10 by target-position bucket, on hand-made lists."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from recrepro.evaluation import FIRST_TEN, REFERENCE, first_ten_row, load_per_instance, save_per_instance
from recrepro.metrics import POSITION_BUCKET_WIDTH, bucket_means, position_buckets
from recrepro.positions import dataset_position_rows, position_bucket_rows, render_markdown, write_position_buckets
from recrepro.tables import MODEL_ORDER, SOURCE_ORDER

METRICS = ["H@1", "H@5", "H@10", "N@5", "N@10"]


def _samples(positions: list[int], first_id: int = 100) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": range(first_id, first_id + len(positions)), "target_index": positions})


def test_first_ten_row_scores_the_answer_one_to_ten(tmp_path, smoke_profile):
    samples = _samples([1, 3, 10, 11])
    row = first_ten_row(smoke_profile, "ml-100k", samples, tmp_path)
    assert row["model"] == FIRST_TEN == "First ten candidates" and row["source"] == REFERENCE == "reference"
    assert row["n"] == 4 and row["dataset"] == "ml-100k"
    # ranks 1, 3, 10 and a miss (position 11 is not among the ten answered)
    assert row["H@1"] == 0.25 and row["H@5"] == 0.5 and row["H@10"] == 0.75
    assert row["N@5"] == pytest.approx((1 + 0.5) / 4, abs=1e-15)
    assert row["N@10"] == pytest.approx((1 + 0.5 + 1 / math.log2(11)) / 4, abs=1e-15)
    saved = load_per_instance(smoke_profile, "ml-100k", FIRST_TEN, tmp_path)  # paired tests can use it
    assert saved["sample_id"].tolist() == [100, 101, 102, 103]
    assert saved["H@10"].tolist() == [1.0, 1.0, 1.0, 0.0] and saved["H@1"].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_reference_rows_sort_after_chance_and_before_measured_rows():
    assert SOURCE_ORDER["analytic"] < SOURCE_ORDER["reference"] < SOURCE_ORDER["measured"]
    assert MODEL_ORDER.index("Chance") + 1 == MODEL_ORDER.index(FIRST_TEN)


def test_position_buckets_have_the_module_width():
    assert POSITION_BUCKET_WIDTH == 5
    assert position_buckets(20) == [(1, 5), (6, 10), (11, 15), (16, 20)]
    assert position_buckets(12) == [(1, 5), (6, 10), (11, 12)]
    assert position_buckets(20, width=10) == [(1, 10), (11, 20)]


def test_bucket_means_counts_and_averages_each_bucket():
    rows = bucket_means([1, 5, 6, 12], {"H@10": [1.0, 0.0, 1.0, 1.0]}, 12)
    assert rows == [{"positions": "1-5", "n": 2, "H@10": 0.5}, {"positions": "6-10", "n": 1, "H@10": 1.0},
                    {"positions": "11-12", "n": 1, "H@10": 1.0}]
    empty = bucket_means([1], {"H@10": [1.0]}, 10)
    assert empty[1]["n"] == 0 and math.isnan(empty[1]["H@10"])


def test_position_bucket_rows_join_per_instance_values_with_target_positions():
    samples = _samples([1, 5, 6, 10, 11, 15, 16, 20])
    per_instance = pd.DataFrame({"sample_id": [100, 101, 102, 103, 104, 105, 106, 107, 999],  # 999: not a sample
                                 "H@10": [1, 0, 1, 1, 0, 0, 1, 0, 1]})
    rows = position_bucket_rows("ml-100k", "frozen-TIRR", per_instance, samples, 20)
    assert rows == [
        {"dataset": "ml-100k", "model": "frozen-TIRR", "bucket": "1-5", "n": 2, "H@10": 0.5},
        {"dataset": "ml-100k", "model": "frozen-TIRR", "bucket": "6-10", "n": 2, "H@10": 1.0},
        {"dataset": "ml-100k", "model": "frozen-TIRR", "bucket": "11-15", "n": 2, "H@10": 0.0},
        {"dataset": "ml-100k", "model": "frozen-TIRR", "bucket": "16-20", "n": 2, "H@10": 0.5},
    ]
    with pytest.raises(ValueError, match="repeat a sample_id"):
        position_bucket_rows("ml-100k", "x", per_instance, pd.concat([samples, samples]), 20)


def test_first_ten_row_buckets_are_one_then_zero(tmp_path, smoke_profile):
    samples = _samples([2, 4, 7, 9, 9, 13, 17, 20])
    first_ten_row(smoke_profile, "ml-100k", samples, tmp_path)
    save_per_instance(smoke_profile, "ml-100k", "frozen-R", [100, 102, 105, 106],
                      {m: np.array([0.0, 1.0, 1.0, 0.0]) for m in METRICS}, tmp_path)
    rows = dataset_position_rows(smoke_profile, tmp_path, "ml-100k", ["frozen-R", "missing row", FIRST_TEN], samples)
    table = pd.DataFrame(rows)
    assert table["model"].unique().tolist() == ["frozen-R", FIRST_TEN]  # a row without a file is left out
    first = table[table["model"] == FIRST_TEN]
    assert first["n"].tolist() == [2, 3, 1, 2] and first["H@10"].tolist() == [1.0, 1.0, 0.0, 0.0]
    llm = table[table["model"] == "frozen-R"]
    assert llm["n"].tolist() == [1, 1, 1, 1] and llm["H@10"].tolist() == [0.0, 1.0, 1.0, 0.0]


def test_position_bucket_files(tmp_path, smoke_profile):
    samples = _samples([1, 6, 11, 16])
    rows = position_bucket_rows("ml-100k", "trained-R", pd.DataFrame({"sample_id": [100, 101, 102],
                                                                       "H@10": [1.0, 0.0, 1.0]}), samples, 20)
    frame = write_position_buckets(smoke_profile, tmp_path, rows)
    results = smoke_profile.results_dir(tmp_path)
    csv = pd.read_csv(results / "position_buckets.csv")
    assert csv.columns.tolist() == ["dataset", "model", "bucket", "n", "H@10"] and len(frame) == 4
    assert csv["n"].tolist() == [1, 1, 1, 0]
    text = (results / "position_buckets.md").read_text()
    assert text.startswith("# H@10 by target position")
    assert "| dataset | model | 1-5 | 6-10 | 11-15 | 16-20 |" in text
    assert "| ml-100k | trained-R | 1.000 (1) | 0.000 (1) | 1.000 (1) | – |" in text
    assert "No LLM row" in render_markdown(pd.DataFrame(columns=frame.columns), "smoke")


def test_llm_rows_are_the_carded_table_rows(tmp_path, smoke_profile):
    from recrepro.stages.evaluate import llm_rows

    results = smoke_profile.results_dir(tmp_path)
    results.mkdir(parents=True)
    pd.DataFrame({"dataset": ["ml-100k"] * 4, "model": ["Chance", FIRST_TEN, "frozen-R", "trained-TIRR-RTA"],
                  "source": ["analytic", "reference", "measured", "measured"]}).to_csv(results / "table2.csv")
    pd.DataFrame({"dataset": ["ml-100k"] * 4,
                  "model": ["SASRec", "LLMRank-like (frozen R)", "TALLRec-like (SFT)", "AgenticRec (RTA)"],
                  "source": ["measured"] * 4}).to_csv(results / "table1.csv")
    cards = {f"ml-100k/{m}": {"dataset": "ml-100k", "model": m}
             for m in ("frozen-R", "trained-TIRR-RTA", "TALLRec-like (SFT)", "sweep tiny-qwen3-s-G2")}
    (results / "eval_card.json").write_text(json.dumps(cards))
    assert llm_rows(smoke_profile, tmp_path, "ml-100k") == ["frozen-R", "trained-TIRR-RTA", "TALLRec-like (SFT)"]
    assert llm_rows(smoke_profile, tmp_path, "other") == []


def test_run_eval_reports_writes_both_reports(tmp_path, smoke_profile, monkeypatch):
    from recrepro.stages import evaluate as evaluate_stage
    from recrepro.stages.evaluate import run_eval_reports

    samples = _samples([1, 6, 11, 16])

    class Bench:
        def __init__(self):
            self.samples = {"test": samples}

    monkeypatch.setattr(evaluate_stage, "load_benchmark", lambda profile, dataset, root: Bench())
    first_ten_row(smoke_profile, "ml-100k", samples, tmp_path)
    save_per_instance(smoke_profile, "ml-100k", "trained-R", samples["sample_id"],
                      {m: np.array([1.0, 1.0, 1.0, 1.0]) for m in METRICS}, tmp_path)
    results = smoke_profile.results_dir(tmp_path)
    results.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"dataset": ["ml-100k"], "model": ["trained-R"], "source": ["measured"]}).to_csv(
        results / "table2.csv")
    (results / "eval_card.json").write_text(json.dumps({"ml-100k/trained-R": {"dataset": "ml-100k",
                                                                               "model": "trained-R"}}))
    reports = run_eval_reports(smoke_profile, tmp_path)
    buckets = reports["position_buckets"]
    assert buckets["model"].unique().tolist() == ["trained-R", FIRST_TEN]
    assert buckets["H@10"].tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    comparisons = reports["comparisons"]
    assert set(comparisons["comparison"]) == {"trained R vs positions"}  # the only pair with both files
    assert comparisons.set_index("metric").loc["H@10", "diff"] == 0.5
    assert (results / "position_buckets.md").is_file() and (results / "comparisons.md").is_file()
