"""The prompt: versioned texts, the user turn, rendering through the chat template with tools, and
round trips of tool calls through our parser, transformers' response parser and TRL's."""

from __future__ import annotations

import json

import pytest

from recrepro.agent.env import RecAgentEnv, env_tools
from recrepro.agent.parser import format_answer, format_tool_call, parse_answer, parse_tool_calls
from recrepro.agent.prompt import (PROMPT_VERSION, AgentInstance, ItemView, PromptSpec, build_messages,
                                   describe_item, prompt_fingerprint, render_prompt, system_prompt, user_prompt)
from recrepro.tools import TOOL_NAMES
from tests.unit.agent_fakes import tasks, tiny_tokenizer

INSTANCE = AgentInstance(
    sample_id=1, user_id="u",
    history=(ItemView("a", "Heat (1995)", ("Action", "Thriller")), ItemView("b", "Babe (1995)", ())),
    candidates=tuple(ItemView(str(i), f"Movie {i}", ("Drama",) if i % 2 else ()) for i in range(1, 21)),
    target_index=7,
)


@pytest.mark.parametrize("variant, style", [("tirr", "react"), ("tirr", "apa"), ("r", "react")])
def test_system_prompts_state_task_and_contract(variant, style):
    text = system_prompt(PromptSpec(variant, style))
    assert "$" not in text  # every placeholder substituted
    assert "rank the 10 candidates" in text and "20 numbered candidate items" in text
    assert "<think>" in text and "<answer>\\boxed{[i1, i2, ..., i10]}</answer>" in text
    assert ("<tool_call>" in text and "at most 10 tool calls" in text) == (variant == "tirr")
    assert ("Analyze:" in text and "Plan:" in text and "Act:" in text) == (style == "apa" and variant == "tirr")
    if variant == "r":
        assert "No tools are available" in text


def test_numbers_in_the_instructions_follow_the_spec():
    text = system_prompt(PromptSpec("tirr", top_k=5, max_tool_calls=3), n_candidates=8)
    assert "rank the 5 candidates" in text and "8 numbered" in text and "at most 3 tool calls" in text


def test_version_and_fingerprint():
    assert PROMPT_VERSION == "v1"
    assert len(prompt_fingerprint()) == 16 and prompt_fingerprint() == prompt_fingerprint()


def test_bad_spec_is_rejected():
    with pytest.raises(ValueError, match="variant"):
        PromptSpec("tools")
    with pytest.raises(ValueError, match="style"):
        PromptSpec("tirr", "cot")


def test_user_turn_lists_history_and_numbered_candidates_in_order():
    text = user_prompt(INSTANCE, PromptSpec())
    lines = text.splitlines()
    assert lines[0] == "The user's history, oldest first (2 items):"
    assert lines[1:3] == ["1. Heat (1995) (Action, Thriller)", "2. Babe (1995)"]
    numbered = [line for line in lines if line.startswith("[")]
    assert numbered[0] == "[1] Movie 1 (Drama)" and numbered[1] == "[2] Movie 2" and len(numbered) == 20
    assert [int(line[1:line.index("]")]) for line in numbered] == list(range(1, 21))
    assert "target" not in text.lower()
    assert describe_item(ItemView("x", "T" * 300, ("a", "b", "c", "d"))).endswith("... (b, c, d)")


def test_rendered_prompt_lists_all_tools_through_the_template():
    tokenizer = tiny_tokenizer()
    task = tasks(1)[0]
    text = render_prompt(tokenizer, task.messages, env_tools(RecAgentEnv()))
    assert text.startswith("<|im_start|>system\n" + task.messages[0]["content"] + "\n\n# Tools")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    tools_block = text[text.index("<tools>\n") + len("<tools>\n"): text.index("\n</tools>\n\nFor each")]
    schemas = [json.loads(line) for line in tools_block.strip().splitlines()]
    assert sorted(s["function"]["name"] for s in schemas) == sorted(TOOL_NAMES)
    assert task.messages[1]["content"] in text


def test_reasoning_only_prompt_has_no_tools():
    tokenizer = tiny_tokenizer()
    task = tasks(1, variant="r")[0]
    text = render_prompt(tokenizer, task.messages, None)
    assert "<tools>" not in text and "# Tools" not in text
    assert text.startswith("<|im_start|>system\n" + task.messages[0]["content"] + "<|im_end|>")


def test_special_tokens_and_tags_are_single_tokens():
    tokenizer = tiny_tokenizer()
    for tag in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>", "<tool_call>", "</tool_call>",
                "<tool_response>", "</tool_response>", "<answer>", "</answer>"):
        assert len(tokenizer.encode(tag, add_special_tokens=False)) == 1, tag
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_template_renders_tool_calls_our_parser_reads_back():
    tokenizer = tiny_tokenizer()
    call = {"type": "function", "function": {"name": "item_info_search", "arguments": {"item_name": "Heat (1995)"}}}
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    turn = rendered[rendered.rindex("<|im_start|>assistant\n") + len("<|im_start|>assistant\n"):]
    parsed = parse_tool_calls(turn)
    assert parsed.ok and [(c.name, c.arguments) for c in parsed.calls] == [("item_info_search",
                                                                             {"item_name": "Heat (1995)"})]
    assert format_tool_call("item_info_search", {"item_name": "Heat (1995)"}) in turn


def test_trl_recognises_the_template_and_parses_our_format():
    from trl.chat_template_utils import add_response_schema, parse_response, supports_tool_calling

    tokenizer = add_response_schema(tiny_tokenizer())  # raises for templates TRL does not know
    assert supports_tool_calling(tokenizer)
    task = tasks(1)[0]
    prompt_ids = tokenizer.encode(render_prompt(tokenizer, task.messages, env_tools(RecAgentEnv())),
                                  add_special_tokens=False)
    text = ("<think>\nneed the profile\n</think>\n\n" + format_tool_call("get_user_profile") + "\n"
            + format_tool_call("get_similar_items", {"item_title": "Book Alpha 1"}))
    ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    message = parse_response(tokenizer, ids, prefix=prompt_ids, tools=env_tools(RecAgentEnv()))
    trl_calls = [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
    ours = [(c.name, c.arguments) for c in parse_tool_calls(text).calls]
    assert trl_calls == ours == [("get_user_profile", {}), ("get_similar_items", {"item_title": "Book Alpha 1"})]
    assert message["reasoning_content"].strip() == "need the profile"

    answer = "<think>\nranked\n</think>\n\n" + format_answer(range(1, 11))
    final = parse_response(tokenizer, tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_id],
                           prefix=prompt_ids)
    assert not final.get("tool_calls")
    assert parse_answer(final["content"], 20, 10).ranking == tuple(range(1, 11))
    assert parse_answer(answer, 20, 10).ranking == tuple(range(1, 11))


def test_build_messages_is_system_then_user():
    messages = build_messages(INSTANCE, PromptSpec("r"))
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == system_prompt(PromptSpec("r"))


def test_enable_thinking_reaches_a_hybrid_template_and_none_changes_nothing():
    """Issue 14: agent.enable_thinking goes to the chat template (Qwen3 hybrid models of Figure 5); None
    passes nothing, so the tiny profiles' prompts are exactly what they were."""
    from types import SimpleNamespace

    from recrepro.agent.prompt import render_prompt

    calls = []

    def apply_chat_template(messages, **kwargs):
        calls.append(kwargs)
        return "think" if kwargs.get("enable_thinking", True) else "no-think"

    tokenizer = SimpleNamespace(apply_chat_template=apply_chat_template)
    messages = [{"role": "user", "content": "hi"}]
    assert render_prompt(tokenizer, messages) == "think" and "enable_thinking" not in calls[-1]
    assert render_prompt(tokenizer, messages, enable_thinking=None) == "think" and "enable_thinking" not in calls[-1]
    assert render_prompt(tokenizer, messages, enable_thinking=False) == "no-think"


def test_the_thinking_switch_reaches_evaluation_and_training():
    from recrepro.agent.evaluate import rollout_settings
    from recrepro.config import load_profile
    from recrepro.rl.grpo import build_grpo_config

    paper, cpu = load_profile("paper"), load_profile("cpu")
    assert rollout_settings(paper).enable_thinking is False and rollout_settings(cpu).enable_thinking is None
    assert build_grpo_config(paper, "/tmp/unused", processes=4).chat_template_kwargs == {"enable_thinking": False}
    assert not build_grpo_config(cpu, "/tmp/unused", processes=1).chat_template_kwargs
