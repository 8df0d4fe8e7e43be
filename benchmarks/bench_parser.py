"""Benchmark: the answer and tool-call parsers (:mod:`recrepro.agent.parser`) take linear time.

Times :func:`~recrepro.agent.parser.parse_answer` and :func:`~recrepro.agent.parser.parse_tool_calls`
(and :func:`~recrepro.agent.parser.parse_choice` for the pairwise answer)
on inputs of about 100 kB and 1 MB of several shapes. Each time is the best of ``--repeats`` runs;
for linear code the ratio time(1 MB) / time(100 kB) is near 10 (a quadratic parser gives about 100).

* Tag shapes: thousands of repeated unclosed tags (quadratic before issue 15: 16,000 ``<answer>``
  took over 10 s, 16,000 ``<tool_call>`` over 30 s), a long think block before a real answer, and
  a long run of spaces inside ``\\boxed{``. Target: under 50 ms for every 1 MB input; the exit
  status is 1 when one misses it.
* Block shapes: 1 MB made of tens of thousands of closed ``<tool_call>`` blocks. Each block is
  decoded by ``json.loads`` (a few microseconds, more when it raises), so these are linear but have
  no 50 ms target; they show the per-call cost.

Usage: ``python benchmarks/bench_parser.py [--repeats 5]``
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

from recrepro.agent.parser import format_answer, format_tool_call, parse_answer, parse_choice, parse_tool_calls

SIZES = {"100 kB": 100_000, "1 MB": 1_000_000}
TARGET_SECONDS = 0.050  # issue 15: a 1 MB input parses in under 50 ms
N_CANDIDATES, TOP_K = 20, 10


def _repeat(unit: str, size: int) -> str:
    """``unit`` repeated to about ``size`` characters."""
    return unit * max(1, size // len(unit))


def _think_then(size: int, tail: str) -> str:
    """A think block of ``size`` characters of prose before ``tail`` (a real turn's shape)."""
    return "<think>" + _repeat("I weigh the candidates. ", size) + "</think>\n\n" + tail


def _answer(text: str) -> object:
    return parse_answer(text, N_CANDIDATES, TOP_K)


# name -> (parser, input of about n characters); TAG_CASES carry the 50 ms target, BLOCK_CASES do not.
TAG_CASES: dict[str, tuple[Callable[[str], object], Callable[[int], str]]] = {
    "answer: repeated <answer>": (_answer, lambda n: _repeat("<answer>", n)),
    "answer: repeated </answer>": (_answer, lambda n: _repeat("</answer>", n)),
    "answer: long think, valid answer": (_answer, lambda n: _think_then(n, format_answer(range(1, 11)))),
    "answer: spaces in \\boxed{[...]}": (
        _answer, lambda n: "<answer>\\boxed{[" + " " * n + "1,2,3,4,5,6,7,8,9,10]}</answer>"),
    "choice: spaces in \\boxed{A ...}": (parse_choice, lambda n: "<answer>\\boxed{A" + " " * n + "}</answer>"),
    "choice: repeated <answer>": (parse_choice, lambda n: _repeat("<answer>", n)),
    "tool_call: repeated <tool_call>": (parse_tool_calls, lambda n: _repeat("<tool_call>", n)),
    "tool_call: repeated </tool_call>": (parse_tool_calls, lambda n: _repeat("</tool_call>", n)),
    "tool_call: long think, one call": (parse_tool_calls, lambda n: _think_then(n, format_tool_call("get_user_profile"))),
}
BLOCK_CASES: dict[str, tuple[Callable[[str], object], Callable[[int], str]]] = {
    "tool_call: well-formed calls (about 20k per MB)": (
        parse_tool_calls, lambda n: _repeat(format_tool_call("item_info_search", {"item_name": "Heat"}) + "\n", n)),
    "tool_call: malformed <tool_call>{</tool_call> (42k per MB)": (
        parse_tool_calls, lambda n: _repeat("<tool_call>{</tool_call>", n)),
}


def best_seconds(parse: Callable[[str], object], text: str, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls (the least disturbed by other work on the machine)."""
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        parse(text)
        best = min(best, time.perf_counter() - began)
    return best


def _row(name: str, parse: Callable[[str], object], make: Callable[[int], str], repeats: int) -> float:
    """Print one case's times and ratio; return its 1 MB time."""
    small, large = (best_seconds(parse, make(size), repeats) for size in SIZES.values())
    print(f"{name:58s} {small * 1e3:8.2f} ms {large * 1e3:8.2f} ms {large / small:7.1f}")
    return large


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--repeats", type=int, default=5)
    repeats = args.parse_args(argv).repeats
    print(f"{'case':58s} {'100 kB':>11s} {'1 MB':>11s} {'ratio':>7s}")
    misses = [name for name, (parse, make) in TAG_CASES.items()
              if _row(name, parse, make, repeats) >= TARGET_SECONDS]
    print("-- closed blocks, one json.loads each (linear, no 50 ms target):")
    for name, (parse, make) in BLOCK_CASES.items():
        _row(name, parse, make, repeats)
    print(f"target: every tag-shaped 1 MB input under {TARGET_SECONDS * 1e3:.0f} ms; linear => ratio near 10: "
          + ("all met" if not misses else f"missed by {misses}"))
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
