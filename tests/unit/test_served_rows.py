"""Table 1's LLMRank and InteRecAgent rows from a served model (issue 17): the endpoint client against a
local OpenAI-compatible server, the rows, their cards, and the "not run" rows they replace."""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer

import pytest

from recrepro.agent.parser import format_answer
from recrepro.config import ConfigError, load_profile
from recrepro.evaluation import first_ten_row
from recrepro.agent.evaluate import eval_subset
from recrepro.data.pipeline import load_benchmark
from recrepro.stages.data import run_data
from recrepro.stages.evaluate import SERVED_LABELS, measured_models, run_served_rows
from recrepro.tables import not_run_models
from tests.unit import rta_fixtures as rf
from tests.unit.fake_http import JsonHandler

FIRST_TEN = format_answer(range(1, 11))


class _Completions(JsonHandler):
    """Answers every prompt with the list [1, ..., 10] and records the request bodies. ``mode``:
    "ok"; "flaky" (a 429 before each answer); "malformed" (JSON without choices). Prompts in ``fail``
    get a 503; with ``usage`` the response counts tokens: prompt = characters, completion = 7."""

    bodies: list[dict] = []
    mode = "ok"
    fail: set[str] = set()
    usage = False

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        if not isinstance(body["prompt"], str):  # as transformers serve: one string prompt per request
            self.send_error(400, "prompt must be a string")
            return
        if body["prompt"] in self.fail:
            self.send_error(503, "overloaded")
            return
        if self.mode == "flaky" and sum(b["prompt"] == body["prompt"] for b in self.bodies) % 2:
            self.send_error(429, "slow down")
            return
        # As some servers do: the stop string is returned with the text
        choices = [{"index": 0, "text": FIRST_TEN + body["stop"][0], "finish_reason": "stop"}]
        usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": 7} if self.usage else None
        answer = {"choices": choices, **({"usage": usage} if usage else {})}
        self.send_json(200, answer if self.mode != "malformed" else {"error": "oops"})


@pytest.fixture()
def server():
    _Completions.bodies, _Completions.mode, _Completions.fail, _Completions.usage = [], "ok", set(), False
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Completions)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


@pytest.mark.timeout(300)
def test_served_rows_are_scored_like_every_llm_row(tmp_path, server, monkeypatch):
    model = str(rf.tiny_policy_dir(str(tmp_path / "model")))  # its tokenizer renders the prompts
    overrides = {"run.name": "smoke", "data.max_users": 40, "agent.eval_instances": 6, "served.base_url": server,
                 "served.model": "fake-served", "served.tokenizer": model, "served.api_key_env": "FAKE_KEY"}
    profile = load_profile("smoke", overrides)
    run_data(profile, tmp_path)
    monkeypatch.delenv("FAKE_KEY", raising=False)
    with pytest.raises(ValueError, match="FAKE_KEY is not set"):
        run_served_rows(profile, tmp_path, log=lambda _: None)
    monkeypatch.setenv("FAKE_KEY", "secret")
    out = run_served_rows(profile, tmp_path, log=lambda _: None)
    samples = eval_subset(profile, load_benchmark(profile, "ml-100k", tmp_path).samples["test"])
    reference = first_ten_row(profile, "ml-100k", samples, tmp_path)
    assert [r["model"] for r in out["rows"]] == list(SERVED_LABELS.values())
    for row in out["rows"]:  # the server answers [1..10] everywhere: exactly the First ten reference
        assert row["n"] == 6 and all(row[m] == reference[m] for m in ("H@1", "H@5", "H@10", "N@5", "N@10"))
    cards = out["cards"]
    assert all(c["valid_share"] == 1.0 and c["model_path"] == f"fake-served at {server}" for c in cards.values())
    bodies = _Completions.bodies
    assert {b["path"] for b in bodies} == {"/v1/completions"} and {b["auth"] for b in bodies} == {"Bearer secret"}
    assert {b["model"] for b in bodies} == {"fake-served"} and len(bodies) == 12  # 6 instances x 2 rows
    assert all(b["temperature"] == 0.0 for b in bodies)  # greedy evaluation, sent explicitly
    table = out["table1"]
    assert set(table[table["source"] == "measured"]["model"]) >= set(SERVED_LABELS.values())
    assert not set(not_run_models(measured_models(profile))) & {"LLMRank", "InteRecAgent"}
    # The one command of the README: the served rows of an existing run, then its not-run rows
    from recrepro.stages.evaluate import main

    sets = [f"{k}={v}" for k, v in overrides.items()]
    assert main(["--profile", "smoke", "--root", str(tmp_path), "--served", "--set", *sets]) == 0
    assert len(_Completions.bodies) == 12  # every answer replayed from the run's response cache
    with pytest.raises(SystemExit, match="names no served model"):
        main(["--profile", "smoke", "--root", str(tmp_path), "--served"])


def test_without_a_served_model_nothing_runs_and_the_rows_stay_not_run(tmp_path):
    profile = load_profile("smoke")
    messages: list[str] = []
    assert run_served_rows(profile, tmp_path, log=messages.append) == {"rows": [], "cards": {}}
    assert "stay 'not run'" in messages[0]
    assert {"LLMRank", "InteRecAgent"} <= set(not_run_models(measured_models(profile)))


@pytest.mark.parametrize("overrides, named", [
    ({"served.base_url": "http://localhost:8000/v1"}, "served.model, served.tokenizer"),
    ({"served.base_url": "localhost:8000", "served.model": "m", "served.tokenizer": "t"}, "served.base_url"),
])
def test_served_settings_are_checked(overrides, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_profile("smoke", overrides)


@pytest.mark.timeout(300)
def test_endpoint_failures_are_retried_or_scored_invalid_never_a_crash(tmp_path, server):
    from recrepro.agent.evaluate import AgentBackend
    from recrepro.agent.generators import OpenAICompletionsGenerator
    from transformers import AutoTokenizer

    model = str(rf.tiny_policy_dir(str(tmp_path / "model")))
    profile = load_profile("smoke", {"run.name": "smoke", "data.max_users": 40, "agent.eval_instances": 3})
    run_data(profile, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(model)

    def rows(url: str, retries: int) -> dict:
        generator = OpenAICompletionsGenerator(url, "fake", tokenizer, retries=retries, backoff_s=0.0, timeout_s=5)
        return run_served_rows(profile, tmp_path, backend=AgentBackend(generator, tokenizer, "fake", None),
                               log=lambda _: None)

    _Completions.mode = "flaky"  # one 429 per request, then the answer: retried, every answer valid
    flaky = rows(server, retries=2)
    for card in flaky["cards"].values():
        assert card["valid_share"] == 1.0 and card["endpoint"]["retried"] == {"rate_limited": 3}
        assert card["endpoint"]["failed"] == {} and card["endpoint"]["requests"] == 3
    _Completions.mode = "malformed"  # no choices: given up at once, scored truncated
    bad = rows(server, retries=2)
    for card in bad["cards"].values():
        assert card["valid_share"] == 0.0 and card["invalid_reasons"]["truncated"] == 1.0
        assert card["endpoint"]["failed"] == {"malformed_response": 3} and card["endpoint"]["retried"] == {}
    assert all(r["H@10"] == 0.0 and r["n"] == 3 for r in bad["rows"])
    unreachable = rows("http://127.0.0.1:9/v1", retries=1)  # nothing listens on port 9
    card = unreachable["cards"]["ml-100k/LLMRank (served)"]
    assert card["valid_share"] == 0.0 and sum(card["endpoint"]["failed"].values()) == 3
    assert all(kind.startswith("unreachable") for kind in card["endpoint"]["failed"])
    assert "given up: unreachable" in (profile.results_dir(tmp_path) / "eval_card.md").read_text()


# --------------------------------------------------------------------------------------------
# The response cache (a killed evaluation resumes) and the per-request figures
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(rf.tiny_policy_dir(str(tmp_path_factory.mktemp("tok_model")))))


def _requests(tokenizer, n: int) -> list:
    from recrepro.agent.generators import GenRequest

    return [GenRequest(i, tokenizer.encode(f"question number {i}", add_special_tokens=False)) for i in range(n)]


def _client(url: str, tokenizer, cache=None, **kwargs):
    from recrepro.agent.generators import OpenAICompletionsGenerator

    return OpenAICompletionsGenerator(url, "fake", tokenizer, retries=0, backoff_s=0.0, timeout_s=5, cache_path=cache,
                                      **kwargs)


def _ask(generator, requests, max_new_tokens: int = 16, seed: int = 0) -> list:
    from recrepro.agent.generators import RolloutSettings

    return generator.generate(requests, RolloutSettings(), max_new_tokens, seed)


def test_the_cache_replays_answers_and_a_rerun_asks_only_what_failed(tmp_path, server, tokenizer):
    from recrepro.agent.generators import GenOutput

    cache = tmp_path / "served" / "responses.jsonl"
    requests = _requests(tokenizer, 6)
    prompts = [tokenizer.decode(r.ids, skip_special_tokens=False) for r in requests]
    _Completions.fail = {prompts[1], prompts[4]}  # given up (no retries): scored truncated, not cached
    first_client = _client(server, tokenizer, cache)
    first = _ask(first_client, requests)
    assert len(_Completions.bodies) == 6 and first[1] == first[4] == GenOutput([], False)
    answered = first[0]
    assert answered.stopped and all(first[i] == answered for i in (0, 2, 3, 5))
    stats = first_client.stats()
    assert (stats["requests"], stats["cached"], stats["failed"], stats["timed"]) == (6, 0, {"http_503": 2}, 4)
    assert len(cache.read_text().splitlines()) == 4 and stats["cache"] == {"loaded": 0, "skipped_lines": 0,
                                                                             "entries": 4}
    _Completions.fail = set()  # the resumed run asks exactly the two given up, and replays the rest
    second_client = _client(server, tokenizer, cache)
    assert second_client.stats()["cache"] == {"loaded": 4, "skipped_lines": 0, "entries": 4}
    second = _ask(second_client, requests)
    assert sorted(b["prompt"] for b in _Completions.bodies[6:]) == sorted([prompts[1], prompts[4]])
    assert second == [answered] * 6
    stats = second_client.stats()
    assert (stats["requests"], stats["cached"], stats["failed"], stats["timed"]) == (2, 4, {}, 2)
    third_client = _client(server, tokenizer, cache)  # everything answered: the server is asked nothing
    assert _ask(third_client, requests) == second and len(_Completions.bodies) == 8
    stats = third_client.stats()
    assert (stats["requests"], stats["cached"], stats["timed"]) == (0, 6, 0)
    assert stats["latency_s"] == {"mean": None, "p50": None, "p90": None, "max": None}  # replays are not timed
    assert stats["prompt_tokens"] == {"mean": None}


def test_a_torn_last_line_and_a_corrupt_line_are_skipped_counted_and_asked_again(tmp_path, server, tokenizer):
    from recrepro.agent.endpoint import ResponseCache, cache_key
    from recrepro.agent.generators import RolloutSettings

    cache = tmp_path / "responses.jsonl"
    requests = _requests(tokenizer, 3)
    answers = _ask(_client(server, tokenizer, cache), requests)
    lines = cache.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3
    torn_key = json.loads(lines[2])["key"]  # whichever answer came last
    # A kill mid-write: the last line cut in half; and a corrupt line in the middle
    kept = lines[0] + b"{not json\n" + lines[1]
    cache.write_bytes(kept + lines[2][: len(lines[2]) // 2])
    loaded = ResponseCache(cache)
    assert loaded.summary() == {"loaded": 2, "skipped_lines": 2, "entries": 2}
    assert cache.read_bytes() == kept  # the torn tail is cut, so the next answer starts a line of its own
    client = _client(server, tokenizer, cache)
    assert _ask(client, requests) == answers
    asked = [b["prompt"] for b in _Completions.bodies[3:]]
    assert [cache_key(server, client._body(p, RolloutSettings(), 16, 0)) for p in asked] == [torn_key]
    assert client.stats()["cached"] == 2 and client.stats()["requests"] == 1
    assert ResponseCache(cache).summary() == {"loaded": 3, "skipped_lines": 1, "entries": 3}  # middle one stays


def test_a_changed_setting_misses_the_cache(tmp_path, server, tokenizer):
    from recrepro.agent.endpoint import cache_key

    cache = tmp_path / "responses.jsonl"
    requests = _requests(tokenizer, 2)
    _ask(_client(server, tokenizer, cache), requests)
    assert len(_Completions.bodies) == 2
    for change, asked in [({"max_new_tokens": 17}, 4), ({"seed": 1}, 6), ({}, 6)]:  # {}: the first settings, cached
        _ask(_client(server, tokenizer, cache), requests, **change)
        assert len(_Completions.bodies) == asked, change
    _ask(_client(server.replace("127.0.0.1", "localhost"), tokenizer, cache), requests)
    assert len(_Completions.bodies) == 8  # another base_url is another endpoint
    body = {"model": "m", "prompt": "p", "max_tokens": 4, "seed": 0, "temperature": 0.0, "top_p": 1.0, "stop": ["x"]}
    base = cache_key("http://h/v1", body)
    assert cache_key("http://h/v1/", body) == base  # a trailing slash is the same endpoint
    for field, value in [("model", "n"), ("prompt", "q"), ("max_tokens", 5), ("seed", 1), ("temperature", 0.6),
                         ("top_p", 0.9), ("stop", ["y"])]:
        assert cache_key("http://h/v1", {**body, field: value}) != base, field


def test_latency_and_tokens_per_request(tmp_path, server, tokenizer):
    from recrepro.agent.endpoint import RequestStats

    requests = _requests(tokenizer, 3)
    client = _client(server, tokenizer)
    outputs = _ask(client, requests)  # no usage from the server: our own token counts
    stats = json.loads(json.dumps(client.stats()))  # JSON-ready as it stands
    assert (stats["requests"], stats["timed"], stats["tokens_from"], stats["cache"]) == (3, 3, {"tokenizer": 3}, None)
    assert stats["prompt_tokens"]["mean"] == sum(len(r.ids) for r in requests) / 3
    assert stats["completion_tokens"]["mean"] == sum(len(o.new_ids) for o in outputs) / 3
    latency = stats["latency_s"]
    assert 0 <= latency["p50"] <= latency["p90"] <= latency["max"] and 0 <= latency["mean"] <= latency["max"]
    assert stats["paper"]["source"] == "PAPER.md 1.3"
    assert (stats["paper"]["latency_s"], stats["paper"]["tokens"]) == ([16, 21], [2600, 3700])
    _Completions.usage = True  # the server's usage wins: prompt = characters, completion = 7
    client.reset_stats()
    assert client.stats()["requests"] == 0 and client.stats()["timed"] == 0
    _ask(client, requests, seed=1)
    stats = client.stats()
    assert stats["tokens_from"] == {"usage": 3} and stats["completion_tokens"]["mean"] == 7
    assert stats["prompt_tokens"]["mean"] == sum(len(b["prompt"]) for b in _Completions.bodies[3:]) / 3
    exact = RequestStats()  # the summary's arithmetic on known latencies
    for seconds in (4.0, 1.0, 3.0, 2.0):
        exact.sent(seconds, 10, 2)
    exact.sent(None)  # given up: counted as a request, not timed
    assert exact.summary()["latency_s"] == {"mean": 2.5, "p50": 2.5, "p90": 3.7, "max": 4.0}
    assert (exact.summary()["requests"], exact.summary()["timed"]) == (5, 4)
    exact.reset()
    assert exact.summary()["latency_s"]["max"] is None and exact.summary()["requests"] == 0


@pytest.mark.timeout(300)
def test_a_served_evaluation_resumes_from_the_run_folder(tmp_path, server):
    import pandas as pd

    from recrepro import paths
    from recrepro.agent.evaluate import served_cache_file

    model = str(rf.tiny_policy_dir(str(tmp_path / "model")))
    profile = load_profile("smoke", {"run.name": "smoke", "data.max_users": 40, "agent.eval_instances": 4,
                                     "served.base_url": server, "served.model": "fake-served",
                                     "served.tokenizer": model})
    run_data(profile, tmp_path)

    def run() -> tuple[dict, dict]:
        out = run_served_rows(profile, tmp_path, log=lambda _: None)
        written = {name: pd.read_parquet(paths.per_instance_file(profile, "ml-100k", name, tmp_path))
                   for name in SERVED_LABELS.values()}
        return out, written

    first, first_written = run()
    cache = served_cache_file(profile, tmp_path)
    assert cache == tmp_path / "runs" / "smoke" / "served" / "responses.jsonl"
    assert len(_Completions.bodies) == 8 and len(cache.read_text().splitlines()) == 8  # 4 instances x 2 rows
    second, second_written = run()
    assert len(_Completions.bodies) == 8  # nothing asked again
    assert second["rows"] == first["rows"]
    for name, table in first_written.items():
        pd.testing.assert_frame_equal(second_written[name], table)
    for card in second["cards"].values():
        assert (card["endpoint"]["requests"], card["endpoint"]["cached"]) == (0, 4)
    cache.write_text("".join(cache.read_text().splitlines(keepends=True)[:5]))  # killed after 5 answers
    third, _ = run()
    assert len(_Completions.bodies) == 11 and third["rows"] == first["rows"]  # exactly the 3 lost are asked
