"""GPU-only code paths checked with stand-ins (issue 14): the vLLM engine is shut down after each
evaluation (a second engine at vLLM's default memory share does not fit beside a live one; the stand-in
has the two shutdown entry points vLLM versions offer), and the final save under ZeRO-3 writes the
gathered weights, not a shard."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

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


def test_under_zero3_the_final_save_writes_the_gathered_weights(tmp_path, monkeypatch):
    """Issue 14: under ZeRO-3 a process's own parameters are shards; the saved policy must hold the weights
    every process gathers through ``accelerator.get_state_dict``, not the main process's shard."""
    import torch
    from safetensors.torch import load_file

    from recrepro.models import load_causal_lm
    from recrepro.rl.policy_io import save_final
    from tests.unit import rta_fixtures as rf

    loaded = load_causal_lm(rf.tiny_policy_dir(str(tmp_path / "model")), device="cpu")
    gathered = {k: torch.full_like(v, 0.25) for k, v in loaded.model.state_dict().items()}
    accelerator = SimpleNamespace(
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)), num_processes=4,
        is_main_process=True, wait_for_everyone=lambda: None, unwrap_model=lambda m: m,
        get_state_dict=lambda model: gathered)
    trainer = SimpleNamespace(accelerator=accelerator, model=loaded.model, processing_class=loaded.tokenizer)
    final = save_final(trainer, tmp_path / "final", {"k": 1})
    saved = load_file(final / "model.safetensors")
    assert saved and all(torch.equal(t, torch.full_like(t, 0.25)) for t in saved.values())
    assert not (final / "replicas.json").exists()  # no process holds whole weights to compare


def test_lora_under_a_zero3_launch_is_refused_before_training(monkeypatch):
    from recrepro.config import load_profile
    from recrepro.rl.policy_io import refuse_lora_under_zero3

    profile = load_profile("smoke", {"rta.use_lora": True})
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(ValueError, match="rta.use_lora: LoRA policies are not saved from ZeRO-3 shards"):
        refuse_lora_under_zero3(profile)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    refuse_lora_under_zero3(profile)
