"""Evaluation cards: what an agent evaluation did, beyond its accuracy.

Every agent evaluation upserts one card per (dataset, model) into the run's ``results/eval_card.json``
and re-renders ``eval_card.md``: validity and invalid reasons, tool use, position bias, cost (beside
PAPER.md 1.3's [N] figures) and, for a served model, the endpoint's requests, replays and failures.
Times (:data:`VOLATILE_KEYS`, :data:`VOLATILE_ENDPOINT_KEYS`) go to ``eval_timings.json`` / ``.md``
instead, so a reproduced run rewrites the card byte for byte (issue 15).

Details (every field of a card): docs/internals.md, "agent/card.py".
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from recrepro.agent.endpoint import PAPER_PER_REQUEST
from recrepro.agent.parser import InvalidReason
from recrepro.agent.rollout import TrajectoryRecord
from recrepro.io import write_json_atomic, write_text_atomic
from recrepro.metrics import bucket_means, list_metrics


def _share(count: int, total: int) -> float:
    return float(count) / total if total else float("nan")


def _summary(values: Sequence[float]) -> dict[str, float]:
    if not len(values):
        return {"mean": float("nan"), "p50": float("nan"), "p90": float("nan"), "max": float("nan")}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "p50": float(np.quantile(arr, 0.5)), "p90": float(np.quantile(arr, 0.9)),
            "max": float(arr.max())}


def _position_table(records: Sequence[TrajectoryRecord], n_candidates: int) -> list[dict[str, Any]]:
    """H@1 and H@10 by target-position bucket (:func:`recrepro.metrics.bucket_means`, as the position table)."""
    scored = [r for r in records if r.target_index is not None]
    targets = [r.target_index for r in scored]
    values = list_metrics([list(r.answer) if r.answer else None for r in scored], targets, (1, 10))
    return bucket_means(targets, {"H@1": values["H@1"], "H@10": values["H@10"]}, n_candidates)


def build_card(records: Sequence[TrajectoryRecord], *, dataset: str, model: str, variant: str, profile: str,
               n_candidates: int, top_k: int, max_tool_calls: int, settings: dict[str, Any],
               model_path: str, wall_s_total: float, prompt_version: str, prompt_fingerprint: str) -> dict[str, Any]:
    """The card of one evaluation (one trajectory per instance, or several)."""
    n = len(records)
    reasons = Counter(r.invalid_reason for r in records if r.invalid_reason)
    calls = [r.n_tool_calls for r in records]
    per_tool = Counter()
    errors = Counter()
    n_calls_made = 0
    latencies = []
    for r in records:
        per_tool.update({k: v for k, v in r.calls_per_tool.items() if v})
        for call in r.tool_calls:
            n_calls_made += 1
            latencies.append(call.latency_s)
            if not call.ok:
                errors[call.error_kind or "error"] += 1
    histogram = Counter(min(c, max_tool_calls + 1) for c in calls)
    first = Counter(r.answer[0] for r in records if r.answer)
    return {
        "dataset": dataset, "model": model, "variant": variant, "profile": profile, "model_path": model_path,
        "prompt_version": prompt_version, "prompt_fingerprint": prompt_fingerprint,
        "n_trajectories": n, "n_instances": len({r.sample_id for r in records}),
        "settings": settings,
        "valid_share": _share(sum(1 for r in records if r.valid), n),
        "invalid_reasons": {reason.value: _share(reasons.get(reason.value, 0), n) for reason in InvalidReason},
        "duplicate_rate": _share(sum(1 for r in records if r.n_duplicates), n),
        "out_of_range_rate": _share(sum(1 for r in records if r.n_out_of_range), n),
        "truncation_rate": _share(sum(1 for r in records if r.truncated), n),
        "tool_calls_per_trajectory": {
            "mean": float(np.mean(calls)) if n else float("nan"),
            "histogram": {(f">{max_tool_calls}" if k > max_tool_calls else str(k)): int(v)
                          for k, v in sorted(histogram.items())},
            "share_with_any_call": _share(sum(1 for c in calls if c), n),
        },
        "calls_per_tool": {name: _share(count, n) for name, count in sorted(per_tool.items())},
        "tool_calls_executed": n_calls_made,
        "tool_error_rate": _share(sum(errors.values()), n_calls_made),
        "tool_errors_by_kind": dict(sorted(errors.items())),
        "tool_latency_s": _summary(latencies),
        "target_position_vs_hit": _position_table(records, n_candidates),
        "first_choice_histogram": {str(k): int(v) for k, v in sorted(first.items())},
        "prompt_tokens": _summary([r.prompt_tokens for r in records]),
        "generated_tokens": _summary([r.tokens_generated for r in records]),
        "wall_s_per_request": _summary([r.wall_s for r in records]),
        "wall_s_total": wall_s_total,
        "notes": ("wall_s_per_request is the time from a trajectory's first generate call to its end while it "
                  "shared batches with the others; wall_s_total / n_trajectories is the throughput cost."),
    }


VOLATILE_KEYS = ("tool_latency_s", "wall_s_per_request", "wall_s_total", "notes")  # wall-clock times (and their note)
VOLATILE_ENDPOINT_KEYS = ("latency_s",)  # the endpoint entry's times; its counts and token means stay on the card
SWEEP_PREFIX = "sweep "  # models of the Figure 4/5 sweep points (recrepro.rl.sweeps.row_name)


def card_key(card: dict[str, Any]) -> str:
    return f"{card['dataset']}/{card['model']}"


def _upsert_json(path: Path, key: str, value: dict[str, Any]) -> dict[str, dict[str, Any]]:
    mapping = json.loads(path.read_text()) if path.is_file() else {}
    mapping[key] = value
    write_json_atomic(path, mapping)
    return mapping


def write_eval_card(results_dir: Path | str, card: dict[str, Any]) -> tuple[Path, Path]:
    """Upsert ``card`` into ``eval_card.json`` (its times into ``eval_timings.json``) and re-render both
    ``.md`` files; returns the card's two paths."""
    results_dir = Path(results_dir)
    key = card_key(card)
    stable, times = split_card(card)
    cards = _upsert_json(results_dir / "eval_card.json", key, stable)
    write_text_atomic(results_dir / "eval_card.md", render_cards(cards))
    if times:
        timings = _upsert_json(results_dir / "eval_timings.json", key, {**times, "n_trajectories": card["n_trajectories"]})
        write_text_atomic(results_dir / "eval_timings.md", render_timings(timings))
    return results_dir / "eval_card.json", results_dir / "eval_card.md"


def split_card(card: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what goes on the card, its times): the keys of :data:`VOLATILE_KEYS`, and the endpoint's latency
    (with the number of requests it was taken over, for the timings table), leave the card."""
    stable = {k: v for k, v in card.items() if k not in VOLATILE_KEYS}
    times = {k: card[k] for k in VOLATILE_KEYS if k in card}
    endpoint = card.get("endpoint")
    if isinstance(endpoint, dict) and any(k in endpoint for k in VOLATILE_ENDPOINT_KEYS):
        stable["endpoint"] = {k: v for k, v in endpoint.items() if k not in VOLATILE_ENDPOINT_KEYS}
        times["endpoint"] = {"timed": endpoint.get("timed"),
                             **{k: endpoint[k] for k in VOLATILE_ENDPOINT_KEYS if k in endpoint}}
    return stable, times


def load_eval_cards(results_dir: Path | str) -> dict[str, dict[str, Any]]:
    path = Path(results_dir) / "eval_card.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _ms(value: float) -> str:
    return "–" if value != value else f"{1000 * value:.1f}"


def render_timings(timings: dict[str, dict[str, Any]]) -> str:
    """Wall times of every evaluation (volatile: they change from run to run and are never committed)."""
    lines = ["# Agent evaluation timings", "",
             "Wall-clock times of this run's evaluations; they depend on the machine and its load. "
             "A request's time runs from its trajectory's first generate call to its end while it shared "
             "batches with the others; total / trajectories is the throughput cost.", "",
             "| dataset/model | trajectories | per request mean, ms | p90, ms | total, s | tool latency mean, ms |",
             "|---|---|---|---|---|---|"]
    for key in sorted(timings):
        t = timings[key]
        request, tool = t.get("wall_s_per_request", {}), t.get("tool_latency_s", {})
        lines.append(f"| {key} | {t.get('n_trajectories', '–')} | {_ms(request.get('mean', float('nan')))} | "
                     f"{_ms(request.get('p90', float('nan')))} | {_num(t.get('wall_s_total', float('nan')), 1)} | "
                     f"{_ms(tool.get('mean', float('nan')))} |")
    served = [key for key in sorted(timings) if isinstance(timings[key].get("endpoint"), dict)]
    if served:
        lines += _endpoint_timing_lines({key: timings[key]["endpoint"] for key in served})
    return "\n".join(lines) + "\n"


def _paper_figures() -> tuple[str, str]:
    """The paper's per-request latency and tokens as text: ("16–21 s", "2.6–3.7k")."""
    (low_s, high_s), (low_t, high_t) = PAPER_PER_REQUEST["latency_s"], PAPER_PER_REQUEST["tokens"]
    return f"{low_s:g}–{high_s:g} s", f"{low_t / 1000:g}–{high_t / 1000:g}k"


def _seconds(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.2f}"


def _latency_text(latency: dict[str, Any]) -> str:
    return " / ".join(_seconds(latency.get(k)) for k in ("mean", "p50", "p90", "max")) + " s"


def _endpoint_timing_lines(endpoints: dict[str, dict[str, Any]]) -> list[str]:
    """The served endpoints' latency per request sent, beside the paper's figure."""
    paper_s, _ = _paper_figures()
    lines = ["", "## Served endpoints: latency per request", "",
             f"Seconds per request actually sent (answers replayed from the cache are not timed). A request here "
             f"is one model call (one turn); the paper's is a whole recommendation: {paper_s} on "
             f"{PAPER_PER_REQUEST['hardware']} ({PAPER_PER_REQUEST['source']}).", "",
             "| dataset/model | requests timed | mean, s | p50, s | p90, s | max, s |", "|---|---|---|---|---|---|"]
    for key, e in endpoints.items():
        latency = e.get("latency_s") or {}
        cells = " | ".join(_seconds(latency.get(k)) for k in ("mean", "p50", "p90", "max"))
        lines.append(f"| {key} | {e.get('timed', '–')} | {cells} |")
    return lines


def _pct(value: float) -> str:
    return "–" if value != value else f"{100 * value:.1f}%"


def _num(value: float, digits: int = 2) -> str:
    return "–" if value != value else f"{value:.{digits}f}"


def _card_lines(key: str, c: dict[str, Any]) -> list[str]:
    """The section of one card."""
    reasons = ", ".join(f"{k} {_pct(v)}" for k, v in c["invalid_reasons"].items() if v)
    tools = ", ".join(f"{k} {_num(v)}" for k, v in c["calls_per_tool"].items()) or "none"
    hist = ", ".join(f"{k}: {v}" for k, v in c["tool_calls_per_trajectory"]["histogram"].items())
    lines = [
        f"## {key} ({c['variant']}, profile {c['profile']})", "",
        f"- model: `{c['model_path']}`; prompt {c['prompt_version']} ({c['prompt_fingerprint']}); "
        f"{c['n_trajectories']} trajectories on {c['n_instances']} instances",
        f"- valid answers: **{_pct(c['valid_share'])}**; invalid: {reasons or 'none'}",
        f"- answers with a duplicate: {_pct(c['duplicate_rate'])}; with an out-of-range index: "
        f"{_pct(c['out_of_range_rate'])}; truncated: {_pct(c['truncation_rate'])}",
        f"- tool calls per trajectory: mean {_num(c['tool_calls_per_trajectory']['mean'])}, "
        f"histogram {{{hist}}}; per tool (mean per trajectory): {tools}",
        f"- tool error rate: {_pct(c['tool_error_rate'])} of {c['tool_calls_executed']} executed calls"
        + (f" ({', '.join(f'{k} {v}' for k, v in c['tool_errors_by_kind'].items())})"
           if c["tool_errors_by_kind"] else ""),
        f"- tokens per request: prompt {_num(c['prompt_tokens']['mean'], 0)}, generated mean "
        f"{_num(c['generated_tokens']['mean'], 0)} (p90 {_num(c['generated_tokens']['p90'], 0)}); "
        "times in `eval_timings.md`",
    ]
    if "endpoint" in c:  # a served model: requests given up are scored truncated
        lines += endpoint_lines(c["endpoint"])
    lines += ["", "| target position | n | H@1 | H@10 |", "|---|---|---|---|"]
    lines += [f"| {r['positions']} | {r['n']} | {_num(r['H@1'], 3)} | {_num(r['H@10'], 3)} |"
              for r in c["target_position_vs_hit"]]
    lines.append("")
    return lines


def _by_kind(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def _mean_text(stat: Any) -> str:
    mean = stat.get("mean") if isinstance(stat, dict) else None
    return "–" if mean is None or mean != mean else f"{mean:.0f}"


def _n_with_tokens(e: dict[str, Any]) -> Any:
    """Answered requests the token means are over: those sent whose tokens were counted (a chat answer
    without ``usage`` is timed but not counted); an entry without ``tokens_from``: its timed ones."""
    tokens_from = e.get("tokens_from")
    if not isinstance(tokens_from, dict):
        return e.get("timed", "–")
    return sum(n for source, n in tokens_from.items() if source != "none")


def endpoint_lines(e: dict[str, Any]) -> list[str]:
    """The card's block about a served endpoint. Latency is shown where the entry holds it (a card not
    yet split); a stored card's is in ``eval_timings.md``. Entries of cards written before the response
    cache lack some keys: no ``cached`` reads 0 replays, a missing figure reads "–"; the completions
    client's entry names no ``api``."""
    paper_s, paper_tokens = _paper_figures()
    api = e.get("api", "completions")
    latency = (f"mean / p50 / p90 / max {_latency_text(e['latency_s'])}" if isinstance(e.get("latency_s"), dict)
               else "in `eval_timings.md`")
    return [
        f"- endpoint `{e['base_url']}`, model `{e['model']}`, api {api}",
        f"  - requests sent: {e['requests']}; answers replayed from the cache: {e.get('cached', 0)}; given up: "
        f"{_by_kind(e['failed'])}; retried: {_by_kind(e['retried'])} (up to {e['retries']} retries, timeout "
        f"{e['timeout_s']:g} s)",
        f"  - tokens per request sent: prompt {_mean_text(e.get('prompt_tokens'))}, completion "
        f"{_mean_text(e.get('completion_tokens'))} (means over {_n_with_tokens(e)} answered); the paper: "
        f"about {paper_tokens}",
        f"  - latency per request sent: {latency}; the paper: {paper_s}",
        f"  - the paper's figures: {PAPER_PER_REQUEST['hardware']}, {PAPER_PER_REQUEST['source']}; its request is "
        "a whole recommendation (every turn), ours one model call (one turn)",
    ]


def render_cards(cards: dict[str, dict[str, Any]]) -> str:
    """A readable summary of every card, one section per (dataset, model); the sweep points of
    Figures 4 and 5 follow the main rows under their own heading."""
    lines = ["# Agent evaluation cards", "",
             "One section per evaluated (dataset, model). Rates are shares of trajectories unless noted.", ""]
    main = [k for k in sorted(cards) if not cards[k]["model"].startswith(SWEEP_PREFIX)]
    sweeps = [k for k in sorted(cards) if cards[k]["model"].startswith(SWEEP_PREFIX)]
    for key in main:
        lines += _card_lines(key, cards[key])
    if sweeps:
        lines += ["# Sweep points (Figures 4 and 5)", "",
                  "Stage-1 policies of the group-size and backbone sweeps, on the same test lists.", ""]
    for key in sweeps:
        lines += _card_lines(key, cards[key])
    return "\n".join(lines) + "\n"
