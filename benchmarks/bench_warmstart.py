"""Benchmark: the warm start through TRL's SFTTrainer against a hand-written torch loop, same run.

Both train a fresh copy of the smoke profile's tiny backbone on the same scripted teacher examples
(``--instances`` training instances, tool-using and reasoning-only prompts) for ``--steps`` steps of
``--batch-size`` examples with the same optimizer, schedule and clipping:

* ``trl``: :func:`recrepro.agent.warmstart.warm_start` (``SFTTrainer`` with a loss that keeps only the
  logits of trained positions, micro-batches of one, gradient accumulation);
* ``loop``: the loop the kit used before (kept here only as the yardstick): each example forward and
  backward on its own, the same ``logits_to_keep`` trick, one optimizer step per batch.

Prints the wall time of each, their first and last losses, and ``slowdown=<trl seconds / loop
seconds>`` as its last line (the kit accepts up to 1.5: TRL's trainer buys the standard training
loop, logging and accelerate; nothing to beat here, only a cost to know).

Usage: ``python benchmarks/bench_warmstart.py [--instances 40] [--steps 40] [--batch-size 4] [--root .]``
(the data stages 00 to 02 must have run for the smoke profile under ``--root``).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def reference_loop(model, examples, settings) -> list[float]:
    """The yardstick: a plain torch loop with the same optimizer, schedule, clipping and loss."""
    import torch

    rng = random.Random(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(
        1, settings.warmup_steps)) * max(0.1, 1.0 - step / max(1, settings.steps)))
    order: list[int] = []
    losses = []
    model.train()
    for _ in range(settings.steps):
        if len(order) < settings.batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
        batch = [examples[order.pop()] for _ in range(settings.batch_size)]
        trained = sum(sum(mask[1:]) for _, mask in batch)
        step_loss = 0.0
        for ids, mask in batch:
            positions = torch.tensor([t for t in range(len(ids) - 1) if mask[t + 1]], dtype=torch.long)
            logits = model(input_ids=torch.tensor([ids]), logits_to_keep=positions).logits[0]
            loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(ids)[positions + 1], reduction="sum")
            (loss / trained).backward()
            step_loss += float(loss.detach()) / trained
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
    model.eval()
    return losses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=40)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--root", default=str(REPO))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from recrepro.agent import teacher, warmstart
    from recrepro.agent.env import toolkit_env_factory
    from recrepro.agent.prompt import PromptSpec, instance_from_sample, item_views
    from recrepro.config import load_profile
    from recrepro.data.pipeline import load_benchmark
    from recrepro.agent.corpus import ensure_tiny_agent_model
    from recrepro.models import load_causal_lm

    profile = load_profile("smoke")
    root = Path(args.root)
    base = ensure_tiny_agent_model(profile.run_dir(root), profile.agent.model_name_or_path, seed=profile.run.seed,
                                   tools=profile.tools)
    bench = load_benchmark(profile, profile.data.datasets[0], root)
    chosen = bench.samples["train"].sample(n=args.instances, random_state=profile.run.seed).sort_values("sample_id")
    rows = chosen.to_dict("records")
    views = item_views(bench.items)
    instances = [instance_from_sample(row, views) for row in rows]
    specs = [PromptSpec(variant, profile.agent.prompt_style, profile.agent.top_k, profile.agent.max_tool_calls)
             for variant in ("tirr", "r")]
    tokenizer = load_causal_lm(base, device="cpu").tokenizer
    examples = teacher.teacher_examples(tokenizer, instances, rows, toolkit_env_factory(profile, bench, root, chosen),
                                          specs)
    settings = warmstart.WarmStartSettings(steps=args.steps, batch_size=args.batch_size,
                                           learning_rate=profile.warmstart.learning_rate, seed=profile.run.seed)
    print(f"{len(examples)} examples, mean length {sum(len(ids) for ids, _ in examples) / len(examples):.0f} tokens")
    seconds = {}
    for name in ("loop", "trl"):
        loaded = load_causal_lm(base, device="cpu")
        began = time.perf_counter()
        if name == "trl":
            losses = warmstart.warm_start(loaded.model, loaded.tokenizer, examples, settings, progress=False)
        else:
            losses = reference_loop(loaded.model, examples, settings)
        seconds[name] = time.perf_counter() - began
        print(f"{name}: {seconds[name]:.1f} s, loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)
    print(f"slowdown={seconds['trl'] / seconds['loop']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
