"""Shared fixtures: a small profile and a tiny hand-made interaction log."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from recrepro.config import load_profile

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def smoke_profile():
    return load_profile("smoke")


@pytest.fixture
def tiny_profile():
    """The smoke profile cut down so the data stage takes well under a second."""
    return load_profile("smoke", {"data.max_users": 40})


def make_log(n_users: int = 12, n_items: int = 60, per_user: int = 6, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A deterministic synthetic log: (interactions, items) in the canonical layout."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        picked = rng.choice(n_items, size=per_user, replace=False)
        times = np.sort(rng.integers(1_000, 100_000, size=per_user))
        rows += [(f"u{u}", f"i{i}", float(rng.integers(1, 6)), int(t)) for i, t in zip(picked, times)]
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    interactions["rating"] = interactions["rating"].astype("float32")
    items = pd.DataFrame({
        "item_id": [f"i{i}" for i in range(n_items)],
        "title": [f"Item number {i}" for i in range(n_items)],
        "categories": ["A|B" if i % 2 else "C" for i in range(n_items)],
        "price": float("nan"), "avg_rating": float("nan"), "rating_count": float("nan"), "store": "",
    })
    return interactions, items


@pytest.fixture
def one_thread():
    """One torch thread for the test: the same float results, so the same samples, on every machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
