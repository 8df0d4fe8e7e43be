"""From canonical interactions to frozen benchmark instances (PAPER.md 1.1-1.2).

Steps, each a small function so tests can pin it down:

1. :func:`filter_interactions`: time window, title cleaning, items without a usable title, duplicate
   rows, optional k-core, optional deterministic user subsample. Every drop is counted.
2. :func:`build_samples`: per user, sorted by time, every interaction with at least ``min_history``
   earlier items gives a sample. The history is the user's items dated *strictly before* the target
   time (at most ``history_max``, oldest first). Items sharing the target's timestamp are not part of
   its history, so no sample ever sees an event at or after its own target time.
3. :func:`split_samples`: all samples sorted by target time and cut 8:1:1 (a global temporal split).
4. :func:`add_candidates`: 19 negatives drawn uniformly (with a fixed seed) from the catalogue minus
   every item the user interacted with at or before the target time; the 20 candidates are shuffled
   once and the order is frozen.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from recrepro.config import DataConfig
from recrepro.data.schema import SAMPLE_COLUMNS, SPLITS, DataError

_SPACES = re.compile(r"\s+")
_TAGS = re.compile(r"<[^>]+>")


def iso_to_ts(day: str | None, field: str) -> int | None:
    """Seconds since epoch (UTC) of an ISO date; None passes through."""
    if day is None:
        return None
    try:
        moment = datetime.fromisoformat(day)
    except ValueError as exc:
        raise DataError(f"{field}: not an ISO date: {day!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def clean_title(title: str) -> str:
    """Unescape HTML entities, drop tags, collapse whitespace (Amazon titles carry all three)."""
    text = html.unescape(title)
    text = _TAGS.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def _kcore(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    while True:
        user_counts = frame["user_id"].map(frame["user_id"].value_counts())
        item_counts = frame["item_id"].map(frame["item_id"].value_counts())
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            return frame
        frame = frame[keep]


def _subsample_users(frame: pd.DataFrame, max_users: int, seed: int) -> pd.DataFrame:
    users = np.sort(frame["user_id"].unique())
    if len(users) <= max_users:
        return frame
    chosen = np.random.default_rng(seed).choice(users, size=max_users, replace=False)
    return frame[frame["user_id"].isin(set(chosen.tolist()))]


def filter_interactions(
    interactions: pd.DataFrame, items: pd.DataFrame, cfg: DataConfig, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, Counter]:
    """Apply the configured filters; return (interactions, items, counts of everything dropped)."""
    dropped: Counter = Counter()
    frame = interactions
    start, end = iso_to_ts(cfg.window_start, "data.window_start"), iso_to_ts(cfg.window_end, "data.window_end")
    if start is not None or end is not None:
        inside = np.ones(len(frame), dtype=bool)
        if start is not None:
            inside &= frame["timestamp"].to_numpy() >= start
        if end is not None:
            inside &= frame["timestamp"].to_numpy() < end
        dropped["outside_window"] = int((~inside).sum())
        frame = frame[inside]

    items = items.drop_duplicates("item_id", keep="first").copy()
    if cfg.clean_titles:
        items["title"] = items["title"].fillna("").map(clean_title)
    usable = items["title"].fillna("").str.len() >= cfg.min_title_chars
    dropped["items_without_usable_title"] = int((~usable & items["item_id"].isin(frame["item_id"])).sum())
    items = items[usable]
    known = frame["item_id"].isin(items["item_id"])
    dropped["interactions_item_unknown_or_untitled"] = int((~known).sum())
    frame = frame[known]

    keys = ["user_id", "item_id", "timestamp"] if cfg.dedup == "exact" else ["user_id", "item_id"]
    ordered = frame.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    duplicate = ordered.duplicated(keys, keep="first")
    dropped[f"duplicates_{cfg.dedup}"] = int(duplicate.sum())
    frame = ordered[~duplicate]

    if cfg.kcore > 0:
        before = len(frame)
        frame = _kcore(frame, cfg.kcore)
        dropped["kcore"] = before - len(frame)
    if cfg.max_users is not None:
        before = len(frame)
        frame = _subsample_users(frame, cfg.max_users, seed)
        dropped["interactions_outside_user_subsample"] = before - len(frame)

    frame = frame.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)
    items = items[items["item_id"].isin(frame["item_id"])].sort_values("item_id").reset_index(drop=True)
    if frame.empty:
        raise DataError("no interaction survives filtering (check data.window_start/window_end and the title rules)")
    return frame, items, dropped


def build_samples(interactions: pd.DataFrame, cfg: DataConfig) -> tuple[pd.DataFrame, Counter]:
    """One sample per interaction with at least ``min_history`` strictly earlier items."""
    skipped: Counter = Counter()
    ordered = interactions.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    users = ordered["user_id"].to_numpy()
    items = ordered["item_id"].to_numpy()
    times = ordered["timestamp"].to_numpy()
    ratings = ordered["rating"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    records: list[tuple] = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi - lo == 1:
            skipped["users_with_single_interaction"] += 1
        user_times = times[lo:hi]
        # Number of the user's items dated strictly before each of its interactions.
        n_before = np.searchsorted(user_times, user_times, side="left")
        for offset, n_prev in enumerate(n_before):
            if n_prev < cfg.min_history:
                skipped["interactions_without_enough_history"] += 1
                continue
            first = lo + max(0, int(n_prev) - cfg.history_max)
            last = lo + int(n_prev)
            pos = lo + offset
            records.append((
                users[pos], items[pos], int(times[pos]), float(ratings[pos]),
                items[first:last].tolist(), times[first:last].astype(np.int64).tolist(),
                ratings[first:last].astype(np.float32).tolist(),
            ))
    columns = ["user_id", "target_item", "target_time", "target_rating",
               "history_items", "history_times", "history_ratings"]
    samples = pd.DataFrame.from_records(records, columns=columns)
    if samples.empty:
        raise DataError("no sample can be built: every user has fewer than "
                        f"data.min_history={cfg.min_history} earlier interactions")
    samples = samples.sort_values(["target_time", "user_id", "target_item"], kind="stable").reset_index(drop=True)
    samples.insert(0, "sample_id", np.arange(len(samples), dtype=np.int64))
    samples["target_rating"] = samples["target_rating"].astype(np.float32)
    return samples, skipped


def split_samples(samples: pd.DataFrame, ratios: list[float]) -> pd.DataFrame:
    """Cut the time-sorted samples into train / valid / test by the given shares."""
    n = len(samples)
    cut_train = int(np.floor(n * ratios[0]))
    cut_valid = int(np.floor(n * (ratios[0] + ratios[1])))
    split = np.empty(n, dtype=object)
    split[:cut_train], split[cut_train:cut_valid], split[cut_valid:] = SPLITS
    sizes = {"train": cut_train, "valid": cut_valid - cut_train, "test": n - cut_valid}
    empty = [name for name, size in sizes.items() if size == 0]
    if empty:
        raise DataError(f"split(s) {empty} would be empty: only {n} samples for data.split_ratios={ratios}")
    out = samples.copy()
    out.insert(2, "split", split.astype(str))
    return out


def _user_item_times(interactions: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per user: (timestamps sorted, item codes in the same order)."""
    grouped: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    ordered = interactions.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    for user, part in ordered.groupby("user_id", sort=False):
        grouped[user] = (part["timestamp"].to_numpy(), part["item_code"].to_numpy())
    return grouped


def add_candidates(samples: pd.DataFrame, interactions: pd.DataFrame, catalogue: list[str],
                   n_candidates: int, seed: int) -> pd.DataFrame:
    """Attach the frozen, shuffled candidate list and the target's 1-based position in it."""
    n_items = len(catalogue)
    code_of = {item: code for code, item in enumerate(catalogue)}
    coded = interactions.assign(item_code=interactions["item_id"].map(code_of))
    if coded["item_code"].isna().any():
        raise DataError("interactions name items missing from the catalogue")
    per_user = _user_item_times(coded)
    rng = np.random.default_rng(seed)
    n_neg = n_candidates - 1
    candidates: list[list[str]] = []
    target_index = np.empty(len(samples), dtype=np.int64)
    ordered = samples.sort_values("sample_id")
    for row, (user, target, when) in enumerate(zip(ordered["user_id"], ordered["target_item"], ordered["target_time"])):
        times, codes = per_user[user]
        # Exclude everything the user touched up to and including the target time.
        seen = set(codes[: np.searchsorted(times, when, side="right")].tolist())
        seen.add(code_of[target])
        if n_items - len(seen) < n_neg:
            raise DataError(f"sample {row} (user {user}): only {n_items - len(seen)} items are available "
                            f"as negatives, {n_neg} needed; the catalogue is too small")
        negatives: list[int] = []
        taken = set(seen)
        while len(negatives) < n_neg:
            for code in rng.integers(0, n_items, size=2 * n_neg).tolist():
                if code not in taken:
                    taken.add(code)
                    negatives.append(code)
                    if len(negatives) == n_neg:
                        break
        pool = [code_of[target], *negatives]
        order = rng.permutation(n_candidates)
        shuffled = [catalogue[pool[i]] for i in order]
        candidates.append(shuffled)
        target_index[row] = int(np.flatnonzero(order == 0)[0]) + 1
    out = ordered.copy()
    out["candidates"] = candidates
    out["target_index"] = target_index
    return out[list(SAMPLE_COLUMNS)].reset_index(drop=True)
