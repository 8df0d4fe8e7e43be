"""Figures 3, 4 and 5 of the paper, drawn from the kit's own logs and sweep tables, and "Table 1 at a glance".

Each function takes plain tables (pandas) and writes ``<stem>.png`` and ``<stem>.pdf`` under
``figures/<profile>/``, laid out as in PAPER.md 1.6, with the profile named in the title so a smoke
figure can never pass for a reproduction; every interval of the inputs is drawn as an error bar.
``python -m recrepro figures --profile P [--only fig4]`` redraws them from a run's saved CSVs in
seconds: this module imports no training code.

Details (each figure's layout, axes and inputs): docs/internals.md, "stages/figures.py".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: papermill and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from recrepro import paths  # noqa: E402
from recrepro.config import load_profile  # noqa: E402
from recrepro.metrics import chance_metrics  # noqa: E402
from recrepro.stages.plots import (glance_rows, interval_bars, metric_limits, plot_table1_glance,  # noqa: E402
                                   save_figure)

METRICS = ["H@1", "H@5", "H@10", "N@5", "N@10"]
CHANCE_N10 = chance_metrics(20, [10])["N@10"]  # PAPER.md 1.1: 20 candidates, one positive
DODGE = 1.04  # Figure 5's dotted (stage-1) points sit this factor right of the solid ones on the log axis


FIGURES = {"fig3": "fig3_tool_usage", "fig4": "fig4_group_size", "fig5": "fig5_backbone_size",
           "table1_glance": "table1_glance"}  # name -> file stem (table1_glance: + "_<dataset>", one per dataset)
GLANCE_METRIC = "N@10"
GLANCE_COLUMNS = ("dataset", "model", "source", GLANCE_METRIC)  # what Table 1 at a glance reads


def plot_tool_usage(log: pd.DataFrame, profile: str, out_dir: Path | str,
                    tool_calls: str = "tool_calls_mean", positive_with_tool: str = "positive_with_tool_share",
                    hit10: str = "val_H@10") -> tuple[plt.Figure, list[Path]]:
    """Figure 3 from the stage-1 training log (one row per logging step, column ``step``)."""
    sns.set_theme(style="whitegrid", context="paper")
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(11.5, 3.6))
    steps = log.dropna(subset=[tool_calls])
    ax_a.plot(steps["step"], steps[tool_calls], marker="o", color="tab:blue", label="tool calls per trajectory",
              clip_on=False)
    ax_a.set(xlabel="training step", ylabel="mean tool calls per trajectory")
    ax_a.set_ylim(*metric_limits(max(ax_a.get_ylim()[1], 1.0)))  # 0 a little above the bottom, as on the twin
    ax_a.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    twin = ax_a.twinx()
    twin.grid(False)  # one grid (the left axis's) is enough
    twin.plot(steps["step"], 100 * steps[positive_with_tool], marker="s", color="tab:orange",
              label="positive trajectories with a tool call", clip_on=False)
    twin.set(ylabel="% of positively rewarded trajectories", ylim=metric_limits(100))
    lines = ax_a.get_lines() + twin.get_lines()
    ax_a.legend(lines, [line.get_label() for line in lines], loc="lower right", fontsize=8)
    ax_a.set_title("(a) tool usage during stage-1 training")
    evals = log.dropna(subset=[hit10])
    for column, color, chance in ((hit10, "tab:green", 0.5), ("val_N@10", "tab:purple", CHANCE_N10)):
        if column not in evals or evals[column].isna().all():
            continue
        metric = column.removeprefix("val_")
        ax_b.plot(evals["step"], evals[column], marker="o", color=color, label=f"{metric} (validation slice)",
                  clip_on=False)
        if f"{column}_lo" in evals and f"{column}_hi" in evals:  # logs before the interval had none
            interval_bars(ax_b, evals["step"], evals[column], evals[f"{column}_lo"], evals[f"{column}_hi"], color,
                          label=f"{metric} 95% bootstrap interval")
        ax_b.axhline(chance, color=color, ls="--", lw=1, alpha=0.6, label=f"{metric} chance ({chance:.3f})")
    ax_b.set(xlabel="training step", ylabel="validation metric", ylim=metric_limits(),
             title="(b) H@10 and N@10 over training steps")
    ax_b.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_b.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the panel, never over a point
    fig.suptitle(f"Figure 3 — stage-1 (RTA) training, {profile} profile", fontsize=11)
    fig.tight_layout()
    return fig, save_figure(fig, out_dir, FIGURES["fig3"])


def _long_metrics(table: pd.DataFrame, x: str) -> pd.DataFrame:
    """Long rows (``x``, metric, value): accepts the sweep CSVs (long) or one column per metric (wide)."""
    if {"metric", "value"} <= set(table.columns):
        long = table[[x, "metric", "value", *[c for c in ("lo", "hi") if c in table.columns]]]
    else:
        long = table.melt(id_vars=[x], value_vars=[m for m in METRICS if m in table.columns],
                          var_name="metric", value_name="value")
    long = long[long["metric"].isin(METRICS)].copy()
    if long.empty:
        raise ValueError(f"no metric rows ({', '.join(METRICS)}) to plot against {x!r}")
    long["family"] = long["metric"].str[0].map({"H": "HitRate@K", "N": "NDCG@K"})
    return long


def _metric_lines(table: pd.DataFrame, x: str, xlabel: str, title: str, profile: str, out_dir: Path | str,
                  stem: str, ticks: dict[float, str], log_base: int | None,
                  chance: dict[str, float] | None, secondary: tuple[pd.DataFrame, str] | None = None
                  ) -> tuple[plt.Figure, list[Path]]:
    """Panels HitRate@K and NDCG@K (those with rows) of metric-vs-``x`` lines, chance levels dashed in the same colour.

    ``secondary`` = (table, label): the same metrics drawn dotted in the same colours (e.g. stage 1
    beside stage 1 + PPR), with their intervals, a little right of the solid points (DODGE on the log
    axis) so the two sets of error bars do not cover each other.
    """
    sns.set_theme(style="whitegrid", context="paper")
    long = _long_metrics(table, x)
    other = _long_metrics(secondary[0], x) if secondary is not None else None
    families = [family for family in ("HitRate@K", "NDCG@K") if (long["family"] == family).any()]  # no empty panel
    fig, axes = plt.subplots(1, len(families), figsize=(4.5 * len(families), 3.6), sharex=True, squeeze=False)
    for ax, family in zip(axes[0], families):
        part = long[long["family"] == family]
        for i, (metric, rows) in enumerate(part.groupby("metric", sort=False)):
            rows = rows.sort_values(x)
            colour = f"C{i}"
            ax.plot(rows[x], rows["value"], marker="o", color=colour, label=metric, clip_on=False)
            if {"lo", "hi"} <= set(rows.columns):  # the 95% bootstrap interval of each point that has one
                interval_bars(ax, rows[x], rows["value"], rows["lo"], rows["hi"], colour)
            if other is not None:
                dotted = other[other["metric"] == metric].sort_values(x)
                shifted = dotted[x] * (DODGE if log_base else 1.0)
                ax.plot(shifted, dotted["value"], marker=".", ls=":", color=colour, alpha=0.8, clip_on=False)
                if {"lo", "hi"} <= set(dotted.columns):
                    interval_bars(ax, shifted, dotted["value"], dotted["lo"], dotted["hi"], colour,
                                  alpha=0.6, capsize=2, ls=":")
            if chance and metric in chance:
                ax.axhline(chance[metric], color=colour, ls="--", lw=0.8, alpha=0.7)
        if other is not None:
            ax.plot([], [], color="grey", ls=":", marker=".", label=f"{secondary[1]} (dotted)")
        if chance:
            ax.plot([], [], color="grey", ls="--", lw=0.8, label="chance (dashed)")
        if log_base:
            ax.set_xscale("log", base=log_base)
        ax.set_xticks(list(ticks), list(ticks.values()))
        ax.minorticks_off()
        ax.set(xlabel=xlabel, ylabel=f"{family} on the test subset", ylim=metric_limits(),
               title=f"{family} (bars: 95% interval)")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"{title}, {profile} profile", fontsize=11)
    fig.tight_layout()
    return fig, save_figure(fig, out_dir, stem)


def plot_group_size(table: pd.DataFrame, profile: str, out_dir: Path | str,
                    chance: dict[str, float] | None = None) -> tuple[plt.Figure, list[Path]]:
    """Figure 4: test metrics against the group size G (column ``group_size``; long or wide table)."""
    sizes = sorted(int(g) for g in table["group_size"].unique())
    return _metric_lines(table, "group_size", "group size G (rollouts per instance, log scale)",
                         "Figure 4 — effect of the group size G", profile, out_dir, FIGURES["fig4"],
                         {g: str(g) for g in sizes}, 2, chance)


def _param_label(parameters: float) -> str:
    return f"{parameters / 1e9:.1f}B" if parameters >= 1e8 else f"{parameters / 1e6:.2f}M"


def _valid_label(valid_share: float | None) -> str:
    """", 84% valid" under a point: a metric of zero from invalid answers must not read as a bad ranking."""
    if valid_share is None or pd.isna(valid_share):
        return ""
    return f", {100 * float(valid_share):.0f}% valid"


def plot_backbone_size(table: pd.DataFrame, profile: str, out_dir: Path | str,
                       chance: dict[str, float] | None = None) -> tuple[plt.Figure, list[Path]]:
    """Figure 5: test metrics against the parameter count (columns ``backbone``, ``parameters``).

    With a ``stage`` column holding ``RTA+PPR`` rows, those are the solid lines (the full method)
    and the stage-1 (``RTA``) rows are drawn dotted beside them.
    """
    title, secondary = "Figure 5 — effect of the backbone size", None
    if "stage" in table.columns and (table["stage"] == "RTA+PPR").any():
        secondary = (table[table["stage"] == "RTA"].astype({"parameters": float}), "stage 1 only")
        table = table[table["stage"] == "RTA+PPR"]
        title = "Figure 5 — effect of the backbone size (stage 1 + PPR)"
    points = table.drop_duplicates("parameters").sort_values("parameters")
    ticks = {float(row.parameters): f"{str(row.backbone).rsplit('/', 1)[-1]}\n({_param_label(row.parameters)}"
                                    f"{_valid_label(getattr(row, 'valid_share', None))})"
             for row in points.itertuples()}
    return _metric_lines(table.astype({"parameters": float}), "parameters", "backbone parameters (log scale)",
                         title, profile, out_dir, FIGURES["fig5"], ticks, 10, chance, secondary)


def train_log_file(profile: Any, root: Path | str, dataset: str) -> Path:
    """The main TIRR run's stage-1 log, as :func:`recrepro.rl.rta.train_log_path` (tested equal) names it:
    spelled here so that redrawing imports no training code."""
    return paths.stage_dir(profile, "rta", dataset, root) / "train_log.csv"


def sweep_csv(profile: Any, root: Path | str, name: str) -> Path:
    """This run's ``fig4_group_size.csv`` or ``fig5_backbone_size.csv`` (``recrepro.rl.sweeps.RESULT_STEMS``)."""
    return profile.results_dir(root) / f"{FIGURES[name]}.csv"


def figure3(profile: Any, root: Path | str = ".", dataset: str | None = None) -> tuple[plt.Figure, list[Path]]:
    """Figure 3 from the main TIRR run's log (``runs/<profile>/rta/<dataset>/train_log.csv``, notebook 04)."""

    dataset = dataset or (profile.sweeps.dataset or profile.data.datasets[0])
    path = train_log_file(profile, root, dataset)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no stage-1 TIRR training log; run notebook 04 (RTA) first")
    return plot_tool_usage(pd.read_csv(path), profile.run.name, profile.figures_dir(root))


def figures_4_and_5(profile: Any, root: Path | str, sweeps: dict[str, pd.DataFrame]) -> dict[str, tuple]:
    """Figures 4 and 5 from :func:`recrepro.stages.sweeps.run_sweeps`'s frames, chance lines included."""

    chance = chance_metrics(profile.data.n_candidates, profile.eval.ks)
    out_dir = profile.figures_dir(root)
    return {"fig4": plot_group_size(sweeps["group_size"], profile.run.name, out_dir, chance),
            "fig5": plot_backbone_size(sweeps["backbone"], profile.run.name, out_dir, chance)}


def _from_csv(name: str, plot: Callable[..., tuple]) -> Callable[[Any, Path | str], tuple]:
    def draw(profile: Any, root: Path | str) -> tuple:
        path = sweep_csv(profile, root, name)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no sweep table for {name}; run notebook 07 (the sweeps) first")
        chance = chance_metrics(profile.data.n_candidates, profile.eval.ks)
        return plot(pd.read_csv(path), profile.run.name, profile.figures_dir(root), chance)
    return draw


def table1_csv(profile: Any, root: Path | str) -> Path:
    """This run's Table 1 (``recrepro.tables``: ``<results>/table1.csv``)."""
    return profile.results_dir(root) / "table1.csv"


def read_table1(path: Path | str) -> pd.DataFrame:
    """Table 1 as saved; FileNotFoundError or ValueError naming the file (and the missing columns)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no Table 1; run notebooks 02-06 first")
    table = pd.read_csv(path)
    missing = [column for column in GLANCE_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(repr(c) for c in missing)}; Table 1 at a glance needs "
                         f"{', '.join(GLANCE_COLUMNS)} (and {GLANCE_METRIC}_lo / _hi for the intervals)")
    return table


def _stamp(table: pd.DataFrame, column: str, default: str) -> str:
    """The table's ``profile`` / ``run`` stamp (the first one given), else ``default``."""
    values = table[column].dropna().astype(str) if column in table.columns else pd.Series(dtype=str)
    return values.iloc[0] if len(values) else default


def glance_figures(table: pd.DataFrame, profile: str, run: str, out_dir: Path | str,
                   metric: str = GLANCE_METRIC) -> dict[str, tuple[plt.Figure, list[Path]]]:
    """One "Table 1 at a glance" per dataset with measured rows (table order), saved as
    ``table1_glance_<dataset>.png`` / ``.pdf`` under ``out_dir``; dataset -> (figure, files)."""
    datasets = list(dict.fromkeys(glance_rows(table, None, metric)["dataset"]))
    if not datasets:
        raise ValueError(f"no measured {metric} rows in Table 1 to draw")
    out = {}
    for dataset in datasets:
        fig = plot_table1_glance(table, dataset, profile, run, metric)
        stem = f"{FIGURES['table1_glance']}_{str(dataset).replace('/', '_')}"
        out[dataset] = (fig, save_figure(fig, out_dir, stem))
    return out


def table1_glance(profile: Any, root: Path | str = ".") -> dict[str, tuple[plt.Figure, list[Path]]]:
    """Table 1 at a glance from this run's ``table1.csv``, into the run's figures (notebook 07)."""
    path = table1_csv(profile, root)
    table = read_table1(path)
    try:
        return glance_figures(table, _stamp(table, "profile", profile.run.name),
                              _stamp(table, "run", profile.run.name), profile.figures_dir(root))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _all_glances(profile: Any, root: Path | str) -> tuple[list[plt.Figure], list[Path]]:
    drawn = table1_glance(profile, root).values()
    return [fig for fig, _ in drawn], [path for _, paths in drawn for path in paths]


DRAW = {"fig3": figure3, "fig4": _from_csv("fig4", plot_group_size), "fig5": _from_csv("fig5", plot_backbone_size),
        "table1_glance": _all_glances}


def redraw(profile: Any, root: Path | str = ".", only: Sequence[str] | None = None) -> dict[str, tuple]:
    """Figures 3-5 and Table 1 at a glance again from the saved training log, sweep CSVs and Table 1
    (seconds; nothing is retrained). Each value is (figure, files); Table 1 at a glance gives
    (list of figures, files), one figure per dataset.

    ``only`` (names of :data:`FIGURES`): just those, and a missing input is a FileNotFoundError naming
    the file. Without it every figure whose input exists is drawn, the others are named on stdout;
    an error if none can be drawn.
    """
    unknown = [name for name in only or () if name not in FIGURES]
    if unknown:
        raise ValueError(f"unknown figure {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    out, missing = {}, []
    for name in dict.fromkeys(only or FIGURES):
        try:
            out[name] = DRAW[name](profile, root)
        except FileNotFoundError as exc:
            if only:
                raise
            missing.append(str(exc))
            print(f"[figures] {name} not redrawn: {exc}")
    if not out:
        raise FileNotFoundError("no figure redrawn: " + "; ".join(missing))
    return out


def figure_names(text: str) -> list[str]:
    """``--only`` values: names of :data:`FIGURES`, comma- or space-separated."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FIGURES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown figure {text!r}; choose from {', '.join(FIGURES)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``python -m recrepro figures`` and ``python -m recrepro.stages.figures``."""
    parser.add_argument("--profile", default="smoke", help="profile name or path to a YAML file")
    parser.add_argument("--root", default=".", help="repository root (holds runs/, results/, figures/)")
    parser.add_argument("--only", nargs="+", type=figure_names, action="extend", metavar="FIG",
                        help=f"redraw just these figures ({', '.join(FIGURES)}); a missing input is then an error")
    return parser


def run_cli(args: argparse.Namespace) -> int:
    """Redraw, print one line per figure; 1 with the message when an input is missing or unusable."""
    only = [name for names in args.only for name in names] if args.only else None  # --only a,b c
    try:
        drawn = redraw(load_profile(args.profile), args.root, only)
    except (FileNotFoundError, ValueError) as exc:  # a missing input, or a table without the columns drawn
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, (figs, files) in drawn.items():
        for fig in figs if isinstance(figs, list) else [figs]:
            plt.close(fig)
        print(name, ", ".join(str(p) for p in files))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m recrepro.stages.figures --profile cpu [--only fig4]``: redraw the figures from the saved outputs."""
    parser = argparse.ArgumentParser(prog="python -m recrepro.stages.figures", description=main.__doc__)
    return run_cli(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
