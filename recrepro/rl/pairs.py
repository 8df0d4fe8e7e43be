"""The pairwise A/B task of stage 2 (PPR, PAPER.md 1.5): rows, the 0/1 reward, judging and its test.

A mined or random pair (:mod:`recrepro.rl.mining`, :func:`random_pairs`) becomes two rows, MORE and
LESS, each with the question's prompt (:mod:`recrepro.agent.pairwise`), the columns the environment's
``reset(**row)`` reads -- bound to the two shown items, labelled A and B
(:func:`~recrepro.agent.env.pair_columns`) -- and the correct letter. Training scores a rollout with
:class:`PreferenceRewardFunc`; measurement judges greedy answers with :func:`judge_records`, summarises
them with :func:`summarize_judgements`, compares two policies on the same judgements with
:func:`paired_test` (exact McNemar) and tabulates both beside the paper (:func:`accuracy_table`).
Mined pairs are a frozen artifact (:func:`write_pairs`, :func:`read_pairs`, with a checked manifest).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from recrepro.agent.env import pair_columns
from recrepro.agent.pairwise import DIRECTIONS, ppr_messages
from recrepro.agent.parser import ChoiceVerdict, choice_verdict
from recrepro.agent.prompt import ItemView
from recrepro.agent.rollout import AgentTask
from recrepro.config import Profile, RewardConfig
from recrepro.io import atomic_dir, read_parquet, verify_manifest, write_json_atomic, write_manifest, write_parquet
from recrepro.paper import reported_values
from recrepro.rl.grpo import plain
from recrepro.rl.mining import PAIR_COLUMNS, correct_letter
from recrepro.rl.reward import ListwiseRewardFunc, assistant_turns
from recrepro.significance import mcnemar_exact

# Columns env.reset(**row) reads (the target item and its index stay out of the prompt rows).
ENV_COLUMNS = ("sample_id", "user_id", "split", "target_time", "history_items", "history_times", "history_ratings")
PAIR_SPLITS = ("train", "valid")
PAIR_KINDS = ("mined held-out", "random")  # the ``pairs`` column of the accuracy table
PAPER_MODELS = {"before": "AgenticRec-RTA", "after": "AgenticRec-RTA+PPR"}  # figure_ppr rows of paper_reported.csv


def _view(views: Mapping[str, ItemView], item_id: Any) -> ItemView:
    key = str(item_id)
    return views.get(key) or ItemView(key, key)


def shown_items(pair: Mapping[str, Any]) -> tuple[str, str]:
    """(item shown as A, item shown as B) of a mined pair."""
    if bool(pair["a_is_target"]):
        return str(pair["target_item"]), str(pair["negative_item"])
    return str(pair["negative_item"]), str(pair["target_item"])


def pair_rows(pairs: pd.DataFrame, samples: pd.DataFrame, views: Mapping[str, ItemView], max_tool_calls: int,
              show_affinity: bool = False) -> list[dict[str, Any]]:
    """Two rows per pair (MORE, LESS): the prompt, the columns ``reset(**row)`` reads and the answer
    (``show_affinity``: ``agent.affinity_order`` > 0, see :func:`~recrepro.agent.pairwise.ppr_messages`)."""
    by_id = {int(s["sample_id"]): s for s in samples.to_dict("records")}
    rows = []
    for pair in pairs.to_dict("records"):
        sample = by_id.get(int(pair["sample_id"]))
        if sample is None:
            raise KeyError(f"pair {pair['pair_id']}: sample {pair['sample_id']} is not among the mined instances")
        a, b = shown_items(pair)
        history = [_view(views, i) for i in plain(sample["history_items"])]
        for direction in DIRECTIONS:
            row = {key: plain(sample[key]) for key in ENV_COLUMNS if key in sample}
            row.update(pair_columns(a, b))  # the tools name the two items A and B, as the prompt does
            row.update(pair_id=int(pair["pair_id"]), direction=direction,
                       answer_letter=correct_letter(bool(pair["a_is_target"]), direction),
                       prompt=ppr_messages(history, _view(views, a), _view(views, b), direction, max_tool_calls,
                                           show_affinity))
            rows.append(row)
    return rows


def random_pairs(samples: pd.DataFrame, seed: int) -> pd.DataFrame:
    """One control pair per instance (in the mined pairs' format): the target and a uniform negative.

    The negative is drawn uniformly from the instance's other candidates (never the target's
    position, nor another position holding the target item), then which of the two is shown as A,
    with one generator seeded with ``seed`` over the instances in ``sample_id`` order (as
    :func:`~recrepro.rl.mining.mine_pairs` draws). No policy is involved: ``target_rank`` is -1 and
    ``policy_ranking`` empty; ``pool_size`` is the number of candidates the negative was drawn from.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for sample in samples.sort_values("sample_id", kind="stable").to_dict("records"):
        candidates = [str(c) for c in plain(sample["candidates"])]
        target = int(sample["target_index"])
        pool = [i for i, item in enumerate(candidates, start=1) if i != target and item != candidates[target - 1]]
        if not pool:
            raise ValueError(f"sample {sample['sample_id']}: no candidate other than the target to draw from")
        negative = pool[int(rng.integers(0, len(pool)))]
        rows.append({"pair_id": len(rows), "sample_id": int(sample["sample_id"]), "user_id": str(sample["user_id"]),
                     "target_index": target, "negative_index": negative, "target_item": candidates[target - 1],
                     "negative_item": candidates[negative - 1], "target_rank": -1, "pool_size": len(pool),
                     "policy_ranking": [], "a_is_target": bool(rng.integers(0, 2))})
    return pd.DataFrame(rows, columns=list(PAIR_COLUMNS))


def pair_tasks(rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Rollout-engine tasks of pairwise rows (the tools stay available)."""

    return [AgentTask(row={k: v for k, v in r.items() if k != "prompt"}, messages=list(r["prompt"]), uses_tools=True,
                      sample_id=int(r["sample_id"]), n_candidates=2) for r in rows]


def preference_reward(verdict: ChoiceVerdict, answer_letter: str, profile: Profile) -> float:
    """``ppr.correct_reward`` / ``ppr.wrong_reward`` for a valid letter, ``reward.invalid`` otherwise."""
    reward: RewardConfig = profile.reward
    if not verdict.valid:
        return reward.invalid
    return profile.ppr.correct_reward if verdict.letter == answer_letter else profile.ppr.wrong_reward


class PreferenceRewardFunc(ListwiseRewardFunc):
    """TRL reward function of PPR: stage 1's turn split and environment verdict, then the letter.

    Logs under stage 1's keys (``rta/reward``, ``rta/valid``, ``rta/tool_calls``, per-tool calls) so
    the same training-log CSV columns fill; ``positive_share`` is the share of correct answers.
    """

    __name__ = "preference"

    def __call__(self, prompts: list, completions: list, completion_ids: list, answer_letter: list,
                 environments: list | None = None, log_metric: Callable[[str, float], None] | None = None,
                 **_: Any) -> list[float]:
        masks = self.trace.tool_masks
        totals, self.last = [], []
        for i, ids in enumerate(completion_ids):
            mask = masks[i] if masks is not None else None
            episode = environments[i].episode
            trajectory = self.verdict(ids, mask, episode)
            turns, _ = assistant_turns(ids, mask, self.stops, self.tokenizer)
            verdict = choice_verdict(turns, trajectory.reason, trajectory.n_tool_calls)
            total = preference_reward(verdict, str(answer_letter[i]), self.profile)
            self.last.append(verdict)
            totals.append(total)
            if log_metric is not None:
                log_metric("rta/reward", total)
                log_metric("rta/reward_invalid", 0.0 if verdict.valid else total)
                log_metric("rta/valid", float(verdict.valid))
                log_metric("rta/tool_calls", float(verdict.n_tool_calls))
                log_metric("rta/positive", float(verdict.valid and verdict.letter == answer_letter[i]))
                for name, count in episode.calls_per_tool().items():
                    log_metric(f"rta/calls/{name}", float(count))
        return totals

    def __init__(self, profile: Profile, *args: Any) -> None:
        super().__init__(profile, *args)
        self.profile = profile


def judge_records(records: Sequence[Any], rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One line per pairwise judgement: the letter (or why it is invalid) and whether it is right."""
    out = []
    for record, row in zip(records, rows):
        verdict = choice_verdict(record.turns, record.invalid_reason, record.n_tool_calls)
        out.append({"pair_id": int(row["pair_id"]), "direction": row["direction"], "answer": row["answer_letter"],
                    "letter": verdict.letter, "valid": verdict.valid,
                    "reason": verdict.reason.value if verdict.reason else None,
                    "correct": bool(verdict.valid and verdict.letter == row["answer_letter"]),
                    "n_tool_calls": verdict.n_tool_calls})
    return pd.DataFrame(out, columns=["pair_id", "direction", "answer", "letter", "valid", "reason", "correct",
                                      "n_tool_calls"])


def summarize_judgements(judged: pd.DataFrame) -> dict[str, Any]:
    """Accuracy per direction, over all judgements, pairs with both right, and the valid share."""
    if judged.empty:
        return {"n_pairs": 0, "more": float("nan"), "less": float("nan"), "all": float("nan"),
                "both": float("nan"), "valid_share": float("nan")}
    by_dir = judged.groupby("direction")["correct"].mean()
    both = judged.groupby("pair_id")["correct"].all()
    return {"n_pairs": int(judged["pair_id"].nunique()), "more": float(by_dir.get("more", float("nan"))),
            "less": float(by_dir.get("less", float("nan"))), "all": float(judged["correct"].mean()),
            "both": float(both.mean()), "valid_share": float(judged["valid"].mean())}


def paired_test(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, Any]:
    """Exact two-sided McNemar test of before vs after on the same judgements.

    The judgement frames of :func:`judge_records` are joined on (``pair_id``, ``direction``): each
    prompt's 0/1 correctness before and after is one paired item. ``n`` is the number of paired
    judgements (2 per pair), ``n_before_only`` / ``n_after_only`` the discordant counts. Frames that
    do not hold the same judgements raise.
    """
    keys = ["pair_id", "direction"]
    if before.empty and after.empty:
        return {"n": 0, "n_before_only": 0, "n_after_only": 0, "p_mcnemar": float("nan")}
    joined = before[[*keys, "correct"]].merge(after[[*keys, "correct"]], on=keys, how="inner",
                                              suffixes=("_before", "_after"), validate="one_to_one")
    if not len(joined) == len(before) == len(after):
        raise ValueError(f"before ({len(before)}) and after ({len(after)}) judgements do not pair up "
                         f"({len(joined)} common)")
    b = joined["correct_before"].astype(int).to_numpy()
    a = joined["correct_after"].astype(int).to_numpy()
    return {"n": int(len(joined)), "n_before_only": int(np.sum((b == 1) & (a == 0))),
            "n_after_only": int(np.sum((b == 0) & (a == 1))), "p_mcnemar": mcnemar_exact(a, b)}


def write_pairs(folder: Path, pairs: Mapping[str, pd.DataFrame], stats: Mapping[str, Any],
                provenance: Mapping[str, Any]) -> Path:
    """The frozen pairs artifact: parquet per split, statistics JSON, manifest (written atomically)."""

    with atomic_dir(folder) as tmp:
        for split, frame in pairs.items():
            write_parquet(frame, tmp / f"pairs_{split}.parquet")
        write_json_atomic(tmp / "mining_stats.json", dict(stats))
        write_manifest(tmp, config=dict(provenance), rows={f"pairs_{s}": len(f) for s, f in pairs.items()})
    return folder


def read_pairs(folder: Path) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Pairs per split and the mining statistics, after checking the manifest (tampering raises)."""

    verify_manifest(folder)
    pairs = {split: read_parquet(folder / f"pairs_{split}.parquet") for split in PAIR_SPLITS}
    return pairs, json.loads((folder / "mining_stats.json").read_text())


COUNT_COLUMNS = {"n_pairs", "n", "n_before_only", "n_after_only"}


def accuracy_table(dataset: str, before: Mapping[str, Any], after: Mapping[str, Any], profile_name: str,
                   random: Mapping[str, Mapping[str, Any]] | None = None,
                   tests: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Ours before/after beside the paper's Games numbers (the paper reports one dataset only).

    ``before``/``after``: the summaries on the mined held-out pairs; ``random``: ``{"before": ...,
    "after": ...}`` on the random pairs (absent in records written before they were measured);
    ``tests``: :func:`paired_test` per pair kind (columns ``n``, ``n_before_only``, ``n_after_only``,
    ``p_mcnemar`` on both of its rows). Column ``pairs``: ``"mined held-out"``, ``"random"``, or
    ``"paper"`` for the paper's rows.
    """

    kinds = [(PAIR_KINDS[0], before, after)]
    if random:
        kinds.append((PAIR_KINDS[1], random["before"], random["after"]))
    rows = [{"dataset": dataset, "stage": stage, "source": "measured", "pairs": kind, "profile": profile_name,
             **dict(values), **dict((tests or {}).get(kind, {}))}
            for kind, b, a in kinds for stage, values in (("RTA", b), ("RTA+PPR", a))]
    paper = reported_values()
    paper = paper[(paper["table"] == "figure_ppr") & (paper["metric"] == "preference_accuracy")]
    stage_of = {v: k for k, v in PAPER_MODELS.items()}
    for rec in paper.to_dict("records"):
        stage = "RTA" if stage_of.get(rec["model"]) == "before" else "RTA+PPR"
        rows.append({"dataset": rec["dataset"], "stage": stage, "source": "paper", "pairs": "paper", "profile": "paper",
                     "all": float(rec["value"]), "mark": rec["mark"]})
    table = pd.DataFrame(rows)
    for column in COUNT_COLUMNS & set(table.columns):  # counts stay integers beside the paper's empty cells
        table[column] = table[column].astype("Int64")
    return table
