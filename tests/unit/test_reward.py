"""Exact stage-1 rewards (PAPER.md 1.4) for every rank, a miss, every invalid reason and the bonus."""

from __future__ import annotations

import math

import pytest

from recrepro.agent.parser import InvalidReason, format_answer, format_tool_call, judge_trajectory
from recrepro.config import load_profile
from recrepro.rl.reward import listwise_reward

CFG = load_profile("smoke").reward
RANKING = [7, 3, 12, 1, 20, 5, 9, 14, 2, 18]


def _verdict(final: str, tool_turns: int = 0, truncated: bool = False, schemas=None, max_calls: int = 10):
    turns = [format_tool_call("candidates_analyze") for _ in range(tool_turns)] + [final]
    from recrepro.tools.registry import tool_schemas

    by_name = {schema["function"]["name"]: schema for schema in tool_schemas()}
    return judge_trajectory(turns, 20, 10, max_calls, schemas or by_name, truncated)


@pytest.mark.parametrize("rank", range(1, 11))
def test_every_rank_without_tools(rank):
    verdict = _verdict(format_answer(RANKING))
    out = listwise_reward(verdict, RANKING[rank - 1], CFG, 10)
    assert out.total == pytest.approx(1 / math.log2(rank + 1))
    assert out.rank == rank and out.tool_bonus == 0.0 and out.valid


@pytest.mark.parametrize("rank", range(1, 11))
def test_every_rank_with_a_tool_call(rank):
    verdict = _verdict(format_answer(RANKING), tool_turns=1)
    out = listwise_reward(verdict, RANKING[rank - 1], CFG, 10)
    expected = 1 / math.log2(rank + 1) + (0.1 if rank == 1 else 0.0)
    assert out.total == pytest.approx(expected)
    assert out.n_tool_calls == 1


def test_maximum_is_1_1():
    out = listwise_reward(_verdict(format_answer(RANKING), tool_turns=3), RANKING[0], CFG, 10)
    assert out.total == pytest.approx(1.1) and out.tool_bonus == pytest.approx(0.1)


def test_valid_miss_is_minus_half():
    out = listwise_reward(_verdict(format_answer(RANKING), tool_turns=2), 4, CFG, 10)
    assert out.total == -0.5 and out.rank == 0 and out.valid and out.tool_bonus == 0.0


@pytest.mark.parametrize("final, reason", [
    ("I think the user likes item 3.", InvalidReason.NO_ANSWER),
    ("<answer>7, 3, 12</answer>", InvalidReason.BAD_FORMAT),
    ("<answer>\\boxed{[7, 3, 12]}</answer>", InvalidReason.WRONG_LENGTH),
    ("<answer>\\boxed{[7, 3, 12, 1, 20, 5, 9, 14, 2, 21]}</answer>", InvalidReason.OUT_OF_RANGE),
    ("<answer>\\boxed{[7, 3, 12, 1, 20, 5, 9, 14, 2, 7]}</answer>", InvalidReason.DUPLICATE),
    ('<tool_call>{"name": "candidates_analyze", "arguments": </tool_call>', InvalidReason.BAD_TOOL_CALL),
])
def test_every_invalid_answer_is_minus_one(final, reason):
    out = listwise_reward(_verdict(final), 7, CFG, 10)
    assert out.total == -1.0 and out.invalid == -1.0 and out.reason == reason.value and not out.valid


def test_truncated_and_over_budget_are_invalid_even_with_a_correct_list():
    truncated = listwise_reward(_verdict(format_answer(RANKING), truncated=True), RANKING[0], CFG, 10)
    assert (truncated.total, truncated.reason) == (-1.0, "truncated")
    over = listwise_reward(_verdict(format_answer(RANKING), tool_turns=11), RANKING[0], CFG, 10)
    assert (over.total, over.reason) == (-1.0, "too_many_tool_calls")
    at_budget = listwise_reward(_verdict(format_answer(RANKING), tool_turns=10), RANKING[0], CFG, 10)
    assert at_budget.total == pytest.approx(1.1)


def test_constants_come_from_the_profile():
    from dataclasses import replace

    cfg = replace(CFG, invalid=-2.0, miss=-0.25, first_with_tool_bonus=0.5)
    assert listwise_reward(_verdict("no answer"), 7, cfg, 10).total == -2.0
    assert listwise_reward(_verdict(format_answer(RANKING)), 4, cfg, 10).total == -0.25
    assert listwise_reward(_verdict(format_answer(RANKING), 1), 7, cfg, 10).total == pytest.approx(1.5)
