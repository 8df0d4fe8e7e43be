"""Stage 2, Progressive Preference Refinement (PPR, PAPER.md 1.5 [N]): hard pairs, A/B prompts, 0/1 GRPO.

One round (``ppr.rounds`` = 1 [N]): the stage-1 TIRR policy ranks training and validation instances and
every valid list whose target is not first gives one (target, hard negative) pair, frozen as an
artifact; each pair gives a MORE and a LESS likely A/B prompt [G]; stage 1's GRPO harness trains on
them with reward 1 / 0 / -1 (right letter, wrong letter, invalid) for one epoch [N]. Preference
accuracy is measured before and after on held-out mined and uniformly random pairs (exact McNemar),
beside the paper's Games numbers, and the PPR policy is evaluated like stage 1's (Table 2
``trained-TIRR-RTA+PPR``, Table 1 ``AgenticRec (RTA+PPR)``). A round that mines no pair is skipped.

Details (the steps, settings and artifacts): docs/internals.md, "rl/ppr.py"; GPU commands: docs/gpu.md.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from recrepro import paths, stamps
from recrepro.agent.session import DatasetSession
from recrepro.agent.evaluate import eval_subset, evaluate_agent, load_backend, make_tasks, rollout_settings
from recrepro.agent.pairwise import ppr_prompt_fingerprint
from recrepro.agent.rollout import RolloutEngine
from recrepro.config import Profile
from recrepro.evaluation import chance_row
from recrepro.io import ManifestError, atomic_dir, read_manifest, write_json_atomic, write_text_atomic
from recrepro.rl import grpo, rta
from recrepro.rl.mining import PolicyOutput, mine_pairs
from recrepro.rl.pairs import (PAIR_KINDS, PreferenceRewardFunc, judge_records, pair_rows, pair_tasks, paired_test,
                               random_pairs, read_pairs, summarize_judgements, write_pairs)
from recrepro.tables import TABLE1_TITLE, TABLE2_TITLE, write_table

PPR_VERSION = 2  # bump when the recipe changes (part of the skip stamp); 2: tools name the items [A], [B]
TABLE2_NAME = "trained-TIRR-RTA+PPR"
TABLE1_NAME = "AgenticRec (RTA+PPR)"
STAMP_SECTIONS = (*rta.STAMP_SECTIONS, "ppr")
RUN_KIND = "ppr-run"  # the stamp of a PPR folder: rounds, accuracies, rows


# ------------------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------------------

def ppr_dir(profile: Profile, root: Path | str, dataset: str) -> Path:
    """``runs/<profile>/ppr/<dataset>/``: pairs, checkpoints, the final policy, logs, accuracy."""
    return paths.stage_dir(profile, "ppr", dataset, root)


def round_dir(profile: Profile, root: Path | str, dataset: str, k: int, folder: Path | None = None) -> Path:
    """Round ``k``'s folder in the main PPR run, or in ``folder`` (a sweep point's run)."""
    return (Path(folder) if folder is not None else ppr_dir(profile, root, dataset)) / f"round{k}"


@dataclass(frozen=True)
class RoundPaths:
    """Where round ``k`` starts from and writes to (the last round's policy is ``ppr/<dataset>/final``)."""

    start: Path  # the policy that mines and is trained: stage 1's, then the previous round's
    pairs: Path
    checkpoints: Path
    final: Path
    train_log: Path


def round_paths(profile: Profile, root: Path | str, dataset: str, k: int, folder: Path | None = None,
                start: Path | None = None) -> RoundPaths:
    """Round ``k`` of the main PPR run, or of a run in ``folder`` starting from ``start`` (a sweep point)."""
    if not 1 <= k <= profile.ppr.rounds:
        raise ValueError(f"round {k} outside 1..ppr.rounds={profile.ppr.rounds}")
    here, last = round_dir(profile, root, dataset, k, folder), k == profile.ppr.rounds
    if k > 1:
        start = round_dir(profile, root, dataset, k - 1, folder) / "final"
    elif start is None:
        start = stage1_policy(profile, root, dataset)
    return RoundPaths(start=start, pairs=here / "pairs", checkpoints=here / "checkpoints",
                      final=here.parent / "final" if last else here / "final",
                      train_log=here.parent / "train_log.csv" if last else here / "train_log.csv")


def stage1_policy(profile: Profile, root: Path | str, dataset: str) -> Path:
    """The stage-1 TIRR final policy; a clear error when notebook 04 has not produced it."""
    final = rta.variant_dir(profile, root, dataset, "tirr") / "final"
    if not (final / "config.json").is_file():
        raise FileNotFoundError(f"{final}: the stage-1 TIRR policy is missing; run notebook 04 (RTA) first")
    return final


# ------------------------------------------------------------------------------------------------
# Rollouts: mining and preference accuracy
# ------------------------------------------------------------------------------------------------

@dataclass
class DatasetContext:
    """What every step of one dataset shares: benchmark, item views, instances and the tool factory."""

    dataset: str
    bench: Any
    views: dict
    train: pd.DataFrame
    valid: pd.DataFrame
    env_factory: Callable[[], Any]
    session: DatasetSession | None = None  # the opened dataset, for the test lists' environments


def dataset_context(profile: Profile, root: Path | str, dataset: str) -> DatasetContext:
    session = DatasetSession.open(profile, root, dataset)
    bench = session.bench
    train = rta.seeded_subset(bench.samples["train"], profile.ppr.train_instances, profile.run.seed)
    valid = rta.seeded_subset(bench.samples["valid"], profile.ppr.valid_instances, profile.run.seed)
    factory = session.env_factory(pd.concat([train, valid], ignore_index=True))  # neighbour search batched once
    return DatasetContext(dataset, bench, session.views, train, valid, factory, session)


def _engine(profile: Profile, backend: Any, env_factory: Callable[[], Any]) -> Any:
    return RolloutEngine(backend.generator, backend.tokenizer, env_factory,
                         rollout_settings(profile, greedy=True, progress=False), top_k=profile.agent.top_k,
                         max_tool_calls=profile.agent.max_tool_calls, max_context_tokens=backend.max_context_tokens)


def policy_outputs(profile: Profile, backend: Any, ctx: DatasetContext, samples: pd.DataFrame) -> list[PolicyOutput]:
    """The policy's greedy ranking of every instance (None where invalid), via the shared engine."""

    tasks = make_tasks(samples, ctx.views, rta.prompt_spec(profile, "tirr"))
    records = _engine(profile, backend, ctx.env_factory).run(tasks, n_samples=1, desc=f"{ctx.dataset} mining")
    return [PolicyOutput(sample_id=int(s["sample_id"]), user_id=str(s["user_id"]),
                         candidates=tuple(str(c) for c in s["candidates"]), target_index=int(s["target_index"]),
                         ranking=tuple(r.answer) if r.answer else None)
            for s, r in zip(samples.to_dict("records"), records)]


def mining_provenance(profile: Profile, dataset: str, model_path: Path, k: int) -> dict[str, Any]:
    """What round ``k``'s pairs depend on: the mining policy (its weights), the config and the seed."""
    return {"ppr_version": PPR_VERSION, "round": k, "dataset": dataset, "seed": profile.run.seed + k,
            "policy": stamps.model_origin(model_path),
            "config": profile.section_hash(*STAMP_SECTIONS)}


def mine_round(profile: Profile, root: Path | str, ctx: DatasetContext, paths: RoundPaths, k: int,
               backend: Any | None = None, log: Callable[[str], None] = print) -> Path:
    """Mine round ``k``'s pairs with ``paths.start`` (reused when their manifest says same policy/config)."""

    folder, model_path = paths.pairs, paths.start
    provenance = mining_provenance(profile, ctx.dataset, model_path, k)
    try:
        if read_manifest(folder).get("config") == provenance:
            read_pairs(folder)
            return folder
    except (ManifestError, FileNotFoundError, ValueError):
        pass
    own = backend is None  # a backend passed in belongs to the caller, who closes it
    backend = backend or load_backend(profile, root, model_path=model_path)
    pairs, stats = {}, {}
    for split, samples in (("train", ctx.train), ("valid", ctx.valid)):
        # One generator per split, seeded from the run seed and the round (PAPER.md 1.5: uniform draw).
        pairs[split], stats[split] = mine_pairs(policy_outputs(profile, backend, ctx, samples),
                                                seed=profile.run.seed + k + (1000 if split == "valid" else 0))
        log(f"[ppr] {ctx.dataset} round {k} {split}: {stats[split]['pairs']} pairs from {stats[split]['instances']} "
            f"instances ({stats[split]['invalid_skipped']} invalid answers skipped)")
    if own:
        backend.close()
    return write_pairs(folder, pairs, stats, provenance)


def preference_accuracy(profile: Profile, backend: Any, ctx: DatasetContext, rows: Sequence[Mapping[str, Any]],
                        desc: str) -> tuple[dict[str, Any], pd.DataFrame]:
    """Greedy judgements of the held-out pairs (both directions) and their summary."""
    if not rows:
        return summarize_judgements(judge_records([], [])), judge_records([], [])
    records = _engine(profile, backend, ctx.env_factory).run(pair_tasks(rows), n_samples=1, desc=desc)
    judged = judge_records(records, rows)
    return summarize_judgements(judged), judged


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------

def grpo_overrides(profile: Profile) -> dict[str, Any]:
    """Stage 1's GRPO config with PPR's epochs, steps and batch (prompts x G per step)."""
    completions = profile.ppr.batch_size * profile.rta.group_size
    split = grpo.n_processes() * profile.rta.gradient_accumulation_steps
    if completions % split:
        raise ValueError(f"ppr.batch_size x rta.group_size = {completions} completions per step cannot be split "
                         f"over {split} process x accumulation steps")
    return {"num_train_epochs": profile.ppr.epochs, "max_steps": profile.ppr.max_steps,
            "per_device_train_batch_size": completions // split}


def train_round(profile: Profile, ctx: DatasetContext, paths: RoundPaths, rows: list[dict[str, Any]],
                stamp: Mapping[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """One PPR round of GRPO on ``rows`` from ``paths.start``, through stage 1's training routine.

    Runs as one process or under ``accelerate launch``; resumes checkpoints of the same stamp, and
    reuses a policy already trained to the end with it (e.g. by a launched ``--stage train``), so
    notebook 05 then only measures and evaluates (:func:`recrepro.rl.rta.run_training`).
    """
    setup = grpo.TrainingSetup(profile=profile, variant="tirr", model_path=str(paths.start), train_rows=rows,
                              env_factory=ctx.env_factory, valid=None, output_dir=paths.checkpoints,
                              log_path=paths.train_log, dataset=ctx.dataset)
    trained = grpo.run_training(setup, stamp, paths.final, log=log, reward_class=PreferenceRewardFunc,
                               **grpo_overrides(profile))
    del trained["trainer"]  # free the training copy before the next round or the evaluation loads a policy
    return {**trained, "final": str(paths.final), "trained": True}


def round_stamp(stamp: Mapping[str, Any], k: int, paths: RoundPaths) -> dict[str, Any]:
    """The checkpoints' stamp: the stage's stamp, the round and its starting policy."""
    return {**stamp, "round": k, "start": str(paths.start.resolve())}


def train_stage(profile: Profile, root: Path | str, dataset: str, k: int = 1,
                log: Callable[[str], None] = print, folder: Path | None = None, start: Path | None = None,
                row_name: str | None = None) -> dict[str, Any]:
    """Train round ``k`` on its mined pairs (``--stage train``; under ``accelerate launch`` on GPUs).

    ``folder``, ``start`` and ``row_name`` as in :func:`run_dataset` (a Figure 5 sweep point)."""
    paths = round_paths(profile, root, dataset, k, folder, start)
    if not (paths.pairs / "manifest.json").is_file():
        raise FileNotFoundError(f"{paths.pairs}: round {k} has no mined pairs; run "
                                f"`python -m recrepro.stages.ppr --stage mine --round {k}` first (one process)")
    if read_manifest(paths.pairs).get("config") != mining_provenance(profile, dataset, paths.start, k):
        raise ValueError(f"{paths.pairs}: these pairs were mined by another policy or config than round {k} now "
                         f"starts from ({paths.start}); run `python -m recrepro.stages.ppr --stage mine --round {k}` "
                         "again (one process)")
    pairs, _ = read_pairs(paths.pairs)
    ctx = dataset_context(profile, root, dataset)
    rows = pair_rows(pairs["train"], ctx.train, ctx.views, profile.agent.max_tool_calls,
                     profile.agent.affinity_order > 0)
    if not rows:
        raise ValueError(f"{paths.pairs}: no training pairs in round {k}; nothing to train (the in-process stage "
                         f"carries the policy forward)")
    stamp = round_stamp(run_stamp(profile, root, dataset, start, row_name), k, paths)
    return train_round(profile, ctx, paths, rows, stamp, log)


def _carry_forward(model_path: str, final: Path) -> None:
    """No pairs to learn from: the round's policy is the starting one (copied, so paths stay uniform)."""

    with atomic_dir(final) as tmp:
        for item in Path(model_path).iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / item.name)


# ------------------------------------------------------------------------------------------------
# Stage
# ------------------------------------------------------------------------------------------------

def ppr_stamp(profile: Profile, root: Path | str, dataset: str, start: Path) -> dict[str, Any]:
    base = rta.config_stamp(profile, "tirr", str(start), dataset)
    return {**base, "ppr_version": PPR_VERSION, "config": profile.section_hash(*STAMP_SECTIONS),
            "prompts": ppr_prompt_fingerprint()}


def run_stamp(profile: Profile, root: Path | str, dataset: str, start: Path | None = None,
              row_name: str | None = None) -> dict[str, Any]:
    """The stamp of a whole PPR run: the main one (from stage 1's policy) or a sweep point's (``row_name``)."""
    start = Path(start) if start is not None else stage1_policy(profile, root, dataset)
    return {**ppr_stamp(profile, root, dataset, start), **({"row_name": row_name} if row_name else {})}


def write_rows(profile: Profile, root: Path | str, rows: list[dict]) -> dict[str, pd.DataFrame]:
    """Table 2 gets the chance and PPR rows, Table 1 the ``AgenticRec (RTA+PPR)`` row (as rta.write_rows)."""

    results = profile.results_dir(root)
    rows2 = [r for r in rows if r["model"] != TABLE1_NAME]
    rows1 = [r for r in rows if r["model"] == TABLE1_NAME]
    return {"table2": write_table(results, "table2", rows2, TABLE2_TITLE, profile.eval.ks, paper_table="table2"),
            "table1": write_table(results, "table1", rows1, TABLE1_TITLE, profile.eval.ks, paper_table="table1")}


def evaluate_test(profile: Profile, root: Path | str, ctx: DatasetContext, backend: Any,
                  row_name: str | None = None) -> list[dict]:
    """The PPR policy on the frozen test lists, exactly as :func:`recrepro.rl.rta.evaluate_policy`.

    With ``row_name`` (a sweep point) only that row, and no chance row."""

    samples = eval_subset(profile, ctx.bench.samples["test"])
    result = evaluate_agent(profile, root, ctx.dataset, samples, ctx.views, backend, ctx.session.env_factory(samples),
                            "tirr",
                            row_name or TABLE2_NAME, extra_names=() if row_name else (TABLE1_NAME,))
    if row_name is not None:
        return [result.row]
    return [chance_row(ctx.dataset, profile.data.n_candidates, len(samples), profile), result.row,
            {**result.row, "model": TABLE1_NAME}]


def _save_accuracy(folder: Path, accuracy: Mapping[str, Any], judged: Mapping[str, pd.DataFrame]) -> None:
    write_json_atomic(folder / "preference_accuracy.json", stamps.canonical(accuracy))
    for stage, frame in judged.items():
        write_text_atomic(folder / f"judgements_{stage}.csv", frame.to_csv(index=False))


def run_dataset(profile: Profile, root: Path | str, dataset: str, force: bool = False,
                log: Callable[[str], None] = print, folder: Path | None = None, start: Path | None = None,
                row_name: str | None = None) -> dict[str, Any]:
    """Mine, train (``ppr.rounds`` rounds), measure preference accuracy, evaluate, write rows; or skip.

    The main run lives in ``runs/<profile>/ppr/<dataset>/``, starts from the stage-1 TIRR policy and
    writes the Table 1/2 rows. A sweep point (Figure 5) passes its own ``folder``, its stage-1
    policy as ``start`` and a ``row_name``: its one test row is returned and no table is touched.
    """

    root = Path(root)
    folder = Path(folder) if folder is not None else ppr_dir(profile, root, dataset)
    start = Path(start) if start is not None else stage1_policy(profile, root, dataset)
    stamp = run_stamp(profile, root, dataset, start, row_name)
    final = folder / "final"
    done = stamps.read_record(folder / stamps.RECORD_FILE, RUN_KIND, stamp)
    if (not force and done is not None and (final / "config.json").is_file()
            and done.get("policy") == grpo.policy_id(final)):
        log(f"[ppr] {dataset}: final policy and its evaluation are up to date; skipping")
        if row_name is None:
            write_rows(profile, root, done["rows"])
        return {**done, "skipped": True, "final": str(final)}
    if force:
        shutil.rmtree(folder, ignore_errors=True)
    ctx = dataset_context(profile, root, dataset)
    rounds, valid_rows, before = [], None, None
    # Control pairs: every held-out instance's target against a uniformly drawn other candidate.
    control_rows = pair_rows(random_pairs(ctx.valid, profile.run.seed), ctx.valid, ctx.views,
                             profile.agent.max_tool_calls, profile.agent.affinity_order > 0)
    for k in range(1, profile.ppr.rounds + 1):
        paths = round_paths(profile, root, dataset, k, folder, start)
        backend = load_backend(profile, root, model_path=paths.start)
        pairs, stats = read_pairs(mine_round(profile, root, ctx, paths, k, backend, log))
        if k == 1:  # the held-out pairs are the stage-1 policy's mistakes, fixed for before and after
            valid_rows = pair_rows(pairs["valid"], ctx.valid, ctx.views, profile.agent.max_tool_calls,
                                   profile.agent.affinity_order > 0)
            before, judged_before = preference_accuracy(profile, backend, ctx, valid_rows, f"{dataset} accuracy before")
            random_before, judged_random_before = preference_accuracy(profile, backend, ctx, control_rows,
                                                                      f"{dataset} random-pair accuracy before")
        backend.close()
        del backend
        rows = pair_rows(pairs["train"], ctx.train, ctx.views, profile.agent.max_tool_calls,
                         profile.agent.affinity_order > 0)
        if rows:
            trained = train_round(profile, ctx, paths, rows, round_stamp(stamp, k, paths), log)
        else:
            log(f"[ppr] {dataset} round {k}: no training pairs (the policy answered no instance validly with the "
                f"target below first place); the starting policy is carried forward untrained")
            _carry_forward(str(paths.start), paths.final)
            trained = {"final": str(paths.final), "wall_s": 0.0, "resumed_from": None, "trained": False}
        rounds.append({"round": k, "mining": stats, "train_rows": len(rows), **trained})
    backend = load_backend(profile, root, model_path=final)
    after, judged_after = preference_accuracy(profile, backend, ctx, valid_rows or [], f"{dataset} accuracy after")
    random_after, judged_random_after = preference_accuracy(profile, backend, ctx, control_rows,
                                                            f"{dataset} random-pair accuracy after")
    accuracy = {"before": before, "after": after, "random": {"before": random_before, "after": random_after},
                "tests": {PAIR_KINDS[0]: paired_test(judged_before, judged_after),
                          PAIR_KINDS[1]: paired_test(judged_random_before, judged_random_after)}}
    _save_accuracy(folder, accuracy, {"before": judged_before, "after": judged_after,
                                      "random_before": judged_random_before, "random_after": judged_random_after})
    rows = evaluate_test(profile, root, ctx, backend, row_name)
    backend.close()
    if row_name is None:
        write_rows(profile, root, rows)
    record = {"policy": grpo.policy_id(final), "rows": rows, "rounds": rounds, "accuracy": accuracy}
    record = stamps.write_record(folder / stamps.RECORD_FILE, RUN_KIND, stamp, **record)
    return {**record, "skipped": False, "final": str(final)}


def mine_stage(profile: Profile, root: Path | str, dataset: str, k: int = 1,
               log: Callable[[str], None] = print, folder: Path | None = None, start: Path | None = None) -> Path:
    """Mine round ``k``'s pairs with the round's starting policy (``--stage mine``, one process)."""
    paths = round_paths(profile, root, dataset, k, folder, start)
    if not (paths.start / "config.json").is_file():
        raise FileNotFoundError(f"{paths.start}: round {k}'s starting policy is missing; train round {k - 1} first")
    return mine_round(profile, root, dataset_context(profile, root, dataset), paths, k, log=log)

