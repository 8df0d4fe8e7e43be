"""The endpoint client against a real server: ``transformers serve`` (issue 14), on a tiny model.

The served rows must be the same model's answers as the local backend gives: the same greedy turn
text for every instance, and the same rows. The untrained tiny model's greedy turns are mostly
newlines, so this checks the transport, the request format and the decoding path, not answer quality. ``transformers serve`` takes one string prompt per
request (the client once sent a list, which it refuses with 400).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from recrepro.agent.evaluate import eval_subset, evaluate_agent, load_backend, served_backend
from recrepro.agent.session import DatasetSession
from recrepro.config import load_profile
from recrepro.stages.data import run_data
from tests.unit import rta_fixtures as rf


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(model folder, base URL) of ``transformers serve`` running the tiny model on CPU."""
    model = str(rf.tiny_policy_dir(str(tmp_path_factory.mktemp("served_model"))))
    port = _free_port()
    command = [str(Path(sys.executable).with_name("transformers")), "serve", model, "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu"]
    server = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                                                            "HF_HUB_DISABLE_UPDATE_CHECK": "1"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"transformers serve exited: {server.stderr.read()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("transformers serve did not answer /health within 60 s")
        yield model, f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_served_answers_are_the_local_models_answers(tmp_path, served):
    model, url = served
    profile = load_profile("smoke", {"run.name": "smoke", "data.max_users": 40, "agent.eval_instances": 3,
                                     "agent.max_new_tokens_per_turn": 24, "served.base_url": url,
                                     "served.model": model, "served.tokenizer": model})
    run_data(profile, tmp_path)
    session = DatasetSession.open(profile, tmp_path, "ml-100k")
    samples = eval_subset(profile, session.bench.samples["test"])
    factory, views = session.env_factory(samples), session.views
    remote = evaluate_agent(profile, tmp_path, "ml-100k", samples, views, served_backend(profile), factory, "r",
                            "LLMRank (served)")
    local = evaluate_agent(profile, tmp_path, "ml-100k", samples, views,
                           load_backend(profile, tmp_path, model_path=model), factory, "r", "local")
    assert [r.turns for r in remote.records] == [r.turns for r in local.records]
    assert [r.invalid_reason for r in remote.records] == [r.invalid_reason for r in local.records]
    assert {k: v for k, v in remote.row.items() if k != "model"} == {k: v for k, v in local.row.items() if k != "model"}
    assert remote.card["model_path"] == f"{model} at {url}"
