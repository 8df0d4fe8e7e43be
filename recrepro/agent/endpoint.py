"""What the endpoint client keeps beside its requests: the response cache and the per-request figures.

:class:`ResponseCache` lets a killed served evaluation resume without asking the server again what it
already answered: an append-only JSON-lines file, one answered request a line (the key and the choice),
written, flushed and fsynced as soon as the answer arrives. :class:`RequestStats` counts what the
evaluation card records about the endpoint: requests sent, answers replayed, failures and retries by
kind, and latency and tokens per request beside the paper's figure (:data:`PAPER_PER_REQUEST`).

Used by :class:`recrepro.agent.generators.OpenAICompletionsGenerator` (a cached answer is the completion's
``text``) and :class:`recrepro.agent.chat_client.ChatCompletionsClient` (the assistant ``message`` with its
tool calls); kept apart so those modules stay about requests, and free of imports from them (no cycle).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

# PAPER.md 1.3. The paper's "request" is one recommendation end to end (every turn of a trajectory and
# its tool calls); ours is one completion call (one turn), so a trajectory's figures are its turns' sum.
PAPER_PER_REQUEST: dict[str, Any] = {
    "source": "PAPER.md 1.3", "latency_s": [16, 21], "tokens": [2600, 3700], "hardware": "one A800, vLLM",
    "note": "the paper's request is one recommendation end to end (all turns); ours is one completion (one turn)",
}


def cache_key(base_url: str, body: Mapping[str, Any]) -> str:
    """sha256 over everything that decides the answer: the endpoint and the request body (model, the prompt
    or the messages with their tool results and the tools offered, max_tokens, temperature, top_p, stop
    strings, seed). Any change is a different key, never a stale hit."""
    text = json.dumps({"base_url": base_url.rstrip("/"), **body}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


CHOICE_FIELDS = ("text", "message", "finish_reason", "usage")  # what a cached answer keeps


def _record(line: bytes) -> tuple[str, dict[str, Any]] | None:
    """(key, choice) of one cache line, or None when the line is not a whole, well-formed record."""
    try:
        entry = json.loads(line)
    except ValueError:  # also UnicodeDecodeError: a line cut inside a multi-byte character
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
        return None
    choice = entry.get("choice")
    if not isinstance(choice, dict):
        return None
    # A completion's answer is its text; a chat completion's is the assistant message (content, tool calls).
    if not isinstance(choice.get("text"), str) and not isinstance(choice.get("message"), dict):
        return None
    return entry["key"], choice


class ResponseCache:
    """Answered requests on disk, one JSON line each: ``{"key": ..., "choice": {"text" or "message",
    "finish_reason", "usage"?}}``. Lines that do not parse (a kill mid-write leaves a torn last line) are
    skipped and counted in ``skipped_lines``; a torn last line is cut off so that the next append starts a
    line of its own. Appends are serialised by a lock (requests run in a thread pool)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        self.skipped_lines = 0
        self._lock = threading.Lock()
        if self.path.is_file():
            self._load()
        self.loaded = len(self.entries)

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        whole, tail = lines[:-1], lines[-1]  # tail: after the last newline, empty unless a write was cut
        for line in whole:
            if line.strip():
                self._keep(line)
        if not tail.strip():
            return
        if self._keep(tail):  # a whole record, only its newline missing
            with self.path.open("ab") as handle:
                handle.write(b"\n")
        else:  # a torn last line: cut off, or the next append would be glued onto it and lost too
            with self.path.open("r+b") as handle:
                handle.truncate(len(data) - len(tail))

    def _keep(self, line: bytes) -> bool:
        record = _record(line)
        if record is None:
            self.skipped_lines += 1
            return False
        self.entries[record[0]] = record[1]
        return True

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached choice of ``key``, or None."""
        return self.entries.get(key)

    def put(self, key: str, choice: Mapping[str, Any]) -> None:
        """Keep an answered request, on disk before this returns (flushed and fsynced): a kill loses at
        most the requests still in flight."""
        kept = {k: choice[k] for k in CHOICE_FIELDS if choice.get(k) is not None}
        line = json.dumps({"key": key, "choice": kept}, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as handle:
                handle.write(line.encode())
                handle.flush()
                os.fsync(handle.fileno())
            self.entries[key] = kept

    def summary(self) -> dict[str, Any]:
        """For the card: answers found on disk when loaded, lines skipped (corrupt or torn), answers now."""
        return {"loaded": self.loaded, "skipped_lines": self.skipped_lines, "entries": len(self.entries)}


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on a non-empty list."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


class RequestStats:
    """Counters of one evaluation against the endpoint; thread-safe (workers record failures and retries)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Start a new evaluation's counts (the card of each evaluation counts its own requests)."""
        with self._lock:
            self.requests = 0  # requests sent: answered or given up
            self.cached = 0  # answers replayed from the cache, not sent
            self.retried: Counter = Counter()  # failed attempts that were retried, by kind
            self.failed: Counter = Counter()  # requests given up, by kind (their turn is scored truncated)
            self.latencies: list[float] = []  # seconds, per answered request
            self.prompt_tokens: list[int] = []
            self.completion_tokens: list[int] = []
            # "usage" (the server's count), "tokenizer" (ours) or "none" (no usage and no tokenizer: chat)
            self.tokens_from: Counter = Counter()

    def retry(self, kind: str) -> None:
        with self._lock:
            self.retried[kind] += 1

    def give_up(self, kind: str) -> None:
        with self._lock:
            self.failed[kind] += 1

    def replayed(self) -> None:
        with self._lock:
            self.cached += 1

    def sent(self, latency_s: float | None, prompt_tokens: int | None = None, completion_tokens: int | None = None,
             from_usage: bool = False) -> None:
        """A request sent; ``latency_s`` None when it was given up (no answer, nothing to time or count)."""
        with self._lock:
            self.requests += 1
            if latency_s is None:
                return
            self.latencies.append(latency_s)
            self.prompt_tokens.append(int(prompt_tokens or 0))
            self.completion_tokens.append(int(completion_tokens or 0))
            self.tokens_from["usage" if from_usage else "tokenizer"] += 1

    def sent_without_usage(self, latency_s: float) -> None:
        """An answered request whose response had no ``usage`` and no tokenizer to count it (the chat path):
        timed, but left out of the token means rather than counted as 0 tokens."""
        with self._lock:
            self.requests += 1
            self.latencies.append(latency_s)
            self.tokens_from["none"] += 1

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts: per-request latency (mean, p50, p90, max, in s) and tokens (mean) over the
        answered requests actually sent (``timed``; cache replays excluded), beside the paper's figure."""
        with self._lock:
            lat = self.latencies
            latency = ({"mean": _mean(lat), "p50": _percentile(lat, 0.5), "p90": _percentile(lat, 0.9),
                        "max": max(lat)} if lat else {"mean": None, "p50": None, "p90": None, "max": None})
            return {"requests": self.requests, "cached": self.cached, "failed": dict(self.failed),
                    "retried": dict(self.retried), "timed": len(lat),
                    "latency_s": {k: (round(v, 4) if v is not None else None) for k, v in latency.items()},
                    "prompt_tokens": {"mean": _mean(self.prompt_tokens)},
                    "completion_tokens": {"mean": _mean(self.completion_tokens)},
                    "tokens_from": dict(self.tokens_from), "paper": dict(PAPER_PER_REQUEST)}
