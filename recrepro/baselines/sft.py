"""TALLRec-like baseline: LoRA supervised fine-tuning of the backbone to answer the ranking directly.

PAPER.md 1.6 lists TALLRec among the baselines trained on the same Qwen3-4B (learning rate 1e-5).
TALLRec tunes a yes/no answer per item; ours is *TALLRec-like* [G]: the same recipe (instruction-style
SFT with LoRA) adapted to the list-wise task of PAPER.md 1.1, so that it is scored with the agent's
parser and metrics: the reasoning-only prompt, a target completion that is the training target
followed by the candidates after it in the frozen order (one increasing run, learnable by a tiny
model), and greedy one-turn evaluation on the agent rows' test subset. Cached under
``runs/<profile>/sft/<dataset>/`` by stamp; smoke numbers reproduce nothing.

Details (prompt, target layout and why, training, evaluation): docs/internals.md, "baselines/sft.py".
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Sequence


from recrepro import paths, stamps
from recrepro.agent.session import DatasetSession
from recrepro.agent.evaluate import eval_subset, evaluate_agent, load_backend, rollout_settings
from recrepro.agent.parser import format_answer
from recrepro.agent.prompt import build_messages, instance_from_sample, item_views
from recrepro.agent.teacher import Transcript, encode_transcript
from recrepro.config import Profile
from recrepro.data.pipeline import load_benchmark
from recrepro.evaluation import load_per_instance, metrics_row, per_instance_path
from recrepro.io import atomic_dir
from recrepro.models import load_causal_lm, resolve_device
from recrepro.progress import trainer_progress
from recrepro.rl.grpo import n_processes, process_state
from recrepro.rl.rta import prompt_spec, seeded_subset

SFT_VERSION = "v1"  # bump when the recipe below changes in a way that changes the model
TABLE1_NAME = "TALLRec-like (SFT)"
EVAL_KIND = "answer-eval"  # the stamp of a trained baseline's evaluation record (eval_info.json)
STAMP_SECTIONS = ("data", "warmstart")  # plus the training-relevant agent and sft fields (sft_stamp)


def target_ranking(n_candidates: int, target_index: int, top_k: int) -> list[int]:
    """The training answer [G]: the target, then the candidates after it in frozen order (cyclic), top ``top_k``."""
    if not 1 <= target_index <= n_candidates:
        raise ValueError(f"target_index {target_index} outside 1..{n_candidates}")
    return [(target_index - 1 + step) % n_candidates + 1 for step in range(min(top_k, n_candidates))]


def encode_example(tokenizer: Any, row: Mapping[str, Any], views: Mapping[str, Any], spec: Any,
                   top_k: int) -> dict[str, list[int]]:
    """Token ids and completion mask of one training instance (prompt masked, answer + end-of-turn trained)."""

    instance = instance_from_sample(row, views)
    answer = format_answer(target_ranking(instance.n_candidates, int(instance.target_index), top_k))
    transcript = Transcript(messages=build_messages(instance, spec), turns=[answer], tool_messages=[[]],
                            uses_tools=False)
    ids, mask = encode_transcript(tokenizer, transcript, None)
    return {"input_ids": ids, "completion_mask": mask}


def sft_dir(profile: Profile, root: Path | str, dataset: str) -> Path:
    return paths.stage_dir(profile, "sft", dataset, root)


def sft_stamp(profile: Profile, dataset: str, start_model: str) -> dict[str, Any]:
    """What decides whether a trained adapter is still valid: recipe, config, dataset, start model."""

    # Only what changes the trained weights: evaluation-only knobs (eval_instances, max_new_tokens,
    # decoding) must not force a retrain.
    agent = {k: getattr(profile.agent, k) for k in ("model_name_or_path", "top_k", "prompt_style", "max_tool_calls")}
    sft = {k: v for k, v in dataclasses.asdict(profile.sft).items() if k != "max_new_tokens"}
    return {"sft_version": SFT_VERSION, "dataset": dataset, "seed": profile.run.seed,
            "config": profile.section_hash(*STAMP_SECTIONS), "agent": agent, "sft": sft,
            "start_model": stamps.model_origin(start_model)}


def baseline_kind(info_name: str) -> str:
    """The stamp kind of a trained baseline, from its record's name: ``sdpo_info.json`` -> ``sdpo``."""
    return info_name.removesuffix("_info.json")


def finished_training(final: Path, info_name: str, stamp: Mapping[str, Any], force: bool) -> dict[str, Any] | None:
    """The record of a finished training with this ``stamp`` in ``final`` (skip it), with the stamp under
    ``"stamp"``; or None (train: absent, unreadable, another stamp, or ``force``). Shared by the LoRA
    baselines (SFT, S-DPO, LLaRA, ReRe)."""
    kind = baseline_kind(info_name)
    if force or not stamps.folder_is_current(final, kind, stamp, info_name):
        return None
    info = stamps.read_json(final / info_name)
    return None if info is None else {**info, "stamp": stamps.make(kind, stamp)}


def fit_examples(examples: list[dict[str, Any]], max_length: int, log: Callable[[str], None] = print, *,
                 what: str = "sft", length: Callable[[dict[str, Any]], int] | None = None) -> list[dict[str, Any]]:
    """Drop examples longer than ``max_length`` tokens (``length(example)``, default its ``input_ids``):
    truncation would cut the answer, the only trained part. ``what`` names the baseline in the messages;
    every LoRA baseline filters through here."""
    length = length or (lambda example: len(example["input_ids"]))
    kept = [e for e in examples if length(e) <= max_length]
    if len(kept) < len(examples):
        log(f"[{what}] dropped {len(examples) - len(kept)} of {len(examples)} examples longer than "
            f"sft.max_length={max_length}")
    if not kept:
        raise ValueError(f"sft.max_length={max_length}: every {what} training example is longer; raise it")
    return kept


def per_process_batch(batch_size: int, processes: int) -> int:
    """Examples per process and step, so that ``processes`` processes (``accelerate launch``) take the same
    optimiser steps on the same global batch ``sft.batch_size`` as one process."""
    if batch_size % processes:
        raise ValueError(f"sft.batch_size={batch_size} is not a multiple of the {processes} processes; the global "
                         "batch must split evenly")
    return batch_size // processes


def training_kwargs(profile: Profile, output_dir: Path, on_cpu: bool) -> dict[str, Any]:
    """The ``TrainingArguments`` values every LoRA baseline takes from the profile's ``sft`` section
    (TALLRec-like here; S-DPO and LLaRA add their own), every value explicit."""
    sft = profile.sft
    return dict(
        output_dir=str(output_dir), max_steps=sft.steps, num_train_epochs=sft.epochs,
        per_device_train_batch_size=per_process_batch(sft.batch_size, n_processes()), learning_rate=sft.learning_rate,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, logging_steps=1, save_strategy="no",
        report_to="none", seed=profile.run.seed, data_seed=profile.run.seed,
        bf16=not on_cpu, fp16=False, use_cpu=on_cpu, dataloader_num_workers=0, disable_tqdm=True,
    )


def trainer_args(profile: Profile, output_dir: Path, on_cpu: bool):
    """TRL ``SFTConfig`` from the profile's ``sft`` section; every value explicit."""
    from trl import SFTConfig

    return SFTConfig(
        **training_kwargs(profile, output_dir, on_cpu),
        completion_only_loss=True,  # loss on the answer only: the prompt is input, as in TALLRec
        max_length=profile.sft.max_length,  # longer examples are dropped before (see fit_examples)
    )


def train_sft(profile: Profile, root: Path | str, dataset: str, start_model: str, force: bool = False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune ``start_model`` with LoRA on the training subset; save the merged model (cached)."""

    final = sft_dir(profile, root, dataset) / "final"
    stamp = sft_stamp(profile, dataset, start_model)

    def fit(out_dir: Path) -> dict[str, Any]:
        import datasets
        from peft import LoraConfig
        from transformers.trainer_callback import PrinterCallback
        from trl import SFTTrainer

        bench = load_benchmark(profile, dataset, root)
        train = seeded_subset(bench.samples["train"], profile.sft.train_instances, profile.run.seed)
        device = resolve_device(profile.run.device)
        loaded = load_causal_lm(start_model, device=device, padding_side="right")
        spec, views = prompt_spec(profile, "r"), item_views(bench.items)
        examples = fit_examples([encode_example(loaded.tokenizer, row, views, spec, profile.agent.top_k)
                                 for row in train.to_dict("records")], profile.sft.max_length, log)
        lora = LoraConfig(r=profile.sft.lora_r, lora_alpha=profile.sft.lora_alpha,
                          lora_dropout=profile.sft.lora_dropout, target_modules="all-linear", task_type="CAUSAL_LM")
        began = time.perf_counter()
        trainer = SFTTrainer(model=loaded.model, args=trainer_args(profile, out_dir / "trainer", device == "cpu"),
                             train_dataset=datasets.Dataset.from_list(examples), processing_class=loaded.tokenizer,
                             peft_config=lora)
        trainer.remove_callback(PrinterCallback)  # progress lines with an ETA instead of a dict per step
        trainer.add_callback(trainer_progress(f"sft/{dataset} training", note_key="loss"))
        trainer.train()
        merged = trainer.model.merge_and_unload()  # a plain model: the rollout engine and vLLM load it as is
        merged.save_pretrained(out_dir)
        loaded.tokenizer.save_pretrained(out_dir)
        shutil.rmtree(out_dir / "trainer", ignore_errors=True)
        return {"instances": len(examples), "steps": trainer.state.global_step,
                "wall_s_train": round(time.perf_counter() - began, 2),
                "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
                "settings": dataclasses.asdict(profile.sft)}

    info, skipped = train_once(profile, final, "sft_info.json", stamp, fit, force=force, log=log,
                               skipping=f"[sft] {dataset}: config and start model unchanged, skipping training")
    return {**info, "final": str(final), "skipped": skipped}


def train_once(profile: Profile, final: Path, info_name: str, stamp: dict[str, Any],
               fit: Callable[[Path], dict[str, Any]], *, force: bool, log: Callable[[str], None],
               skipping: str) -> tuple[dict[str, Any], bool]:
    """The cached training of every LoRA baseline: ``fit(out_dir)`` trains, saves the model in ``out_dir`` and
    returns its record, which is written with ``stamp`` to ``final/info_name``; ``final`` is replaced at once.
    Skipped (logging ``skipping``) while ``final`` holds a finished training with ``stamp``, unless ``force``.

    Under ``accelerate launch`` every process runs ``fit`` (the trainer shares out the batches); only the
    main process keeps what it saved. Returns the record and whether the training was skipped.
    """
    info = finished_training(final, info_name, stamp, force)
    if info is not None:
        log(skipping)
        return info, True
    state, record = process_state(profile), None
    if state.is_main_process:
        with atomic_dir(final) as tmp:
            text = json.dumps(fit(tmp), indent=2, sort_keys=True) + "\n"
            (tmp / info_name).write_text(text)
            record = json.loads(text)  # as the file reads back
            written = stamps.write_beside(tmp, baseline_kind(info_name), stamp)
    else:
        with tempfile.TemporaryDirectory(prefix="recrepro-replica-") as scratch:
            fit(Path(scratch))  # this process's share of the training; its copy of the model is not kept
        written = stamps.make(baseline_kind(info_name), stamp)
    state.wait_for_everyone()
    if record is None:  # the main process wrote it
        record = json.loads((final / info_name).read_text())
    return {**record, "stamp": written}, False


def baseline_profile(profile: Profile, name: str) -> Profile:
    """``profile`` as the trained baseline ``name`` (``sdpo``, ``llara``, ``rere``) sees it: its section's
    subset, steps, epochs and rate in ``sft`` (the cores' shared recipe), and for ReRe also its group size,
    subset and steps in ``rta`` (its GRPO harness). Its stamps hash these values, so a changed section retrains."""
    section = getattr(profile, name)
    sft = dataclasses.replace(profile.sft, train_instances=section.train_instances, steps=section.steps,
                              epochs=section.epochs, learning_rate=section.learning_rate)
    rta = profile.rta
    if section.group_size is not None:
        rta = dataclasses.replace(rta, group_size=section.group_size, train_instances=section.train_instances,
                                  max_steps=section.steps, epochs=section.epochs)
    return dataclasses.replace(profile, sft=sft, rta=rta)


def evaluate_sft(profile: Profile, root: Path | str, dataset: str, model_path: str, train_stamp: dict,
                 force: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Greedy one-turn answers on the agent's test subset -> the Table 1 row (cached with the model)."""
    return evaluate_answer_model(profile, root, dataset, model_path, train_stamp, TABLE1_NAME,
                                 sft_dir(profile, root, dataset), force=force, log=log)


def evaluate_answer_model(profile: Profile, root: Path | str, dataset: str, model_path: str, train_stamp: dict,
                          name: str, out_dir: Path, *, force: bool = False, log: Callable[[str], None] = print,
                          generation_context: Callable[[Any], ContextManager] | None = None,
                          context_name: str = "", transformers_only: bool = False) -> dict[str, Any]:
    """Greedy one-turn answers of a model trained to answer directly (TALLRec-like, S-DPO, ReRe) on the
    agent's test subset -> its Table 1 row ``name``, card and trajectories; cached in ``out_dir/eval_info.json``.

    ``generation_context(backend)`` wraps the evaluation (ReRe's constrained decoding); ``context_name``
    names it in the stamp; ``transformers_only`` keeps generation off vLLM (the context patches ``generate``).
    """

    bench = load_benchmark(profile, dataset, root)
    samples = eval_subset(profile, bench.samples["test"])
    stamp = {"train": train_stamp, "eval": profile.section_hash("eval", "agent", "sft"),
             "sample_ids": [int(s) for s in samples["sample_id"]], "context": context_name}
    info_path = Path(out_dir) / "eval_info.json"
    info = None if force else stamps.read_record(info_path, EVAL_KIND, stamp)
    saved = per_instance_path(profile, dataset, name, root)
    if info is not None and saved.is_file():
        log(f"[{name}] {dataset}: evaluation unchanged, reusing {saved.name}")
        frame = load_per_instance(profile, dataset, name, root)
        per_instance = {c: frame[c].to_numpy() for c in frame.columns if c != "sample_id"}
        return {**info, "row": metrics_row(dataset, name, per_instance, profile), "skipped": True}
    # One answer turn, no reasoning: the generation budget is the sft section's, not the agent's.
    budget = profile.sft.max_new_tokens
    settings = dataclasses.replace(rollout_settings(profile, greedy=True), max_new_tokens_per_turn=budget,
                                   max_new_tokens_total=budget)
    backend = load_backend(profile, root, model_path=model_path, transformers_only=transformers_only)
    session = DatasetSession.open(profile, root, dataset, bench)  # the kit's space and profiles, after the cache
    factory = session.env_factory(samples)
    began = time.perf_counter()
    with generation_context(backend) if generation_context else contextlib.nullcontext():
        result = evaluate_agent(profile, root, dataset, samples, session.views, backend, factory, "r",
                                name, settings=settings)
    backend.close()
    info = stamps.write_record(info_path, EVAL_KIND, stamp, wall_s_eval=round(time.perf_counter() - began, 2),
                               valid_share=result.card["valid_share"], invalid_reasons=result.card["invalid_reasons"])
    return {**info, "row": result.row, "skipped": False}


__all__: Sequence[str] = ("TABLE1_NAME", "target_ranking", "encode_example")
