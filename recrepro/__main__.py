"""Command line: ``python -m recrepro run --profile smoke [--from NN] [--to NN] [--force]`` runs the notebook
chain; ``python -m recrepro plan --profile paper [--gpus 4] [--gpu-memory-gib 80]`` prints the GPU plan;
``python -m recrepro figures --profile cpu [--only fig4]`` redraws Figures 3-5 and Table 1 at a glance from
the saved CSVs; ``python -m recrepro compare --profile smoke`` says whether the run reproduces the committed reference
(exit 1 when not); ``python -m recrepro promote --profile smoke`` makes the run the new reference."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from recrepro.config import ConfigError, load_profile
from recrepro.overrides import parse_overrides
from recrepro.plan import Hardware, PlanError, stage_lines
from recrepro.reference import compare, promote
from recrepro.runner import run_chain
from recrepro.stages import figures


def _run(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    results = run_chain(args.profile, Path(args.root), args.start, args.stop, args.force,
                        parse_overrides(args.overrides))
    ran = sum(r.status == "ran" for r in results)
    print(f"chain finished: {ran} run, {len(results) - ran} skipped, {time.perf_counter() - began:.1f} s")
    return 0


def _plan(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile, parse_overrides(args.overrides))
    hardware = Hardware(gpus=args.gpus, gpu_memory_gib=args.gpu_memory_gib, concurrency=args.concurrency)
    try:
        print("\n".join(stage_lines(profile, hardware)))
    except PlanError as exc:
        print(f"does not fit: {exc}", file=sys.stderr)
        return 3
    return 0


def _compare(args: argparse.Namespace) -> int:
    result = compare(load_profile(args.profile, parse_overrides(args.overrides)), Path(args.root))
    print(result.report())
    return 0 if result.match else 1


def _promote(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile, parse_overrides(args.overrides))
    copied = promote(profile, Path(args.root))
    print(f"reference of {profile.run.name!r} updated: {len(copied['results'])} tables, "
          f"{len(copied['figures'])} figures; review with `git diff` before committing")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recrepro", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the notebook chain through papermill")
    run.add_argument("--profile", default="smoke")
    run.add_argument("--root", default=".", help="repository root (holds notebooks/, runs/, results/)")
    run.add_argument("--from", dest="start", type=int, default=None, help="first notebook number to run")
    run.add_argument("--to", dest="stop", type=int, default=None, help="last notebook number to run")
    run.add_argument("--force", action="store_true", help="re-run stages even when unchanged")
    plan = sub.add_parser("plan", help="processes, memory per GPU, time and commands of the GPU stages")
    plan.add_argument("--profile", default="paper")
    plan.add_argument("--gpus", type=int, default=4, help="GPUs per training launch (paper: 4 x A800)")
    plan.add_argument("--gpu-memory-gib", type=float, default=80.0)
    plan.add_argument("--concurrency", type=int, default=64, help="requests vLLM generates at once per GPU [G]")
    figures.add_arguments(sub.add_parser(
        "figures", help="redraw Figures 3-5 and Table 1 at a glance from the saved log, sweep and table1 CSVs"))
    check = sub.add_parser("compare", help="does the run reproduce the committed reference? (exit 1 if not)")
    adopt = sub.add_parser("promote", help="copy the run's tables and figures into the committed reference")
    for sub_parser in (check, adopt):
        sub_parser.add_argument("--profile", default="smoke")
        sub_parser.add_argument("--root", default=".", help="repository root (holds runs/ and results/)")
    for sub_parser in (run, plan, check, adopt):
        sub_parser.add_argument("--set", dest="overrides", action="append", default=[],
                                help="override a profile value, e.g. --set data.max_users=50")
    args = parser.parse_args(argv)
    try:
        commands = {"run": _run, "plan": _plan, "figures": figures.run_cli, "compare": _compare, "promote": _promote}
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
