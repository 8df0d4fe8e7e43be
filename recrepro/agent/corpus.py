"""Training text for the tiny models' tokenizer: the kit's own prompt material, built offline.

The tiny Qwen3 models of the smoke and cpu profiles (:func:`ensure_tiny_agent_model`) need a tokenizer
whose merges fit what the agent reads and writes, so prompts stay short and CPU rollouts fast. The
corpus is: every system prompt variant, the tool schemas, and synthetic conversations over
ml-100k (RecBole's packaged copy, no download): a user turn built from a real user's history and
random candidates, assistant turns in the exact output format (think, tool calls, answers) and
the real tools' answers (``recrepro.tools`` on the ml-100k log, without the SASRec space and the
profiles, which later stages produce). The conversations are random, not a teacher's, and no
benchmark split is read; the same seed gives the same texts.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pandas as pd

from recrepro.agent.env import RecAgentEnv, tool_schemas
from recrepro.agent.parser import format_answer, format_tool_call
from recrepro.agent.prompt import (PROMPT_VERSION, STYLES, VARIANTS, AgentInstance, PromptSpec, instance_from_sample,
                                   item_views, system_prompt, user_prompt)
from recrepro.config import load_profile
from recrepro.data.movielens import load_interactions, load_items, packaged_dir
from recrepro.models import ensure_tiny_qwen3, find_tiny_qwen3
from recrepro.tools import ToolKit

CORPUS_VERSION = "v1"  # bump when the corpus recipe changes (tiny models are then rebuilt)
CHAT_OPEN, CHAT_CLOSE = "<|im_start|>", "<|im_end|>"
DEFAULT_DOCUMENTS = 400  # synthetic conversations; about 2 MB of text, trains in a second or two


def _turn(role: str, text: str) -> str:
    return f"{CHAT_OPEN}{role}\n{text}{CHAT_CLOSE}\n"


def _ml100k() -> tuple[pd.DataFrame, pd.DataFrame]:
    folder = packaged_dir()
    return load_interactions(folder), load_items(folder)


def _instance_rows(log: pd.DataFrame, item_ids: list[str], rng: random.Random, n: int) -> list[dict]:
    """Rows shaped like ``samples_<split>`` rows: a real user's history before a real event."""
    log = log.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    users = {u: g for u, g in log.groupby("user_id", sort=True) if len(g) >= 2}
    user_ids = sorted(users)
    rows = []
    for index in range(n):
        events = users[rng.choice(user_ids)]
        cut = rng.randint(1, len(events) - 1)
        past = events.iloc[max(0, cut - 10): cut]
        target_time = int(events["timestamp"].iloc[cut])
        past = past[past["timestamp"] < target_time]
        if past.empty:
            continue
        seen = set(events["item_id"])
        negatives = rng.sample([i for i in item_ids if i not in seen], 19)
        candidates = negatives + [str(events["item_id"].iloc[cut])]
        rng.shuffle(candidates)
        rows.append({"sample_id": index, "user_id": str(events["user_id"].iloc[0]), "target_time": target_time,
                     "history_items": [str(i) for i in past["item_id"]],
                     "history_times": [int(t) for t in past["timestamp"]],
                     "history_ratings": [float(r) for r in past["rating"]], "candidates": candidates})
    return rows


def _conversation(rng: random.Random, row: dict, instance: AgentInstance, spec: PromptSpec, env: RecAgentEnv,
                  schemas: dict) -> str:
    """An assistant side in the output format with random choices, answered by the real tools."""
    parts = []
    if spec.uses_tools:
        env.reset(**row)
        for _ in range(rng.randint(0, 3)):
            name = rng.choice(sorted(schemas))
            props = schemas[name]["function"]["parameters"].get("properties", {})
            args = {key: rng.choice(instance.history + instance.candidates).title for key in props}
            parts.append(_turn("assistant", f"<think>\nI should check {name.replace('_', ' ')}.\n</think>\n\n"
                                            + format_tool_call(name, args)))
            response = getattr(env, name)(**args)
            parts.append(_turn("user", f"<tool_response>\n{response}\n</tool_response>"))
    ranking = rng.sample(range(1, instance.n_candidates + 1), spec.top_k)
    parts.append(_turn("assistant", "<think>\nThe user likes these categories most.\n</think>\n\n"
                                    + format_answer(ranking)))
    return "".join(parts)


def corpus_version() -> str:
    """Recorded in a tiny model's build_info.json: the corpus recipe and the prompt texts it used."""
    return f"corpus-{CORPUS_VERSION}/prompt-{PROMPT_VERSION}"


def tokenizer_corpus(seed: int = 0, documents: int = DEFAULT_DOCUMENTS, tools: Any = None) -> list[str]:
    """The texts a tiny tokenizer is trained on (deterministic for ``seed`` and ``tools``).

    ``tools`` (a profile's ``tools`` section) decides what the tool answers in the corpus look like,
    e.g. whether candidates_analyze ends with the popularity line; None = the smoke profile's.
    """
    rng = random.Random(seed)
    schemas = tool_schemas(RecAgentEnv())
    tool_block = "\n".join(json.dumps(s, ensure_ascii=False) for s in schemas.values())
    texts = [system_prompt(PromptSpec(variant, style)) for variant in VARIANTS for style in STYLES]
    texts.append(tool_block)
    log, items = _ml100k()
    views = item_views(items)
    kit = ToolKit(log, items, tools if tools is not None else load_profile("smoke").tools, history_max=10,
                  dataset="ml-100k")
    env = RecAgentEnv(kit.bind, max_tool_calls=10)
    for row in _instance_rows(log, list(views), rng, documents):
        spec = PromptSpec(rng.choice(VARIANTS), rng.choice(STYLES))
        instance = instance_from_sample(row, views)
        system = system_prompt(spec) + ("\n\n# Tools\n<tools>\n" + tool_block + "\n</tools>" if spec.uses_tools else "")
        texts.append(_turn("system", system) + _turn("user", user_prompt(instance, spec))
                     + _conversation(rng, row, instance, spec, env, schemas))
    return texts


def find_tiny_agent_model(run_dir: Path | str, name: str, seed: int = 0, tools: Any = None) -> Path:
    """The built tiny model ``name`` under ``run_dir``; :class:`~recrepro.models.ModelNotBuilt` when absent or
    stale. Builds nothing (:func:`ensure_tiny_agent_model` builds)."""
    return find_tiny_qwen3(run_dir, name, corpus_version(), seed=seed, corpus_tools=tools)


def ensure_tiny_agent_model(run_dir: Path | str, name: str, seed: int = 0, tools: Any = None) -> Path:
    """The folder of the tiny model ``name`` (``tiny-qwen3[-s|-m|-l]``) under ``run_dir``, built first
    when absent or stale, with a tokenizer trained on :func:`tokenizer_corpus` (``seed``, ``tools``)."""
    return ensure_tiny_qwen3(run_dir, name, corpus=lambda: tokenizer_corpus(seed=seed, tools=tools),
                             corpus_version=corpus_version(), seed=seed, corpus_tools=tools)
