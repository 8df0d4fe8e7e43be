"""The one parser for agent output: final answers, tool calls, and the verdict on a whole trajectory.

Every place that decides whether an agent's output counts (zero-shot evaluation, GRPO rewards, the
evaluation card, the warm-start teacher's self-check) goes through this module, so validity can not
drift between training and evaluation (DESIGN.md section 2).

Output contract (PAPER.md 1.3, [N]):

* reasoning inside ``<think> ... </think>``; text inside a think block is never parsed for tool
  calls or answers (the same split TRL's Qwen3 response parser makes);
* tool calls in the Qwen3 form ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``;
* the final answer ``<answer>\\boxed{[i1, ..., iK]}</answer>``: exactly one answer block holding
  exactly one ``\\boxed{[...]}`` with exactly K distinct integers in 1..n_candidates (K =
  ``agent.top_k`` = 10). Other prose inside the answer block is tolerated [G]; a second
  ``\\boxed`` or a second answer block is not.

Nothing is repaired: a duplicate or an out-of-range index makes the answer invalid, it is never
dropped or replaced. When several problems occur, the reported reason follows a fixed precedence
(:data:`REASON_PRECEDENCE`). No function here raises on any input string.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, Sequence


class InvalidReason(str, Enum):
    """Why a trajectory's answer does not count. Values are the strings stored in records and cards."""

    NO_ANSWER = "no_answer"  # no <answer> tag in the final turn
    BAD_FORMAT = "bad_format"  # answer present but not one \boxed{[int, ...]} in one closed block
    WRONG_LENGTH = "wrong_length"  # a well-formed list whose length is not K
    OUT_OF_RANGE = "out_of_range"  # an index outside 1..n_candidates (a hallucinated item)
    DUPLICATE = "duplicate"  # an index listed twice
    TOO_MANY_TOOL_CALLS = "too_many_tool_calls"  # more than agent.max_tool_calls calls
    BAD_TOOL_CALL = "bad_tool_call"  # malformed JSON, unknown tool or arguments the tool does not take
    TRUNCATED = "truncated"  # generation stopped by a token limit before the turn ended


# Highest first: trajectory-level failures, then the answer's own problems from the most specific
# (an index that is not a candidate) to the least (a list of the wrong length).
REASON_PRECEDENCE: tuple[InvalidReason, ...] = (
    InvalidReason.TOO_MANY_TOOL_CALLS,
    InvalidReason.BAD_TOOL_CALL,
    InvalidReason.TRUNCATED,
    InvalidReason.NO_ANSWER,
    InvalidReason.BAD_FORMAT,
    InvalidReason.OUT_OF_RANGE,
    InvalidReason.DUPLICATE,
    InvalidReason.WRONG_LENGTH,
)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
BOXED = "\\boxed{"

# Blocks are found with str.find (:func:`_split_blocks`): findall of a lazy ``<answer>(.*?)</answer>``
# rescans from every unclosed tag (quadratic). The regexes below cannot backtrack quadratically.
_BOXED_LIST = re.compile(r"\\boxed\{\s*\[(?P<body>[^\[\]{}]*)\]\s*\}")
_BRACE = re.compile(r"[{}]")
_INTEGER = re.compile(r"[+-]?\d+")  # what int() reads: any Unicode digits, a sign, leading zeros
_INDEX = re.compile(r"-?(?:0|[1-9][0-9]*)")  # how an index is written: ASCII digits, no '+', no leading zero


@dataclass(frozen=True)
class ParsedAnswer:
    """The final answer of one trajectory. ``ranking`` is set only when the answer is valid."""

    ranking: tuple[int, ...] | None
    reason: InvalidReason | None
    detail: str = ""
    # Diagnostics kept even for invalid answers (evaluation card rates); never used for scoring.
    raw_indices: tuple[int, ...] | None = None
    n_out_of_range: int = 0
    n_duplicates: int = 0

    @property
    def valid(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class ToolCall:
    """One well-formed tool call as the model wrote it."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolCallParse:
    """All tool calls of one assistant turn; ``errors`` lists malformed ones (each is a bad_tool_call)."""

    calls: tuple[ToolCall, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    n_malformed: int = 0  # closed <tool_call> blocks whose JSON is unusable (each counts as a call)

    @property
    def n_attempted(self) -> int:
        """Calls the model wrote: every closed ``<tool_call>`` block, well-formed or not."""
        return len(self.calls) + self.n_malformed


def _split_blocks(text: str, open_tag: str, close_tag: str) -> tuple[list[str], list[str], int]:
    """Closed ``open_tag ... close_tag`` blocks as the lazy regex ``open(.*?)close`` finds them: their bodies,
    the text outside them, and the position of an opening tag left unclosed (-1 if none; the outside text
    stops there). Linear time: every character is scanned at most once for each tag."""
    bodies: list[str] = []
    outside: list[str] = []
    pos = 0
    while (start := text.find(open_tag, pos)) >= 0:
        outside.append(text[pos:start])
        end = text.find(close_tag, start + len(open_tag))
        if end < 0:
            return bodies, outside, start  # no later opening tag can be closed either
        bodies.append(text[start + len(open_tag):end])
        pos = end + len(close_tag)
    outside.append(text[pos:])
    return bodies, outside, -1


def strip_thinking(text: str) -> str:
    """The text outside ``<think>`` blocks; an unclosed block swallows the rest of the text."""
    if not isinstance(text, str):
        return ""
    return "".join(_split_blocks(text, THINK_OPEN, THINK_CLOSE)[1])


def _invalid(reason: InvalidReason, detail: str, raw: tuple[int, ...] | None = None,
             out_of_range: int = 0, duplicates: int = 0) -> ParsedAnswer:
    return ParsedAnswer(None, reason, detail, raw, out_of_range, duplicates)


def _parse_int_list(body: str) -> tuple[tuple[int, ...] | None, str]:
    """Indices of a comma-separated list body, or None and why not. An index is plain ASCII digits with at
    most a minus sign: ``+1``, ``01`` or other scripts' digits (Arabic-Indic, fullwidth), which int() would
    read, are rejected, not repaired."""
    if not body.strip():
        return (), ""
    parts = [part.strip() for part in body.split(",")]
    if any(not _INTEGER.fullmatch(part) for part in parts):
        return None, "list elements are not all integers"
    odd = next((part for part in parts if not _INDEX.fullmatch(part)), None)
    if odd is not None:
        return None, f"list element {odd[:20]!r} is not a plain index (ASCII digits, no '+', no leading zero)"
    # Bounded length keeps int() cheap on adversarial input; such numbers are out of range anyway.
    return tuple(int(part) if len(part) <= 18 else 10**18 for part in parts), ""


def _answer_body(text: str) -> tuple[str | None, InvalidReason | None, str]:
    """The body of the one closed answer block outside ``<think>``, holding exactly one ``\\boxed{``;
    else None with the reason and detail. Shared by rankings and pairwise letters."""
    if not isinstance(text, str):
        return None, InvalidReason.NO_ANSWER, "not a string"
    visible = strip_thinking(text)
    n_open, n_close = visible.count(ANSWER_OPEN), visible.count(ANSWER_CLOSE)
    if n_open == 0:
        return None, InvalidReason.NO_ANSWER, "no <answer> tag outside <think>"
    bodies = _split_blocks(visible, ANSWER_OPEN, ANSWER_CLOSE)[0] if n_open == n_close == 1 else []
    if len(bodies) != 1:  # counts first: with several tags no block needs finding
        return None, InvalidReason.BAD_FORMAT, f"expected one closed answer block, found {n_open} open / {n_close} close"
    body = bodies[0]
    if body.count(BOXED) != 1:
        return None, InvalidReason.BAD_FORMAT, f"expected exactly one \\boxed{{...}}, found {body.count(BOXED)}"
    return body, None, ""


def parse_answer(text: str, n_candidates: int, top_k: int) -> ParsedAnswer:
    """Parse the final answer from one assistant turn (the last one of a trajectory)."""
    body, reason, detail = _answer_body(text)
    if body is None:
        return _invalid(reason, detail)
    match = _BOXED_LIST.search(body)
    if match is None:
        return _invalid(InvalidReason.BAD_FORMAT, "\\boxed{...} does not hold a [list]")
    indices, detail = _parse_int_list(match.group("body"))
    if indices is None:
        return _invalid(InvalidReason.BAD_FORMAT, detail)
    out_of_range = sum(1 for i in indices if not 1 <= i <= n_candidates)
    duplicates = len(indices) - len(set(indices))
    if out_of_range:
        return _invalid(InvalidReason.OUT_OF_RANGE, f"{out_of_range} index(es) outside 1..{n_candidates}",
                        indices, out_of_range, duplicates)
    if duplicates:
        return _invalid(InvalidReason.DUPLICATE, f"{duplicates} repeated index(es)", indices, 0, duplicates)
    if len(indices) != top_k:
        return _invalid(InvalidReason.WRONG_LENGTH, f"{len(indices)} indices, expected {top_k}", indices)
    return ParsedAnswer(indices, None, "", indices)


def parse_tool_calls(text: str) -> ToolCallParse:
    """Every ``<tool_call>`` block outside ``<think>``; malformed ones become errors, never exceptions.

    A well-formed call is a JSON object with a string ``name`` and an object ``arguments`` (a missing
    ``arguments`` means no arguments, as TRL's Qwen3 parser and the Qwen3 template allow). An opening
    tag without its closing tag, or a closing tag without an opening one, is an error too, but not a
    call (a turn cut off in the middle of a call did not make one).
    """
    if not isinstance(text, str):
        return ToolCallParse()
    visible = strip_thinking(text)
    bodies, outside, unclosed = _split_blocks(visible, CALL_OPEN, CALL_CLOSE)
    calls: list[ToolCall] = []
    errors: list[str] = []
    for body in bodies:
        call = _decode_call(body)
        if isinstance(call, str):
            errors.append(call)
        else:
            calls.append(call)
    malformed = len(errors)
    # The text with the closed blocks cut out (joined pieces may form a tag, as with a regex substitution).
    leftover = "".join(outside) + (visible[unclosed:] if unclosed >= 0 else "")
    unmatched = leftover.count(CALL_OPEN) + leftover.count(CALL_CLOSE)
    errors.extend(["unbalanced <tool_call> tag"] * unmatched)
    return ToolCallParse(tuple(calls), tuple(errors), malformed)


def _decode_call(body: str) -> ToolCall | str:
    """A ToolCall, or an error message naming what is wrong with the JSON."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return f"tool call is not valid JSON: {type(exc).__name__}"
    if not isinstance(obj, dict):
        return "tool call JSON is not an object"
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return "tool call has no string 'name'"
    arguments = obj.get("arguments", {})
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return f"tool call '{name}': 'arguments' is not an object"
    return ToolCall(name=name, arguments=arguments)


def check_call_against_schema(call: ToolCall, schemas: Mapping[str, Mapping[str, Any]]) -> str | None:
    """None if ``call`` names a known tool with arguments its JSON schema accepts, else an error.

    ``schemas`` maps tool name -> its JSON schema, either ``{"name", "description", "parameters"}`` or
    the chat-template form ``{"type": "function", "function": {...}}``.
    Only names, required keys, unknown keys and JSON types are checked; values are the tool's business.
    """
    schema = schemas.get(call.name)
    if schema is None:
        return f"unknown tool '{call.name}'"
    schema = schema.get("function", schema)  # chat-template form {"type": "function", "function": {...}}
    params = schema.get("parameters") or {}
    properties = params.get("properties") or {}
    missing = [key for key in params.get("required", []) if key not in call.arguments]
    if missing:
        return f"tool '{call.name}': missing argument(s) {missing}"
    unknown = [key for key in call.arguments if key not in properties]
    if unknown:
        return f"tool '{call.name}': unknown argument(s) {unknown}"
    for key, value in call.arguments.items():
        if not _json_type_ok(value, properties[key].get("type")):
            return f"tool '{call.name}': argument '{key}' should be {properties[key].get('type')}"
    return None


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "object": (dict,), "array": (list,), "null": (type(None),),
}


def _json_type_ok(value: Any, expected: Any) -> bool:
    if expected is None:
        return True
    options = expected if isinstance(expected, list) else [expected]
    for option in options:
        types = _JSON_TYPES.get(option)
        if types is None:
            return True  # a type we do not know how to check is not held against the model
        if isinstance(value, bool) and option in ("integer", "number"):
            continue
        if isinstance(value, types):
            return True
    return False


@dataclass(frozen=True)
class TrajectoryVerdict:
    """The parsed final answer plus the trajectory-level checks that can override it."""

    answer: ParsedAnswer
    n_tool_calls: int
    n_bad_tool_calls: int
    truncated: bool
    tool_call_errors: tuple[str, ...] = field(default=())

    @property
    def valid(self) -> bool:
        return self.answer.valid

    @property
    def reason(self) -> InvalidReason | None:
        return self.answer.reason

    @property
    def ranking(self) -> tuple[int, ...] | None:
        return self.answer.ranking


def judge_trajectory(turns: Sequence[str], n_candidates: int, top_k: int, max_tool_calls: int,
                     schemas: Mapping[str, Mapping[str, Any]] | None = None,
                     truncated: bool = False) -> TrajectoryVerdict:
    """Verdict on a whole trajectory from the raw text of its assistant turns, in order.

    Tool calls are counted over all turns; the answer is read from the last turn only (a turn that
    calls tools is followed by tool results and another turn, so an answer written beside a tool call
    is superseded). ``schemas`` (tool name -> function schema) makes unknown tools and wrong
    arguments bad tool calls; with ``schemas=None`` (the reasoning-only variant) any tool call at all
    is a bad tool call. ``truncated`` says a token limit ended the last turn: that turn was never
    acted on, so its half-written calls are neither counted nor judged.
    """
    turns = [t if isinstance(t, str) else "" for t in (turns or [])]
    answer = parse_answer(turns[-1], n_candidates, top_k) if turns else _invalid(InvalidReason.NO_ANSWER, "no turns")
    n_calls, errors = 0, []
    for turn in (turns[:-1] if truncated else turns):
        parsed = parse_tool_calls(turn)
        n_calls += parsed.n_attempted
        errors.extend(parsed.errors)
        for call in parsed.calls:
            problem = ("tools are not available in this variant" if schemas is None
                       else check_call_against_schema(call, schemas))
            if problem:
                errors.append(problem)
    overriding = None
    if n_calls > max_tool_calls:
        overriding = (InvalidReason.TOO_MANY_TOOL_CALLS, f"{n_calls} tool calls, budget {max_tool_calls}")
    elif errors:
        overriding = (InvalidReason.BAD_TOOL_CALL, errors[0])
    elif truncated:
        overriding = (InvalidReason.TRUNCATED, "a token limit ended the final turn")
    if overriding is not None:
        answer = _invalid(overriding[0], overriding[1], answer.raw_indices, answer.n_out_of_range, answer.n_duplicates)
    return TrajectoryVerdict(answer, n_calls, len(errors), truncated, tuple(errors))


def with_reason(verdict: TrajectoryVerdict, reason: InvalidReason, detail: str) -> TrajectoryVerdict:
    """The same verdict made invalid for ``reason`` (diagnostics of the answer are kept)."""
    a = verdict.answer
    answer = _invalid(reason, detail, a.raw_indices, a.n_out_of_range, a.n_duplicates)
    return TrajectoryVerdict(answer, verdict.n_tool_calls, verdict.n_bad_tool_calls, verdict.truncated,
                             verdict.tool_call_errors)


def format_answer(ranking: Sequence[int]) -> str:
    """The canonical answer text for a ranking (used by the scripted teacher and in tests)."""
    return f"{ANSWER_OPEN}\\boxed{{[{', '.join(str(int(i)) for i in ranking)}]}}{ANSWER_CLOSE}"


def format_tool_call(name: str, arguments: Mapping[str, Any] | None = None) -> str:
    """A tool call exactly as the Qwen3 chat template renders one (newlines inside the tags)."""
    payload = json.dumps({"name": name, "arguments": dict(arguments or {})}, ensure_ascii=False)
    return f"{CALL_OPEN}\n{payload}\n{CALL_CLOSE}"


# ------------------------------------------------------------------------------------------------
# Pairwise answers (stage 2, PPR, PAPER.md 1.5 [N]): ``<answer>\boxed{A}</answer>`` or ``\boxed{B}``
# ------------------------------------------------------------------------------------------------

CHOICE_LETTERS = ("A", "B")
# Reasons that belong to the trajectory (tool calls, budget, token limits) rather than to the answer
# text; they take precedence over the letter exactly as over a ranking (REASON_PRECEDENCE).
TRAJECTORY_REASONS = (InvalidReason.TOO_MANY_TOOL_CALLS, InvalidReason.BAD_TOOL_CALL, InvalidReason.TRUNCATED)


@dataclass(frozen=True)
class ChoiceVerdict:
    """The verdict on a pairwise (A/B) trajectory; ``letter`` is set only when it is valid."""

    letter: str | None
    reason: InvalidReason | None
    detail: str = ""
    n_tool_calls: int = 0

    @property
    def valid(self) -> bool:
        return self.reason is None


def parse_choice(text: str, letters: Sequence[str] = CHOICE_LETTERS) -> ChoiceVerdict:
    """The letter of one final turn: exactly one closed answer block holding exactly one
    ``\\boxed{X}`` with X one of ``letters`` (upper case). Whitespace inside the braces is tolerated;
    lower case, ``\\boxed{[A]}``, ``\\boxed{A, B}`` or any other content is ``bad_format`` [G]: the
    prompt asks for the capital letter, and nothing is repaired (as for rankings)."""
    body, reason, detail = _answer_body(text)
    if body is None:
        return ChoiceVerdict(None, reason, detail)
    letter = _boxed_letter(body)
    if letter is None or letter not in letters:
        return ChoiceVerdict(None, InvalidReason.BAD_FORMAT, f"\\boxed{{...}} does not hold one of {list(letters)}")
    return ChoiceVerdict(letter, None)


def _boxed_letter(body: str) -> str | None:
    """The stripped text between the one ``\\boxed{`` of ``body`` and the next brace when that brace
    closes it; None when there is no such brace or it opens another. (A lazy regex for this
    backtracked quadratically over long runs of spaces.)"""
    start = body.find(BOXED) + len(BOXED)
    brace = _BRACE.search(body, start)
    if brace is None or brace.group() != "}":
        return None
    return body[start:brace.start()].strip()


def choice_verdict(turns: Sequence[str], trajectory_reason: InvalidReason | str | None = None,
                   n_tool_calls: int = 0) -> ChoiceVerdict:
    """The pairwise verdict of a trajectory whose list-wise verdict (same turns, same environment,
    :meth:`recrepro.agent.env.Episode.finish`) gave ``trajectory_reason``: a trajectory-level reason
    (too many tool calls, a bad tool call, truncation) wins; otherwise the last turn's letter decides.
    Used by PPR training and the preference-accuracy evaluation, so both judge alike."""
    reason = InvalidReason(trajectory_reason) if isinstance(trajectory_reason, str) else trajectory_reason
    if reason in TRAJECTORY_REASONS:
        return ChoiceVerdict(None, reason, "trajectory-level failure", n_tool_calls)
    turns = [t if isinstance(t, str) else "" for t in (turns or [])]
    if not turns:
        return ChoiceVerdict(None, InvalidReason.NO_ANSWER, "no turns", n_tool_calls)
    parsed = parse_choice(turns[-1])
    return ChoiceVerdict(parsed.letter, parsed.reason, parsed.detail, n_tool_calls)


def judge_choice(turns: Sequence[str], max_tool_calls: int, schemas: Mapping[str, Mapping[str, Any]] | None = None,
                 truncated: bool = False) -> ChoiceVerdict:
    """:func:`judge_trajectory`'s tool and budget rules, then the letter (text-only; no environment)."""
    trajectory = judge_trajectory(turns, 2, 1, max_tool_calls, schemas, truncated)
    return choice_verdict(turns, trajectory.reason, trajectory.n_tool_calls)


def format_choice(letter: str) -> str:
    """The canonical pairwise answer text (used by the scripted teacher and in tests)."""
    return f"{ANSWER_OPEN}\\boxed{{{letter}}}{ANSWER_CLOSE}"
