"""Figures are written as non-trivial PNG and PDF files with the profile in the title."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recrepro.figures import plot_backbone_size, plot_group_size, plot_tool_usage


def _check(paths, fig, profile):
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert all(p.stat().st_size > 10_000 for p in paths)
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].read_bytes()[:5] == b"%PDF-"
    assert profile in fig._suptitle.get_text()


def test_fig3_from_a_training_log(tmp_path):
    log = pd.DataFrame({"step": range(1, 9), "tool_calls_mean": np.linspace(1, 3, 8),
                        "positive_with_tool_share": np.linspace(0.5, 1, 8),
                        "val_H@10": [0.5, np.nan, np.nan, 0.6, np.nan, np.nan, np.nan, 0.7]})
    fig, paths = plot_tool_usage(log, "smoke", tmp_path)
    _check(paths, fig, "smoke")
    assert [ax.get_title() for ax in fig.axes[:2]] == ["(a) tool usage during stage-1 training",
                                                       "(b) H@10 over training steps"]
    assert len(fig.axes[1].get_lines()[0].get_xdata()) == 3  # only evaluated steps are drawn


def test_fig4_and_fig5(tmp_path):
    metrics = {"H@1": [0.1, 0.2, 0.3], "H@5": [0.3, 0.4, 0.5], "H@10": [0.5, 0.6, 0.7],
               "N@5": [0.2, 0.3, 0.4], "N@10": [0.3, 0.4, 0.5]}
    fig, paths = plot_group_size(pd.DataFrame({"group_size": [8, 2, 4], **metrics}), "paper", tmp_path)
    _check(paths, fig, "paper")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["2", "4", "8"]
    table = pd.DataFrame({"backbone": ["s", "m", "l"], "parameters": [1e6, 4e6, 1.7e9], **metrics})
    fig, paths = plot_backbone_size(table, "smoke", tmp_path)
    _check(paths, fig, "smoke")
    assert fig.axes[0].get_xticklabels()[2].get_text() == "l\n(1.7B)"
