"""The notebooks' plots (01, 02, 06, and 07's "Table 1 at a glance") and the kit's one figure-saving helper.

The ``plot_*`` functions take plain tables or cards, return the Figure and save nothing: in a notebook
the kernel's backend shows it (this module never calls ``matplotlib.use``). :func:`save_figure` is the
only place the kit writes figure files (Figures 3-5 and Table 1 at a glance of
:mod:`recrepro.stages.figures`): PNG and PDF, the PDF with TrueType (Type 42) fonts, never Type 3, so
its text stays text for journals and editors.

Readability rules shared by every plot: names go on the y axis (horizontal bars) or on rotated tick
labels, never long labels side by side; metric axes run slightly below 0 and above 1 and markers are
drawn unclipped, so a point at 0 is visible; an interval (``lo`` / ``hi``) is an error bar; a panel
without data is not drawn at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from recrepro.metrics import chance_metrics
from recrepro.paper import paper_name

PDF_FONTS = {"pdf.fonttype": 42, "ps.fonttype": 42}  # TrueType (Type 42) glyphs in PDF / PostScript
MARGIN = 0.04  # metric axes span [-MARGIN, 1 + MARGIN]: a point at 0 or 1 is drawn whole


def save_figure(fig: plt.Figure, out_dir: Path | str, stem: str) -> list[Path]:
    """``<out_dir>/<stem>.png`` and ``.pdf`` (TrueType fonts, no creation date: same figure, same bytes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    with matplotlib.rc_context(PDF_FONTS):
        for path in paths:
            fig.savefig(path, dpi=150, bbox_inches="tight",
                        metadata={"CreationDate": None} if path.suffix == ".pdf" else None)
    return paths


def metric_limits(top: float = 1.0) -> tuple[float, float]:
    """Axis limits for a quantity in [0, top], a little past both ends."""
    return -MARGIN * top, (1 + MARGIN) * top


def interval_bars(ax: plt.Axes, x: Any, value: Any, lo: Any, hi: Any, colour: Any,
                  horizontal: bool = False, **style: Any) -> Any:
    """Error bars from an interval's ``lo`` / ``hi`` (points without one are skipped); None if none has one."""
    frame = pd.DataFrame({"x": np.asarray(x), "value": np.asarray(value, dtype=float),
                          "lo": np.asarray(lo, dtype=float), "hi": np.asarray(hi, dtype=float)}).dropna()
    if frame.empty:
        return None
    err = [(frame["value"] - frame["lo"]).clip(lower=0), (frame["hi"] - frame["value"]).clip(lower=0)]
    style = {"fmt": "none", "ecolor": colour, "elinewidth": 1, "capsize": 3, "clip_on": False} | style
    if horizontal:
        return ax.errorbar(frame["value"], frame["x"], xerr=err, **style)
    return ax.errorbar(frame["x"], frame["value"], yerr=err, **style)


def plot_samples(samples: Mapping[str, pd.DataFrame], dataset: str, profile: str, history_max: int) -> plt.Figure:
    """Notebook 01: target dates per split (shared bins) and history lengths per split (side by side)."""
    fig, (ax_time, ax_hist) = plt.subplots(1, 2, figsize=(10, 3.4))
    splits = [s for s, frame in samples.items() if len(frame)]
    times = {s: mdates.date2num(pd.to_datetime(samples[s]["target_time"], unit="s")) for s in splits}
    if splits:
        edges = np.histogram_bin_edges(np.concatenate(list(times.values())), bins=60)
        for split in splits:  # the splits are consecutive periods: shared bins, overlaid
            ax_time.hist(times[split], bins=edges, histtype="stepfilled", alpha=0.75, label=split)
        lengths = [samples[s]["history_items"].map(len) for s in splits]
        ax_hist.hist(lengths, bins=np.arange(0.5, history_max + 1.5), label=splits)  # bars side by side
    locator = mdates.AutoDateLocator(minticks=3, maxticks=6)
    ax_time.xaxis.set_major_locator(locator)
    ax_time.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax_time.tick_params(axis="x", labelrotation=30)
    ax_time.set(title="target dates per split", xlabel="target date", ylabel="samples")
    ax_hist.set_yscale("log")
    ax_hist.set_xticks(range(1, history_max + 1))
    ax_hist.set(title=f"history length (cap {history_max})", xlabel="items in history",
                ylabel="samples (log scale)")
    for ax in (ax_time, ax_hist):
        if splits:
            ax.legend(fontsize=8)
    fig.suptitle(f"{dataset}: samples per split, {profile} profile", fontsize=11)
    fig.tight_layout()
    return fig


def _chance(metric: str, n_candidates: int | None) -> float | None:
    if n_candidates is None or "@" not in metric:
        return None
    return chance_metrics(n_candidates, [int(metric.split("@")[1])]).get(metric)


def plot_model_scores(table: pd.DataFrame, profile: str, metric: str = "H@10",
                      n_candidates: int | None = None) -> plt.Figure:
    """Notebook 02: ``metric`` of every measured row as horizontal bars (model names on the y axis),
    one bar per dataset, with the ``<metric>_lo`` / ``_hi`` interval as an error bar and a dot at the
    value (a score of 0 stays visible). Paper rows and rows without a value are left out."""
    rows = table[table[metric].notna()]
    if "source" in rows:
        rows = rows[rows["source"] != "paper"]
    models = list(dict.fromkeys(rows["model"]))
    datasets = list(dict.fromkeys(rows["dataset"]))
    height = 0.8 / max(len(datasets), 1)
    fig, ax = plt.subplots(figsize=(7, 1.4 + 0.32 * len(models) * max(len(datasets), 1) ** 0.5))
    for i, dataset in enumerate(datasets):
        part = rows[rows["dataset"] == dataset]
        y = np.array([models.index(m) for m in part["model"]]) - 0.4 + height * (i + 0.5)
        colour = f"C{i}"
        ax.barh(y, part[metric], height=height * 0.9, color=colour, alpha=0.75, label=dataset)
        lo, hi = (part.get(f"{metric}_{end}", pd.Series(np.nan, index=part.index)) for end in ("lo", "hi"))
        interval_bars(ax, y, part[metric], lo, hi, "black", horizontal=True, elinewidth=0.8, capsize=2)
        ax.plot(part[metric], y, "o", ms=3, color="black", clip_on=False)
    chance = _chance(metric, n_candidates)
    if chance is not None:
        ax.axvline(chance, color="grey", ls="--", lw=1, label=f"chance ({chance:.3g})")
    ax.set_yticks(range(len(models)), models)
    ax.invert_yaxis()  # first row on top, as in the table
    ax.set_xlim(*metric_limits())
    ax.set(xlabel=f"{metric} on the frozen test lists (bars: 95% interval)",
           title=f"{metric} per model, {profile} profile")
    if len(ax.get_legend_handles_labels()[0]):
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def _card_labels(keys: Sequence[str]) -> tuple[list[str], str]:
    """Card keys ``dataset/model`` -> model names when all share one dataset (named in the title)."""
    datasets = {key.split("/", 1)[0] for key in keys}
    if len(datasets) == 1 and all("/" in key for key in keys):
        return [key.split("/", 1)[1] for key in keys], f"{datasets.pop()}: "
    return list(keys), ""


def _stacked_shares(ax: plt.Axes, shares: pd.DataFrame, labels: list[str], title: str, legend_title: str) -> None:
    """One horizontal bar per card (row), stacked by column."""
    left = np.zeros(len(shares))
    for i, column in enumerate(shares.columns):
        ax.barh(range(len(shares)), shares[column], left=left, color=f"C{i}", label=str(column))
        left += shares[column].to_numpy()
    ax.set_yticks(range(len(shares)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1.0, float(left.max())) * (1 + MARGIN))
    ax.set(title=title, xlabel="share of trajectories")
    ax.legend(fontsize=7, title=legend_title, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def eval_card_panels(cards: Mapping[str, Mapping[str, Any]]) -> dict[str, pd.DataFrame]:
    """The data of notebook 06's panels, only those with something to show (rows: cards).

    ``invalid`` (share by reason, reasons that occur), ``tool_calls`` (share of trajectories by number
    of calls) and ``position`` (H@10 by target-position bucket, buckets with instances)."""
    keys = list(cards)
    panels: dict[str, pd.DataFrame] = {}
    invalid = pd.DataFrame([cards[k].get("invalid_reasons") or {} for k in keys], index=keys).fillna(0.0)
    invalid = invalid.loc[:, (invalid > 0).any()] if len(invalid.columns) else invalid
    if invalid.shape[1]:
        panels["invalid"] = invalid
    hist = pd.DataFrame([(cards[k].get("tool_calls_per_trajectory") or {}).get("histogram") or {} for k in keys],
                        index=keys).fillna(0.0)
    if hist.shape[1] and hist.to_numpy().sum() > 0:
        hist = hist[sorted(hist.columns, key=int)]
        panels["tool_calls"] = hist.div(hist.sum(axis=1).replace(0, np.nan), axis=0).fillna(0.0)
    buckets = {k: {b["positions"]: b.get("H@10") for b in cards[k].get("target_position_vs_hit") or []} for k in keys}
    order = list(dict.fromkeys(b for values in buckets.values() for b in values))  # the cards' order, not sorted
    position = pd.DataFrame([buckets[k] for k in keys], index=keys, columns=order, dtype=float)
    if position.notna().to_numpy().any():
        panels["position"] = position
    return panels


def plot_eval_cards(cards: Mapping[str, Mapping[str, Any]], profile: str,
                    n_candidates: int | None = None) -> plt.Figure | None:
    """Notebook 06: invalid answers by reason, tool calls per trajectory, H@10 by target position.

    One axis per panel that has data (:func:`eval_card_panels`); None when no panel has any."""
    panels = eval_card_panels(cards)
    if not panels:
        return None
    labels, prefix = _card_labels(list(cards))
    label_of = dict(zip(cards, labels))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.2, 1.8 + 0.3 * len(cards)),
                             squeeze=False)
    for ax, (name, data) in zip(axes[0], panels.items()):
        names = [label_of[k] for k in data.index]
        if name == "invalid":
            _stacked_shares(ax, data, names, "invalid answers by reason", "reason")
        elif name == "tool_calls":
            _stacked_shares(ax, data, names, "tool calls per trajectory", "calls")
        else:
            for i, (key, row) in enumerate(data.iterrows()):
                shown = row.notna().to_numpy()  # a bucket without instances has no H@10
                ax.plot(np.arange(len(row))[shown], row.to_numpy()[shown], marker="o", color=f"C{i % 10}",
                        label=label_of[key], clip_on=False)
            chance = _chance("H@10", n_candidates)
            if chance is not None:
                ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance ({chance:.3g})")
            ax.set_xticks(range(data.shape[1]), list(data.columns))
            ax.set_ylim(*metric_limits())
            ax.set(title="H@10 by target position", xlabel="target position in the list", ylabel="H@10")
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"{prefix}evaluation cards, {profile} profile", fontsize=11)
    fig.tight_layout()
    return fig


# Our Table 1 row name -> the paper's name for the system it stands for (PAPER.md 1.6), used to put the
# paper's value beside ours. The kit's "-like" rows are its stand-ins for the paper's baselines, run on
# the kit's backbone under the same protocol (the paper's LLMRank and InteRecAgent call GPT-4), so the
# marker beside them is the paper's system, not the same model; "AgenticRec (RTA+PPR)" is the full
# method (stage 1 + stage 2). Every other row is matched with the paper row of exactly its own name
# ("SASRec" <-> "SASRec"); "AgenticRec (RTA)" (stage 1 only) has none. This is the only place the
# mapping is spelled; recrepro.tables.MEASURED_AS answers another question (which paper baselines
# a profile runs under variant names, for the "not run" rows) and is not used here.
PAPER_MODEL = {
    "AgenticRec (RTA+PPR)": "AgenticRec",
    "LLMRank-like (frozen R)": "LLMRank",
    "InteRecAgent-like (frozen TIRR)": "InteRecAgent",
    "TALLRec-like (SFT)": "TALLRec",
}
GLANCE_SOURCES = ("measured", "reference")  # rows drawn as points: scored on test lists, with an interval
PAPER_OFFSET = 0.3  # the paper's marker sits this far below our point (one row = 1)


def paper_model_name(model: str) -> str:
    """The paper's name for our Table 1 row ``model`` (:data:`PAPER_MODEL`, else the same name)."""
    return PAPER_MODEL.get(model, model)


def glance_rows(table: pd.DataFrame, dataset: str | None, metric: str = "N@10") -> pd.DataFrame:
    """The rows drawn as points for ``dataset`` (None: every dataset): measured (and the fixed-rule
    reference) rows with a value, in table order."""
    shown = table["source"].isin(GLANCE_SOURCES) & table[metric].notna()
    return table[shown & (table["dataset"] == dataset)] if dataset is not None else table[shown]


def _line_value(table: pd.DataFrame, dataset: str, model: str, metric: str) -> float | None:
    """``metric`` of the (non-paper) row ``model`` of ``dataset``: Chance is analytic, MostPop measured."""
    rows = table[(table["dataset"] == dataset) & (table["model"] == model) & (table["source"] != "paper")
                 & table[metric].notna()]
    return float(rows[metric].iloc[0]) if len(rows) else None


def plot_table1_glance(table: pd.DataFrame, dataset: str, profile: str, run: str,
                       metric: str = "N@10") -> plt.Figure:
    """Notebook 07, "Table 1 at a glance" of one dataset: every measured row's ``metric`` as a dot with
    its ``<metric>_lo`` / ``_hi`` interval as a horizontal error bar (one row per model, table order);
    the paper's value for the same system (:data:`PAPER_MODEL`) as a hollow diamond just below ours,
    only where the paper reports ``dataset`` (:func:`recrepro.paper.paper_name`); Chance and MostPop
    as vertical lines. A dataset the paper does not use (ml-100k) gets no paper marker and says so
    in the title."""
    rows = glance_rows(table, dataset, metric)
    if rows.empty:
        raise ValueError(f"no measured {metric} rows for dataset {dataset!r} to draw")
    y = np.arange(len(rows), dtype=float)
    labels = [f"{m} (n={int(n)})" if pd.notna(n) else str(m)
              for m, n in zip(rows["model"], rows["n"] if "n" in rows else [np.nan] * len(rows))]
    fig, ax = plt.subplots(figsize=(7.5, 1.6 + 0.38 * len(rows)))
    lo, hi = (rows.get(f"{metric}_{end}", pd.Series(np.nan, index=rows.index)) for end in ("lo", "hi"))
    interval_bars(ax, y, rows[metric], lo, hi, "C0", horizontal=True, label="95% bootstrap interval")
    ax.plot(rows[metric], y, "o", color="C0", ms=5, clip_on=False, label=f"{metric}, this run")

    short = paper_name(str(dataset))
    paper = table[(table["source"] == "paper") & (table["dataset"] == short)] if short else table.iloc[:0]
    reported = dict(zip(paper["model"], paper[metric]))
    matched = [(i, reported[paper_model_name(m)]) for i, m in enumerate(rows["model"])
               if pd.notna(reported.get(paper_model_name(m), np.nan))]
    if matched:
        ax.plot([v for _, v in matched], [y[i] + PAPER_OFFSET for i, _ in matched], "D", ms=6, mfc="none",
                mec="C3", mew=1.4, ls="none", clip_on=False, label=f"paper's {metric} on {short} (PAPER.md)")
        note = f"paper markers: its {short} values"
    elif short is None:
        note = f"paper: no {dataset} values"
    else:
        note = f"paper: no {short} value for these rows"

    for model, style in (("Chance", {"color": "grey", "ls": "--"}), ("MostPop", {"color": "C2", "ls": ":"})):
        value = _line_value(table, dataset, model, metric)
        if value is not None:
            ax.axvline(value, lw=1.2, label=f"{model} ({value:.3f})", **style)
    ax.set_yticks(y, labels)
    ax.set_ylim(len(rows) - 0.4, -0.6)  # first row on top, as in the table; room for the paper's marker
    ax.set_xlim(*metric_limits())
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"{metric} on the frozen test lists (bars: 95% interval)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    honesty = "" if profile == "paper" else " — not a reproduction"
    fig.suptitle(f"Table 1 at a glance — {dataset}, {metric}\n{profile} profile, run {run}{honesty}; {note}",
                 fontsize=10)
    fig.tight_layout()
    return fig
