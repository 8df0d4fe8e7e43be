"""Figures 3, 4 and 5 of the paper, drawn from the kit's own logs and sweep tables.

Each function takes plain tables (pandas) and writes ``<stem>.png`` and ``<stem>.pdf`` under
``figures/<profile>/``, with the profile named in the title so a smoke figure can never pass for a
reproduction. The layouts follow PAPER.md 1.6:

* Figure 3 (stage-1 training): (a) mean tool calls per trajectory and the share of positively
  rewarded trajectories that called a tool, over steps; (b) H@10 on the validation slice over steps.
* Figure 4: H@K and N@K against the group size G.
* Figure 5: H@K and N@K against the backbone size.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: papermill and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

METRICS = ["H@1", "H@5", "H@10", "N@5", "N@10"]


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
    twin = ax_a.twinx()
    twin.plot(steps["step"], 100 * steps[positive_with_tool], marker="s", color="tab:orange",
              label="positive trajectories with a tool call")
    twin.set(ylabel="% of positively rewarded trajectories", ylim=(0, 105))
    lines = ax_a.get_lines() + twin.get_lines()
    ax_a.legend(lines, [line.get_label() for line in lines], loc="lower right", fontsize=8)
    ax_a.set_title("(a) tool usage during stage-1 training")
    evals = log.dropna(subset=[hit10])
    ax_b.plot(evals["step"], evals[hit10], marker="o", color="tab:green", label="H@10 (validation slice)")
    ax_b.axhline(0.5, color="grey", ls="--", lw=1, label="chance (0.5)")
    ax_b.set(xlabel="training step", ylabel="HitRate@10", ylim=(0, 1), title="(b) H@10 over training steps")
    ax_b.legend(fontsize=8)
    fig.suptitle(f"Figure 3 — stage-1 (RTA) training, {profile} profile", fontsize=11)
    fig.tight_layout()
    return fig, _save(fig, out_dir, "fig3_tool_usage")


def _metric_lines(table: pd.DataFrame, x: str, xlabel: str, title: str, profile: str, out_dir: Path | str,
                  stem: str, order: list | None = None) -> tuple[plt.Figure, list[Path]]:
    sns.set_theme(style="whitegrid", context="paper")
    long = table.melt(id_vars=[x], value_vars=[m for m in METRICS if m in table.columns],
                      var_name="metric", value_name="value")
    long["family"] = long["metric"].str[0].map({"H": "HitRate@K", "N": "NDCG@K"})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    positions = {value: i for i, value in enumerate(order or list(dict.fromkeys(table[x])))}
    for ax, family in zip(axes, ("HitRate@K", "NDCG@K")):
        part = long[long["family"] == family]
        for metric, rows in part.groupby("metric", sort=False):
            ax.plot(rows[x].map(positions), rows["value"], marker="o", label=metric)
        ax.set_xticks(list(positions.values()), [str(v) for v in positions])
        ax.set(xlabel=xlabel, ylabel=family, title=family)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}, {profile} profile", fontsize=11)
    fig.tight_layout()
    return fig, _save(fig, out_dir, stem)


def plot_group_size(table: pd.DataFrame, profile: str, out_dir: Path | str) -> tuple[plt.Figure, list[Path]]:
    """Figure 4: one row per group size (column ``group_size``) with the test metrics."""
    table = table.sort_values("group_size")
    return _metric_lines(table, "group_size", "group size G (rollouts per instance)",
                         "Figure 4 — effect of the group size G", profile, out_dir, "fig4_group_size")


def plot_backbone_size(table: pd.DataFrame, profile: str, out_dir: Path | str) -> tuple[plt.Figure, list[Path]]:
    """Figure 5: one row per backbone (columns ``backbone``, ``parameters``) with the test metrics."""
    table = table.sort_values("parameters")
    labelled = table.assign(backbone=[f"{b}\n({p / 1e6:.2f}M)" if p < 1e8 else f"{b}\n({p / 1e9:.1f}B)"
                                      for b, p in zip(table["backbone"], table["parameters"])])
    return _metric_lines(labelled, "backbone", "backbone (parameters)", "Figure 5 — effect of the backbone size",
                         profile, out_dir, "fig5_backbone_size", order=list(labelled["backbone"]))
