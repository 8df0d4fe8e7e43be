"""Every folder and file of a run, in one place: ``runs/<profile>/...`` (``Profile.run_dir``).

Layout (``<d>`` = dataset). A run writes only here; the committed reference outputs
``results/<profile>/`` and ``figures/<profile>/`` change only through ``python -m recrepro promote``
(:func:`reference_dir`). A run with ``--set`` overrides is named ``<profile>+<8 hex digits>``
(``recrepro.config.override_key``), so it has a folder, and tables, of its own.

    data/<d>/                  canonical tables and splits (notebook 01)
    recbole_work/<d>/          RecBole's own files while it trains (notebook 02)
    models/<d>/<model>/        exported classic models; models/tiny-qwen3-*/ the tiny LLMs
    user_profiles/<d>/         profile caches (notebook 03)
    eval/<d>/<model>.parquet   per-instance metrics of every scored row
    agent_eval/<d>/<model>.jsonl  the trajectories behind an LLM row
    sft/<d>/  rta/<d>/  ppr/<d>/  sweeps/<d>/   trained policies and their logs
    jobs/                      side-by-side job logs and resolved profiles
    results/                   this run's tables (``Profile.results_dir``), stamped with run and config
    figures/                   this run's figures (``Profile.figures_dir``)
    environment.json           versions and hardware of the run
"""

from __future__ import annotations

from pathlib import Path

from recrepro.config import Profile


def run_dir(profile: Profile, root: Path | str = ".") -> Path:
    return profile.run_dir(root)


def data_dir(profile: Profile, dataset: str, root: Path | str = ".") -> Path:
    return run_dir(profile, root) / "data" / dataset


def recbole_work_dir(profile: Profile, dataset: str, root: Path | str = ".") -> Path:
    return run_dir(profile, root) / "recbole_work" / dataset


def classic_models_dir(profile: Profile, dataset: str, root: Path | str = ".") -> Path:
    """Exported sequential models of ``dataset``, one folder per model name."""
    return run_dir(profile, root) / "models" / dataset


def user_profiles_file(profile: Profile, dataset: str, generator: str, version: str, root: Path | str = ".") -> Path:
    return run_dir(profile, root) / "user_profiles" / dataset / f"{generator}-{version}.parquet"


def _safe(model: str) -> str:
    return model.replace("/", "_").replace(" ", "_")


def per_instance_file(profile: Profile, dataset: str, model: str, root: Path | str = ".") -> Path:
    return run_dir(profile, root) / "eval" / dataset / f"{_safe(model)}.parquet"


def trajectories_file(profile: Profile, dataset: str, model: str, root: Path | str = ".") -> Path:
    return run_dir(profile, root) / "agent_eval" / dataset / f"{model}.jsonl"


def stage_dir(profile: Profile, stage: str, dataset: str, root: Path | str = ".") -> Path:
    """``sft``, ``sdpo``, ``llara``, ``rere``, ``rta``, ``ppr`` or ``sweeps`` of ``dataset``."""
    if stage not in ("sft", "sdpo", "llara", "rere", "rta", "ppr", "sweeps"):
        raise ValueError(f"unknown training stage folder {stage!r}")
    return run_dir(profile, root) / stage / dataset


def notebooks_dir(profile: Profile, root: Path | str = ".") -> Path:
    """The run's executed notebooks (written by the runner)."""
    return run_dir(profile, root) / "notebooks"


def jobs_dir(profile: Profile, root: Path | str = ".") -> Path:
    return run_dir(profile, root) / "jobs"


def environment_file(profile: Profile, root: Path | str = ".") -> Path:
    return run_dir(profile, root) / "environment.json"


def reference_dir(profile: Profile, kind: str, root: Path | str = ".") -> Path:
    """The committed reference of ``kind`` ("results" or "figures"): ``results/<name>/`` or ``figures/<name>/``."""
    if kind not in ("results", "figures"):
        raise ValueError(f"unknown reference kind {kind!r}; expected 'results' or 'figures'")
    folder = profile.run.results_dir if kind == "results" else profile.run.figures_dir
    return Path(root) / folder / profile.run.name
