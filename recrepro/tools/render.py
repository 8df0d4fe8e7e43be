"""Small text helpers shared by the tools: dates, numbers, titles, wrapped lists and the size bound.

Everything here is deterministic (no locale, no time zone other than UTC, no set iteration order),
so the same instance gives the same text in every process.
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

LIST_TITLE_CHARS = 48  # [G] titles inside lists are cut to this length so 20 items fit max_chars
LINE_WIDTH = 150  # [G] wrapped lists start a new line past this many characters
ELLIPSIS = "..."
SECONDS_PER_DAY = 86_400
NUMBER_TAGS = tuple(f"[{k}]" for k in range(1_000))  # "[k]": how every answer names candidate k


def candidate_tags(labels: Sequence[str] = ()) -> tuple[str, ...]:
    """The tag of candidate k at index k: ``NUMBER_TAGS``, or ``[label]`` for candidates the prompt
    names by ``labels`` instead of by number (PPR's two items: "A", "B"), so tool outputs and prompt agree."""
    if not labels:
        return NUMBER_TAGS
    return ("",) + tuple(f"[{label}]" for label in labels)  # index 0 unused, as "[0]" is


@lru_cache(maxsize=65_536)
def _day_text(day: int) -> str:
    return datetime.fromtimestamp(day * SECONDS_PER_DAY, tz=timezone.utc).strftime("%Y-%m-%d")


def fmt_date(ts: int) -> str:
    """``YYYY-MM-DD`` (UTC) of a timestamp in seconds; cached per day because tools print many."""
    return _day_text(int(ts) // SECONDS_PER_DAY)


def fmt_ago(seconds: int) -> str:
    """A coarse, readable age: "40 minutes", "5 hours", "3 days", "7 weeks"."""
    seconds = max(0, int(seconds))
    if seconds < 3_600:
        value, unit = max(1, seconds // 60), "minute"
    elif seconds < SECONDS_PER_DAY:
        value, unit = seconds // 3_600, "hour"
    elif seconds < 14 * SECONDS_PER_DAY:
        value, unit = seconds // SECONDS_PER_DAY, "day"
    else:
        value, unit = seconds // (7 * SECONDS_PER_DAY), "week"
    return f"{value} {unit}{'' if value == 1 else 's'}"


def fmt_rating(value: float) -> str:
    """A rating as written by users: "4" for whole numbers, "4.5" otherwise."""
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:.1f}"


def fmt_price(value: float) -> str:
    return f"{value:.2f}"


def shorten(text: str, limit: int = LIST_TITLE_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)].rstrip() + ELLIPSIS


def quoted(title: str, limit: int = LIST_TITLE_CHARS) -> str:
    return f'"{shorten(title, limit)}"'


def fmt_counts(counts: Mapping[str, int], limit: int = 6) -> str:
    """``Drama 3, Comedy 2`` ordered by count (descending), then label; at most ``limit`` labels."""
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = [f"{label} {count}" for label, count in ordered[:limit]]
    if len(ordered) > limit:
        shown.append(f"{len(ordered) - limit} more")
    return ", ".join(shown) if shown else "none"


def wrap_entries(head: str, entries: Iterable[str], sep: str = "; ", width: int = LINE_WIDTH,
                 indent: str = "  ") -> list[str]:
    """``head`` followed by ``entries`` joined with ``sep``, broken into lines of about ``width``."""
    lines: list[str] = []
    current = head
    first = True
    for entry in entries:
        piece = entry if first else sep + entry
        if not first and len(current) + len(piece) > width:
            lines.append(current + sep.rstrip())
            current = indent + entry
        else:
            current += piece
        first = False
    lines.append(current)
    return lines


def bound(text: str, max_lines: int, max_chars: int) -> str:
    """Cut ``text`` to at most ``max_lines`` lines and ``max_chars`` characters, saying so.

    Whole lines are kept where possible; the last kept line is followed by a marker that tells the
    model how much was left out, so a cut answer is never mistaken for a complete one.
    """
    if len(text) <= max_chars and text.count("\n") < max_lines:
        return text
    lines = text.split("\n")
    kept: list[str] = []
    used = 0
    for index, line in enumerate(lines):
        # The marker is at most this long; reserving it keeps the loop free of string building.
        reserve = len("[... more line(s) cut]") + len(str(len(lines))) + 2
        if len(kept) + 1 >= max_lines or used + len(line) + 1 + reserve > max_chars:
            marker = f"[... {len(lines) - index} more line(s) cut]"
            if not kept:  # a single overlong first line: keep its head
                kept.append(line[: max(0, max_chars - len(marker) - 1 - len(ELLIPSIS))] + ELLIPSIS)
            kept.append(marker)
            return "\n".join(kept)[:max_chars]
        kept.append(line)
        used += len(line) + 1
    return "\n".join(kept)[:max_chars]
