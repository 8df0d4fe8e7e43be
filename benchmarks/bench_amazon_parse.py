"""Benchmark: the streaming Amazon reviews loader against ``pandas.read_json(lines=True)``.

Builds a deterministic gzipped reviews file in the official Amazon Reviews 2023 format (review
title and text of a few hundred characters, image lists, helpful votes, ...), then times three
child processes, each started fresh so that its peak memory is its own:

* ``baseline``: only imports the modules the other two import (interpreter + imports);
* ``ours``: :func:`recrepro.data.amazon.read_reviews` -> canonical interactions frame;
* ``pandas``: ``pandas.read_json(path, lines=True, compression="gzip")``.

Peak memory is the child's ``ru_maxrss`` minus the baseline's, i.e. the memory the parse itself
added on top of the interpreter and imports. The last printed line is
``throughput_ratio=<ours/pandas> memory_ratio=<ours/pandas>`` (target: >= 2 and <= 0.1).

Usage: ``python benchmarks/bench_amazon_parse.py [--lines 1000000] [--tmp DIR]``
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# One list for every child, so the baseline imports exactly what the measured children import.
IMPORTS = ("numpy", "pandas", "orjson", "recrepro.data.amazon")
START_MS = 1_500_000_000_000  # July 2017, in milliseconds like the official files
SPAN_MS = 6 * 365 * 24 * 3600 * 1000


# ---------------------------------------------------------------- fixture file


def _vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    """Pseudo-words of 2-10 letters; realistic enough for gzip and JSON string costs."""
    return ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10))) for _ in range(size)]


def _ids(rng: random.Random, count: int, prefix: str, length: int) -> list[str]:
    alphabet = string.ascii_uppercase + string.digits
    return [prefix + "".join(rng.choices(alphabet, k=length - len(prefix))) for _ in range(count)]


def _sentence(rng: random.Random, words: list[str], low: int, high: int) -> str:
    text = " ".join(rng.choices(words, k=rng.randint(low, high)))
    return text[0].upper() + text[1:] + "."


def _images(rng: random.Random, item: str) -> list[dict[str, str]]:
    """About one review in ten carries customer images, as in the official data."""
    if rng.random() >= 0.1:
        return []
    base = "https://images-na.ssl-images-amazon.com/images/I/"
    out = []
    for _ in range(rng.randint(1, 3)):
        key = f"{item}{rng.randrange(10**6):06d}"
        out.append({
            "small_image_url": f"{base}{key}._SL256_.jpg",
            "medium_image_url": f"{base}{key}._SL800_.jpg",
            "large_image_url": f"{base}{key}.jpg",
            "attachment_type": "IMAGE",
        })
    return out


def build_reviews_file(path: Path, lines: int, seed: int) -> None:
    """Write ``lines`` official-format reviews to ``path`` (gzip), deterministic for ``seed``."""
    rng = random.Random(seed)
    words = _vocabulary(rng)
    users = _ids(rng, max(1, lines // 3), "A", 28)   # ~3 reviews per user, like the real files
    items = _ids(rng, max(1, lines // 20), "B0", 10)  # ~20 reviews per item
    part = path.with_suffix(path.suffix + ".part")
    with gzip.open(part, "wt", encoding="utf-8", compresslevel=6) as out:
        buffer: list[str] = []
        for _ in range(lines):
            item = items[min(int(rng.paretovariate(1.2)) - 1, len(items) - 1)] \
                if rng.random() < 0.3 else rng.choice(items)
            review = {
                "rating": float(rng.choice((1, 2, 3, 4, 5, 5, 5, 4))),
                "title": _sentence(rng, words, 2, 8),
                "text": " ".join(_sentence(rng, words, 6, 18) for _ in range(rng.randint(2, 6))),
                "images": _images(rng, item),
                "asin": item[:-1] + rng.choice("0123456789"),
                "parent_asin": item,
                "user_id": rng.choice(users),
                "timestamp": START_MS + rng.randrange(SPAN_MS),
                "helpful_vote": int(rng.expovariate(0.5)),
                "verified_purchase": rng.random() < 0.85,
            }
            buffer.append(json.dumps(review))
            if len(buffer) >= 10_000:
                out.write("\n".join(buffer) + "\n")
                buffer.clear()
        if buffer:
            out.write("\n".join(buffer) + "\n")
    os.replace(part, path)


# ---------------------------------------------------------------- children


def child(mode: str, path: Path) -> None:
    """Run one measurement inside this (fresh) process and print it as JSON."""
    import importlib

    for name in IMPORTS:
        importlib.import_module(name)
    rows = 0
    start = time.perf_counter()
    if mode == "ours":
        from recrepro.data.amazon import read_reviews

        rows = len(read_reviews(path).frame)
    elif mode == "pandas":
        import pandas as pd

        rows = len(pd.read_json(path, lines=True, compression="gzip"))
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"mode": mode, "rows": rows, "seconds": seconds, "peak_kb": peak_kb}))


def run_child(mode: str, path: Path) -> dict[str, float]:
    """Start a fresh interpreter for ``mode`` and return its measurement."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--file", str(path)],
        check=True, capture_output=True, text=True, env=env,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="reviews in the test file")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()),
                        help="folder for the generated file (kept and reused between runs)")
    parser.add_argument("--seed", type=int, default=2023)
    parser.add_argument("--child", choices=("baseline", "ours", "pandas"), help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.file)
        return

    args.tmp.mkdir(parents=True, exist_ok=True)
    path = args.tmp / f"amazon_reviews_bench_{args.lines}_{args.seed}.jsonl.gz"
    if not path.is_file():
        began = time.perf_counter()
        build_reviews_file(path, args.lines, args.seed)
        print(f"built {path} in {time.perf_counter() - began:.1f} s")
    print(f"file: {path} ({path.stat().st_size / 2**20:.1f} MiB gzipped, {args.lines:,} lines); "
          f"{os.cpu_count()} CPUs (ours inflates gzip in a helper thread)")

    base = run_child("baseline", path)
    results = {mode: run_child(mode, path) for mode in ("ours", "pandas")}
    base_mib = base["peak_kb"] / 1024
    print(f"baseline (interpreter + imports of {', '.join(IMPORTS)}): {base_mib:.1f} MiB peak RSS; "
          "subtracted from both peaks below")
    print(f"{'loader':<8} {'rows':>10} {'seconds':>9} {'reviews/s':>11} {'peak MiB':>9}")
    stats = {}
    for mode, res in results.items():
        rate = res["rows"] / res["seconds"]
        peak = res["peak_kb"] / 1024 - base_mib
        stats[mode] = (rate, peak)
        print(f"{mode:<8} {res['rows']:>10,} {res['seconds']:>9.2f} {rate:>11,.0f} {peak:>9.1f}")
    if results["ours"]["rows"] != results["pandas"]["rows"]:
        print("WARNING: the two loaders returned different row counts")
    throughput = stats["ours"][0] / stats["pandas"][0]
    memory = stats["ours"][1] / stats["pandas"][1]
    print(f"throughput_ratio={throughput:.2f} memory_ratio={memory:.3f}")


if __name__ == "__main__":
    main()
