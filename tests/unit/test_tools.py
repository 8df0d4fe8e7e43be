"""The seven tools on a hand-made dataset: exact texts, schemas, bad arguments, bounds, determinism.

Every expected number was checked by hand against ``tests/unit/tools_data.py`` (instance: user u1 at
day 10; candidates [1] Jumanji, [2] Toy Story (the target), [3] Sabrina, [4] Balto, [5] Ace Ventura).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recrepro.tools import TOOL_NAMES, ToolKit, ToolMethods, tool_schemas
from recrepro.tools import impl
from recrepro.tools.render import bound, fmt_ago, wrap_entries
from tests.unit.tools_data import (CALLS, INSTANCE_TIME, TEST_TOOLS, handmade_instance, handmade_kit,
                                   handmade_outputs, handmade_tables)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kit() -> ToolKit:
    return handmade_kit()


@pytest.fixture
def tools(kit):
    return kit.bind(handmade_instance())


# ---------------------------------------------------------------------------------- exact outputs

EXPECTED = {
    "get_user_profile": """\
User profile (llm v1; written from the user's 5 interaction(s) before now):
Likes crime dramas and thrillers; rates generously.""",
    "item_info_search": """\
"Heat (1995)"
Categories: Movies, Action, Thriller
Price: 12.50 (band 10.00-25.00)
Before now: 2 interaction(s), 2 in the last 30 days; mean rating 2.50 over 2
Catalogue average rating: 4.4 from 120 ratings (store metadata, not dated)
In this user's history: rated 1 on 2001-09-18""",
    "candidates_analyze": """\
5 candidates by category (* = category also in the user's history):
Animation (2): [2] [4]
Comedy* (2): [2] [3]
Family* (2): [1] [4]
Adventure (1): [1]
Romance (1): [3]
No category (1): [5]
Price bands: <=10.00: [4]; >100.00: [1]; unknown: 3
Sharing a category with the history: 4 of 5; sharing none: [5]
Titles: [1] "Jumanji (1995)"; [2] "Toy Story (1995)"; [3] "Sabrina (1995)"; [4] "Balto (1995)"; \
[5] "Ace Ventura: Pet Detective (1994)\"""",
    "get_session_behavior": """\
Most recent session: 2 item(s), 2001-09-18, ended 21 hours before now (sessions split at gaps over 24 hours):
- "Heat (1995)" (Action, Thriller), rated 1
- "Seven (1995)" (Thriller, Crime), rated 4
Session categories: Thriller 2, Action 1, Crime 1
Earlier history: 3 item(s) in 2 session(s), 2001-09-10 to 2001-09-14; categories: Drama 2, Comedy 1, Crime 1, Family 1
Shift: new in the recent session: Thriller, Action; continued: Crime; absent from it: Drama, Comedy, Family""",
    "get_rating_behavior": """\
Ratings of the 5 history item(s), most recent first (high >= 4, low <= 2); mean 3.40:
High (3): "Seven (1995)" 4; "Nixon (1995)" 4; "Casino (1995)" 5
Neutral (1): "Babe (1995)" 3
Low (1): "Heat (1995)" 1
Categories rated high: Crime 2, Drama 2, Thriller 1; rated low: Action 1, Thriller 1""",
    "get_similar_items": """\
Items most similar to "Heat (1995)" in the SASRec embedding space (cosine similarity):
1. "Seven (1995)" 0.80 (in the user's history)
2. "Casino (1995)" 0.60 (in the user's history)
3. "Nixon (1995)" 0.60 (in the user's history)
No candidate among them.""",
    "get_similar_users": """\
Users most similar to this user (SASRec representations of their histories as of 2001-09-18; cosine similarity), \
with their most recent items before now, newest first:
1. similarity 0.93: [2] "Toy Story (1995)" (2001-09-17); "Seven (1995)" (2001-09-12)
2. similarity 0.73: [4] "Balto (1995)" (2001-09-16); [3] "Sabrina (1995)" (2001-09-15)
Candidates among their recent items: [2] (1 user), [3] (1 user), [4] (1 user)""",
}
ARGS = {"item_info_search": {"item_name": "Heat (1995)"}, "get_similar_items": {"item_title": "Heat (1995)"}}


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_exact_output(tools, name):
    result = tools.call(name, ARGS.get(name, {}))
    assert result.ok and result.error_kind is None
    assert result.text == EXPECTED[name]
    assert result.latency_s > 0


def test_methods_return_the_same_text(tools):
    assert tools.item_info_search(item_name="Heat (1995)") == EXPECTED["item_info_search"]
    assert tools.item_info_search("Heat (1995)") == EXPECTED["item_info_search"]  # positional works too
    assert tools.get_similar_users() == EXPECTED["get_similar_users"]
    assert tools.n_calls == 3 and tools.n_errors == 0


def test_closest_match_is_announced_and_candidate_marked(tools):
    assert tools.item_info_search(item_name="toy story") == """\
Closest match for "toy story":
[2] "Toy Story (1995)"
Categories: Movies, Animation, Comedy
Price: unknown
Before now: 1 interaction(s), 1 in the last 30 days; mean rating 5.00 over 1
Catalogue average rating: 4.8 from 300 ratings (store metadata, not dated)"""


def test_item_unknown_to_the_model(tools):
    assert tools.get_similar_items(item_title="[5]") == (
        '[5] "Ace Ventura: Pet Detective (1994)" is not known to the SASRec model (no interactions in its '
        "training period), so no similar items can be listed.")
    assert tools.n_errors == 0  # a cold item is not the agent's mistake


def test_without_space_or_profiles():
    tools = handmade_kit(with_space=False, with_profile=False).bind(handmade_instance())
    assert tools.get_user_profile() == "No profile has been written for this user at this time."
    unavailable = ("The collaborative model (SASRec) is not available for this dataset (notebook 02 has not "
                   "exported it), so this tool has no answer.")
    assert tools.get_similar_users() == unavailable
    assert tools.get_similar_items(item_title="Heat (1995)") == unavailable
    assert tools.n_errors == 0


def test_user_without_known_history():
    kit = handmade_kit()
    instance = dataclasses.replace(handmade_instance(), history_items=("i10",), history_times=(INSTANCE_TIME - 5,),
                                   history_ratings=(3.0,))
    assert kit.bind(instance).get_similar_users() == (
        "None of this user's history items is known to the SASRec model, so similar users cannot be found.")


@pytest.mark.parametrize("name, expected", [
    ("Heat (1995)", "i1"), ("heat (1995)", "i1"), ("HEAT 1995", "i1"), ("  'Heat (1995)' ", "i1"),
    ("[2]", "i3"), ("#3", "i8"), ("candidate 4", "i9"), ('[2] "Toy Story (1995)" (Animation, Comedy)', "i3"),
    ("2", "i3"), ("Seven", "i5"), ("Toy Stroy (1995)", "i3"), ("Ace Ventura", "i10"),
    ("Jumanji (1995) (Adventure, Family)", "i6"),
])
def test_name_resolution(kit, tools, name, expected):
    found = tools.resolve(name)
    assert kit.item_ids[found.row] == expected


def test_duplicate_titles_prefer_the_instance_items():
    log, items = handmade_tables()
    items.loc[items["item_id"] == "i2", "title"] = "Balto (1995)"  # i2 (history) and i9 (candidate) now clash
    kit = ToolKit(log, items, TEST_TOOLS, 10)
    tools = kit.bind(handmade_instance())
    assert kit.item_ids[tools.resolve("Balto (1995)").row] == "i9"


# ---------------------------------------------------------------------------------- bad arguments

BAD = [
    ("item_info_search", {}, "missing_argument", 'Error: item_info_search needs the argument "item_name" (string).'),
    ("get_similar_items", {"item_name": "Heat"}, "unexpected_argument",
     "Error: get_similar_items got unexpected argument(s) 'item_name'; it takes only \"item_title\"."),
    ("item_info_search", {"item_name": "Heat", "k": 3}, "unexpected_argument",
     "Error: item_info_search got unexpected argument(s) 'k'; it takes only \"item_name\"."),
    ("get_user_profile", {"user": "u1"}, "unexpected_argument",
     "Error: get_user_profile got unexpected argument(s) 'user'; it takes no arguments; call it with {}."),
    ("item_info_search", {"item_name": 3}, "wrong_type", 'Error: "item_name" must be a string, got integer.'),
    ("item_info_search", {"item_name": 2.5}, "wrong_type", 'Error: "item_name" must be a string, got number.'),
    ("item_info_search", {"item_name": True}, "wrong_type", 'Error: "item_name" must be a string, got boolean.'),
    ("item_info_search", {"item_name": None}, "wrong_type", 'Error: "item_name" must be a string, got null.'),
    ("get_similar_items", {"item_title": ["Heat"]}, "wrong_type", 'Error: "item_title" must be a string, got array.'),
    ("get_similar_items", {"item_title": {"t": 1}}, "wrong_type", 'Error: "item_title" must be a string, got object.'),
    ("item_info_search", {"item_name": ""}, "empty_argument",
     'Error: "item_name" is empty; pass an item title from the history or the candidate list.'),
    ("get_similar_items", {"item_title": " \n "}, "empty_argument",
     'Error: "item_title" is empty; pass an item title from the history or the candidate list.'),
    ("item_info_search", {"item_name": "?!"}, "empty_argument",
     "Error: the item name has no letters or digits; pass an item title from the history or the candidate list."),
    ("item_info_search", {"item_name": "x" * 1001}, "too_long",
     "Error: the item name is 1001 characters long; pass a title of at most 1000 characters."),
    ("item_info_search", {"item_name": "Quantum Mechanics"}, "unknown_item",
     'Error: no item titled "Quantum Mechanics" was found. Closest titles here: "Casino (1995)"; '
     '[5] "Ace Ventura: Pet Detective (1994)"; [1] "Jumanji (1995)". Use a title from the history or the candidate '
     "list, or a candidate number such as [3]."),
    ("item_info_search", {"item_name": "Heat Casino"}, "unknown_item",  # shared words rank suggestions first
     'Error: no item titled "Heat Casino" was found. Closest titles here: "Casino (1995)"; "Heat (1995)"; '
     '[3] "Sabrina (1995)". Use a title from the history or the candidate list, or a candidate number such as [3].'),
    ("get_similar_items", {"item_title": "[9]"}, "unknown_item", None),  # only 5 candidates
    ("item_info_search", ["Heat"], "bad_arguments", "Error: the arguments of item_info_search must be a JSON object, "
                                                   "got array."),
    ("item_info_search", "Heat", "bad_arguments", "Error: the arguments of item_info_search must be a JSON object, "
                                                 "got string."),
    ("get_weather", {}, "unknown_tool", 'Error: there is no tool named "get_weather". Tools: get_user_profile, '
     "item_info_search, candidates_analyze, get_session_behavior, get_rating_behavior, get_similar_items, "
     "get_similar_users."),
    (None, {}, "unknown_tool", None),
]


@pytest.mark.parametrize("name, arguments, kind, text", BAD)
def test_bad_arguments_never_raise_and_are_counted(tools, name, arguments, kind, text):
    result = tools.call(name, arguments)
    assert not result.ok and result.error_kind == kind
    if text is not None:
        assert result.text == text
    assert tools.n_errors == 1 and tools.error_counts == {kind: 1}


def test_bad_arguments_through_methods(tools):
    # TRL calls tools as method(**arguments): wrong calls must still come back as text, and be counted.
    assert tools.item_info_search().startswith("Error: item_info_search needs")
    assert tools.item_info_search(item_name="Heat", extra=1).startswith("Error: item_info_search got unexpected")
    assert tools.get_similar_items(item_title=7).startswith('Error: "item_title" must be a string')
    assert tools.get_user_profile("u1").startswith("Error: get_user_profile got unexpected argument(s) "
                                                   "'positional argument 1'")
    assert tools.item_info_search("Heat", "again").startswith("Error: item_info_search got unexpected")
    assert tools.n_calls == 5 and tools.n_errors == 5
    assert tools.error_counts == {"missing_argument": 1, "unexpected_argument": 3, "wrong_type": 1}


def test_internal_failure_is_contained(tools, monkeypatch):
    def broken(_tools):
        raise KeyError("bug")

    from recrepro.tools import registry

    spec = registry.TOOLS["candidates_analyze"]
    monkeypatch.setitem(registry.TOOLS, "candidates_analyze", dataclasses.replace(spec, implementation=broken))
    result = tools.call("candidates_analyze", {})
    assert (result.ok, result.error_kind) == (False, "internal")
    assert result.text == "Error: the tool failed internally (KeyError)."


def test_bind_rejects_a_history_at_or_after_the_target_time(kit):
    bad = dataclasses.replace(handmade_instance(), history_times=(1, 2, 3, 4, INSTANCE_TIME))
    with pytest.raises(ValueError, match="at or after the target time"):
        kit.bind(bad)
    with pytest.raises(ValueError, match="not in the catalogue"):
        kit.bind(dataclasses.replace(handmade_instance(), candidates=("i1", "nope")))


# ---------------------------------------------------------------------------------- schemas


def test_schemas_follow_the_paper_names_and_arguments():
    schemas = tool_schemas()
    assert [s["function"]["name"] for s in schemas] == [
        "get_user_profile", "item_info_search", "candidates_analyze", "get_session_behavior",
        "get_rating_behavior", "get_similar_items", "get_similar_users"]
    args = {s["function"]["name"]: s["function"]["parameters"] for s in schemas}
    assert args["item_info_search"] == {"type": "object", "required": ["item_name"], "properties": {
        "item_name": {"type": "string", "description": args["item_info_search"]["properties"]["item_name"]["description"]}}}
    assert args["get_similar_items"]["required"] == ["item_title"]
    assert args["get_user_profile"] == {"type": "object", "properties": {}}
    for schema in schemas:
        assert schema["type"] == "function" and schema["function"]["description"]
        json.dumps(schema)  # plain JSON


def test_methods_give_transformers_the_same_schemas(tools):
    from transformers.utils import get_json_schema

    for schema in tool_schemas():
        name = schema["function"]["name"]
        for func in (getattr(ToolMethods, name), getattr(tools, name)):  # as TRL passes them: bound methods
            generated = get_json_schema(func)
            assert generated == schema
    public = sorted(n for n in dir(ToolMethods) if not n.startswith("_"))
    assert public == sorted(TOOL_NAMES)


def test_schemas_render_like_the_methods(tools):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                        unk_token="<unk>")
    # The tools part of a Qwen3-style template: one JSON schema per line.
    tokenizer.chat_template = ("{%- for tool in tools %}{{ tool | tojson }}\n{%- endfor %}"
                               "{%- for m in messages %}{{ m.content }}{%- endfor %}")
    messages = [{"role": "user", "content": "rank"}]
    by_schema = tokenizer.apply_chat_template(messages, tools=tool_schemas(), tokenize=False)
    by_method = tokenizer.apply_chat_template(messages, tools=[getattr(tools, n) for n in TOOL_NAMES], tokenize=False)
    assert by_schema == by_method and all(f'"name": "{name}"' in by_schema for name in TOOL_NAMES)


# ---------------------------------------------------------------------------------- bounds, determinism


def test_bound_helper():
    text = "\n".join(f"line {i}" for i in range(10))
    assert bound(text, 24, 1600) == text
    cut = bound(text, 4, 1600)
    assert cut.split("\n") == ["line 0", "line 1", "line 2", "[... 7 more line(s) cut]"]
    cut = bound("x" * 500, 4, 100)
    assert len(cut) <= 100 and cut.endswith("cut]")
    assert len(bound(text, 24, 30)) <= 30


@pytest.mark.parametrize("max_lines, max_chars", [(3, 120), (5, 200), (24, 1600)])
def test_every_output_respects_the_bounds(max_lines, max_chars):
    config = dataclasses.replace(TEST_TOOLS, max_lines=max_lines, max_chars=max_chars)
    tools = handmade_kit(config).bind(handmade_instance())
    for name, arguments in CALLS + [("item_info_search", {"item_name": "no such thing at all"}),
                                    ("nope", {}), ("item_info_search", {"item_name": 5})]:
        text = tools.call(name, arguments).text
        assert len(text) <= max_chars and len(text.split("\n")) <= max_lines, (name, text)


def test_wrap_and_ago_helpers():
    assert wrap_entries("H: ", ["aaaa", "bbbb", "cccc"], width=12) == ["H: aaaa;", "  bbbb; cccc"]
    assert wrap_entries("H: ", ["aaaa", "bbbb", "cccc"], width=11) == ["H: aaaa;", "  bbbb;", "  cccc"]
    assert [fmt_ago(s) for s in (5, 120, 7200, 86400 * 3, 86400 * 30)] == [
        "1 minute", "2 minutes", "2 hours", "3 days", "4 weeks"]


def test_same_output_in_other_processes():
    expected = handmade_outputs()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-m", "tests.unit.tools_data"], cwd=REPO, env=env,
                             capture_output=True, text=True, check=True)
        assert json.loads(out.stdout) == expected


def test_rebinding_gives_identical_texts(kit):
    first = [kit.bind(handmade_instance()).call(n, a).text for n, a in CALLS]
    kit.prepare([handmade_instance()])  # cached neighbours must not change anything
    assert [kit.bind(handmade_instance()).call(n, a).text for n, a in CALLS] == first


def test_category_lines_fold_beyond_the_limit(monkeypatch, tools):
    monkeypatch.setattr(impl, "MAX_CATEGORY_LINES", 2)
    text = tools.candidates_analyze()
    assert "Other categories (3): Adventure [1]; Romance [3]; Family* [1] [4]" not in text  # order is by count
    assert "Other categories (3): Family* [1] [4]; Adventure [1]; Romance [3]" in text


def test_an_environment_class_exposes_exactly_the_tools(kit):
    """How the next stage's TRL environment binds the tools: inherit ToolMethods, forward _call_tool."""
    import inspect

    class Env(ToolMethods):
        def reset(self, **row):
            self.tools = kit.bind(row)
            return ""

        def _call_tool(self, name, arguments):
            return self.tools.call(name, arguments)

    env = Env()
    env.reset(**dataclasses.asdict(handmade_instance()))
    # TRL's discovery: public functions of the class other than reset / get_reward.
    found = [n for n, _ in inspect.getmembers(type(env), predicate=inspect.isfunction)
             if n not in ("reset", "get_reward") and not n.startswith("_")]
    assert sorted(found) == sorted(TOOL_NAMES)
    assert env.get_similar_users() == EXPECTED["get_similar_users"]
    assert env.item_info_search(item_name=None).startswith("Error:") and env.tools.n_errors == 1


# ---------------------------------------------------------------------------------- labelled candidates (PPR)

PAIR_EXPECTED = {  # the handmade instance bound to [2] Toy Story and [3] Sabrina, shown as A and B
    "candidates_analyze": """\
2 candidates by category (* = category also in the user's history):
Comedy* (2): [A] [B]
Animation (1): [A]
Romance (1): [B]
Price bands: unknown: 2
Sharing a category with the history: 2 of 2
Titles: [A] "Toy Story (1995)"; [B] "Sabrina (1995)\"""",
    "get_similar_users": """\
Users most similar to this user (SASRec representations of their histories as of 2001-09-18; cosine similarity), \
with their most recent items before now, newest first:
1. similarity 0.93: [A] "Toy Story (1995)" (2001-09-17); "Seven (1995)" (2001-09-12)
2. similarity 0.73: "Balto (1995)" (2001-09-16); [B] "Sabrina (1995)" (2001-09-15)
Candidates among their recent items: [A] (1 user), [B] (1 user)""",
}


@pytest.fixture
def pair_tools(kit):
    """Bound the way PPR binds its environment: a row whose two candidates are labelled A and B."""
    return kit.bind({**dataclasses.asdict(handmade_instance()), "candidates": ["i3", "i8"],
                     "candidate_labels": ["A", "B"]})


@pytest.mark.parametrize("name", sorted(PAIR_EXPECTED))
def test_labelled_candidates_are_tagged_by_their_labels(pair_tools, name):
    text = pair_tools.call(name, {}).text
    assert text == PAIR_EXPECTED[name]
    assert "[1]" not in text and "[2]" not in text


def test_every_tool_uses_the_labels_and_resolves_them(kit, pair_tools):
    texts = [pair_tools.call(n, a).text for n, a in CALLS if a.get("item_title") != "[5]"]  # no [5] here
    assert not any(f"[{k}]" in t for t in texts for k in range(1, 6))  # no candidate number anywhere
    assert sum(t.count("[A]") + t.count("[B]") for t in texts) > 10
    for name, expected in (("[B]", "i8"), ("A", "i3"), ('[A] "Toy Story (1995)"', "i3"), ("[2]", "i8"),
                           ("Sabrina", "i8"), ("B", "i8")):
        assert kit.item_ids[pair_tools.resolve(name).row] == expected
    error = pair_tools.call("item_info_search", {"item_name": "zzzz qqq"})
    assert error.error_kind == "unknown_item" and error.text.endswith("or a candidate label such as [A].")
    with pytest.raises(ValueError, match="candidate_labels"):
        kit.bind({**dataclasses.asdict(handmade_instance()), "candidate_labels": ["A", "B"]})  # 5 candidates


def test_numbered_candidates_are_unchanged(tools):
    assert tools.tags[1:6] == ("[1]", "[2]", "[3]", "[4]", "[5]") and tools.candidate_name(3) == "3"
    text = tools.candidates_analyze()
    assert text == EXPECTED["candidates_analyze"] and "[A]" not in text


def test_candidate_titles_shrink_to_fit_instead_of_being_cut_off():
    assert impl.title_limit([10, 12, 20], 100) == 48  # everything fits whole
    assert impl.title_limit([10, 40, 60], 50) == 20  # 10 + 20 + 20
    assert impl.title_limit([60, 60, 60], 90) == 30
    assert impl.title_limit([60, 60, 60], 10) == impl.MIN_LIST_TITLE_CHARS
    config = dataclasses.replace(TEST_TOOLS, max_chars=460)  # the full answer has 440 characters
    text = handmade_kit(config).bind(handmade_instance()).candidates_analyze()
    assert len(text) <= 460 and "cut]" not in text  # only the longest title gave way
    assert text.endswith('[3] "Sabrina (1995)"; [4] "Balto (1995)"; [5] "Ace Ventura: Pet..."')


# ---------------------------------------------------------------------------------- popularity line [G]

def test_popularity_line_orders_candidates_by_interactions_strictly_before_now():
    # Counts before the instance time: i5 2, i1 2, i10 1, i3 1 (its interaction AT the instance time is
    # the target and must not count; counted, i3 would come second), i8 1. Ties keep candidate order.
    kit = handmade_kit(dataclasses.replace(TEST_TOOLS, popularity_order=10))
    instance = dataclasses.replace(handmade_instance(), candidates=("i10", "i5", "i3", "i1", "i8"))
    text = kit.bind(instance).call("candidates_analyze", {}).text
    assert text.splitlines()[-1] == "Most popular before now, most interactions first: {[2, 4, 1, 3, 5]}"
    assert impl.popularity_order(kit.bind(instance)) == [2, 4, 1, 3, 5]
    top_two = handmade_kit(dataclasses.replace(TEST_TOOLS, popularity_order=2)).bind(instance)
    assert top_two.call("candidates_analyze", {}).text.splitlines()[-1].endswith("{[2, 4]}")
    # TEST_TOOLS leaves it at its default, off (the paper profile's setting).
    assert "Most popular" not in handmade_kit().bind(instance).call("candidates_analyze", {}).text
