"""Table 1's LLMRank and InteRecAgent rows from a served model (issue 17): the endpoint client against a
local OpenAI-compatible server, the rows, their cards, and the "not run" rows they replace."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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

FIRST_TEN = format_answer(range(1, 11))


class _Completions(BaseHTTPRequestHandler):
    """Answers every prompt with the list [1, ..., 10] and records the request bodies. ``mode``:
    "ok"; "flaky" (a 429 before each answer); "malformed" (JSON without choices)."""

    bodies: list[dict] = []
    mode = "ok"

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        if not isinstance(body["prompt"], str):  # as transformers serve: one string prompt per request
            self.send_error(400, "prompt must be a string")
            return
        if self.mode == "flaky" and sum(b["prompt"] == body["prompt"] for b in self.bodies) % 2:
            self.send_error(429, "slow down")
            return
        # As some servers do: the stop string is returned with the text
        choices = [{"index": 0, "text": FIRST_TEN + body["stop"][0], "finish_reason": "stop"}]
        data = json.dumps({"choices": choices} if self.mode != "malformed" else {"error": "oops"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server():
    _Completions.bodies, _Completions.mode = [], "ok"
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
    assert len(_Completions.bodies) == 24
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
