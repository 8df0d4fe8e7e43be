"""Stage 1, Recommendation-oriented Trajectory Activation (RTA): list-wise GRPO with tools, on TRL.

PAPER.md 1.4 ([N]): G trajectories per training instance, all on the same candidate list in the same
order; the list-wise reward (:func:`recrepro.rl.reward.listwise_reward`); advantage = reward minus the
group mean, no division by the standard deviation; prompt and tool-observation tokens get no
gradient; groups whose rewards are all negative are dropped.

How each point is realised with TRL 1.16 ``GRPOTrainer`` (read in ``trl/trainer/grpo_trainer.py``):

* **Groups.** TRL's ``RepeatSampler`` repeats each dataset row ``num_generations`` (= ``rta.group_size``)
  times in a row; one row is one training instance, so the G rollouts share its prompt and candidate
  order. ``rta.batch_size`` counts instances per optimiser step [G reading of "batch 64"]; TRL's
  ``per_device_train_batch_size`` counts completions, so it is ``batch_size * G / (processes * accum)``.
* **Advantage.** ``scale_rewards="none"``: TRL computes ``rewards - group nanmean`` and divides by
  nothing (Proposition 1's baseline).
* **Dropped groups.** :class:`RTATrainer` overrides ``_calculate_rewards`` only to set the rewards
  of an all-negative group to NaN. TRL then treats those completions as *unscorable*: they are left
  out of the (nan-aware) group means, their advantage is ``nan_to_num``-ed to exactly 0, and they
  are left out of TRL's logged ``reward``. They still sit in the batch: with ``loss_type`` grpo or
  dr_grpo each still counts as a row of the normaliser (B, or B x max_completion_length), with bnpo
  or dapo its tokens still count in the token normaliser, so the kept groups' gradient is scaled by
  the kept share, exactly as if the dropped groups had zero advantage; with ``beta > 0`` a dropped
  completion would still carry its KL term (the profiles use beta 0). Every step logs the dropped
  share and the effective batch: groups kept / total and the trajectories of the kept groups.
* **Masking.** Tools run through TRL's ``environment_factory`` with the kit's own
  :class:`~recrepro.agent.env.RecAgentEnv` (the object evaluation uses). TRL builds a ``tool_mask``
  (0 on the chat-template tokens of tool results, up to and including the next assistant header)
  and multiplies it into the loss mask; the prompt is a separate tensor whose logits are never
  computed. ``tests/unit/test_rta.py`` checks both on the token ids of a real multi-turn rollout.
* **Verdict.** The reward function splits each completion into its assistant turns with the same
  ``tool_mask`` (runs of generated tokens) and asks the environment's ``Episode.finish`` for the
  verdict, the same parser and budget rules as evaluation; then ``listwise_reward``.

Our decisions where the paper is silent ([G], all in the profile or here): ``loss_type``, ``beta``,
``epsilon`` (profile ``rta``); one optimisation pass per generation (``num_iterations=1``, so
clipping only matters against vLLM's sampling logprobs); a constant learning rate; truncated
trajectories keep their gradient (they are invalid, reward -1, and should be discouraged); a turn is
capped at ``agent.max_new_tokens_per_turn`` tokens and a trajectory at ``rta.max_completion_length``.

The "trained R" variant is the same RL without tools: the reasoning-only prompt, no environment, and
any tool call is a bad tool call (the parser with ``schemas=None``).

Token budgets differ in what they count: TRL's ``max_completion_length`` (``rta.max_completion_length``)
counts every completion token, tool results included, while the evaluation engine's
``agent.max_new_tokens`` counts generated tokens only. A tool result that does not fit the budget
ends the trajectory as truncated (invalid), so ``rta.max_completion_length`` must leave room for the
observations (up to ``tools.max_chars`` characters each): on ml-100k the warm-started smoke policy's
``candidates_analyze`` answer alone is about 500 tokens.

Known differences from our rollout engine (evaluation), all invalid either way: TRL keeps generating
after a bad tool call (the engine stops; the verdict is the same), and when TRL drops a tool result
because the completion budget is full, the trajectory ends on a turn whose calls were never answered;
we judge that turn as truncated, as the engine does.

One policy per dataset and variant (the paper's tables are per dataset): checkpoints, the final
policy and the training logs live under ``runs/<profile>/rta/<dataset>/`` (``<variant>/checkpoints``,
``<variant>/final``, ``train_log.csv`` for TIRR = Figure 3, ``train_log_r.csv``). Entry points:
:func:`run_rta` (notebook 04) and ``python -m recrepro.rl.rta --profile paper`` (``--stage train``
under ``accelerate launch``; see ``configs/accelerate/README.md``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from recrepro.agent.corpus import ensure_tiny_agent_model
from recrepro.agent.env import Episode, RecAgentEnv, make_env_factory, tool_schemas
from recrepro.agent.evaluate import (eval_subset, evaluate_agent, load_backend, make_tasks, rollout_settings,
                                     toolkit_env_factory)
from recrepro.agent.parser import check_call_against_schema, parse_tool_calls
from recrepro.agent.prompt import PromptSpec, build_messages, instance_from_sample, item_views
from recrepro.agent.warmstart import ensure_warm_tiny_model
from recrepro.agent.generators import stop_token_ids, vllm_available
from recrepro.config import Profile, load_profile, parse_overrides
from recrepro.data.pipeline import load_benchmark
from recrepro.evaluation import chance_row
from recrepro.io import atomic_dir, sha256_file, write_json_atomic
from recrepro.jobs import Job, profile_file, run_jobs
from recrepro.models import is_tiny_name, load_causal_lm, resolve_device
from recrepro.rl.reward import listwise_reward
from recrepro.rl.rta_log import RTALogCallback, ValidationSlice, read_train_log, summarize_log
from recrepro.tables import TABLE1_TITLE, TABLE2_TITLE, write_table
from recrepro.tools import ToolKit

RTA_VERSION = 1  # bump when the training recipe in this file changes (part of the skip stamp)
VARIANTS = ("tirr", "r")
# variant -> (Table 2 model name, extra names); paper_reported.csv uses these Table 2 names.
ROW_NAMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "tirr": ("trained-TIRR-RTA", ("AgenticRec (RTA)",)),
    "r": ("trained-R", ()),
}
TABLE1_NAMES = {"AgenticRec (RTA)"}
STAMP_SECTIONS = ("data", "recbole", "tools", "user_profile", "agent", "warmstart", "reward", "rta")
# [G] vLLM colocated with training: the share of GPU memory vLLM may take (weights + KV cache).
# Columns the environment's reset(**row) and the reward need; the target item itself is left out.
ROW_COLUMNS = ("sample_id", "user_id", "split", "target_time", "history_items", "history_times",
               "history_ratings", "candidates", "target_index")


# ------------------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------------------

def rta_dir(profile: Profile, root: Path | str, dataset: str) -> Path:
    """``runs/<profile>/rta/<dataset>/``: one policy per dataset and variant, as the paper's tables."""
    return profile.run_dir(root) / "rta" / dataset


def variant_dir(profile: Profile, root: Path | str, dataset: str, variant: str) -> Path:
    return rta_dir(profile, root, dataset) / variant


def train_log_path(profile: Profile, root: Path | str, dataset: str, variant: str) -> Path:
    """Figure 3's log (the tool-using run) is ``train_log.csv``; the R run's is ``train_log_r.csv``."""
    return rta_dir(profile, root, dataset) / ("train_log.csv" if variant == "tirr" else f"train_log_{variant}.csv")


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------

def n_processes() -> int:
    """Processes of this run (``accelerate launch`` / torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def on_cpu(profile: Profile) -> bool:
    return resolve_device(profile.run.device) == "cpu"


def vllm_colocate_available(profile: Profile) -> bool:
    """vLLM colocated generation: only when vLLM imports, a CUDA GPU is visible and the profile allows it."""

    return not on_cpu(profile) and vllm_available()


def per_device_batch(profile: Profile, processes: int) -> int:
    """Completions per process per micro-step: instances x G spread over processes and accumulation."""
    rta = profile.rta
    completions = rta.batch_size * rta.group_size
    split = processes * rta.gradient_accumulation_steps
    if completions % split:
        raise ValueError(f"rta.batch_size x rta.group_size = {completions} completions per step cannot be split "
                         f"evenly over {processes} process(es) x {rta.gradient_accumulation_steps} accumulation steps")
    return completions // split


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
        use_vllm=vllm, vllm_mode="colocate", vllm_gpu_memory_utilization=rta.vllm_gpu_memory_utilization,
        # Device and precision: the CPU overrides of DESIGN.md 4
        use_cpu=cpu, bf16=bf16, fp16=False, activation_checkpointing=not cpu,  # = gradient_checkpointing
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


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------

def seeded_subset(samples: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """All rows, or ``limit`` drawn with ``seed`` (kept in sample order)."""
    if limit is None or limit >= len(samples):
        return samples.reset_index(drop=True)
    return samples.sample(n=int(limit), random_state=seed).sort_values("sample_id").reset_index(drop=True)


def prompt_spec(profile: Profile, variant: str) -> PromptSpec:
    return PromptSpec(variant=variant, style=profile.agent.prompt_style, top_k=profile.agent.top_k,
                      max_tool_calls=profile.agent.max_tool_calls)


def _plain(value: Any) -> Any:
    """numpy scalars and arrays from parquet -> plain Python (what datasets and the tools expect)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def training_rows(samples: pd.DataFrame, views: Mapping[str, Any], spec: PromptSpec) -> list[dict[str, Any]]:
    """One row per instance: the prompt messages (system + user) and the columns reset(**row) reads."""
    rows = []
    for sample in samples.to_dict("records"):
        row = {key: _plain(sample[key]) for key in ROW_COLUMNS if key in sample}
        row["prompt"] = build_messages(instance_from_sample(sample, views), spec)
        rows.append(row)
    return rows


def build_dataset(rows: Sequence[Mapping[str, Any]]):
    from datasets import Dataset

    return Dataset.from_list([dict(r) for r in rows])


# ------------------------------------------------------------------------------------------------
# Reward
# ------------------------------------------------------------------------------------------------

@dataclass
class RolloutTrace:
    """What the reward function needs from the rollout but TRL does not pass: the tool masks."""

    tool_masks: list[list[int]] | None = None


def assistant_turns(ids: Sequence[int], mask: Sequence[int] | None, stops: set[int], tokenizer: Any
                    ) -> tuple[list[str], bool]:
    """(raw text of each assistant turn, truncated) from a completion's ids and TRL's tool mask.

    Runs of mask 1 are the tokens the model generated, one run per turn; a run ends with an
    end-of-turn token unless a token limit cut it. A cut turn ends the trajectory for our verdict
    (the engine stops there), so later turns are ignored.
    """
    runs: list[list[int]] = []
    current: list[int] = []
    for i, token in enumerate(ids):
        if mask is None or mask[i]:
            current.append(int(token))
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    turns: list[str] = []
    for run in runs:
        stopped = run[-1] in stops
        body = run[:-1] if stopped else run
        turns.append(tokenizer.decode(body, skip_special_tokens=False))
        if not stopped:
            return turns, True
    return turns, not turns


def _unanswered_calls(turn: str, schemas: Mapping[str, Any] | None, n_calls_before: int, budget: int) -> bool:
    """The final turn holds well-formed, known calls within budget: TRL stopped before answering them."""
    if schemas is None:
        return False
    parsed = parse_tool_calls(turn)
    if not parsed.calls or not parsed.ok:
        return False
    if any(check_call_against_schema(call, schemas) for call in parsed.calls):
        return False
    return n_calls_before + parsed.n_attempted <= budget


class ListwiseRewardFunc:
    """TRL reward function: the parser's verdict per completion, then :func:`listwise_reward`.

    Receives TRL's ``completion_ids``, the ``environments`` of the rollouts (tool variant) and the
    dataset columns ``target_index`` and ``candidates``; logs the reward's components and tool use
    through TRL's ``log_metric`` (means over the step's trajectories).
    """

    __name__ = "listwise"

    def __init__(self, profile: Profile, tokenizer: Any, schemas: Mapping[str, Any] | None, trace: RolloutTrace,
                 stops: Sequence[int]) -> None:
        self.reward_cfg = profile.reward
        self.top_k = profile.agent.top_k
        self.max_tool_calls = profile.agent.max_tool_calls
        self.tokenizer = tokenizer
        self.schemas = schemas
        self.trace = trace
        self.stops = set(int(s) for s in stops)
        self.last: list[Any] = []  # breakdowns of the last call (tests, debugging)

    def verdict(self, ids: Sequence[int], mask: Sequence[int] | None, episode: Episode):
        turns, truncated = assistant_turns(ids, mask, self.stops, self.tokenizer)
        if turns and not truncated:
            before = sum(parse_tool_calls(t).n_attempted for t in turns[:-1])
            truncated = _unanswered_calls(turns[-1], self.schemas, before, self.max_tool_calls)
        return episode.finish(turns, self.top_k, self.schemas, truncated)

    def __call__(self, prompts: list, completions: list, completion_ids: list, target_index: list,
                 candidates: list, environments: list[RecAgentEnv] | None = None,
                 log_metric: Callable[[str, float], None] | None = None, **_: Any) -> list[float]:
        masks = self.trace.tool_masks if self.schemas is not None else None
        totals, self.last = [], []
        for i, ids in enumerate(completion_ids):
            if environments is not None:
                episode = environments[i].episode
            else:  # reasoning-only variant: no environment, nothing was executed
                episode = Episode(candidates=tuple(str(c) for c in candidates[i]), max_tool_calls=self.max_tool_calls)
            verdict = self.verdict(ids, masks[i] if masks is not None else None, episode)
            breakdown = listwise_reward(verdict, int(target_index[i]), self.reward_cfg, self.top_k)
            self.last.append(breakdown)
            totals.append(breakdown.total)
            if log_metric is not None:
                self._log(log_metric, breakdown, episode)
        return totals

    @staticmethod
    def _log(log_metric: Callable[[str, float], None], b: Any, episode: Episode) -> None:
        log_metric("rta/reward", b.total)
        log_metric("rta/reward_ranking", b.ranking)
        log_metric("rta/reward_invalid", b.invalid)
        log_metric("rta/reward_tool_bonus", b.tool_bonus)
        log_metric("rta/valid", float(b.valid))
        log_metric("rta/tool_calls", float(b.n_tool_calls))
        log_metric("rta/positive", float(b.total > 0))
        if b.total > 0:  # Figure 3a: of the positively rewarded trajectories, the share that used a tool
            log_metric("rta/positive_with_tool", float(b.n_tool_calls > 0))
        for name, count in episode.calls_per_tool().items():
            log_metric(f"rta/calls/{name}", float(count))


# ------------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------------

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
def _grpo_trainer_class():
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
        return _grpo_trainer_class()
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


def build_trainer(setup: TrainingSetup, reward_class: Callable[..., Any] | None = None, **config_overrides: Any):
    """The RTA trainer for ``setup`` (and the reward function, for inspection).

    ``reward_class`` (default :class:`ListwiseRewardFunc`) is called with the same arguments
    ``(profile, tokenizer, schemas, trace, stops)``; stage 2 (PPR) passes its pairwise reward.
    """

    profile = setup.profile
    model, tokenizer = load_policy(setup.model_path, profile)
    trace = RolloutTrace()
    schemas = tool_schemas(setup.env_factory()) if setup.env_factory is not None else None
    reward = (reward_class or ListwiseRewardFunc)(profile, tokenizer, schemas, trace, stop_token_ids(tokenizer))
    config = build_grpo_config(profile, setup.output_dir, **config_overrides)
    log_callback = RTALogCallback(setup.log_path, setup.valid, profile.rta.eval_every)
    trainer = _grpo_trainer_class()(
        model=model, reward_funcs=[reward], args=config, train_dataset=build_dataset(setup.train_rows),
        processing_class=tokenizer, environment_factory=setup.env_factory,
        peft_config=lora_config(profile) if profile.rta.use_lora else None,
        callbacks=[log_callback, *setup.callbacks],
        drop_all_negative_groups=profile.rta.drop_all_negative_groups, rollout_trace=trace,
    )
    log_callback.trainer = trainer
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our callback prints one short line per step instead
    return trainer, reward


# ------------------------------------------------------------------------------------------------
# Stage
# ------------------------------------------------------------------------------------------------

def starting_model(profile: Profile, root: Path | str = ".", progress: bool = True) -> str:
    """The policy RL starts from: the warm-started tiny model (smoke), else the profile's backbone."""
    name = profile.agent.model_name_or_path
    if is_tiny_name(name):
        if profile.warmstart.enabled:
            return str(ensure_warm_tiny_model(profile, root, progress=progress))
        return str(ensure_tiny_agent_model(profile.run_dir(root), name, seed=profile.run.seed, tools=profile.tools))
    if profile.warmstart.enabled:
        print("[rta] warmstart.enabled is ignored for a hub backbone: the paper starts RL from the instruct model")
    return name


def prepare_setup(profile: Profile, root: Path | str, dataset: str, variant: str,
                  model_path: str | None = None, out_dir: Path | None = None) -> TrainingSetup:
    """Training rows, tools and the validation slice of one dataset.

    ``out_dir`` (sweeps, :mod:`recrepro.rl.sweeps`) puts checkpoints, final policy and
    ``train_log.csv`` there instead of under ``runs/<profile>/rta/<dataset>/``.
    """

    _check_variant(variant)
    root = Path(root)
    bench = load_benchmark(profile, dataset, root)
    views = item_views(bench.items)
    spec = prompt_spec(profile, variant)
    train = seeded_subset(bench.samples["train"], profile.rta.train_instances, profile.run.seed)
    valid = seeded_subset(bench.samples["valid"], profile.rta.eval_instances, profile.run.seed)
    kit = ToolKit.from_benchmark(bench, profile, root)
    kit.prepare(kit.instances(pd.concat([train, valid], ignore_index=True)))  # batch the neighbour search once
    factory = make_env_factory(kit.bind, profile.agent.max_tool_calls)
    slice_ = ValidationSlice(make_tasks(valid, views, spec), factory,
                             rollout_settings(profile, greedy=True, progress=False),
                             profile.agent.top_k, profile.agent.max_tool_calls)
    return TrainingSetup(profile=profile, variant=variant,
                         model_path=model_path or starting_model(profile, root),
                         train_rows=training_rows(train, views, spec),
                         env_factory=factory if spec.uses_tools else None, valid=slice_,
                         output_dir=(out_dir or variant_dir(profile, root, dataset, variant)) / "checkpoints",
                         log_path=(out_dir / "train_log.csv" if out_dir is not None
                                   else train_log_path(profile, root, dataset, variant)), dataset=dataset)


def config_stamp(profile: Profile, variant: str, model_path: str, dataset: str = "") -> dict[str, Any]:
    """What decides whether a finished run is still valid: config, dataset, variant, start model, code."""
    start = Path(model_path)
    # A local folder by its absolute path: `--root .` on the CLI and the notebook's absolute root
    # must give one stamp, or a policy trained under accelerate launch would be trained again.
    origin = {"path": str(start.resolve()) if start.is_dir() else model_path}
    for name in ("warmstart_info.json", "build_info.json", "config.json"):
        if (start / name).is_file():
            origin[name] = sha256_file(start / name)
    return {"rta_version": RTA_VERSION, "dataset": dataset, "variant": variant, "seed": profile.run.seed,
            "config": profile.section_hash(*STAMP_SECTIONS), "start_model": origin}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def train_policy(setup: TrainingSetup, force: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (resuming from the last checkpoint of the same config) and save the final policy.

    Returns ``{"final": path, "wall_s": seconds, "resumed_from": checkpoint or None, "trainer": ...}``.
    Only the main process touches the folders; the others wait.
    """
    stamp = config_stamp(setup.profile, setup.variant, setup.model_path, setup.dataset)
    final = setup.output_dir.parent / "final"  # runs/<profile>/rta/<dataset>/<variant>/final
    return run_training(setup, stamp, final, force=force, log=log)


def run_training(setup: TrainingSetup, stamp: Mapping[str, Any], final: Path, force: bool = False,
                 log: Callable[[str], None] = print, **trainer_kwargs: Any) -> dict[str, Any]:
    """The one training routine of stage 1 and PPR: reuse, resume or start, then save ``final``.

    A policy already trained to the end with ``stamp`` is reused (``trainer`` None). Otherwise the
    main process clears checkpoints of another config and records ``stamp``, every process resumes
    from the last checkpoint if any, and the final policy is saved with ``stamp``.
    ``trainer_kwargs`` go to :func:`build_trainer`.
    """
    from accelerate import PartialState
    from transformers.trainer_utils import get_last_checkpoint

    if not force and finished_policy(final, stamp):
        log(f"{final} was trained with this config (e.g. by `accelerate launch ... --stage train`); reusing it")
        return {"final": final, "wall_s": None, "resumed_from": None, "trainer": None}
    out, state = setup.output_dir, PartialState()
    if state.is_main_process:
        if force or (out.exists() and _read_json(out / "run_stamp.json") != dict(stamp)):
            shutil.rmtree(out, ignore_errors=True)  # checkpoints of another config must not be resumed
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "run_stamp.json", dict(stamp))
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


TRAINED_STAMP = "train_stamp.json"  # written beside a final policy: the config it was trained with


def finished_policy(final: Path, stamp: Mapping[str, Any]) -> bool:
    """Whether ``final`` holds a policy trained to the end with exactly this config stamp.

    Lets the one-process evaluation after an ``accelerate launch`` training run use its policy
    instead of resuming a DeepSpeed checkpoint without DeepSpeed.
    """
    return (final / "config.json").is_file() and _read_json(final / TRAINED_STAMP) == json.loads(
        json.dumps(dict(stamp), default=_json_default))


def save_final(trainer: Any, final: Path, stamp: Mapping[str, Any] | None = None) -> Path:
    """``save_pretrained`` of the policy (LoRA merged into the weights) and tokenizer, atomically;
    with ``stamp``, also the config it was trained with (:func:`finished_policy`)."""

    trainer.accelerator.wait_for_everyone()
    model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.accelerator.is_main_process:
        if hasattr(model, "merge_and_unload"):  # peft: evaluation loads a plain model
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        with atomic_dir(final) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            trainer.processing_class.save_pretrained(tmp)
            if stamp is not None:
                write_json_atomic(tmp / TRAINED_STAMP, json.loads(json.dumps(dict(stamp), default=_json_default)))
    trainer.accelerator.wait_for_everyone()
    return final


def evaluate_policy(profile: Profile, root: Path | str, dataset: str, variant: str,
                    model_path: Path | str, row_name: str | None = None) -> list[dict]:
    """The trained policy on the dataset's test lists, through the zero-shot rows' evaluation path
    (``recrepro.agent.evaluate.evaluate_agent``: same instances, engine, parser, metrics and card).

    ``row_name`` (sweeps) names the row instead of the Table 1/2 names, so per-instance scores and
    the evaluation card of the main run are not overwritten."""

    root = Path(root)
    backend = load_backend(profile, root, model_path=model_path)
    name, extra = (row_name, ()) if row_name else ROW_NAMES[variant]
    bench = load_benchmark(profile, dataset, root)
    samples = eval_subset(profile, bench.samples["test"])
    factory = toolkit_env_factory(profile, bench, root, samples)
    result = evaluate_agent(profile, root, dataset, samples, item_views(bench.items), backend, factory, variant,
                            name, extra_names=extra)
    return [chance_row(dataset, profile.data.n_candidates, len(samples), profile), result.row,
            *({**result.row, "model": e} for e in extra)]


def write_rows(profile: Profile, root: Path | str, rows: list[dict]) -> dict[str, pd.DataFrame]:
    """Table 2 gets every row (chance included), Table 1 the AgenticRec (RTA) row."""

    results = profile.results_dir(root)
    rows2 = [r for r in rows if r["model"] not in TABLE1_NAMES]
    rows1 = [r for r in rows if r["model"] in TABLE1_NAMES]
    out = {"table2": write_table(results, "table2", rows2, TABLE2_TITLE, profile.eval.ks, paper_table="table2")}
    if rows1:
        out["table1"] = write_table(results, "table1", rows1, TABLE1_TITLE, profile.eval.ks, paper_table="table1")
    return out


def run_variant(profile: Profile, root: Path | str, dataset: str, variant: str, force: bool = False,
                log: Callable[[str], None] = print, out_dir: Path | None = None,
                row_name: str | None = None) -> dict[str, Any]:
    """Train one (dataset, variant) policy unless its stamp is unchanged, evaluate it, write its rows.

    With ``out_dir`` (sweeps) everything lives in that folder, the test row is named ``row_name``
    and nothing is written to Table 1/2.
    """
    root = Path(root)
    folder = out_dir if out_dir is not None else variant_dir(profile, root, dataset, variant)
    model_path = starting_model(profile, root)
    stamp = config_stamp(profile, variant, model_path, dataset)
    done = _read_json(folder / "stamp.json")
    final = folder / "final"
    log_path = folder / "train_log.csv" if out_dir is not None else train_log_path(profile, root, dataset, variant)
    if not force and done is not None and done.get("stamp") == stamp and (final / "config.json").is_file():
        log(f"[rta] {dataset}/{variant}: final policy and its evaluation are up to date; skipping")
        if out_dir is None:
            write_rows(profile, root, done["rows"])
        return {**done, "skipped": True, "final": str(final), "log": read_train_log(log_path)}
    trained = train_policy(prepare_setup(profile, root, dataset, variant, model_path, out_dir), force=force, log=log)
    trainer = trained.pop("trainer")
    if trainer is not None and not trainer.accelerator.is_main_process:
        return {"skipped": False, "final": str(trained["final"])}
    del trainer  # free the training copy before evaluation loads the final policy
    rows = evaluate_policy(profile, root, dataset, variant, trained["final"], row_name)
    if out_dir is None:
        write_rows(profile, root, rows)
    train_log = read_train_log(log_path)
    record = {"stamp": stamp, "rows": rows, "wall_s_train": trained["wall_s"],
              "resumed_from": trained["resumed_from"], "summary": summarize_log(train_log)}
    write_json_atomic(folder / "stamp.json", json.loads(json.dumps(record, default=_json_default)))
    return {**record, "skipped": False, "final": str(trained["final"]), "log": train_log}


def train_side_by_side(profile: Profile, root: Path | str, variants: Sequence[str], force: bool = False,
                       log: Callable[[str], None] = print) -> None:
    """Train the (dataset, variant) policies that are not finished as parallel jobs (``run.jobs``).

    Each job is ``python -m recrepro.rl.rta --stage train``, so it only saves its final policy with
    its stamp; :func:`run_variant` then finds it, evaluates and writes the rows in this process.
    The starting model is built first, here, so that no two jobs build it at once.
    """
    model_path = starting_model(profile, root)
    todo = [(d, v) for d in profile.data.datasets for v in variants
            if force or not finished_policy(variant_dir(profile, root, d, v) / "final",
                                            config_stamp(profile, v, model_path, d))]
    if len(todo) < 2:
        return
    settings = profile_file(profile, root)
    jobs = [Job(f"rta-{d}-{v}", "recrepro.rl.rta",
                ("--profile", str(settings), "--root", str(Path(root).resolve()), "--dataset", d, "--variant", v,
                 "--stage", "train", *(("--force",) if force else ()))) for d, v in todo]
    run_jobs(jobs, profile.run.jobs, profile.run_dir(root) / "jobs", cwd=root, log=log)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _variants(variant: str) -> tuple[str, ...]:
    variants = VARIANTS if variant == "both" else (variant,)
    for v in variants:
        _check_variant(v)
    return variants


def run_rta(profile: Profile, root: Path | str = ".", variant: str = "tirr", force: bool = False,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Stage 1 for ``variant`` ("tirr", "r" or "both") on every dataset: train, save, evaluate, write rows.

    Returns ``{"runs": {"<dataset>/<variant>": result}, "table1": frame, "table2": frame}``; a result
    holds the final policy folder, the training log (a frame), its summary, the table rows and
    whether the work was skipped (outputs present, config unchanged).
    """
    if profile.run.jobs > 1 and on_cpu(profile):
        train_side_by_side(profile, root, _variants(variant), force=force, log=log)
    runs = {f"{dataset}/{v}": run_variant(profile, root, dataset, v, force=force, log=log)
            for dataset in profile.data.datasets for v in _variants(variant)}
    results_dir = profile.results_dir(root)
    tables = {stem: pd.read_csv(results_dir / f"{stem}.csv") for stem in ("table1", "table2")
              if (results_dir / f"{stem}.csv").is_file()}
    return {"runs": runs, **tables}


# ------------------------------------------------------------------------------------------------
# CLI: python -m recrepro.rl.rta --profile paper  (also under accelerate launch)
# ------------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recrepro.rl.rta", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--root", default=".")
    parser.add_argument("--variant", default="tirr", choices=[*VARIANTS, "both"])
    parser.add_argument("--dataset", action="append", help="train/evaluate only these datasets (repeatable)")
    parser.add_argument("--stage", default="all", choices=["all", "train", "eval"],
                        help="train: RL only (run it under accelerate launch); eval: test rows of a trained policy")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="profile overrides")
    args = parser.parse_args(argv)
    profile = load_profile(args.profile, parse_overrides(args.set))
    if args.stage == "all" and n_processes() > 1:
        raise SystemExit("--stage all evaluates on one process; under accelerate launch use --stage train, "
                         "then --stage eval without the launcher")
    for dataset in args.dataset or profile.data.datasets:
        for variant in _variants(args.variant):
            if args.stage == "all":
                run_variant(profile, args.root, dataset, variant, force=args.force)
            elif args.stage == "train":
                train_policy(prepare_setup(profile, args.root, dataset, variant), force=args.force)
            else:
                final = variant_dir(profile, args.root, dataset, variant) / "final"
                write_rows(profile, args.root, evaluate_policy(profile, args.root, dataset, variant, final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
