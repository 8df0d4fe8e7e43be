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


def test_not_run_rows_list_every_paper_baseline_per_dataset_with_empty_metrics():
    from recrepro.tables import NOT_RUN_MODELS, not_run_rows

    rows = not_run_rows(["ml-100k", "CDs_and_Vinyl"], "paper", [1, 5, 10])
    assert len(rows) == 2 * len(NOT_RUN_MODELS) == 14
    assert set(rows["source"]) == {"not run"}
    assert rows[["H@1", "H@5", "H@10", "N@5", "N@10", "n"]].isna().all().all()
    marks = rows.set_index(["dataset", "model"])["paper_marks"]
    assert marks[("ml-100k", "LLaRA")] == ""  # the paper has no ml-100k values
    assert marks[("CDs_and_Vinyl", "LLaRA")] == "H@1:N;N@5:N;N@10:S;H@10:S"


def test_not_run_rows_render_in_their_own_section_beside_the_papers_values(tmp_path, smoke_profile):
    from recrepro.tables import not_run_rows

    rows = [chance_row("CDs_and_Vinyl", 20, 2, smoke_profile), _row(smoke_profile, "SASRec", [1, 0])]
    rows += not_run_rows(["ml-100k", "CDs_and_Vinyl"], "smoke", [1, 5, 10]).to_dict("records")
    table = write_table(tmp_path, "table1", rows, "Table 1", [1, 5, 10], paper_table="table1")
    assert list(table["source"].unique()) == ["analytic", "measured", "paper", "not run"]  # canonical order
    md = (tmp_path / "table1.md").read_text()
    measured = md.split("## Not run by this kit")[0]
    assert "LLaRA" not in measured.split("## Measured by this kit")[1]  # never among our rows
    assert ("| ml-100k | LLaRA | – | – | – | – | – | not run: disabled in this profile; "
            "the paper reports no value for this dataset |") in md
    assert ("| CDs_and_Vinyl | LLaRA | 0.2324 | – | 0.7234 | 0.3736 | 0.4394 | "
            "not run: disabled in this profile; paper's values on CDs (H@1:N;N@5:N;N@10:S;H@10:S) |") in md
    tex = (tmp_path / "table1.tex").read_text()
    assert r"ml-100k & ReaRec & -- & -- & -- & -- & -- & not run \\" in tex
    again = write_table(tmp_path, "table1", rows, "Table 1", [1, 5, 10], paper_table="table1")
    assert (again["source"] == "not run").sum() == 14  # a rewrite replaces, never duplicates
    assert len(again) == len(table)


def test_a_baseline_measured_under_variant_names_is_not_listed_as_not_run(tmp_path):
    """ReaRec runs as ReaRec-ERL / ReaRec-PRL: with either in the profile, no "not run" ReaRec row,
    and one an earlier run of the same folder wrote is removed."""
    from recrepro.tables import NOT_RUN_MODELS, drop_stale_not_run_rows, not_run_models, not_run_rows

    assert not_run_models(["SASRec"]) == NOT_RUN_MODELS
    assert not_run_models(["SASRec", "ReaRec-PRL"]) == [m for m in NOT_RUN_MODELS if m != "ReaRec"]
    rows = not_run_rows(["ml-100k"], "smoke", [1, 5, 10], ["ReaRec-ERL"])
    assert "ReaRec" not in set(rows["model"]) and len(rows) == len(NOT_RUN_MODELS) - 1
    path = tmp_path / "table1.csv"
    not_run_rows(["ml-100k"], "smoke", [1, 5, 10]).to_csv(path, index=False)
    drop_stale_not_run_rows(path, not_run_models(["ReaRec-ERL"]))
    assert "ReaRec" not in set(pd.read_csv(path)["model"]) and len(pd.read_csv(path)) == len(NOT_RUN_MODELS) - 1
