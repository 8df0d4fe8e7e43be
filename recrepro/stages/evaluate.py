"""Notebook 06: the frozen agents, the trained LLM baselines (TALLRec-like, S-DPO, LLaRA, ReRe) and the reports.

CLI for the trained baselines on GPUs: ``--stage train`` trains one baseline (under ``accelerate launch``: every
process trains, the main process saves), ``--stage all`` (one process) trains what is not trained yet with this
config, evaluates on the test lists and writes its Table 1 rows::

    accelerate launch --config_file configs/accelerate/ddp.yaml -m recrepro.stages.evaluate --profile paper \\
        --baseline sdpo --stage train
    python -m recrepro.stages.evaluate --profile paper --baseline sdpo --stage all
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from recrepro.agent.card import load_eval_cards
from recrepro.agent.chat_client import chat_backend, evaluate_chat_agent
from recrepro.agent.session import DatasetSession
from recrepro.agent.evaluate import FROZEN_LABELS, AgentBackend, eval_subset, evaluate_agent, load_backend, served_backend
from recrepro.baselines import llara, rere, sdpo
from recrepro.baselines.llara_eval import evaluate_llara
from recrepro.baselines.sft import TABLE1_NAME as SFT_NAME
from recrepro.baselines.sft import evaluate_sft, train_sft
from recrepro.config import Profile
from recrepro.data.pipeline import load_benchmark
from recrepro.evaluation import FIRST_TEN, chance_row, first_ten_row, write_not_run_rows
from recrepro.positions import dataset_position_rows, write_position_buckets
from recrepro.overrides import load_cli_profile
from recrepro.progress import Progress, stage_entry
from recrepro.rl.grpo import n_processes
from recrepro.rl.rta import build_starting_model, starting_model
from recrepro.significance import run_comparisons
from recrepro.tables import TABLE1_TITLE, TABLE2_TITLE, write_table


@stage_entry
def run_zero_shot(profile: Profile, root: Path | str = ".", backend: AgentBackend | None = None,
                  variants: Sequence[str] = ("r", "tirr")) -> dict[str, Any]:
    """Frozen R and frozen TIRR on every dataset's test lists -> table1, table2, evaluation cards.

    Also the ``First ten candidates`` reference row (:func:`recrepro.evaluation.first_ten_row`) on
    the same lists, in both tables."""

    root = Path(root)
    if backend is None:
        build_starting_model(profile, root)  # the frozen rows read the same (warm-started) model as stage 1
        backend = load_backend(profile, root)
    rows1, rows2, evaluations = [], [], []
    bar = Progress("zero-shot", len(profile.data.datasets) * len(variants), unit="evaluation")
    for dataset in profile.data.datasets:
        session = DatasetSession.open(profile, root, dataset)
        samples = eval_subset(profile, session.bench.samples["test"])
        views, factory = session.views, session.env_factory(samples)
        rows2.append(chance_row(dataset, profile.data.n_candidates, len(samples), profile))
        # The position reference on the same test lists as every LLM row (Tables 1 and 2).
        first_ten = first_ten_row(profile, dataset, samples, root)
        rows1.append(first_ten)
        rows2.append(first_ten)
        for variant in variants:
            name2, name1 = FROZEN_LABELS[variant]
            result = evaluate_agent(profile, root, dataset, samples, views, backend, factory, variant, name2,
                                    extra_names=(name1,))
            rows2.append(result.row)
            rows1.append({**result.row, "model": name1})
            evaluations.append(result)
            bar.update(1, note=f"{dataset} {name2}")
    bar.close()
    results = profile.results_dir(root)
    table1 = write_table(results, "table1", rows1, TABLE1_TITLE, profile.eval.ks, paper_table="table1")
    table2 = write_table(results, "table2", rows2, TABLE2_TITLE, profile.eval.ks, paper_table="table2")
    return {"table1": table1, "table2": table2, "evaluations": evaluations,
            "cards": {f"{e.dataset}/{e.model}": e.card for e in evaluations}}


@stage_entry
def run_sft_baseline(profile: Profile, root: Path | str = ".", force: bool = False,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and evaluate the TALLRec-like baseline on every dataset; upsert its Table 1 rows.

    Returns ``{"rows": [...], "runs": {dataset: {...timings, losses, valid share}}, "table1": frame}``
    (``table1`` absent and nothing run when ``sft.enabled`` is false).
    """

    if not profile.sft.enabled:
        log("[sft] sft.enabled is false: the TALLRec-like baseline is not run")
        return {"rows": [], "runs": {}}
    start = build_starting_model(profile, root)
    rows, runs = [], {}
    bar = Progress("sft baseline", len(profile.data.datasets), unit="dataset")
    for dataset in profile.data.datasets:
        trained = train_sft(profile, root, dataset, start, force=force, log=log)
        evaluated = evaluate_sft(profile, root, dataset, trained["final"], trained["stamp"], force=force, log=log)
        rows.append(evaluated.pop("row"))
        runs[dataset] = {"train": {k: v for k, v in trained.items() if k != "stamp"},
                         "eval": {k: v for k, v in evaluated.items() if k != "stamp"}}
        bar.update(1, note=dataset)
    bar.close()
    table = write_table(profile.results_dir(root), "table1", rows, TABLE1_TITLE, profile.eval.ks, paper_table="table1")
    return {"rows": rows, "runs": runs, "table1": table}


# Table 1's trained LLM baselines beyond the TALLRec-like row: profile section -> (row name, train, evaluate)
TRAINED_BASELINES: dict[str, tuple[str, Callable, Callable]] = {
    "sdpo": (sdpo.TABLE1_NAME, sdpo.train_sdpo, sdpo.evaluate_sdpo),
    "llara": (llara.TABLE1_NAME, llara.train_llara, evaluate_llara),
    "rere": (rere.TABLE1_NAME, rere.train_rere, rere.evaluate_rere),
}


def _info(final: Path) -> dict[str, Any]:
    """The training record a baseline saved beside its model (``<name>_info.json``; its stamp is apart)."""
    found = sorted(Path(final).glob("*_info.json"))
    return json.loads(found[0].read_text()) if found else {}


@stage_entry
def run_trained_baselines(profile: Profile, root: Path | str = ".", force: bool = False,
                          log: Callable[[str], None] = print) -> dict[str, Any]:
    """S-DPO, LLaRA and ReRe (those enabled in the profile) on every dataset: train (cached by stamp), score on
    the agent's test lists with the same parser and metrics, upsert their Table 1 rows.

    Returns ``{"rows": [...], "runs": {"<dataset>/<name>": {"train": info, "eval": info}}, "table1": frame}``.
    """

    enabled = [name for name in TRAINED_BASELINES if getattr(profile, name).enabled]
    if not enabled:
        log("[baselines] sdpo, llara and rere are disabled in this profile: none is run")
        return {"rows": [], "runs": {}}
    start = build_starting_model(profile, root)
    rows, runs = [], {}
    bar = Progress("trained baselines", len(profile.data.datasets) * len(enabled), unit="baseline")
    for dataset in profile.data.datasets:
        for name in enabled:
            row_name, train, evaluate = TRAINED_BASELINES[name]
            final = train(profile, root, dataset, force=force, start_model=start, log=log)
            evaluated = evaluate(profile, root, dataset, final, force=force, log=log)
            rows.append(evaluated.pop("row"))
            runs[f"{dataset}/{row_name}"] = {"train": _info(final),
                                            "eval": {k: v for k, v in evaluated.items() if k != "stamp"}}
            bar.update(1, note=f"{dataset} {row_name}")
    bar.close()
    table = write_table(profile.results_dir(root), "table1", rows, TABLE1_TITLE, profile.eval.ks, paper_table="table1")
    return {"rows": rows, "runs": runs, "table1": table}


SERVED_LABELS = {"r": "LLMRank (served)", "tirr": "InteRecAgent (served)"}  # variant -> Table 1 row


@stage_entry
def run_served_rows(profile: Profile, root: Path | str = ".", backend: AgentBackend | None = None,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Table 1's LLMRank and InteRecAgent rows from the profile's served model (``served``; the paper used
    GPT-4): the reasoning-only and the tool-using prompt, through the endpoint client (``served.api``:
    completions, or chat with native tool calls), on the agent's test lists with the same parser, metrics
    and card. Nothing is run when ``served.base_url`` is null."""

    if profile.served.base_url is None and backend is None:
        log("[served] served.base_url is null: the LLMRank and InteRecAgent rows stay 'not run'")
        return {"rows": [], "cards": {}}
    chat = profile.served.api == "chat"  # messages and native tool calls (recrepro.agent.chat_client)
    if chat:
        backend = backend or chat_backend(profile, root)
    backend = backend or served_backend(profile, root)
    evaluate = evaluate_chat_agent if chat else evaluate_agent
    rows, cards = [], {}
    for dataset in profile.data.datasets:
        session = DatasetSession.open(profile, root, dataset)
        samples = eval_subset(profile, session.bench.samples["test"])
        factory = session.env_factory(samples)
        for variant, name in SERVED_LABELS.items():
            reset = getattr(backend.generator, "reset_stats", None)
            if reset is not None:
                reset()
            # evaluate_agent puts the endpoint's request stats on the card it writes
            result = evaluate(profile, root, dataset, samples, session.views, backend, factory, variant, name)
            rows.append(result.row)
            cards[f"{dataset}/{name}"] = result.card
    table = write_table(profile.results_dir(root), "table1", rows, TABLE1_TITLE, profile.eval.ks, paper_table="table1")
    return {"rows": rows, "cards": cards, "table1": table}


def measured_models(profile: Profile) -> list[str]:
    """Table 1 rows the profile measures: its RecBole models, the trained LLM baselines it enables and the
    served-model rows when it names a served model."""
    trained = [SFT_NAME] if profile.sft.enabled else []
    trained += [TRAINED_BASELINES[n][0] for n in TRAINED_BASELINES if getattr(profile, n).enabled]
    served = list(SERVED_LABELS.values()) if profile.served.base_url is not None else []
    return [*profile.recbole.models, *trained, *served]


def run_not_run_rows(profile: Profile, root: Path | str = ".") -> pd.DataFrame:
    """Table 1's "not run" rows: the paper's baselines this profile does not measure, with the reason."""
    return write_not_run_rows(profile, root, measured_models(profile))


def loss_curve(runs: Mapping[str, Any], key: str = "losses") -> pd.DataFrame:
    """A logged training series (``losses``; ReRe logs ``rewards``) per step, one column per run (for plots)."""
    return pd.DataFrame({d: pd.Series(r["train"].get(key, [])) for d, r in runs.items()})


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


@stage_entry
def run_eval_reports(profile: Profile, root: Path | str = ".") -> dict[str, pd.DataFrame]:
    """Notebook 06's last step: H@10 by target position of every LLM row and of ``First ten candidates``
    (``position_buckets.csv``/``.md``) and the paired ablation comparisons (``comparisons.csv``/``.md``)."""

    rows: list[dict] = []
    for dataset in profile.data.datasets:
        test = load_benchmark(profile, dataset, root).samples["test"]
        rows += dataset_position_rows(profile, root, dataset, [*llm_rows(profile, root, dataset), FIRST_TEN], test)
    return {"position_buckets": write_position_buckets(profile, root, rows),
            "comparisons": run_comparisons(profile, root)}


BASELINE_CHOICES = ("sft", *TRAINED_BASELINES)


def train_and_score(profile: Profile, root: Path | str, dataset: str, baseline: str, *, evaluate: bool = True,
                    force: bool = False, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """One trained baseline on one dataset: train (cached), then, with ``evaluate``, its Table 1 row (returned)."""
    # Under a launcher every process would build a tiny start model at once: there it must exist already.
    start = build_starting_model(profile, root) if n_processes() == 1 else starting_model(profile, root)
    if baseline == "sft":
        trained = train_sft(profile, root, dataset, start, force=force, log=log)
        return evaluate_sft(profile, root, dataset, trained["final"], trained["stamp"], force=force,
                            log=log)["row"] if evaluate else None
    _, train, score = TRAINED_BASELINES[baseline]
    final = train(profile, root, dataset, force=force, start_model=start, log=log)
    return score(profile, root, dataset, final, force=force, log=log)["row"] if evaluate else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recrepro.stages.evaluate",
                                     description="Train and score one of Table 1's trained LLM baselines, or score "
                                                 "the profile's served model (--served).")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--root", default=".")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--baseline", choices=BASELINE_CHOICES)
    what.add_argument("--served", action="store_true",
                      help="LLMRank/InteRecAgent rows from the served model of the profile's served section")
    parser.add_argument("--dataset", action="append", help="only these datasets (repeatable)")
    parser.add_argument("--stage", default="all", choices=["all", "train"],
                        help="train: training only (run it under accelerate launch); all: train if needed, "
                             "then evaluate and write the Table 1 rows (one process)")
    parser.add_argument("--force", action="store_true", help="retrain and re-evaluate even when cached")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="profile overrides")
    args = parser.parse_args(argv)
    profile = load_cli_profile(args.profile, args.set)  # a bad --set exits 2 with a message
    if args.served:
        if profile.served.base_url is None:
            raise SystemExit("--served: the profile names no served model; set served.base_url, served.model and "
                             "served.tokenizer (with run.name, to score the lists of an existing run)")
        run_served_rows(profile, args.root)
        run_not_run_rows(profile, args.root)
        return 0
    if args.stage == "all" and n_processes() > 1:
        raise SystemExit("--stage all evaluates on one process; under accelerate launch use --stage train, "
                         "then --stage all without the launcher")
    rows = [train_and_score(profile, args.root, dataset, args.baseline, evaluate=args.stage == "all", force=args.force)
            for dataset in args.dataset or profile.data.datasets]
    if args.stage == "all":
        write_table(profile.results_dir(args.root), "table1", rows, TABLE1_TITLE, profile.eval.ks, paper_table="table1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
