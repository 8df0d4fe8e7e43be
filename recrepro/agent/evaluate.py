"""Zero-shot evaluation of the agent on the frozen test lists (notebook 06, first part).

Two rows per dataset, one model, two prompts (PAPER.md 1.6: Table 2's frozen rows and Table 1's
training-free rows): ``frozen-R`` / "LLMRank-like (frozen R)" (reasoning only) and ``frozen-TIRR`` /
"InteRecAgent-like (frozen TIRR)" (the seven tools), both on our backbone rather than the paper's
GPT-4, beside the ``First ten candidates`` reference row. Greedy by default [G], with the same
environment, parser and metrics as training (DESIGN.md 2); invalid answers are misses. In the smoke
profile the numbers test the machinery and reproduce nothing.

Details (the rows, outputs, the smoke backbone): docs/internals.md, "agent/evaluate.py".
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from recrepro import paths
from recrepro.agent.card import build_card, write_eval_card
from recrepro.agent.env import RecAgentEnv
from recrepro.agent.prompt import PROMPT_VERSION, PromptSpec, build_messages, instance_from_sample, profile_spec, prompt_fingerprint
from recrepro.agent.generators import (HFGenerator, OpenAICompletionsGenerator, RolloutSettings, VLLMGenerator,
                                       vllm_available)
from recrepro.agent.rollout import AgentTask, RolloutEngine, TrajectoryRecord
from recrepro.agent.warmstart import find_warm_tiny_model
from recrepro.config import Profile
from recrepro.evaluation import evaluate_lists
from recrepro.io import write_text_atomic
from recrepro.models import is_tiny_name, load_causal_lm
from recrepro.progress import format_duration, say

FROZEN_LABELS = {  # variant -> (table 2 model name, table 1 model name)
    "r": ("frozen-R", "LLMRank-like (frozen R)"),
    "tirr": ("frozen-TIRR", "InteRecAgent-like (frozen TIRR)"),
}


def rollout_settings(profile: Profile, greedy: bool | None = None, progress: bool = True) -> RolloutSettings:
    """Generation settings from the profile; every value explicit (never the model's own config)."""
    agent = profile.agent
    greedy = agent.eval_greedy if greedy is None else greedy
    return RolloutSettings(
        do_sample=not greedy, temperature=agent.temperature, top_p=agent.top_p,
        max_new_tokens_per_turn=agent.max_new_tokens_per_turn, max_new_tokens_total=agent.max_new_tokens,
        seed=profile.run.seed, batch_size=agent.rollout_batch_size, progress=progress,
        enable_thinking=agent.enable_thinking,
    )


def eval_subset(profile: Profile, samples: pd.DataFrame) -> pd.DataFrame:
    """The test instances evaluated: all, or ``agent.eval_instances`` drawn with the run seed."""
    limit = profile.agent.eval_instances
    if limit is None or limit >= len(samples):
        return samples.reset_index(drop=True)
    chosen = samples.sample(n=int(limit), random_state=profile.run.seed)
    return chosen.sort_values("sample_id").reset_index(drop=True)


def make_tasks(samples: pd.DataFrame, views: dict, spec: PromptSpec) -> list[AgentTask]:
    """One task per sample row: the row (for the environment) and its rendered-to-be messages."""
    tasks = []
    for row in samples.to_dict("records"):
        instance = instance_from_sample(row, views)
        tasks.append(AgentTask(row=row, messages=build_messages(instance, spec), uses_tools=spec.uses_tools,
                               sample_id=instance.sample_id, n_candidates=instance.n_candidates,
                               target_index=instance.target_index))
    return tasks


@dataclass
class AgentBackend:
    """A loaded backbone: the generator the engine calls, its tokenizer and where it came from."""

    generator: Any
    tokenizer: Any
    model_path: str
    max_context_tokens: int | None

    def close(self) -> None:
        """Free the generator's engine (vLLM) before the next backend is loaded; a no-op for the others."""
        close = getattr(self.generator, "close", None)
        if close is not None:
            close()


def load_backend(profile: Profile, root: Path | str = ".", model_path: str | Path | None = None,
                 transformers_only: bool = False) -> AgentBackend:
    """The profile's agent backbone; vLLM when installed with a GPU (unless ``transformers_only``), else
    transformers."""

    if model_path is None:
        name = profile.agent.model_name_or_path
        if is_tiny_name(name):  # built by the stage that owns it (stage 1), never here
            model_path = find_warm_tiny_model(profile, root)
        else:
            model_path = name
    if not transformers_only and vllm_available() and profile.run.device != "cpu":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        return AgentBackend(VLLMGenerator.from_pretrained(str(model_path), tokenizer), tokenizer, str(model_path), None)
    loaded = load_causal_lm(model_path, device=profile.run.device)
    context = getattr(loaded.model.config, "max_position_embeddings", None)
    return AgentBackend(HFGenerator(loaded.model, loaded.tokenizer), loaded.tokenizer, str(model_path), context)


def served_cache_file(profile: Profile, root: Path | str = ".") -> Path:
    """The served model's response cache of a run: ``runs/<profile>/served/responses.jsonl``."""
    return paths.run_dir(profile, root) / "served" / "responses.jsonl"


def served_api_key(profile: Profile) -> str | None:
    """The served model's API key from ``served.api_key_env`` (None when the profile names no variable);
    a ValueError when the profile names no served model or the variable is unset."""
    import os

    served = profile.served
    if served.base_url is None:
        raise ValueError("served.base_url is null: this profile names no served model")
    key = os.environ.get(served.api_key_env) if served.api_key_env else None
    if served.api_key_env and not key:
        raise ValueError(f"served.api_key_env: the environment variable {served.api_key_env} is not set")
    return key


def served_backend(profile: Profile, root: Path | str | None = None) -> AgentBackend:
    """The profile's served model (``served`` section) through :class:`OpenAICompletionsGenerator`; prompts
    are rendered with ``served.tokenizer``, which must match the served model. With ``root``, answers are
    cached in the run folder (:func:`served_cache_file`), so a killed evaluation resumes without asking
    again what was answered; without it nothing is written."""
    from transformers import AutoTokenizer

    served = profile.served
    key = served_api_key(profile)
    tokenizer = AutoTokenizer.from_pretrained(served.tokenizer)
    cache = served_cache_file(profile, root) if root is not None else None
    generator = OpenAICompletionsGenerator(served.base_url, str(served.model), tokenizer, api_key=key, cache_path=cache)
    return AgentBackend(generator, tokenizer, f"{served.model} at {served.base_url}", None)


@dataclass
class AgentEvaluation:
    dataset: str
    model: str
    variant: str
    records: list[TrajectoryRecord]
    row: dict
    card: dict


def shown_path(model_path: str | Path, root: Path | str) -> str:
    """A model folder inside ``root`` relative to it (cards stay the same on every machine); else as given
    (a hub id is not a folder and is never rewritten)."""
    if not Path(model_path).exists():
        return str(model_path)
    try:
        return str(Path(model_path).resolve().relative_to(Path(root).resolve()))
    except (ValueError, OSError):
        return str(model_path)


def evaluate_agent(profile: Profile, root: Path | str, dataset: str, samples: pd.DataFrame, views: dict,
                   backend: AgentBackend, env_factory: Callable[[], RecAgentEnv], variant: str, model: str,
                   extra_names: Sequence[str] = (), settings: RolloutSettings | None = None, *,
                   rollout: Callable[..., list[TrajectoryRecord]] | None = None) -> AgentEvaluation:
    """Roll the agent out once per instance, score the answers, write the card; returns the rows.

    ``model`` names the row (e.g. ``frozen-TIRR``); ``extra_names`` are further names under which
    the same per-instance scores are saved (the Table 1 name of the same run). ``rollout(tasks, desc=...)``,
    one record per task in task order, replaces the rollout engine (the chat API's episodes,
    :mod:`recrepro.agent.chat_client`), so every path is scored, carded and saved by the code below. A
    generator that reports ``stats()`` (a served endpoint) has them on the card as its ``endpoint`` entry.
    """

    spec = profile_spec(profile.agent, variant)
    settings = settings or rollout_settings(profile)
    if rollout is None:  # the rollout engine, one trajectory per instance (evaluation draws one)
        engine = RolloutEngine(backend.generator, backend.tokenizer, env_factory, settings, top_k=profile.agent.top_k,
                               max_tool_calls=profile.agent.max_tool_calls,
                               max_context_tokens=backend.max_context_tokens)
        rollout = partial(engine.run, n_samples=1)
    began = time.perf_counter()
    records = rollout(make_tasks(samples, views, spec), desc=f"{dataset} {model}")
    wall = time.perf_counter() - began
    predictions = [list(r.answer) if r.answer else None for r in records]
    row = evaluate_lists(profile, dataset, model, samples, predictions, root)
    for name in extra_names:
        evaluate_lists(profile, dataset, name, samples, predictions, root)
    card = build_card(records, dataset=dataset, model=model, variant=variant, profile=profile.run.name,
                      n_candidates=profile.data.n_candidates, top_k=profile.agent.top_k,
                      max_tool_calls=profile.agent.max_tool_calls, settings=asdict(settings),
                      model_path=shown_path(backend.model_path, root), wall_s_total=wall, prompt_version=PROMPT_VERSION,
                      prompt_fingerprint=prompt_fingerprint())
    endpoint = getattr(backend.generator, "stats", None)
    if endpoint is not None:  # requests given up are scored truncated; the card counts them
        card["endpoint"] = endpoint()
    write_eval_card(profile.results_dir(root), card)
    save_trajectories(paths.trajectories_file(profile, dataset, model, root), records)
    if settings.progress:
        scores = ", ".join(f"{m} {row[m]:.3f}" for m in ("H@1", "H@10") if m in row)
        say(f"{dataset} {model}: {len(records)} trajectories in {format_duration(wall)}; "
            f"valid answers {card['valid_share']:.0%}" + (f"; {scores}" if scores else ""))
    return AgentEvaluation(dataset, model, variant, records, row, card)


def save_trajectories(path: Path, records: Sequence[TrajectoryRecord]) -> Path:
    """One JSON line per trajectory (messages, answer, verdict, tool calls, costs; no token ids)."""
    skip = {"prompt_ids", "completion_ids", "completion_mask"}
    lines = []
    for record in records:
        data = {k: v for k, v in asdict(record).items() if k not in skip}
        lines.append(json.dumps(data, ensure_ascii=False, default=str))
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
