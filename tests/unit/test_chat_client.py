"""The chat-completions path for a served model (``served.api: chat``, issue 14): native tool calls run
through the real environment against a fake local server, judged by the one parser, scored and carded
by the existing code, with endpoint failures counted and never a crash."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from http.server import ThreadingHTTPServer
from typing import Any, Callable

import pandas as pd
import pytest

from recrepro.agent.chat_client import (ChatCompletionsClient, ChatReply, NativeCall, cached_choice,
                                       evaluate_chat_agent, replayed_reply)
from recrepro.agent.endpoint import cache_key
from recrepro.agent.env import BUDGET_MESSAGE
from recrepro.agent.evaluate import AgentBackend, eval_subset, rollout_settings
from recrepro.agent.parser import InvalidReason, format_answer
from recrepro.config import ConfigError, load_profile
from tests.unit import agent_fakes as af
from tests.unit.fake_http import JsonHandler

FIRST_TEN = format_answer(range(1, 11))


def completion(content: str | None = None, calls: tuple = (), finish: str | None = None,
               completion_tokens: int = 7, prompt_tokens: int = 100) -> dict:
    """A chat completion body; ``calls`` holds (id, name, arguments text) triples."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                                 for i, n, a in calls]
    return {"id": "chatcmpl-1", "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish or ("tool_calls" if calls else "stop")}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def n_tool_messages(body: dict) -> int:
    return sum(m["role"] == "tool" for m in body["messages"])


def two_tools(body: dict) -> tuple[int, Any]:
    """get_user_profile, then candidates_analyze, then the answer [1..10] (no tools offered: the answer)."""
    done = n_tool_messages(body)
    if "tools" in body and done == 0:
        return 200, completion(calls=(("call_up", "get_user_profile", "{}"),))
    if "tools" in body and done == 1:
        return 200, completion("<think>the profile says little</think>", calls=(("call_ca", "candidates_analyze", "{}"),))
    return 200, completion(f"<think>done</think>\n{FIRST_TEN}", prompt_tokens=100 * len(body["messages"]))


class _Chat(JsonHandler):
    """Records every request and answers with ``behave(body) -> (status, JSON object or raw bytes)``."""

    bodies: list[dict] = []
    behave: Callable[[dict], tuple[int, Any]] = staticmethod(two_tools)

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        status, answer = type(self).behave(body)
        self.send_json(status, answer)


@pytest.fixture()
def server():
    _Chat.bodies, _Chat.behave = [], staticmethod(two_tools)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Chat)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def behave(fn: Callable[[dict], tuple[int, Any]]) -> None:
    _Chat.behave = staticmethod(fn)


def evaluate(tmp_path, url: str, variant: str = "tirr", n: int = 6, retries: int = 2, workers: int = 3,
             max_tool_calls: int = 10, cache=None, **setting_changes: Any):
    """evaluate_chat_agent on the synthetic benchmark's first ``n`` test rows (the real tools); with
    ``cache``, the client's response cache file."""
    profile = load_profile("smoke", {"run.name": "chat", "agent.max_tool_calls": max_tool_calls})
    settings = dataclasses.replace(rollout_settings(profile, progress=False), **setting_changes)
    client = ChatCompletionsClient(url, "fake-chat", retries=retries, backoff_s=0.0, timeout_s=5, max_workers=workers,
                                   cache_path=cache)
    backend = AgentBackend(client, None, f"fake-chat at {url}", None)
    samples = pd.DataFrame(af.sample_rows(n))
    return evaluate_chat_agent(profile, tmp_path, "synthetic", samples, af.views(), backend,
                               af.env_factory(max_tool_calls), variant, f"chat-{variant}", settings=settings)


def by_conversation(bodies: list[dict]) -> dict[str, list[dict]]:
    """Request bodies grouped by their user turn (one conversation per instance), in request order."""
    out: dict[str, list[dict]] = {}
    for body in bodies:
        out.setdefault(body["messages"][1]["content"], []).append(body)
    return out


def test_native_tool_calls_run_in_the_real_environment_and_are_scored_like_every_row(tmp_path, server):
    result = evaluate(tmp_path, server)
    rows = af.sample_rows(6)
    conversations = by_conversation(_Chat.bodies)
    assert len(conversations) == 6 and all(len(c) == 3 for c in conversations.values())
    for row, task in zip(rows, af.tasks(6)):
        env = af.make_env(row=row)  # a fresh environment on the same instance: what the tools must have said
        last = conversations[task.messages[1]["content"]][-1]["messages"]
        assert [m["role"] for m in last] == ["system", "user", "assistant", "tool", "assistant", "tool"]
        assert last[2]["tool_calls"][0]["id"] == "call_up" and last[2]["tool_calls"][0]["function"]["name"] == "get_user_profile"
        assert last[3] == {"role": "tool", "tool_call_id": "call_up", "content": env.get_user_profile()}
        assert last[5] == {"role": "tool", "tool_call_id": "call_ca", "content": env.candidates_analyze()}
    first = _Chat.bodies[0]
    assert first["path"] == "/v1/chat/completions" and first["model"] == "fake-chat" and first["temperature"] == 0.0
    assert [t["function"]["name"] for t in first["tools"]] == sorted(t["function"]["name"] for t in first["tools"])
    assert len(first["tools"]) == 7 and all(t["type"] == "function" for t in first["tools"])
    # Every answer is [1..10]: the scores follow from where each target sits
    assert all(r.answer == tuple(range(1, 11)) and r.valid for r in result.records)
    targets = [row["target_index"] for row in rows]
    assert targets == [1, 20, 3, 17, 6, 14]  # the synthetic benchmark's first six test rows
    row = result.row
    assert row["n"] == 6 and row["H@1"] == pytest.approx(1 / 6) and row["H@5"] == pytest.approx(2 / 6)
    assert row["H@10"] == pytest.approx(3 / 6)
    assert row["N@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(7)) / 6)
    card = result.card
    assert card["valid_share"] == 1.0 and card["n_trajectories"] == 6 and card["tool_calls_executed"] == 12
    assert card["tool_calls_per_trajectory"]["histogram"] == {"2": 6}
    assert card["calls_per_tool"] == {"candidates_analyze": 1.0, "get_user_profile": 1.0}
    endpoint = card["endpoint"]
    assert endpoint["api"] == "chat" and endpoint["requests"] == 18 and endpoint["failed"] == {}
    assert endpoint["retried"] == {} and endpoint["decoding"]["temperature"] == 0.0
    assert endpoint["completion_tokens"]["mean"] == 7.0 and endpoint["tokens_from"] == {"usage": 18}
    assert endpoint["prompt_tokens"]["mean"] == pytest.approx((6 * 100 + 6 * 100 + 6 * 600) / 18)
    assert (endpoint["cached"], endpoint["timed"], endpoint["cache"]) == (0, 18, None)
    assert all(r.prompt_tokens == 100 and r.tokens_generated == 21 for r in result.records)
    saved = (tmp_path / "runs" / "chat" / "agent_eval" / "synthetic" / "chat-tirr.jsonl").read_text().splitlines()
    assert len(saved) == 6 and "eval_card.json" in {p.name for p in (tmp_path / "runs" / "chat" / "results").iterdir()}


def test_calls_written_as_text_are_executed_when_the_server_has_no_tool_parser(tmp_path, server):
    call = '<tool_call>\n{"name": "get_user_profile", "arguments": {}}\n</tool_call>'
    behave(lambda body: (200, completion(f"<think>ask</think>\n{call}") if n_tool_messages(body) == 0
                         else completion(FIRST_TEN)))
    result = evaluate(tmp_path, server, n=2)
    assert all(r.valid and r.n_tool_calls == 1 for r in result.records)
    conversations = by_conversation(_Chat.bodies)
    for row, task in zip(af.sample_rows(2), af.tasks(2)):
        second = conversations[task.messages[1]["content"]][1]["messages"]
        # The call goes back as a native call (its block cut from the content), its result under the same id
        assert second[2]["tool_calls"][0]["id"] == "call_1_0" and second[2]["content"] == "<think>ask</think>"
        assert second[3] == {"role": "tool", "tool_call_id": "call_1_0",
                             "content": af.make_env(row=row).get_user_profile()}


@pytest.mark.parametrize("calls_per_turn, requests, written", [(1, 3, 3), (4, 1, 4)])
def test_over_the_tool_budget_is_invalid_with_the_engines_reason(tmp_path, server, calls_per_turn, requests, written):
    calls = tuple((f"c{i}", "get_user_profile", "{}") for i in range(calls_per_turn))
    behave(lambda body: (200, completion(calls=calls)))  # never stops calling
    result = evaluate(tmp_path, server, n=2, max_tool_calls=2)
    for record in result.records:
        assert record.invalid_reason == InvalidReason.TOO_MANY_TOOL_CALLS.value and record.n_tool_calls == written
        assert len(record.tool_calls) == 3  # two executed, the third refused; nothing runs after the refusal
        assert record.messages[-1]["content"] == BUDGET_MESSAGE.format(max=2)  # the refused third call
    assert result.card["endpoint"]["requests"] == 2 * requests  # no request after the verdict is fixed
    assert result.card["invalid_reasons"]["too_many_tool_calls"] == 1.0


def test_token_limits_end_the_trajectory_as_truncated(tmp_path, server):
    behave(lambda body: (200, completion(calls=(("c", "get_user_profile", "{}"),), completion_tokens=12)))
    result = evaluate(tmp_path, server, n=1, max_new_tokens_total=20, max_new_tokens_per_turn=16)
    assert [b["max_tokens"] for b in _Chat.bodies] == [16, 8]  # what is left of the turn and of the trajectory
    assert result.records[0].invalid_reason == "truncated" and result.records[0].tokens_generated == 24
    _Chat.bodies.clear()
    behave(lambda body: (200, completion(FIRST_TEN, finish="length")))  # the server's own length stop
    cut = evaluate(tmp_path, server, n=1)
    assert cut.records[0].invalid_reason == "truncated" and cut.records[0].truncated


def test_malformed_arguments_are_a_bad_tool_call_not_an_endpoint_failure(tmp_path, server):
    behave(lambda body: (200, completion(calls=(("c", "get_user_profile", '{"oops'),))))
    result = evaluate(tmp_path, server, n=2)
    assert {r.invalid_reason for r in result.records} == {InvalidReason.BAD_TOOL_CALL.value}
    assert result.card["tool_calls_executed"] == 0 and result.card["endpoint"]["failed"] == {}
    assert result.card["endpoint"]["requests"] == 2


@pytest.mark.parametrize("answer, failed, retried", [
    (lambda body: (200, b"not json{"), {"malformed_response": 3}, {}),
    (lambda body: (200, {"error": "no choices"}), {"malformed_response": 3}, {}),
    (lambda body: (500, {"error": "down"}), {"http_500": 3}, {"http_500": 6}),
])
def test_endpoint_failures_are_counted_and_scored_invalid_never_a_crash(tmp_path, server, answer, failed, retried):
    behave(answer)
    result = evaluate(tmp_path, server, n=3, retries=2)
    assert all(r.invalid_reason == "truncated" and r.answer is None for r in result.records)
    endpoint = result.card["endpoint"]
    assert endpoint["failed"] == failed and endpoint["retried"] == retried and endpoint["requests"] == 3
    assert result.row["H@10"] == 0.0 and result.row["n"] == 3


def test_a_transient_error_is_retried_and_the_answer_counts(tmp_path, server):
    seen: list[int] = []

    def flaky(body: dict) -> tuple[int, Any]:
        seen.append(1)
        return (429, {"error": "slow down"}) if len(seen) % 2 else (200, completion(FIRST_TEN))

    behave(flaky)
    result = evaluate(tmp_path, server, variant="r", n=3, workers=1)
    assert result.card["valid_share"] == 1.0 and result.card["endpoint"]["retried"] == {"rate_limited": 3}
    unreachable = evaluate(tmp_path, "http://127.0.0.1:9/v1", variant="r", n=2, retries=1)  # nothing listens on 9
    assert unreachable.card["valid_share"] == 0.0 and sum(unreachable.card["endpoint"]["failed"].values()) == 2
    assert all(kind.startswith("unreachable") for kind in unreachable.card["endpoint"]["failed"])


def test_the_reasoning_only_variant_sends_no_tools_and_a_tool_call_there_is_bad(tmp_path, server):
    result = evaluate(tmp_path, server, variant="r", n=3)
    assert all("tools" not in b for b in _Chat.bodies) and len(_Chat.bodies) == 3
    assert result.card["valid_share"] == 1.0 and result.card["tool_calls_executed"] == 0
    behave(lambda body: (200, completion(calls=(("c", "get_user_profile", "{}"),))))  # a server that calls anyway
    bad = evaluate(tmp_path, server, variant="r", n=2)
    assert {r.invalid_reason for r in bad.records} == {InvalidReason.BAD_TOOL_CALL.value}
    assert "not available" in bad.records[0].detail and bad.card["tool_calls_executed"] == 0


def test_served_api_is_checked_at_load():
    with pytest.raises(ConfigError, match=r"served\.api: expected one of completions, chat, got 'bogus'"):
        load_profile("smoke", {"served.api": "bogus"})
    assert load_profile("smoke").served.api == "completions"
    chat = load_profile("smoke", {"served.api": "chat", "served.base_url": "http://h/v1", "served.model": "m"})
    assert chat.served.tokenizer is None  # the chat path renders nothing itself
    with pytest.raises(ConfigError, match=r"served\.model"):
        load_profile("smoke", {"served.api": "chat", "served.base_url": "http://h/v1"})


@pytest.mark.timeout(120)
def test_run_served_rows_through_the_chat_api_writes_both_rows(tmp_path, server, monkeypatch):
    from recrepro.data.pipeline import load_benchmark
    from recrepro.evaluation import first_ten_row
    from recrepro.stages.data import run_data
    from recrepro.stages.evaluate import SERVED_LABELS, run_served_rows

    behave(lambda body: (200, completion(calls=(("call_up", "get_user_profile", "{}"),)))
           if "tools" in body and n_tool_messages(body) == 0 else (200, completion(FIRST_TEN)))
    profile = load_profile("smoke", {"run.name": "smoke", "data.max_users": 40, "agent.eval_instances": 4,
                                     "served.base_url": server, "served.model": "fake-chat", "served.api": "chat",
                                     "served.api_key_env": "FAKE_KEY"})
    monkeypatch.setenv("FAKE_KEY", "secret")
    run_data(profile, tmp_path)
    out = run_served_rows(profile, tmp_path, log=lambda _: None)
    assert [r["model"] for r in out["rows"]] == list(SERVED_LABELS.values())
    samples = eval_subset(profile, load_benchmark(profile, "ml-100k", tmp_path).samples["test"])
    reference = first_ten_row(profile, "ml-100k", samples, tmp_path)
    for row in out["rows"]:  # [1..10] everywhere: exactly the First ten reference
        assert row["n"] == 4 and all(row[m] == reference[m] for m in ("H@1", "H@5", "H@10", "N@5", "N@10"))
    llmrank, interec = (out["cards"][f"ml-100k/{name}"] for name in SERVED_LABELS.values())
    assert llmrank["endpoint"]["requests"] == 4 and interec["endpoint"]["requests"] == 8
    assert llmrank["endpoint"]["api"] == "chat" and interec["tool_calls_executed"] == 4
    assert all(c["valid_share"] == 1.0 and c["model_path"] == f"fake-chat at {server}" for c in out["cards"].values())
    bodies = _Chat.bodies
    assert {b["path"] for b in bodies} == {"/v1/chat/completions"} and {b["auth"] for b in bodies} == {"Bearer secret"}
    assert sum("tools" in b for b in bodies) == 8  # the tool-using row's requests only
    assert "fake-chat" in (profile.results_dir(tmp_path) / "eval_card.md").read_text()
    # The run folder keeps the answers beside the completions path's cache: a second run asks nothing
    cache = tmp_path / "runs" / "smoke" / "served" / "responses_chat.jsonl"
    assert len(cache.read_text().splitlines()) == 12
    again = run_served_rows(profile, tmp_path, log=lambda _: None)
    assert len(_Chat.bodies) == 12 and again["rows"] == out["rows"]
    assert [(c["endpoint"]["requests"], c["endpoint"]["cached"]) for c in again["cards"].values()] == [(0, 4), (0, 8)]


# --------------------------------------------------------------------------------------------
# Resume: the response cache replays answered turns, so a killed run asks only what is missing
# --------------------------------------------------------------------------------------------

def stable(record) -> dict:
    """A record without its times (wall and tool latency), which differ from run to run."""
    data = dataclasses.asdict(record)
    data.pop("wall_s")
    for call in data["tool_calls"]:
        call.pop("latency_s")
    return data


def sent(body: dict) -> dict:
    """The body as the client sent it (the fake server records the path and the auth header beside it)."""
    return {k: v for k, v in body.items() if k not in ("path", "auth")}


@pytest.mark.parametrize("reply", [
    ChatReply("", (NativeCall("call_up", "get_user_profile", "{}"),), "tool_calls", 100, 7),
    ChatReply("<think>x</think>", (NativeCall(None, "candidates_analyze", {"k": [1, 2]}),), "tool_calls", None, None),
    ChatReply(FIRST_TEN, (), "length", 12, None),
])
def test_a_cached_answer_replays_as_the_same_reply(reply):
    choice = json.loads(json.dumps(cached_choice(reply)))  # as read back from the cache file
    assert replayed_reply(choice) == reply
    assert replayed_reply({"text": FIRST_TEN}) is None  # not a chat answer: asked again, never trusted


def test_a_second_run_with_the_same_cache_asks_nothing_and_gives_the_same_rows(tmp_path, server):
    cache = tmp_path / "served" / "responses_chat.jsonl"
    first = evaluate(tmp_path, server, cache=cache)
    assert len(_Chat.bodies) == 18 and len(cache.read_text().splitlines()) == 18
    second = evaluate(tmp_path, server, cache=cache)
    assert len(_Chat.bodies) == 18  # every turn replayed: the server is asked nothing
    assert second.row == first.row and [stable(r) for r in second.records] == [stable(r) for r in first.records]
    endpoint = second.card["endpoint"]
    assert (endpoint["requests"], endpoint["cached"], endpoint["timed"], endpoint["failed"]) == (0, 18, 0, {})
    assert endpoint["latency_s"]["mean"] is None and endpoint["prompt_tokens"]["mean"] is None  # replays: untimed
    assert endpoint["cache"] == {"loaded": 18, "skipped_lines": 0, "entries": 18}
    evaluate(tmp_path, server, cache=cache, seed=1)  # another setting is another request: all asked again
    assert len(_Chat.bodies) == 36


def test_a_rerun_asks_exactly_the_requests_that_failed(tmp_path, server):
    cache = tmp_path / "responses_chat.jsonl"
    users = [task.messages[1]["content"] for task in af.tasks(6)]
    fails = {(users[1], 2), (users[4], 0)}  # instance 1 at its answer turn, instance 4 at its first turn
    failed: list[dict] = []

    def failing(body: dict) -> tuple[int, Any]:
        if (body["messages"][1]["content"], n_tool_messages(body)) in fails:
            failed.append(body)
            return 503, {"error": "overloaded"}
        return two_tools(body)

    behave(failing)
    first = evaluate(tmp_path, server, cache=cache, retries=0)
    assert [r.invalid_reason for r in first.records] == [None, "truncated", None, None, "truncated", None]
    assert first.card["endpoint"]["failed"] == {"http_503": 2} and first.card["endpoint"]["requests"] == 16
    assert len(failed) == 2 and len(cache.read_text().splitlines()) == 14  # given up: not cached
    behave(two_tools)
    asked_before = len(_Chat.bodies)
    second = evaluate(tmp_path, server, cache=cache, retries=0)
    rerun = by_conversation(_Chat.bodies[asked_before:])
    assert set(rerun) == {users[1], users[4]}  # the other conversations are replayed whole
    assert sorted(json.dumps(sent(c[0]), sort_keys=True) for c in rerun.values()) == \
        sorted(json.dumps(b, sort_keys=True) for b in failed)  # the very requests that failed, rebuilt by replay
    assert len(rerun[users[1]]) == 1 and len(rerun[users[4]]) == 3  # then instance 4's turns never reached
    assert all(r.valid for r in second.records) and second.row["H@10"] == pytest.approx(3 / 6)
    assert (second.card["endpoint"]["requests"], second.card["endpoint"]["cached"]) == (4, 14)


def test_a_torn_last_cache_line_is_skipped_and_only_the_lost_request_is_asked(tmp_path, server):
    cache = tmp_path / "responses_chat.jsonl"
    first = evaluate(tmp_path, server, cache=cache, n=3)
    lines = cache.read_bytes().splitlines(keepends=True)
    assert len(lines) == 9
    lost = json.loads(lines[-1])["key"]  # whichever answer came last
    cache.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # killed mid-write
    second = evaluate(tmp_path, server, cache=cache, n=3)
    assert [cache_key(server, sent(b)) for b in _Chat.bodies[9:]] == [lost]
    assert second.row == first.row and [stable(r) for r in second.records] == [stable(r) for r in first.records]
    endpoint = second.card["endpoint"]
    assert (endpoint["requests"], endpoint["cached"]) == (1, 8)
    assert endpoint["cache"] == {"loaded": 8, "skipped_lines": 1, "entries": 9}


def test_answers_without_usage_are_timed_but_left_out_of_the_token_means(tmp_path, server):
    def no_usage(body: dict) -> tuple[int, Any]:
        status, answer = two_tools(body)
        return status, {k: v for k, v in answer.items() if k != "usage"}

    behave(no_usage)
    cache = tmp_path / "responses_chat.jsonl"
    result = evaluate(tmp_path, server, variant="r", n=2, cache=cache)
    endpoint = result.card["endpoint"]
    assert (endpoint["tokens_from"], endpoint["timed"], endpoint["prompt_tokens"]["mean"]) == ({"none": 2}, 2, None)
    assert all(r.valid and r.tokens_generated == 0 for r in result.records)
    replayed = evaluate(tmp_path, server, variant="r", n=2, cache=cache)
    assert len(_Chat.bodies) == 2 and [stable(r) for r in replayed.records] == [stable(r) for r in result.records]
