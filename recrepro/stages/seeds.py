"""Seed repeat of the headline stage-1 comparison (issue 12 (a)), run outside the notebook chain.

``python -m recrepro.stages.seeds --profile cpu --seeds 1 2`` repeats, for each extra seed, everything the
comparison "trained TIRR against its own starting policy" depends on: data (negatives and user
subsample are seeded), SASRec, user profiles, the tiny model and its warm start, stage-1 RTA of the
TIRR variant, and the frozen and trained TIRR rows on the seed's own evaluated test lists. Each seed
lives in its own run folder (``runs/<profile>-seed<S>``; its tables under ``runs/seeds/``), so the
main run and its committed outputs are never touched. Seeds run side by side, ``run.jobs`` at a time,
one torch thread each.

The main run's seed (``run.seed``) is included when its per-instance files exist. The summary
``results/<profile>/seeds.csv`` and ``.md`` give, per seed, the paired comparison of N@10 and H@10
(:func:`recrepro.significance.compare_rows`: paired bootstrap and second test), then the mean and
sample standard deviation (ddof 1) over seeds of each row's mean and of the difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from recrepro import paths
from recrepro.config import Profile
from recrepro.evaluation import per_instance_path
from recrepro.io import write_text_atomic
from recrepro.jobs import Job, profile_file, run_jobs
from recrepro.overrides import load_cli_profile
from recrepro.progress import say
from recrepro.rl.rta import build_starting_model, run_variant
from recrepro.runner import run_chain
from recrepro.significance import compare_rows
from recrepro.stages.evaluate import run_zero_shot

OURS, BASELINE = "trained-TIRR-RTA", "frozen-TIRR"  # Table 2 names of issue 12 (a)
METRICS = ("H@10", "N@10")
LAST_SHARED_NOTEBOOK = 3  # 00-03: data, SASRec, profiles; stage 1 then runs for TIRR only
SUMMARY_COLUMNS = ["seed", "dataset", "metric", "ours", "baseline", "diff", "diff_lo", "diff_hi", "p_text",
                   "second_test", "second_p", "n"]


def seed_profile(profile: Profile, seed: int) -> Profile:
    """``profile`` with ``run.seed = seed`` and its own run name (so its own run folder and tables)."""
    run = dataclasses.replace(profile.run, seed=int(seed), name=f"{profile.run.name}-seed{seed}", jobs=1)
    return dataclasses.replace(profile, run=run)


def run_one_seed(profile: Profile, profile_path: Path, root: Path | str, log: Callable[[str], None] = print) -> None:
    """Chain 00-03, the seed's start model, stage-1 TIRR, and the frozen TIRR row, for one seed's profile
    (in this process). The start model (tiny build and warm start) is built explicitly, as notebook 04 does:
    ``run_variant`` only finds it."""
    run_chain(str(profile_path), root, stop=LAST_SHARED_NOTEBOOK, log=log)
    build_starting_model(profile, root)
    for dataset in profile.data.datasets:
        run_variant(profile, root, dataset, "tirr", log=log)
    run_zero_shot(profile, root, variants=("tirr",))


def run_seeds(profile: Profile, root: Path | str, seeds: Sequence[int], log: Callable[[str], None] = print
              ) -> None:
    """Every seed of ``seeds`` as one job (``python -m recrepro.stages.seeds --one``), ``run.jobs`` at a time."""
    root = Path(root).resolve()
    jobs = []
    for seed in seeds:
        one = seed_profile(profile, seed)
        jobs.append(Job(f"seed-{seed}", "recrepro.stages.seeds",
                        ("--one", "--profile", str(profile_file(one, root)), "--root", str(root))))
    run_jobs(jobs, profile.run.jobs, paths.jobs_dir(profile, root), cwd=root, log=log, say=say)


def seed_rows(profile: Profile, root: Path | str, seed: int) -> list[dict]:
    """The paired comparison rows of one seed (``[]`` when its per-instance files are missing)."""
    rows = []
    for dataset in profile.data.datasets:
        if not all(per_instance_path(profile, dataset, m, root).is_file() for m in (OURS, BASELINE)):
            continue
        for row in compare_rows(profile, root, dataset, OURS, BASELINE, list(METRICS)):
            rows.append({"seed": seed, **{k: row[k] for k in SUMMARY_COLUMNS if k != "seed"}})
    return rows


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample sd (ddof 1) over seeds of ours, baseline and diff, per dataset and metric."""
    grouped = frame.groupby(["dataset", "metric"], sort=True)
    out = grouped[["ours", "baseline", "diff"]].agg(["mean", "std"])
    out.columns = [f"{col}_{stat}" for col, stat in out.columns]
    out["seeds"] = grouped["seed"].nunique()
    out["diff_positive"] = grouped["diff_lo"].apply(lambda lo: int((lo > 0).sum()))
    return out.reset_index()


def render(frame: pd.DataFrame, summary: pd.DataFrame, profile_name: str) -> str:
    """Markdown: one line per seed and metric, then mean ± sd over seeds."""
    lines = [f"# Stage-1 RTA against its starting policy, over seeds ({OURS} vs {BASELINE})", "",
             f"Profile: **{profile_name}**. Each seed repeats data, SASRec, profiles, warm start and stage-1 TIRR "
             "training, and evaluates both rows on its own test lists (`python -m recrepro.stages.seeds`). Not a "
             "reproduction of the paper: tiny CPU models on ml-100k.", "",
             "| seed | dataset | metric | trained | frozen | diff [95% CI] | bootstrap p | second test p | n |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        lines.append(f"| {r['seed']} | {r['dataset']} | {r['metric']} | {r['ours']:.4f} | {r['baseline']:.4f} | "
                     f"{r['diff']:.4f} [{r['diff_lo']:.4f}, {r['diff_hi']:.4f}] | {r['p_text']} | "
                     f"{r['second_p']:.2g} ({r['second_test']}) | {int(r['n'])} |")
    lines += ["", "Mean ± sample sd over seeds:", "",
              "| dataset | metric | seeds | trained | frozen | diff | seeds with CI above 0 |", "|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        lines.append(f"| {r['dataset']} | {r['metric']} | {int(r['seeds'])} | {r['ours_mean']:.3f} ± {r['ours_std']:.3f} "
                     f"| {r['baseline_mean']:.3f} ± {r['baseline_std']:.3f} | {r['diff_mean']:.3f} ± {r['diff_std']:.3f} "
                     f"| {int(r['diff_positive'])} of {int(r['seeds'])} |")
    return "\n".join(lines) + "\n"


def summarize(profile: Profile, root: Path | str, seeds: Sequence[int]) -> pd.DataFrame:
    """Rows of the main seed (when present) and of ``seeds`` -> ``results/<profile>/seeds.csv``, ``.md``."""
    rows = seed_rows(profile, root, profile.run.seed)
    for seed in seeds:
        rows += seed_rows(seed_profile(profile, seed), root, seed)
    if not rows:
        raise FileNotFoundError(f"no seed has both {OURS!r} and {BASELINE!r} per-instance files under {root}")
    frame = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    summary = aggregate(frame)
    results = profile.results_dir(root)
    write_text_atomic(results / "seeds.csv", frame.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(results / "seeds.md", render(frame, summary, profile.run.name))
    return frame


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recrepro.stages.seeds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--root", default=".")
    parser.add_argument("--seeds", nargs="*", type=int, default=[], help="extra seeds beside run.seed")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="profile overrides")
    parser.add_argument("--one", action="store_true", help="run one seed's work (the profile is already seeded)")
    parser.add_argument("--summary-only", action="store_true", help="only (re)write seeds.csv and seeds.md")
    args = parser.parse_args(argv)
    profile = load_cli_profile(args.profile, args.set)  # a bad --set exits 2 with a message
    if args.one:
        run_one_seed(profile, Path(args.profile), args.root)
        return 0
    if not args.summary_only and args.seeds:
        run_seeds(profile, args.root, args.seeds)
    print(summarize(profile, args.root, args.seeds).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
