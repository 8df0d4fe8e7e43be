"""Position artefacts: H@10 of each LLM row by where the target sat in the shuffled candidate list.

The candidate lists are shuffled once and frozen, so the target is equally likely at any of the 20
positions. A ranker that reads items scores about the same in every position bucket; one that
prefers early (or late) candidate numbers shows a slope. The ``First ten candidates`` reference row
(:data:`recrepro.evaluation.FIRST_TEN`) is the extreme case: H@10 = 1 on positions 1-10 and 0 on
11-20 by construction.

``results/<profile>/position_buckets.csv`` (long: dataset, model, bucket, n, H@10) and ``.md`` (one
line per row, one column per bucket) are computed from the saved per-instance files joined on
``sample_id`` with the frozen test samples (``target_index`` = the target's 1-based position).
Buckets are :func:`recrepro.metrics.position_buckets` of width
:data:`recrepro.metrics.POSITION_BUCKET_WIDTH`, the same as the evaluation card's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from recrepro.config import Profile
from recrepro.evaluation import load_per_instance, per_instance_path
from recrepro.io import write_text_atomic
from recrepro.metrics import POSITION_BUCKET_WIDTH, bucket_means

METRIC = "H@10"
COLUMNS = ["dataset", "model", "bucket", "n", METRIC]


def position_bucket_rows(dataset: str, model: str, per_instance: pd.DataFrame, samples: pd.DataFrame,
                         n_candidates: int, width: int = POSITION_BUCKET_WIDTH) -> list[dict]:
    """One row per bucket: instances of ``per_instance`` whose target sat in it, and their mean H@10.

    ``samples`` gives each ``sample_id``'s ``target_index``; instances absent from it are left out.
    """
    if samples["sample_id"].duplicated().any():
        raise ValueError("samples repeat a sample_id; the target position would be ambiguous")
    joined = per_instance[["sample_id", METRIC]].merge(samples[["sample_id", "target_index"]], on="sample_id")
    buckets = bucket_means(joined["target_index"].to_numpy(), {METRIC: joined[METRIC].to_numpy()}, n_candidates,
                           width)
    return [{"dataset": dataset, "model": model, "bucket": b["positions"], "n": b["n"], METRIC: b[METRIC]}
            for b in buckets]


def dataset_position_rows(profile: Profile, root: Path | str, dataset: str, models: Sequence[str],
                          samples: pd.DataFrame) -> list[dict]:
    """:func:`position_bucket_rows` of every model in ``models`` that has a per-instance file."""
    rows = []
    for model in models:
        if per_instance_path(profile, dataset, model, root).is_file():
            rows += position_bucket_rows(dataset, model, load_per_instance(profile, dataset, model, root), samples,
                                         profile.data.n_candidates)
    return rows


def render_markdown(frame: pd.DataFrame, profile_name: str) -> str:
    """One line per (dataset, model), one column per bucket: "H@10 (n)"."""
    lines = ["# H@10 by target position", "",
             f"Profile: **{profile_name}**. Buckets of the target's position in the frozen, shuffled candidate "
             "list; cells: H@10 (instances). An LLM row that reads items scores alike in every bucket; "
             "First ten candidates (the answer [1, ..., 10]) scores 1 on 1-10 and 0 on 11-20 by construction.", ""]
    if not len(frame):
        return "\n".join(lines + ["No LLM row has a per-instance file yet."]) + "\n"
    buckets = list(dict.fromkeys(frame["bucket"]))
    lines += ["| dataset | model | " + " | ".join(buckets) + " |", "|" + "---|" * (len(buckets) + 2)]
    for (dataset, model), part in frame.groupby(["dataset", "model"], sort=False):
        cells = part.set_index("bucket")
        text = ["–" if pd.isna(cells.loc[b, METRIC]) else f"{cells.loc[b, METRIC]:.3f} ({int(cells.loc[b, 'n'])})"
                for b in buckets]
        lines.append(f"| {dataset} | {model} | " + " | ".join(text) + " |")
    return "\n".join(lines) + "\n"


def write_position_buckets(profile: Profile, root: Path | str, rows: list[dict]) -> pd.DataFrame:
    """Write ``position_buckets.csv`` and ``.md`` under ``results/<profile>/``; returns the table."""
    frame = pd.DataFrame(rows, columns=COLUMNS)
    results = profile.results_dir(root)
    write_text_atomic(results / "position_buckets.csv", frame.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(results / "position_buckets.md", render_markdown(frame, profile.run.name))
    return frame
