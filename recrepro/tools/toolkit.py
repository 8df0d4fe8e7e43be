"""Indexes built once per dataset (:class:`ToolKit`) and tools bound to one instance (:class:`InstanceTools`).

Use::

    kit = ToolKit.from_benchmark(bench, profile, root)        # once per dataset
    kit.prepare(kit.instances(bench.samples["test"]))        # optional: batch the slow part
    tools = kit.bind(Instance.from_row(row))                 # once per rollout
    tools.item_info_search(item_name="Heat (1995)")          # -> text, as TRL calls tools
    tools.call("item_info_search", {"item_name": "Heat"})    # -> ToolResult(text, ok, error_kind, latency_s)

No leakage (DESIGN.md 2): an :class:`Instance` carries no target; every statistic is computed from
interactions dated strictly before ``instance.target_time`` (per-item and per-user arrays sorted by
time and cut with ``searchsorted``); user neighbours come from snapshots dated at or before it;
profiles are looked up by (user, target time) and were written from earlier interactions only. The
embedding space is fitted on the training split by notebook 02; for training instances the
collaborative tools therefore see a model that was fitted on later training data too (the paper's
setting; the leakage tests exempt them there).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from recrepro import paths
from recrepro.config import ToolsConfig
from recrepro.data.labels import ROOT_LABEL_SHARE, catalogue_labels
from recrepro.tools import render
from recrepro.tools.base import RECENT_DAYS, Instance, ItemStats, Neighbour, SimilarUsers, ToolError, ToolResult
from recrepro.tools.profiles import ProfileStore, load_profile_store
from recrepro.tools.registry import TOOLS, ToolMethods, tool_schemas, validate_arguments
from recrepro.tools.resolve import NotFound, Resolution, TitleResolver
from recrepro.tools.space import (EmbeddingSpace, UserSnapshots, build_user_snapshots, encode_batched, item_neighbours,
                                  load_embedding_space, normalize_rows, snapshot_grid, top_k_vector)

if TYPE_CHECKING:
    from recrepro.config import Profile
    from recrepro.data.pipeline import Benchmark


def price_band_names(bands: Sequence[float]) -> list[str]:
    """Names of the bands bounded above by ``bands`` (inclusive), then the open top band."""
    names, lower = [], None
    for upper in bands:
        names.append(f"<={render.fmt_price(upper)}" if lower is None else
                     f"{render.fmt_price(lower)}-{render.fmt_price(upper)}")
        lower = upper
    names.append(f">{render.fmt_price(bands[-1])}" if bands else "any")
    return names


class ToolKit:
    """Everything the tools look up, built once per dataset from the log, the catalogue and a space.

    ``interactions`` may span all splits: every query cuts it at the instance time. ``space`` must
    come from a model fitted on the training split; ``snapshot_times`` are required with a space
    and must not depend on the log (use :func:`~recrepro.tools.space.snapshot_grid` on the
    benchmark's target times).
    """

    def __init__(self, interactions: pd.DataFrame, items: pd.DataFrame, config: ToolsConfig, history_max: int,
                 *, space: EmbeddingSpace | None = None, snapshot_times: Sequence[int] | np.ndarray | None = None,
                 profiles: "ProfileStore | None" = None, dataset: str = "",
                 root_label_share: float = ROOT_LABEL_SHARE) -> None:
        self.config = config
        self.history_max = int(history_max)
        self.dataset = dataset
        self.profiles = profiles
        self._build_catalogue(items, root_label_share)
        self._build_log(interactions)
        self.space = space
        self._user_cache: dict[tuple, SimilarUsers] = {}
        self._short_titles: dict[tuple[int, int], str] = {}
        self._query_cache: dict[tuple[str, ...], np.ndarray | None] = {}
        if space is not None:
            if snapshot_times is None:
                raise ValueError("snapshot_times are required with an embedding space (see snapshot_grid)")
            self._build_space(space, np.asarray(snapshot_times, dtype=np.int64))

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_benchmark(cls, bench: "Benchmark", profile: "Profile", root: Path | str = ".", *,
                       space: EmbeddingSpace | None | str = "auto", profiles: "ProfileStore | None | str" = "auto",
                       device: str = "cpu") -> "ToolKit":
        """A ToolKit for one dataset of a profile's run.

        ``space="auto"`` loads ``runs/<profile>/models/<dataset>/<tools.sasrec_model>/`` when notebook
        02 wrote it (else the collaborative tools say the model is unavailable); ``profiles="auto"``
        loads the user-profile cache of notebook 03 (else get_user_profile says none was written).
        """

        cfg = profile.tools
        if isinstance(space, str):
            space = cls.load_space(bench, profile, root, device)
        if isinstance(profiles, str):
            profiles = load_profile_store(profile, bench.name, root)
        target_times = np.concatenate([f["target_time"].to_numpy() for f in bench.samples.values()])
        return cls(bench.interactions, bench.items, cfg, profile.data.history_max, space=space,
                   snapshot_times=snapshot_grid(target_times, cfg.user_snapshots), profiles=profiles,
                   dataset=bench.name)

    @staticmethod
    def load_space(bench: "Benchmark", profile: "Profile", root: Path | str = ".",
                   device: str = "cpu") -> EmbeddingSpace | None:
        """The SASRec space notebook 02 exported for ``bench`` (``tools.sasrec_model``), or None when absent."""
        export = paths.classic_models_dir(profile, bench.name, root) / profile.tools.sasrec_model
        return load_embedding_space(export, device=device) if (export / "model_config.json").is_file() else None

    def _build_catalogue(self, items: pd.DataFrame, root_label_share: float) -> None:
        self.item_ids: list[str] = [str(i) for i in items["item_id"]]
        self.row_of: dict[str, int] = {item: row for row, item in enumerate(self.item_ids)}
        if len(self.row_of) != len(self.item_ids):
            raise ValueError("items: item_id values are not unique")
        self.titles: list[str] = [" ".join(str(t).split()) for t in items["title"]]
        self.labels, self.shown, self.root_labels = catalogue_labels(items["categories"], root_label_share)
        self.price = pd.to_numeric(items["price"], errors="coerce").to_numpy(dtype=np.float64)
        self.avg_rating = pd.to_numeric(items["avg_rating"], errors="coerce").to_numpy(dtype=np.float64)
        self.rating_count = pd.to_numeric(items["rating_count"], errors="coerce").to_numpy(dtype=np.float64)
        self.has_prices = bool(np.isfinite(self.price).any())
        self.resolver = TitleResolver(self.titles)
        # Strings every answer repeats, made once: quoted list titles and price-band names.
        self.list_titles = [render.quoted(t) for t in self.titles]
        self.band_names = price_band_names(self.config.price_bands)
        # Band index per row (len(band_names) = unknown price) and its name (None = unknown).
        self.price_band_index = [len(self.band_names) if p != p else int(np.searchsorted(self.config.price_bands, p))
                                 for p in self.price]
        self.price_band = [self.band_names[b] if b < len(self.band_names) else None for b in self.price_band_index]

    def _build_log(self, interactions: pd.DataFrame) -> None:
        item_rows = interactions["item_id"].astype(str).map(self.row_of)
        if item_rows.isna().any():
            missing = interactions["item_id"][item_rows.isna()].iloc[0]
            raise ValueError(f"interactions: item {missing!r} is not in the items table")
        rows = item_rows.to_numpy(dtype=np.int64)
        times = interactions["timestamp"].to_numpy(dtype=np.int64)
        ratings = interactions["rating"].to_numpy(dtype=np.float64)
        users = interactions["user_id"].astype(str).to_numpy()
        n_items = len(self.item_ids)

        # Per item: timestamps ascending, with prefix sums of ratings for O(log n) means before t.
        order = np.lexsort((times, rows))
        self.item_ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_items))])
        self.item_times = times[order]
        valid = np.isfinite(ratings[order])
        self.item_rating_sum = np.concatenate([[0.0], np.cumsum(np.where(valid, ratings[order], 0.0))])
        self.item_rating_n = np.concatenate([[0], np.cumsum(valid.astype(np.int64))])

        # Per user: items in time order (ties by item id, as the samples order them).
        self.user_ids: list[str] = sorted(set(users.tolist()))
        self.user_row: dict[str, int] = {u: i for i, u in enumerate(self.user_ids)}
        user_rows = np.array([self.user_row[u] for u in users], dtype=np.int64)
        item_keys = np.array(self.item_ids, dtype=object)[rows] if len(rows) else np.zeros(0, dtype=object)
        order = np.lexsort((item_keys.astype(str), times, user_rows)) if len(rows) else np.zeros(0, dtype=np.int64)
        self.user_ptr = np.concatenate([[0], np.cumsum(np.bincount(user_rows, minlength=len(self.user_ids)))])
        self.user_items = rows[order].astype(np.int32)
        self.user_times = times[order]

    def _build_space(self, space: EmbeddingSpace, snapshot_times: np.ndarray) -> None:
        # Only items that are both in the catalogue and in the model take part.
        pairs = [(self.row_of[i], s) for s, i in enumerate(space.item_ids) if i in self.row_of]
        self.space_rows = np.array([s for _, s in pairs], dtype=np.int64)
        self.space_catalogue = np.array([c for c, _ in pairs], dtype=np.int64)  # space-subset row -> catalogue row
        vectors = space.item_vectors[self.space_rows] if len(pairs) else np.zeros((0, space.item_vectors.shape[1]))
        _, nonzero = normalize_rows(vectors)
        self.space_index = np.full(len(self.item_ids), -1, dtype=np.int64)  # catalogue row -> subset row
        self.space_index[self.space_catalogue[nonzero]] = np.flatnonzero(nonzero)
        self.item_nbrs = item_neighbours(vectors, self.config.n_similar_items)
        self.snapshots: UserSnapshots = build_user_snapshots(
            space, snapshot_times, self.user_ptr, self.user_items, self.user_times, self.item_ids, self.history_max)

    # ------------------------------------------------------------------ public API

    @staticmethod
    def schemas() -> list[dict[str, Any]]:
        return tool_schemas()

    def instances(self, samples: pd.DataFrame) -> list[Instance]:
        return [Instance.from_row(row) for row in samples.to_dict("records")]

    def bind(self, instance: Instance | Mapping[str, Any]) -> "InstanceTools":
        if not isinstance(instance, Instance):
            instance = Instance.from_row(instance)
        return InstanceTools(self, instance)

    def short_title(self, row: int, limit: int) -> str:
        """The quoted title cut to ``limit`` characters, memoised (candidates_analyze asks repeatedly)."""
        key = (row, limit)
        text = self._short_titles.get(key)
        if text is None:
            title = self.titles[row]  # whitespace already collapsed at build time
            text = f'"{title}"' if len(title) <= limit else f'"{title[:limit - 3].rstrip()}..."'
            self._short_titles[key] = text
        return text

    def item_stats(self, row: int, t: int) -> ItemStats:
        lo, hi = int(self.item_ptr[row]), int(self.item_ptr[row + 1])
        times = self.item_times[lo:hi]
        n_before = int(np.searchsorted(times, t, side="left"))
        n_recent = n_before - int(np.searchsorted(times, t - RECENT_DAYS * render.SECONDS_PER_DAY, side="left"))
        n_rated = int(self.item_rating_n[lo + n_before] - self.item_rating_n[lo])
        mean = None
        if n_rated:
            mean = float(self.item_rating_sum[lo + n_before] - self.item_rating_sum[lo]) / n_rated
        return ItemStats(n_before, n_recent, n_rated, mean)

    def user_items_before(self, user_row: int, t: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """The user's last ``limit`` (item rows, times) dated strictly before ``t``, most recent first."""
        lo, hi = int(self.user_ptr[user_row]), int(self.user_ptr[user_row + 1])
        end = lo + int(np.searchsorted(self.user_times[lo:hi], t, side="left"))
        start = max(lo, end - limit)
        return self.user_items[start:end][::-1], self.user_times[start:end][::-1]

    def similar_item_rows(self, row: int) -> list[tuple[int, float]] | None:
        """Nearest catalogue rows to ``row`` with cosines; None when the model does not know the item."""
        if self.space is None or self.space_index[row] < 0:
            return None
        sub = int(self.space_index[row])
        found = self.item_nbrs.rows[sub]
        return [(int(self.space_catalogue[r]), float(s)) for r, s in zip(found, self.item_nbrs.sims[sub]) if r >= 0]

    def similar_users(self, instance: Instance) -> SimilarUsers:
        """Nearest users to the instance's history at the latest snapshot at or before its time (cached)."""
        cached = self._user_cache.get(instance.key)
        if cached is None:
            cached = self._similar_users(instance, self._query_vector(instance.history_items))
            self._user_cache[instance.key] = cached
        return cached

    def prepare(self, instances: Iterable[Instance]) -> int:
        """Batch-encode the instances' histories and fill the user-neighbour cache; returns how many.

        Optional: without it each instance's history is encoded on its first get_similar_users call
        (about 10 ms with SASRec on a CPU, versus well under 1 ms per instance here). A real SASRec
        may differ in the last float bits between a batch and a single history; that can only reorder
        neighbours whose similarities tie to about 1e-6.
        """
        if self.space is None:
            return 0
        instances = [i for i in instances if i.key not in self._user_cache]
        todo = sorted({i.history_items for i in instances if i.history_items not in self._query_cache})
        if todo:
            unit, nonzero = normalize_rows(encode_batched(self.space, [list(h) for h in todo]))
            for history, vector, ok in zip(todo, unit, nonzero):
                self._query_cache[history] = vector if ok else None
        for instance in instances:
            self.similar_users(instance)
        return len(instances)

    # ------------------------------------------------------------------ internals

    def _query_vector(self, history: tuple[str, ...]) -> np.ndarray | None:
        if history not in self._query_cache:
            unit, nonzero = normalize_rows(np.asarray(self.space.encode([list(history)]), dtype=np.float32))
            self._query_cache[history] = unit[0] if nonzero[0] else None
        return self._query_cache[history]

    def _similar_users(self, instance: Instance, query: np.ndarray | None) -> SimilarUsers:
        if self.space is None:
            return SimilarUsers("unavailable", None)
        s = self.snapshots.index_at(instance.target_time)
        if s < 0:
            return SimilarUsers("no_snapshot", None)
        snap_time = int(self.snapshots.times[s])
        if query is None:
            return SimilarUsers("no_known_history", snap_time)
        users, vectors = self.snapshots.users[s], self.snapshots.vectors[s]
        sims = vectors @ query
        own = self.user_row.get(instance.user_id)
        if own is not None:
            at = int(np.searchsorted(users, own))
            if at < len(users) and users[at] == own:
                sims[at] = -np.inf
        neighbours = []
        for index in top_k_vector(sims, self.config.n_similar_users):
            if not np.isfinite(sims[index]):
                continue
            rows, times = self.user_items_before(int(users[index]), instance.target_time,
                                                 self.config.neighbour_recent_items)
            neighbours.append(Neighbour(self.user_ids[int(users[index])], float(sims[index]),
                                        tuple(self.item_ids[r] for r in rows), tuple(int(t) for t in times)))
        return SimilarUsers("ok", snap_time, tuple(neighbours))


class InstanceTools(ToolMethods):
    """The seven tools bound to one instance; counts every call and every error.

    Public methods are the seven tools (generated from the registry; they return the text) and
    :meth:`call` (returns a :class:`ToolResult`). ``results`` keeps every call in order.
    """

    def __init__(self, toolkit: ToolKit, instance: Instance) -> None:
        self.toolkit = toolkit
        self.instance = instance
        self.results: list[ToolResult] = []
        self._check(instance)
        self.candidate_rows = [toolkit.row_of[c] for c in instance.candidates]
        self.candidate_number = {row: k for k, row in reversed(list(enumerate(self.candidate_rows, start=1)))}
        self.tags = render.candidate_tags(instance.candidate_labels)  # tags[k] names candidate k in every output
        self.history_rows = [toolkit.row_of[i] for i in instance.history_items]
        self.history_recent_first = list(dict.fromkeys(reversed(self.history_rows)))

    def _check(self, instance: Instance) -> None:
        kit = self.toolkit
        if any(t >= instance.target_time for t in instance.history_times):
            raise ValueError(f"instance {instance.sample_id}: a history item is dated at or after the target time")
        if not (len(instance.history_items) == len(instance.history_times) == len(instance.history_ratings)):
            raise ValueError(f"instance {instance.sample_id}: history columns differ in length")
        unknown = [i for i in instance.candidates + instance.history_items if i not in kit.row_of]
        if unknown:
            raise ValueError(f"instance {instance.sample_id}: item {unknown[0]!r} is not in the catalogue")
        labels = instance.candidate_labels
        if labels and (len(labels) != len(instance.candidates) or len(set(labels)) != len(labels)):
            raise ValueError(f"instance {instance.sample_id}: candidate_labels {labels} do not name the "
                             f"{len(instance.candidates)} candidates one to one")

    # ------------------------------------------------------------------ dispatch and counters

    def call(self, name: str, arguments: Mapping[str, Any] | None = None) -> ToolResult:
        """Run tool ``name``; never raises. Errors come back as text with ``ok=False``."""
        began = time.perf_counter()
        args_record = dict(arguments) if isinstance(arguments, Mapping) else {"<arguments>": arguments}
        cfg = self.toolkit.config
        try:
            spec = TOOLS.get(name) if isinstance(name, str) else None
            if spec is None:
                raise ToolError("unknown_tool", f'Error: there is no tool named "{render.shorten(str(name), 60)}". '
                                                f"Tools: {', '.join(TOOLS)}.")
            values = validate_arguments(spec, arguments)
            text, ok, kind = spec.implementation(self, **values), True, None
        except ToolError as exc:
            text, ok, kind = exc.text, False, exc.kind
        except Exception as exc:  # a bug in the kit must not end the rollout; it is counted apart
            text, ok, kind = f"Error: the tool failed internally ({type(exc).__name__}).", False, "internal"
        result = ToolResult(str(name), args_record, render.bound(text, cfg.max_lines, cfg.max_chars), ok, kind,
                            time.perf_counter() - began)
        self.results.append(result)
        return result

    def _call_tool(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        return self.call(name, arguments)

    @property
    def n_calls(self) -> int:
        return len(self.results)

    @property
    def n_errors(self) -> int:
        return sum(1 for r in self.results if not r.ok)

    @property
    def error_counts(self) -> Counter:
        return Counter(r.error_kind for r in self.results if not r.ok)

    # ------------------------------------------------------------------ helpers for the implementations

    def label(self, row: int, limit: int = render.LIST_TITLE_CHARS) -> str:
        """``[k] "Title"`` for candidate k, ``"Title"`` otherwise: every candidate mention carries its tag."""
        number = self.candidate_number.get(row)
        title = self.toolkit.list_titles[row] if limit == render.LIST_TITLE_CHARS else self.toolkit.short_title(row, limit)
        return f"{self.tags[number]} {title}" if number is not None else title

    def candidate_name(self, k: int) -> str:
        """Candidate k as the prompt names it, without brackets: its label ("A") or its number ("3")."""
        labels = self.instance.candidate_labels
        return labels[k - 1] if labels else str(k)

    def resolve(self, name: str) -> Resolution:
        try:
            return self.toolkit.resolver.resolve(self._numbered(name), self.candidate_rows, self.history_recent_first)
        except NotFound as exc:
            suggestions = "; ".join(self.label(row) for row in exc.suggestion_rows)
            hint = f" Closest titles here: {suggestions}." if suggestions else ""
            example = f"a candidate label such as {self.tags[1]}" if self.instance.candidate_labels \
                else "a candidate number such as [3]"
            raise ToolError("unknown_item", f'Error: no item titled "{render.shorten(exc.name, 80)}" was found.'
                                            f"{hint} Use a title from the history or the candidate list, "
                                            f"or {example}.") from None

    def _numbered(self, name: str) -> str:
        """A leading label tag ("[A] ...") or a bare label ("A") as the resolver's number reference ("[1]"),
        so the names the outputs and the prompt use resolve; numbers keep working too."""
        labels = self.instance.candidate_labels
        if not labels or not isinstance(name, str):
            return name
        stripped = name.strip().strip("\"'").strip()
        for k, label in enumerate(labels, start=1):
            if stripped == label:
                return render.NUMBER_TAGS[k]
            if stripped.startswith(self.tags[k]):
                return render.NUMBER_TAGS[k] + stripped[len(self.tags[k]):]
        return name
