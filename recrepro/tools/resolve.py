"""Turning the item name a model wrote into a catalogue row, deterministically.

Order of attempts ([G]; the paper does not say how names are matched, PAPER.md 1.3):

1. a candidate reference: ``[3]``, ``#3``, ``candidate 3`` or a leading ``[3]`` before a copied
   title (the prompt numbers candidates ``[1]`` .. ``[20]``);
2. the exact title, preferring the instance's candidates, then its history, then the catalogue
   (the catalogue's first row in item-id order when titles repeat);
3. the same after normalisation (case folded, punctuation removed, spaces collapsed);
4. the closest title among the candidates and the history only: a title that starts with the
   normalised name (at least 8 characters: a title cut short), else by word overlap (Dice
   coefficient of the word sets > 0.5; or every word of the shorter name shared, with at least two
   in common; or 80% of them, with at least three), else by character similarity (difflib ratio
   >= 0.75) for typos. Ties go to the higher score, then to the earlier candidate number, then to
   the more recent history item.

Nothing matches -> :class:`~recrepro.tools.base.ToolError` ``unknown_item`` with up to three
suggestions from the instance's items.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Sequence

from recrepro.tools.base import ToolError

MAX_NAME_CHARS = 1_000  # [G] longer arguments are rejected as "too_long" (no Amazon title is that long)
FUZZY_CHARS = 100  # character similarity is quadratic; compare at most this many characters
DICE_MIN = 0.5  # [G] strictly above: "the" alone does not match "The Rock (1996)"
RATIO_MIN = 0.75  # [G] difflib ratio for typo-level matches
PREFIX_MIN_CHARS = 8  # [G] a normalised name this long that starts a title selects it
OVERLAP_MIN = 0.8  # [G] share of the shorter name's words found in the title (with >= 3 in common)
N_SUGGESTIONS = 3

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_CANDIDATE_REF = re.compile(r"^\s*(?:\[\s*#?\s*(\d+)\s*\]|#\s*(\d+)|candidate\s*#?\s*(\d+))", re.IGNORECASE)
_BARE_NUMBER = re.compile(r"^\s*(\d+)\s*$")


def normalize(text: str) -> str:
    """Case-folded words of ``text`` joined by single spaces, punctuation dropped."""
    return " ".join(_NON_WORD.sub(" ", str(text).casefold()).split())


@dataclass(frozen=True)
class Resolution:
    row: int  # catalogue row of the item
    how: str  # "candidate", "exact", "normalized" or "closest"


def _candidate_reference(name: str, n_candidates: int) -> tuple[int | None, str]:
    """(1-based candidate number or None, the rest of the name after a leading reference)."""
    match = _CANDIDATE_REF.match(name)
    if match:
        number = int(next(g for g in match.groups() if g is not None))
        if 1 <= number <= n_candidates:
            return number, name[match.end():]
    return None, name


class NotFound(ToolError):
    """An unknown item; carries suggestion rows so the caller can label them with candidate numbers."""

    def __init__(self, name: str, suggestion_rows: list[int]) -> None:
        super().__init__("unknown_item", f'No item titled "{name}" was found.')
        self.name = name
        self.suggestion_rows = suggestion_rows


class TitleResolver:
    """Catalogue-wide lookups built once per dataset; per-call work touches only ~30 titles."""

    def __init__(self, titles: Sequence[str]) -> None:
        self.titles = list(titles)
        self.norm = [normalize(t) for t in self.titles]
        self.words = [frozenset(n.split()) for n in self.norm]
        self.exact: dict[str, int] = {}
        self.normalized: dict[str, int] = {}
        for row, (title, norm) in enumerate(zip(self.titles, self.norm)):
            self.exact.setdefault(title, row)
            self.normalized.setdefault(norm, row)

    def resolve(self, name: str, candidates: Sequence[int], history_recent_first: Sequence[int]) -> Resolution:
        """Resolve ``name``; ``candidates`` and the history are catalogue rows of the instance."""
        if len(name) > MAX_NAME_CHARS:
            raise ToolError("too_long", f"Error: the item name is {len(name)} characters long; "
                                        f"pass a title of at most {MAX_NAME_CHARS} characters.")
        stripped = name.strip().strip("\"'").strip()
        number, rest = _candidate_reference(stripped, len(candidates))
        if number is not None:
            return Resolution(candidates[number - 1], "candidate")
        local = list(candidates) + [r for r in history_recent_first if r not in candidates]
        for row in local:
            if self.titles[row] == stripped:
                return Resolution(row, "exact")
        if stripped in self.exact:
            return Resolution(self.exact[stripped], "exact")
        bare = _BARE_NUMBER.match(stripped)
        if bare and 1 <= int(bare.group(1)) <= len(candidates):
            return Resolution(candidates[int(bare.group(1)) - 1], "candidate")
        norm = normalize(stripped)
        if not norm:
            raise ToolError("empty_argument", "Error: the item name has no letters or digits; pass an item title "
                                              "from the history or the candidate list.")
        for row in local:
            if self.norm[row] == norm:
                return Resolution(row, "normalized")
        if norm in self.normalized:
            return Resolution(self.normalized[norm], "normalized")
        best = self._closest(norm, local)
        if best is not None:
            return Resolution(best, "closest")
        raise NotFound(stripped, self.suggestions(norm, local))

    def _closest(self, norm: str, local: Sequence[int]) -> int | None:
        if len(norm) >= PREFIX_MIN_CHARS:
            for row in local:  # a title cut short, as long titles often are when copied
                if self.norm[row].startswith(norm):
                    return row
        words = frozenset(norm.split())
        scored = []
        for position, row in enumerate(local):
            common = len(words & self.words[row])
            if not common:
                continue
            dice = 2 * common / (len(words) + len(self.words[row]))
            overlap = common / min(len(words), len(self.words[row]))
            if dice > DICE_MIN or (overlap == 1.0 and common >= 2) or (overlap >= OVERLAP_MIN and common >= 3):
                scored.append((-dice, -overlap, position, row))
        if scored:
            return min(scored)[3]
        return self._closest_by_characters(norm, local)

    def _closest_by_characters(self, norm: str, local: Sequence[int]) -> int | None:
        query = norm[:FUZZY_CHARS]
        matcher = difflib.SequenceMatcher(autojunk=False)
        matcher.set_seq2(query)
        best: tuple[float, int, int] | None = None
        for position, row in enumerate(local):
            matcher.set_seq1(self.norm[row][:FUZZY_CHARS])
            # The cheap upper bounds skip most titles without the quadratic ratio().
            if matcher.real_quick_ratio() < RATIO_MIN or matcher.quick_ratio() < RATIO_MIN:
                continue
            ratio = matcher.ratio()
            if ratio >= RATIO_MIN and (best is None or (-ratio, position) < (best[0], best[1])):
                best = (-ratio, position, row)
        return None if best is None else best[2]

    def suggestions(self, norm: str, local: Sequence[int]) -> list[int]:
        """Up to three instance items to suggest after a failed lookup: most shared words, then the
        closest letter counts (difflib's cheap ``quick_ratio``), then the candidate order."""
        words = frozenset(norm.split())
        matcher = difflib.SequenceMatcher(autojunk=False)
        matcher.set_seq2(norm[:FUZZY_CHARS])
        scored = []
        for position, row in enumerate(local):
            matcher.set_seq1(self.norm[row][:FUZZY_CHARS])
            scored.append((-len(words & self.words[row]), -matcher.quick_ratio(), position, row))
        return [entry[-1] for entry in sorted(scored)[:N_SUGGESTIONS]]
