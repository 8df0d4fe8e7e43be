"""The data stage: raw files -> filtered interactions -> samples -> split -> frozen candidates.

:func:`prepare_dataset` writes one folder per dataset under ``runs/<profile>/data/<dataset>/``
(atomically: a failure leaves the previous folder untouched) with a ``manifest.json``;
:func:`load_benchmark` verifies that manifest before returning anything, so later stages refuse
to run on artifacts that changed after they were written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recrepro import paths
from recrepro.config import Profile
from recrepro.data.amazon import load_category
from recrepro.data.amazon_download import fetch_category
from recrepro.data.movielens import load_ml100k
from recrepro.data.samples import add_candidates, build_samples, filter_interactions, iso_to_ts, split_samples
from recrepro.data.schema import SPLITS, DataError
from recrepro.io import atomic_dir, read_parquet, verify_manifest, write_json_atomic, write_manifest, write_parquet
from recrepro.paper import paper_name, reported_dataset_stats

DATA_SECTIONS = ("data",)


@dataclass(frozen=True)
class Benchmark:
    """One dataset's frozen artifacts, loaded after their manifest was verified."""

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    samples: dict[str, pd.DataFrame]
    manifest: dict

    @property
    def train_end_time(self) -> int:
        """Latest target time of the training split; models fitted on train see nothing later."""
        return int(self.samples["train"]["target_time"].max())

    @property
    def valid_start_time(self) -> int:
        return int(self.samples["valid"]["target_time"].min())

    def training_interactions(self) -> pd.DataFrame:
        """Interactions dated strictly before the first validation target: what models may fit on."""
        return self.interactions[self.interactions["timestamp"] < self.valid_start_time].reset_index(drop=True)


def dataset_dir(profile: Profile, dataset: str, root: Path | str = ".") -> Path:
    return paths.data_dir(profile, dataset, root)


def _load_raw(profile: Profile, dataset: str, root: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, Counter]:
    cfg = profile.data
    if cfg.source == "movielens":
        interactions, items, users = load_ml100k()
        return interactions, items, users, Counter()

    # Skips files whose SHA-256 matches downloads.json, so a rerun needs no network.
    fetch_category(root / cfg.raw_dir, cfg.base_url, dataset)
    tables = load_category(root / cfg.raw_dir, dataset,
                           iso_to_ts(cfg.window_start, "data.window_start"),
                           iso_to_ts(cfg.window_end, "data.window_end"))
    users = pd.DataFrame({"user_id": np.sort(tables.interactions["user_id"].unique()), "attributes": ""})
    return tables.interactions, tables.items, users, Counter(tables.skips)


def dataset_statistics(name: str, interactions: pd.DataFrame, items: pd.DataFrame,
                       splits: dict[str, pd.DataFrame], counts: Counter) -> dict:
    n_users = int(interactions["user_id"].nunique())
    n_items = int(len(items))
    n_inter = int(len(interactions))
    all_samples = pd.concat(list(splits.values()))
    stats = {
        "dataset": name,
        "users": n_users,
        "items": n_items,
        "interactions": n_inter,
        "sparsity": 1.0 - n_inter / (n_users * n_items),
        "interactions_per_user": n_inter / n_users,
        **{f"samples_{split}": int(len(splits[split])) for split in SPLITS},
        "mean_history_length": float(all_samples["history_items"].map(len).mean()),
        "first_target": int(all_samples["target_time"].min()),
        "last_target": int(all_samples["target_time"].max()),
    }
    stats.update({f"skipped_{key}": int(value) for key, value in sorted(counts.items())})
    return stats


def prepare_dataset(profile: Profile, dataset: str, root: Path | str = ".") -> dict:
    """Build and write one dataset's benchmark; returns its statistics."""
    root = Path(root)
    cfg = profile.data
    interactions, items, users, counts = _load_raw(profile, dataset, root)
    interactions, items, dropped = filter_interactions(interactions, items, cfg, profile.run.seed)
    counts.update(dropped)
    users = users[users["user_id"].isin(interactions["user_id"])].sort_values("user_id").reset_index(drop=True)
    samples, skipped = build_samples(interactions, cfg)
    counts.update(skipped)
    samples = split_samples(samples, cfg.split_ratios)
    samples = add_candidates(samples, interactions, items["item_id"].tolist(), cfg.n_candidates, profile.run.seed)
    splits = {split: samples[samples["split"] == split].reset_index(drop=True) for split in SPLITS}
    stats = dataset_statistics(dataset, interactions, items, splits, counts)

    with atomic_dir(dataset_dir(profile, dataset, root)) as tmp:
        write_parquet(interactions, tmp / "interactions.parquet")
        write_parquet(items, tmp / "items.parquet")
        write_parquet(users, tmp / "users.parquet")
        for split, frame in splits.items():
            write_parquet(frame, tmp / f"samples_{split}.parquet")
        write_json_atomic(tmp / "stats.json", stats)
        rows = {"interactions": len(interactions), "items": len(items), "users": len(users),
                **{f"samples_{s}": len(f) for s, f in splits.items()}}
        write_manifest(tmp, config=profile.to_dict()["data"] | {"seed": profile.run.seed}, rows=rows,
                       extra={"stage": "data", "dataset": dataset})
    return stats


def load_benchmark(profile: Profile, dataset: str, root: Path | str = ".") -> Benchmark:
    folder = dataset_dir(profile, dataset, root)
    manifest = verify_manifest(folder)
    expected = profile.to_dict()["data"] | {"seed": profile.run.seed}
    if manifest.get("config") != expected:
        raise DataError(f"{folder}/manifest.json: written with a different data config; rerun the data stage")
    samples = {split: read_parquet(folder / f"samples_{split}.parquet") for split in SPLITS}
    return Benchmark(
        name=dataset,
        interactions=read_parquet(folder / "interactions.parquet"),
        items=read_parquet(folder / "items.parquet"),
        users=read_parquet(folder / "users.parquet"),
        samples=samples,
        manifest=manifest,
    )


def stats_table(stats_rows: list[dict], profile_name: str) -> pd.DataFrame:
    """Our statistics beside the paper's (PAPER.md 1.2, mark [N]) where the paper has the dataset."""
    table = pd.DataFrame(stats_rows)
    paper = reported_dataset_stats().set_index("dataset")
    for column in ("users", "items", "interactions"):
        table[f"paper_{column}"] = table["dataset"].map(paper[column]).astype("Int64")
    table["paper_name"] = table["dataset"].map(paper_name)
    table["paper_mark"] = table["dataset"].map(paper["mark"])
    table.insert(0, "profile", profile_name)
    return table
