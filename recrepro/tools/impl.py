"""The seven tool implementations (PAPER.md 1.3 [N]); text formats and sizes are ours [G].

Each function takes the bound :class:`~recrepro.tools.toolkit.InstanceTools` and validated arguments
and returns plain text; the dispatcher bounds its size and turns :class:`ToolError` into an error
result. Conventions shared by all tools so the model can cross-reference them:

* a candidate is always written ``[k] "Title"`` (k = its 1-based number in the prompt's list), so a
  candidate's title never appears without its number; where the prompt names the candidates by
  labels instead (PPR's A and B), its tag is the label, ``[A] "Title"`` (``tools.tags``);
* "now" is the instance's target time; every count, mean and list uses interactions dated
  strictly before it;
* category aggregates use an item's labels minus the dataset-wide root labels (see
  ``ToolKit.shown``), at most the three most specific.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Sequence

from recrepro.tools import render
from recrepro.tools.base import RECENT_DAYS

if TYPE_CHECKING:
    from recrepro.tools.toolkit import InstanceTools

MAX_CATEGORY_LINES = 8  # [G] candidates_analyze lists this many categories one per line, the rest folded
MAX_FOLDED_CATEGORIES = 12  # [G] ... and at most this many more on the folded line, then a count
MIN_LIST_TITLE_CHARS = 16  # [G] titles in candidates_analyze are never cut shorter than this
TITLE_LIST_MARGIN = 40  # characters kept free for the "Titles: " head and the indents of wrapped lines
UNAVAILABLE = ("The collaborative model ({name}) is not available for this dataset (notebook 02 has not exported "
               "it), so this tool has no answer.")


# ---------------------------------------------------------------------------------- user profile


def get_user_profile(tools: "InstanceTools") -> str:
    kit, inst = tools.toolkit, tools.instance
    record = kit.profiles.get(inst.user_id, inst.target_time) if kit.profiles is not None else None
    if record is None:
        return "No profile has been written for this user at this time."
    head = (f"User profile ({record.generator} {record.prompt_version}; written from the user's "
            f"{record.n_history} interaction(s) before now):")
    return head + "\n" + (record.text.strip() or "(the profile writer returned an empty text)")


# ---------------------------------------------------------------------------------- item information


def _match_note(how: str, name: str) -> list[str]:
    if how in ("exact", "candidate"):
        return []
    return [f'Closest match for "{render.shorten(name, 80)}":']


def item_info_search(tools: "InstanceTools", item_name: str) -> str:
    kit, inst = tools.toolkit, tools.instance
    found = tools.resolve(item_name)
    row = found.row
    lines = _match_note(found.how, item_name)
    lines.append(tools.label(row, limit=120))
    labels = kit.labels[row]
    lines.append("Categories: " + (", ".join(labels) if labels else "unknown"))
    if kit.has_prices:
        band = kit.price_band[row]
        lines.append(f"Price: {render.fmt_price(kit.price[row])} (band {band})" if band else "Price: unknown")
    stats = kit.item_stats(row, inst.target_time)
    rating = f"mean rating {stats.mean_rating:.2f} over {stats.n_rated}" if stats.mean_rating is not None \
        else "no ratings"
    lines.append(f"Before now: {stats.n_before} interaction(s), {stats.n_recent} in the last "
                 f"{RECENT_DAYS} days; {rating}")
    if kit.avg_rating[row] == kit.avg_rating[row]:
        count = kit.rating_count[row]
        count_text = f" from {int(count)} ratings" if count == count else ""
        lines.append(f"Catalogue average rating: {kit.avg_rating[row]:.1f}{count_text} (store metadata, not dated)")
    seen = [(t, r) for i, t, r in zip(tools.history_rows, inst.history_times, inst.history_ratings) if i == row]
    if seen:
        t, r = seen[-1]
        lines.append(f"In this user's history: rated {render.fmt_rating(r)} on {render.fmt_date(t)}")
    return "\n".join(lines)


def _numbers(ks: list[int], tags: Sequence[str]) -> str:
    """Candidates ``ks`` by their tags (``tools.tags``: numbers, or PPR's [A] [B])."""
    return tags[ks[0]] if len(ks) == 1 else " ".join([tags[k] for k in ks])


def candidates_analyze(tools: "InstanceTools") -> str:
    kit = tools.toolkit
    shown = kit.shown
    history_labels = {label for row in tools.history_rows for label in shown[row]}
    by_label: dict[str, list[int]] = {}
    uncategorised, shared, unshared = [], [], []
    for k, row in enumerate(tools.candidate_rows, start=1):
        labels = shown[row]
        for label in labels:
            if label in by_label:
                by_label[label].append(k)
            else:
                by_label[label] = [k]
        if not labels:
            uncategorised.append(k)
        (unshared if history_labels.isdisjoint(labels) else shared).append(k)
    ordered = [(label, ks) for _, label, ks in sorted([(-len(ks), label, ks) for label, ks in by_label.items()])]

    def star(label: str) -> str:
        return label + "*" if label in history_labels else label

    n = len(tools.candidate_rows)
    lines = [f"{n} candidates by category (* = category also in the user's history):"]
    lines += [f"{star(label)} ({len(ks)}): {_numbers(ks, tools.tags)}" for label, ks in ordered[:MAX_CATEGORY_LINES]]
    rest = ordered[MAX_CATEGORY_LINES:]
    if rest:
        entries = [f"{star(label)} {_numbers(ks, tools.tags)}" for label, ks in rest[:MAX_FOLDED_CATEGORIES]]
        if len(rest) > MAX_FOLDED_CATEGORIES:
            entries.append(f"{len(rest) - MAX_FOLDED_CATEGORIES} more")
        lines += render.wrap_entries(f"Other categories ({len(rest)}): ", entries)
    if uncategorised:
        lines.append(f"No category ({len(uncategorised)}): {_numbers(uncategorised, tools.tags)}")
    if kit.has_prices:
        lines.append(_price_line(tools))
    line = f"Sharing a category with the history: {len(shared)} of {n}"
    if shared and unshared:
        line += f"; sharing none: {_numbers(unshared, tools.tags)}"
    lines.append(line)
    # The popularity line goes last, right before the agent's next turn: at a fixed distance from
    # the answer it is copied into, which a small model learns far sooner than a content search.
    popular = [_popularity_line(tools, kit.config.popularity_order)] if kit.config.popularity_order > 0 else []
    lines += render.wrap_entries("Titles: ", _candidate_titles(tools, lines + popular))
    return "\n".join(lines + popular)


def popularity_order(tools: "InstanceTools") -> list[int]:
    """Candidate numbers by interactions dated before now, most first; ties keep candidate order."""
    kit, now = tools.toolkit, tools.instance.target_time
    counts = [kit.item_stats(row, now).n_before for row in tools.candidate_rows]
    return sorted(range(1, len(counts) + 1), key=lambda k: (-counts[k - 1], k))


def _popularity_line(tools: "InstanceTools", top: int) -> str:
    """The ``top`` most popular candidates before now, in the answer's list syntax ``{[a, b, ...]}``.

    [G] The paper's candidates_analyze aggregates by category and price (PAPER.md 1.3); this line
    adds the popularity that item_info_search reports item by item, over the whole list. The braces
    make its first number the same token as an answer's first number (BPE merges ``{[``), so a small
    model can copy it (DESIGN.md 5: with ``[`` alone, tiny models failed to copy the first element).
    """
    order = popularity_order(tools)[:top]
    return "Most popular before now, most interactions first: {[" + ", ".join(map(tools.candidate_name, order)) + "]}"


def _candidate_titles(tools: "InstanceTools", lines: list[str]) -> list[str]:
    """Every candidate as ``[k] "Title"``, titles shortened further when the list would not fit.

    The categories come first in the answer; the titles (which the prompt shows in full anyway)
    get what is left of ``tools.max_chars``, so the size bound does not cut candidates off the end.
    """
    kit = tools.toolkit
    rows = tools.candidate_rows
    tags = tools.tags
    # Besides its title an entry takes "[k] ", two quotes and "; " (a cut title's "..." is counted
    # inside its limit).
    budget = kit.config.max_chars - len("\n".join(lines)) - TITLE_LIST_MARGIN \
        - sum(len(tags[k]) + 5 for k in range(1, len(rows) + 1))
    titles = kit.titles
    limit = title_limit(sorted([len(titles[row]) for row in rows]), budget)
    if limit == render.LIST_TITLE_CHARS:
        return [f"{tags[k]} {kit.list_titles[row]}" for k, row in enumerate(rows, start=1)]
    cut = limit - len(render.ELLIPSIS)  # catalogue titles are whitespace-normalised already
    return [f'{tags[k]} "{titles[row]}"' if len(titles[row]) <= limit else
            f'{tags[k]} "{titles[row][:cut].rstrip()}{render.ELLIPSIS}"' for k, row in enumerate(rows, start=1)]


def title_limit(lengths: list[int], budget: int) -> int:
    """The largest per-title length L with sum(min(length, L)) <= budget, clamped to the list range.

    ``lengths`` ascending: walking up, titles shorter than the current one are kept whole and the
    remaining ones share what is left equally.
    """
    used = 0
    for index, length in enumerate(lengths):
        remaining = len(lengths) - index
        if length >= render.LIST_TITLE_CHARS:
            break
        if used + length * remaining > budget:
            return max(MIN_LIST_TITLE_CHARS, (budget - used) // remaining)
        used += length
    else:
        return render.LIST_TITLE_CHARS
    remaining = len(lengths) - index
    return max(MIN_LIST_TITLE_CHARS, min(render.LIST_TITLE_CHARS, (budget - used) // remaining))


def _price_line(tools: "InstanceTools") -> str:
    kit = tools.toolkit
    buckets: list[list[int]] = [[] for _ in range(len(kit.band_names) + 1)]  # the last one: unknown
    band_of = kit.price_band_index
    for k, row in enumerate(tools.candidate_rows, start=1):
        buckets[band_of[row]].append(k)
    parts = [f"{name}: {_numbers(ks, tools.tags)}" for name, ks in zip(kit.band_names, buckets) if ks]
    if buckets[-1]:
        parts.append(f"unknown: {len(buckets[-1])}")
    return "Price bands: " + "; ".join(parts)


# ---------------------------------------------------------------------------------- behaviour statistics


def _sessions(times: tuple[int, ...], gap_seconds: float) -> list[int]:
    """Start index of every session (a gap longer than ``gap_seconds`` starts a new one)."""
    starts = [0]
    for i in range(1, len(times)):
        if times[i] - times[i - 1] > gap_seconds:
            starts.append(i)
    return starts


def _label_counts(kit, rows) -> Counter:
    return Counter(label for row in rows for label in kit.shown[row])


def _label_list(labels: list[str], limit: int = 6) -> str:
    if not labels:
        return "none"
    return ", ".join(labels[:limit]) + (f" (+{len(labels) - limit} more)" if len(labels) > limit else "")


def get_session_behavior(tools: "InstanceTools") -> str:
    kit, inst = tools.toolkit, tools.instance
    times = inst.history_times
    if not times:
        return "The user has no history before now."
    starts = _sessions(times, kit.config.session_gap_hours * 3600)
    first = starts[-1]
    recent_rows = tools.history_rows[first:]
    span = render.fmt_date(times[first])
    if render.fmt_date(times[-1]) != span:
        span += f" to {render.fmt_date(times[-1])}"
    lines = [f"Most recent session: {len(recent_rows)} item(s), {span}, ended "
             f"{render.fmt_ago(inst.target_time - times[-1])} before now "
             f"(sessions split at gaps over {kit.config.session_gap_hours:g} hours):"]
    for row, rating in zip(recent_rows, inst.history_ratings[first:]):
        labels = ", ".join(kit.shown[row]) or "no category"
        lines.append(f"- {tools.label(row)} ({labels}), rated {render.fmt_rating(rating)}")
    recent = _label_counts(kit, recent_rows)
    lines.append("Session categories: " + render.fmt_counts(recent))
    if first == 0:
        lines.append(f"Earlier history: none; all {len(times)} history item(s) form this one session.")
        return "\n".join(lines)
    earlier = _label_counts(kit, tools.history_rows[:first])
    lines.append(f"Earlier history: {first} item(s) in {len(starts) - 1} session(s), {render.fmt_date(times[0])} "
                 f"to {render.fmt_date(times[first - 1])}; categories: {render.fmt_counts(earlier)}")

    def ordered(labels: set[str], counts: Counter) -> list[str]:
        return sorted(labels, key=lambda label: (-counts[label], label))

    new = ordered(set(recent) - set(earlier), recent)
    kept = ordered(set(recent) & set(earlier), recent)
    faded = ordered(set(earlier) - set(recent), earlier)
    lines.append(f"Shift: new in the recent session: {_label_list(new)}; continued: {_label_list(kept)}; "
                 f"absent from it: {_label_list(faded)}")
    return "\n".join(lines)


def get_rating_behavior(tools: "InstanceTools") -> str:
    kit, inst = tools.toolkit, tools.instance
    if not inst.history_ratings:
        return "The user has no rated history before now."
    high_at, low_at = kit.config.rating_high, kit.config.rating_low
    groups: dict[str, list[tuple[int, float]]] = {"High": [], "Neutral": [], "Low": []}
    # Most recent first inside each group: recent tastes matter most for the next item.
    for row, rating in reversed(list(zip(tools.history_rows, inst.history_ratings))):
        name = "High" if rating >= high_at else "Low" if rating <= low_at else "Neutral"
        groups[name].append((row, rating))
    mean = sum(inst.history_ratings) / len(inst.history_ratings)
    lines = [f"Ratings of the {len(inst.history_ratings)} history item(s), most recent first "
             f"(high >= {render.fmt_rating(high_at)}, low <= {render.fmt_rating(low_at)}); mean {mean:.2f}:"]
    for name, members in groups.items():
        if not members:
            lines.append(f"{name} (0): none")
            continue
        lines += render.wrap_entries(f"{name} ({len(members)}): ",
                                     [f"{tools.label(row)} {render.fmt_rating(r)}" for row, r in members])
    high = _label_counts(kit, [row for row, _ in groups["High"]])
    low = _label_counts(kit, [row for row, _ in groups["Low"]])
    lines.append(f"Categories rated high: {render.fmt_counts(high)}; rated low: {render.fmt_counts(low)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- collaborative


def get_similar_items(tools: "InstanceTools", item_title: str) -> str:
    kit = tools.toolkit
    found = tools.resolve(item_title)
    lines = _match_note(found.how, item_title)
    if kit.space is None:
        return "\n".join(lines + [UNAVAILABLE.format(name=kit.config.sasrec_model)])
    neighbours = kit.similar_item_rows(found.row)
    if neighbours is None:
        lines.append(f"{tools.label(found.row)} is not known to the {kit.space.name} model (no interactions in "
                     "its training period), so no similar items can be listed.")
        return "\n".join(lines)
    if not neighbours:
        return "\n".join(lines + [f"The {kit.space.name} model has no other item to compare with."])
    history = set(tools.history_rows)
    lines.append(f"Items most similar to {tools.label(found.row)} in the {kit.space.name} embedding space "
                 "(cosine similarity):")
    for rank, (row, sim) in enumerate(neighbours, start=1):
        lines.append(f"{rank}. {tools.label(row)} {sim:.2f}" + (" (in the user's history)" if row in history else ""))
    numbers = [tools.candidate_number[row] for row, _ in neighbours if row in tools.candidate_number]
    lines.append("Candidates among them: " + " ".join(tools.tags[k] for k in numbers) if numbers
                 else "No candidate among them.")
    return "\n".join(lines)


def get_similar_users(tools: "InstanceTools") -> str:
    kit, inst = tools.toolkit, tools.instance
    if kit.space is None:
        return UNAVAILABLE.format(name=kit.config.sasrec_model)
    if not inst.history_items:
        return "The user has no history before now, so similar users cannot be found."
    found = kit.similar_users(inst)
    if found.status == "no_snapshot":
        return "No snapshot of other users' histories exists before now, so similar users cannot be found."
    if found.status == "no_known_history":
        return (f"None of this user's history items is known to the {kit.space.name} model, so similar users "
                "cannot be found.")
    as_of = render.fmt_date(found.snapshot_time)
    if not found.neighbours:
        return f"No other user had a history known to the {kit.space.name} model before {as_of}."
    lines = [f"Users most similar to this user ({kit.space.name} representations of their histories as of {as_of}; "
             "cosine similarity), with their most recent items before now, newest first:"]
    bought: Counter = Counter()
    for rank, neighbour in enumerate(found.neighbours, start=1):
        entries = []
        for item, t in zip(neighbour.items, neighbour.times):
            row = kit.row_of[item]
            entries.append(f"{tools.label(row)} ({render.fmt_date(t)})")
            if row in tools.candidate_number:
                bought[tools.candidate_number[row]] += 1
        lines += render.wrap_entries(f"{rank}. similarity {neighbour.similarity:.2f}: ", entries)
    if bought:
        lines.append("Candidates among their recent items: " + ", ".join(
            f"{tools.tags[k]} ({n} user{'s' if n > 1 else ''})"
            for k, n in sorted(bought.items(), key=lambda kv: (-kv[1], kv[0]))))
    else:
        lines.append("No candidate among their recent items.")
    return "\n".join(lines)
