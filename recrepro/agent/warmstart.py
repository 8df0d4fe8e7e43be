"""SFT warm start: teach a tiny model the output format before anything else.

A randomly initialised model never emits a tool call (DESIGN.md 4), so neither rollouts nor GRPO
would ever see a multi-turn trajectory. RecThinker (PAPER.md 2) starts its agent with supervised
fine-tuning on tool-using trajectories; we do the same with trajectories written by the scripted,
target-blind teachers of :mod:`recrepro.agent.teacher`, rendered in the exact chat format the rollout
engine uses, then fine-tune with TRL's ``SFTTrainer`` (a subclass whose loss keeps only the logits of
trained positions), and, for the mixed teacher, a copy curriculum. This is the tiny profiles'
stand-in for an instruction-tuned backbone; the paper's frozen Qwen3-4B-Instruct needs no warm start.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from recrepro import stamps
from recrepro.agent.corpus import ensure_tiny_agent_model, find_tiny_agent_model
from recrepro.agent.env import RecAgentEnv
from recrepro.agent.pairwise import ppr_prompt_fingerprint
from recrepro.agent.prompt import PROMPT_VERSION, AgentInstance, PromptSpec, instance_from_sample, profile_spec
from recrepro.agent.session import DatasetSession
from recrepro.agent.teacher import (MIXED_TEACHER_VERSION, PPR_TEACHER_VERSION, TEACHER_VERSION, n_ppr_examples,
                                    ppr_teacher_examples, teacher_examples, teacher_strategies)
from recrepro.io import atomic_dir
from recrepro.models import ModelNotBuilt, checkpointing_argument, load_causal_lm
from recrepro.progress import say, trainer_progress


@dataclass(frozen=True)
class WarmStartSettings:
    steps: int = 60  # [G] enough for a tiny model to learn the format
    batch_size: int = 8
    learning_rate: float = 3e-3  # [G] tiny randomly initialised models tolerate a high rate
    weight_decay: float = 0.0
    warmup_steps: int = 5
    seed: int = 0
    max_length: int = 8192  # examples longer than this keep their last max_length tokens


def warm_start(model: Any, tokenizer: Any, examples: Sequence[tuple[list[int], list[int]]],
               settings: WarmStartSettings, progress: bool = True, what: str = "warm start") -> list[float]:
    """Fine-tune ``model`` in place on (ids, mask) examples with TRL's ``SFTTrainer``; returns the loss per step.

    One optimizer step takes ``settings.batch_size`` examples as micro-batches of one (unpadded,
    gradient accumulation), so the loss is the mean over every trained token of the step. AdamW,
    linear warm-up then linear decay to a tenth, gradient clipping at 1, no gradient checkpointing.
    Examples longer than ``settings.max_length`` keep their last tokens (the answer is at the end).
    With ``progress``, steps, ETA and loss are reported as ``what`` (:mod:`recrepro.progress`).
    """
    import tempfile

    import datasets
    import torch
    from trl import SFTConfig

    if not examples:
        raise ValueError("warm start needs at least one example")
    rows = [{"input_ids": list(ids[-settings.max_length:]), "completion_mask": list(mask[-settings.max_length:])}
            for ids, mask in examples]
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    # Linear warm-up, then linear decay to a tenth: the decay settles the last, noisy steps.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(
        1, settings.warmup_steps)) * max(0.1, 1.0 - step / max(1, settings.steps)))
    on_cpu = next(model.parameters()).device.type == "cpu"
    with tempfile.TemporaryDirectory(prefix="warmstart-") as scratch:
        args = SFTConfig(
            output_dir=scratch, max_steps=settings.steps, per_device_train_batch_size=1,
            gradient_accumulation_steps=settings.batch_size, learning_rate=settings.learning_rate,
            weight_decay=settings.weight_decay, max_grad_norm=1.0, seed=settings.seed, data_seed=settings.seed,
            completion_only_loss=True, max_length=None,  # truncated above, from the left
            **checkpointing_argument(SFTConfig, False),  # TRL turns it on by default; 1.3x slower here
            logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_num_workers=0, use_cpu=on_cpu, bf16=False, fp16=False)
        trainer = _warm_start_trainer_class()(model=model, args=args, processing_class=tokenizer,
                                              train_dataset=datasets.Dataset.from_list(rows),
                                              optimizers=(optimizer, schedule))
        _quiet_logs(trainer, what if progress else None)
        trainer.train()
    model.eval()
    return [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]


def _quiet_logs(trainer: Any, what: str | None) -> None:
    """Replace the trainer's dict per step (800 lines in a notebook) by progress lines with the ETA and the
    loss (throttled, :class:`recrepro.progress.Progress`); none with ``what`` None."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    if what is not None:
        trainer.add_callback(trainer_progress(what, note_key="loss"))


def _warm_start_trainer_class() -> type:
    """``SFTTrainer`` whose loss computes logits only where a token is trained (imported lazily)."""
    import torch
    from trl import SFTTrainer

    class WarmStartTrainer(SFTTrainer):
        """TRL's trainer, with a loss that keeps only the logits of trained positions.

        TRL's own loss scores every position of the sequence; on a 2k-token prompt with a 4k
        vocabulary and ~200 trained tokens that made a step 4.5x slower here. ``logits_to_keep``
        with the positions gives the same value (the test checks it against a full forward).
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"]
            if labels.shape[0] != 1:
                raise ValueError("the warm start runs micro-batches of one unpadded example")
            next_labels = labels[0, 1:]  # position t predicts token t + 1
            positions = (next_labels != -100).nonzero().squeeze(-1)
            logits = model(input_ids=inputs["input_ids"], logits_to_keep=positions, use_cache=False).logits[0]
            loss_sum = torch.nn.functional.cross_entropy(logits.float(), next_labels[positions], reduction="sum")
            trained = num_items_in_batch if num_items_in_batch is not None else len(positions)
            return loss_sum / torch.as_tensor(trained, device=loss_sum.device).clamp(min=1)

    return WarmStartTrainer


# The copy curriculum [G] (``warmstart.copy_steps``): short tails first, then longer ones, because a tiny model
# trained on whole transcripts never learnt to copy the popularity line (docs/measurements.md).
WARM_KIND = "warm-start"  # the stamp kind of a warm-started tiny backbone
COPY_SHORT_TOKENS = 160  # [G] holds the popularity line, the final turn and the answer
COPY_LONG_TOKENS = (320, 640, 1280)  # [G] then longer tails, beside the whole transcripts
COPY_SHORT_BATCH = 16  # [G] short tails are cheap
COPY_LONG_BATCH = 8  # [G]


def copy_tail(example: tuple[list[int], list[int]], tokens: int) -> tuple[list[int], list[int]]:
    """The last ``tokens`` tokens of an encoded transcript and their loss mask."""
    ids, mask = example
    return list(ids[-tokens:]), list(mask[-tokens:])


def copy_sources(examples: Sequence[tuple[list[int], list[int]]], n_instances: int, specs: Sequence[PromptSpec],
                 teacher: str, seed: int) -> list[tuple[list[int], list[int]]]:
    """The examples of :func:`teacher_examples` whose answer copies a line: candidates_analyze's popularity
    line, and with ``affinity_order`` the prompt's affinity line (every other ranking example)."""
    strategies = teacher_strategies(n_instances, teacher, seed)
    return [examples[i * len(specs) + j] for i in range(n_instances) for j, spec in enumerate(specs)
            if spec.affinity_order > 0 or (spec.uses_tools and strategies[i] == "popularity")]


def copy_curriculum(model: Any, tokenizer: Any, examples: Sequence[tuple[list[int], list[int]]],
                    sources: Sequence[tuple[list[int], list[int]]], settings: "WarmStartSettings", steps: int,
                    progress: bool = True) -> list[float]:
    """Two phases after the warm start: short tails of ``sources``, then longer tails beside every example."""
    if steps <= 0 or not sources:
        return []
    short = [copy_tail(e, COPY_SHORT_TOKENS) for e in sources]
    longer = list(examples) + [copy_tail(e, n) for e in sources for n in COPY_LONG_TOKENS]
    losses = warm_start(model, tokenizer, short, dataclasses.replace(settings, steps=steps,
                                                                     batch_size=COPY_SHORT_BATCH), progress,
                        "copy curriculum, short tails")
    return losses + warm_start(model, tokenizer, longer, dataclasses.replace(settings, steps=steps,
                                                                             batch_size=COPY_LONG_BATCH), progress,
                               "copy curriculum, longer tails")


def warm_start_model(base_dir: Path | str, out_dir: Path | str, instances: Sequence[AgentInstance],
                     rows: Sequence[dict], env_factory: Callable[[], RecAgentEnv], specs: Sequence[PromptSpec],
                     settings: WarmStartSettings, progress: bool = True,
                     stamp: dict[str, Any] | None = None, ppr_share: float = 0.0,
                     teacher: str = "category", copy_steps: int = 0) -> tuple[Path, list[float]]:
    """Load ``base_dir``, warm-start it on teacher transcripts, save to ``out_dir`` (atomically).

    ``warmstart_info.json`` beside the weights records the recipe and the losses; ``stamp`` (the inputs
    that decide the model, :func:`find_warm_tiny_model`) goes to its ``stamp.json``.
    """
    import json


    loaded = load_causal_lm(base_dir, device="cpu")
    examples = teacher_examples(loaded.tokenizer, instances, rows, env_factory, specs, teacher, settings.seed)
    sources = copy_sources(examples, len(instances), specs, teacher, settings.seed)
    n_ppr = n_ppr_examples(len(examples), ppr_share)
    max_calls = specs[0].max_tool_calls if specs else 10
    show_affinity = bool(specs) and specs[0].affinity_order > 0
    examples += ppr_teacher_examples(loaded.tokenizer, instances, rows, env_factory, n_ppr, settings.seed, max_calls,
                                     show_affinity)
    losses = warm_start(loaded.model, loaded.tokenizer, examples, settings, progress)
    copy_losses = copy_curriculum(loaded.model, loaded.tokenizer, examples, sources, settings, copy_steps, progress)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        loaded.model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        info = {"base": str(base_dir), "teacher_version": TEACHER_VERSION, "teacher": teacher, "settings": settings.__dict__,
                "examples": len(examples), "ppr_examples": n_ppr, "specs": [_recorded(s) for s in specs],
                "loss_first": losses[0], "loss_last": losses[-1], "losses": losses,
                "copy_losses": copy_losses}
        (tmp / "warmstart_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if stamp is not None:
            stamps.write_beside(tmp, WARM_KIND, stamp)
    return out_dir, losses


def warmstart_settings(profile: Any) -> tuple[int, WarmStartSettings]:
    """(training instances, settings) from the profile's ``warmstart`` section."""
    cfg = profile.warmstart
    return cfg.instances, WarmStartSettings(steps=cfg.steps, batch_size=cfg.batch_size,
                                            learning_rate=cfg.learning_rate, seed=profile.run.seed)


def _recorded(spec: PromptSpec) -> dict[str, Any]:
    """A spec's fields for the recipe; ``affinity_order`` only when on, so earlier recipes keep their cache."""
    return {k: v for k, v in spec.__dict__.items() if k != "affinity_order" or v}


def warm_model_dir(base_dir: Path) -> Path:
    return base_dir.with_name(base_dir.name + "-warm")


def _warm_recipe(profile: Any, base: Path, dataset: str) -> dict[str, Any]:
    """Everything the warm-started model depends on: teacher, prompts, data, settings and the base build."""
    n_instances, settings = warmstart_settings(profile)
    specs = [profile_spec(profile.agent, "tirr"), profile_spec(profile.agent, "r")]
    recipe = {"teacher_version": TEACHER_VERSION, "prompt_version": PROMPT_VERSION, "dataset": dataset,
              "instances": n_instances, "settings": settings.__dict__, "specs": [_recorded(s) for s in specs],
              "base_build": stamps.recorded_digest(base)}
    if profile.warmstart.teacher != "category":  # recorded only when used, so v1 recipes keep their cache
        recipe["teacher"] = {"name": profile.warmstart.teacher, "version": MIXED_TEACHER_VERSION,
                             "popularity_order": profile.tools.popularity_order,
                             "copy_steps": profile.warmstart.copy_steps,
                             "copy_tails": [COPY_SHORT_TOKENS, *COPY_LONG_TOKENS]}
    if profile.warmstart.ppr_share > 0:  # recorded only when used, so ranking-only recipes keep their cache
        recipe["ppr"] = {"share": profile.warmstart.ppr_share, "teacher_version": PPR_TEACHER_VERSION,
                         "prompts": ppr_prompt_fingerprint()}
    return recipe


def find_warm_tiny_model(profile: Any, root: Path | str = ".", dataset: str | None = None) -> Path:
    """The profile's built tiny backbone, warm-started when ``warmstart.enabled``; :class:`ModelNotBuilt`
    when it is absent or its recipe changed. Builds nothing (:func:`ensure_warm_tiny_model` builds)."""
    base = find_tiny_agent_model(profile.run_dir(root), profile.agent.model_name_or_path,
                                 seed=profile.run.seed, tools=profile.tools)
    if not profile.warmstart.enabled:
        return base
    out = warm_model_dir(base)
    recipe = _warm_recipe(profile, base, dataset or profile.data.datasets[0])
    if stamps.folder_is_current(out, WARM_KIND, recipe, "config.json"):
        return out
    raise ModelNotBuilt(f"{out}: the warm-started model is not built for this config; stage 1 (notebook 04, "
                        "recrepro.stages.rta) builds it")


def ensure_warm_tiny_model(profile: Any, root: Path | str = ".", dataset: str | None = None,
                           force: bool = False, progress: bool = True) -> Path:
    """Build the profile's tiny backbone and warm-start it on training instances, unless both are built
    with this recipe (:func:`find_warm_tiny_model`). With ``warmstart.enabled: false`` the freshly built
    (random) model is returned as is.

    Teacher transcripts come from the first dataset's training split only (a seeded subset), with
    the same tools the agent will use (SASRec space and profiles when notebooks 02 and 03 wrote
    them), in every prompt variant the evaluation uses. The result lives beside the base model
    (``runs/<profile>/models/tiny-qwen3-<size>-warm/``).
    """
    if not force:
        try:
            return find_warm_tiny_model(profile, root, dataset)
        except ModelNotBuilt:
            pass
    root = Path(root)
    base = ensure_tiny_agent_model(profile.run_dir(root), profile.agent.model_name_or_path, seed=profile.run.seed,
                                   tools=profile.tools)
    if not profile.warmstart.enabled:
        return base
    out = warm_model_dir(base)
    n_instances, settings = warmstart_settings(profile)
    dataset = dataset or profile.data.datasets[0]
    specs = [profile_spec(profile.agent, "tirr"), profile_spec(profile.agent, "r")]
    recipe = _warm_recipe(profile, base, dataset)
    if progress:
        say(f"warm start: building {out.name} ({settings.steps} steps on teacher transcripts of {dataset})")
    session = DatasetSession.open(profile, root, dataset)
    train = session.bench.samples["train"]
    chosen = train.sample(n=min(n_instances, len(train)), random_state=profile.run.seed).sort_values("sample_id")
    rows = chosen.to_dict("records")
    factory = session.env_factory(chosen)
    instances = [instance_from_sample(row, session.views) for row in rows]
    out, _ = warm_start_model(base, out, instances, rows, factory, specs, settings, progress,
                              stamp=recipe, ppr_share=profile.warmstart.ppr_share,
                              teacher=profile.warmstart.teacher, copy_steps=profile.warmstart.copy_steps)
    return out
