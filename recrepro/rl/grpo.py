"""The GRPO harness shared by stage 1 (RTA) and stage 2 (PPR), on TRL 1.16 ``GRPOTrainer``.

PAPER.md 1.4 ([N]): G trajectories per training instance on the same candidate list and order (TRL
repeats each dataset row ``rta.group_size`` times); advantage = reward minus the group mean
(``scale_rewards="none"``); prompt and tool-observation tokens get no gradient (TRL's ``tool_mask``,
tools run by the kit's :class:`~recrepro.agent.env.RecAgentEnv`); all-negative groups are dropped
(:func:`grpo_trainer_class` sets their rewards to NaN, so their advantage is 0). Our choices where the
paper is silent [G]: ``rta.batch_size`` counts instances; ``loss_type``, ``beta``, ``epsilon`` from the
profile; ``num_iterations=1``; a constant learning rate; truncated trajectories keep their gradient.
:func:`run_training` trains both stages: reuse a policy with the same stamp, else resume, else start.

Details (each point as read in TRL, dropped groups and the loss normalisers): docs/internals.md, "rl/grpo.py".
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from recrepro import stamps
from recrepro.agent.env import RecAgentEnv, tool_schemas
from recrepro.agent.generators import stop_token_ids, vllm_available
from recrepro.config import Profile, model_context
from recrepro.plan import completions_per_micro_step
from recrepro.rl.policy_io import (REPLICAS_FILE, WEIGHTS_FILE, finished_policy,  # noqa: F401 (re-exported)
                                     policy_id, refuse_lora_under_zero3, replica_digests, save_final, weights_digest,
                                     zero3)
from recrepro.models import checkpointing_argument, load_causal_lm, resolve_device
from recrepro.progress import trainer_progress
from recrepro.rl.rta_log import RTALogCallback, ValidationSlice

CHECKPOINTS_KIND = "grpo-checkpoints"  # the stamp of a run's checkpoint folder: resumed only under this config

# ------------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------

def n_processes() -> int:
    """Processes of this run (``accelerate launch`` / torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def on_cpu(profile: Profile) -> bool:
    return resolve_device(profile.run.device) == "cpu"


def process_state(profile: Profile) -> Any:
    """accelerate's ``PartialState`` of this process. On CPU it must be told so: without ``cpu=True`` two
    torchrun processes both read as the main process of a one-process run (accelerate 1.15)."""
    from accelerate import PartialState

    return PartialState(cpu=on_cpu(profile))


def vllm_colocate_available(profile: Profile) -> bool:
    """vLLM colocated generation: only when vLLM imports, a CUDA GPU is visible and the profile allows it."""

    return not on_cpu(profile) and vllm_available()


def per_device_batch(profile: Profile, processes: int) -> int:
    """TRL's ``per_device_train_batch_size``: :func:`recrepro.plan.completions_per_micro_step`."""
    return completions_per_micro_step(profile, processes)


def build_grpo_config(profile: Profile, output_dir: Path | str, processes: int | None = None, **overrides: Any):
    """TRL ``GRPOConfig`` from the profile's ``rta`` and ``agent`` sections (see the module docstring)."""
    from trl import GRPOConfig

    rta, agent = profile.rta, profile.agent
    cpu = on_cpu(profile)
    vllm = vllm_colocate_available(profile)
    per_turn = min(agent.max_new_tokens_per_turn, rta.max_completion_length)
    import torch

    bf16 = (not cpu) and torch.cuda.is_bf16_supported()
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        seed=profile.run.seed, data_seed=profile.run.seed,
        # Groups and advantages (PAPER.md 1.4)
        num_generations=rta.group_size,  # [N] G
        per_device_train_batch_size=per_device_batch(profile, processes or n_processes()),
        gradient_accumulation_steps=rta.gradient_accumulation_steps,
        scale_rewards="none",  # [N] reward minus group mean, no std division
        loss_type=rta.loss_type, beta=rta.beta, epsilon=rta.epsilon,  # [G] profile
        num_iterations=1,  # [G] on-policy: one optimiser pass per generation
        learning_rate=rta.learning_rate, lr_scheduler_type="constant",  # [N] rate, [G] schedule
        num_train_epochs=rta.epochs, max_steps=rta.max_steps,
        # Rollouts (PAPER.md 1.3-1.4)
        temperature=agent.temperature, top_p=agent.top_p, top_k=0,
        max_completion_length=rta.max_completion_length,
        generation_kwargs={"max_tokens": per_turn} if vllm else {"max_new_tokens": per_turn},
        max_tool_calling_iterations=agent.max_tool_calls,
        mask_truncated_completions=False,
        # vLLM colocate when available (GPU only); else transformers generate
        # the same switch as evaluation for Qwen3 hybrid templates (agent.enable_thinking)
        chat_template_kwargs=None if agent.enable_thinking is None else {"enable_thinking": agent.enable_thinking},
        use_vllm=vllm, vllm_mode="colocate", vllm_gpu_memory_utilization=rta.vllm_gpu_memory_utilization,
        vllm_max_model_length=model_context(profile),  # else vLLM sizes its cache for the native window
        # Device and precision: the CPU overrides of DESIGN.md 4
        use_cpu=cpu, bf16=bf16, fp16=False, **checkpointing_argument(GRPOConfig, not cpu),
        # Bookkeeping
        logging_steps=rta.logging_steps, save_strategy="steps", save_steps=rta.save_steps,
        report_to="none", log_completions=False, disable_tqdm=True, dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def lora_config(profile: Profile):
    """peft LoRA on every linear layer but the LM head (TRL reads lm_head.weight directly) [G]."""
    from peft import LoraConfig

    rta = profile.rta
    return LoraConfig(r=rta.lora_r, lora_alpha=rta.lora_alpha, lora_dropout=rta.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")


# Data
# ------------------------------------------------------------------------------------------------

def plain(value: Any) -> Any:
    """numpy scalars and arrays from parquet -> plain Python (what datasets and the tools expect)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def build_dataset(rows: Sequence[Mapping[str, Any]]):
    from datasets import Dataset

    return Dataset.from_list([dict(r) for r in rows])


# ------------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------------

@dataclass
class RolloutTrace:
    """What the reward function needs from the rollout but TRL does not pass: the tool masks."""

    tool_masks: list[list[int]] | None = None


@dataclass(frozen=True)
class GroupDrop:
    """What the all-negative rule (PAPER.md 1.4) left of one generation batch: the effective batch."""

    groups_total: int
    groups_kept: int
    group_size: int

    @property
    def dropped_share(self) -> float:
        return 1.0 - self.groups_kept / self.groups_total if self.groups_total else 0.0

    @property
    def effective_batch(self) -> int:
        """Trajectories of the kept groups: the only ones whose advantage can be non-zero."""
        return self.groups_kept * self.group_size

    def metrics(self) -> dict[str, float]:
        """The training-log keys (``rta/...``, see :mod:`recrepro.rl.rta_log`)."""
        return {"rta/dropped_group_share": self.dropped_share, "rta/groups_kept": float(self.groups_kept),
                "rta/groups_total": float(self.groups_total), "rta/effective_batch": float(self.effective_batch)}


def drop_negative_groups(rewards_per_func: Any, group_size: int, weights: Any | None = None,
                         enabled: bool = True) -> tuple[Any, GroupDrop]:
    """Rewards with every all-negative group set to NaN (unscorable for TRL), and what was kept.

    A group is all-negative when the weighted total of each of its completions is < 0 (PAPER.md 1.4);
    completions already unscorable (NaN) do not make a group negative. With ``enabled`` False the
    rewards are returned unchanged and every group counts as kept.
    """
    import torch

    n_groups = rewards_per_func.shape[0] // group_size
    if not enabled:
        return rewards_per_func, GroupDrop(n_groups, n_groups, group_size)
    rewards = rewards_per_func.clone()
    w = torch.ones(rewards.shape[1], device=rewards.device) if weights is None else weights.to(rewards.device)
    totals = (rewards * w.unsqueeze(0)).nansum(dim=1)
    negative = (totals < 0) & ~torch.isnan(rewards).all(dim=1)
    dropped = negative.view(-1, group_size).all(dim=1)
    rewards[dropped.repeat_interleave(group_size)] = torch.nan
    return rewards, GroupDrop(n_groups, n_groups - int(dropped.sum().item()), group_size)


@functools.lru_cache(maxsize=1)
def grpo_trainer_class():
    from trl import GRPOTrainer

    class RTATrainer(GRPOTrainer):
        """``GRPOTrainer`` plus two small hooks: keep the tool masks for the reward, drop all-negative groups."""

        def __init__(self, *args: Any, drop_all_negative_groups: bool = True,
                     rollout_trace: RolloutTrace | None = None, **kwargs: Any) -> None:
            self.drop_all_negative_groups = drop_all_negative_groups
            self.rollout_trace = rollout_trace
            super().__init__(*args, **kwargs)

        def _generate(self, prompts: list):
            out = super()._generate(prompts)
            if self.rollout_trace is not None:
                self.rollout_trace.tool_masks = out[2]  # (prompt_ids, completion_ids, tool_mask, ...)
            return out

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            # TRL returns the rewards of the whole generation batch, gathered over processes, so the
            # counts below are global (the same on every process) and per optimiser step.
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            mode = "train" if self.model.training else "eval"
            group = self.num_generations if mode == "train" else self.num_generations_eval
            rewards, drop = drop_negative_groups(rewards, group, self.reward_weights, self.drop_all_negative_groups)
            for key, value in drop.metrics().items():  # logged even when nothing can be dropped
                self._metrics[mode][key].append(value)
            return rewards

    return RTATrainer


def __getattr__(name: str) -> Any:
    # ``from recrepro.rl.rta import RTATrainer`` without importing TRL when the module is imported.
    if name == "RTATrainer":
        return grpo_trainer_class()
    raise AttributeError(name)


@dataclass
class TrainingSetup:
    """Everything a training run needs besides the trainer itself."""

    profile: Profile
    variant: str
    model_path: str
    train_rows: list[dict[str, Any]]
    env_factory: Callable[[], RecAgentEnv] | None  # None for the reasoning-only variant
    valid: ValidationSlice | None
    output_dir: Path
    log_path: Path
    callbacks: list[Any] = field(default_factory=list)
    dataset: str = ""


def load_policy(model_path: str | Path, profile: Profile):
    """Model and tokenizer. Full fine-tuning keeps fp32 master weights (bf16 compute comes from the
    trainer or DeepSpeed: at a 1e-6 learning rate, updates to bf16 weights would mostly round away);
    a LoRA run on GPU keeps the frozen base in bf16.

    The end-of-turn ids the rollout engine stops on become the model's eos ids, so TRL ends a turn
    on exactly the same tokens as evaluation.
    """
    import torch

    dtype = torch.bfloat16 if profile.rta.use_lora and not on_cpu(profile) else torch.float32
    loaded = load_causal_lm(model_path, device="cpu", dtype=dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.train()
    return model, tokenizer


def build_trainer(setup: TrainingSetup, reward_class: Callable[..., Any], **config_overrides: Any):
    """The RTA trainer for ``setup`` (and the reward function, for inspection).

    ``reward_class`` is called with ``(profile, tokenizer, schemas, trace, stops)``: stage 1 passes
    :class:`recrepro.rl.reward.ListwiseRewardFunc`, stage 2 (PPR) its pairwise reward.
    """

    profile = setup.profile
    refuse_lora_under_zero3(profile)
    model, tokenizer = load_policy(setup.model_path, profile)
    trace = RolloutTrace()
    schemas = tool_schemas(setup.env_factory()) if setup.env_factory is not None else None
    reward = reward_class(profile, tokenizer, schemas, trace, stop_token_ids(tokenizer))
    config = build_grpo_config(profile, setup.output_dir, **config_overrides)
    log_callback = RTALogCallback(setup.log_path, setup.valid, profile.rta.eval_every)
    trainer = grpo_trainer_class()(
        model=model, reward_funcs=[reward], args=config, train_dataset=build_dataset(setup.train_rows),
        processing_class=tokenizer, environment_factory=setup.env_factory,
        peft_config=lora_config(profile) if profile.rta.use_lora else None,
        callbacks=[log_callback, trainer_progress(training_name(setup)), *setup.callbacks],
        drop_all_negative_groups=profile.rta.drop_all_negative_groups, rollout_trace=trace,
    )
    log_callback.trainer = trainer
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our callback prints one short line per step instead
    return trainer, reward


def training_name(setup: TrainingSetup) -> str:
    """How progress lines name a run: the last folders above its checkpoints (``rta/ml-100k/tirr``,
    ``ppr/ml-100k/round1``, ``ml-100k/<sweep point>/ppr``), then "training"."""
    return Path(*setup.output_dir.parent.parts[-3:]).as_posix() + " training"


def run_training(setup: TrainingSetup, stamp: Mapping[str, Any], final: Path, force: bool = False,
                 log: Callable[[str], None] = print, **trainer_kwargs: Any) -> dict[str, Any]:
    """The one training routine of stage 1 and PPR: reuse, resume or start, then save ``final``.

    A policy already trained to the end with ``stamp`` is reused (``trainer`` None). Otherwise the
    main process clears checkpoints of another config and records ``stamp``, every process resumes
    from the last checkpoint if any, and the final policy is saved with ``stamp``.
    ``trainer_kwargs`` go to :func:`build_trainer`.
    """
    from transformers.trainer_utils import get_last_checkpoint

    if not force and finished_policy(final, stamp):
        log(f"{final} was trained with this config (e.g. by `accelerate launch ... --stage train`); reusing it")
        return {"final": final, "wall_s": None, "resumed_from": None, "trainer": None}
    out, state = setup.output_dir, process_state(setup.profile)
    if state.is_main_process:
        if force or (out.exists() and not stamps.is_current(out / stamps.STAMP_FILE, CHECKPOINTS_KIND, stamp)):
            shutil.rmtree(out, ignore_errors=True)  # checkpoints of another config must not be resumed
        out.mkdir(parents=True, exist_ok=True)
        stamps.write_beside(out, CHECKPOINTS_KIND, stamp)
        if get_last_checkpoint(str(out)) is None and setup.log_path.is_file():
            setup.log_path.unlink()  # a fresh run starts a fresh log
    state.wait_for_everyone()
    last = get_last_checkpoint(str(out))
    trainer, _ = build_trainer(setup, **trainer_kwargs)
    if last:
        log(f"resuming from {last}")
    began = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    wall = time.perf_counter() - began
    save_final(trainer, final, stamp)
    return {"final": final, "wall_s": wall, "resumed_from": last, "trainer": trainer}
