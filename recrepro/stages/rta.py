"""Notebook 04, stage 1 (RTA): train, evaluate and tabulate R and TIRR; ``python -m recrepro.stages.rta``.

CLI: ``--stage train`` runs only the RL (under ``accelerate launch`` on GPUs), ``--stage eval`` the test rows of a
trained policy, ``--stage all`` both (one process). See :mod:`recrepro.rl.rta` for the stage's recipe.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from recrepro import paths
from recrepro.config import Profile
from recrepro.jobs import Job, profile_file, run_jobs
from recrepro.overrides import load_cli_profile
from recrepro.progress import Progress, say, stage_entry
from recrepro.rl.grpo import finished_policy, n_processes, on_cpu, vllm_colocate_available
from recrepro.rl.rta import (VARIANTS, build_starting_model, check_variant, config_stamp, evaluate_policy,
                             prepare_setup, run_variant, train_policy, variant_dir, write_rows)

def train_side_by_side(profile: Profile, root: Path | str, variants: Sequence[str], model_path: Path,
                       force: bool = False, log: Callable[[str], None] = print, min_jobs: int = 2) -> None:
    """Train the (dataset, variant) policies that are not finished as jobs, ``run.jobs`` at a time.

    Each job is ``python -m recrepro.stages.rta --stage train``, so it only saves its final policy with
    its stamp; :func:`run_variant` then finds it, evaluates and writes the rows in this process.
    ``model_path`` is the starting model, built before (:func:`build_starting_model`) so that no two jobs
    build it at once. Fewer than ``min_jobs`` policies to train are left to :func:`run_variant` (in this process).
    """
    todo = [(d, v) for d in profile.data.datasets for v in variants
            if force or not finished_policy(variant_dir(profile, root, d, v) / "final",
                                            config_stamp(profile, v, model_path, d))]
    if len(todo) < min_jobs:
        return
    settings = profile_file(profile, root)
    jobs = [Job(f"rta-{d}-{v}", "recrepro.stages.rta",
                ("--profile", str(settings), "--root", str(Path(root).resolve()), "--dataset", d, "--variant", v,
                 "--stage", "train", *(("--force",) if force else ()))) for d, v in todo]
    run_jobs(jobs, profile.run.jobs, paths.jobs_dir(profile, root), cwd=root, log=log, say=say)


def _variants(variant: str) -> tuple[str, ...]:
    variants = VARIANTS if variant == "both" else (variant,)
    for v in variants:
        check_variant(v)
    return variants


@stage_entry
def run_rta(profile: Profile, root: Path | str = ".", variant: str = "tirr", force: bool = False,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Stage 1 for ``variant`` ("tirr", "r" or "both") on every dataset: train, save, evaluate, write rows.

    Returns ``{"runs": {"<dataset>/<variant>": result}, "table1": frame, "table2": frame}``; a result
    holds the final policy folder, the training log (a frame), its summary, the table rows and
    whether the work was skipped (outputs present, config unchanged).
    """
    model_path = build_starting_model(profile, root)
    if vllm_colocate_available(profile):
        # TRL's colocated vLLM engine is not freed when training ends; a second engine for evaluation in the
        # same process would not fit beside it. Every policy is trained in a process of its own instead.
        train_side_by_side(profile, root, _variants(variant), model_path, force=force, log=log, min_jobs=1)
    elif profile.run.jobs > 1 and on_cpu(profile):
        train_side_by_side(profile, root, _variants(variant), model_path, force=force, log=log)
    todo = [(dataset, v) for dataset in profile.data.datasets for v in _variants(variant)]
    runs = {}
    with Progress("rta", len(todo), unit="policy") as bar:
        for dataset, v in todo:
            runs[f"{dataset}/{v}"] = run_variant(profile, root, dataset, v, force=force, log=log)
            bar.update(1, note=f"{dataset}/{v} {'up to date' if runs[f'{dataset}/{v}'].get('skipped') else 'done'}")
    results_dir = profile.results_dir(root)
    tables = {stem: pd.read_csv(results_dir / f"{stem}.csv") for stem in ("table1", "table2")
              if (results_dir / f"{stem}.csv").is_file()}
    return {"runs": runs, **tables}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recrepro.stages.rta", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--root", default=".")
    parser.add_argument("--variant", default="tirr", choices=[*VARIANTS, "both"])
    parser.add_argument("--dataset", action="append", help="train/evaluate only these datasets (repeatable)")
    parser.add_argument("--stage", default="all", choices=["all", "train", "eval"],
                        help="train: RL only (run it under accelerate launch); eval: test rows of a trained policy")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="profile overrides")
    args = parser.parse_args(argv)
    profile = load_cli_profile(args.profile, args.set)  # a bad --set exits 2 with a message
    if args.stage == "all" and n_processes() > 1:
        raise SystemExit("--stage all evaluates on one process; under accelerate launch use --stage train, "
                         "then --stage eval without the launcher")
    if args.stage != "eval" and n_processes() == 1:  # a launched run finds it built (every process would build)
        build_starting_model(profile, args.root)
    for dataset in args.dataset or profile.data.datasets:
        for variant in _variants(args.variant):
            if args.stage == "all":
                run_variant(profile, args.root, dataset, variant, force=args.force)
            elif args.stage == "train":
                train_policy(prepare_setup(profile, args.root, dataset, variant), force=args.force)
            else:
                final = variant_dir(profile, args.root, dataset, variant) / "final"
                write_rows(profile, args.root, evaluate_policy(profile, args.root, dataset, variant, final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
