"""Stage 2 (PPR): the A/B letter parser and reward, both prompt directions, the pairs artifact, the PPR
warm-start teacher, and a short real GRPO run through TRL on the tiny model (scripted sampling)."""

from __future__ import annotations

import json

import os

import numpy as np
import pandas as pd
import pytest
import torch

from recrepro.agent import pairwise
from recrepro.agent.env import env_tools
from recrepro.agent.parser import (InvalidReason, choice_verdict, format_choice, format_tool_call, judge_choice,
                                   parse_choice)
from recrepro.agent.prompt import PromptSpec, instance_from_sample
from recrepro.agent.teacher import encode_transcript, n_ppr_examples, ppr_teacher_letter, ppr_teacher_transcript
from recrepro.config import load_profile, override_key
from recrepro.io import ManifestError
from recrepro import stamps
from recrepro.rl import grpo, mining, ppr, rta
from recrepro.rl.policy_io import POLICY_KIND
from recrepro.rl import pairs as pair_task
from recrepro.stages import ppr as ppr_stage
from recrepro.rl.mining import PolicyOutput, mine_pairs
from tests.unit import agent_fakes as af
from tests.unit import rta_fixtures as rf

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
PROFILE = load_profile("smoke")
CALL = format_tool_call("get_user_profile", {})


# ------------------------------------------------------------------------------------------------
# Letter parser and reward: every answer form, exact rewards
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("turns, letter, reason, reward", [
    ([r"<answer>\boxed{A}</answer>"], "A", None, 1.0),  # right
    ([r"<answer>\boxed{B}</answer>"], "B", None, 0.0),  # wrong
    ([r"<think>A or B?</think><answer>\boxed{ A }</answer>"], "A", None, 1.0),  # spaces tolerated
    ([CALL, r"<answer>\boxed{A}</answer>"], "A", None, 1.0),  # a tool call, then the answer
    ([r"<answer>\boxed{a}</answer>"], None, InvalidReason.BAD_FORMAT, -1.0),  # lower case is not repaired
    ([r"<answer>\boxed{[A]}</answer>"], None, InvalidReason.BAD_FORMAT, -1.0),
    ([r"<answer>\boxed{C}</answer>"], None, InvalidReason.BAD_FORMAT, -1.0),
    ([r"<answer>A</answer>"], None, InvalidReason.BAD_FORMAT, -1.0),
    ([r"<answer>\boxed{A}</answer><answer>\boxed{B}</answer>"], None, InvalidReason.BAD_FORMAT, -1.0),
    ([r"<answer>\boxed{A}\boxed{B}</answer>"], None, InvalidReason.BAD_FORMAT, -1.0),
    (["I think A."], None, InvalidReason.NO_ANSWER, -1.0),  # missing answer
    ([r"<think><answer>\boxed{A}</answer></think>"], None, InvalidReason.NO_ANSWER, -1.0),
    ([CALL], None, InvalidReason.NO_ANSWER, -1.0),  # tool call only
    ([], None, InvalidReason.NO_ANSWER, -1.0),
    ([CALL] * 11 + [r"<answer>\boxed{A}</answer>"], None, InvalidReason.TOO_MANY_TOOL_CALLS, -1.0),  # over budget
    (["<tool_call>{not json</tool_call>", r"<answer>\boxed{A}</answer>"], None, InvalidReason.BAD_TOOL_CALL, -1.0),
])
def test_letter_verdicts_and_rewards_are_exact(turns, letter, reason, reward):
    verdict = judge_choice(turns, max_tool_calls=10, schemas={"get_user_profile": {"parameters": {}}})
    assert (verdict.letter, verdict.reason) == (letter, reason)
    assert pair_task.preference_reward(verdict, "A", PROFILE) == reward


def test_trajectory_reasons_win_and_parser_never_raises():
    assert choice_verdict([r"<answer>\boxed{A}</answer>"], "truncated").reason is InvalidReason.TRUNCATED
    assert choice_verdict([r"<answer>\boxed{A}</answer>"], "bad_format").letter == "A"  # a list-format reason is not ours
    for junk in (None, 3, "", "<answer>", r"\boxed{A}", "<answer>\\boxed{A</answer>"):
        assert not parse_choice(junk).valid
    assert parse_choice(format_choice("B")).letter == "B"


def test_invalid_reward_is_stage_one_penalty_and_wrong_is_zero():
    profile = load_profile("smoke", {"reward.invalid": -0.7, "ppr.wrong_reward": 0.25})
    assert pair_task.preference_reward(parse_choice("no"), "A", profile) == -0.7
    assert pair_task.preference_reward(parse_choice(format_choice("B")), "A", profile) == 0.25


# ------------------------------------------------------------------------------------------------
# Prompts and pairs
# ------------------------------------------------------------------------------------------------

def _pairs(samples: pd.DataFrame) -> pd.DataFrame:
    """Mined pairs on the synthetic samples: the target never first (ranking = other candidates)."""
    outs = []
    for s in samples.to_dict("records"):
        target = int(s["target_index"])
        ranking = tuple([i for i in range(1, 21) if i != target][:9] + [target])
        outs.append(PolicyOutput(int(s["sample_id"]), str(s["user_id"]), tuple(s["candidates"]), target, ranking))
    pairs, _ = mine_pairs(outs, seed=3)
    return pairs


def test_prompts_render_both_directions_with_the_right_letters():
    samples = rf.train_samples(4)
    pairs = _pairs(samples)
    assert len(pairs) == 4 and pairs["a_is_target"].nunique() == 2  # both layouts occur with this seed
    rows = pair_task.pair_rows(pairs, samples, af.views(), max_tool_calls=10)
    assert [r["direction"] for r in rows] == ["more", "less"] * 4
    views = af.views()
    for pair, (more, less) in zip(pairs.to_dict("records"), zip(rows[::2], rows[1::2])):
        target_letter = "A" if pair["a_is_target"] else "B"
        assert more["answer_letter"] == target_letter and less["answer_letter"] != target_letter
        a, b = pair_task.shown_items(pair)
        assert more["candidates"] == [a, b] and {a, b} == {pair["target_item"], pair["negative_item"]}
        user = more["prompt"][1]["content"]
        assert f"\nA. {views[a].title}" in user and f"\nB. {views[b].title}" in user
        assert more["prompt"][1]["content"].replace("MORE", "LESS") == less["prompt"][1]["content"]
        assert "MORE likely" in more["prompt"][0]["content"] and "LESS likely" in less["prompt"][0]["content"]
        assert "at most 10 tool calls" in more["prompt"][0]["content"]
        assert "target_index" not in more and pair["negative_item"] != pair["target_item"]


def test_pair_rows_bind_the_tools_to_the_letters_and_ranking_rows_to_numbers():
    samples = rf.train_samples(2)
    rows = pair_task.pair_rows(_pairs(samples), samples, af.views(), max_tool_calls=10)
    env = af.env_factory()()
    env.reset(**{k: v for k, v in rows[0].items() if k != "prompt"})  # as TRL and the rollout engine reset
    text = env.candidates_analyze()
    titles = text.split("Titles: ")[1]
    a, b = rows[0]["candidates"]
    views = af.views()
    assert titles.startswith(f'[A] "{views[a].title[:20]}') and f'[B] "{views[b].title[:20]}' in titles
    assert text.startswith("2 candidates") and "[1]" not in text and "[2]" not in text
    # Ranking mode (20 candidates, no labels) is unchanged: numbered tags, no letters.
    ranking = af.make_env(row=rta.training_rows(samples, views, PromptSpec("tirr"))[0]).candidates_analyze()
    assert ranking.startswith("20 candidates") and "[A]" not in ranking and "[B]" not in ranking
    assert all(f"[{k}] " in ranking.split("Titles: ")[1] for k in range(1, 21))


def test_ppr_warm_start_transcripts_bind_the_tools_like_ppr_rollouts():
    from recrepro.agent.teacher import ppr_teacher_examples

    made = []

    def factory():
        made.append(af.env_factory()())
        return made[-1]

    samples = rf.train_samples(2)
    rows = [{k: grpo.plain(s[k]) for k in rta.ROW_COLUMNS} for s in samples.to_dict("records")]
    instances = [instance_from_sample(s, af.views()) for s in samples.to_dict("records")]
    assert len(ppr_teacher_examples(af.tiny_tokenizer(), instances, rows, factory, 2, 0, 10)) == 2
    for env in made[1:]:  # the first one only lists the tools
        text = env.candidates_analyze()
        assert "[A]" in text and "[B]" in text and "[1]" not in text and "[2]" not in text


def test_no_pair_has_the_target_as_negative():
    rng = np.random.default_rng(0)
    cands = tuple(f"i{k}" for k in range(1, 21))
    outs = [PolicyOutput(k, "u", cands, int(rng.integers(1, 21)), tuple(int(x) for x in rng.permutation(20)[:10] + 1))
            for k in range(300)]
    pairs, stats = mine_pairs(outs, seed=1)
    assert len(pairs) == stats["pairs"] > 200
    assert (pairs["negative_index"] != pairs["target_index"]).all()
    assert (pairs["negative_item"] != pairs["target_item"]).all()


def _control_samples() -> pd.DataFrame:
    cands = [f"i{k}" for k in range(1, 21)]
    return pd.DataFrame({"sample_id": [7, 3, 5], "user_id": ["u7", "u3", "u5"],
                         "candidates": [cands, cands[::-1], cands], "target_index": [20, 1, 4]})


def test_random_pairs_are_seeded_uniform_negatives_in_the_mined_format():
    samples = _control_samples()
    pairs = pair_task.random_pairs(samples, seed=42)
    assert list(pairs.columns) == list(mining.PAIR_COLUMNS)
    # Replay of default_rng(42) over sample_id order 3, 5, 7: (negative draw among 19, A/B draw) =
    # (1, True), (12, False), (8, True); the pool skips the target's position.
    assert pairs[["pair_id", "sample_id", "user_id", "target_index", "negative_index", "target_item",
                  "negative_item", "target_rank", "pool_size", "a_is_target"]].to_dict("list") == {
        "pair_id": [0, 1, 2], "sample_id": [3, 5, 7], "user_id": ["u3", "u5", "u7"], "target_index": [1, 4, 20],
        "negative_index": [3, 14, 9], "target_item": ["i20", "i4", "i20"], "negative_item": ["i18", "i14", "i9"],
        "target_rank": [-1, -1, -1], "pool_size": [19, 19, 19], "a_is_target": [True, False, True]}
    assert pairs.equals(pair_task.random_pairs(samples.iloc[::-1], seed=42))  # deterministic, order-free
    assert not pairs["negative_index"].equals(pair_task.random_pairs(samples, seed=43)["negative_index"])


def test_random_pairs_never_pair_the_target_with_itself_and_stay_in_the_candidates():
    rng = np.random.default_rng(0)
    cands = [f"i{k}" for k in range(1, 21)]
    samples = pd.DataFrame({"sample_id": range(400), "user_id": "u",
                            "candidates": [list(rng.permutation(cands)) for _ in range(400)],
                            "target_index": rng.integers(1, 21, 400)})
    pairs = pair_task.random_pairs(samples, seed=1)
    assert len(pairs) == len(samples)  # one control pair per held-out instance
    assert (pairs["negative_index"] != pairs["target_index"]).all()
    assert (pairs["negative_item"] != pairs["target_item"]).all()
    by_id = samples.set_index("sample_id")
    for pair in pairs.to_dict("records"):
        own = list(by_id.loc[pair["sample_id"], "candidates"])
        assert own[pair["negative_index"] - 1] == pair["negative_item"]
        assert own[pair["target_index"] - 1] == pair["target_item"]
    assert set(pairs["negative_index"]) == set(range(1, 21))  # every position can be drawn
    assert 0.4 < pairs["a_is_target"].mean() < 0.6
    # A candidate list holding the target item twice: the duplicate is never the negative.
    dup = pd.DataFrame({"sample_id": [0], "user_id": ["u"], "candidates": [["x", "x", "y"]], "target_index": [1]})
    assert all(pair_task.random_pairs(dup, seed=s)["negative_item"].item() == "y" for s in range(20))


def test_random_pairs_feed_pair_rows_unchanged():
    samples = rf.train_samples(3)
    pairs = pair_task.random_pairs(samples, seed=0)
    rows = pair_task.pair_rows(pairs, samples, af.views(), 3)
    assert len(rows) == 6 and [r["direction"] for r in rows] == ["more", "less"] * 3
    for row, pair in zip(rows[::2], pairs.to_dict("records")):
        assert row["answer_letter"] == ("A" if pair["a_is_target"] else "B")


def test_paired_test_joins_before_and_after_on_pair_and_direction():
    before = pd.DataFrame({"pair_id": [0, 0, 1, 1, 2, 2, 3, 3], "direction": ["more", "less"] * 4,
                           "correct": [True, False, False, False, True, True, False, True]})
    # Same judgements in another order: 0/less and 1/more and 1/less and 3/more flip 0 -> 1, 2/more 1 -> 0.
    after = pd.DataFrame({"pair_id": [3, 3, 2, 2, 1, 1, 0, 0], "direction": ["less", "more"] * 4,
                          "correct": [True, True, True, False, True, True, True, True]})
    test = pair_task.paired_test(before, after)
    assert test == {"n": 8, "n_before_only": 1, "n_after_only": 4, "p_mcnemar": pytest.approx(0.375)}  # 2*P(X<=1), X~Bin(5,.5)
    assert pair_task.paired_test(before, before) == {"n": 8, "n_before_only": 0, "n_after_only": 0, "p_mcnemar": 1.0}
    empty = pair_task.judge_records([], [])
    assert pair_task.paired_test(empty, empty)["n"] == 0
    with pytest.raises(ValueError, match="do not pair up"):
        pair_task.paired_test(before, after.iloc[:6])


def test_pairs_artifact_round_trips_and_refuses_tampering(tmp_path):
    samples = rf.train_samples(4)
    pairs = {"train": _pairs(samples), "valid": _pairs(samples.head(2))}
    stats = {"train": {"pairs": 4}, "valid": {"pairs": 2}}
    folder = pair_task.write_pairs(tmp_path / "pairs", pairs, stats, {"round": 1, "policy": "x"})
    back, back_stats = pair_task.read_pairs(folder)
    assert back_stats == stats
    for split in ("train", "valid"):
        pd.testing.assert_frame_equal(back[split], pairs[split], check_dtype=False)
        assert back[split]["policy_ranking"].map(list).tolist() == pairs[split]["policy_ranking"].tolist()
    frame = back["train"].copy()
    frame.loc[0, "a_is_target"] = not frame.loc[0, "a_is_target"]
    from recrepro.io import write_parquet

    write_parquet(frame, folder / "pairs_train.parquet")
    with pytest.raises(ManifestError, match="pairs_train.parquet"):
        pair_task.read_pairs(folder)


def test_accuracy_summary_is_exact():
    judged = pd.DataFrame({"pair_id": [0, 0, 1, 1, 2, 2], "direction": ["more", "less"] * 3,
                           "correct": [True, True, True, False, False, False],
                           "valid": [True, True, True, True, False, True]})
    summary = pair_task.summarize_judgements(judged)
    assert summary == {"n_pairs": 3, "more": pytest.approx(2 / 3), "less": pytest.approx(1 / 3),
                       "all": pytest.approx(0.5), "both": pytest.approx(1 / 3), "valid_share": pytest.approx(5 / 6)}
    table = pair_task.accuracy_table("ml-100k", summary, summary, "smoke")
    paper = table[table["source"] == "paper"].set_index("stage")["all"]
    assert paper.to_dict() == {"RTA": 0.19, "RTA+PPR": 0.24}
    assert table[table["source"] == "measured"]["pairs"].tolist() == ["mined held-out"] * 2  # old records
    low = {**summary, "all": 0.25}
    tests = {"mined held-out": {"n": 6, "p_mcnemar": 1.0}, "random": {"n": 8, "p_mcnemar": 0.5}}
    table = pair_task.accuracy_table("ml-100k", summary, summary, "smoke", {"before": low, "after": summary}, tests)
    measured = table[table["source"] == "measured"]
    assert measured[["pairs", "stage", "all", "n", "p_mcnemar"]].to_dict("list") == {
        "pairs": ["mined held-out", "mined held-out", "random", "random"], "stage": ["RTA", "RTA+PPR"] * 2,
        "all": [0.5, 0.5, 0.25, 0.5], "n": [6, 6, 8, 8], "p_mcnemar": [1.0, 1.0, 0.5, 0.5]}
    assert set(table[table["source"] == "paper"]["pairs"]) == {"paper"}


# ------------------------------------------------------------------------------------------------
# Warm-start teacher in the PPR format
# ------------------------------------------------------------------------------------------------

def test_ppr_teacher_transcript_parses_to_the_teacher_letter():
    sample = rf.train_samples(1).to_dict("records")[0]
    instance = instance_from_sample(sample, af.views())
    env = af.env_factory()()
    row = {k: grpo.plain(sample[k]) for k in rta.ROW_COLUMNS}
    env.reset(**{**row, "candidates": [instance.candidates[0].item_id, instance.candidates[1].item_id]})
    for direction in ("more", "less"):
        t = ppr_teacher_transcript(instance, (1, 2), direction, 10, env)
        letter = ppr_teacher_letter(instance, instance.candidates[0], instance.candidates[1], direction)
        assert judge_choice(t.turns, 10, {"get_user_profile": {"parameters": {}}}).letter == letter
        assert t.messages[0]["content"] == pairwise.ppr_messages(instance.history, instance.candidates[0],
                                                            instance.candidates[1], direction, 10)[0]["content"]
    more = ppr_teacher_letter(instance, instance.candidates[0], instance.candidates[1], "more")
    less = ppr_teacher_letter(instance, instance.candidates[0], instance.candidates[1], "less")
    assert {more, less} == {"A", "B"}
    ids, mask = encode_transcript(af.tiny_tokenizer(), t, env_tools(env))
    assert len(ids) == len(mask) and 0 < sum(mask) < len(mask)


def test_ppr_share_sets_the_mix():
    assert n_ppr_examples(400, 0.25) == 133
    assert n_ppr_examples(400, 0.0) == 0
    with pytest.raises(ValueError, match="ppr_share"):
        n_ppr_examples(10, 1.0)


# ------------------------------------------------------------------------------------------------
# A short real training run through TRL (scripted sampling, real forward/backward)
# ------------------------------------------------------------------------------------------------

def _ppr_scripts(rows: list[dict]) -> dict[str, list[list[str]]]:
    """Per prompt: one tool call, then a right or a wrong letter (drawn with torch's RNG)."""
    out = {}
    for row in rows:
        wrong = "B" if row["answer_letter"] == "A" else "A"
        final = "<think>\nComparing.\n</think>\n\n"
        out[row["prompt"][1]["content"]] = [
            ["<think>\nProfile first.\n</think>\n\n" + CALL],
            [final + format_choice(row["answer_letter"]), final + format_choice(wrong)]]
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_short_ppr_training_run_through_trl(tmp_path):
    samples = rf.train_samples(2)
    rows = pair_task.pair_rows(_pairs(samples), samples, af.views(), max_tool_calls=10)[:2]  # one pair, both directions
    profile = rf.tiny_training_profile(**{"ppr.batch_size": 2, "ppr.max_steps": 2})
    model_dir = rf.tiny_policy_dir(str(tmp_path / "model"))
    ctx = ppr.DatasetContext("synthetic", None, af.views(), samples, samples, af.env_factory())
    setup = grpo.TrainingSetup(profile=profile, variant="tirr", model_path=str(model_dir), train_rows=rows,
                              env_factory=ctx.env_factory, valid=None, output_dir=tmp_path / "ckpt",
                              log_path=tmp_path / "train_log.csv")
    trainer, reward = grpo.build_trainer(setup, reward_class=pair_task.PreferenceRewardFunc, **ppr.grpo_overrides(profile))
    assert trainer.args.per_device_train_batch_size == 8 and trainer.args.max_steps == 2
    trainer.model.generate = rf.ScriptedGenerate(trainer.processing_class, _ppr_scripts(rows))
    torch.manual_seed(0)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert len(changed) > len(before) // 2
    log = pd.read_csv(setup.log_path)
    assert list(log["step"]) == [1, 2]
    assert (log["valid_share"] == 1.0).all() and (log["tool_calls_mean"] == 1.0).all()
    assert log["reward"].between(0.0, 1.0).all()
    assert all(v.valid and v.n_tool_calls == 1 for v in reward.last)
    assert np.isfinite([h["loss"] for h in trainer.state.log_history if "loss" in h]).all()


def test_cli_passes_profile_overrides_and_force_to_run_ppr(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_run_ppr(profile, root, force=False):
        calls.append((profile.ppr.max_steps, profile.run.name, str(root), force))
        return {"accuracy": pd.DataFrame({"stage": ["RTA"], "all": [0.5]})}

    monkeypatch.setattr(ppr_stage, "run_ppr", fake_run_ppr)
    assert ppr_stage.main(["--profile", "smoke", "--root", str(tmp_path), "--force", "--set", "ppr.max_steps=3"]) == 0
    assert calls == [(3, f"smoke+{override_key({'ppr.max_steps': 3})}", str(tmp_path), True)]
    assert "RTA" in capsys.readouterr().out


def test_several_rounds_remine_with_the_previous_rounds_policy(monkeypatch, tmp_path):
    """``ppr.rounds`` = 2: round 2 mines and trains from round 1's policy; accuracy before/after on round-1 pairs."""

    samples = rf.train_samples(4)
    pairs = _pairs(samples)
    profile = load_profile("smoke", {"ppr.rounds": 2})
    stage1 = tmp_path / "stage1"
    mined, trained, judged, closed = [], [], [], []

    class Backend:
        def __init__(self, model_path):
            self.model_path = str(model_path)

        def close(self):
            closed.append(self.model_path)

    def fake_train_round(profile, ctx, paths, rows, stamp, log=print):
        trained.append((str(paths.start), str(paths.final), len(rows), stamp["round"]))
        assert stamp["start"] == str(paths.start.resolve()) and paths.checkpoints.parent.name == f"round{stamp['round']}"
        paths.final.mkdir(parents=True)
        (paths.final / "config.json").write_text("{}")
        return {"final": str(paths.final), "wall_s": 0.0, "resumed_from": None, "trained": True}

    def fake_accuracy(profile, backend, ctx, rows, desc):
        judged.append((backend.model_path, len(rows)))
        return {"all": 0.5, "pairs": len(rows)}, pd.DataFrame()

    monkeypatch.setattr(ppr, "stage1_policy", lambda *a: stage1)
    monkeypatch.setattr(ppr, "ppr_stamp", lambda *a: {"stamp": 1})
    monkeypatch.setattr(ppr, "dataset_context", lambda profile, root, dataset: ppr.DatasetContext(
        dataset, None, af.views(), samples, samples, af.env_factory()))
    monkeypatch.setattr(ppr, "load_backend", lambda profile, root, model_path: Backend(model_path))
    monkeypatch.setattr(ppr, "mine_round", lambda profile, root, ctx, paths, k, backend, log: mined.append(
        (str(paths.start), k, backend.model_path)) or tmp_path)
    monkeypatch.setattr(ppr, "read_pairs", lambda folder: ({"train": pairs, "valid": pairs.iloc[:2]}, {"train": {}}))
    monkeypatch.setattr(ppr, "train_round", fake_train_round)
    monkeypatch.setattr(ppr, "preference_accuracy", fake_accuracy)
    monkeypatch.setattr(ppr, "evaluate_test", lambda *a: [])
    monkeypatch.setattr(ppr, "write_rows", lambda *a: {})

    result = ppr.run_dataset(profile, tmp_path, "d", log=lambda _: None)
    folder = ppr.ppr_dir(profile, tmp_path, "d")
    round1 = str(ppr.round_dir(profile, tmp_path, "d", 1) / "final")
    assert mined == [(str(stage1), 1, str(stage1)), (round1, 2, round1)]
    assert trained == [(str(stage1), round1, 8, 1), (round1, str(folder / "final"), 8, 2)]  # 4 pairs x 2 directions
    # the round-1 held-out pairs (2 x 2 directions), then the random pairs (4 instances x 2), both times
    assert judged == [(str(stage1), 4), (str(stage1), 8), (str(folder / "final"), 4), (str(folder / "final"), 8)]
    assert set(result["accuracy"]) == {"before", "after", "random", "tests"}
    assert set(json.loads((folder / "preference_accuracy.json").read_text())) == {"before", "after", "random", "tests"}
    assert [r["round"] for r in result["rounds"]] == [1, 2] and result["final"] == str(folder / "final")
    assert closed == [str(stage1), round1, str(folder / "final")]  # each engine freed before the next loads



def test_cli_mine_and_train_stages_take_the_round_and_datasets(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(ppr_stage, "mine_stage", lambda profile, root, dataset, k: calls.append(("mine", dataset, k)) or "p")
    monkeypatch.setattr(ppr_stage, "train_stage", lambda profile, root, dataset, k: calls.append(("train", dataset, k))
                        or {"final": "f"})
    assert ppr_stage.main(["--stage", "mine", "--root", str(tmp_path)]) == 0
    assert ppr_stage.main(["--stage", "train", "--round", "2", "--dataset", "x", "--set", "ppr.rounds=2"]) == 0
    assert calls == [("mine", "ml-100k", 1), ("train", "x", 2)]
    with pytest.raises(SystemExit, match="--stage all runs every dataset"):
        ppr_stage.main(["--dataset", "x"])
    monkeypatch.setattr(grpo, "n_processes", lambda: 2)
    with pytest.raises(SystemExit, match="under accelerate launch use --stage train"):
        ppr_stage.main(["--stage", "mine"])


def test_train_stage_without_mined_pairs_names_the_folder_and_the_command(monkeypatch, tmp_path):
    monkeypatch.setattr(ppr, "stage1_policy", lambda *a: tmp_path / "stage1")
    with pytest.raises(FileNotFoundError, match=r"round1/pairs: round 1 has no mined pairs.*--stage mine --round 1"):
        ppr.train_stage(PROFILE, tmp_path, "ml-100k", 1)
    with pytest.raises(ValueError, match=r"round 3 outside 1..ppr.rounds=1"):
        ppr.round_paths(PROFILE, tmp_path, "ml-100k", 3)


def test_a_round_finished_by_a_launched_run_is_reused(monkeypatch, tmp_path):
    monkeypatch.setattr(ppr, "stage1_policy", lambda *a: tmp_path / "stage1")
    paths = ppr.round_paths(PROFILE, tmp_path, "ml-100k", 1)
    assert paths.final == ppr.ppr_dir(PROFILE, tmp_path, "ml-100k") / "final"  # the last round's policy
    paths.final.mkdir(parents=True)
    (paths.final / "config.json").write_text("{}")
    stamp = ppr.round_stamp({"config": "c"}, 1, paths)
    stamps.write_beside(paths.final, POLICY_KIND, stamp)
    monkeypatch.setattr(grpo, "build_trainer", lambda *a, **k: pytest.fail("retrained a finished round"))
    ctx = ppr.DatasetContext("ml-100k", None, {}, pd.DataFrame(), pd.DataFrame(), af.env_factory())
    out = ppr.train_round(PROFILE, ctx, paths, [{"x": 1}], stamp, log=lambda _: None)
    assert out == {"final": str(paths.final), "wall_s": None, "resumed_from": None, "trained": True}


def test_stamps_do_not_depend_on_how_the_root_is_spelled(monkeypatch, tmp_path):
    """The CLI's ``--root .`` and the notebook's absolute root must agree, or launched runs retrain."""
    final = tmp_path / "runs" / "smoke" / "rta" / "ml-100k" / "tirr" / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    relative = ppr.run_stamp(PROFILE, ".", "ml-100k")
    absolute = ppr.run_stamp(PROFILE, tmp_path, "ml-100k")
    assert relative == absolute and relative["start_model"]["path"] == str(final.resolve())
    rel_paths, abs_paths = ppr.round_paths(PROFILE, ".", "ml-100k", 1), ppr.round_paths(PROFILE, tmp_path, "ml-100k", 1)
    assert ppr.round_stamp(relative, 1, rel_paths) == ppr.round_stamp(absolute, 1, abs_paths)
