"""Random and MostPop scorers for the frozen candidate lists.

MostPop counts, for a sample with target time t, the interactions with each candidate dated strictly
before min(t, start of validation): popularity comes from the training period only and never from
the sample's own future, so training, validation and test samples are all scored without leakage.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def random_scores(n_samples: int, n_candidates: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n_samples, n_candidates))


def popularity_scores(samples: pd.DataFrame, interactions: pd.DataFrame, train_cutoff: int) -> np.ndarray:
    """Score [n, n_candidates] = interactions with the candidate dated before min(target time, cutoff)."""
    ordered = interactions.sort_values(["item_id", "timestamp"], kind="stable")
    item_codes, item_index = np.unique(ordered["item_id"].to_numpy(), return_inverse=True)
    # One sorted key per interaction, item code first, so one searchsorted counts per (item, time).
    span = int(ordered["timestamp"].max()) - int(ordered["timestamp"].min()) + 2
    base = int(ordered["timestamp"].min())
    keys = item_index.astype(np.int64) * span + (ordered["timestamp"].to_numpy() - base)
    candidates = np.array(samples["candidates"].tolist(), dtype=object)
    n, width = candidates.shape
    flat = candidates.reshape(-1)
    code = np.searchsorted(item_codes, flat)
    known = (code < len(item_codes)) & (item_codes[np.minimum(code, len(item_codes) - 1)] == flat)
    cutoff = np.minimum(samples["target_time"].to_numpy(), train_cutoff)
    cutoff = np.clip(np.repeat(cutoff, width) - base, 0, span - 1)
    lower = np.searchsorted(keys, code.astype(np.int64) * span, side="left")
    upper = np.searchsorted(keys, code.astype(np.int64) * span + cutoff, side="left")
    counts = np.where(known, upper - lower, 0)
    return counts.reshape(n, width).astype(np.float64)
