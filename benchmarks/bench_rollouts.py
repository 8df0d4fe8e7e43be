"""Benchmark: batched multi-turn rollouts against a one-trajectory-at-a-time loop, same run.

Both paths use the same engine, model, tools and greedy settings on the same trajectories
(``--instances`` smoke test instances x ``--samples`` samples, tool-using prompt):

* ``batched``: :meth:`RolloutEngine.run`: every live trajectory in one ``model.generate`` call per
  turn (left padding), KV caches kept across turns;
* ``one at a time``: :meth:`RolloutEngine.run_one_by_one`: each trajectory alone from its first turn
  to its answer (batch of one, the same cache reuse).

The model is the smoke profile's backbone: the tiny Qwen3 model built offline and warm-started on
scripted tool-using trajectories (``recrepro.agent.warmstart``), so rollouts really are multi-turn.
It is built on first use under ``runs/<profile>/models/`` (the data stage runs first if needed) and
reused afterwards. The benchmark checks that both paths give the same parsed answers and invalid
reasons under greedy decoding, then prints ``speedup=<one-at-a-time seconds / batched seconds>``
as its last line (target: >= 5).

Usage: ``python benchmarks/bench_rollouts.py [--instances 32] [--samples 4] [--root .] [--profile smoke]
[--override warmstart.steps=400]``
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--root", default=str(REPO))
    parser.add_argument("--profile", default="smoke")
    # One thread by default: on a small shared CPU, torch's OpenMP threads spin against other processes
    # and a run can take ten times longer (measured here on 2 cores); 0 = torch's own default.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--model", default=None,
                        help="a model folder to use instead of the profile's (warm-started) backbone")
    parser.add_argument("--segment-tokens", type=int, default=0,
                        help="tokens per generate call within a turn (0 = whole turns; see RolloutSettings)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted profile override, e.g. warmstart.steps=400 (repeatable)")
    args = parser.parse_args()
    import yaml

    overrides = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.override)}

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from recrepro.agent.env import toolkit_env_factory
    from recrepro.agent.evaluate import load_backend, make_tasks, rollout_settings
    from recrepro.agent.prompt import PromptSpec, item_views
    from recrepro.agent.rollout import RolloutEngine
    from recrepro.config import load_profile
    from recrepro.data.pipeline import dataset_dir, load_benchmark, prepare_dataset

    profile = load_profile(args.profile, overrides)
    root = Path(args.root)
    dataset = profile.data.datasets[0]
    if not (dataset_dir(profile, dataset, root) / "manifest.json").is_file():
        print(f"[setup] data stage for {dataset}", flush=True)
        prepare_dataset(profile, dataset, root)
    began = time.perf_counter()
    backend = load_backend(profile, root, args.model)  # builds and warm-starts the tiny model on first use
    print(f"[setup] model {backend.model_path} ready in {time.perf_counter() - began:.1f} s", flush=True)

    bench = load_benchmark(profile, dataset, root)
    samples = bench.samples["test"].sample(n=args.instances, random_state=profile.run.seed).sort_values("sample_id")
    factory = toolkit_env_factory(profile, bench, root, samples)
    tasks = make_tasks(samples, item_views(bench.items), PromptSpec("tirr", top_k=profile.agent.top_k,
                                                                    max_tool_calls=profile.agent.max_tool_calls))
    settings = dataclasses.replace(rollout_settings(profile, greedy=True, progress=False),
                                   segment_tokens=args.segment_tokens or None)
    engine = RolloutEngine(backend.generator, backend.tokenizer, factory, settings, top_k=profile.agent.top_k,
                           max_tool_calls=profile.agent.max_tool_calls, max_context_tokens=backend.max_context_tokens)
    n = len(tasks) * args.samples
    print(f"[run ] {len(tasks)} instances x {args.samples} samples = {n} trajectories, greedy, "
          f"max {settings.max_new_tokens_per_turn} new tokens per turn, {settings.max_new_tokens_total} in total, "
          f"segments of {settings.segment_tokens or 'whole turns'}, torch threads {torch.get_num_threads()}",
          flush=True)

    began = time.perf_counter()
    batched = engine.run(tasks, n_samples=args.samples)
    batched_s = time.perf_counter() - began
    began = time.perf_counter()
    alone = engine.run_one_by_one(tasks, n_samples=args.samples)
    alone_s = time.perf_counter() - began

    same = sum((a.answer, a.invalid_reason) == (b.answer, b.invalid_reason) for a, b in zip(batched, alone))
    turns = Counter(len(r.turns) for r in batched)
    calls = sum(r.n_tool_calls for r in batched) / n
    tokens = sum(r.tokens_generated for r in batched)
    valid = sum(r.valid for r in batched) / n
    print(f"[info] turns per trajectory {dict(sorted(turns.items()))}; tool calls per trajectory {calls:.2f}; "
          f"valid answers {valid:.1%}; generated tokens {tokens}")
    print(f"[info] invalid reasons {dict(Counter(r.invalid_reason for r in batched if r.invalid_reason))}")
    print(f"[time] batched {batched_s:.1f} s ({n / batched_s:.2f} trajectories/s); one at a time {alone_s:.1f} s "
          f"({n / alone_s:.2f} trajectories/s)")
    print(f"[check] same parsed answers and reasons: {same}/{n}")
    if same != n:
        print("[check] FAILED: batched and one-at-a-time rollouts disagree", flush=True)
    print(f"speedup={alone_s / batched_s:.2f}")
    return 0 if same == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
