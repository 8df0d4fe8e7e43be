"""Datasets for the tool tests: a hand-made one with known answers, and a synthetic benchmark.

``handmade()``: 10 items, 4 users, one instance (user u1 at day 10, five candidates) whose every
statistic can be checked by hand; a 3-d embedding space with known cosines. Run this module as a
script to print every tool output as JSON (the cross-process determinism test does that).

``synthetic_benchmark()``: a few hundred interactions turned into samples, a temporal split and
frozen candidates by the real data-stage functions, for the leakage tests.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pandas as pd

from recrepro.config import ToolsConfig, load_profile
from recrepro.data.samples import add_candidates, build_samples, split_samples
from recrepro.tools import Instance, ToolKit, mean_pooling_space, snapshot_grid
from recrepro.tools.profile_writers import HistoryIndex, TemplateProfileGenerator
from recrepro.tools.profiles import ProfileRecord, ProfileStore

DAY = 86_400
HOUR = 3_600
T0 = 1_000_000_000  # 2001-09-09 01:46:40 UTC

TEST_TOOLS = ToolsConfig(max_lines=24, max_chars=1600, session_gap_hours=24.0, rating_high=4.0, rating_low=2.0,
                         price_bands=[10.0, 25.0, 50.0, 100.0], n_similar_items=3, n_similar_users=2,
                         neighbour_recent_items=2, user_snapshots=2, sasrec_model="SASRec")

ITEMS = [  # item_id, title, categories, price, avg_rating, rating_count
    ("i1", "Heat (1995)", "Movies|Action|Thriller", 12.5, 4.4, 120.0),
    ("i2", "Casino (1995)", "Movies|Drama|Crime", 8.0, np.nan, np.nan),
    ("i3", "Toy Story (1995)", "Movies|Animation|Comedy", np.nan, 4.8, 300.0),
    ("i4", "Babe (1995)", "Movies|Comedy|Family", 30.0, np.nan, np.nan),
    ("i5", "Seven (1995)", "Movies|Thriller|Crime", 60.0, np.nan, np.nan),
    ("i6", "Jumanji (1995)", "Movies|Adventure|Family", 150.0, np.nan, np.nan),
    ("i7", "Nixon (1995)", "Movies|Drama", 20.0, np.nan, np.nan),
    ("i8", "Sabrina (1995)", "Movies|Comedy|Romance", np.nan, np.nan, np.nan),
    ("i9", "Balto (1995)", "Movies|Animation|Family", 9.0, np.nan, np.nan),
    ("i10", "Ace Ventura: Pet Detective (1994)", "", np.nan, np.nan, np.nan),
]

LOG = [  # user, item, rating, time
    ("u1", "i2", 5.0, T0 + 1 * DAY),
    ("u1", "i7", 4.0, T0 + 1 * DAY + 2 * HOUR),
    ("u1", "i4", 3.0, T0 + 5 * DAY),
    ("u1", "i1", 1.0, T0 + 9 * DAY),
    ("u1", "i5", 4.0, T0 + 9 * DAY + 3 * HOUR),
    ("u1", "i3", 5.0, T0 + 10 * DAY),  # the target of the instance
    ("u1", "i6", 2.0, T0 + 12 * DAY),  # after the instance: must never show
    ("u2", "i1", 4.0, T0 + 2 * DAY),
    ("u2", "i5", 5.0, T0 + 3 * DAY),
    ("u2", "i3", 5.0, T0 + 8 * DAY),
    ("u2", "i9", 3.0, T0 + 11 * DAY),  # after
    ("u3", "i4", 2.0, T0 + 4 * DAY),
    ("u3", "i8", 3.0, T0 + 6 * DAY),
    ("u3", "i9", 4.0, T0 + 7 * DAY),
    ("u4", "i6", 5.0, T0 + 3 * DAY),
    ("u4", "i10", 1.0, T0 + 9 * DAY),
    ("u4", "i3", 4.0, T0 + 11 * DAY),  # after
]

VECTORS = {  # unit vectors, so cosines are plain dot products; i10 is unknown to the model
    "i1": (1.0, 0.0, 0.0), "i2": (0.6, 0.8, 0.0), "i3": (0.0, 1.0, 0.0), "i4": (0.0, 0.8, 0.6),
    "i5": (0.8, 0.6, 0.0), "i6": (0.0, 0.0, 1.0), "i7": (0.6, 0.0, 0.8), "i8": (0.0, 0.6, 0.8),
    "i9": (0.28, 0.96, 0.0),
}
SNAPSHOTS = [T0 + 6 * DAY, T0 + 9 * DAY + 12 * HOUR]
INSTANCE_TIME = T0 + 10 * DAY
PROFILE_TEXT = "Likes crime dramas and thrillers; rates generously."


def handmade_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    items = pd.DataFrame(ITEMS, columns=["item_id", "title", "categories", "price", "avg_rating", "rating_count"])
    items["store"] = ""
    log = pd.DataFrame(LOG, columns=["user_id", "item_id", "rating", "timestamp"])
    log["rating"] = log["rating"].astype("float32")
    return log, items


def handmade_space():
    ids = list(VECTORS)
    return mean_pooling_space(ids, np.array([VECTORS[i] for i in ids]), name="SASRec")


def handmade_instance() -> Instance:
    history = [row for row in LOG if row[0] == "u1" and row[3] < INSTANCE_TIME]
    return Instance(user_id="u1", target_time=INSTANCE_TIME,
                    history_items=tuple(r[1] for r in history), history_times=tuple(r[3] for r in history),
                    history_ratings=tuple(r[2] for r in history), candidates=("i6", "i3", "i8", "i9", "i10"),
                    sample_id=7, split="test")


def handmade_kit(config: ToolsConfig = TEST_TOOLS, with_space: bool = True, with_profile: bool = True) -> ToolKit:
    log, items = handmade_tables()
    store = ProfileStore({("u1", INSTANCE_TIME): ProfileRecord(PROFILE_TEXT, "llm", "v1", "tiny", 5,
                                                               T0 + 9 * DAY + 3 * HOUR)}) if with_profile else None
    return ToolKit(log, items, config, history_max=10, space=handmade_space() if with_space else None,
                   snapshot_times=SNAPSHOTS, profiles=store, dataset="handmade")


CALLS = [
    ("get_user_profile", {}),
    ("item_info_search", {"item_name": "Heat (1995)"}),
    ("item_info_search", {"item_name": "toy story"}),
    ("candidates_analyze", {}),
    ("get_session_behavior", {}),
    ("get_rating_behavior", {}),
    ("get_similar_items", {"item_title": "Heat (1995)"}),
    ("get_similar_items", {"item_title": "[5]"}),
    ("get_similar_users", {}),
]


def handmade_outputs() -> list[str]:
    tools = handmade_kit().bind(handmade_instance())
    return [tools.call(name, args).text for name, args in CALLS]


# ---------------------------------------------------------------------------------------- synthetic


def synthetic_log(n_users: int = 30, n_items: int = 70, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sessions of 1-4 items a few days apart, ratings 1-5, some re-consumption, shared timestamps."""
    rng = np.random.default_rng(seed)
    families = ["Books|Fiction|Crime", "Books|Fiction|Fantasy", "Books|Science|Physics", "Books|Science|Biology",
                "Books|Kids", "Books|Cooking", ""]
    items = pd.DataFrame({
        "item_id": [f"b{i:03d}" for i in range(n_items)],
        "title": [f"Book {w} {i}" for i, w in zip(range(n_items), rng.choice(
            ["Alpha", "River", "Stone", "Night", "Garden", "Engine"], size=n_items))],
        "categories": [families[i % len(families)] for i in range(n_items)],
        "price": np.where(np.arange(n_items) % 3 == 0, np.nan, rng.uniform(3, 140, n_items).round(2)),
        "avg_rating": np.where(np.arange(n_items) % 4 == 0, rng.uniform(1, 5, n_items).round(1), np.nan),
        "rating_count": np.where(np.arange(n_items) % 4 == 0, rng.integers(1, 500, n_items), np.nan),
        "store": "",
    })
    rows = []
    for u in range(n_users):
        t = T0 + int(rng.integers(0, 20 * DAY))
        seen: list[str] = []
        for _ in range(int(rng.integers(2, 6))):  # sessions
            for _ in range(int(rng.integers(1, 4))):
                if seen and rng.random() < 0.15:
                    item = seen[int(rng.integers(len(seen)))]  # re-consumption
                else:
                    item = f"b{int(rng.integers(n_items)):03d}"
                rows.append((f"u{u:02d}", item, float(rng.integers(1, 6)), t))
                seen.append(item)
                t += int(rng.choice([0, 60, 2 * HOUR]))  # 0: two items at the same second
            t += int(rng.integers(2 * DAY, 9 * DAY))
    log = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    log = log.drop_duplicates(["user_id", "item_id", "timestamp"]).reset_index(drop=True)
    log["rating"] = log["rating"].astype("float32")
    return log, items


@dataclasses.dataclass
class Synthetic:
    log: pd.DataFrame
    items: pd.DataFrame
    samples: pd.DataFrame
    snapshot_times: np.ndarray
    space: object
    valid_start: int


def synthetic_benchmark(seed: int = 3) -> Synthetic:
    log, items = synthetic_log(seed=seed)
    data_cfg = load_profile("smoke").data
    samples, _ = build_samples(log, data_cfg)
    samples = split_samples(samples, data_cfg.split_ratios)
    samples = add_candidates(samples, log, items["item_id"].tolist(), data_cfg.n_candidates, seed)
    valid_start = int(samples.loc[samples["split"] == "valid", "target_time"].min())
    # The "model" knows only items seen in the training period, as SASRec fitted on train would.
    known = sorted(log.loc[log["timestamp"] < valid_start, "item_id"].unique())
    rng = np.random.default_rng(seed + 1)
    space = mean_pooling_space(known, rng.normal(size=(len(known), 8)), name="SASRec")
    return Synthetic(log, items, samples, snapshot_grid(samples["target_time"], 6), space, valid_start)


def template_store(log: pd.DataFrame, items: pd.DataFrame, keys: list[tuple[str, int]]) -> ProfileStore:
    """Template profiles for ``keys`` written from ``log`` (as notebook 03 would for the smoke profile)."""
    generator = TemplateProfileGenerator("v1", TEST_TOOLS.rating_high, TEST_TOOLS.rating_low)
    requests = HistoryIndex(log, items).requests(keys)
    return ProfileStore({(r.user_id, r.cutoff_time): ProfileRecord(text, "template", "v1", "", len(r.entries),
                                                                   r.last_time)
                         for r, text in zip(requests, generator.generate(requests))})


if __name__ == "__main__":
    json.dump(handmade_outputs(), sys.stdout)
