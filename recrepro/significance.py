"""Paired significance test of AgenticRec against the strongest measured baseline (Table 1).

The paper reports AgenticRec as best in 19 of 20 columns (PAPER.md 1.6) without saying how
significance was judged; ours is a two-sided paired bootstrap [G] (:func:`recrepro.metrics.
paired_bootstrap_pvalue`, ``eval.bootstrap_reps`` resamples, ``eval.bootstrap_seed``) over the test
instances both rows were scored on. The agent rows use a seeded subset of the test split
(``agent.eval_instances``) while classic baselines score the whole split, so the pairing joins the
saved per-instance files (``runs/<profile>/eval/<dataset>/<model>.parquet``) on ``sample_id``.

* ours: "AgenticRec (RTA+PPR)" when its per-instance file exists, else "AgenticRec (RTA)";
* baseline: the measured, non-AgenticRec Table 1 row with the highest N@10 on that dataset.

Written to ``results/<profile>/significance.csv`` and ``.md``. With the smoke profile the test says
whether one tiny CPU model beats another on a few dozen ml-100k instances; it reproduces nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recrepro.config import Profile
from recrepro.evaluation import load_per_instance, per_instance_path
from recrepro.io import write_text_atomic
from recrepro.metrics import metric_names, paired_bootstrap_pvalue

OURS_CANDIDATES = ("AgenticRec (RTA+PPR)", "AgenticRec (RTA)")  # preferred first
COLUMNS = ["dataset", "metric", "ours_model", "baseline_model", "ours", "baseline", "diff", "p_value", "n", "test"]


def describe_test(reps: int) -> str:
    return f"paired bootstrap, two-sided, {reps} resamples"


def paired_comparison(ours: pd.DataFrame, baseline: pd.DataFrame, metrics: list[str], reps: int,
                      seed: int) -> list[dict]:
    """One row per metric: means of both on the shared ``sample_id``s, their difference, p-value, n.

    Both frames are per-instance tables (``sample_id`` plus one column per metric).
    """
    for name, frame in (("ours", ours), ("baseline", baseline)):
        if frame["sample_id"].duplicated().any():
            raise ValueError(f"{name}: per-instance table repeats a sample_id; pairing needs unique ids")
        missing = [m for m in metrics if m not in frame.columns]
        if missing:
            raise ValueError(f"{name}: per-instance table lacks metric column(s) {missing}")
    joined = ours.merge(baseline, on="sample_id", suffixes=("_ours", "_base"))
    rows = []
    for metric in metrics:
        a = joined[f"{metric}_ours"].to_numpy(dtype=np.float64)
        b = joined[f"{metric}_base"].to_numpy(dtype=np.float64)
        mean_a = float(a.mean()) if len(a) else float("nan")
        mean_b = float(b.mean()) if len(b) else float("nan")
        rows.append({"metric": metric, "ours": mean_a, "baseline": mean_b, "diff": mean_a - mean_b,
                     "p_value": paired_bootstrap_pvalue(a, b, reps, seed), "n": len(joined),
                     "test": describe_test(reps)})
    return rows


def strongest_baseline(table1: pd.DataFrame, dataset: str, metric: str = "N@10") -> str | None:
    """The measured, non-AgenticRec row of ``dataset`` with the highest ``metric`` (first on ties)."""
    rows = table1[(table1["dataset"] == dataset) & (table1["source"] == "measured")
                  & ~table1["model"].astype(str).str.startswith("AgenticRec")]
    rows = rows.dropna(subset=[metric])
    if not len(rows):
        return None
    return str(rows.loc[rows[metric].idxmax(), "model"])


def ours_model(profile: Profile, root: Path | str, dataset: str) -> str | None:
    """AgenticRec after PPR if evaluated, else after RTA, else None."""
    for name in OURS_CANDIDATES:
        if per_instance_path(profile, dataset, name, root).is_file():
            return name
    return None


def _unavailable(dataset: str, ours: str | None, baseline: str | None, why: str) -> dict:
    return {"dataset": dataset, "metric": "", "ours_model": ours or "", "baseline_model": baseline or "",
            "ours": np.nan, "baseline": np.nan, "diff": np.nan, "p_value": np.nan, "n": 0, "test": f"not run: {why}"}


def dataset_significance(profile: Profile, root: Path | str, dataset: str, table1: pd.DataFrame) -> list[dict]:
    """The comparison rows of one dataset, or one row saying why the test could not run."""
    ours = ours_model(profile, root, dataset)
    baseline = strongest_baseline(table1, dataset)
    if ours is None:
        return [_unavailable(dataset, ours, baseline, "no AgenticRec per-instance file (run notebook 04)")]
    if baseline is None or not per_instance_path(profile, dataset, baseline, root).is_file():
        return [_unavailable(dataset, ours, baseline, "no measured baseline with a per-instance file")]
    rows = paired_comparison(load_per_instance(profile, dataset, ours, root),
                             load_per_instance(profile, dataset, baseline, root), metric_names(profile.eval.ks),
                             profile.eval.bootstrap_reps, profile.eval.bootstrap_seed)
    if rows and rows[0]["n"] == 0:
        return [_unavailable(dataset, ours, baseline, "the two rows share no test instance")]
    return [{"dataset": dataset, "ours_model": ours, "baseline_model": baseline, **row} for row in rows]


def render_markdown(frame: pd.DataFrame, profile_name: str) -> str:
    lines = ["# Paired significance: AgenticRec vs the strongest measured baseline", "",
             f"Profile: **{profile_name}**. Baseline = the measured non-AgenticRec Table 1 row with the highest "
             "N@10; both scored on the same test instances (joined on sample id). "
             + ("Smoke numbers: tiny CPU models on ml-100k, not a reproduction of the paper." if profile_name == "smoke"
                else ""), "",
             "| dataset | metric | ours | baseline | ours mean | baseline mean | diff | p-value | n | test |",
             "|" + "---|" * 10]
    for _, r in frame.iterrows():
        nums = [("–" if pd.isna(r[c]) else f"{r[c]:.4f}") for c in ("ours", "baseline", "diff", "p_value")]
        lines.append(f"| {r['dataset']} | {r['metric'] or '–'} | {r['ours_model'] or '–'} | "
                     f"{r['baseline_model'] or '–'} | " + " | ".join(nums) + f" | {int(r['n'])} | {r['test']} |")
    return "\n".join(lines) + "\n"


def run_significance(profile: Profile, root: Path | str = ".") -> pd.DataFrame:
    """Test every dataset of the profile; write ``significance.csv`` and ``.md``; return the table."""
    results = profile.results_dir(root)
    table1_path = results / "table1.csv"
    table1 = pd.read_csv(table1_path) if table1_path.is_file() else pd.DataFrame(
        columns=["dataset", "model", "source", "N@10"])
    rows = [r for dataset in profile.data.datasets for r in dataset_significance(profile, root, dataset, table1)]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    write_text_atomic(results / "significance.csv", frame.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(results / "significance.md", render_markdown(frame, profile.run.name))
    return frame
