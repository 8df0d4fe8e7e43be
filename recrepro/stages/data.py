"""Notebook 01: every dataset of the profile, canonical tables and frozen splits."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from recrepro.config import Profile
from recrepro.data.pipeline import prepare_dataset, stats_table
from recrepro.io import write_text_atomic
from recrepro.progress import stage_entry

@stage_entry
def run_data(profile: Profile, root: Path | str = ".") -> pd.DataFrame:
    """Build every dataset of the profile and write ``results/<profile>/dataset_stats.csv``."""

    rows = [prepare_dataset(profile, dataset, root) for dataset in profile.data.datasets]
    table = stats_table(rows, profile.run.name)
    out = profile.results_dir(root) / "dataset_stats.csv"
    write_text_atomic(out, table.to_csv(index=False, float_format="%.6g"))
    return table
