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
from pathlib import Path
from typing import Any, Sequence

import yaml

from recrepro.config_sections import (  # the sections, one dataclass each
    SERVED_APIS,
    RunConfig,
    DataConfig,
    RecBoleConfig,
    EvalConfig,
    ToolsConfig,
    UserProfileConfig,
    AgentConfig,
    WarmStartConfig,
    RewardConfig,
    RTAConfig,
    PPRConfig,
    SFTBaselineConfig,
    TrainedBaselineConfig,
    ServedConfig,
    SweepsConfig,
    Profile,
)

PROFILE_DIR = Path(__file__).parent / "profiles"
KNOWN_SOURCES = ("movielens", "amazon2023")


class ConfigError(ValueError):
    """A profile file is malformed; the message names the file and the key."""


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
    _validate_trained_baselines(profile)
    _validate_served(profile)
    _validate_context(profile)


def _validate_trained_baselines(profile: Profile) -> None:
    for name in ("sdpo", "llara", "rere"):
        section: TrainedBaselineConfig = getattr(profile, name)
        if section.steps == 0 or section.steps < -1:
            raise ConfigError(f"{name}.steps: expected a positive number of steps, or -1 for the epochs, got {section.steps}")
        if section.steps == -1 and section.epochs < 1:
            raise ConfigError(f"{name}.epochs: expected at least 1 while {name}.steps is -1, got {section.epochs}")
        if section.train_instances is not None and section.train_instances < 1:
            raise ConfigError(f"{name}.train_instances: expected a positive number or null, got {section.train_instances}")
        if section.learning_rate <= 0:
            raise ConfigError(f"{name}.learning_rate: expected a positive rate, got {section.learning_rate}")
    if profile.sdpo.group_size is not None or profile.llara.group_size is not None:
        raise ConfigError("sdpo.group_size, llara.group_size: only ReRe samples groups; set them to null")
    if profile.rere.group_size is None or profile.rere.group_size < 2:
        raise ConfigError(f"rere.group_size: ReRe needs at least 2 beams per prompt, got {profile.rere.group_size}")


def _validate_served(profile: Profile) -> None:
    served = profile.served
    if served.api not in SERVED_APIS:
        raise ConfigError(f"served.api: expected one of {', '.join(SERVED_APIS)}, got {served.api!r}")
    if served.base_url is not None and served.api == "chat" and not served.model:
        raise ConfigError("served.model: a served model (served.base_url) needs its name")
    if served.base_url is not None and served.api == "completions" and (not served.model or not served.tokenizer):
        raise ConfigError("served.model, served.tokenizer: a served model (served.base_url) needs its name and a "
                          "matching tokenizer (prompts are rendered with it for served.api: completions)")
    if served.base_url is not None and not served.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"served.base_url: expected an http(s) URL, got {served.base_url!r}")


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


# The section dataclasses live in recrepro.config_sections; importing them from here stays supported.
__all__: Sequence[str] = (
    "PROFILE_DIR", "KNOWN_SOURCES", "BACKBONE_CONTEXT", "ConfigError", "load_profile", "model_context", "override_key",
    "RunConfig", "DataConfig", "RecBoleConfig", "EvalConfig", "ToolsConfig", "UserProfileConfig", "AgentConfig",
    "WarmStartConfig", "RewardConfig", "RTAConfig", "PPRConfig", "SFTBaselineConfig", "TrainedBaselineConfig",
    "ServedConfig", "SweepsConfig", "Profile",
)
