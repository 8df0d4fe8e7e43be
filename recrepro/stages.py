"""Stage functions the notebooks call: each reads earlier artifacts, writes its own, returns tables.

Notebooks stay thin: a parameters cell, one call here, and plots. The CLI runner executes the
notebooks; these functions are equally usable from a script or a test.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd

from recrepro import paths
from recrepro.agent.card import load_eval_cards
from recrepro.agent.corpus import ensure_tiny_agent_model
from recrepro.baselines.sequential import train_sequential
from recrepro.baselines.sequential_scorer import load_sequential
from recrepro.baselines.simple import popularity_scores, random_scores
from recrepro.config import Profile
from recrepro.data.pipeline import load_benchmark, prepare_dataset, stats_table
from recrepro.evaluation import FIRST_TEN, chance_row, evaluate_scores
from recrepro.io import write_json_atomic, write_text_atomic
from recrepro.positions import dataset_position_rows, write_position_buckets
from recrepro.significance import run_comparisons
from recrepro.tables import TABLE1_TITLE, write_table
from recrepro.tools.profiles import ProfileGenerator, write_user_profiles

KEY_PACKAGES = ("torch", "transformers", "trl", "peft", "recbole", "numpy", "pandas", "papermill")


def environment_report(profile: Profile) -> dict:
    """Versions, hardware and the profile in use, for the record of every run."""
    import torch

    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "profile": profile.run.name,
        "profile_file": profile.source_path,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": __import__("os").cpu_count(),
        "cuda_available": bool(torch.cuda.is_available()),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "packages": versions,
        "seed": profile.run.seed,
    }


def run_setup(profile: Profile, root: Path | str = ".") -> dict:
    report = environment_report(profile)
    write_json_atomic(paths.environment_file(profile, root), report)
    return report


def run_data(profile: Profile, root: Path | str = ".") -> pd.DataFrame:
    """Build every dataset of the profile and write ``results/<profile>/dataset_stats.csv``."""

    rows = [prepare_dataset(profile, dataset, root) for dataset in profile.data.datasets]
    table = stats_table(rows, profile.run.name)
    out = profile.results_dir(root) / "dataset_stats.csv"
    write_text_atomic(out, table.to_csv(index=False, float_format="%.6g"))
    return table


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


def run_user_profiles(profile: Profile, root: Path | str = ".", generator: ProfileGenerator | None = None,
                      progress: bool = True) -> pd.DataFrame:
    """Notebook 03: a profile for every instance (:func:`recrepro.tools.profiles.write_user_profiles`).

    A tiny offline profile writer is built here, with the agent's tokenizer corpus, because the
    tools layer below cannot build agent models.
    """
    def tiny_model(name: str) -> Path:
        return ensure_tiny_agent_model(profile.run_dir(root), name, seed=profile.run.seed, tools=profile.tools)

    return write_user_profiles(profile, root, generator, progress=progress, tiny_model=tiny_model)


def _device(profile: Profile) -> str:
    if profile.run.device != "auto":
        return profile.run.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def llm_rows(profile: Profile, root: Path | str, dataset: str) -> list[str]:
    """The LLM rows of ``dataset``: measured Table 2 / Table 1 rows with an evaluation card.

    Every agent-style evaluation (frozen, trained, TALLRec-like) writes a card under its main name;
    its Table 1 alias ("AgenticRec (RTA)") has none and sweep points are in neither table, so each
    LLM evaluation is listed once, in table order.
    """

    results = profile.results_dir(root)
    carded = {c["model"] for c in load_eval_cards(results).values() if c["dataset"] == dataset}
    names: list[str] = []
    for stem in ("table2", "table1"):
        path = results / f"{stem}.csv"
        if path.is_file():
            table = pd.read_csv(path)
            rows = table[(table["dataset"] == dataset) & (table["source"] == "measured")]
            names += [m for m in rows["model"] if m in carded]
    return list(dict.fromkeys(names))


def run_eval_reports(profile: Profile, root: Path | str = ".") -> dict[str, pd.DataFrame]:
    """Notebook 06's last step: H@10 by target position of every LLM row and of ``First ten candidates``
    (``position_buckets.csv``/``.md``) and the paired ablation comparisons (``comparisons.csv``/``.md``)."""

    rows: list[dict] = []
    for dataset in profile.data.datasets:
        test = load_benchmark(profile, dataset, root).samples["test"]
        rows += dataset_position_rows(profile, root, dataset, [*llm_rows(profile, root, dataset), FIRST_TEN], test)
    return {"position_buckets": write_position_buckets(profile, root, rows),
            "comparisons": run_comparisons(profile, root)}
