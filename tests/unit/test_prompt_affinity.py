"""The category-affinity line of ``agent.affinity_order`` [G]: its formula on hand-computed cases, its place
in the user turn and the PPR items, the teacher that copies it, the config check, and that it cannot leak
the target (it reads the history and the candidates' categories only)."""

from __future__ import annotations

import dataclasses

import pytest

from recrepro.agent import pairwise
from recrepro.agent.parser import parse_answer
from recrepro.agent.prompt import (AgentInstance, ItemView, PromptSpec, affinity_line, affinity_ranking,
                                   history_affinity, profile_spec, user_prompt)
from recrepro.agent.teacher import ppr_teacher_letter, teacher_ranking, teacher_transcript
from recrepro.agent.warmstart import copy_sources
from recrepro.config import ConfigError, load_profile

HISTORY = (ItemView("h1", "Heat", ("Action", "Thriller")), ItemView("h2", "Se7en", ("Thriller", "Drama")),
           ItemView("h3", "Babe", ()))
# History counts: Action 1, Thriller 2, Drama 1.
CANDIDATES = (ItemView("c1", "Comedy only", ("Comedy",)),          # 0
              ItemView("c2", "Thriller comedy", ("Thriller", "Comedy")),  # 2
              ItemView("c3", "Action drama", ("Action", "Drama")),        # 2
              ItemView("c4", "Action thriller", ("Action", "Thriller")),  # 3
              ItemView("c5", "No labels", ()))                            # 0
INSTANCE = AgentInstance(sample_id=1, user_id="u", history=HISTORY, candidates=CANDIDATES, target_index=1)


def test_affinity_sums_the_history_counts_of_the_item_categories():
    assert [history_affinity(HISTORY, item) for item in CANDIDATES] == [0, 2, 2, 3, 0]
    assert history_affinity((), CANDIDATES[3]) == 0


def test_ranking_is_by_affinity_with_ties_in_candidate_order():
    assert affinity_ranking(INSTANCE) == [4, 2, 3, 1, 5]
    assert affinity_line(INSTANCE, 3) == "By category affinity with the history, highest first: {[4, 2, 3]}"


def test_the_line_ends_the_user_turn_only_when_switched_on():
    off = user_prompt(INSTANCE, PromptSpec(top_k=3))
    on = user_prompt(INSTANCE, PromptSpec(top_k=3, affinity_order=3))
    assert "affinity" not in off
    assert on == off + "\nBy category affinity with the history, highest first: {[4, 2, 3]}"


def test_the_user_turn_does_not_depend_on_the_target():
    spec = PromptSpec(top_k=3, affinity_order=5)
    texts = {user_prompt(dataclasses.replace(INSTANCE, target_index=t), spec) for t in (None, 1, 2, 3, 4, 5)}
    assert len(texts) == 1


def test_ppr_items_show_their_affinity_when_switched_on():
    plain = pairwise.ppr_messages(HISTORY, CANDIDATES[1], CANDIDATES[3], "more", 10)[1]["content"]
    shown = pairwise.ppr_messages(HISTORY, CANDIDATES[1], CANDIDATES[3], "more", 10, show_affinity=True)[1]["content"]
    assert "A. Thriller comedy (Thriller, Comedy)\nB. Action thriller (Action, Thriller)" in plain
    assert ("A. Thriller comedy (Thriller, Comedy); category affinity with the history: 2\n"
            "B. Action thriller (Action, Thriller); category affinity with the history: 3") in shown
    # The teacher picks by the same numbers the prompt shows: B (3 > 2) is MORE, A is LESS.
    assert ppr_teacher_letter(INSTANCE, CANDIDATES[1], CANDIDATES[3], "more") == "B"
    assert ppr_teacher_letter(INSTANCE, CANDIDATES[1], CANDIDATES[3], "less") == "A"


def test_reasoning_only_teacher_copies_the_line():
    spec = PromptSpec("r", top_k=3, affinity_order=3)
    transcript = teacher_transcript(INSTANCE, spec)
    assert parse_answer(transcript.turns[-1], top_k=3, n_candidates=5).ranking == (4, 2, 3)
    assert teacher_ranking(INSTANCE, 3) == [2, 3, 4]  # without the line: the v1 two-category rule


def test_copy_sources_take_every_ranking_example_when_the_line_is_shown():
    examples = [([i], [1]) for i in range(4)]  # two instances x (tirr, r)
    off = [PromptSpec("tirr"), PromptSpec("r")]
    on = [dataclasses.replace(s, affinity_order=10) for s in off]
    assert copy_sources(examples, 2, on, "mixed", 0) == examples
    chosen = copy_sources(examples, 2, off, "mixed", 0)
    assert chosen and all(e[0][0] % 2 == 0 for e in chosen)  # only tool-using popularity examples


def test_config_bounds_and_profiles():
    assert all(load_profile(name).agent.affinity_order == 0 for name in ("smoke", "cpu", "paper"))  # off
    assert profile_spec(load_profile("cpu", {"agent.affinity_order": 10}).agent, "r").affinity_order == 10
    with pytest.raises(ConfigError, match="agent.affinity_order"):
        load_profile("smoke", {"agent.affinity_order": 21})
    with pytest.raises(ConfigError, match="agent.affinity_order"):
        load_profile("smoke", {"agent.affinity_order": -1})
