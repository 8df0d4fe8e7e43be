"""Table rows: schema, upsert, paper values aligned by dataset/model/metric, rendering."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recrepro.evaluation import chance_row, metrics_row
from recrepro.paper import reported_values
from recrepro.tables import paper_rows, upsert_rows, write_table

COLUMNS = ["dataset", "model", "H@1", "H@5", "H@10", "N@5", "N@10", "n", "profile", "source"]


def _row(profile, model, hits):
    per = {"H@1": np.array(hits, float), "H@5": np.array(hits, float), "H@10": np.array(hits, float),
           "N@5": np.array(hits, float), "N@10": np.array(hits, float)}
    return metrics_row("ml-100k", model, per, profile)


def test_measured_row_schema_and_values(smoke_profile):
    row = _row(smoke_profile, "Random", [1, 0, 0, 1])
    assert list(row)[:10] == COLUMNS
    assert row["H@1"] == 0.5 and row["n"] == 4 and row["source"] == "measured" and row["profile"] == "smoke"
    assert row["H@1_lo"] <= 0.5 <= row["H@1_hi"]


def test_chance_row_is_exact(smoke_profile):
    row = chance_row("ml-100k", 20, 100, smoke_profile)
    assert row["H@1"] == pytest.approx(0.05) and row["H@10"] == pytest.approx(0.5)
    assert row["source"] == "analytic" and row["H@1_lo"] == row["H@1_hi"]


def test_paper_rows_align_with_the_csv():
    rows = paper_rows("table1", "smoke", [1, 5, 10]).set_index(["dataset", "model"])
    reported = reported_values()
    for _, r in reported[reported["table"] == "table1"].iterrows():
        assert rows.loc[(r["dataset"], r["model"]), r["metric"]] == pytest.approx(r["value"])
        assert f"{r['metric']}:{r['mark']}" in rows.loc[(r["dataset"], r["model"]), "paper_marks"]
    assert rows.loc[("Games", "AgenticRec")].notna().any()
    # a value the paper does not report stays empty, never invented
    assert np.isnan(rows.loc[("CDs", "SASRec"), "H@5"])


def test_upsert_replaces_only_the_same_key(tmp_path, smoke_profile):
    path = tmp_path / "t.csv"
    upsert_rows(path, [_row(smoke_profile, "Random", [1, 0]), _row(smoke_profile, "MostPop", [1, 1])])
    upsert_rows(path, [_row(smoke_profile, "Random", [0, 0])])
    table = pd.read_csv(path)
    assert table.set_index("model").loc["Random", "H@1"] == 0.0
    assert table.set_index("model").loc["MostPop", "H@1"] == 1.0
    assert list(table["model"]) == ["Random", "MostPop"]  # canonical order


def test_write_table_renders_all_formats(tmp_path, smoke_profile):
    rows = [chance_row("ml-100k", 20, 2, smoke_profile), _row(smoke_profile, "SASRec", [1, 0])]
    table = write_table(tmp_path, "table1", rows, "Table 1", [1, 5, 10], paper_table="table1")
    assert set(table["source"]) == {"analytic", "measured", "paper"}
    md = (tmp_path / "table1.md").read_text()
    assert "Profile: **smoke**" in md and "not comparable with the ml-100k smoke numbers" in md
    assert "| ml-100k | Chance | 0.0500 |" in md
    tex = (tmp_path / "table1.tex").read_text()
    assert "% profile: smoke" in tex and r"\begin{tabular}" in tex
