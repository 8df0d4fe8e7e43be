"""Samples, temporal split and negative sampling on hand-made logs with exact expectations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recrepro.data.samples import add_candidates, build_samples, clean_title, filter_interactions, split_samples
from recrepro.data.schema import DataError
from tests.conftest import make_log


def _frame(rows):
    out = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    out["rating"] = out["rating"].astype("float32")
    return out


def test_history_is_strictly_earlier_and_capped(tiny_profile):
    cfg = tiny_profile.data
    rows = [("u", f"i{k}", 4.0, 100 + k) for k in range(13)] + [("u", "tie", 3.0, 112)]
    samples, skipped = build_samples(_frame(rows), cfg)
    by_target = samples.set_index("target_item")
    assert by_target.loc["i1", "history_items"] == ["i0"]
    # i12 and "tie" share timestamp 112: neither is in the other's history
    assert by_target.loc["i12", "history_items"] == [f"i{k}" for k in range(2, 12)]
    assert by_target.loc["tie", "history_items"] == [f"i{k}" for k in range(2, 12)]
    assert all(len(h) <= 10 for h in samples["history_items"])
    assert skipped["interactions_without_enough_history"] == 1  # i0 has no earlier item
    for _, s in samples.iterrows():
        assert all(t < s["target_time"] for t in s["history_times"])


def test_single_interaction_user_is_counted(tiny_profile):
    rows = [("a", "i1", 4.0, 1), ("a", "i2", 4.0, 2), ("b", "i3", 1.0, 5)]
    samples, skipped = build_samples(_frame(rows), tiny_profile.data)
    assert skipped["users_with_single_interaction"] == 1
    assert samples["user_id"].tolist() == ["a"]


def test_no_sample_at_all_is_a_clear_error(tiny_profile):
    with pytest.raises(DataError, match="no sample can be built"):
        build_samples(_frame([("a", "i1", 4.0, 1), ("b", "i2", 4.0, 2)]), tiny_profile.data)


def test_split_is_temporal_and_8_1_1(tiny_profile):
    interactions, _ = make_log(n_users=30, per_user=8)
    samples, _ = build_samples(interactions, tiny_profile.data)
    split = split_samples(samples, [0.8, 0.1, 0.1])
    n = len(split)
    sizes = split["split"].value_counts()
    assert sizes["train"] == int(np.floor(0.8 * n))
    assert sizes["valid"] == int(np.floor(0.9 * n)) - int(np.floor(0.8 * n))
    times = {s: split.loc[split["split"] == s, "target_time"] for s in ("train", "valid", "test")}
    assert times["train"].max() <= times["valid"].min()
    assert times["valid"].max() <= times["test"].min()


def test_empty_split_is_a_clear_error(tiny_profile):
    samples, _ = build_samples(_frame([("a", "i1", 4.0, 1), ("a", "i2", 4.0, 2), ("a", "i3", 4.0, 3)]),
                               tiny_profile.data)
    with pytest.raises(DataError, match=r"split\(s\) \['valid'\] would be empty: only 2 samples"):
        split_samples(samples, [0.8, 0.1, 0.1])


def _candidates(seed: int):
    interactions, items = make_log(n_users=15, n_items=80, per_user=10)
    samples, _ = build_samples(interactions, load_cfg())
    samples = split_samples(samples, [0.8, 0.1, 0.1])
    return interactions, add_candidates(samples, interactions, items["item_id"].tolist(), 20, seed)


def load_cfg():
    from recrepro.config import load_profile

    return load_profile("smoke").data


def test_negatives_never_seen_never_target_and_seed_stable():
    interactions, out = _candidates(seed=11)
    _, again = _candidates(seed=11)
    _, other = _candidates(seed=12)
    assert out["candidates"].tolist() == again["candidates"].tolist()
    assert out["candidates"].tolist() != other["candidates"].tolist()
    for _, s in out.iterrows():
        cands = s["candidates"]
        assert len(cands) == 20 and len(set(cands)) == 20
        assert cands[s["target_index"] - 1] == s["target_item"]
        seen = set(interactions.loc[(interactions["user_id"] == s["user_id"])
                                    & (interactions["timestamp"] <= s["target_time"]), "item_id"])
        negatives = set(cands) - {s["target_item"]}
        assert not negatives & seen
        assert not negatives & set(s["history_items"])


def test_target_position_is_spread_over_the_list():
    _, out = _candidates(seed=3)
    positions = out["target_index"].to_numpy()
    assert positions.min() >= 1 and positions.max() <= 20
    assert len(np.unique(positions)) > 10  # shuffled, not always first


def test_catalogue_too_small_is_a_clear_error():
    interactions, items = make_log(n_users=3, n_items=12, per_user=5)
    samples, _ = build_samples(interactions, load_cfg())
    samples = split_samples(samples, [0.34, 0.33, 0.33])
    with pytest.raises(DataError, match="catalogue is too small"):
        add_candidates(samples, interactions, items["item_id"].tolist(), 20, 0)


def test_filters_count_drops(tiny_profile):
    interactions, items = make_log(n_users=10, n_items=40, per_user=5)
    interactions = pd.concat([interactions, interactions.iloc[:3]], ignore_index=True)  # exact duplicates
    items.loc[0, "title"] = " "  # no usable title
    items.loc[1, "title"] = "Caf&eacute;   <b>Bold</b>"
    out, kept_items, dropped = filter_interactions(interactions, items, tiny_profile.data, seed=0)
    assert dropped["duplicates_exact"] == 3
    assert not out.duplicated(["user_id", "item_id", "timestamp"]).any()
    assert "i0" not in set(out["item_id"])
    if "i1" in set(kept_items["item_id"]):
        assert kept_items.set_index("item_id").loc["i1", "title"] == "Café Bold"


def test_window_filter_bounds(tiny_profile):
    from dataclasses import replace

    interactions, items = make_log()
    cfg = replace(tiny_profile.data, window_start="1970-01-01T03:00:00", window_end="1970-01-02T00:00:00")
    out, _, dropped = filter_interactions(interactions, items, cfg, seed=0)
    assert out["timestamp"].min() >= 3 * 3600 and out["timestamp"].max() < 86400
    t = interactions["timestamp"]
    assert dropped["outside_window"] == int(((t < 10800) | (t >= 86400)).sum())


def test_clean_title():
    assert clean_title("  A&amp;B\n\t<i>Deluxe</i>  ") == "A&B Deluxe"
