"""The environment: TRL's contract, budget enforcement, tool errors, identical candidates in a group."""

from __future__ import annotations

import inspect

import pytest

from recrepro.agent.env import (BUDGET_MESSAGE, OVER_BUDGET, RecAgentEnv, env_tools, make_env_factory,
                                tool_schemas)
from recrepro.agent.parser import InvalidReason, format_answer, format_tool_call
from recrepro.agent.prompt import PromptSpec, build_messages, instance_from_sample
from recrepro.tools import TOOL_NAMES, ToolResult
from recrepro.tools import tool_schemas as registry_schemas
from tests.unit.agent_fakes import env_factory, make_env, sample_rows, views

ANSWER = "<think>\nranked\n</think>\n\n" + format_answer(range(1, 11))


def public_functions(cls: type) -> list[str]:
    """What TRL 1.16 turns into tools: public functions of the class, minus reset and get_reward."""
    return sorted(name for name, _ in inspect.getmembers(cls, predicate=inspect.isfunction)
                  if name not in ("reset", "get_reward") and not name.startswith("_"))


def test_trl_sees_exactly_the_seven_tools_and_reset():
    assert public_functions(RecAgentEnv) == sorted(TOOL_NAMES)
    assert callable(RecAgentEnv.reset)
    env = RecAgentEnv()
    assert [t.__name__ for t in env_tools(env)] == sorted(TOOL_NAMES)


def test_schemas_seen_by_trl_equal_the_registry():
    from_methods = tool_schemas(RecAgentEnv())
    assert from_methods == {s["function"]["name"]: s for s in registry_schemas()}


def test_factory_takes_no_arguments_and_reset_returns_none():
    factory = make_env_factory(lambda row: None)
    env = factory()
    assert isinstance(env, RecAgentEnv) and env.reset(sample_id=3, candidates=["a", "b"]) is None
    assert env.episode.sample_id == 3 and env.episode.candidates == ("a", "b")


def test_unreset_environment_refuses_politely():
    env = RecAgentEnv(max_tool_calls=10)
    assert "not been reset" in env.get_user_profile()
    with pytest.raises(RuntimeError, match="binder"):
        env.reset(sample_id=1)


def test_calls_are_recorded_with_name_args_ok_latency():
    env = make_env()
    env.episode.turn = 2
    text = env.item_info_search(item_name="[3]")
    assert text.startswith("[3] ")
    (call,) = env.episode.calls
    assert (call.turn, call.name, call.arguments, call.ok, call.error_kind) == (2, "item_info_search",
                                                                              {"item_name": "[3]"}, True, None)
    assert call.latency_s >= 0 and call.response_chars == len(text)
    assert env.episode.calls_per_tool()["item_info_search"] == 1


def test_budget_ten_calls_pass_the_eleventh_is_refused_and_invalid():
    env = make_env(max_tool_calls=10)
    for _ in range(10):
        assert not env.get_rating_behavior().startswith("Error: tool-call budget")
    assert not env.episode.over_budget
    refused = env.candidates_analyze()
    assert refused == BUDGET_MESSAGE.format(max=10)
    assert env.episode.over_budget and env.episode.n_calls == 11
    assert env.episode.calls[-1].error_kind == OVER_BUDGET and not env.episode.calls[-1].ok
    turns = [format_tool_call("get_rating_behavior")] * 10 + [format_tool_call("candidates_analyze"), ANSWER]
    verdict = env.episode.finish(turns, 10, tool_schemas(env))
    assert verdict.reason is InvalidReason.TOO_MANY_TOOL_CALLS and verdict.ranking is None


def test_budget_is_per_trajectory_and_reset_clears_it():
    env = make_env(max_tool_calls=2)
    env.get_user_profile(), env.get_user_profile(), env.get_user_profile()
    assert env.episode.over_budget
    env.reset(**sample_rows(1)[0])
    assert env.episode.n_calls == 0 and not env.episode.over_budget


def test_refused_call_is_caught_even_when_the_text_was_not_kept():
    env = make_env(max_tool_calls=1)
    env.get_user_profile(), env.get_user_profile()
    verdict = env.episode.finish([ANSWER], 10, tool_schemas(env))
    assert verdict.reason is InvalidReason.TOO_MANY_TOOL_CALLS
    assert verdict.answer.detail == "2 tool calls, budget 1"


@pytest.mark.parametrize("call, kind", [
    (lambda env: env.item_info_search(item_name="zzzz qqqq no such thing"), "unknown_item"),
    (lambda env: env.item_info_search(item_name=3), "wrong_type"),
    (lambda env: env.item_info_search(), "missing_argument"),
    (lambda env: env.get_user_profile(user="x"), "unexpected_argument"),
    (lambda env: env.get_similar_items(item_title="  "), "empty_argument"),
])
def test_agent_mistakes_are_tool_errors_and_bad_tool_calls(call, kind):
    env = make_env()
    text = call(env)  # never raises, as TRL needs: the error text goes back to the model
    assert text.startswith("Error:")
    (record,) = env.episode.calls
    assert not record.ok and record.error_kind == kind and record.agent_error
    verdict = env.episode.finish([format_tool_call(record.name, record.arguments), ANSWER], 10, tool_schemas(env))
    assert verdict.reason is InvalidReason.BAD_TOOL_CALL


def test_internal_tool_failures_are_not_held_against_the_agent():
    class Broken:
        def call(self, name, arguments):
            return ToolResult(name, arguments, "Error: the tool failed internally.", False, "internal")

    env = RecAgentEnv(lambda row: Broken(), max_tool_calls=10)
    env.reset(sample_id=1, candidates=[str(i) for i in range(20)])
    env.get_user_profile()
    assert env.episode.calls[0].error_kind == "internal" and not env.episode.calls[0].agent_error
    schemas = tool_schemas(env)
    verdict = env.episode.finish([format_tool_call("get_user_profile"), ANSWER], 10, schemas)
    assert verdict.valid and verdict.ranking == tuple(range(1, 11))


def test_group_sees_identical_candidates_in_identical_order():
    row = sample_rows(1)[0]
    group = [env_factory()() for _ in range(8)]  # G = 8 (PAPER.md 1.4)
    for env in group:
        env.reset(**dict(row))
    assert len({env.episode.candidates for env in group}) == 1
    assert group[0].episode.candidates == tuple(row["candidates"])
    assert len({env.candidates_analyze() for env in group}) == 1
    assert len({env.get_similar_users() for env in group}) == 1
    prompts = {build_messages(instance_from_sample(row, views()), PromptSpec())[1]["content"] for _ in group}
    assert len(prompts) == 1


def test_every_tool_answers_from_the_bound_instance():
    env = make_env()
    for name in TOOL_NAMES:
        method = getattr(env, name)
        params = [p for p in inspect.signature(method).parameters]
        text = method(**{p: "[1]" for p in params})
        assert isinstance(text, str) and text
    assert env.episode.n_calls == 7
