"""Tiny Qwen3 models built offline: deterministic files, loadable like real models, growing sizes."""

from __future__ import annotations

import hashlib

import pytest

from recrepro.models import (TINY_SIZES, build_tiny_qwen3, is_tiny_name, load_causal_lm, tiny_model_dir,
                             tiny_size_of)
from tests.unit.agent_fakes import tasks

CORPUS = [m["content"] for t in tasks(4) for m in t.messages] * 2


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_build_is_deterministic_and_loads_through_the_one_loader(tmp_path):
    a = build_tiny_qwen3("s", tmp_path / "a", corpus=CORPUS, seed=3, vocab_size=800)
    b = build_tiny_qwen3("s", tmp_path / "b", corpus=CORPUS, seed=3, vocab_size=800)
    assert digests(a) == digests(b)
    assert {"model.safetensors", "config.json", "tokenizer.json", "build_info.json"} <= set(digests(a))
    c = build_tiny_qwen3("s", tmp_path / "c", corpus=CORPUS, seed=4, vocab_size=800)
    assert digests(c)["model.safetensors"] != digests(a)["model.safetensors"]
    loaded = load_causal_lm(a, device="cpu")
    assert type(loaded.model).__name__ == "Qwen3ForCausalLM"
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.eos_token == "<|im_end|>"
    from trl.chat_template_utils import qwen3_chat_template

    assert loaded.tokenizer.chat_template == qwen3_chat_template
    assert loaded.model.config.hidden_size == TINY_SIZES["s"].hidden_size


def test_sizes_grow_and_names_resolve(tmp_path):
    specs = [TINY_SIZES[s] for s in ("s", "m", "l")]
    assert [s.hidden_size for s in specs] == sorted(s.hidden_size for s in specs)
    assert [s.num_layers for s in specs] == sorted(s.num_layers for s in specs)
    assert is_tiny_name("tiny-qwen3") and is_tiny_name("tiny-qwen3-l") and not is_tiny_name("Qwen/Qwen3-4B")
    assert tiny_size_of("tiny-qwen3") == "s" and tiny_size_of("tiny-qwen3-m") == "m"
    assert tiny_model_dir(tmp_path, "m") == tmp_path / "models" / "tiny-qwen3-m"
    with pytest.raises(ValueError):
        tiny_size_of("tiny-qwen3-xl")


def test_checkpointing_argument_follows_the_installed_transformers():
    """5.23 (CPU pins) names it activation_checkpointing; 5.17 (GPU pins) gradient_checkpointing."""
    import dataclasses

    from trl import GRPOConfig

    from recrepro.models import checkpointing_argument

    @dataclasses.dataclass
    class OldArgs:
        gradient_checkpointing: bool = False

    assert checkpointing_argument(OldArgs, True) == {"gradient_checkpointing": True}
    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    expected = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    assert checkpointing_argument(GRPOConfig, False) == {expected: False}
