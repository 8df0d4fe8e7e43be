"""Column layout of every table the data stage produces; the one place later stages look it up.

Canonical tables (all written as parquet under ``runs/<profile>/data/<dataset>/``):

interactions  one row per (user, item, time) event after filtering
    user_id: str, item_id: str, rating: float32, timestamp: int64 (seconds since epoch, UTC)
items         one row per item that survives filtering
    item_id: str, title: str, categories: str ("|"-joined labels, most general first; "" if none),
    price: float64 (NaN if unknown), avg_rating: float64 (NaN), rating_count: float64 (NaN),
    store: str ("" if unknown)
users         one row per user (attributes only where the raw data has them)
    user_id: str, attributes: str (free text such as "age 24, M, technician"; "" if none)
samples_<split>  one row per benchmark instance (split in train / valid / test)
    sample_id: int64 (global, in target-time order), user_id: str, split: str,
    target_item: str, target_time: int64, target_rating: float32,
    history_items: list[str] (oldest first, at most history_max), history_times: list[int64],
    history_ratings: list[float32],
    candidates: list[str] (20 item ids in their frozen, shuffled order),
    target_index: int64 (1-based position of the target in ``candidates``)
"""

from __future__ import annotations

INTERACTION_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "rating", "timestamp")
ITEM_COLUMNS: tuple[str, ...] = (
    "item_id", "title", "categories", "price", "avg_rating", "rating_count", "store",
)
USER_COLUMNS: tuple[str, ...] = ("user_id", "attributes")
SAMPLE_COLUMNS: tuple[str, ...] = (
    "sample_id", "user_id", "split", "target_item", "target_time", "target_rating",
    "history_items", "history_times", "history_ratings", "candidates", "target_index",
)
SPLITS: tuple[str, ...] = ("train", "valid", "test")
CATEGORY_SEPARATOR = "|"


class DataError(ValueError):
    """Raised for bad input data; the message names the file and the line or field."""
