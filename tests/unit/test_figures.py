"""Figures 3-5 are written as non-trivial PNG and PDF files (TrueType fonts, never Type 3), with the
profile in the title, the plotted data equal to the input (real training-log columns, long sweep CSVs),
every interval as an error bar and points at 0 visible; ``python -m recrepro figures`` redraws just
the figures asked for from the saved CSVs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from matplotlib.container import ErrorbarContainer

from recrepro.stages.figures import plot_backbone_size, plot_group_size, plot_tool_usage
from recrepro.metrics import chance_metrics
from recrepro.rl.rta_log import LOG_COLUMNS


def _check(paths, fig, profile):
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert all(p.stat().st_size > 10_000 for p in paths)
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].read_bytes()[:5] == b"%PDF-"
    assert_truetype_only(paths[1])
    assert profile in fig._suptitle.get_text()


def assert_truetype_only(pdf):
    """matplotlib writes Type 42 fonts as ``/Subtype /CIDFontType2`` (or ``/TrueType``) with a ``/FontFile2``
    stream; Type 3 fonts as ``/Subtype /Type3``."""
    data = pdf.read_bytes()
    assert b"/Type3" not in data, f"{pdf}: Type 3 font"
    assert (b"/CIDFontType2" in data or b"/Subtype /TrueType" in data) and b"/FontFile2" in data, pdf


def _bars(ax):
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def _points_at_zero_visible(ax):
    """The axis starts below 0 and no data line (markers) is clipped at the axes' edge."""
    assert ax.get_ylim()[0] < 0
    assert all(not line.get_clip_on() for line in ax.get_lines() if len(line.get_xdata()) and line.get_marker()
               not in (None, "None", "", "_"))


def _training_log() -> pd.DataFrame:
    """A log shaped like rta_log's: step 0 has validation only, evaluation every 4 steps."""
    log = pd.DataFrame(np.nan, index=range(9), columns=list(LOG_COLUMNS))
    log["step"] = range(9)
    log.loc[1:, "tool_calls_mean"] = np.linspace(1, 3, 8)
    log.loc[1:, "positive_with_tool_share"] = np.linspace(0.5, 1, 8)
    log.loc[[0, 4, 8], "val_H@10"] = [0.5, 0.6, 0.7]
    log.loc[[0, 4, 8], "val_N@10"] = [0.2, 0.3, 0.4]
    log.loc[[0, 4, 8], "val_N@10_lo"] = [0.15, 0.25, 0.35]
    log.loc[[0, 4, 8], "val_N@10_hi"] = [0.25, 0.35, 0.45]
    return log


def test_fig3_from_a_training_log(tmp_path):
    fig, paths = plot_tool_usage(_training_log(), "smoke", tmp_path)
    _check(paths, fig, "smoke")
    assert [p.name for p in paths] == ["fig3_tool_usage.png", "fig3_tool_usage.pdf"]
    assert [ax.get_title() for ax in fig.axes[:2]] == ["(a) tool usage during stage-1 training",
                                                       "(b) H@10 and N@10 over training steps"]
    labels = fig.axes[1].get_legend_handles_labels()[1]
    assert "N@10 95% bootstrap interval" in labels and "H@10 95% bootstrap interval" not in labels  # H@10 has none here
    calls = fig.axes[0].get_lines()[0]
    assert list(calls.get_xdata()) == list(range(1, 9))  # the validation-only step 0 has no training data
    assert calls.get_ydata()[-1] == pytest.approx(3.0)
    share = fig.axes[2].get_lines()[0]  # the twin axis: percent
    assert share.get_ydata()[0] == pytest.approx(50.0) and share.get_ydata()[-1] == pytest.approx(100.0)
    h10 = fig.axes[1].get_lines()[0]
    assert list(h10.get_xdata()) == [0, 4, 8] and list(h10.get_ydata()) == [0.5, 0.6, 0.7]
    assert fig.axes[1].get_lines()[1].get_ydata()[0] == 0.5  # chance H@10 with 10 of 20 candidates
    (bars,) = _bars(fig.axes[1])  # N@10's interval, one bar per evaluated step; H@10 has none in this log
    assert [tuple(seg[:, 1]) for seg in bars.lines[2][0].get_segments()] == \
        [pytest.approx((0.15, 0.25)), pytest.approx((0.25, 0.35)), pytest.approx((0.35, 0.45))]
    for ax in fig.axes:
        _points_at_zero_visible(ax)


def _long(x: str, values: list, extra: dict | None = None) -> pd.DataFrame:
    rows = []
    for i, v in enumerate(values):
        for j, metric in enumerate(["H@1", "H@5", "H@10", "N@5", "N@10"]):
            rows.append({x: v, "metric": metric, "value": 0.1 * (i + 1) + 0.01 * j, "n": 16, **(extra or {})})
    return pd.DataFrame(rows)


def test_fig4_from_the_long_sweep_table(tmp_path):
    chance = chance_metrics(20, [1, 5, 10])
    table = _long("group_size", [8, 2, 4])
    fig, paths = plot_group_size(table, "paper", tmp_path, chance)
    _check(paths, fig, "paper")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["2", "4", "8"]
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert list(lines["H@1"].get_xdata()) == [2, 4, 8]
    # G=8 was listed first with value 0.1; sorted by G the values follow the table, not the input order.
    assert list(lines["H@1"].get_ydata()) == pytest.approx([0.2, 0.3, 0.1])
    dashed = [line.get_ydata()[0] for line in fig.axes[0].get_lines() if line.get_linestyle() == "--"
              and len(line.get_ydata())]
    assert dashed == pytest.approx([0.05, 0.25, 0.5])  # chance H@1, H@5, H@10 with 20 candidates
    assert {line.get_label() for line in fig.axes[1].get_lines()} >= {"N@5", "N@10"}


def test_fig5_uses_the_parameter_count_on_the_x_axis(tmp_path):
    table = pd.concat([_long("backbone", ["s"]).assign(parameters=360_832),
                       _long("backbone", ["l"]).assign(parameters=1_700_000_000),
                       _long("backbone", ["m"]).assign(parameters=600_000)])
    fig, paths = plot_backbone_size(table, "smoke", tmp_path)
    _check(paths, fig, "smoke")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["s\n(0.36M)", "m\n(0.60M)", "l\n(1.7B)"]
    h10 = next(line for line in fig.axes[0].get_lines() if line.get_label() == "H@10")
    assert list(h10.get_xdata()) == [360_832, 600_000, 1_700_000_000]
    assert fig.axes[0].get_xscale() == "log"


def test_a_table_without_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no metric rows"):
        plot_group_size(pd.DataFrame({"group_size": [2], "metric": ["loss"], "value": [1.0]}), "smoke", tmp_path)


def test_fig5_names_the_valid_share_under_each_point(tmp_path):
    table = pd.concat([_long("backbone", ["s"]).assign(parameters=360_832, valid_share=0.8125),
                       _long("backbone", ["m"]).assign(parameters=614_976, valid_share=0.0)])
    fig, _ = plot_backbone_size(table, "smoke", tmp_path)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["s\n(0.36M, 81% valid)", "m\n(0.61M, 0% valid)"]


def test_fig5_draws_ppr_solid_and_stage_1_dotted(tmp_path):
    stage1 = pd.concat([_long("backbone", ["s"]).assign(parameters=360_832, valid_share=0.75),
                        _long("backbone", ["m"]).assign(parameters=614_976, valid_share=0.5)]).assign(stage="RTA")
    full = stage1.assign(stage="RTA+PPR", value=stage1["value"] + 0.1,
                         valid_share=stage1["valid_share"] + 0.25)
    fig, _ = plot_backbone_size(pd.concat([stage1, full]), "smoke", tmp_path)
    assert "stage 1 + PPR" in fig._suptitle.get_text()
    lines = fig.axes[0].get_lines()
    solid = next(line for line in lines if line.get_label() == "H@1")
    dotted = [line for line in lines if line.get_linestyle() == ":" and len(line.get_xdata()) == 2]
    assert len(dotted) == 3 and dotted[0].get_color() == solid.get_color()  # H@1, H@5, H@10 in their colours
    assert list(solid.get_ydata()) == pytest.approx(list(dotted[0].get_ydata() + 0.1))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["s\n(0.36M, 100% valid)", "m\n(0.61M, 75% valid)"]
    assert "stage 1 only (dotted)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_fig4_draws_the_95_percent_interval_of_every_point(tmp_path):
    """Issue 12 (e): the sweep CSVs' lo / hi columns become error bars, one per point and metric."""
    table = pd.DataFrame({"group_size": [2, 4, 8] * 2, "metric": ["H@10"] * 3 + ["N@10"] * 3,
                          "value": [0.6, 0.7, 0.7, 0.3, 0.4, 0.4], "lo": [0.5, 0.6, 0.6, 0.2, 0.3, 0.3],
                          "hi": [0.7, 0.8, 0.8, 0.4, 0.5, 0.5]})
    fig, _ = plot_group_size(table, "cpu", tmp_path)
    bars = [c for ax in fig.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2  # H@10 in the left panel, N@10 in the right
    segments = bars[0].lines[2][0].get_segments()
    assert [tuple(s[:, 1]) for s in segments] == [(0.5, 0.7), (0.6, 0.8), (0.6, 0.8)]


def test_redraw_uses_the_saved_csvs(tmp_path, smoke_profile):
    from recrepro.stages.figures import redraw

    results = smoke_profile.results_dir(tmp_path)
    results.mkdir(parents=True)
    base = {"metric": ["N@10"] * 2, "value": [0.3, 0.4], "lo": [0.2, 0.3], "hi": [0.4, 0.5], "valid_share": [1.0, 1.0]}
    pd.DataFrame({"group_size": [2, 4], **base}).to_csv(results / "fig4_group_size.csv", index=False)
    pd.DataFrame({"backbone": ["tiny-qwen3-s", "tiny-qwen3-m"], "parameters": [3.6e5, 6.1e5], "stage": ["RTA"] * 2,
                  **base}).to_csv(results / "fig5_backbone_size.csv", index=False)
    drawn = redraw(smoke_profile, tmp_path)
    assert {"fig4", "fig5"} <= set(drawn) and (smoke_profile.figures_dir(tmp_path) / "fig4_group_size.png").is_file()


def test_a_point_at_zero_is_drawn_whole_with_its_interval(tmp_path):
    """Issue 15 (4): a metric of 0 sits inside the axes (limit below 0, markers unclipped); a point
    without an interval is skipped by the error bars, not the whole series."""
    table = pd.DataFrame({"group_size": [2, 4, 8], "metric": ["H@1"] * 3, "value": [0.0, 0.1, 0.2],
                          "lo": [0.0, np.nan, 0.1], "hi": [0.05, np.nan, 0.3]})
    fig, _ = plot_group_size(table, "cpu", tmp_path)
    assert [ax.get_title() for ax in fig.axes] == ["HitRate@K (bars: 95% interval)"]  # no empty NDCG panel
    _points_at_zero_visible(fig.axes[0])
    (bars,) = _bars(fig.axes[0])
    assert [tuple(seg[:, 1]) for seg in bars.lines[2][0].get_segments()] == [pytest.approx((0.0, 0.05)),
                                                                             pytest.approx((0.1, 0.3))]


def test_fig5_draws_the_stage_1_intervals_beside_the_ppr_ones(tmp_path):
    from recrepro.stages.figures import DODGE

    rows = pd.DataFrame({"backbone": ["s", "m"], "parameters": [360_832, 614_976], "metric": ["H@10"] * 2,
                         "value": [0.5, 0.0], "lo": [0.4, 0.0], "hi": [0.6, 0.1]})
    fig, _ = plot_backbone_size(pd.concat([rows.assign(stage="RTA"), rows.assign(stage="RTA+PPR", value=[0.6, 0.1],
                                                                                   lo=[0.5, 0.0], hi=[0.7, 0.2])]),
                                "smoke", tmp_path)
    solid, dotted = _bars(fig.axes[0])
    assert [seg[0, 0] for seg in solid.lines[2][0].get_segments()] == [360_832, 614_976]
    assert [seg[0, 0] for seg in dotted.lines[2][0].get_segments()] == pytest.approx([360_832 * DODGE, 614_976 * DODGE])
    assert [tuple(seg[:, 1]) for seg in dotted.lines[2][0].get_segments()] == [(0.4, 0.6), (0.0, 0.1)]
    _points_at_zero_visible(fig.axes[0])


def test_the_save_helper_embeds_truetype_even_when_the_session_asks_for_type_3(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    from recrepro.stages.plots import save_figure

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [0, 1], label="H@10 — ünïcode")
    ax.set(title="title", xlabel="$x_1$")
    ax.legend()
    with matplotlib.rc_context({"pdf.fonttype": 3}):
        png, pdf = save_figure(fig, tmp_path / "out", "small")
        assert matplotlib.rcParams["pdf.fonttype"] == 3  # the helper leaves the session's settings alone
    plt.close(fig)
    assert png.name == "small.png" and pdf.name == "small.pdf"
    assert_truetype_only(pdf)


def _sweep_csvs(profile, root):
    results = profile.results_dir(root)
    results.mkdir(parents=True, exist_ok=True)
    base = {"metric": ["N@10"] * 2, "value": [0.3, 0.4], "lo": [0.2, 0.3], "hi": [0.4, 0.5], "valid_share": [1.0, 1.0]}
    pd.DataFrame({"group_size": [2, 4], **base}).to_csv(results / "fig4_group_size.csv", index=False)
    pd.DataFrame({"backbone": ["tiny-qwen3-s", "tiny-qwen3-m"], "parameters": [3.6e5, 6.1e5], "stage": ["RTA"] * 2,
                  **base}).to_csv(results / "fig5_backbone_size.csv", index=False)
    return results


def test_redraw_only_rewrites_the_figures_asked_for(tmp_path, smoke_profile):
    from recrepro.stages.figures import redraw

    _sweep_csvs(smoke_profile, tmp_path)
    out = smoke_profile.figures_dir(tmp_path)
    out.mkdir(parents=True)
    for name in ("fig3_tool_usage.png", "fig5_backbone_size.png", "fig5_backbone_size.pdf"):
        (out / name).write_bytes(b"old")
    drawn = redraw(smoke_profile, tmp_path, only=["fig4"])
    assert list(drawn) == ["fig4"]
    assert sorted(p.name for p in out.iterdir()) == ["fig3_tool_usage.png", "fig4_group_size.pdf",
                                                     "fig4_group_size.png", "fig5_backbone_size.pdf",
                                                     "fig5_backbone_size.png"]
    assert all((out / n).read_bytes() == b"old" for n in ("fig3_tool_usage.png", "fig5_backbone_size.png"))
    assert_truetype_only(out / "fig4_group_size.pdf")


def test_redraw_of_a_figure_without_its_csv_names_the_file(tmp_path, smoke_profile):
    from recrepro.stages.figures import redraw

    results = _sweep_csvs(smoke_profile, tmp_path)
    (results / "fig5_backbone_size.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"fig5_backbone_size\.csv"):
        redraw(smoke_profile, tmp_path, only=["fig4", "fig5"])
    with pytest.raises(FileNotFoundError, match=r"rta/ml-100k/train_log\.csv"):
        redraw(smoke_profile, tmp_path, only=["fig3"])
    assert list(redraw(smoke_profile, tmp_path)) == ["fig4"]  # without --only: what can be drawn
    with pytest.raises(ValueError, match="fig3, fig4, fig5"):
        redraw(smoke_profile, tmp_path, only=["fig9"])


def test_the_figures_command_takes_only_and_root(tmp_path, smoke_profile, capsys):
    from recrepro.__main__ import main

    _sweep_csvs(smoke_profile, tmp_path)
    assert main(["figures", "--profile", "smoke", "--root", str(tmp_path), "--only", "fig5"]) == 0
    assert [p.name for p in sorted(smoke_profile.figures_dir(tmp_path).iterdir())] == ["fig5_backbone_size.pdf",
                                                                                    "fig5_backbone_size.png"]
    assert capsys.readouterr().out.startswith("fig5 ")
    assert main(["figures", "--profile", "smoke", "--root", str(tmp_path), "--only", "fig3"]) == 1
    assert "train_log.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["figures", "--profile", "smoke", "--root", str(tmp_path), "--only", "fig4,fig9"])
    assert exit_.value.code == 2 and "choose from fig3, fig4, fig5" in capsys.readouterr().err


def test_the_stages_cli_takes_only(tmp_path, smoke_profile, capsys):
    from recrepro.stages.figures import main

    _sweep_csvs(smoke_profile, tmp_path)
    assert main(["--profile", "smoke", "--root", str(tmp_path), "--only", "fig4", "fig5"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["fig4", "fig5"]
    with pytest.raises(SystemExit) as exit_:
        main(["--profile", "smoke", "--only", "table1"])
    assert exit_.value.code == 2 and "fig3, fig4, fig5" in capsys.readouterr().err


def test_redraw_reads_the_files_the_training_code_writes(tmp_path, smoke_profile):
    """The file names are spelled in figures.py so that redrawing needs no torch; they must agree."""
    from recrepro.rl.rta import train_log_path
    from recrepro.rl.sweeps import RESULT_STEMS
    from recrepro.stages.figures import FIGURES, sweep_csv, train_log_file

    assert train_log_file(smoke_profile, tmp_path, "ml-100k") == \
        train_log_path(smoke_profile, tmp_path, "ml-100k", "tirr")
    assert {FIGURES["fig4"], FIGURES["fig5"]} == set(RESULT_STEMS.values())
    assert sweep_csv(smoke_profile, tmp_path, "fig4").name == f"{RESULT_STEMS['group_size']}.csv"


def test_redrawing_imports_no_training_code():
    import subprocess
    import sys

    code = "import sys, recrepro.__main__; print(sorted({'torch', 'transformers', 'trl'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
