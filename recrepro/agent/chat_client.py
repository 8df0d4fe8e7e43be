"""A served model through the OpenAI chat completions API with native tool calling (``served.api: chat``).

Unlike the completions path (:class:`recrepro.agent.generators.OpenAICompletionsGenerator`), which
sends the kit's own rendered prompt and so needs a tokenizer that matches the served model, this
path sends ``messages`` and ``tools`` to ``POST {base_url}/chat/completions`` and executes the
returned ``tool_calls`` in the trajectory's own :class:`~recrepro.agent.env.RecAgentEnv`. Validity is
judged by the same rules as the text path, not by new ones: each assistant turn is recorded in the
kit's ``<tool_call>`` text format and goes through the one parser. Limits, failures and resume
(:class:`~recrepro.agent.endpoint.ResponseCache`) are those of the completions path.

Details (the loop, validity, limits, resume): docs/internals.md, "agent/chat_client.py".
"""

from __future__ import annotations

import copy
import http.client
import json
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from recrepro.agent.endpoint import RequestStats, ResponseCache, cache_key
from recrepro.agent.env import RecAgentEnv, tool_schemas
from recrepro.agent.evaluate import (AgentBackend, AgentEvaluation, evaluate_agent, rollout_settings, served_api_key,
                                     served_cache_file)
from recrepro.agent.generators import RolloutSettings
from recrepro.agent.parser import CALL_CLOSE, CALL_OPEN, ToolCallParse, check_call_against_schema, parse_tool_calls
from recrepro.agent.rollout import AgentTask, TrajectoryRecord
from recrepro.config import Profile
from recrepro.progress import Progress

_CALL_BLOCK = re.compile(re.escape(CALL_OPEN) + r".*?" + re.escape(CALL_CLOSE), re.DOTALL)


# --------------------------------------------------------------------------------------------
# The HTTP client
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NativeCall:
    """One entry of a response's ``tool_calls``; ``arguments`` as the server sent it (JSON text or object)."""

    id: str | None
    name: str
    arguments: Any


@dataclass(frozen=True)
class ChatReply:
    """The first choice of one chat completion."""

    content: str
    calls: tuple[NativeCall, ...]
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


def parse_reply(data: Any) -> ChatReply:
    """The first choice of a response body; raises ValueError, KeyError, IndexError or TypeError when the
    body is not a chat completion (a server fault, not the model's: the request is counted as failed)."""
    choice = data["choices"][0]
    message = choice["message"]
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise ValueError("message content is not text")
    calls = []
    for raw in message.get("tool_calls") or []:
        function = raw["function"]
        name = function["name"]
        if not isinstance(name, str) or not name:
            raise ValueError("a tool call without a name")
        call_id = raw.get("id")
        calls.append(NativeCall(call_id if isinstance(call_id, str) and call_id else None, name,
                                function.get("arguments")))
    usage = data.get("usage") or {}
    return ChatReply(content or "", tuple(calls), choice.get("finish_reason"),
                     _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")))


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def cached_choice(reply: ChatReply) -> dict[str, Any]:
    """What the response cache keeps of an answer: the assistant message, the finish reason and the usage,
    in the response's own form, so a replay goes through :func:`parse_reply` like a fresh answer."""
    calls = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
             for c in reply.calls]
    usage = {k: v for k, v in (("prompt_tokens", reply.prompt_tokens), ("completion_tokens", reply.completion_tokens))
             if v is not None}
    return {"message": {"role": "assistant", "content": reply.content, **({"tool_calls": calls} if calls else {})},
            "finish_reason": reply.finish_reason, "usage": usage or None}


def replayed_reply(choice: dict[str, Any]) -> ChatReply | None:
    """The answer a cache entry holds, or None when it is not a chat answer (asked again, not trusted)."""
    body = {"choices": [{"message": choice.get("message"), "finish_reason": choice.get("finish_reason")}],
            "usage": choice.get("usage")}
    try:
        return parse_reply(body)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def decoding(settings: RolloutSettings) -> dict[str, Any]:
    """The decoding fields of every request (greedy = temperature 0, sent explicitly)."""
    return {"temperature": settings.temperature if settings.do_sample else 0.0,
            "top_p": settings.top_p if settings.do_sample else 1.0, "seed": settings.seed}


class ChatCompletionsClient:
    """``POST {base_url}/chat/completions`` with timeouts and retries; thread-safe counters for the card.

    Timeouts, refused connections, 408, 429 and 5xx are retried with exponential backoff; other HTTP
    errors and malformed bodies are not (a retry would get the same answer). ``max_workers`` trajectories
    are rolled out at a time. With ``cache_path``, answers are kept on disk as they arrive and a request
    already answered is replayed, not sent; requests given up are not kept, so a resumed run asks them again.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 120.0,
                 max_workers: int = 8, retries: int = 3, backoff_s: float = 1.0,
                 cache_path: Path | str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s, self.max_workers = timeout_s, max_workers
        self.retries, self.backoff_s = retries, backoff_s
        self.cache = ResponseCache(cache_path) if cache_path is not None else None
        self.counts = RequestStats()  # for the evaluation card
        self._lock = threading.Lock()
        self.decoding: dict[str, Any] = {}

    def reset_stats(self) -> None:
        """Zero the counts, so each evaluation's card counts its own requests (the cache stays)."""
        self.counts.reset()
        with self._lock:
            self.decoding = {}

    def stats(self) -> dict[str, Any]:
        """What the evaluation card records about the endpoint: the completions path's entry (requests sent
        and replayed, failures and retries by kind, latency and tokens per request sent, the cache), plus
        the api and the decoding settings."""
        with self._lock:
            decoding_sent = dict(self.decoding)
        return {"api": "chat", "base_url": self.base_url, "model": self.model, "decoding": decoding_sent,
                **self.counts.summary(), "retries": self.retries, "timeout_s": self.timeout_s,
                "cache": self.cache.summary() if self.cache is not None else None}

    def _post(self, body: dict[str, Any]) -> Any:
        headers = {"Content-Type": "application/json",
                   **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})}
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode(),
                                         headers=headers)
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return json.loads(response.read())

    def chat(self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None,
             settings: RolloutSettings, max_tokens: int) -> ChatReply | None:
        """The first choice (replayed from the cache when this very request was answered before), or None
        when the request is given up (counted by kind)."""
        body: dict[str, Any] = {"model": self.model, "messages": list(messages), "max_tokens": int(max_tokens),
                                **decoding(settings)}
        if tools:  # the reasoning-only variant sends none, so the server renders no tool section
            body["tools"] = list(tools)
        with self._lock:
            self.decoding = {**decoding(settings), "max_tokens_per_turn": settings.max_new_tokens_per_turn,
                             "max_tokens_total": settings.max_new_tokens_total}
        key = cache_key(self.base_url, body) if self.cache is not None else None
        hit = self.cache.get(key) if key is not None else None
        reply = replayed_reply(hit) if hit is not None else None
        if reply is not None:
            self.counts.replayed()
            return reply
        return self._ask(body, key)

    def _ask(self, body: dict[str, Any], key: str | None) -> ChatReply | None:
        """Send ``body``, retrying transient failures; an answer is cached before this returns."""
        for attempt in range(self.retries + 1):
            began = time.perf_counter()
            try:
                reply = parse_reply(self._post(body))
            except urllib.error.HTTPError as exc:
                kind = "rate_limited" if exc.code == 429 else f"http_{exc.code}"
                transient = exc.code in (408, 429) or exc.code >= 500
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                kind, transient = f"unreachable ({type(getattr(exc, 'reason', exc)).__name__})", True
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                kind, transient = "malformed_response", False
            else:
                self._answered(reply, time.perf_counter() - began)
                if key is not None:  # outside the try: a disk error is not a failed request
                    self.cache.put(key, cached_choice(reply))
                return reply
            if not transient or attempt == self.retries:
                self.counts.give_up(kind)
                self.counts.sent(None)
                return None
            self.counts.retry(kind)
            time.sleep(self.backoff_s * 2 ** attempt)
        return None

    def _answered(self, reply: ChatReply, latency_s: float) -> None:
        if reply.prompt_tokens is None or reply.completion_tokens is None:
            self.counts.sent_without_usage(latency_s)
        else:
            self.counts.sent(latency_s, reply.prompt_tokens, reply.completion_tokens, from_usage=True)


# --------------------------------------------------------------------------------------------
# Turns in the kit's format
# --------------------------------------------------------------------------------------------

def call_block(call: NativeCall) -> str:
    """A native call written as the kit's ``<tool_call>`` block, for the parser and the transcript.

    Arguments that are not a JSON object stay as they came (a string), which the parser rejects as
    ``'arguments' is not an object``: a bad tool call, as malformed JSON in a text call is. ``<`` is
    escaped (still valid JSON) so no value can close the block or open a think block early.
    """
    arguments = call.arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        arguments = {}  # no arguments, as the parser reads a missing "arguments"
    elif isinstance(arguments, str):
        try:
            decoded = json.loads(arguments)
        except (ValueError, RecursionError):
            decoded = None
        arguments = decoded if isinstance(decoded, dict) else arguments
    payload = json.dumps({"name": call.name, "arguments": arguments}, ensure_ascii=False).replace("<", "\\u003c")
    return f"{CALL_OPEN}\n{payload}\n{CALL_CLOSE}"


def turn_text(reply: ChatReply) -> str:
    """The assistant turn as the text path would hold it: the content, then the native calls."""
    return "\n".join([reply.content, *(call_block(c) for c in reply.calls)]) if reply.calls else reply.content


def assistant_message(reply: ChatReply, parsed: ToolCallParse, turn: int) -> tuple[dict[str, Any], list[str]]:
    """The assistant message sent back with the conversation, and the ids of the turn's parsed calls.

    The parser's calls of a turn are those written in the content (the kit's format) first, then the
    native ones: the former get ids made up here, the latter keep the server's. Call blocks are cut from
    the content so the server's template does not render a call twice. A turn with a call that did not
    parse ends the trajectory; its message keeps the server's calls as they came, for the transcript.
    """
    n_text = len(parsed.calls) - len(reply.calls)
    if not parsed.ok or n_text < 0:
        raw = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
               for c in reply.calls]
        return {"role": "assistant", "content": reply.content or None, **({"tool_calls": raw} if raw else {})}, []
    ids = [f"call_{turn}_{i}" for i in range(n_text)]
    ids += [c.id or f"call_{turn}_{n_text + i}" for i, c in enumerate(reply.calls)]
    entries = [{"id": call_id, "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}}
               for call_id, call in zip(ids, parsed.calls)]
    content = _CALL_BLOCK.sub("", reply.content).strip() if n_text else reply.content
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if entries:
        message["tool_calls"] = entries
    return message, ids


# --------------------------------------------------------------------------------------------
# Episodes
# --------------------------------------------------------------------------------------------

@dataclass
class _Trajectory:
    task: AgentTask
    env: RecAgentEnv
    messages: list[dict[str, Any]]
    turns: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    generated: int = 0
    truncated: bool = False
    started: float = 0.0


class ChatEpisodes:
    """Runs tasks through the chat API, one trajectory per task, ``client.max_workers`` at a time.

    Tools run one at a time under a lock (environments built by one factory share the tool kit's caches);
    requests overlap, and they are where the time goes.
    """

    def __init__(self, client: ChatCompletionsClient, env_factory: Callable[[], RecAgentEnv],
                 settings: RolloutSettings, top_k: int = 10) -> None:
        self.client, self.env_factory, self.settings, self.top_k = client, env_factory, settings, top_k
        self._tools_lock = threading.Lock()
        with self._tools_lock:
            self.schemas = tool_schemas(env_factory())
        self.tools = [self.schemas[name] for name in sorted(self.schemas)]

    def run(self, tasks: Sequence[AgentTask], desc: str = "chat rollouts") -> list[TrajectoryRecord]:
        """One record per task, in task order (``sample_index`` 0: evaluation draws one trajectory)."""
        records: list[TrajectoryRecord | None] = [None] * len(tasks)
        with Progress(desc, len(tasks), unit="trajectory", enabled=self.settings.progress and bool(tasks)) as bar, \
                ThreadPoolExecutor(max_workers=max(1, self.client.max_workers)) as pool:
            futures = {pool.submit(self.run_one, task): i for i, task in enumerate(tasks)}
            for future in as_completed(futures):
                records[futures[future]] = future.result()
                bar.update(1)
        return [r for r in records if r is not None]

    def run_one(self, task: AgentTask) -> TrajectoryRecord:
        with self._tools_lock:
            env = self.env_factory()
            env.reset(**dict(task.row))
        traj = _Trajectory(task, env, copy.deepcopy(task.messages), started=time.perf_counter())
        # Every turn that continues executes at least one call and the budget's refusal ends the
        # trajectory, so this ends within max_tool_calls + 2 turns, as the text path does.
        while self._turn(traj):
            pass
        return self._finish(traj)

    def _turn(self, traj: _Trajectory) -> bool:
        """One request and its tool calls; True if the trajectory needs another turn."""
        settings = self.settings
        max_tokens = max(1, min(settings.max_new_tokens_per_turn, settings.max_new_tokens_total - traj.generated))
        reply = self.client.chat(traj.messages, self.tools if traj.task.uses_tools else None, settings, max_tokens)
        if reply is None:  # given up: an empty, unfinished turn, which the verdict scores as truncated
            traj.turns.append("")
            traj.truncated = True
            return False
        if not traj.turns:
            traj.prompt_tokens = reply.prompt_tokens or 0
        traj.generated += reply.completion_tokens or 0
        text = turn_text(reply)
        traj.turns.append(text)
        parsed = parse_tool_calls(text)
        message, ids = assistant_message(reply, parsed, len(traj.turns))
        traj.messages.append(message)
        if reply.finish_reason == "length":
            traj.truncated = True
            return False
        if parsed.n_attempted == 0:
            return False  # the final answer turn
        # The text path's rules: a bad call, or any call where tools are not offered, fixes the verdict.
        if not traj.task.uses_tools or not parsed.ok:
            return False
        if any(check_call_against_schema(call, self.schemas) for call in parsed.calls):
            return False
        self._execute(traj, parsed.calls, ids)
        if traj.env.episode.over_budget or traj.env.episode.n_agent_errors:
            return False
        limit = settings.max_context_tokens
        used = (reply.prompt_tokens or 0) + (reply.completion_tokens or 0)
        if traj.generated >= settings.max_new_tokens_total or (limit is not None and used >= limit):
            traj.truncated = True
            return False
        return True

    def _execute(self, traj: _Trajectory, calls: Sequence[Any], ids: Sequence[str]) -> None:
        """Run the calls in order through the environment; each result goes back as a tool message."""
        traj.env.episode.turn = len(traj.turns)
        with self._tools_lock:
            for call, call_id in zip(calls, ids):
                result = getattr(traj.env, call.name)(**call.arguments)
                traj.messages.append({"role": "tool", "tool_call_id": call_id, "content": str(result)})
                if traj.env.episode.over_budget:
                    break

    def _finish(self, traj: _Trajectory) -> TrajectoryRecord:
        episode = traj.env.episode
        schemas = self.schemas if traj.task.uses_tools else None
        verdict = episode.finish(traj.turns, self.top_k, schemas, traj.truncated)
        answer = verdict.answer
        return TrajectoryRecord(
            sample_id=traj.task.sample_id, sample_index=0, target_index=traj.task.target_index,
            messages=traj.messages, turns=traj.turns, answer=answer.ranking,
            invalid_reason=None if answer.reason is None else answer.reason.value, detail=answer.detail,
            n_tool_calls=verdict.n_tool_calls, calls_per_tool=episode.calls_per_tool(), tool_calls=list(episode.calls),
            n_tool_errors=sum(1 for c in episode.calls if not c.ok), prompt_tokens=traj.prompt_tokens,
            tokens_generated=traj.generated, truncated=traj.truncated, wall_s=time.perf_counter() - traj.started,
            n_out_of_range=answer.n_out_of_range, n_duplicates=answer.n_duplicates)


# --------------------------------------------------------------------------------------------
# Evaluation (recrepro.agent.evaluate.evaluate_agent with the chat episodes as its rollout)
# --------------------------------------------------------------------------------------------

def chat_cache_file(profile: Profile, root: Path | str = ".") -> Path:
    """The chat path's response cache of a run, beside the completions path's
    (:func:`~recrepro.agent.evaluate.served_cache_file`): ``runs/<profile>/served/responses_chat.jsonl``."""
    return served_cache_file(profile, root).with_name("responses_chat.jsonl")


def chat_backend(profile: Profile, root: Path | str | None = None) -> AgentBackend:
    """The profile's served model (``served``) through :class:`ChatCompletionsClient`; no tokenizer is
    needed, the server renders its own template. With ``root``, answers are cached in the run folder
    (:func:`chat_cache_file`), so a killed evaluation resumes without asking again what was answered;
    without it nothing is written."""
    served = profile.served
    key = served_api_key(profile)
    cache = chat_cache_file(profile, root) if root is not None else None
    client = ChatCompletionsClient(served.base_url, str(served.model), api_key=key, cache_path=cache)
    return AgentBackend(client, None, f"{served.model} at {served.base_url}", None)


def evaluate_chat_agent(profile: Profile, root: Path | str, dataset: str, samples: pd.DataFrame, views: dict,
                        backend: AgentBackend, env_factory: Callable[[], RecAgentEnv], variant: str, model: str,
                        extra_names: Sequence[str] = (), settings: RolloutSettings | None = None) -> AgentEvaluation:
    """:func:`recrepro.agent.evaluate.evaluate_agent` with the chat episodes as its rollout (same signature;
    ``backend.generator`` is a :class:`ChatCompletionsClient`): the same tasks, scores, per-instance files,
    card (its ``endpoint`` entry from the client's stats) and trajectory file."""
    settings = settings or rollout_settings(profile)
    episodes = ChatEpisodes(backend.generator, env_factory, settings, profile.agent.top_k)
    return evaluate_agent(profile, root, dataset, samples, views, backend, env_factory, variant, model,
                          extra_names, settings, rollout=episodes.run)
