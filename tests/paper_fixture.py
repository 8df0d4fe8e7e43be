"""The paper profile on a CPU: Amazon Reviews 2023-format fixtures, a local file server, the override set.

Issue 14 asks that every paper-only branch (four Amazon datasets, the downloader and parser, the LLM
profile writer, G = 8, no warm start, full fine-tuning, the named sweep dataset) runs in CI. The
fixtures are synthetic but in the official file format and layout (``review_categories/<name>.jsonl.gz``,
``meta_categories/meta_<name>.jsonl.gz``); each user favours two sub-categories so the tools have
something to show. ``tests/paper_cpu_overrides.yaml`` says what is scaled down and why.

Run it yourself (about as long as the test)::

    python -m tests.paper_fixture --root /tmp/paper-on-cpu
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from tests.unit.test_amazon import FileServer

OVERRIDES_FILE = Path(__file__).with_name("paper_cpu_overrides.yaml")
DAY = 86_400
WINDOW_START = 1_664_582_400  # 2022-10-01 UTC, the paper profile's data.window_start
WINDOW_DAYS = 390  # inside the window that ends 2023-11-01 (exclusive)
SUBCATEGORIES = ("Classic", "Modern", "Budget", "Premium", "Portable", "Studio")


def paper_cpu_overrides(base_url: str) -> dict[str, Any]:
    """The documented override set, with ``data.base_url`` pointing at the local server."""
    overrides = yaml.safe_load(OVERRIDES_FILE.read_text())
    return {**overrides, "data.base_url": base_url}


def _lines(rows: list[dict[str, Any]]) -> bytes:
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
    return gzip.compress(text.encode(), mtime=0)  # mtime 0: the same seed gives the same bytes


def category_files(name: str, seed: int, users: int = 36, items: int = 48) -> dict[str, bytes]:
    """Review and metadata files of one category: url path under the base url -> gzipped JSON lines."""
    rng = np.random.default_rng(seed)
    main = name.replace("_", " ")
    subcategory = [SUBCATEGORIES[i % len(SUBCATEGORIES)] for i in range(items)]
    metas = [{
        "main_category": main, "title": f"{main} {subcategory[i]} item {i}", "average_rating": 4.2,
        "rating_number": int(rng.integers(5, 500)), "features": [f"{subcategory[i].lower()} feature"],
        "description": [f"A {subcategory[i].lower()} product."], "price": round(float(rng.uniform(4, 140)), 2),
        "images": [], "videos": [], "store": f"Store {i % 5}", "categories": [main, subcategory[i]],
        "details": {}, "parent_asin": f"{name[:3].upper()}{i:04d}", "bought_together": None,
    } for i in range(items)]
    reviews = []
    for u in range(users):
        liked = rng.choice(len(SUBCATEGORIES), size=2, replace=False)
        pool = [i for i in range(items) if SUBCATEGORIES.index(subcategory[i]) in liked]
        days = np.sort(rng.choice(WINDOW_DAYS, size=int(rng.integers(3, 7)), replace=False))
        for day in days:
            item = int(rng.choice(pool)) if rng.random() < 0.75 else int(rng.integers(0, items))
            reviews.append({
                "rating": float(rng.integers(1, 6)), "title": "Review", "text": "Works as described.",
                "images": [], "asin": metas[item]["parent_asin"] + "X", "parent_asin": metas[item]["parent_asin"],
                "user_id": f"{name[:3].upper()}U{u:03d}", "timestamp": int(WINDOW_START + day * DAY + u) * 1000,
                "helpful_vote": 0, "verified_purchase": True,
            })
    return {f"/raw/review_categories/{name}.jsonl.gz": _lines(reviews),
            f"/raw/meta_categories/meta_{name}.jsonl.gz": _lines(metas)}


def fixture_files(datasets: list[str]) -> dict[str, bytes]:
    """Every dataset's two files, each category with its own seed."""
    files: dict[str, bytes] = {}
    for seed, name in enumerate(datasets):
        files.update(category_files(name, seed))
    return files


class served_fixtures:
    """Context manager: a local server with the fixtures of ``datasets``; yields its base url."""

    def __init__(self, datasets: list[str]) -> None:
        self.server = FileServer()
        self.server.files.update(fixture_files(datasets))

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self.server.url("/raw")

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def paper_datasets() -> list[str]:
    from recrepro.config import load_profile

    return list(load_profile("paper").data.datasets)


def run_paper_on_cpu(root: Path, stop: int = 7, log: Callable[[str], None] = print) -> list[Any]:
    """Notebooks 00..``stop`` of the paper profile on the fixtures, in ``root`` (notebooks copied in)."""
    from recrepro.runner import run_chain

    repo = Path(__file__).resolve().parents[1]
    if not (root / "notebooks").is_dir():
        shutil.copytree(repo / "notebooks", root / "notebooks")
    with served_fixtures(paper_datasets()) as base_url:
        return run_chain("paper", root, stop=stop, overrides=paper_cpu_overrides(base_url), log=log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="a fresh folder for the run")
    parser.add_argument("--to", dest="stop", type=int, default=7, help="last notebook number")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    run_paper_on_cpu(root, args.stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
