"""Score predictions on frozen test lists and turn them into table rows with bootstrap intervals.

Per-instance metrics are kept (``runs/<profile>/eval/<dataset>/<model>.parquet``) so that paired
significance tests between any two rows can be run later on exactly the same instances.

Reference rows beside the measured ones: ``Chance`` (source ``analytic``, the exact expectation)
and ``First ten candidates`` (source ``reference``: the fixed answer [1, ..., 10] scored like an LLM
answer on the LLM rows' test lists). The second one is the target-position distribution itself; an
LLM row that does not beat it may be reading positions rather than items.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from recrepro import paths
from recrepro.config import Profile
from recrepro.io import read_parquet, write_parquet
from recrepro.metrics import bootstrap_ci, chance_metrics, list_metrics, metric_names, score_metrics, summarize
from recrepro.tables import TABLE1_TITLE, drop_stale_not_run_rows, not_run_models, not_run_rows, write_table


def metrics_row(dataset: str, model: str, per_instance: dict[str, np.ndarray], profile: Profile,
                source: str = "measured") -> dict:
    """One table row: means, n, profile, source, then the 95% bootstrap bounds of each metric."""
    names = metric_names(profile.eval.ks)
    means = summarize(per_instance)
    bounds = bootstrap_ci(per_instance, profile.eval.bootstrap_reps, profile.eval.bootstrap_seed)
    row: dict = {"dataset": dataset, "model": model}
    row.update({name: means[name] for name in names})
    row.update({"n": len(next(iter(per_instance.values()))), "profile": profile.run.name, "source": source})
    for name in names:
        row[f"{name}_lo"], row[f"{name}_hi"] = bounds[name]
    return row


def chance_row(dataset: str, n_candidates: int, n: int, profile: Profile) -> dict:
    """The analytic chance level (PAPER.md 1.1): exact, so its interval has zero width."""
    values = chance_metrics(n_candidates, profile.eval.ks)
    row: dict = {"dataset": dataset, "model": "Chance"}
    row.update({name: values[name] for name in metric_names(profile.eval.ks)})
    row.update({"n": n, "profile": profile.run.name, "source": "analytic"})
    for name in metric_names(profile.eval.ks):
        row[f"{name}_lo"] = row[f"{name}_hi"] = values[name]
    return row


FIRST_TEN = "First ten candidates"
FIRST_TEN_K = 10  # the agent answers with ten positions (agent.top_k); this row names them in order
REFERENCE = "reference"  # source of rows that score a fixed rule, not a model


def first_ten_row(profile: Profile, dataset: str, samples: pd.DataFrame, root: Path | str = ".") -> dict:
    """``First ten candidates``: the answer [1, ..., 10] for every sample, scored and saved like any list row."""
    answer = list(range(1, FIRST_TEN_K + 1))
    row = evaluate_lists(profile, dataset, FIRST_TEN, samples, [answer] * len(samples), root)
    return {**row, "source": REFERENCE}


def per_instance_path(profile: Profile, dataset: str, model: str, root: Path | str = ".") -> Path:
    return paths.per_instance_file(profile, dataset, model, root)


def save_per_instance(profile: Profile, dataset: str, model: str, sample_ids: Sequence[int],
                      per_instance: dict[str, np.ndarray], root: Path | str = ".") -> Path:
    frame = pd.DataFrame({"sample_id": np.asarray(sample_ids, dtype=np.int64), **per_instance})
    path = per_instance_path(profile, dataset, model, root)
    write_parquet(frame, path)
    return path


def load_per_instance(profile: Profile, dataset: str, model: str, root: Path | str = ".") -> pd.DataFrame:
    return read_parquet(per_instance_path(profile, dataset, model, root))


def evaluate_scores(profile: Profile, dataset: str, model: str, samples: pd.DataFrame, scores: np.ndarray,
                    root: Path | str = ".") -> dict:
    """Rank candidates by ``scores`` [n, n_candidates]; save per-instance values; return the row."""
    per_instance = score_metrics(scores, samples["target_index"].to_numpy(), profile.eval.ks,
                                 profile.eval.tie_policy)
    save_per_instance(profile, dataset, model, samples["sample_id"], per_instance, root)
    return metrics_row(dataset, model, per_instance, profile)


def evaluate_lists(profile: Profile, dataset: str, model: str, samples: pd.DataFrame,
                   predictions: Sequence[Sequence[int] | None], root: Path | str = ".") -> dict:
    """Score ranked lists of 1-based candidate positions (None = invalid answer, a miss)."""
    per_instance = list_metrics(predictions, samples["target_index"].tolist(), profile.eval.ks)
    save_per_instance(profile, dataset, model, samples["sample_id"], per_instance, root)
    return metrics_row(dataset, model, per_instance, profile)


def write_not_run_rows(profile: Profile, root: Path | str = ".", measured: Sequence[str] | None = None) -> pd.DataFrame:
    """List the paper's baselines this run did not measure (PAPER.md 1.6) in Table 1, per profile dataset.

    ``measured`` names the Table 1 rows the run measures (default: its RecBole models). The others get
    source "not run", empty metrics (never invented) and, in the rendered table, the reason and the
    paper's values on the same dataset where the paper reports one.
    """

    measured = list(profile.recbole.models) if measured is None else list(measured)
    drop_stale_not_run_rows(profile.results_dir(root) / "table1.csv", not_run_models(measured))
    rows = not_run_rows(list(profile.data.datasets), profile.run.name, profile.eval.ks, measured)
    return write_table(profile.results_dir(root), "table1", rows.to_dict("records"), TABLE1_TITLE,
                       profile.eval.ks, paper_table="table1")
