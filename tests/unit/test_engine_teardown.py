"""The vLLM engine is shut down after each evaluation (issue 14: a second engine in the same process at
vLLM's default memory share does not fit beside a live one). vLLM is not installed on CPU machines, so
the engine here is a stand-in with the two shutdown entry points vLLM versions offer."""

from __future__ import annotations

from types import SimpleNamespace

from recrepro.agent.evaluate import AgentBackend
from recrepro.agent.generators import HFGenerator, VLLMGenerator


def _generator(llm) -> VLLMGenerator:
    generator = object.__new__(VLLMGenerator)  # no tokenizer needed to test the teardown
    generator.llm = llm
    return generator


def test_close_calls_llm_shutdown_once_and_drops_the_engine():
    calls = []
    generator = _generator(SimpleNamespace(shutdown=lambda: calls.append("llm")))
    AgentBackend(generator, None, "m", None).close()
    generator.close()  # a second close is a no-op
    assert calls == ["llm"] and generator.llm is None


def test_close_falls_back_to_the_engine_core_client():
    calls = []
    core = SimpleNamespace(shutdown=lambda: calls.append("core"))
    generator = _generator(SimpleNamespace(llm_engine=SimpleNamespace(engine_core=core)))
    generator.close()
    assert calls == ["core"] and generator.llm is None


def test_closing_a_transformers_backend_is_a_no_op():
    generator = object.__new__(HFGenerator)
    AgentBackend(generator, None, "m", None).close()
    assert not hasattr(HFGenerator, "close")
