"""Command line: ``python -m recrepro run --profile smoke [--from NN] [--to NN] [--force]``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from recrepro.config import ConfigError, parse_overrides
from recrepro.runner import run_chain

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recrepro", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the notebook chain through papermill")
    run.add_argument("--profile", default="smoke")
    run.add_argument("--root", default=".", help="repository root (holds notebooks/, runs/, results/)")
    run.add_argument("--from", dest="start", type=int, default=None, help="first notebook number to run")
    run.add_argument("--to", dest="stop", type=int, default=None, help="last notebook number to run")
    run.add_argument("--force", action="store_true", help="re-run stages even when unchanged")
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     help="override a profile value, e.g. --set data.max_users=50")
    args = parser.parse_args(argv)


    began = time.perf_counter()
    try:
        results = run_chain(args.profile, Path(args.root), args.start, args.stop, args.force,
                            parse_overrides(args.overrides))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ran = sum(r.status == "ran" for r in results)
    print(f"chain finished: {ran} run, {len(results) - ran} skipped, {time.perf_counter() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
