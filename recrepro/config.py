"""Typed configuration: profile YAML files loaded into frozen dataclasses.

A profile (``recrepro/profiles/<name>.yaml``) is the single place where every run setting lives.
Loading is strict: an unknown or misspelled key (in the file or in an override), a missing key or a value
of the wrong type raises :class:`ConfigError` naming the file and the dotted key, with the closest valid key
suggested. Command-line overrides are parsed in :mod:`recrepro.overrides`.
Values taken from the paper carry their PAPER.md mark ([P], [N], [S], [G]) in YAML comments.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

PROFILE_DIR = Path(__file__).parent / "profiles"
KNOWN_SOURCES = ("movielens", "amazon2023")


class ConfigError(ValueError):
    """A profile file is malformed; the message names the file and the key."""


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


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        inner = [opt for opt in options if opt is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (datetime.date, int, float)) and not isinstance(value, bool):
        return value.isoformat() if isinstance(value, datetime.date) else str(value)  # YAML read text as a date/number
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def _did_you_mean(key: Any, names: Sequence[str], prefix: str) -> str:
    """`` (did you mean 'prefix.name'?)`` for the valid name closest to a mistyped ``key``, else ""."""
    guess = difflib.get_close_matches(str(key), list(names), n=1)
    return f" (did you mean '{prefix}{guess[0]}'?)" if guess else ""


def _build(cls: type, mapping: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name != "source_path"]
    names = [f.name for f in fields]
    prefix = f"{where}." if where else ""
    for key in mapping:
        if key not in names:
            hint = _did_you_mean(key, names, prefix)
            raise ConfigError(f"unknown key '{prefix}{key}'{hint}; valid keys: {', '.join(names)}")
    missing = [name for name in names if name not in mapping]
    if missing:
        raise ConfigError(f"missing key(s): {', '.join(prefix + m for m in missing)}")
    values = {name: _coerce(mapping[name], hints[name], prefix + name) for name in names}
    return cls(**values)


def _validate(profile: Profile) -> None:
    data = profile.data
    if data.source not in KNOWN_SOURCES:
        raise ConfigError(f"data.source: unknown source {data.source!r}; known: {KNOWN_SOURCES}")
    if not data.datasets:
        raise ConfigError("data.datasets: at least one dataset is required")
    if data.source == "movielens" and any(d != "ml-100k" for d in data.datasets):
        raise ConfigError(f"data.datasets: the movielens source only provides 'ml-100k', got {data.datasets}")
    if data.dedup not in ("exact", "user_item"):
        raise ConfigError(f"data.dedup: expected 'exact' or 'user_item', got {data.dedup!r}")
    if len(data.split_ratios) != 3 or abs(sum(data.split_ratios) - 1.0) > 1e-9:
        raise ConfigError(f"data.split_ratios: expected three shares summing to 1, got {data.split_ratios}")
    if data.n_candidates < 2 or data.history_max < 1 or data.min_history < 1:
        raise ConfigError("data: n_candidates must be >= 2, history_max and min_history >= 1")
    if data.max_users is not None and data.max_users < 1:
        raise ConfigError(f"data.max_users: expected a positive number of users, or null for all, got {data.max_users}")
    if any(not 1 <= k <= data.n_candidates for k in profile.eval.ks):
        raise ConfigError(f"eval.ks: every k must be within 1..{data.n_candidates} (data.n_candidates), got {profile.eval.ks}")
    if profile.eval.tie_policy not in ("expected", "pessimistic"):
        raise ConfigError(f"eval.tie_policy: expected 'expected' or 'pessimistic', got {profile.eval.tie_policy!r}")
    if profile.user_profile.generator not in ("template", "llm"):
        raise ConfigError(f"user_profile.generator: expected 'template' or 'llm', got {profile.user_profile.generator!r}")
    if profile.tools.rating_low >= profile.tools.rating_high:
        raise ConfigError("tools: rating_low must be below rating_high")
    if profile.agent.prompt_style not in ("react", "apa"):
        raise ConfigError(f"agent.prompt_style: expected 'react' or 'apa', got {profile.agent.prompt_style!r}")
    if not 0 <= profile.agent.affinity_order <= data.n_candidates:
        raise ConfigError(f"agent.affinity_order: expected 0 to {data.n_candidates}, got {profile.agent.affinity_order}")
    if profile.run.device not in ("cpu", "cuda", "auto"):
        raise ConfigError(f"run.device: expected cpu, cuda or auto, got {profile.run.device!r}")
    _validate_context(profile)


# Native context windows (hub config max_position_embeddings); a backbone not listed is checked by vLLM only.
BACKBONE_CONTEXT = {"Qwen/Qwen3-4B-Instruct-2507": 262_144, "Qwen/Qwen3-1.7B": 40_960, "Qwen/Qwen3-8B": 40_960}


def model_context(profile: Profile) -> int:
    """``rta.max_prompt_length + rta.max_completion_length``: vLLM's ``max_model_len`` (else vLLM sizes its
    KV cache for the native window, 262k tokens for Qwen3-4B-Instruct-2507, and refuses to start)."""
    return profile.rta.max_prompt_length + profile.rta.max_completion_length


def _validate_context(profile: Profile) -> None:
    rta, agent = profile.rta, profile.agent
    if rta.max_prompt_length < 1 or rta.max_completion_length < 1:
        raise ConfigError("rta.max_prompt_length and rta.max_completion_length must be positive")
    if rta.eval_batch_size is not None and rta.eval_batch_size < 1:
        raise ConfigError(f"rta.eval_batch_size: expected a positive number or null, got {rta.eval_batch_size}")
    backbones = [agent.model_name_or_path, *profile.sweeps.backbones]
    for name in backbones:
        window = BACKBONE_CONTEXT.get(name)
        if window is not None and model_context(profile) > window:
            raise ConfigError(f"rta.max_prompt_length + rta.max_completion_length = {model_context(profile)} tokens "
                              f"do not fit {name}'s context of {window} tokens")


def load_profile(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Profile:
    """Load a profile by name (``smoke``, ``paper``) or by path, with optional dotted overrides.

    ``overrides`` maps dotted keys to values, e.g. ``{"data.max_users": 50}``; each key must exist.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise ConfigError(f"profile {name_or_path!r} not found at {path}; known profiles: {known}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    for dotted, value in (overrides or {}).items():
        _apply_override(raw, dotted, value, path)
    if overrides and "run.name" not in overrides and isinstance(raw.get("run"), dict) and "name" in raw["run"]:
        # A run with --set is a run of its own: its own folder and name, so its rows never join the profile's.
        raw["run"]["name"] = f"{raw['run']['name']}+{override_key(overrides)}"
    try:
        profile = _build(Profile, raw, "")
        _validate(profile)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return dataclasses.replace(profile, source_path=str(path))


def override_key(overrides: dict[str, Any]) -> str:
    """Eight hex digits naming a set of overrides (order-free): the suffix of its run's name."""
    return hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _apply_override(raw: dict[str, Any], dotted: str, value: Any, path: Path) -> None:
    """Set ``raw[a][b] = value`` for ``dotted`` = ``a.b``; a typo is named with the closest valid key."""
    *parents, leaf = dotted.split(".")
    node, prefix = raw, ""
    for part in parents:
        if not isinstance(node.get(part), dict):
            sections = [key for key, sub in node.items() if isinstance(sub, dict)]
            raise ConfigError(f"{path}: override '{dotted}': no section '{part}'{_did_you_mean(part, sections, prefix)}")
        node, prefix = node[part], f"{prefix}{part}."
    if leaf not in node:
        hint = _did_you_mean(leaf, list(node), prefix)
        raise ConfigError(f"{path}: override '{dotted}': unknown key '{leaf}'{hint}")
    node[leaf] = value
