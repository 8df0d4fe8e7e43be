"""Notebook 02: Chance, Random, MostPop and the RecBole models (SASRec, GRU4Rec, Caser) on the test lists."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from recrepro import paths
from recrepro.baselines.sequential import train_sequential
from recrepro.baselines.sequential_scorer import load_sequential
from recrepro.baselines.simple import popularity_scores, random_scores
from recrepro.config import Profile
from recrepro.data.pipeline import load_benchmark
from recrepro.evaluation import chance_row, evaluate_scores
from recrepro.progress import stage_entry
from recrepro.tables import TABLE1_TITLE, write_table

@stage_entry
def run_classic_baselines(profile: Profile, root: Path | str = ".", models: list[str] | None = None) -> pd.DataFrame:
    """Chance, Random, MostPop and the RecBole models on every dataset's test split -> table1."""

    root = Path(root)
    rows: list[dict] = []
    for dataset in profile.data.datasets:
        bench = load_benchmark(profile, dataset, root)
        test = bench.samples["test"]
        n_cand = profile.data.n_candidates
        rows.append(chance_row(dataset, n_cand, len(test), profile))
        rows.append(evaluate_scores(profile, dataset, "Random", test,
                                    random_scores(len(test), n_cand, profile.run.seed), root))
        pop = popularity_scores(test, bench.interactions, bench.valid_start_time)
        rows.append(evaluate_scores(profile, dataset, "MostPop", test, pop, root))
        model_dir = paths.classic_models_dir(profile, dataset, root)
        for model_name in models or profile.recbole.models:
            train_sequential(model_name, bench.training_interactions(), profile.recbole, profile.data.history_max,
                             profile.run.seed, paths.recbole_work_dir(profile, dataset, root), model_dir,
                             device=_device(profile))
            scorer = load_sequential(model_dir / model_name, device=_device(profile))
            scores = scorer.score_candidates(test["history_items"].tolist(), test["candidates"].tolist(),
                                             test["user_id"].tolist())
            rows.append(evaluate_scores(profile, dataset, model_name, test, scores, root))
    return write_table(profile.results_dir(root), "table1", rows, TABLE1_TITLE, profile.eval.ks, paper_table="table1")


def _device(profile: Profile) -> str:
    if profile.run.device != "auto":
        return profile.run.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
