"""Stage 1, Recommendation-oriented Trajectory Activation (RTA): list-wise GRPO with tools, on TRL.

PAPER.md 1.4 ([N]): G trajectories per training instance on the same candidate list, the list-wise
reward (:func:`recrepro.rl.reward.listwise_reward`), advantage = reward minus the group mean, no
gradient on prompt and tool-observation tokens, all-negative groups dropped; the machinery is the
shared harness :mod:`recrepro.rl.grpo`. This module is the stage: data rows, stamps, the two variants
(TIRR, and "trained R": the same RL without tools), evaluation of the final policies and the table
rows, one policy per dataset and variant under ``runs/<profile>/rta/<dataset>/``. Entry points:
:func:`run_rta` (notebook 04) and ``python -m recrepro.stages.rta``.

Details (token budgets, file layout): docs/internals.md, "rl/rta.py"; GPU commands: docs/gpu.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from recrepro import paths, stamps
from recrepro.agent.session import DatasetSession
from recrepro.agent.evaluate import eval_subset, evaluate_agent, load_backend, make_tasks, rollout_settings
from recrepro.agent.generators import RolloutSettings
from recrepro.agent.prompt import PromptSpec, build_messages, instance_from_sample, profile_spec
from recrepro.agent.warmstart import ensure_warm_tiny_model, find_warm_tiny_model
from recrepro.config import Profile
from recrepro.evaluation import chance_row
from recrepro.models import is_tiny_name
from recrepro.rl.grpo import TrainingSetup, plain, policy_id, run_training
from recrepro.rl.reward import ListwiseRewardFunc
from recrepro.rl.rta_log import ValidationSlice, read_train_log, summarize_log
from recrepro.tables import TABLE1_TITLE, TABLE2_TITLE, write_table

RTA_VERSION = 1  # bump when the training recipe in this file changes (part of the skip stamp)
VARIANTS = ("tirr", "r")
# variant -> (Table 2 model name, extra names); paper_reported.csv uses these Table 2 names.
ROW_NAMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "tirr": ("trained-TIRR-RTA", ("AgenticRec (RTA)",)),
    "r": ("trained-R", ()),
}
TABLE1_NAMES = {"AgenticRec (RTA)"}
STAMP_SECTIONS = ("data", "recbole", "tools", "user_profile", "agent", "warmstart", "reward", "rta")
RUN_KIND = "rta-run"  # the stamp of a (dataset, variant) folder: trained policy, evaluation, rows
# [G] vLLM colocated with training: the share of GPU memory vLLM may take (weights + KV cache).
# Columns the environment's reset(**row) and the reward need; the target item itself is left out.
ROW_COLUMNS = ("sample_id", "user_id", "split", "target_time", "history_items", "history_times",
               "history_ratings", "candidates", "target_index")


# ------------------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------------------

def rta_dir(profile: Profile, root: Path | str, dataset: str) -> Path:
    """``runs/<profile>/rta/<dataset>/``: one policy per dataset and variant, as the paper's tables."""
    return paths.stage_dir(profile, "rta", dataset, root)


def variant_dir(profile: Profile, root: Path | str, dataset: str, variant: str) -> Path:
    return rta_dir(profile, root, dataset) / variant


def train_log_path(profile: Profile, root: Path | str, dataset: str, variant: str) -> Path:
    """Figure 3's log (the tool-using run) is ``train_log.csv``; the R run's is ``train_log_r.csv``."""
    return rta_dir(profile, root, dataset) / ("train_log.csv" if variant == "tirr" else f"train_log_{variant}.csv")


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------

def seeded_subset(samples: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """All rows, or ``limit`` drawn with ``seed`` (kept in sample order)."""
    if limit is None or limit >= len(samples):
        return samples.reset_index(drop=True)
    return samples.sample(n=int(limit), random_state=seed).sort_values("sample_id").reset_index(drop=True)


def prompt_spec(profile: Profile, variant: str) -> PromptSpec:
    return profile_spec(profile.agent, variant)


def training_rows(samples: pd.DataFrame, views: Mapping[str, Any], spec: PromptSpec) -> list[dict[str, Any]]:
    """One row per instance: the prompt messages (system + user) and the columns reset(**row) reads."""
    rows = []
    for sample in samples.to_dict("records"):
        row = {key: plain(sample[key]) for key in ROW_COLUMNS if key in sample}
        row["prompt"] = build_messages(instance_from_sample(sample, views), spec)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------
# Stage
# ------------------------------------------------------------------------------------------------

def starting_model(profile: Profile, root: Path | str = ".") -> str:
    """The policy RL starts from: the built (warm-started) tiny model, else the profile's backbone.

    Builds nothing: a tiny model not yet built is :class:`~recrepro.models.ModelNotBuilt`
    (:func:`build_starting_model` is the step that builds it)."""
    name = profile.agent.model_name_or_path
    return str(find_warm_tiny_model(profile, root)) if is_tiny_name(name) else name


def build_starting_model(profile: Profile, root: Path | str = ".", progress: bool = True) -> str:
    """Build the starting policy when the backbone is a tiny offline model (and warm-start it when
    ``warmstart.enabled``); a hub backbone needs no step. Returns :func:`starting_model`."""
    name = profile.agent.model_name_or_path
    if is_tiny_name(name):
        return str(ensure_warm_tiny_model(profile, root, progress=progress))
    if profile.warmstart.enabled:
        print("[rta] warmstart.enabled is ignored for a hub backbone: the paper starts RL from the instruct model")
    return name


def validation_settings(profile: Profile) -> RolloutSettings:
    """Greedy settings of the in-training validation, ``rta.eval_batch_size`` trajectories per generate call.

    It generates with HF on the training model, beside ZeRO-3 and the vLLM pool on GPUs, so the batch
    bounds its KV caches (paper profile: 8 x 10,240 tokens x 144 KiB per token of Qwen3-4B ~ 11 GiB).
    """
    return dataclasses.replace(rollout_settings(profile, greedy=True, progress=False),
                               batch_size=profile.rta.eval_batch_size)


def prepare_setup(profile: Profile, root: Path | str, dataset: str, variant: str,
                  model_path: str | None = None, out_dir: Path | None = None,
                  session: DatasetSession | None = None) -> TrainingSetup:
    """Training rows, tools and the validation slice of one dataset.

    ``out_dir`` (sweeps, :mod:`recrepro.rl.sweeps`) puts checkpoints, final policy and
    ``train_log.csv`` there instead of under ``runs/<profile>/rta/<dataset>/``. ``session``: the dataset
    already opened by the caller (:meth:`DatasetSession.open` otherwise).
    """

    check_variant(variant)
    root = Path(root)
    session = session or DatasetSession.open(profile, root, dataset)
    bench, views = session.bench, session.views
    spec = prompt_spec(profile, variant)
    train = seeded_subset(bench.samples["train"], profile.rta.train_instances, profile.run.seed)
    valid = seeded_subset(bench.samples["valid"], profile.rta.eval_instances, profile.run.seed)
    factory = session.env_factory(pd.concat([train, valid], ignore_index=True))  # neighbour search batched once
    slice_ = ValidationSlice(make_tasks(valid, views, spec), factory, validation_settings(profile),
                             profile.agent.top_k, profile.agent.max_tool_calls)
    return TrainingSetup(profile=profile, variant=variant,
                         model_path=model_path or starting_model(profile, root),
                         train_rows=training_rows(train, views, spec),
                         env_factory=factory if spec.uses_tools else None, valid=slice_,
                         output_dir=(out_dir or variant_dir(profile, root, dataset, variant)) / "checkpoints",
                         log_path=(out_dir / "train_log.csv" if out_dir is not None
                                   else train_log_path(profile, root, dataset, variant)), dataset=dataset)


def config_stamp(profile: Profile, variant: str, model_path: str, dataset: str = "") -> dict[str, Any]:
    """What decides whether a finished run is still valid: config, dataset, variant, start model, code."""
    return {"rta_version": RTA_VERSION, "dataset": dataset, "variant": variant, "seed": profile.run.seed,
            "config": profile.section_hash(*STAMP_SECTIONS), "start_model": stamps.model_origin(model_path)}


def train_policy(setup: TrainingSetup, force: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (resuming from the last checkpoint of the same config) and save the final policy.

    Returns ``{"final": path, "wall_s": seconds, "resumed_from": checkpoint or None, "trainer": ...}``.
    Only the main process touches the folders; the others wait.
    """
    stamp = config_stamp(setup.profile, setup.variant, setup.model_path, setup.dataset)
    final = setup.output_dir.parent / "final"  # runs/<profile>/rta/<dataset>/<variant>/final
    return run_training(setup, stamp, final, force=force, log=log, reward_class=ListwiseRewardFunc)


def evaluate_policy(profile: Profile, root: Path | str, dataset: str, variant: str,
                    model_path: Path | str, row_name: str | None = None,
                    session: DatasetSession | None = None) -> list[dict]:
    """The trained policy on the dataset's test lists, through the zero-shot rows' evaluation path
    (``recrepro.agent.evaluate.evaluate_agent``: same instances, engine, parser, metrics and card).

    ``row_name`` (sweeps) names the row instead of the Table 1/2 names, so per-instance scores and
    the evaluation card of the main run are not overwritten."""

    root = Path(root)
    backend = load_backend(profile, root, model_path=model_path)
    name, extra = (row_name, ()) if row_name else ROW_NAMES[variant]
    session = session or DatasetSession.open(profile, root, dataset)
    samples = eval_subset(profile, session.bench.samples["test"])
    result = evaluate_agent(profile, root, dataset, samples, session.views, backend, session.env_factory(samples),
                            variant, name, extra_names=extra)
    backend.close()
    return [chance_row(dataset, profile.data.n_candidates, len(samples), profile), result.row,
            *({**result.row, "model": e} for e in extra)]


def write_rows(profile: Profile, root: Path | str, rows: list[dict]) -> dict[str, pd.DataFrame]:
    """Table 2 gets every row (chance included), Table 1 the AgenticRec (RTA) row."""

    results = profile.results_dir(root)
    rows2 = [r for r in rows if r["model"] not in TABLE1_NAMES]
    rows1 = [r for r in rows if r["model"] in TABLE1_NAMES]
    out = {"table2": write_table(results, "table2", rows2, TABLE2_TITLE, profile.eval.ks, paper_table="table2")}
    if rows1:
        out["table1"] = write_table(results, "table1", rows1, TABLE1_TITLE, profile.eval.ks, paper_table="table1")
    return out


def run_variant(profile: Profile, root: Path | str, dataset: str, variant: str, force: bool = False,
                log: Callable[[str], None] = print, out_dir: Path | None = None,
                row_name: str | None = None) -> dict[str, Any]:
    """Train one (dataset, variant) policy unless its stamp is unchanged, evaluate it, write its rows.

    With ``out_dir`` (sweeps) everything lives in that folder, the test row is named ``row_name``
    and nothing is written to Table 1/2.
    """
    root = Path(root)
    folder = out_dir if out_dir is not None else variant_dir(profile, root, dataset, variant)
    model_path = starting_model(profile, root)
    stamp = config_stamp(profile, variant, model_path, dataset)
    done = stamps.read_record(folder / stamps.RECORD_FILE, RUN_KIND, stamp)
    final = folder / "final"
    log_path = folder / "train_log.csv" if out_dir is not None else train_log_path(profile, root, dataset, variant)
    if (not force and done is not None and (final / "config.json").is_file()
            and done.get("policy") == policy_id(final)):
        log(f"[rta] {dataset}/{variant}: final policy and its evaluation are up to date; skipping")
        if out_dir is None:
            write_rows(profile, root, done["rows"])
        return {**done, "skipped": True, "final": str(final), "log": read_train_log(log_path)}
    session = DatasetSession.open(profile, root, dataset)  # one load for training and evaluation
    trained = train_policy(prepare_setup(profile, root, dataset, variant, model_path, out_dir, session),
                           force=force, log=log)
    trainer = trained.pop("trainer")
    if trainer is not None and not trainer.accelerator.is_main_process:
        return {"skipped": False, "final": str(trained["final"])}
    del trainer  # free the training copy before evaluation loads the final policy
    rows = evaluate_policy(profile, root, dataset, variant, trained["final"], row_name, session)
    if out_dir is None:
        write_rows(profile, root, rows)
    train_log = read_train_log(log_path)
    record = {"policy": policy_id(trained["final"]), "rows": rows, "wall_s_train": trained["wall_s"],
              "resumed_from": trained["resumed_from"], "summary": summarize_log(train_log)}
    record = stamps.write_record(folder / stamps.RECORD_FILE, RUN_KIND, stamp, **record)
    return {**record, "skipped": False, "final": str(trained["final"]), "log": train_log}
