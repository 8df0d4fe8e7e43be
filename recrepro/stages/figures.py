"""Figures 3, 4 and 5 of the paper, drawn from the kit's own logs and sweep tables.

Each function takes plain tables (pandas) and writes ``<stem>.png`` and ``<stem>.pdf`` under
``figures/<profile>/``, with the profile named in the title so a smoke figure can never pass for a
reproduction. The layouts follow PAPER.md 1.6:

* Figure 3 (stage-1 training): (a) mean tool calls per trajectory and the share of positively
  rewarded trajectories that called a tool, over steps; (b) H@10 on the validation slice over steps.
* Figure 4: H@K and N@K against the group size G.
* Figure 5: H@K and N@K against the backbone size (parameter count).

Figures 4 and 5 take the sweep CSVs of :mod:`recrepro.rl.sweeps` as they are (long format); dashed
lines are the analytic chance levels (:func:`recrepro.metrics.chance_metrics`). At smoke size the
figures show the machinery, never the paper's trends.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: papermill and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from recrepro.config import load_profile
from recrepro.metrics import chance_metrics
from recrepro.rl.rta import train_log_path
from recrepro.rl.rta_log import read_train_log

METRICS = ["H@1", "H@5", "H@10", "N@5", "N@10"]
CHANCE_N10 = chance_metrics(20, [10])["N@10"]  # PAPER.md 1.1: 20 candidates, one positive


def _save(fig: plt.Figure, out_dir: Path | str, stem: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if path.suffix == ".pdf" else None)
    return paths


def plot_tool_usage(log: pd.DataFrame, profile: str, out_dir: Path | str,
                    tool_calls: str = "tool_calls_mean", positive_with_tool: str = "positive_with_tool_share",
                    hit10: str = "val_H@10") -> tuple[plt.Figure, list[Path]]:
    """Figure 3 from the stage-1 training log (one row per logging step, column ``step``)."""
    sns.set_theme(style="whitegrid", context="paper")
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = log.dropna(subset=[tool_calls])
    ax_a.plot(steps["step"], steps[tool_calls], marker="o", color="tab:blue", label="tool calls per trajectory")
    ax_a.set(xlabel="training step", ylabel="mean tool calls per trajectory")
    ax_a.set_ylim(bottom=0)
    ax_a.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    twin = ax_a.twinx()
    twin.grid(False)  # one grid (the left axis's) is enough
    twin.plot(steps["step"], 100 * steps[positive_with_tool], marker="s", color="tab:orange",
              label="positive trajectories with a tool call")
    twin.set(ylabel="% of positively rewarded trajectories", ylim=(0, 105))
    lines = ax_a.get_lines() + twin.get_lines()
    ax_a.legend(lines, [line.get_label() for line in lines], loc="lower right", fontsize=8)
    ax_a.set_title("(a) tool usage during stage-1 training")
    evals = log.dropna(subset=[hit10])
    for column, color, chance in ((hit10, "tab:green", 0.5), ("val_N@10", "tab:purple", CHANCE_N10)):
        if column not in evals or evals[column].isna().all():
            continue
        metric = column.removeprefix("val_")
        ax_b.plot(evals["step"], evals[column], marker="o", color=color, label=f"{metric} (validation slice)")
        if f"{column}_lo" in evals and evals[f"{column}_lo"].notna().any():  # logs before the interval had none
            ax_b.fill_between(evals["step"], evals[f"{column}_lo"], evals[f"{column}_hi"], color=color, alpha=0.15,
                              label=f"{metric} 95% bootstrap interval")
        ax_b.axhline(chance, color=color, ls="--", lw=1, alpha=0.6, label=f"{metric} chance ({chance:.3f})")
    ax_b.set(xlabel="training step", ylabel="validation metric", ylim=(0, 1), title="(b) H@10 and N@10 over training steps")
    ax_b.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_b.legend(fontsize=8)
    fig.suptitle(f"Figure 3 — stage-1 (RTA) training, {profile} profile", fontsize=11)
    fig.tight_layout()
    return fig, _save(fig, out_dir, "fig3_tool_usage")


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
    """Two panels (HitRate@K, NDCG@K) of metric-vs-``x`` lines, chance levels dashed in the same colour.

    ``secondary`` = (table, label): the same metrics drawn dotted in the same colours (e.g. stage 1
    beside stage 1 + PPR).
    """
    sns.set_theme(style="whitegrid", context="paper")
    long = _long_metrics(table, x)
    other = _long_metrics(secondary[0], x) if secondary is not None else None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    for ax, family in zip(axes, ("HitRate@K", "NDCG@K")):
        part = long[long["family"] == family]
        for i, (metric, rows) in enumerate(part.groupby("metric", sort=False)):
            rows = rows.sort_values(x)
            colour = f"C{i}"
            ax.plot(rows[x], rows["value"], marker="o", color=colour, label=metric)
            if {"lo", "hi"} <= set(rows.columns) and rows[["lo", "hi"]].notna().all().all():
                # the 95% bootstrap interval of each point (the sweep CSVs' lo / hi columns)
                ax.errorbar(rows[x], rows["value"], yerr=[rows["value"] - rows["lo"], rows["hi"] - rows["value"]],
                            fmt="none", ecolor=colour, elinewidth=1, capsize=3)
            if other is not None:
                dotted = other[other["metric"] == metric].sort_values(x)
                ax.plot(dotted[x], dotted["value"], marker=".", ls=":", color=colour, alpha=0.8)
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
        ax.set(xlabel=xlabel, ylabel=f"{family} (test subset; bars: 95% interval)", ylim=(0, 1), title=family)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"{title}, {profile} profile", fontsize=11)
    fig.tight_layout()
    return fig, _save(fig, out_dir, stem)


def plot_group_size(table: pd.DataFrame, profile: str, out_dir: Path | str,
                    chance: dict[str, float] | None = None) -> tuple[plt.Figure, list[Path]]:
    """Figure 4: test metrics against the group size G (column ``group_size``; long or wide table)."""
    sizes = sorted(int(g) for g in table["group_size"].unique())
    return _metric_lines(table, "group_size", "group size G (rollouts per instance, log scale)",
                         "Figure 4 — effect of the group size G", profile, out_dir, "fig4_group_size",
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
                         title, profile, out_dir, "fig5_backbone_size", ticks, 10, chance, secondary)


def figure3(profile: Any, root: Path | str = ".", dataset: str | None = None) -> tuple[plt.Figure, list[Path]]:
    """Figure 3 from the main TIRR run's log (``runs/<profile>/rta/<dataset>/train_log.csv``, notebook 04)."""

    dataset = dataset or (profile.sweeps.dataset or profile.data.datasets[0])
    path = train_log_path(profile, root, dataset, "tirr")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no stage-1 TIRR training log; run notebook 04 (RTA) first")
    return plot_tool_usage(read_train_log(path), profile.run.name, profile.figures_dir(root))


def figures_4_and_5(profile: Any, root: Path | str, sweeps: dict[str, pd.DataFrame]) -> dict[str, tuple]:
    """Figures 4 and 5 from :func:`recrepro.stages.sweeps.run_sweeps`'s frames, chance lines included."""

    chance = chance_metrics(profile.data.n_candidates, profile.eval.ks)
    out_dir = profile.figures_dir(root)
    return {"fig4": plot_group_size(sweeps["group_size"], profile.run.name, out_dir, chance),
            "fig5": plot_backbone_size(sweeps["backbone"], profile.run.name, out_dir, chance)}


def redraw(profile: Any, root: Path | str = ".") -> dict[str, tuple]:
    """Figures 3-5 again from the saved training log and sweep CSVs (seconds; nothing is retrained)."""
    results = profile.results_dir(root)
    sweeps = {name: pd.read_csv(results / f"{stem}.csv") for name, stem in
              (("group_size", "fig4_group_size"), ("backbone", "fig5_backbone_size")) if (results / f"{stem}.csv").is_file()}
    out = {}
    if len(sweeps) == 2:
        out.update(figures_4_and_5(profile, root, sweeps))
    try:
        out["fig3"] = figure3(profile, root)
    except FileNotFoundError as exc:
        print(f"[figures] Figure 3 not redrawn: {exc}")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m recrepro.stages.figures --profile cpu``: redraw the figures from the saved outputs."""
    parser = argparse.ArgumentParser(prog="python -m recrepro.stages.figures", description=main.__doc__)
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--root", default=".")
    args = parser.parse_args(argv)
    drawn = redraw(load_profile(args.profile), args.root)
    for name, (fig, paths) in drawn.items():
        plt.close(fig)
        print(name, ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
