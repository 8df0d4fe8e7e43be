"""The paper's reported numbers, shipped with the package as data (copied from shared/).

``paper_reported.csv`` holds Table 1 / Table 2 values with their PAPER.md marks; the dataset
statistics of PAPER.md 1.2 live in ``paper_dataset_stats.csv``. Dataset folder names (Amazon 2023
category names) map to the short names the paper's tables use.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import pandas as pd

PAPER_DATASET_NAME = {
    "CDs_and_Vinyl": "CDs",
    "Musical_Instruments": "Instruments",
    "Office_Products": "Office",
    "Video_Games": "Games",
}


def _read(name: str) -> pd.DataFrame:
    with resources.files("recrepro.data").joinpath(name).open("r") as handle:
        return pd.read_csv(handle)


@cache
def _reported() -> pd.DataFrame:
    return _read("paper_reported.csv")


def reported_values() -> pd.DataFrame:
    """Columns: table, dataset, model, metric, value, mark (dataset uses the paper's short names)."""
    return _reported().copy()


def reported_dataset_stats() -> pd.DataFrame:
    return _read("paper_dataset_stats.csv")


def paper_name(dataset: str) -> str | None:
    """The paper's short dataset name, or None for datasets the paper does not use (ml-100k)."""
    return PAPER_DATASET_NAME.get(dataset)
