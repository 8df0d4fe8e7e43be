"""Writing user profiles: what one is written from (:class:`ProfileRequest`) and who writes it.

A request holds the user's interactions dated strictly before the cut-off (the instance's target
time), at most the last :data:`PROFILE_HISTORY_MAX` of them [G]. Two writers behind one interface
(``name``, ``version``, ``model``, ``batch_size``, ``generate(requests) -> texts``):

* :class:`TemplateProfileGenerator`: a deterministic summary (favourite categories, rating habits,
  recency); the tiny profiles' choice and the fallback when no LLM is at hand;
* :class:`LLMProfileGenerator`: a causal LM (any hub id or local path, loaded through
  :func:`recrepro.models.load_causal_lm`) prompted with ``recrepro/prompts/user_profile_<version>.txt``;
  greedy decoding, batched with left padding; vLLM when it is installed and a GPU is present.

The cache, the store the tool reads and the stage live in :mod:`recrepro.tools.profiles`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from recrepro.data.labels import catalogue_labels
from recrepro.models import load_causal_lm
from recrepro.tools import render

PROFILE_HISTORY_MAX = 30  # [G] most recent items a profile is written from (keeps LLM prompts short)
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)


# ------------------------------------------------------------------------------ requests


@dataclass(frozen=True)
class HistoryEntry:
    title: str
    labels: tuple[str, ...]
    rating: float
    time: int


@dataclass(frozen=True)
class ProfileRequest:
    """What a generator may see for one key: entries dated strictly before ``cutoff_time``, oldest first."""

    user_id: str
    cutoff_time: int
    entries: tuple[HistoryEntry, ...]

    @property
    def last_time(self) -> int:
        return self.entries[-1].time if self.entries else -1


class HistoryIndex:
    """The interaction log per user, sorted by time, plus catalogue text; builds requests fast."""

    def __init__(self, interactions: pd.DataFrame, items: pd.DataFrame, max_items: int = PROFILE_HISTORY_MAX) -> None:
        self.max_items = max_items
        _, shown, _ = catalogue_labels(items["categories"])
        self.item_text = {str(i): (" ".join(str(t).split()), labels)
                          for i, t, labels in zip(items["item_id"], items["title"], shown)}
        log = interactions.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
        users = log["user_id"].astype(str).to_numpy()
        bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True]) if len(users) else np.array([0])
        self.span = {users[lo]: (int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])}
        self.items = log["item_id"].astype(str).to_numpy()
        self.times = log["timestamp"].to_numpy(dtype=np.int64)
        self.ratings = log["rating"].to_numpy(dtype=np.float64)

    def request(self, user_id: str, cutoff_time: int) -> ProfileRequest:
        lo, hi = self.span.get(str(user_id), (0, 0))
        end = lo + int(np.searchsorted(self.times[lo:hi], cutoff_time, side="left"))
        start = max(lo, end - self.max_items)
        entries = []
        for k in range(start, end):
            title, labels = self.item_text.get(self.items[k], (self.items[k], ()))
            entries.append(HistoryEntry(title, labels, float(self.ratings[k]), int(self.times[k])))
        return ProfileRequest(str(user_id), int(cutoff_time), tuple(entries))

    def requests(self, keys: Iterable[tuple[str, int]]) -> list[ProfileRequest]:
        return [self.request(u, t) for u, t in keys]


def instance_keys(samples: Mapping[str, pd.DataFrame] | pd.DataFrame) -> list[tuple[str, int]]:
    """Distinct (user_id, target_time) over the given sample frames, sorted."""
    frames = [samples] if isinstance(samples, pd.DataFrame) else list(samples.values())
    keys = {(str(u), int(t)) for f in frames for u, t in zip(f["user_id"], f["target_time"])}
    return sorted(keys)


# ------------------------------------------------------------------------------ generators


class ProfileGenerator(Protocol):
    name: str  # "template" or "llm"
    version: str  # the profile's prompt_version
    model: str  # "" for the template; the model name or path for the LLM
    batch_size: int

    def generate(self, requests: Sequence[ProfileRequest]) -> list[str]:
        ...


class TemplateProfileGenerator:
    """Deterministic profile text from counts; no model, no randomness."""

    name = "template"
    model = ""

    def __init__(self, version: str = "v1", rating_high: float = 4.0, rating_low: float = 2.0,
                 batch_size: int = 4096) -> None:
        self.version = version
        self.rating_high = rating_high
        self.rating_low = rating_low
        self.batch_size = batch_size

    def generate(self, requests: Sequence[ProfileRequest]) -> list[str]:
        return [self.text(r) for r in requests]

    def text(self, request: ProfileRequest) -> str:
        entries = request.entries
        if not entries:
            return "No interactions before this time."
        lines = [f"Based on {len(entries)} interaction(s) from {render.fmt_date(entries[0].time)} to "
                 f"{render.fmt_date(entries[-1].time)} (last one {render.fmt_ago(request.cutoff_time - entries[-1].time)} "
                 "before the cut-off)."]
        labels = Counter(label for e in entries for label in e.labels)
        if labels:
            top = sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))[:4]
            lines.append("Favourite categories: " + ", ".join(f"{label} ({n})" for label, n in top) + ".")
        ratings = [e.rating for e in entries if e.rating == e.rating]
        if ratings:
            high = sum(r >= self.rating_high for r in ratings)
            low = sum(r <= self.rating_low for r in ratings)
            lines.append(f"Rating habits: mean {sum(ratings) / len(ratings):.1f}; {high} high "
                         f"(>= {render.fmt_rating(self.rating_high)}), {len(ratings) - high - low} neutral, "
                         f"{low} low (<= {render.fmt_rating(self.rating_low)}).")
            # Best and worst: by rating, the more recent first among equals.
            ranked = sorted(range(len(entries)), key=lambda i: (-entries[i].rating, -i))
            lines.append("Rated highest: " + ", ".join(render.quoted(entries[i].title) for i in ranked[:3]) + ".")
            worst = [i for i in reversed(ranked) if entries[i].rating <= self.rating_low][:2]
            if worst:
                lines.append("Rated lowest: " + ", ".join(render.quoted(entries[i].title) for i in worst) + ".")
        recent = entries[-3:][::-1]
        lines.append("Most recent: " + ", ".join(render.quoted(e.title) for e in recent) + ".")
        recent_labels = Counter(label for e in entries[-5:] for label in e.labels)
        if recent_labels:
            lines.append(f"Categories of the last {min(5, len(entries))} item(s): {render.fmt_counts(recent_labels, 4)}.")
        return "\n".join(lines)


def prompt_template(version: str) -> tuple[str, Template]:
    """(system message, user-message template) of ``recrepro/prompts/user_profile_<version>.txt``."""
    name = f"user_profile_{version}.txt"
    path = resources.files("recrepro").joinpath("prompts", name)
    if not path.is_file():
        raise ValueError(f"user_profile.prompt_version {version!r}: no prompt file recrepro/prompts/{name}")
    system, _, user = path.read_text(encoding="utf-8").partition("\n---\n")
    return system.strip(), Template(user.strip())


def history_lines(request: ProfileRequest) -> str:
    return "\n".join(f"{render.fmt_date(e.time)} | {render.shorten(e.title, 120)} | "
                     f"{', '.join(e.labels) or 'no category'} | rated {render.fmt_rating(e.rating)}"
                     for e in request.entries)


class LLMProfileGenerator:
    """Profiles written by a causal LM; greedy decoding, so a model and prompt give one text per key."""

    name = "llm"

    def __init__(self, model_name_or_path: str | Path, version: str = "v1", max_new_tokens: int = 256,
                 batch_size: int = 16, device: str = "auto", backend: str = "auto", loaded: Any = None,
                 name: str | None = None) -> None:
        self.path = str(model_name_or_path)  # what is loaded
        self.model = name or self.path  # what the profile cache key records (a tiny model's name, not its folder)
        self.version = version
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.device = device
        self.backend = backend
        self.system, self.template = prompt_template(version)
        self._loaded = loaded  # a recrepro.models.LoadedModel, or the vLLM engine; loaded on first use
        self.calls = 0  # generate() calls that reached the model (tests check caching with it)

    def messages(self, request: ProfileRequest) -> list[dict[str, str]]:
        user = self.template.substitute(n_items=len(request.entries), history=history_lines(request))
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def _use_vllm(self) -> bool:
        if self.backend == "transformers":
            return False
        import importlib.util

        import torch

        available = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
        if self.backend == "vllm" and not available:
            raise RuntimeError("user-profile backend 'vllm' requested but vllm or a GPU is missing")
        return available

    def _load(self) -> Any:
        if self._loaded is None:
            if self._use_vllm():
                from vllm import LLM  # guarded: only with vllm installed and a GPU

                self._loaded = LLM(model=self.path, seed=0)
            else:
                self._loaded = load_causal_lm(self.path, device=self.device, padding_side="left")
        return self._loaded

    def render(self, request: ProfileRequest, tokenizer: Any) -> str:
        kwargs = {"tokenize": False, "add_generation_prompt": True}
        try:
            # Qwen3 hybrid templates honour enable_thinking; a profile needs no reasoning trace.
            return tokenizer.apply_chat_template(self.messages(request), enable_thinking=False, **kwargs)
        except (TypeError, ValueError):
            return tokenizer.apply_chat_template(self.messages(request), **kwargs)

    def generate(self, requests: Sequence[ProfileRequest]) -> list[str]:
        if not requests:
            return []
        self.calls += 1
        engine = self._load()
        if hasattr(engine, "model") and hasattr(engine, "tokenizer"):
            return self._generate_transformers(engine, requests)
        return self._generate_vllm(engine, requests)

    def _generate_transformers(self, loaded: Any, requests: Sequence[ProfileRequest]) -> list[str]:
        import torch

        tokenizer, model = loaded.tokenizer, loaded.model
        tokenizer.padding_side = "left"  # new tokens must follow every prompt directly
        prompts = [self.render(r, tokenizer) for r in requests]
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = tokenizer(prompts[start:start + self.batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(loaded.device)
            with torch.inference_mode():
                generated = model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False,
                                           pad_token_id=tokenizer.pad_token_id)
            new_tokens = generated[:, batch["input_ids"].shape[1]:]
            out += [clean_generation(t) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        return out

    def _generate_vllm(self, engine: Any, requests: Sequence[ProfileRequest]) -> list[str]:
        from vllm import SamplingParams

        tokenizer = engine.get_tokenizer()
        prompts = [self.render(r, tokenizer) for r in requests]
        params = SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens)
        return [clean_generation(o.outputs[0].text) for o in engine.generate(prompts, params, use_tqdm=False)]


def clean_generation(text: str) -> str:
    """Drop a reasoning block and surrounding whitespace from a generated profile."""
    return _THINK.sub("", text).strip()
