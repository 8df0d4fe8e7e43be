"""Paired significance test of AgenticRec against the strongest measured baseline (Table 1).

The paper reports AgenticRec as best in 19 of 20 columns (PAPER.md 1.6) without saying how
significance was judged; ours is a two-sided paired bootstrap [G] over the test instances both rows
were scored on (joined on ``sample_id``: the agent rows use a subset), with exact McNemar or the
Wilcoxon signed-rank test beside it. Ours is "AgenticRec (RTA+PPR)", else "AgenticRec (RTA)"; the
baseline is the measured non-AgenticRec row with the highest N@10. Written to
``results/<profile>/significance.csv`` and ``.md``; :func:`run_comparisons` writes the ablation pairs
of :data:`COMPARISONS` to ``comparisons.csv`` and ``.md``. With the smoke profile it reproduces nothing.

Details (pairing, what each row carries, the comparisons): docs/internals.md, "significance.py".
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from recrepro.config import Profile
from recrepro.evaluation import FIRST_TEN, load_per_instance, per_instance_path
from recrepro.io import write_text_atomic
from recrepro.metrics import metric_names, paired_bootstrap_columns

OURS_CANDIDATES = ("AgenticRec (RTA+PPR)", "AgenticRec (RTA)")  # preferred first
STAT_COLUMNS = ["ours", "baseline", "diff", "diff_lo", "diff_hi", "p_value", "p_floor", "p_text", "second_test",
                "second_p", "n", "test"]
COLUMNS = ["dataset", "metric", "ours_model", "baseline_model", *STAT_COLUMNS]
COMPARISON_COLUMNS = ["dataset", "comparison", "ours_model", "baseline_model", "metric", *STAT_COLUMNS]
MCNEMAR = "exact McNemar"
WILCOXON = "Wilcoxon signed-rank"
# (label, ours, baseline) by Table 2 names (MostPop and First ten candidates as in Table 1).
COMPARISONS = (
    ("RTA vs its starting policy", "trained-TIRR-RTA", "frozen-TIRR"),
    ("tools vs reasoning only", "trained-TIRR-RTA", "trained-R"),
    ("PPR vs RTA", "trained-TIRR-RTA+PPR", "trained-TIRR-RTA"),
    ("trained R vs positions", "trained-R", FIRST_TEN),
    ("RTA vs positions", "trained-TIRR-RTA", FIRST_TEN),
    ("RTA+PPR vs positions", "trained-TIRR-RTA+PPR", FIRST_TEN),
    ("RTA vs MostPop", "trained-TIRR-RTA", "MostPop"),
    # The trained LLM baselines against their start (S-DPO, ReRe) or their text-only twin (LLaRA)
    ("S-DPO vs its SFT start", "S-DPO", "TALLRec-like (SFT)"),
    ("ReRe vs its SFT start", "ReRe", "TALLRec-like (SFT)"),
    ("LLaRA vs text-only SFT", "LLaRA", "TALLRec-like (SFT)"),
)


def describe_test(reps: int) -> str:
    return f"paired bootstrap, two-sided, {reps} resamples"


def format_p(p: float) -> str:
    """A p-value for tables: four decimals, or two significant digits below 0.0001."""
    if p != p:
        return "–"
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def floor_bound(reps: int) -> float:
    """The one-significant-digit bound printed for a p-value at the floor: the smallest d x 10^e >= 1/reps.

    A p-value at the floor is 1/(reps+1) < 1/reps <= this bound, so "< bound" is true: 1,000
    resamples give "< 0.001", 10,000 give "< 0.0001", 999 give "< 0.002".
    """
    target = 1.0 / reps
    scale = 10.0 ** math.floor(math.log10(target))
    return math.ceil(target / scale - 1e-9) * scale


def bootstrap_p_text(p: float, at_floor: bool, reps: int) -> str:
    """``"< 0.001 (1,000 resamples)"`` when no resample was as extreme (the test's resolution), else
    :func:`format_p`."""
    return f"< {floor_bound(reps):g} ({reps:,} resamples)" if at_floor else format_p(p)


def is_binary(values: np.ndarray) -> bool:
    return bool(np.isin(values, (0.0, 1.0)).all())


def mcnemar_exact(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes: a binomial test on the discordant pairs."""
    ours_only = int(np.sum((a == 1) & (b == 0)))
    base_only = int(np.sum((a == 0) & (b == 1)))
    if ours_only + base_only == 0:
        return 1.0
    return float(stats.binomtest(ours_only, ours_only + base_only, 0.5).pvalue)


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value; zero differences are dropped (scipy's "wilcox")."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if not np.any(diff != 0):
        return 1.0  # identical rows: no evidence of a difference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns on tiny samples; the p-value stands
        return float(stats.wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)


def second_test(a: np.ndarray, b: np.ndarray) -> tuple[str, float]:
    """Exact McNemar when both rows are 0/1 per instance, else Wilcoxon signed-rank: (name, p)."""
    if is_binary(a) and is_binary(b):
        return MCNEMAR, mcnemar_exact(a, b)
    return WILCOXON, wilcoxon_p(a, b)


def paired_comparison(ours: pd.DataFrame, baseline: pd.DataFrame, metrics: list[str], reps: int,
                      seed: int) -> list[dict]:
    """One row per metric on the shared ``sample_id``s (columns :data:`STAT_COLUMNS` plus ``metric``).

    Both frames are per-instance tables (``sample_id`` plus one column per metric). All metrics use
    the same resampled instance sets.
    """
    for name, frame in (("ours", ours), ("baseline", baseline)):
        if frame["sample_id"].duplicated().any():
            raise ValueError(f"{name}: per-instance table repeats a sample_id; pairing needs unique ids")
        missing = [m for m in metrics if m not in frame.columns]
        if missing:
            raise ValueError(f"{name}: per-instance table lacks metric column(s) {missing}")
    joined = ours.merge(baseline, on="sample_id", suffixes=("_ours", "_base"))
    a_all = joined[[f"{m}_ours" for m in metrics]].to_numpy(dtype=np.float64)
    b_all = joined[[f"{m}_base" for m in metrics]].to_numpy(dtype=np.float64)
    boots = paired_bootstrap_columns(a_all - b_all, reps, seed)
    rows = []
    for j, (metric, boot) in enumerate(zip(metrics, boots)):
        a, b = a_all[:, j], b_all[:, j]
        mean_a = float(a.mean()) if len(a) else float("nan")
        mean_b = float(b.mean()) if len(b) else float("nan")
        test, p2 = second_test(a, b) if len(a) else ("", float("nan"))
        rows.append({"metric": metric, "ours": mean_a, "baseline": mean_b, "diff": mean_a - mean_b,
                     "diff_lo": boot.lo, "diff_hi": boot.hi, "p_value": boot.p_value, "p_floor": boot.p_floor,
                     "p_text": bootstrap_p_text(boot.p_value, boot.at_floor, reps) if len(a) else "–",
                     "second_test": test, "second_p": p2, "n": len(joined), "test": describe_test(reps)})
    return rows


def compare_rows(profile: Profile, root: Path | str, dataset: str, ours: str, baseline: str,
                 metrics: list[str] | None = None) -> list[dict]:
    """Paired comparison of two saved rows of ``dataset`` (per-instance files, joined on sample id).

    ``metrics`` defaults to the profile's table columns; resamples and seed come from ``eval``.
    Raises FileNotFoundError when either per-instance file is missing.
    """
    for model in (ours, baseline):
        path = per_instance_path(profile, dataset, model, root)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no per-instance file for {model!r} on {dataset}")
    rows = paired_comparison(load_per_instance(profile, dataset, ours, root),
                             load_per_instance(profile, dataset, baseline, root),
                             list(metrics or metric_names(profile.eval.ks)), profile.eval.bootstrap_reps,
                             profile.eval.bootstrap_seed)
    return [{"dataset": dataset, "ours_model": ours, "baseline_model": baseline, **row} for row in rows]


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
    empty = {c: np.nan for c in STAT_COLUMNS} | {"p_text": "–", "second_test": "", "n": 0, "test": f"not run: {why}"}
    return {"dataset": dataset, "metric": "", "ours_model": ours or "", "baseline_model": baseline or "", **empty}


def dataset_significance(profile: Profile, root: Path | str, dataset: str, table1: pd.DataFrame) -> list[dict]:
    """The comparison rows of one dataset, or one row saying why the test could not run."""
    ours = ours_model(profile, root, dataset)
    baseline = strongest_baseline(table1, dataset)
    if ours is None:
        return [_unavailable(dataset, ours, baseline, "no AgenticRec per-instance file (run notebook 04)")]
    if baseline is None or not per_instance_path(profile, dataset, baseline, root).is_file():
        return [_unavailable(dataset, ours, baseline, "no measured baseline with a per-instance file")]
    rows = compare_rows(profile, root, dataset, ours, baseline)
    if rows and rows[0]["n"] == 0:
        return [_unavailable(dataset, ours, baseline, "the two rows share no test instance")]
    return rows


def _num(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:.4f}"


def _stat_cells(r: pd.Series) -> list[str]:
    """Cells shared by both reports: means, difference [95% interval], bootstrap p, second test p, n."""
    interval = "" if pd.isna(r["diff_lo"]) else f" [{r['diff_lo']:.4f}, {r['diff_hi']:.4f}]"
    second = f"{format_p(r['second_p'])} ({r['second_test']})" if r["second_test"] else "–"
    return [_num(r["ours"]), _num(r["baseline"]), _num(r["diff"]) + interval, str(r["p_text"]), second,
            str(int(r["n"]))]


STAT_HEADER = "ours mean | baseline mean | diff [95% CI] | bootstrap p | second test p | n"


def render_markdown(frame: pd.DataFrame, profile_name: str) -> str:
    lines = ["# Paired significance: AgenticRec vs the strongest measured baseline", "",
             f"Profile: **{profile_name}**. Baseline = the measured non-AgenticRec Table 1 row with the highest "
             "N@10; both scored on the same test instances (joined on sample id). "
             + ("Smoke numbers: tiny CPU models on ml-100k, not a reproduction of the paper." if profile_name == "smoke"
                else ""), "", P_NOTE, "",
             f"| dataset | metric | ours | baseline | {STAT_HEADER} | test |",
             "|" + "---|" * 12]
    for _, r in frame.iterrows():
        lines.append(f"| {r['dataset']} | {r['metric'] or '–'} | {r['ours_model'] or '–'} | "
                     f"{r['baseline_model'] or '–'} | " + " | ".join(_stat_cells(r)) + f" | {r['test']} |")
    return "\n".join(lines) + "\n"


P_NOTE = ("Bootstrap p: two-sided paired bootstrap, (resamples as extreme + 1) / (resamples + 1); \"< x\" means no "
          "resample was as extreme, so p is below the test's resolution. Second test: exact McNemar on 0/1 rows "
          "(hit metrics), Wilcoxon signed-rank otherwise (NDCG, expected hits of tied scores).")


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


def dataset_comparisons(profile: Profile, root: Path | str, dataset: str,
                        pairs: tuple[tuple[str, str, str], ...] = COMPARISONS) -> tuple[list[dict], list[str]]:
    """Rows of every pair of ``pairs`` whose two per-instance files exist; and the labels left out."""
    rows, skipped = [], []
    for label, ours, baseline in pairs:
        if not all(per_instance_path(profile, dataset, m, root).is_file() for m in (ours, baseline)):
            skipped.append(f"{label} ({ours} vs {baseline})")
            continue
        rows += [{"comparison": label, **row} for row in compare_rows(profile, root, dataset, ours, baseline)]
    return rows, skipped


def render_comparisons(frame: pd.DataFrame, profile_name: str, skipped: dict[str, list[str]],
                       title: str = "Paired comparisons of the ablation rows") -> str:
    """Markdown of :func:`run_comparisons`: one table per dataset, then the pairs that could not run."""
    lines = [f"# {title}", "",
             f"Profile: **{profile_name}**. Each pair is scored on the test instances both rows share (joined on "
             "sample id); \"positions\" is the First ten candidates reference row."
             + (" Smoke numbers: tiny CPU models on ml-100k, not a reproduction of the paper."
                if profile_name == "smoke" else ""), "", P_NOTE, ""]
    for dataset in dict.fromkeys(list(frame["dataset"]) + list(skipped)):
        part = frame[frame["dataset"] == dataset]
        lines += [f"## {dataset}", ""]
        if len(part):
            lines += [f"| comparison | ours | baseline | metric | {STAT_HEADER} |", "|" + "---|" * 10]
            for _, r in part.iterrows():
                lines.append(f"| {r['comparison']} | {r['ours_model']} | {r['baseline_model']} | {r['metric']} | "
                             + " | ".join(_stat_cells(r)) + " |")
            lines.append("")
        if skipped.get(dataset):
            lines += ["Not compared (a per-instance file is missing): " + "; ".join(skipped[dataset]) + ".", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def run_comparisons(profile: Profile, root: Path | str = ".") -> pd.DataFrame:
    """The :data:`COMPARISONS` of every dataset -> ``comparisons.csv`` and ``.md``; returns the table."""
    rows, skipped = [], {}
    for dataset in profile.data.datasets:
        found, skipped[dataset] = dataset_comparisons(profile, root, dataset)
        rows += found
    frame = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    results = profile.results_dir(root)
    write_text_atomic(results / "comparisons.csv", frame.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(results / "comparisons.md", render_comparisons(frame, profile.run.name, skipped))
    return frame
