"""The one answer/tool-call parser: every invalid reason with exact expectations, and a fuzz test."""

from __future__ import annotations

import random
import re
import string
import time

import pytest

from recrepro.agent import parser
from recrepro.agent.parser import (REASON_PRECEDENCE, InvalidReason, ToolCall, check_call_against_schema,
                                   format_answer, format_tool_call, judge_trajectory, parse_answer, parse_choice,
                                   parse_tool_calls, strip_thinking)

N, K = 20, 10
GOOD = list(range(1, 11))
SCHEMAS = {
    "get_user_profile": {"name": "get_user_profile", "parameters": {"type": "object", "properties": {}}},
    "item_info_search": {"type": "function", "function": {
        "name": "item_info_search",
        "parameters": {"type": "object", "properties": {"item_name": {"type": "string"}}, "required": ["item_name"]}}},
}


def answer(body: str) -> str:
    return f"<think>\nreasoning\n</think>\n\n<answer>\\boxed{{[{body}]}}</answer>"


# ---------------------------------------------------------------------------------------- answers


def test_valid_answer_keeps_order():
    parsed = parse_answer(answer("3, 1, 20, 4, 5, 6, 7, 8, 9, 10"), N, K)
    assert parsed.valid and parsed.reason is None
    assert parsed.ranking == (3, 1, 20, 4, 5, 6, 7, 8, 9, 10)


def test_canonical_format_round_trips():
    assert parse_answer(format_answer(GOOD), N, K).ranking == tuple(GOOD)


def test_whitespace_and_prose_inside_the_answer_are_tolerated():
    text = "<answer> My ranking: \\boxed{ [ 1 ,2,3, 4,5,6,7,8,9 , 10 ] } </answer>"
    assert parse_answer(text, N, K).ranking == tuple(GOOD)


@pytest.mark.parametrize("text, reason, detail_part", [
    ("no tags at all", InvalidReason.NO_ANSWER, "no <answer>"),
    ("", InvalidReason.NO_ANSWER, "no <answer>"),
    ("<think><answer>\\boxed{[1,2,3,4,5,6,7,8,9,10]}</answer></think>", InvalidReason.NO_ANSWER, "no <answer>"),
    ("<think>unclosed <answer>\\boxed{[1,2,3,4,5,6,7,8,9,10]}</answer>", InvalidReason.NO_ANSWER, "no <answer>"),
    ("<answer>\\boxed{[1,2,3,4,5,6,7,8,9,10]}", InvalidReason.BAD_FORMAT, "one closed answer block"),
    ("<answer>\\boxed{[1,2,3,4,5,6,7,8,9,10]}</answer><answer>\\boxed{[1,2,3,4,5,6,7,8,9,10]}</answer>",
     InvalidReason.BAD_FORMAT, "one closed answer block"),
    ("<answer>[1,2,3,4,5,6,7,8,9,10]</answer>", InvalidReason.BAD_FORMAT, "exactly one \\boxed"),
    ("<answer>\\boxed{[1,2]} \\boxed{[3,4]}</answer>", InvalidReason.BAD_FORMAT, "exactly one \\boxed"),
    ("<answer>\\boxed{1,2,3,4,5,6,7,8,9,10}</answer>", InvalidReason.BAD_FORMAT, "does not hold a [list]"),
    ("<answer>\\boxed{[1,2,3,4,5,6,7,8,9,x]}</answer>", InvalidReason.BAD_FORMAT, "not all integers"),
    ("<answer>\\boxed{[1,2,3,4,5,6,7,8,9,10.0]}</answer>", InvalidReason.BAD_FORMAT, "not all integers"),
    ("<answer>\\boxed{[1,2,3,4,5,6,7,8,9,]}</answer>", InvalidReason.BAD_FORMAT, "not all integers"),
    ("<answer>\\boxed{[Toy Story, 2]}</answer>", InvalidReason.BAD_FORMAT, "not all integers"),
])
def test_format_reasons(text, reason, detail_part):
    parsed = parse_answer(text, N, K)
    assert not parsed.valid and parsed.ranking is None
    assert parsed.reason is reason
    assert detail_part in parsed.detail


def test_wrong_length_short_long_and_empty():
    short = parse_answer(answer("1, 2, 3"), N, K)
    assert (short.reason, short.raw_indices, short.detail) == (InvalidReason.WRONG_LENGTH, (1, 2, 3),
                                                                "3 indices, expected 10")
    long = parse_answer(answer(", ".join(map(str, range(1, 12)))), N, K)
    assert long.reason is InvalidReason.WRONG_LENGTH and long.detail == "11 indices, expected 10"
    empty = parse_answer("<answer>\\boxed{[]}</answer>", N, K)
    assert empty.reason is InvalidReason.WRONG_LENGTH and empty.raw_indices == ()


@pytest.mark.parametrize("body, n_bad", [("0,1,2,3,4,5,6,7,8,9", 1), ("1,2,3,4,5,6,7,8,9,21", 1),
                                         ("-1,2,3,4,5,6,7,8,9,10", 1), ("1,2,3,4,5,6,7,8,99,100", 2),
                                         ("1,2,3,4,5,6,7,8,9," + "9" * 40, 1)])
def test_out_of_range_is_never_repaired(body, n_bad):
    parsed = parse_answer(answer(body), N, K)
    assert parsed.reason is InvalidReason.OUT_OF_RANGE and parsed.ranking is None
    assert parsed.n_out_of_range == n_bad
    assert parsed.detail == f"{n_bad} index(es) outside 1..20"


def test_duplicate_is_never_repaired():
    parsed = parse_answer(answer("1, 2, 3, 4, 5, 6, 7, 8, 9, 9"), N, K)
    assert parsed.reason is InvalidReason.DUPLICATE and parsed.ranking is None
    assert parsed.n_duplicates == 1 and parsed.detail == "1 repeated index(es)"
    assert parsed.raw_indices == (1, 2, 3, 4, 5, 6, 7, 8, 9, 9)


def test_precedence_out_of_range_then_duplicate_then_length():
    both = parse_answer(answer("1, 1, 30, 4, 5, 6, 7, 8, 9, 10"), N, K)
    assert both.reason is InvalidReason.OUT_OF_RANGE and both.n_duplicates == 1
    dup_short = parse_answer(answer("1, 1, 2"), N, K)
    assert dup_short.reason is InvalidReason.DUPLICATE
    assert REASON_PRECEDENCE.index(InvalidReason.OUT_OF_RANGE) < REASON_PRECEDENCE.index(InvalidReason.DUPLICATE) \
        < REASON_PRECEDENCE.index(InvalidReason.WRONG_LENGTH)
    assert set(REASON_PRECEDENCE) == set(InvalidReason)


def test_top_k_and_candidate_count_come_from_arguments():
    assert parse_answer(answer("5, 1, 2"), 5, 3).ranking == (5, 1, 2)
    assert parse_answer(answer("6, 1, 2"), 5, 3).reason is InvalidReason.OUT_OF_RANGE


def test_reason_values_are_the_documented_strings():
    assert [r.value for r in InvalidReason] == ["no_answer", "bad_format", "wrong_length", "out_of_range",
                                                "duplicate", "too_many_tool_calls", "bad_tool_call", "truncated"]


# ---------------------------------------------------------------------------------------- tool calls


def test_tool_call_in_qwen3_form():
    text = "<think>\nneed info\n</think>\n\n" + format_tool_call("item_info_search", {"item_name": "Heat (1995)"})
    parsed = parse_tool_calls(text)
    assert parsed.ok and parsed.calls == (ToolCall("item_info_search", {"item_name": "Heat (1995)"}),)
    assert parsed.n_attempted == 1


def test_several_calls_and_missing_arguments():
    text = ('<tool_call>{"name": "get_user_profile"}</tool_call>\n'
            '<tool_call>\n{"name": "candidates_analyze", "arguments": null}\n</tool_call>')
    parsed = parse_tool_calls(text)
    assert [c.name for c in parsed.calls] == ["get_user_profile", "candidates_analyze"]
    assert all(c.arguments == {} for c in parsed.calls)


@pytest.mark.parametrize("body, error", [
    ('{"name": "x", "arguments": {', "not valid JSON"),
    ("[1, 2]", "not an object"),
    ('{"arguments": {}}', "no string 'name'"),
    ('{"name": "", "arguments": {}}', "no string 'name'"),
    ('{"name": "x", "arguments": [1]}', "'arguments' is not an object"),
])
def test_malformed_calls_are_errors_and_count_as_calls(body, error):
    parsed = parse_tool_calls(f"<tool_call>{body}</tool_call>")
    assert not parsed.ok and parsed.calls == () and error in parsed.errors[0]
    assert parsed.n_attempted == 1


def test_unbalanced_tags_are_errors_but_not_calls():
    parsed = parse_tool_calls('<tool_call>{"name": "get_user_profile", "arguments": {}}')
    assert parsed.errors == ("unbalanced <tool_call> tag",) and parsed.n_attempted == 0


def test_calls_inside_think_are_ignored():
    assert parse_tool_calls("<think>" + format_tool_call("get_user_profile") + "</think>").n_attempted == 0
    assert strip_thinking("a<think>b</think>c<think>d") == "ac"


def test_schema_check():
    ok = ToolCall("item_info_search", {"item_name": "Heat"})
    assert check_call_against_schema(ok, SCHEMAS) is None
    assert "unknown tool" in check_call_against_schema(ToolCall("nope", {}), SCHEMAS)
    assert "missing argument" in check_call_against_schema(ToolCall("item_info_search", {}), SCHEMAS)
    assert "unknown argument" in check_call_against_schema(ToolCall("get_user_profile", {"x": 1}), SCHEMAS)
    assert "should be string" in check_call_against_schema(ToolCall("item_info_search", {"item_name": 3}), SCHEMAS)


# ---------------------------------------------------------------------------------------- trajectories


def call_turn(n: int = 1) -> str:
    return "<think>\nlook\n</think>\n\n" + "\n".join([format_tool_call("get_user_profile")] * n)


def test_trajectory_valid_with_tools():
    verdict = judge_trajectory([call_turn(), call_turn(2), answer("1,2,3,4,5,6,7,8,9,10")], N, K, 10, SCHEMAS)
    assert verdict.valid and verdict.n_tool_calls == 3 and verdict.ranking == tuple(GOOD)


def test_trajectory_budget_exactly_ten_is_fine_eleven_is_not():
    ten = judge_trajectory([call_turn(10), answer("1,2,3,4,5,6,7,8,9,10")], N, K, 10, SCHEMAS)
    assert ten.valid
    eleven = judge_trajectory([call_turn(10), call_turn(1), answer("1,2,3,4,5,6,7,8,9,10")], N, K, 10, SCHEMAS)
    assert eleven.reason is InvalidReason.TOO_MANY_TOOL_CALLS
    assert eleven.answer.detail == "11 tool calls, budget 10"
    assert eleven.ranking is None and eleven.answer.raw_indices == tuple(GOOD)


def test_trajectory_bad_tool_call_variants():
    malformed = judge_trajectory(["<tool_call>{oops</tool_call>", answer("1,2,3,4,5,6,7,8,9,10")], N, K, 10, SCHEMAS)
    assert malformed.reason is InvalidReason.BAD_TOOL_CALL and malformed.n_bad_tool_calls == 1
    unknown = judge_trajectory([format_tool_call("nope"), answer("1,2,3,4,5,6,7,8,9,10")], N, K, 10, SCHEMAS)
    assert unknown.reason is InvalidReason.BAD_TOOL_CALL and "unknown tool 'nope'" in unknown.answer.detail
    no_tools = judge_trajectory([call_turn(), answer("1,2,3,4,5,6,7,8,9,10")], N, K, 10, None)
    assert no_tools.reason is InvalidReason.BAD_TOOL_CALL
    assert no_tools.answer.detail == "tools are not available in this variant"


def test_trajectory_truncated_last_turn_is_not_judged_for_calls():
    verdict = judge_trajectory([call_turn(), "<think> going on and on <tool_call>{"], N, K, 10, SCHEMAS,
                               truncated=True)
    assert verdict.reason is InvalidReason.TRUNCATED and verdict.n_tool_calls == 1
    assert verdict.answer.detail == "a token limit ended the final turn"


def test_trajectory_truncation_overrides_a_complete_answer():
    verdict = judge_trajectory([answer("1,2,3,4,5,6,7,8,9,10") + " and more"], N, K, 10, SCHEMAS, truncated=True)
    assert verdict.reason is InvalidReason.TRUNCATED


def test_trajectory_answer_only_in_last_turn():
    verdict = judge_trajectory([answer("1,2,3,4,5,6,7,8,9,10") + format_tool_call("get_user_profile"),
                                "I forgot the answer"], N, K, 10, SCHEMAS)
    assert verdict.reason is InvalidReason.NO_ANSWER
    assert judge_trajectory([], N, K, 10, SCHEMAS).reason is InvalidReason.NO_ANSWER


# ---------------------------------------------------------------------------------------- fuzz

PIECES = ["<answer>", "</answer>", "<think>", "</think>", "<tool_call>", "</tool_call>", "\\boxed{", "[", "]", "{",
          "}", ",", " ", "\n", "1", "20", "-3", "99999999999999999999999", '"name"', ":", '"arguments"', "null",
          "\\", "\x00", "ü", "🙂", "[[", "]]"]


def test_fuzz_never_raises():
    rng = random.Random(1234)
    alphabet = string.printable + "<>{}[]\\"
    for _ in range(3000):
        if rng.random() < 0.5:
            text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40)))
        else:
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
        parsed = parse_answer(text, N, K)
        assert parsed.valid == (parsed.reason is None)
        if parsed.valid:
            assert len(parsed.ranking) == K and len(set(parsed.ranking)) == K
            assert all(1 <= i <= N for i in parsed.ranking)
        calls = parse_tool_calls(text)
        assert calls.n_attempted >= len(calls.calls)
        judge_trajectory([text, text], N, K, 10, SCHEMAS, truncated=rng.random() < 0.3)


@pytest.mark.parametrize("value", [None, 3, b"<answer>", ["x"]])
def test_non_strings_do_not_raise(value):
    assert parse_answer(value, N, K).reason is InvalidReason.NO_ANSWER
    assert parse_tool_calls(value).n_attempted == 0
    assert judge_trajectory([value], N, K, 10, SCHEMAS).reason is InvalidReason.NO_ANSWER


# ---------------------------------------------------------------------------------------- index spelling (issue 15)


@pytest.mark.parametrize("first, shown", [
    ("+1", "+1"), ("01", "01"), ("-01", "-01"), ("00", "00"),
    ("\u0661", "\u0661"),  # ARABIC-INDIC DIGIT ONE: int() reads it as 1
    ("\uff11", "\uff11"),  # FULLWIDTH DIGIT ONE
    ("1\u0660", "1\u0660"),  # ASCII 1 then ARABIC-INDIC ZERO: int() reads 10
])
def test_indices_not_written_in_plain_ascii_are_bad_format(first, shown):
    parsed = parse_answer(answer(f"{first}, 2, 3, 4, 5, 6, 7, 8, 9, 11"), N, K)
    assert (parsed.reason, parsed.ranking, parsed.raw_indices) == (InvalidReason.BAD_FORMAT, None, None)
    assert parsed.detail == f"list element {shown!r} is not a plain index (ASCII digits, no '+', no leading zero)"
    verdict = judge_trajectory([answer(f"{first}, 2, 3, 4, 5, 6, 7, 8, 9, 11")], N, K, 10, SCHEMAS)
    assert not verdict.valid and verdict.reason is InvalidReason.BAD_FORMAT


def test_plain_index_spellings_keep_their_old_verdicts():
    assert parse_answer(answer("10, 2, 3, 4, 5, 6, 7, 8, 9, 1"), N, K).ranking == (10, 2, 3, 4, 5, 6, 7, 8, 9, 1)
    for first in ("0", "-0", "-1", "-10"):  # a minus sign is an out-of-range index, not a spelling problem
        parsed = parse_answer(answer(f"{first}, 2, 3, 4, 5, 6, 7, 8, 9, 10"), N, K)
        assert parsed.reason is InvalidReason.OUT_OF_RANGE and parsed.n_out_of_range == 1, first
    mixed = parse_answer(answer("x, +1, 3, 4, 5, 6, 7, 8, 9, 10"), N, K)  # not an integer at all wins
    assert mixed.detail == "list elements are not all integers"
    long = parse_answer(answer("0" * 100 + "1, 2, 3, 4, 5, 6, 7, 8, 9, 10"), N, K)
    assert long.detail == f"list element {'0' * 20!r} is not a plain index (ASCII digits, no '+', no leading zero)"


# ---------------------------------------------------------------------------------------- linear time (issue 15)

REPEATS = 16_000  # took > 10 s (<answer>) and > 30 s (<tool_call>) with findall over lazy regexes


class CountingStr(str):
    """A str that records how many characters each ``find`` scanned (the parser's only scans of tags)."""

    scanned: int = 0

    def find(self, sub, start=0, end=None):
        found = super().find(sub, start, end)
        CountingStr.scanned += (found + len(sub) if found >= 0 else len(self)) - start
        return found


@pytest.mark.parametrize("open_tag, close_tag", [("<answer>", "</answer>"), ("<tool_call>", "</tool_call>"),
                                                 ("<think>", "</think>")])
def test_block_scan_reads_each_character_a_bounded_number_of_times(open_tag, close_tag):
    for text in (open_tag * REPEATS, close_tag * REPEATS, (open_tag + "x" + close_tag) * REPEATS,
                 (open_tag + close_tag + close_tag) * REPEATS, (open_tag * 3 + close_tag) * REPEATS):
        CountingStr.scanned = 0
        parser._split_blocks(CountingStr(text), open_tag, close_tag)
        assert CountingStr.scanned <= 2 * len(text) + len(close_tag)


def test_many_unclosed_tags_get_the_right_verdict_quickly():
    began = time.perf_counter()
    opens = parse_answer("<answer>" * REPEATS, N, K)
    assert (opens.reason, opens.detail) == (InvalidReason.BAD_FORMAT,
                                           f"expected one closed answer block, found {REPEATS} open / 0 close")
    closes = parse_answer("</answer>" * REPEATS + "<answer>", N, K)
    assert closes.detail == f"expected one closed answer block, found 1 open / {REPEATS} close"
    calls = parse_tool_calls("<tool_call>" * REPEATS)
    assert calls.errors == ("unbalanced <tool_call> tag",) * REPEATS and calls.n_attempted == 0
    blocks = parse_tool_calls("<tool_call>{oops</tool_call>" * REPEATS + "<tool_call>")
    assert (calls.n_attempted, blocks.n_attempted, len(blocks.errors)) == (0, REPEATS, REPEATS + 1)
    verdict = judge_trajectory(["<tool_call>" * REPEATS, "<answer>" * REPEATS], N, K, 10, SCHEMAS)
    assert (verdict.reason, verdict.n_tool_calls, verdict.n_bad_tool_calls) == (InvalidReason.BAD_TOOL_CALL, 0,
                                                                                REPEATS)
    assert parse_choice("<answer>" * REPEATS).reason is InvalidReason.BAD_FORMAT
    assert strip_thinking("<think>" * REPEATS + "x") == "" and strip_thinking("</think>" * 3) == "</think>" * 3
    assert time.perf_counter() - began < 5.0  # a generous bound: linear scans take milliseconds


def test_megabyte_inputs_parse():
    spaces = " " * 1_000_000
    assert parse_choice(f"<answer>\\boxed{{A{spaces}}}</answer>").letter == "A"  # the lazy regex took minutes
    assert parse_choice(f"<answer>\\boxed{{A{spaces}</answer>").reason is InvalidReason.BAD_FORMAT
    assert parse_answer(f"<answer>\\boxed{{[{spaces}1,2,3,4,5,6,7,8,9,10]}}</answer>", N, K).ranking == tuple(GOOD)
    padded = "<think>" + "x" * 1_000_000 + "</think>" + format_answer(GOOD) + format_tool_call("get_user_profile")
    assert parse_answer(padded, N, K).valid and parse_tool_calls(padded).n_attempted == 1


# The regexes the parser used before issue 15 (quadratic on many unclosed tags): the linear scans must
# find exactly what they found.
OLD_BLOCKS = {("<think>", "</think>"): re.compile(r"<think>(.*?)(?:</think>|\Z)", re.DOTALL),
              ("<tool_call>", "</tool_call>"): re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL),
              ("<answer>", "</answer>"): re.compile(r"<answer>(.*?)</answer>", re.DOTALL)}
OLD_LETTER = re.compile(r"\\boxed\{\s*(?P<body>[^{}]*?)\s*\}")
SCAN_PIECES = ["<answer>", "</answer>", "<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_", "call>",
               "</", "<", ">", "answer>", "\\boxed{", "{", "}", " ", "\n", "\u3000", "A", "B", "a", "x"]


def old_choice(text: str) -> tuple[str | None, InvalidReason | None]:
    visible = OLD_BLOCKS["<think>", "</think>"].sub("", text)
    if visible.count("<answer>") == 0:
        return None, InvalidReason.NO_ANSWER
    blocks = OLD_BLOCKS["<answer>", "</answer>"].findall(visible)
    if visible.count("<answer>") != 1 or visible.count("</answer>") != 1 or len(blocks) != 1 \
            or blocks[0].count("\\boxed{") != 1:
        return None, InvalidReason.BAD_FORMAT
    match = OLD_LETTER.search(blocks[0])
    if match is None or match.group("body") not in ("A", "B"):
        return None, InvalidReason.BAD_FORMAT
    return match.group("body"), None


def test_linear_scans_agree_with_the_old_regexes():
    rng = random.Random(15)
    for _ in range(4000):
        text = "".join(rng.choice(SCAN_PIECES) for _ in range(rng.randint(0, 30)))
        for (open_tag, close_tag), old in OLD_BLOCKS.items():
            bodies, outside, unclosed = parser._split_blocks(text, open_tag, close_tag)
            if open_tag == "<think>":  # an unclosed think block swallows the rest
                assert "".join(outside) == old.sub("", text) == strip_thinking(text), text
                continue
            assert bodies == old.findall(text), text
            assert "".join(outside) + (text[unclosed:] if unclosed >= 0 else "") == old.sub("", text), text
        choice = parse_choice(text)
        assert (choice.letter, choice.reason) == old_choice(text), text
