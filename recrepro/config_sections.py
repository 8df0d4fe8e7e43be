"""The profile's sections as frozen dataclasses, one per YAML section (loaded by :mod:`recrepro.config`).

Field comments say what each value means; the profile YAML files carry where each value comes from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunConfig:
    name: str
    seed: int
    runs_dir: str
    results_dir: str  # the committed reference tables, <results_dir>/<name>/ (a run writes runs/<name>/results)
    figures_dir: str  # the committed reference figures, <figures_dir>/<name>/
    device: str  # "cpu", "cuda" or "auto"
    jobs: int = 1  # independent training jobs run side by side, one torch thread each (recrepro.jobs)


@dataclass(frozen=True)
class DataConfig:
    source: str  # one of KNOWN_SOURCES
    datasets: list[str]  # ml-100k, or Amazon 2023 category names
    raw_dir: str  # where downloaded raw files live (Amazon only)
    base_url: str  # Amazon 2023 download root (Amazon only)
    window_start: str | None  # ISO date, inclusive; None = no lower bound
    window_end: str | None  # ISO date, exclusive; None = no upper bound
    clean_titles: bool  # unescape HTML, collapse whitespace
    min_title_chars: int  # items whose cleaned title is shorter are dropped (counted)
    dedup: str  # "exact" (same user, item, time) or "user_item" (keep first per user-item)
    kcore: int  # 0 = off; otherwise iterative user and item k-core
    max_users: int | None  # deterministic user subsample; None = all users
    history_max: int  # longest history shown per sample
    min_history: int  # samples with a shorter history are not built (counted)
    n_candidates: int  # candidates per sample, target included
    split_ratios: list[float]  # train / valid / test shares of the time-sorted samples


@dataclass(frozen=True)
class RecBoleConfig:
    models: list[str]
    epochs: int
    hidden_size: int
    n_layers: int
    n_heads: int
    dropout: float
    learning_rate: float
    train_batch_size: int
    eval_batch_size: int
    stopping_step: int
    loss_type: str


@dataclass(frozen=True)
class EvalConfig:
    ks: list[int]
    bootstrap_reps: int
    bootstrap_seed: int
    tie_policy: str  # "expected" (mean over random tie orders) or "pessimistic"


@dataclass(frozen=True)
class ToolsConfig:
    """The seven tools of PAPER.md 1.3; output formats and sizes are ours [G]."""

    max_lines: int  # longest tool answer, in lines
    max_chars: int  # longest tool answer, in characters
    session_gap_hours: float  # a gap longer than this starts a new session
    rating_high: float  # ratings >= this are "high"
    rating_low: float  # ratings <= this are "low"; in between is "neutral"
    price_bands: list[float]  # upper bounds of the price bands used by candidates_analyze
    n_similar_items: int
    n_similar_users: int
    neighbour_recent_items: int  # recent purchases listed per similar user
    user_snapshots: int  # fixed time points at which all users' SASRec states are stored
    sasrec_model: str  # which exported RecBole model powers the collaborative tools
    # [G] candidates_analyze also lists this many candidates by popularity before now (0 = off,
    # the paper's description); written in the answer's list syntax so a small model can copy it
    popularity_order: int = 0


@dataclass(frozen=True)
class UserProfileConfig:
    """How the text behind get_user_profile is written (PAPER.md 1.3: offline, by the backbone)."""

    generator: str  # "template" (deterministic) or "llm"
    model_name_or_path: str  # used by the llm generator
    prompt_version: str  # part of the cache key; bump it when the prompt changes
    max_new_tokens: int
    batch_size: int


@dataclass(frozen=True)
class AgentConfig:
    model_name_or_path: str
    top_k: int  # length of the answer list
    max_tool_calls: int
    temperature: float
    max_new_tokens: int  # generation budget over the whole trajectory
    max_new_tokens_per_turn: int
    top_p: float
    prompt_style: str  # "react" (PAPER.md 1.3) or "apa" (RecThinker's Analyze-Plan-Act, PAPER.md 2)
    eval_instances: int | None  # test instances per agent evaluation; None = the whole test split
    eval_greedy: bool  # greedy decoding for evaluation
    rollout_batch_size: int | None  # trajectories per generate call; None = all live ones
    enable_thinking: bool | None  # [G] Qwen3 hybrid templates' switch (false: no thinking); None = pass nothing
    affinity_order: int  # [G] > 0: the user turn ends with the candidates by category affinity; 0 = off


@dataclass(frozen=True)
class WarmStartConfig:
    """Supervised warm start on scripted tool-using trajectories (RecThinker's recipe, PAPER.md 2) [G]."""

    enabled: bool
    instances: int
    steps: int
    batch_size: int
    learning_rate: float
    ppr_share: float  # share of the scripted examples in the PPR (A/B) format; 0 = ranking only [G]
    # [G] "category": one rule for every example; "mixed": each tool-using example follows one of several
    # target-blind strategies (recrepro.agent.teacher.STRATEGIES), a mixture that RL can sharpen
    teacher: str = "category"
    copy_steps: int = 0  # [G] steps of each copy-curriculum phase after the warm start (0 = none)


@dataclass(frozen=True)
class RewardConfig:
    invalid: float
    miss: float
    first_with_tool_bonus: float


@dataclass(frozen=True)
class RTAConfig:
    group_size: int
    epochs: int
    batch_size: int
    learning_rate: float
    drop_all_negative_groups: bool
    loss_type: str  # TRL GRPOConfig.loss_type: token aggregation of the loss [G]
    beta: float  # KL coefficient to the reference policy [G]
    epsilon: float  # PPO-style clipping range [G]
    max_steps: int  # optimiser steps; -1 = run the configured epochs
    train_instances: int | None  # training instances used; None = the whole training split
    max_prompt_length: int  # [G] longest rendered prompt (system, tool schemas, history, candidates) in tokens
    max_completion_length: int  # tokens over the whole multi-turn completion
    gradient_accumulation_steps: int
    use_lora: bool  # LoRA through peft instead of full fine-tuning [G]
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    logging_steps: int
    eval_every: int  # steps between H@10 / N@10 on the fixed validation slice
    eval_instances: int  # size of that validation slice
    eval_batch_size: int | None  # trajectories per generate call of that validation; None = all at once [G]
    save_steps: int
    vllm_gpu_memory_utilization: float  # GPU share vLLM colocate takes for generation [G]


@dataclass(frozen=True)
class PPRConfig:
    """Stage 2, Progressive Preference Refinement (PAPER.md 1.5); GRPO settings otherwise from ``rta``."""

    rounds: int  # mine -> train rounds; > 1 re-mines with the previous round's policy
    epochs: int
    correct_reward: float
    wrong_reward: float  # an invalid trajectory gets reward.invalid (-1), as in stage 1
    train_instances: int | None  # training instances the stage-1 policy is run on to mine pairs; None = all
    valid_instances: int | None  # validation instances mined for the held-out pairs (preference accuracy)
    batch_size: int  # pairwise prompts per optimiser step (each with rta.group_size rollouts)
    max_steps: int  # optimiser steps per round; -1 = the configured epochs


@dataclass(frozen=True)
class SFTBaselineConfig:
    """TALLRec-like supervised baseline: LoRA fine-tuning to answer the ranking directly (PAPER.md 1.6)."""

    enabled: bool
    train_instances: int | None  # seeded subset of the training split; None = all of it
    steps: int  # optimiser steps; -1 = run ``epochs`` over the subset
    epochs: int
    batch_size: int
    learning_rate: float
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    max_length: int  # tokens per example (prompt + answer); longer prompts keep their end
    max_new_tokens: int  # generation budget of the one answer turn at evaluation


@dataclass(frozen=True)
class TrainedBaselineConfig:
    """One of Table 1's trained LLM baselines (S-DPO, LLaRA, ReRe; PAPER.md 1.6): what it trains for.

    The rest of its recipe is shared with the TALLRec-like row (LoRA, batch, prompt and answer budgets
    from ``sft``; ReRe's instances per step and KL from ``rta``); each module names its paper's constants.
    """

    enabled: bool
    train_instances: int | None  # seeded subset of the training split; None = all of it
    steps: int  # optimiser steps; -1 = run ``epochs``
    epochs: int
    learning_rate: float
    group_size: int | None  # ReRe only: beams (completions) per prompt; null for S-DPO and LLaRA


SERVED_APIS = ("completions", "chat")  # the values of served.api


@dataclass(frozen=True)
class ServedConfig:
    """A served model (an OpenAI-compatible endpoint) for Table 1's LLMRank and InteRecAgent rows, which
    the paper ran on GPT-4 (PAPER.md 1.6). Off when ``base_url`` is null."""

    base_url: str | None  # e.g. http://localhost:8000/v1; null = no served model (the rows stay "not run")
    model: str | None  # the served model's name, sent with every request and shown on the rows' cards
    tokenizer: str | None  # hub id or folder of a tokenizer matching the served model (prompts are rendered here)
    api_key_env: str | None  # name of the environment variable holding the key; null = no key
    # "completions": /completions with the kit's rendered prompt and text tool calls (needs ``tokenizer``);
    # "chat": /chat/completions with messages and native tool calling (recrepro.agent.chat_client)
    api: str = "completions"


@dataclass(frozen=True)
class SweepsConfig:
    """Stage-1 (TIRR) sweeps behind Figures 4 and 5 (PAPER.md 1.6): group size G and backbone size.

    Every point is its own RTA run with these settings (the rest from ``rta``), under
    ``runs/<profile>/sweeps/<dataset>/<name>/``; nothing lands in Table 1/2.
    """

    enabled: bool
    dataset: str | None  # None = the first of data.datasets
    group_sizes: list[int]  # Figure 4's G values, on the profile's backbone
    backbones: list[str]  # Figure 5's backbones, smallest first
    backbone_group_size: int | None  # G of the Figure 5 runs; None = rta.group_size
    max_steps: int  # optimiser steps of every sweep run; -1 = rta.epochs over train_instances
    train_instances: int | None  # training instances; None = the whole training split
    batch_size: int | None  # instances per optimiser step; None = rta.batch_size
    eval_every: int  # steps between validation H@10 evaluations during a sweep run
    valid_instances: int  # validation slice of a sweep run (rta.eval_instances of the run)
    test_instances: int | None  # test instances each sweep policy is scored on; None = the whole test split
    warmstart_steps: int | None  # warm-start steps of tiny backbones other than agent.model_name_or_path;
    # None = warmstart.steps (the profile's own backbone always keeps its warm start, which is cached)
    backbone_ppr: bool  # Figure 5 points also get stage 2 (PPR) on their stage-1 policy, with these sizes


@dataclass(frozen=True)
class Profile:
    run: RunConfig
    data: DataConfig
    recbole: RecBoleConfig
    eval: EvalConfig
    tools: ToolsConfig
    user_profile: UserProfileConfig
    agent: AgentConfig
    warmstart: WarmStartConfig
    reward: RewardConfig
    rta: RTAConfig
    ppr: PPRConfig
    sft: SFTBaselineConfig
    sdpo: TrainedBaselineConfig
    llara: TrainedBaselineConfig
    rere: TrainedBaselineConfig
    served: ServedConfig
    sweeps: SweepsConfig
    source_path: str = field(default="", compare=False)

    def run_dir(self, root: Path | str = ".") -> Path:
        return Path(root) / self.run.runs_dir / self.run.name

    def results_dir(self, root: Path | str = ".") -> Path:
        """This run's tables (``runs/<name>/results``); the committed reference is ``paths.reference_dir``."""
        return self.run_dir(root) / "results"

    def figures_dir(self, root: Path | str = ".") -> Path:
        return self.run_dir(root) / "figures"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source_path")
        return out

    def section_hash(self, *sections: str) -> str:
        """SHA-256 of the named sections; stages use it to decide whether a rerun is needed."""
        full = self.to_dict()
        chosen = {name: full[name] for name in sections}
        blob = json.dumps(chosen, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()
