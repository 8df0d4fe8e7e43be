"""Notebook 07's sweeps behind Figures 4 and 5: run them, or train their points on GPUs.

See :mod:`recrepro.rl.sweeps` for the points. On several GPUs (paper profile) train each point with
the CLI; notebook 07 then finds every finished policy (its ``final/stamp.json``) and only evaluates::

    python -m recrepro.stages.sweeps --profile paper --list
    accelerate launch --config_file configs/accelerate/zero3.yaml -m recrepro.stages.sweeps --profile paper \\
        --point Qwen3-8B-G8 --stage train
    python -m recrepro.stages.sweeps --profile paper --point Qwen3-8B-G8 --stage ppr-mine       # one process
    accelerate launch ... -m recrepro.stages.sweeps --profile paper --point Qwen3-8B-G8 --stage ppr-train
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from recrepro import paths, stamps
from recrepro.config import Profile
from recrepro.io import write_text_atomic
from recrepro.jobs import Job, profile_file, run_jobs
from recrepro.overrides import load_cli_profile
from recrepro.progress import Progress, say, stage_entry
from recrepro.rl import grpo, ppr, rta
from recrepro.rl.sweeps import (RESULT_COLUMNS, SWEEPS, SweepPoint, adopt_main_policy, canonical_backbone,
                                neighbour_pairs, point_profile, result_rows, row_name, run_point, run_point_ppr,
                                sweep_dataset, sweep_dir, sweep_points, write_results)
from recrepro.significance import COMPARISON_COLUMNS, dataset_comparisons, render_comparisons


def train_points_side_by_side(profile: Profile, root: Path | str, dataset: str, points: list[SweepPoint],
                              force: bool = False, log: Callable[[str], None] = print) -> None:
    """Train the unfinished points as parallel jobs (``run.jobs``), ``--stage train`` each.

    The first job of another backbone builds its warm start; that backbone's other jobs wait for it.
    The profile's own backbone was warm-started by notebook 04.
    """

    settings, todo, first_of = profile_file(profile, root), [], {}
    own = canonical_backbone(profile.agent.model_name_or_path)
    for point in points:
        if not force and adopt_main_policy(profile, root, dataset, point):
            log(f"[sweeps] {point.name}: the main stage-1 TIRR run has this exact config; its policy is reused")
            continue
        folder = sweep_dir(profile, root, dataset) / point.name
        if not force and (folder / "final" / stamps.STAMP_FILE).is_file():
            continue  # finished; run_point checks the stamp and retrains in process if it is stale
        backbone = canonical_backbone(point.backbone)
        todo.append(Job(f"sweep-{point.name}", "recrepro.stages.sweeps",
                        ("--profile", str(settings), "--root", str(Path(root).resolve()), "--point", point.name,
                         "--stage", "train"), after=None if backbone == own else first_of.get(backbone)))
        first_of.setdefault(backbone, todo[-1].name)
    if len(todo) > 1:
        run_jobs(todo, profile.run.jobs, paths.jobs_dir(profile, root), cwd=root, log=log, say=say)


@stage_entry
def run_sweeps(profile: Profile, root: Path | str = ".", force: bool = False,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Both sweeps (each distinct run once), their result CSVs; returns the frames and the runs.

    Returns ``{"group_size": frame, "backbone": frame, "runs": {name: run}, "dataset": name}``; with
    ``sweeps.backbone_ppr`` the backbone frame holds a stage-1 and an ``RTA+PPR`` row set per point.
    """
    if not profile.sweeps.enabled:
        log("[sweeps] sweeps.enabled is false; nothing to do")
        return {"group_size": pd.DataFrame(columns=list(RESULT_COLUMNS)),
                "backbone": pd.DataFrame(columns=list(RESULT_COLUMNS)), "runs": {}, "dataset": None}
    dataset = sweep_dataset(profile)
    points = sweep_points(profile)
    if profile.run.jobs > 1 and profile.run.device == "cpu":
        distinct = list({p.name: p for sweep in SWEEPS for p in points[sweep]}.values())
        train_points_side_by_side(profile, root, dataset, distinct, force=force, log=log)
    runs: dict[str, dict[str, Any]] = {}
    out: dict[str, Any] = {"runs": runs, "dataset": dataset}
    bar = Progress("sweeps", n_sweep_runs(profile, points), unit="run")
    for sweep in SWEEPS:
        rows = []
        for point in points[sweep]:
            if point.name not in runs:
                log(f"[sweeps] {dataset}/{point.name}")
                runs[point.name] = run_point(profile, root, dataset, point, force=force, log=log)
                bar.update(1, note=_finished(point.name, runs[point.name]))
            rows += result_rows(profile, dataset, sweep, point, runs[point.name])
            if sweep == "backbone" and profile.sweeps.backbone_ppr:
                log(f"[sweeps] {dataset}/{point.name} + PPR")
                name = row_name(point, "RTA+PPR")
                runs[name] = run_point_ppr(profile, root, dataset, point, runs[point.name], force=force, log=log)
                bar.update(1, note=_finished(f"{point.name}+PPR", runs[name]))
                rows += result_rows(profile, dataset, sweep, point, runs[name])
        out[sweep] = write_results(profile, root, sweep, rows)
    bar.close()
    out["comparisons"] = write_sweep_comparisons(profile, root, dataset, points)
    write_text_atomic(sweep_dir(profile, root, dataset) / "sweeps.json",
                      json.dumps({name: {k: v for k, v in run.items() if k != "row"} for name, run in runs.items()},
                                 indent=2, sort_keys=True, default=str) + "\n")
    return out


def n_sweep_runs(profile: Profile, points: dict[str, list[SweepPoint]]) -> int:
    """Distinct runs of :func:`run_sweeps`: each point's stage 1 once, and PPR on each Figure 5 point."""
    distinct = {p.name for sweep in SWEEPS for p in points[sweep]}
    return len(distinct) + (len(points.get("backbone", [])) if profile.sweeps.backbone_ppr else 0)


def _finished(name: str, run: dict[str, Any]) -> str:
    return f"{name} {'up to date' if run.get('skipped') else 'done'}"


def write_sweep_comparisons(profile: Profile, root: Path | str, dataset: str,
                            points: dict[str, list[SweepPoint]]) -> pd.DataFrame:
    """Paired tests of neighbouring sweep points on the same test lists -> ``sweep_comparisons.csv``/``.md``."""
    rows, skipped = dataset_comparisons(profile, root, dataset, neighbour_pairs(points))
    frame = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    results = profile.results_dir(root)
    write_text_atomic(results / "sweep_comparisons.csv", frame.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(results / "sweep_comparisons.md", render_comparisons(
        frame, profile.run.name, {dataset: skipped}, title="Paired comparisons of neighbouring sweep points (Figures 4, 5)"))
    return frame


def all_points(profile: Profile) -> dict[str, SweepPoint]:
    """Every distinct point of both sweeps, by name."""
    return {point.name: point for points in sweep_points(profile).values() for point in points}


def train_point(profile: Profile, root: Path | str, point: SweepPoint, log: Callable[[str], None] = print) -> Path:
    """Stage 1 of one point, exactly as :func:`run_point` trains it (resumable; launcher-safe)."""

    dataset = sweep_dataset(profile)
    sized = point_profile(profile, point)
    if grpo.n_processes() == 1:  # under a launcher every process would build it at once: build it first
        rta.build_starting_model(sized, root)
    setup = rta.prepare_setup(sized, root, dataset, "tirr", out_dir=sweep_dir(profile, root, dataset) / point.name)
    return Path(rta.train_policy(setup, log=log)["final"])


def point_ppr_place(profile: Profile, root: Path | str, point: SweepPoint) -> dict[str, Any]:
    """Folder, start policy and row name of a Figure 5 point's PPR run (as :func:`run_point_ppr`)."""
    folder = sweep_dir(profile, root, sweep_dataset(profile)) / point.name
    if not (folder / "final" / "config.json").is_file():
        raise FileNotFoundError(f"{folder / 'final'}: train the point's stage 1 first (--stage train)")
    return {"folder": folder / "ppr", "start": folder / "final", "row_name": row_name(point, "RTA+PPR")}


def main(argv: list[str] | None = None) -> int:
    import argparse


    parser = argparse.ArgumentParser(prog="python -m recrepro.stages.sweeps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--root", default=".")
    parser.add_argument("--list", action="store_true", help="print the points (name, backbone, G) and exit")
    parser.add_argument("--point", help="the point to train, by name (see --list)")
    parser.add_argument("--stage", default="train", choices=["train", "ppr-mine", "ppr-train"],
                        help="train: stage 1 (under accelerate launch on GPUs); ppr-mine: the Figure 5 point's PPR "
                             "pairs (one process); ppr-train: its PPR training (under accelerate launch)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="profile overrides")
    args = parser.parse_args(argv)
    profile = load_cli_profile(args.profile, args.set)  # a bad --set exits 2 with a message
    points = all_points(profile)
    if args.list:
        backbone = {p.name for p in sweep_points(profile)["backbone"]}
        for name, point in points.items():
            print(f"{name}\t{point.backbone}\tG={point.group_size}\t{'Figure 5 (+PPR)' if name in backbone else 'Figure 4'}")
        return 0
    if args.point not in points:
        raise SystemExit(f"--point: {args.point!r} is not a sweep point of profile {profile.run.name}; "
                         f"choose one of {sorted(points)}")
    point = points[args.point]
    if args.stage == "train":
        print(f"[sweeps] {point.name}: stage-1 policy in {train_point(profile, args.root, point)}")
        return 0
    if point not in sweep_points(profile)["backbone"] or not profile.sweeps.backbone_ppr:
        raise SystemExit(f"--stage {args.stage}: {point.name} gets no PPR (only Figure 5 points, with "
                         f"sweeps.backbone_ppr on)")
    place = point_ppr_place(profile, args.root, point)
    sized = point_profile(profile, point)
    if args.stage == "ppr-mine":
        if grpo.n_processes() > 1:
            raise SystemExit("--stage ppr-mine runs on one process; under accelerate launch use --stage ppr-train")
        folder = ppr.mine_stage(sized, args.root, sweep_dataset(profile), folder=place["folder"],
                                start=place["start"])
        print(f"[sweeps] {point.name}: PPR pairs in {folder}")
    else:
        trained = ppr.train_stage(sized, args.root, sweep_dataset(profile), **place)
        print(f"[sweeps] {point.name}: PPR policy in {trained['final']}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
