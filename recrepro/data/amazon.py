"""Amazon Reviews 2023: stream the official raw files into canonical tables.

The official release (PAPER.md section 1.2) has, per category, a reviews file and a metadata file,
both gzipped JSON lines, fetched by :mod:`recrepro.data.amazon_download`. :func:`read_reviews`,
:func:`read_meta` and :func:`load_category` parse them as a stream, keeping only the fields the kit
needs, because a large category's reviews are several GB uncompressed. Bad input data (not JSON, a
corrupt gzip, an empty file) raises :class:`~recrepro.data.schema.DataError` naming the file and
line; well-formed but unusable rows are skipped and counted in ``skips`` for the data stage.

Details (parsing, error policy, the skip counters, speed): docs/amazon-data.md.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from recrepro.data.amazon_download import raw_paths
from recrepro.data.gzip_lines import iter_line_batches, json_error, object_error
from recrepro.data.schema import CATEGORY_SEPARATOR, INTERACTION_COLUMNS, ITEM_COLUMNS, DataError

# Official timestamps are Unix milliseconds. 1e11 ms is March 1973 while 1e11 s is the year 5138,
# so any real review time below this bound must already be in seconds.
SECONDS_BOUND = 100_000_000_000
# Amazon's star ratings; a rating outside them is bad data (a review is skipped, not clipped).
RATING_SCALE = (1.0, 5.0)
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


# --------------------------------------------------------------------------------------------
# Streaming parser
# --------------------------------------------------------------------------------------------


@dataclass
class ParsedFile:
    """The compact result of parsing one raw file: a canonical frame and what was dropped.

    ``lines`` counts every line, ``records`` the non-blank ones (JSON values; 0 for an empty file).
    """

    frame: pd.DataFrame
    skips: dict[str, int]
    lines: int
    records: int = 0


@dataclass
class AmazonTables:
    """One category in canonical layout (see :mod:`recrepro.data.schema`).

    ``skips`` counts dropped or repaired rows by reason (docs/amazon-data.md lists them); ``lines`` is
    the number of lines read from each raw file, keyed by file name.
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    skips: dict[str, int] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)


_REVIEW_SKIPS = ("review_bad_timestamp", "review_missing_user", "review_missing_item",
                 "review_bad_rating", "review_rating_out_of_scale", "review_outside_window",
                 "timestamp_in_seconds")


def _review_fields(
    rec: dict[str, Any], skips: dict[str, int],
) -> tuple[str, str, float, int] | None:
    """Full checks for a review the fast path declined: (user, item, rating, seconds) or None.

    orjson never produces NaN or infinity (JSON has no such literals and it rejects overflow), so
    a float here is always finite. bool is excluded explicitly because it is a subclass of int.
    """
    ts = rec.get("timestamp")
    if type(ts) not in (int, float):
        skips["review_bad_timestamp"] += 1
        return None
    user = rec.get("user_id")
    if type(user) is not str or not user:
        skips["review_missing_user"] += 1
        return None
    item = rec.get("parent_asin")
    if type(item) is not str or not item:
        skips["review_missing_item"] += 1
        return None
    rating = rec.get("rating")
    if type(rating) not in (int, float):
        skips["review_bad_rating"] += 1
        return None
    if not RATING_SCALE[0] <= rating <= RATING_SCALE[1]:
        skips["review_rating_out_of_scale"] += 1
        return None
    if ts >= SECONDS_BOUND:
        seconds = math.floor(ts // 1000)  # floor division keeps int ms exact
    else:
        seconds = math.floor(ts)
        skips["timestamp_in_seconds"] += 1
    return user, item, float(rating), seconds


def read_reviews(
    path: Path, window_start_ts: int | None = None, window_end_ts: int | None = None,
) -> ParsedFile:
    """Stream a reviews file into an interactions frame (``INTERACTION_COLUMNS``).

    Keeps user_id, parent_asin (as item_id), rating (float32) and timestamp (converted from the
    official milliseconds to int64 seconds). The window is [window_start_ts, window_end_ts) in
    seconds; either bound may be None. Rows are sorted by (timestamp, user_id, item_id), ties kept
    in file order, so the same file always gives the same frame.
    """
    path = Path(path)
    lo = _INT64_MIN if window_start_ts is None else max(int(window_start_ts), _INT64_MIN)
    hi = _INT64_MAX if window_end_ts is None else min(int(window_end_ts), _INT64_MAX)
    # Ids are interned: each distinct string is stored once in a dict mapping it to its code.
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    user_codes, item_codes = array("i"), array("i")
    ratings, times = array("f"), array("q")
    skips = dict.fromkeys(_REVIEW_SKIPS, 0)
    # Hot loop: locals and bound methods avoid attribute lookups on a multi-million-line file.
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    add_user, add_item = user_codes.append, item_codes.append
    add_rating, add_time = ratings.append, times.append
    bound = SECONDS_BOUND
    low, high = RATING_SCALE
    outside = 0
    lines = records = 0
    for first, batch in iter_line_batches(path):
        lines = first + len(batch) - 1
        records += len(batch)  # blank lines are taken off below (rare, so off the hot path)
        for raw in batch:
            try:
                rec = loads(raw)
            except decode_error as exc:
                if raw.strip():
                    raise json_error(raw, batch, first, path, exc) from None
                records -= 1
                continue  # blank line
            # Fast path: an official record (every field present, timestamp an int in ms, rating
            # a float on the star scale). Subscripting is cheaper than .get; a non-object raises
            # TypeError.
            try:
                ts, user, item, rating = (
                    rec["timestamp"], rec["user_id"], rec["parent_asin"], rec["rating"])
                fast = (type(ts) is int and ts >= bound and type(user) is str and user != ""
                        and type(item) is str and item != "" and type(rating) is float
                        and low <= rating <= high)
            except KeyError:
                fast = False
            except TypeError:
                raise object_error(rec, raw, batch, first, path) from None
            if fast:
                ts //= 1000
            else:
                fields = _review_fields(rec, skips)
                if fields is None:
                    continue
                user, item, rating, ts = fields
            if not lo <= ts < hi:
                outside += 1
                continue
            add_user(users.setdefault(user, len(users)))
            add_item(items.setdefault(item, len(items)))
            add_rating(rating)
            add_time(ts)
    skips["review_outside_window"] = outside
    frame = _interactions_frame(users, items, user_codes, item_codes, ratings, times)
    return ParsedFile(frame, skips, lines, records)


def _interactions_frame(
    users: dict[str, int], items: dict[str, int], user_codes: array, item_codes: array,
    ratings: array, times: array,
) -> pd.DataFrame:
    """Build the sorted canonical frame from the code buffers without copying strings."""
    # Dicts keep insertion order, so position i of each vocabulary holds the id with code i.
    user_vocab = np.array(list(users), dtype=object)
    item_vocab = np.array(list(items), dtype=object)
    uc = np.frombuffer(user_codes, dtype=np.int32)
    ic = np.frombuffer(item_codes, dtype=np.int32)
    ts = np.frombuffer(times, dtype=np.int64)
    order = _time_user_item_order(ts, uc, ic, user_vocab, item_vocab)
    return pd.DataFrame({
        "user_id": user_vocab[uc[order]],
        "item_id": item_vocab[ic[order]],
        "rating": np.frombuffer(ratings, dtype=np.float32)[order],
        "timestamp": ts[order],
    }, columns=list(INTERACTION_COLUMNS))


def _time_user_item_order(
    ts: np.ndarray, uc: np.ndarray, ic: np.ndarray, user_vocab: np.ndarray, item_vocab: np.ndarray,
) -> np.ndarray:
    """Row order by (timestamp, user_id string, item_id string, file position).

    Sorting every id string (or a three-key lexsort of a million rows) costs seconds, yet only
    rows that share a timestamp need the strings. So: an unstable argsort by timestamp, then the
    runs of equal timestamps are re-sorted by a lexsort over just those rows, with string ranks
    computed only for the ids they contain. File position is the last key, so the result is the
    same as a stable sort: fully determined by the input.
    """
    order = np.argsort(ts)
    sorted_ts = ts[order]
    same_as_next = sorted_ts[1:] == sorted_ts[:-1]
    if not same_as_next.any():
        return order
    tied = np.zeros(len(ts), dtype=bool)  # positions (in sorted order) inside a run of ties
    tied[1:] |= same_as_next
    tied[:-1] |= same_as_next
    rows = order[tied]
    resorted = np.lexsort((
        rows, _string_rank(ic[rows], item_vocab), _string_rank(uc[rows], user_vocab), ts[rows],
    ))
    # The tied positions are already grouped by timestamp, so the re-sorted rows drop back in.
    order[tied] = rows[resorted]
    return order


def _string_rank(codes: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """For each code, the rank of its string among the distinct strings in ``codes``."""
    present, inverse = np.unique(codes, return_inverse=True)
    names = vocab[present].tolist()
    # Python's sort special-cases lists of str and beats numpy's argsort of objects.
    by_name = sorted(range(len(names)), key=names.__getitem__)
    rank = np.empty(len(names), dtype=np.int64)
    rank[by_name] = np.arange(len(names), dtype=np.int64)
    return rank[inverse]


def read_meta(path: Path, keep_items: set[str] | None = None) -> ParsedFile:
    """Stream a metadata file into an items frame (``ITEM_COLUMNS``), sorted by item_id.

    Only items in ``keep_items`` are kept (all when None). The first line of a parent_asin wins.
    A missing title becomes "" (the data stage drops and counts items without a usable title).
    """
    rows, skips, lines, records = _parse_meta(Path(path), keep_items)
    return ParsedFile(_items_frame(sorted(rows), rows), skips, lines, records)


def _parse_meta(
    path: Path, keep_items: set[str] | None,
) -> tuple[dict[str, tuple[Any, ...]], dict[str, int], int, int]:
    """item_id -> field tuple for the kept items, plus skip counts and the numbers of lines and records."""
    rows: dict[str, tuple[Any, ...]] = {}
    skips = dict.fromkeys(("meta_missing_item", "meta_duplicate_item", "meta_bad_price"), 0)
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    lines = records = 0
    for first, batch in iter_line_batches(path):
        lines = first + len(batch) - 1
        records += len(batch)
        for raw in batch:
            try:
                rec = loads(raw)
            except decode_error as exc:
                if raw.strip():
                    raise json_error(raw, batch, first, path, exc) from None
                records -= 1
                continue  # blank line
            if type(rec) is not dict:
                raise object_error(rec, raw, batch, first, path)
            item = rec.get("parent_asin")
            if type(item) is not str or not item:
                skips["meta_missing_item"] += 1
                continue
            # Filter before building the row: most metadata lines are for items not reviewed
            # in the window.
            if keep_items is not None and item not in keep_items:
                continue
            if item in rows:
                skips["meta_duplicate_item"] += 1
                continue
            rows[item] = _meta_row(rec, skips)
    return rows, skips, lines, records


def _meta_row(rec: dict[str, Any], skips: dict[str, int]) -> tuple[Any, ...]:
    """(title, categories, price, avg_rating, rating_count, store) of one metadata object."""
    price = parse_price(rec.get("price"))
    if price is None:
        skips["meta_bad_price"] += 1
        price = math.nan
    return (
        _text(rec.get("title")),
        join_categories(rec.get("categories"), rec.get("main_category")),
        price,
        _number(rec.get("average_rating")),
        _number(rec.get("rating_number")),
        _text(rec.get("store")),
    )


def _items_frame(item_ids: list[str], rows: dict[str, tuple[Any, ...]]) -> pd.DataFrame:
    """Items frame for ``item_ids`` in that order; ids without a row get "" / NaN fields."""
    empty = ("", "", math.nan, math.nan, math.nan, "")
    values = [rows.get(item, empty) for item in item_ids]
    columns = list(zip(*values)) if values else [()] * len(empty)
    return pd.DataFrame({
        "item_id": np.array(item_ids, dtype=object),
        "title": np.array(columns[0], dtype=object),
        "categories": np.array(columns[1], dtype=object),
        "price": np.array(columns[2], dtype=np.float64),
        "avg_rating": np.array(columns[3], dtype=np.float64),
        "rating_count": np.array(columns[4], dtype=np.float64),
        "store": np.array(columns[5], dtype=object),
    }, columns=list(ITEM_COLUMNS))


def _text(value: Any) -> str:
    """A string field, or "" when it is missing or not a string."""
    return value if type(value) is str else ""


def _number(value: Any) -> float:
    """A numeric field (number or numeric string) as float; NaN when missing or not finite."""
    if type(value) in (int, float):
        number = float(value)
    elif type(value) is str:
        try:
            number = float(value.replace(",", ""))
        except ValueError:
            return math.nan
    else:
        return math.nan
    return number if math.isfinite(number) else math.nan


def parse_price(value: Any) -> float | None:
    """Price as float: NaN when missing, None when present but unparseable (caller counts it).

    The official field is a number, a string such as "$12.99" or "$1,299.00", the string "None",
    or null. Ranges ("$5.99 - $9.99") and other text are unparseable. Negative or non-finite
    values count as unparseable too.
    """
    if value is None:
        return math.nan
    if type(value) in (int, float):
        number = float(value)
    elif type(value) is str:
        text = value.strip()
        if text in ("", "None", "null", "-", "—"):
            return math.nan
        try:
            number = float(text.removeprefix("$").replace(",", "").strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def join_categories(categories: Any, main_category: Any) -> str:
    """The category path joined with ``CATEGORY_SEPARATOR``; ``main_category`` if it is empty.

    A separator inside a label is replaced by "/" so that the joined string splits back into the
    same labels.
    """
    labels = []
    if type(categories) is list:
        labels = [c.strip().replace(CATEGORY_SEPARATOR, "/") for c in categories if type(c) is str]
        labels = [c for c in labels if c]
    if not labels and type(main_category) is str and main_category.strip():
        labels = [main_category.strip().replace(CATEGORY_SEPARATOR, "/")]
    return CATEGORY_SEPARATOR.join(labels)


def load_category(
    raw_dir: Path, category: str, window_start_ts: int | None, window_end_ts: int | None,
) -> AmazonTables:
    """Parse both raw files of ``category`` (as laid out by :func:`recrepro.data.amazon_download.fetch_category`).

    ``items`` has one row per item with at least one review in the window, in item_id order;
    an item without a metadata line keeps "" / NaN fields and is counted as ``item_without_meta``.
    An empty file (0 bytes, or a gzip stream without a JSON line) raises :class:`DataError` naming
    the file and the dataset: otherwise the data stage would only find later that no interaction
    survives filtering.
    """
    paths = raw_paths(raw_dir, category)
    for kind, path in paths.items():
        if not path.is_file():
            raise DataError(f"{path}: raw file missing; run fetch_category({category!r}) first")
        if path.stat().st_size == 0:
            raise _empty_file(path, kind, category, "0 bytes")
    reviews = read_reviews(paths["reviews"], window_start_ts, window_end_ts)
    if reviews.records == 0:
        raise _empty_file(paths["reviews"], "reviews", category, "no JSON line")
    item_ids = sorted(set(reviews.frame["item_id"]))
    rows, meta_skips, meta_lines, meta_records = _parse_meta(paths["meta"], set(item_ids))
    if meta_records == 0:
        raise _empty_file(paths["meta"], "meta", category, "no JSON line")
    skips = {**reviews.skips, **meta_skips}
    skips["item_without_meta"] = sum(1 for item in item_ids if item not in rows)
    return AmazonTables(
        interactions=reviews.frame,
        items=_items_frame(item_ids, rows),
        skips=skips,
        lines={paths["reviews"].name: reviews.lines, paths["meta"].name: meta_lines},
    )


def _empty_file(path: Path, kind: str, category: str, what: str) -> DataError:
    """The error for an empty raw file: which file, of which dataset, and how to recover."""
    label = "reviews" if kind == "reviews" else "metadata"
    return DataError(f"{path}: the {label} file of dataset {category!r} is empty ({what}); "
                     f"delete it and run fetch_category({category!r}) again")
