"""LLaRA's Table 1 row: greedy hybrid-prompt answers of a trained LLaRA on the LLM rows' test subset.

LLaRA generates from ``inputs_embeds`` (each item placeholder replaced by the projected SASRec
vector), not from token ids like the kit's rollout engine, so it cannot go through
:func:`recrepro.agent.evaluate.evaluate_agent`; this module does the same job for it: the same test
subset, hybrid prompts tokenised exactly as in training, greedy one-turn generation, the kit's one
parser (a malformed answer is an invalid miss) and the same records, card and trajectories file as
every LLM row. Cached in ``runs/<profile>/llara/<dataset>/eval_info.json``.

Details (each step and the cache key): docs/internals.md, "baselines/llara_eval.py".
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch

from recrepro import paths, stamps
from recrepro.agent.card import build_card, write_eval_card
from recrepro.agent.evaluate import eval_subset, rollout_settings, save_trajectories, shown_path
from recrepro.agent.generators import RolloutSettings, build_generation_config, stop_token_ids
from recrepro.agent.parser import judge_trajectory
from recrepro.agent.prompt import PROMPT_VERSION, PromptSpec, instance_from_sample, item_views, prompt_fingerprint
from recrepro.agent.rollout import TrajectoryRecord
from recrepro.baselines.llara import (TABLE1_NAME, CurriculumCollator, LoadedLLaRA, encode_hybrid_example,
                                      hybrid_messages, llara_dir, load_llara)
from recrepro.baselines.sft import EVAL_KIND
from recrepro.config import Profile
from recrepro.data.pipeline import load_benchmark
from recrepro.evaluation import evaluate_lists, load_per_instance, metrics_row, per_instance_path
from recrepro.progress import Progress
from recrepro.rl.rta import prompt_spec

EVAL_INFO_FILE = "eval_info.json"
BATCH_SIZE = 16  # [G] prompts per generate call
VARIANT = "r"  # the reasoning-only prompt, no tools (as the TALLRec-like row)


# -------- Prompts ---------------------------------------------------------------------------------

def encode_hybrid_prompt(tokenizer: Any, row: Mapping[str, Any], views: Mapping[str, Any], spec: PromptSpec,
                         top_k: int, placeholder_id: int) -> dict[str, Any]:
    """The prompt part of :func:`encode_hybrid_example` (token ids up to the answer), its items and messages.

    The training encoding is computed and cut where the answer mask starts, so the prompt tokens cannot
    drift from training's; the answer (built from ``target_index``) is dropped, never shown to the model.
    """
    full = encode_hybrid_example(tokenizer, row, views, spec, top_k, placeholder_id)
    instance = instance_from_sample(row, views)
    messages = hybrid_messages(instance, spec, tokenizer.convert_ids_to_tokens(placeholder_id))
    return {"input_ids": full["input_ids"][: full["completion_mask"].index(1)], "item_ids": full["item_ids"],
            "sample_id": int(instance.sample_id), "messages": messages, "n_candidates": instance.n_candidates,
            "target_index": None if instance.target_index is None else int(instance.target_index)}


# -------- Generation ------------------------------------------------------------------------------

def generation_settings(profile: Profile, batch_size: int | None = None) -> RolloutSettings:
    """Greedy, one answer turn of ``sft.max_new_tokens`` (the TALLRec-like row's budget), ``batch_size``
    (default :data:`BATCH_SIZE`) prompts per call, no thinking switch (the prompt is rendered as in training)."""
    budget = profile.sft.max_new_tokens
    return dataclasses.replace(rollout_settings(profile, greedy=True), max_new_tokens_per_turn=budget,
                               max_new_tokens_total=budget, batch_size=batch_size or BATCH_SIZE, enable_thinking=None)


def cut_at_stop(new_ids: Sequence[int], stops: Sequence[int]) -> tuple[list[int], bool]:
    """The generated tokens up to and including the first stop token, and whether one was generated."""
    new_ids = [int(i) for i in new_ids]
    at = next((k for k, token in enumerate(new_ids) if token in stops), None)
    return (new_ids, False) if at is None else (new_ids[: at + 1], True)


def generate_batch(loaded: LoadedLLaRA, prompts: Sequence[Mapping[str, Any]], settings: RolloutSettings,
                   max_new_tokens: int) -> list[tuple[list[int], bool]]:
    """Greedy new tokens (cut at the first stop) of a left-padded hybrid batch, and whether each stopped."""
    tokenizer = loaded.tokenizer
    stops = stop_token_ids(tokenizer)
    collate = CurriculumCollator(tokenizer.pad_token_id, loaded.placeholder_id, loaded.table, total_steps=1, seed=0,
                                 train=False, padding_side="left")
    batch = collate([{"input_ids": p["input_ids"], "item_ids": p["item_ids"]} for p in prompts])
    config = build_generation_config(settings, stops, tokenizer.pad_token_id, max_new_tokens)
    device = loaded.device
    with torch.no_grad():
        out = loaded.model.generate(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                    batch["item_rows"].to(device), generation_config=config)
    sequences = out.sequences if hasattr(out, "sequences") else out  # inputs_embeds only: the new tokens alone
    return [cut_at_stop(row[:max_new_tokens].tolist(), stops) for row in sequences.cpu()]


def token_budget(loaded: LoadedLLaRA, prompts: Sequence[Mapping[str, Any]], budget: int) -> int:
    """``budget``, cut so that the longest prompt of the batch plus its answer fits the model's context."""
    context = getattr(loaded.model.llm.config, "max_position_embeddings", None) or 1 << 30
    return max(1, min(budget, context - max(len(p["input_ids"]) for p in prompts)))


# -------- Records ---------------------------------------------------------------------------------

def make_record(prompt: Mapping[str, Any], new_ids: list[int], stopped: bool, tokenizer: Any, top_k: int,
                max_tool_calls: int, wall_s: float) -> TrajectoryRecord:
    """One trajectory record: the completion judged by the kit's parser (invalid answers: ``answer`` None)."""
    text = tokenizer.decode(new_ids[:-1] if stopped else new_ids, skip_special_tokens=False)
    verdict = judge_trajectory([text], prompt["n_candidates"], top_k, max_tool_calls, None, not stopped)
    answer = verdict.answer
    return TrajectoryRecord(
        sample_id=prompt["sample_id"], sample_index=0, target_index=prompt["target_index"],
        messages=list(prompt["messages"]) + [{"role": "assistant", "content": text}], turns=[text],
        answer=answer.ranking, invalid_reason=None if answer.reason is None else answer.reason.value,
        detail=answer.detail, n_tool_calls=0, calls_per_tool={}, tool_calls=[], n_tool_errors=0,
        prompt_tokens=len(prompt["input_ids"]), tokens_generated=len(new_ids), truncated=not stopped, wall_s=wall_s,
        n_out_of_range=answer.n_out_of_range, n_duplicates=answer.n_duplicates,
        prompt_ids=list(prompt["input_ids"]), completion_ids=new_ids, completion_mask=[1] * len(new_ids))


def run_llara(loaded: LoadedLLaRA, prompts: Sequence[Mapping[str, Any]], settings: RolloutSettings, top_k: int,
              max_tool_calls: int, desc: str) -> list[TrajectoryRecord]:
    """Every prompt answered once, in batches of similar length; records in the order of ``prompts``."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]["input_ids"]))
    size = settings.batch_size or len(prompts) or 1
    batches = [order[i: i + size] for i in range(0, len(order), size)]
    records: dict[int, TrajectoryRecord] = {}
    with Progress(desc, len(batches), unit="batch", enabled=settings.progress) as bar:
        for batch in batches:
            chosen = [prompts[i] for i in batch]
            began = time.perf_counter()
            outputs = generate_batch(loaded, chosen, settings,
                                     token_budget(loaded, chosen, settings.max_new_tokens_per_turn))
            wall = time.perf_counter() - began  # shared by the batch, as in the rollout engine's records
            for i, (new_ids, stopped) in zip(batch, outputs):
                records[i] = make_record(prompts[i], new_ids, stopped, loaded.tokenizer, top_k, max_tool_calls, wall)
            bar.update(1, note=f"{len(records)}/{len(prompts)} answers")
    return [records[i] for i in range(len(prompts))]


# -------- The row ---------------------------------------------------------------------------------

def eval_stamp(profile: Profile, final: Path, samples: pd.DataFrame) -> dict[str, Any]:
    """The trained model's stamp, the evaluation-relevant config and the evaluated instances."""
    train = stamps.read_json(Path(final) / stamps.STAMP_FILE)
    return {"train": train, "eval": profile.section_hash("eval", "agent", "sft"),
            "sample_ids": [int(s) for s in samples["sample_id"]]}


def cached_row(profile: Profile, root: Path | str, dataset: str, info: dict[str, Any]) -> dict[str, Any]:
    """The saved evaluation's result, its row rebuilt from the per-instance scores."""
    frame = load_per_instance(profile, dataset, TABLE1_NAME, root)
    per_instance = {c: frame[c].to_numpy() for c in frame.columns if c != "sample_id"}
    return {**info, "row": metrics_row(dataset, TABLE1_NAME, per_instance, profile), "skipped": True}


def write_card(profile: Profile, root: Path | str, dataset: str, final: Path, records: Sequence[TrajectoryRecord],
               settings: RolloutSettings, wall: float) -> dict[str, Any]:
    """The evaluation card (validity, position buckets, tokens) and the trajectories file of the row."""
    card = build_card(records, dataset=dataset, model=TABLE1_NAME, variant=VARIANT, profile=profile.run.name,
                      n_candidates=profile.data.n_candidates, top_k=profile.agent.top_k,
                      max_tool_calls=profile.agent.max_tool_calls, settings=dataclasses.asdict(settings),
                      model_path=shown_path(final, root), wall_s_total=wall, prompt_version=PROMPT_VERSION,
                      prompt_fingerprint=prompt_fingerprint())
    write_eval_card(profile.results_dir(root), card)
    save_trajectories(paths.trajectories_file(profile, dataset, TABLE1_NAME, root), records)
    return card


def evaluate_llara(profile: Profile, root: Path | str, dataset: str, final: Path | str, force: bool = False,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Greedy hybrid answers of the LLaRA in ``final`` on the LLM rows' test subset -> the Table 1 row (cached).

    Returns ``stamp``, ``wall_s_eval``, ``valid_share``, ``invalid_reasons``, ``row`` and ``skipped``, as
    :func:`recrepro.baselines.sft.evaluate_sft` does.
    """
    final = Path(final)
    bench = load_benchmark(profile, dataset, root)
    samples = eval_subset(profile, bench.samples["test"])
    stamp = eval_stamp(profile, final, samples)
    info_path = llara_dir(profile, root, dataset) / EVAL_INFO_FILE
    info = None if force else stamps.read_record(info_path, EVAL_KIND, stamp)
    saved = per_instance_path(profile, dataset, TABLE1_NAME, root)
    if info is not None and saved.is_file():
        log(f"[llara] {dataset}: evaluation unchanged, reusing {saved.name}")
        return cached_row(profile, root, dataset, info)
    loaded = load_llara(final, device=profile.run.device)
    spec, views, top_k = prompt_spec(profile, VARIANT), item_views(bench.items), profile.agent.top_k
    prompts = [encode_hybrid_prompt(loaded.tokenizer, row, views, spec, top_k, loaded.placeholder_id)
               for row in samples.to_dict("records")]
    settings = generation_settings(profile)
    began = time.perf_counter()
    records = run_llara(loaded, prompts, settings, top_k, profile.agent.max_tool_calls, f"llara/{dataset} eval")
    wall = time.perf_counter() - began
    row = evaluate_lists(profile, dataset, TABLE1_NAME, samples, [list(r.answer) if r.answer else None
                                                                 for r in records], root)
    card = write_card(profile, root, dataset, final, records, settings, wall)
    info = stamps.write_record(info_path, EVAL_KIND, stamp, wall_s_eval=round(wall, 2),
                               valid_share=card["valid_share"], invalid_reasons=card["invalid_reasons"])
    scores = "".join(f", {m} {row[m]:.3f}" for m in ("H@1", "H@10") if m in row)
    log(f"[llara] {dataset}: {len(records)} answers in {wall:.1f} s, valid {card['valid_share']:.0%}{scores}")
    return {**info, "row": row, "skipped": False}


__all__: Sequence[str] = ("evaluate_llara", "encode_hybrid_prompt", "generation_settings", "cut_at_stop")
