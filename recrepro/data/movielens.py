"""MovieLens-100k from the copy that ships inside the recbole package (no download).

RecBole packages ml-100k as atomic files (``ml-100k.inter``, ``.item``, ``.user``: tab-separated,
one header line of ``name:type`` fields). This loader turns them into the canonical tables of
:mod:`recrepro.data.schema`: titles get the release year appended ("Toy Story (1995)"), genres
become the category list, user attributes (age, gender, occupation) become a short text.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from recrepro.data.schema import CATEGORY_SEPARATOR, DataError


def packaged_dir() -> Path:
    """Folder of RecBole's packaged ml-100k; located through the installed package, not a path guess."""
    import importlib.util

    spec = importlib.util.find_spec("recbole")
    if spec is None or spec.origin is None:
        raise DataError("the recbole package is not installed; it ships the ml-100k files")
    folder = Path(spec.origin).parent / "dataset_example" / "ml-100k"
    if not folder.is_dir():
        raise DataError(f"{folder}: recbole is installed but its packaged ml-100k folder is missing")
    return folder


def _read_atomic(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """Read a RecBole atomic file as strings; header names lose their ``:type`` suffix."""
    if not path.is_file():
        raise DataError(f"{path}: file missing")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file, expected a header line")
        names = [column.split(":")[0] for column in header]
        missing = [name for name in required if name not in names]
        if missing:
            raise DataError(f"{path}:1: header lacks field(s) {missing}; found {names}")
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if len(row) != len(names):
                raise DataError(f"{path}:{line_no}: expected {len(names)} tab-separated fields, got {len(row)}")
            rows.append(row)
    return pd.DataFrame(rows, columns=names, dtype=str)


def _to_number(frame: pd.DataFrame, column: str, path: Path, dtype: type) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna()
    if bad.any():
        line_no = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise DataError(f"{path}:{line_no}: field '{column}' is not a number: {frame[column].iloc[line_no - 2]!r}")
    return values.to_numpy().astype(dtype)


def load_interactions(folder: Path) -> pd.DataFrame:
    path = folder / "ml-100k.inter"
    raw = _read_atomic(path, ("user_id", "item_id", "rating", "timestamp"))
    return pd.DataFrame({
        "user_id": raw["user_id"].astype(str),
        "item_id": raw["item_id"].astype(str),
        "rating": _to_number(raw, "rating", path, np.float32),
        "timestamp": _to_number(raw, "timestamp", path, np.int64),
    })


def load_items(folder: Path) -> pd.DataFrame:
    path = folder / "ml-100k.item"
    raw = _read_atomic(path, ("item_id", "movie_title", "release_year", "class"))
    year = raw["release_year"].str.strip()
    title = raw["movie_title"].str.strip()
    title = title.where(year == "", title + " (" + year + ")")
    genres = raw["class"].str.split().map(lambda parts: CATEGORY_SEPARATOR.join(parts))
    n = len(raw)
    return pd.DataFrame({
        "item_id": raw["item_id"].astype(str),
        "title": title,
        "categories": genres,
        "price": np.full(n, np.nan),
        "avg_rating": np.full(n, np.nan),
        "rating_count": np.full(n, np.nan),
        "store": [""] * n,
    })


def load_users(folder: Path) -> pd.DataFrame:
    path = folder / "ml-100k.user"
    raw = _read_atomic(path, ("user_id", "age", "gender", "occupation"))
    attributes = "age " + raw["age"] + ", " + raw["gender"] + ", " + raw["occupation"]
    return pd.DataFrame({"user_id": raw["user_id"].astype(str), "attributes": attributes})


def load_ml100k(folder: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return (interactions, items, users) in the canonical layout."""
    folder = folder or packaged_dir()
    return load_interactions(folder), load_items(folder), load_users(folder)
