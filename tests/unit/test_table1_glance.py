"""Issue 17 (4), "Table 1 at a glance": per dataset, every measured row's N@10 and its 95% interval
exactly as in table1.csv, the paper's N@10 beside the same system (our row names mapped to the
paper's) only where the paper reports that dataset, Chance and MostPop as vertical lines, one PNG +
PDF per dataset; a table without N@10 is an error naming the file and the column."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402

from recrepro.stages.figures import glance_figures, redraw, table1_glance  # noqa: E402
from recrepro.stages.plots import PAPER_MODEL, PAPER_OFFSET, paper_model_name  # noqa: E402
from tests.unit.test_figures import assert_truetype_only  # noqa: E402

CHANCE_N10 = 0.227178  # as the analytic row of table1.csv holds it
# (model, N@10, lo, hi, n) per dataset; binary fractions, so value - (value - lo) is lo exactly.
MEASURED = {
    "CDs_and_Vinyl": [("MostPop", 0.5, 0.375, 0.625, 2949), ("SASRec", 0.625, 0.5, 0.75, 2949),
                      ("LLMRank-like (frozen R)", 0.0, 0.0, 0.0625, 400), ("AgenticRec (RTA)", 0.375, 0.25, 0.5, 400),
                      ("AgenticRec (RTA+PPR)", 0.25, 0.125, 0.375, 400)],
    "ml-100k": [("First ten candidates", 0.1875, 0.125, 0.25, 400), ("MostPop", 0.46875, 0.4375, 0.5, 2949),
                ("SASRec", 0.5625, 0.53125, 0.59375, 2949), ("AgenticRec (RTA+PPR)", 0.375, 0.3125, 0.4375, 400)],
}
PAPER = [("CDs", "SASRec", 0.2145), ("CDs", "AgenticRec", 0.5324), ("CDs", "LLaRA", 0.4394),
         ("Games", "AgenticRec", 0.5445)]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _table1() -> pd.DataFrame:
    """A table1.csv as recrepro.tables writes it: chance, measured (+ the reference rule), paper, not run."""
    rows = []
    for dataset, measured in MEASURED.items():
        rows.append({"dataset": dataset, "model": "Chance", "N@10": CHANCE_N10, "N@10_lo": CHANCE_N10,
                     "N@10_hi": CHANCE_N10, "n": 2949, "source": "analytic"})
        for model, value, lo, hi, n in measured:
            source = "reference" if model == "First ten candidates" else "measured"
            rows.append({"dataset": dataset, "model": model, "N@10": value, "N@10_lo": lo, "N@10_hi": hi, "n": n,
                         "source": source})
    rows += [{"dataset": d, "model": m, "N@10": v, "N@10_lo": np.nan, "N@10_hi": np.nan, "n": np.nan,
              "source": "paper"} for d, m, v in PAPER]
    rows.append({"dataset": "ml-100k", "model": "ReRe", "N@10": np.nan, "source": "not run"})
    table = pd.DataFrame(rows)
    table["H@10"] = 0.5  # other metrics are present in a real table; never drawn here
    return table.assign(profile="smoke", run="smoke+1234abcd")


def _points(ax):
    (dots,) = [line for line in ax.get_lines() if line.get_marker() == "o"]
    return dots


def _paper_markers(ax):
    return [line for line in ax.get_lines() if line.get_marker() == "D"]


def test_one_figure_per_dataset_with_the_table_values_exactly(tmp_path):
    drawn = glance_figures(_table1(), "smoke", "smoke+1234abcd", tmp_path)
    assert list(drawn) == ["CDs_and_Vinyl", "ml-100k"]
    for dataset, (fig, paths) in drawn.items():
        assert [p.name for p in paths] == [f"table1_glance_{dataset}.png", f"table1_glance_{dataset}.pdf"]
        assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[0].stat().st_size > 10_000
        assert_truetype_only(paths[1])
        title = fig._suptitle.get_text()
        assert dataset in title and "smoke profile" in title and "run smoke+1234abcd" in title
        assert "not a reproduction" in title
        (ax,) = fig.axes
        rows = MEASURED[dataset]
        assert [t.get_text() for t in ax.get_yticklabels()] == [f"{m} (n={n})" for m, *_, n in rows]  # table order
        dots = _points(ax)
        assert list(dots.get_xdata()) == [value for _, value, *_ in rows]
        assert list(dots.get_ydata()) == list(range(len(rows)))
        assert not dots.get_clip_on() and ax.get_xlim()[0] < 0  # the 0.0 of LLMRank-like is drawn whole
        (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        segments = bars.lines[2][0].get_segments()
        assert [tuple(seg[:, 0]) for seg in segments] == [(lo, hi) for _, _, lo, hi, _ in rows]  # horizontal
        assert [tuple(seg[:, 1]) for seg in segments] == [(i, i) for i in range(len(rows))]
        vertical = {line.get_label().split(" (")[0]: line for line in ax.get_lines() if line.get_linestyle() in
                    ("--", ":")}
        assert set(vertical) == {"Chance", "MostPop"}
        assert list(vertical["Chance"].get_xdata()) == [CHANCE_N10, CHANCE_N10]
        mostpop = next(value for model, value, *_ in rows if model == "MostPop")
        assert list(vertical["MostPop"].get_xdata()) == [mostpop, mostpop]


def test_the_paper_marker_sits_at_the_paper_value_of_the_mapped_name(tmp_path):
    drawn = glance_figures(_table1(), "smoke", "smoke", tmp_path)
    fig, _ = drawn["CDs_and_Vinyl"]
    (marker,) = _paper_markers(fig.axes[0])
    names = [m for m, *_ in MEASURED["CDs_and_Vinyl"]]
    # SASRec by its own name, "AgenticRec (RTA+PPR)" as the paper's AgenticRec; AgenticRec (RTA) (stage 1
    # only) and LLMRank-like (no CDs value) get none; LLaRA (not measured) has no row to sit beside.
    assert list(marker.get_xdata()) == [0.2145, 0.5324]
    assert list(marker.get_ydata()) == [names.index("SASRec") + PAPER_OFFSET,
                                        names.index("AgenticRec (RTA+PPR)") + PAPER_OFFSET]
    assert "CDs" in marker.get_label() and "paper" in marker.get_label()
    assert "paper markers: its CDs values" in fig._suptitle.get_text()


def test_a_dataset_the_paper_does_not_use_gets_no_paper_marker(tmp_path):
    fig, _ = glance_figures(_table1(), "smoke", "smoke", tmp_path)["ml-100k"]
    assert _paper_markers(fig.axes[0]) == []
    assert "paper: no ml-100k values" in fig._suptitle.get_text()
    assert not any("paper" in label for label in fig.axes[0].get_legend_handles_labels()[1])


def test_the_mapping_joins_row_names_that_both_tables_know():
    from recrepro.paper import reported_values
    from recrepro.tables import MODEL_ORDER

    assert paper_model_name("LLMRank-like (frozen R)") == "LLMRank" and paper_model_name("SASRec") == "SASRec"
    assert paper_model_name("AgenticRec (RTA)") == "AgenticRec (RTA)"  # stage 1 only: not the paper's method
    assert set(PAPER_MODEL) <= set(MODEL_ORDER) and set(PAPER_MODEL.values()) <= set(MODEL_ORDER)
    assert "AgenticRec" in set(reported_values()["model"])


def test_the_entry_reads_the_runs_table1_and_the_figures_command_redraws_it(tmp_path, smoke_profile, capsys):
    from recrepro.__main__ import main

    results = smoke_profile.results_dir(tmp_path)
    results.mkdir(parents=True)
    _table1().to_csv(results / "table1.csv", index=False)
    drawn = table1_glance(smoke_profile, tmp_path)
    assert "run smoke+1234abcd" in drawn["ml-100k"][0]._suptitle.get_text()  # the table's stamp
    out = smoke_profile.figures_dir(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"table1_glance_{d}.{s}" for d in MEASURED
                                                           for s in ("png", "pdf"))
    for path in out.iterdir():
        path.unlink()
    assert list(redraw(smoke_profile, tmp_path)) == ["table1_glance"]  # no log or sweep CSV here: just this one
    assert main(["figures", "--profile", "smoke", "--root", str(tmp_path), "--only", "table1_glance"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("table1_glance ")
    assert len(list(out.iterdir())) == 4


def test_a_table1_without_ndcg10_is_an_error_naming_the_file_and_column(tmp_path, smoke_profile, capsys):
    from recrepro.__main__ import main

    results = smoke_profile.results_dir(tmp_path)
    results.mkdir(parents=True)
    path = results / "table1.csv"
    _table1().drop(columns=["N@10"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=rf"^{path}: no column 'N@10'"):
        table1_glance(smoke_profile, tmp_path)
    assert main(["figures", "--profile", "smoke", "--root", str(tmp_path), "--only", "table1_glance"]) == 1
    assert f"{path}: no column 'N@10'" in capsys.readouterr().err
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"table1\.csv"):
        redraw(smoke_profile, tmp_path, only=["table1_glance"])


def test_a_table1_without_measured_rows_is_an_error_naming_the_file(tmp_path, smoke_profile):
    results = smoke_profile.results_dir(tmp_path)
    results.mkdir(parents=True)
    table = _table1()
    table[table["source"] == "paper"].to_csv(results / "table1.csv", index=False)
    with pytest.raises(ValueError, match=r"table1\.csv: no measured N@10 rows"):
        table1_glance(smoke_profile, tmp_path)
