"""The pairwise A/B question of stage 2 (PPR, PAPER.md 1.5): its prompt texts and messages.

The texts live in ``recrepro/prompts/ppr_{more,less}_v1.txt``: a system text, a ``=== question ===``
line, then the question. The warm-start teacher (:mod:`recrepro.agent.warmstart`) and stage 2
(:mod:`recrepro.rl.ppr`) build their prompts here, so both ask exactly the same question.
"""

from __future__ import annotations

import hashlib
from string import Template
from typing import Sequence

from recrepro.agent.prompt import PROMPT_DIR, ItemView, describe_item, history_affinity

PROMPT_VERSION = "v1"
DIRECTIONS = ("more", "less")
QUESTION_MARK = "=== question ==="  # separates the system text from the question line in the prompt files


def _prompt_parts(direction: str) -> tuple[str, str]:
    """(system text template, question line) of ``recrepro/prompts/ppr_<direction>_v1.txt``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    path = PROMPT_DIR / f"ppr_{direction}_{PROMPT_VERSION}.txt"
    text = path.read_text(encoding="utf-8")
    if text.count(QUESTION_MARK) != 1:
        raise ValueError(f"{path}: expected one '{QUESTION_MARK}' line between the system text and the question")
    system, question = text.split(QUESTION_MARK)
    return system.strip(), question.strip()


def ppr_prompt_fingerprint() -> str:
    digest = hashlib.sha256(PROMPT_VERSION.encode())
    for direction in DIRECTIONS:
        digest.update((PROMPT_DIR / f"ppr_{direction}_{PROMPT_VERSION}.txt").read_bytes())
    return digest.hexdigest()[:16]


def _item_line(letter: str, item: ItemView, history: Sequence[ItemView], show_affinity: bool) -> str:
    line = f"{letter}. {describe_item(item)}"
    return f"{line}; category affinity with the history: {history_affinity(history, item)}" if show_affinity else line


def ppr_messages(history: Sequence[ItemView], item_a: ItemView, item_b: ItemView, direction: str,
                 max_tool_calls: int, show_affinity: bool = False) -> list[dict[str, str]]:
    """System and user messages of one pairwise question (history oldest first, as the agent prompt).

    ``show_affinity`` (``agent.affinity_order`` > 0) writes each item's history affinity beside it, the
    pairwise form of the ranking prompt's affinity line."""
    system, question = _prompt_parts(direction)
    lines = [f"The user's history, oldest first ({len(history)} items):"]
    lines += [f"{i}. {describe_item(item)}" for i, item in enumerate(history, start=1)]
    lines += ["", "Items:", _item_line("A", item_a, history, show_affinity),
              _item_line("B", item_b, history, show_affinity), "", question]
    return [{"role": "system", "content": Template(system).substitute(max_tool_calls=max_tool_calls)},
            {"role": "user", "content": "\n".join(lines)}]
