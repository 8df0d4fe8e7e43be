"""The plots of notebooks 01, 02 and 06 (recrepro/stages/plots.py): tick labels that do not overlap,
intervals as error bars, points at 0 visible, and no panel without data."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402

from recrepro.stages.plots import eval_card_panels, plot_eval_cards, plot_model_scores, plot_samples  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def assert_no_overlapping_tick_labels(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
            boxes = [t.get_window_extent(renderer) for t in labels if t.get_visible() and t.get_text()]
            for a, b in itertools.combinations(boxes, 2):
                assert not a.overlaps(b), f"{ax.get_title()!r}: tick labels overlap"


def _samples(n: int, start: int, history_max: int = 10) -> pd.DataFrame:
    rng = np.random.default_rng(n)
    return pd.DataFrame({"target_time": start + np.sort(rng.integers(0, 30 * 86400, n)),
                         "history_items": [list(range(rng.integers(1, history_max + 1))) for _ in range(n)]})


def test_notebook_01_dates_and_history_lengths_are_readable():
    day = 86400
    samples = {"train": _samples(400, 880_000_000), "valid": _samples(50, 880_000_000 + 200 * day),
               "test": _samples(50, 880_000_000 + 230 * day)}
    fig = plot_samples(samples, "Industrial_and_Scientific", "cpu", 10)
    assert_no_overlapping_tick_labels(fig)
    dates, lengths = fig.axes
    assert "Industrial_and_Scientific" in fig._suptitle.get_text() and "cpu" in fig._suptitle.get_text()
    assert [t.get_text() for t in lengths.get_xticklabels()] == [str(k) for k in range(1, 11)]
    bars = [p for p in lengths.patches if p.get_height() > 0]
    assert sum(p.get_height() for p in bars) == 500  # every sample counted once, splits side by side
    # shared bins: every split's step histogram spans the same edges (a short split is not drawn as needles)
    spans = {(round(p.get_xy()[:, 0].min(), 6), round(p.get_xy()[:, 0].max(), 6)) for p in dates.patches}
    assert len(dates.patches) == 3 and len(spans) == 1


def _table(models, datasets=("ml-100k",)):
    rows = []
    for d, dataset in enumerate(datasets):
        for i, model in enumerate(models):
            value = 0.0 if model == "TALLRec-like (SFT)" else 0.1 * (i + 1)
            rows.append({"dataset": dataset, "model": model, "H@10": value, "H@10_lo": max(value - 0.05, 0),
                         "H@10_hi": value + 0.05, "source": "measured"})
    rows.append({"dataset": datasets[0], "model": "AgenticRec", "H@10": 0.9, "source": "paper"})
    rows.append({"dataset": datasets[0], "model": "ReaRec", "H@10": np.nan, "source": "not run"})
    return pd.DataFrame(rows)


def test_notebook_02_bars_are_horizontal_with_intervals_and_zero_visible():
    models = ["Chance", "First ten candidates", "MostPop", "InteRecAgent-like (frozen TIRR)", "TALLRec-like (SFT)"]
    fig = plot_model_scores(_table(models, ("ml-100k", "Musical_Instruments")), "cpu", "H@10", n_candidates=20)
    assert_no_overlapping_tick_labels(fig)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == models  # paper and not-run rows left out
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2 and all(len(b.lines[2][0].get_segments()) == len(models) for b in bars)
    assert ax.get_xlim()[0] < 0
    dots = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert all(not d.get_clip_on() for d in dots) and 0.0 in np.concatenate([d.get_xdata() for d in dots])
    assert 0.5 in [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]


def _card(reasons=None, calls=None, positions=None):
    return {"invalid_reasons": {"duplicate": 0.0, "truncated": 0.0, **(reasons or {})},
            "tool_calls_per_trajectory": {"histogram": calls if calls is not None else {"0": 8}},
            "target_position_vs_hit": positions if positions is not None else
            [{"positions": b, "H@10": v, "n": 4} for b, v in (("1-5", 1.0), ("6-10", 0.5), ("11-15", 0.0),
                                                             ("16-20", np.nan))]}


def test_notebook_06_draws_only_the_panels_with_data():
    cards = {"ml-100k/frozen-R": _card(), "ml-100k/frozen-TIRR": _card(calls={"2": 6, "10": 2})}
    fig = plot_eval_cards(cards, "smoke", n_candidates=20)
    assert [ax.get_title() for ax in fig.axes] == ["tool calls per trajectory", "H@10 by target position"]
    assert "ml-100k" in fig._suptitle.get_text()
    calls, position = fig.axes
    assert [t.get_text() for t in calls.get_yticklabels()] == ["frozen-R", "frozen-TIRR"]
    assert [t.get_text() for t in position.get_xticklabels()] == ["1-5", "6-10", "11-15", "16-20"]  # not sorted
    first = position.get_lines()[0]
    assert list(first.get_xdata()) == [0, 1, 2] and list(first.get_ydata()) == [1.0, 0.5, 0.0]  # empty bucket left out
    assert position.get_ylim()[0] < 0 and not first.get_clip_on()
    assert_no_overlapping_tick_labels(fig)

    cards["ml-100k/frozen-R"] = _card(reasons={"truncated": 0.25})
    fig = plot_eval_cards(cards, "smoke")
    assert [ax.get_title() for ax in fig.axes][0] == "invalid answers by reason"
    assert list(eval_card_panels(cards)["invalid"].columns) == ["truncated"]  # reasons that never occur: no bar


def test_notebook_06_without_any_data_draws_nothing():
    empty = {"ml-100k/frozen-R": _card(calls={}, positions=[{"positions": "1-5", "H@10": np.nan, "n": 0}])}
    assert eval_card_panels(empty) == {}
    assert plot_eval_cards(empty, "smoke") is None
