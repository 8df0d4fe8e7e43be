"""The evaluation card's block about a served endpoint: what it shows, and that its latency (volatile)
goes to the timings files so ``eval_card.json`` and ``eval_card.md`` stay byte-reproducible."""

from __future__ import annotations

import json

from recrepro.agent.card import build_card, endpoint_lines, split_card, write_eval_card
from recrepro.agent.rollout import TrajectoryRecord


def hand_made_card(latency: dict, wall_s_total: float = 3.0) -> dict:
    """A card of two trajectories with a chat endpoint entry as the client reports it."""
    records = [TrajectoryRecord(sample_id=i, sample_index=0, target_index=i + 1, messages=[], turns=["x"],
                                answer=tuple(range(1, 11)), invalid_reason=None, detail="", n_tool_calls=0,
                                calls_per_tool={}, tool_calls=[], n_tool_errors=0, prompt_tokens=100,
                                tokens_generated=7, truncated=False, wall_s=wall_s_total / 2) for i in range(2)]
    card = build_card(records, dataset="ml-100k", model="InteRecAgent (served)", variant="tirr", profile="smoke",
                      n_candidates=20, top_k=10, max_tool_calls=10, settings={}, model_path="m at http://h/v1",
                      wall_s_total=wall_s_total, prompt_version="v1", prompt_fingerprint="abc")
    card["endpoint"] = {
        "api": "chat", "base_url": "http://h/v1", "model": "m", "decoding": {"temperature": 0.0},
        "requests": 5, "cached": 4, "failed": {"unreachable (ConnectionRefusedError)": 1, "http_503": 2},
        "retried": {"rate_limited": 3}, "timed": 2, "latency_s": latency,
        "prompt_tokens": {"mean": 2345.5}, "completion_tokens": {"mean": 61.25}, "tokens_from": {"usage": 2},
        "retries": 3, "timeout_s": 120.0, "cache": {"loaded": 4, "skipped_lines": 0, "entries": 6},
    }
    return card


FAST = {"mean": 1.5, "p50": 1.25, "p90": 2.5, "max": 3.0}
SLOW = {"mean": 17.125, "p50": 16.0, "p90": 20.5, "max": 21.75}

ENDPOINT_BLOCK = [
    "- endpoint `http://h/v1`, model `m`, api chat",
    "  - requests sent: 5; answers replayed from the cache: 4; given up: http_503 2, "
    "unreachable (ConnectionRefusedError) 1; retried: rate_limited 3 (up to 3 retries, timeout 120 s)",
    "  - tokens per request sent: prompt 2346, completion 61 (means over 2 answered); the paper: about 2.6–3.7k",
    "  - latency per request sent: in `eval_timings.md`; the paper: 16–21 s",
    "  - the paper's figures: one A800, vLLM, PAPER.md 1.3; its request is a whole recommendation (every turn), "
    "ours one model call (one turn)",
]


def test_the_card_shows_the_endpoint_and_the_timings_its_latency(tmp_path):
    write_eval_card(tmp_path, hand_made_card(SLOW))
    card_md = (tmp_path / "eval_card.md").read_text().splitlines()
    start = card_md.index(ENDPOINT_BLOCK[0])
    assert card_md[start:start + len(ENDPOINT_BLOCK)] == ENDPOINT_BLOCK
    timings_md = (tmp_path / "eval_timings.md").read_text().splitlines()
    start = timings_md.index("## Served endpoints: latency per request")
    assert timings_md[start:] == [
        "## Served endpoints: latency per request", "",
        "Seconds per request actually sent (answers replayed from the cache are not timed). A request here is one "
        "model call (one turn); the paper's is a whole recommendation: 16–21 s on one A800, vLLM (PAPER.md 1.3).", "",
        "| dataset/model | requests timed | mean, s | p50, s | p90, s | max, s |", "|---|---|---|---|---|---|",
        "| ml-100k/InteRecAgent (served) | 2 | 17.12 | 16.00 | 20.50 | 21.75 |",
    ]


def test_an_entry_still_holding_its_latency_renders_it_and_missing_figures_are_dashes():
    card = hand_made_card(FAST)
    lines = endpoint_lines(card["endpoint"])
    assert lines[3] == ("  - latency per request sent: mean / p50 / p90 / max 1.50 / 1.25 / 2.50 / 3.00 s; "
                        "the paper: 16–21 s")
    # The completions client's entry names no api; a run that only replayed has no timed figures
    without_usage = {**card["endpoint"], "tokens_from": {"usage": 1, "none": 1}}  # timed, tokens not counted
    assert "(means over 1 answered)" in endpoint_lines(without_usage)[2]
    completions = {k: v for k, v in card["endpoint"].items() if k != "api"}
    replayed = {**completions, "requests": 0, "cached": 6, "failed": {}, "retried": {}, "timed": 0,
                "latency_s": {"mean": None, "p50": None, "p90": None, "max": None},
                "prompt_tokens": {"mean": None}, "completion_tokens": {"mean": None}, "tokens_from": {}}
    lines = endpoint_lines(replayed)
    assert lines[:4] == [
        "- endpoint `http://h/v1`, model `m`, api completions",
        "  - requests sent: 0; answers replayed from the cache: 6; given up: none; retried: none "
        "(up to 3 retries, timeout 120 s)",
        "  - tokens per request sent: prompt –, completion – (means over 0 answered); the paper: about 2.6–3.7k",
        "  - latency per request sent: mean / p50 / p90 / max – / – / – / – s; the paper: 16–21 s",
    ]


def test_cards_differing_only_in_latency_write_the_same_card_files(tmp_path):
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    write_eval_card(fast, hand_made_card(FAST, wall_s_total=3.0))
    write_eval_card(slow, hand_made_card(SLOW, wall_s_total=40.0))
    for name in ("eval_card.json", "eval_card.md"):
        assert (fast / name).read_bytes() == (slow / name).read_bytes(), name
    stored = json.loads((fast / "eval_card.json").read_text())["ml-100k/InteRecAgent (served)"]["endpoint"]
    assert "latency_s" not in stored and (stored["requests"], stored["cached"], stored["timed"]) == (5, 4, 2)
    assert stored["prompt_tokens"] == {"mean": 2345.5} and stored["failed"]["http_503"] == 2
    timings = {d: json.loads((d / "eval_timings.json").read_text())["ml-100k/InteRecAgent (served)"]
               for d in (fast, slow)}
    assert timings[fast]["endpoint"] == {"timed": 2, "latency_s": FAST}
    assert timings[slow]["endpoint"] == {"timed": 2, "latency_s": SLOW}
    # A card without an endpoint is split as before: only the run's times leave it
    plain = {k: v for k, v in hand_made_card(FAST).items() if k != "endpoint"}
    stable, times = split_card(plain)
    assert "endpoint" not in stable and "endpoint" not in times and set(times) == {
        "tool_latency_s", "wall_s_per_request", "wall_s_total", "notes"}
