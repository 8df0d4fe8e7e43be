"""Notebook 05, stage 2 (PPR): mine, train and measure every round; ``python -m recrepro.stages.ppr``.

See :mod:`recrepro.rl.ppr` for the recipe and the GPU commands.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from recrepro import paths
from recrepro.config import Profile
from recrepro.io import write_text_atomic
from recrepro.jobs import Job, profile_file, run_jobs
from recrepro.overrides import load_cli_profile
from recrepro.progress import Progress, say, stage_entry
from recrepro.rl import grpo
from recrepro.rl.pairs import accuracy_table, read_pairs
from recrepro.rl.ppr import mine_stage, ppr_dir, run_dataset, train_stage


def train_rounds_apart(profile: Profile, root: Path | str, dataset: str, force: bool = False,
                       log: Callable[[str], None] = print) -> None:
    """Mine every round here and train it in a process of its own (``--stage train``), as stage 1 does with
    colocated vLLM: TRL's engine is not freed when training ends, so no evaluation engine could start
    beside it. :func:`run_dataset` then finds the pairs and the trained policies and only measures and
    evaluates. A round without training pairs is left to :func:`run_dataset`, which carries its policy
    forward."""
    if force:
        shutil.rmtree(ppr_dir(profile, root, dataset), ignore_errors=True)
    settings = profile_file(profile, root)
    for k in range(1, profile.ppr.rounds + 1):
        pairs, _ = read_pairs(mine_stage(profile, root, dataset, k, log=log))
        if pairs["train"].empty:
            return
        job = Job(f"ppr-{dataset}-round{k}", "recrepro.stages.ppr",
                  ("--profile", str(settings), "--root", str(Path(root).resolve()), "--dataset", dataset,
                   "--stage", "train", "--round", str(k)))
        run_jobs([job], 1, paths.jobs_dir(profile, root), cwd=root, log=log, say=say)


@stage_entry
def run_ppr(profile: Profile, root: Path | str = ".", force: bool = False,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Stage 2 on every dataset. Returns ``{"runs": {dataset: result}, "accuracy": frame, "mining": frame,
    "table1": frame, "table2": frame}``; the accuracy frame (ours before/after beside the paper) is
    also written to ``results/<profile>/preference_accuracy.csv``."""
    runs = {}
    with Progress("ppr", len(profile.data.datasets), unit="dataset") as bar:
        for dataset in profile.data.datasets:
            if grpo.vllm_colocate_available(profile):
                train_rounds_apart(profile, root, dataset, force=force, log=log)
                force = False  # done above: run_dataset must not delete the rounds just trained
            runs[dataset] = run_dataset(profile, root, dataset, force=force, log=log)
            bar.update(1, note=f"{dataset} {'up to date' if runs[dataset].get('skipped') else 'done'}")
    accuracy = pd.concat([accuracy_table(d, r["accuracy"]["before"], r["accuracy"]["after"], profile.run.name,
                                         r["accuracy"].get("random"), r["accuracy"].get("tests"))
                          for d, r in runs.items()], ignore_index=True)
    results_dir = profile.results_dir(root)
    write_text_atomic(results_dir / "preference_accuracy.csv", accuracy.to_csv(index=False, float_format="%.4f"))
    mining = pd.DataFrame([{"dataset": d, "round": rd["round"], "split": split, **stats}
                           for d, r in runs.items() for rd in r["rounds"] for split, stats in rd["mining"].items()])
    tables = {stem: pd.read_csv(results_dir / f"{stem}.csv") for stem in ("table1", "table2")
              if (results_dir / f"{stem}.csv").is_file()}
    return {"runs": runs, "accuracy": accuracy, "mining": mining, **tables}


def main(argv: Sequence[str] | None = None) -> int:
    import argparse


    parser = argparse.ArgumentParser(prog="python -m recrepro.stages.ppr", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--root", default=".")
    parser.add_argument("--stage", default="all", choices=["all", "mine", "train"],
                        help="all: the whole stage on one process; mine: round K's pairs (one process); "
                             "train: round K's GRPO on its pairs (run it under accelerate launch)")
    parser.add_argument("--round", type=int, default=1, help="the round of --stage mine / train (1..ppr.rounds)")
    parser.add_argument("--dataset", action="append", help="--stage mine / train: only these datasets (repeatable)")
    parser.add_argument("--force", action="store_true", help="re-mine and retrain even when the stamp is unchanged")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="profile overrides")
    args = parser.parse_args(argv)
    profile = load_cli_profile(args.profile, args.set)  # a bad --set exits 2 with a message
    if args.stage != "train" and grpo.n_processes() > 1:
        raise SystemExit(f"--stage {args.stage} runs on one process; under accelerate launch use --stage train")
    if args.stage == "all":
        if args.dataset:
            raise SystemExit("--dataset selects datasets for --stage mine / train; --stage all runs every dataset")
        result = run_ppr(profile, args.root, force=args.force)
        print(result["accuracy"].to_string(index=False))
        return 0
    for dataset in args.dataset or profile.data.datasets:
        if args.stage == "mine":
            print(f"[ppr] {dataset} round {args.round}: pairs in {mine_stage(profile, args.root, dataset, args.round)}")
        else:
            trained = train_stage(profile, args.root, dataset, args.round)
            print(f"[ppr] {dataset} round {args.round}: policy in {trained['final']}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
