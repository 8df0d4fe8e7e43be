"""User profiles behind ``get_user_profile`` (notebook 03), written offline and cached on disk.

PAPER.md 1.3 [N]: the profile is "a text written offline by the backbone LLM from the history before
the sample's time". One profile per benchmark instance, keyed by (user, cut-off time = the
instance's target time), written only from the user's interactions dated strictly before the
cut-off (at most the last :data:`~recrepro.tools.profile_writers.PROFILE_HISTORY_MAX` of them [G]).

The writers (template or LLM) and the requests they write from are in
:mod:`recrepro.tools.profile_writers`.

Cache: ``runs/<profile>/user_profiles/<dataset>/<generator>-<prompt_version>.parquet``, one row per
key (user_id, cutoff_time, generator, prompt_version, model), rewritten atomically every few batches
so an interrupted run resumes; rows already present are never generated again. ``prompt_version``
versions both the LLM prompt and the template's wording: bump it when either changes.

Missing profiles: ``get_user_profile`` answers that no profile was written (our choice [G]); it
never generates on the fly, so the agent's evidence is exactly what this stage recorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from recrepro import paths
from recrepro.data.pipeline import load_benchmark
from recrepro.io import read_parquet, write_csv_split, write_parquet
from recrepro.models import is_tiny_name
from recrepro.tools.profile_writers import (HistoryIndex, LLMProfileGenerator, ProfileGenerator, ProfileRequest,
                                             TemplateProfileGenerator, instance_keys)

if TYPE_CHECKING:
    from recrepro.config import Profile

FLUSH_EVERY_BATCHES = 64  # cache rewrite interval: bounds lost work after an interruption
CACHE_COLUMNS: tuple[str, ...] = ("user_id", "cutoff_time", "generator", "prompt_version", "model",
                                  "n_history", "last_time", "profile")
KEY_COLUMNS: tuple[str, ...] = ("user_id", "cutoff_time", "generator", "prompt_version", "model")


# ------------------------------------------------------------------------------ cache and store


@dataclass(frozen=True)
class ProfileRecord:
    text: str
    generator: str
    prompt_version: str
    model: str
    n_history: int
    last_time: int  # time of the latest interaction the profile was written from (-1: none)


class ProfileStore:
    """Read-only lookup (user_id, cutoff_time) -> :class:`ProfileRecord` used by get_user_profile."""

    def __init__(self, records: Mapping[tuple[str, int], ProfileRecord] | None = None) -> None:
        self._records = dict(records or {})

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> "ProfileStore":
        records = {
            (str(r["user_id"]), int(r["cutoff_time"])): ProfileRecord(
                str(r["profile"]), str(r["generator"]), str(r["prompt_version"]), str(r["model"]),
                int(r["n_history"]), int(r["last_time"]))
            for r in frame.to_dict("records")
        }
        return cls(records)

    def get(self, user_id: str, cutoff_time: int) -> ProfileRecord | None:
        return self._records.get((str(user_id), int(cutoff_time)))

    def __len__(self) -> int:
        return len(self._records)


class ProfileCache:
    """The parquet file of one (dataset, generator, prompt version); resumable, atomically rewritten."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if self.path.is_file():
            frame = read_parquet(self.path)
            missing = set(CACHE_COLUMNS) - set(frame.columns)
            if missing:
                raise ValueError(f"{self.path}: profile cache lacks column(s) {sorted(missing)}")
            self.rows = {self._key(r): r for r in frame[list(CACHE_COLUMNS)].to_dict("records")}
        else:
            self.rows = {}

    @staticmethod
    def _key(row: Mapping[str, Any]) -> tuple:
        return tuple(str(row[c]) if c != "cutoff_time" else int(row[c]) for c in KEY_COLUMNS)

    @staticmethod
    def key_of(request: ProfileRequest, generator: ProfileGenerator) -> tuple:
        return (request.user_id, request.cutoff_time, generator.name, generator.version, generator.model)

    def has(self, request: ProfileRequest, generator: ProfileGenerator) -> bool:
        return self.key_of(request, generator) in self.rows

    def add(self, request: ProfileRequest, generator: ProfileGenerator, text: str) -> None:
        self.rows[self.key_of(request, generator)] = {
            "user_id": request.user_id, "cutoff_time": request.cutoff_time, "generator": generator.name,
            "prompt_version": generator.version, "model": generator.model, "n_history": len(request.entries),
            "last_time": request.last_time, "profile": text,
        }

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame([self.rows[k] for k in sorted(self.rows)], columns=list(CACHE_COLUMNS))
        return frame.astype({"cutoff_time": "int64", "n_history": "int64", "last_time": "int64"})

    def save(self) -> None:
        write_parquet(self.frame(), self.path)

    def store(self, generator: str, version: str, model: str) -> ProfileStore:
        frame = self.frame()
        chosen = frame[(frame["generator"] == generator) & (frame["prompt_version"] == version)
                       & (frame["model"] == model)]
        return ProfileStore.from_frame(chosen)


def generate_profiles(requests: Sequence[ProfileRequest], generator: ProfileGenerator, cache: ProfileCache,
                      progress: bool = True, desc: str = "user profiles") -> dict[str, int]:
    """Generate what the cache lacks (longest histories first, to batch similar lengths); save as it goes."""
    from tqdm import tqdm  # the text bar: tqdm.auto needs ipywidgets, which the kit does not install

    todo = [r for r in requests if not cache.has(r, generator)]
    todo.sort(key=lambda r: (-len(r.entries), r.user_id, r.cutoff_time))
    with tqdm(total=len(todo), desc=desc, disable=not progress or not todo, unit="profile") as bar:
        for number, start in enumerate(range(0, len(todo), generator.batch_size), start=1):
            batch = todo[start:start + generator.batch_size]
            for request, text in zip(batch, generator.generate(batch)):
                cache.add(request, generator, text)
            bar.update(len(batch))
            if number % FLUSH_EVERY_BATCHES == 0:
                cache.save()
    if todo or not cache.path.is_file():
        cache.save()
    return {"requested": len(requests), "generated": len(todo), "reused": len(requests) - len(todo)}


# ------------------------------------------------------------------------------ stage function


def cache_path(profile: "Profile", dataset: str, root: Path | str = ".", generator: str | None = None,
               version: str | None = None) -> Path:
    generator = generator or profile.user_profile.generator
    version = version or profile.user_profile.prompt_version
    return paths.user_profiles_file(profile, dataset, generator, version, root)


def _model_name(profile: "Profile") -> str:
    return profile.user_profile.model_name_or_path if profile.user_profile.generator == "llm" else ""


def load_profile_store(profile: "Profile", dataset: str, root: Path | str = ".") -> ProfileStore:
    """The profiles this profile's settings wrote for ``dataset``; empty when the stage has not run."""
    path = cache_path(profile, dataset, root)
    if not path.is_file():
        return ProfileStore()
    cfg = profile.user_profile
    return ProfileCache(path).store(cfg.generator, cfg.prompt_version, _model_name(profile))


def make_generator(profile: "Profile", root: Path | str = ".",
                   tiny_model: Callable[[str], Path] | None = None) -> ProfileGenerator:
    """The profile writer of ``user_profile``: the template, or an LLM by name or folder.

    A tiny offline model (DESIGN.md 4) is built on demand by ``tiny_model`` (name -> folder; the
    stage passes the agent's builder, whose tokenizer follows the agent corpus); the cache key keeps
    its name.
    """
    cfg = profile.user_profile
    if cfg.generator == "template":
        return TemplateProfileGenerator(cfg.prompt_version, profile.tools.rating_high, profile.tools.rating_low)
    model = cfg.model_name_or_path
    if is_tiny_name(model):
        if tiny_model is None:
            raise ValueError(f"user_profile.model_name_or_path {model!r} is a tiny offline model; pass tiny_model "
                             "(recrepro.stages.run_user_profiles does) to build it")
        return LLMProfileGenerator(tiny_model(model), cfg.prompt_version, cfg.max_new_tokens, cfg.batch_size,
                                   profile.run.device, name=model)
    return LLMProfileGenerator(model, cfg.prompt_version, cfg.max_new_tokens, cfg.batch_size, profile.run.device)


def write_user_profiles(profile: "Profile", root: Path | str = ".", generator: ProfileGenerator | None = None,
                        progress: bool = True, tiny_model: Callable[[str], Path] | None = None) -> pd.DataFrame:
    """Write a profile for every instance of every split of every dataset; returns a summary table.

    Also writes it to the run's ``results/user_profiles.csv`` (cache counts and seconds, which depend on
    what an earlier run left, to ``user_profiles_timings.csv``).
    """
    root = Path(root)
    rows = []
    for dataset in profile.data.datasets:
        began = time.perf_counter()
        bench = load_benchmark(profile, dataset, root)
        gen = generator or make_generator(profile, root, tiny_model)
        requests = HistoryIndex(bench.interactions, bench.items).requests(instance_keys(bench.samples))
        path = cache_path(profile, dataset, root, gen.name, gen.version)
        cache = ProfileCache(path)
        counts = generate_profiles(requests, gen, cache, progress=progress, desc=f"profiles {dataset}")
        texts = [cache.rows[ProfileCache.key_of(r, gen)]["profile"] for r in requests]
        rows.append({
            "dataset": dataset, "generator": gen.name, "prompt_version": gen.version, "model": gen.model,
            "instances": int(sum(len(f) for f in bench.samples.values())), "profiles": counts["requested"],
            "generated": counts["generated"], "reused": counts["reused"],
            "mean_chars": round(float(np.mean([len(t) for t in texts])) if texts else 0.0, 1),
            "seconds": round(time.perf_counter() - began, 2),
            "cache": str(path.relative_to(root)) if path.is_relative_to(root) else str(path),
        })
    table = pd.DataFrame(rows)
    write_csv_split(profile.results_dir(root) / "user_profiles.csv", table, ["generated", "reused", "seconds"],
                    ["dataset", "generator"])
    return table
