"""`python -m recrepro plan`: the memory and time formulas against hand-computed cases (issue 14)."""

from __future__ import annotations

import pytest

from recrepro.__main__ import main
from recrepro.config import load_profile
from recrepro.plan import (GIB, SHAPES, Hardware, PlanError, check_fits, hours, micro_batch, steps, train_memory,
                           training_samples)

QWEN3_4B = SHAPES["Qwen/Qwen3-4B-Instruct-2507"]


def test_kv_cache_per_token_of_qwen3_4b():
    assert QWEN3_4B.kv_bytes_per_token == 2 * 36 * 8 * 128 * 2 == 147_456  # 144 KiB


def test_training_memory_of_the_paper_profile_by_hand():
    """Qwen3-4B, 4 x 80 GiB, b = 64 x 8 / (4 x 32) = 4 completions of 4,096 + 6,144 tokens."""
    profile = load_profile("paper")
    assert micro_batch(profile, 4) == 4
    mem = train_memory(profile, QWEN3_4B, Hardware(gpus=4, gpu_memory_gib=80))
    assert mem.states == 16 * 4.0e9 / 4
    assert mem.reference == 0.0  # beta 0
    assert mem.vllm_pool == 0.3 * 80 * GIB and mem.vllm_weights == 2 * 4.0e9
    per_completion = 36 * 10_240 * 2560 * 2 + 6144 * 151_936 * 2  # saved layer inputs + bf16 logits
    assert mem.activations == 4 * per_completion + 6144 * 151_936 * 4 == 18_751_684_608
    assert mem.validation_kv == 8 * 10_240 * 147_456 == 12_079_595_520
    assert mem.total == 16e9 + 0.3 * 80 * GIB + 18_751_684_608 + 3 * GIB
    assert round(mem.total / GIB, 2) == 59.37


def test_a_profile_that_does_not_fit_names_the_key():
    profile = load_profile("paper")
    with pytest.raises(PlanError, match="change rta.gradient_accumulation_steps"):
        check_fits(train_memory(profile, QWEN3_4B, Hardware(gpu_memory_gib=40)), Hardware(gpu_memory_gib=40), "x")
    small_pool = load_profile("paper", {"rta.vllm_gpu_memory_utilization": 0.05})
    with pytest.raises(PlanError, match="rta.vllm_gpu_memory_utilization leaves no KV cache"):
        check_fits(train_memory(small_pool, QWEN3_4B, Hardware()), Hardware(), "x")
    with pytest.raises(PlanError, match="rta.gradient_accumulation_steps: .* 512 completions per step cannot be split"):
        micro_batch(load_profile("paper", {"rta.gradient_accumulation_steps": 3}), 4)


def test_steps_and_time_from_the_paper_statistics():
    profile = load_profile("paper")
    assert training_samples("CDs_and_Vinyl") == int((13_826 - 5_437) * 0.8) == 6711
    assert steps(profile, 6711) == 105 * 3
    low, high = hours(315 * 64 * 8, Hardware(gpus=4, concurrency=64))
    assert (low, high) == (161_280 * 16 / 256 / 3600, 161_280 * 21 / 256 / 3600)


def test_plan_cli_prints_the_commands_and_exits_non_zero_when_it_does_not_fit(capsys):
    assert main(["plan", "--profile", "paper"]) == 0
    out = capsys.readouterr().out
    assert "vLLM max_model_len 10240 tokens" in out and "= 59.4 GiB; micro-batch 4" in out
    assert "-m recrepro.stages.rta --profile paper --dataset Video_Games --variant tirr --stage train" in out
    assert main(["plan", "--profile", "paper", "--gpu-memory-gib", "40"]) == 3
    assert "change rta.gradient_accumulation_steps" in capsys.readouterr().err


def test_plan_names_the_trained_baselines_gpu_commands_and_checks_their_batch(capsys):
    assert main(["plan", "--profile", "paper"]) == 0
    out = capsys.readouterr().out
    for name in ("sft", "sdpo", "llara", "rere"):  # issue 16: the paper profile names their GPU commands
        assert (f"accelerate launch --config_file configs/accelerate/ddp.yaml -m recrepro.stages.evaluate "
                f"--profile paper --dataset CDs_and_Vinyl --baseline {name} --stage train") in out
        assert f"python -m recrepro.stages.evaluate --profile paper --baseline {name}   # 1 GPU" in out
    assert "LoRA on 4 GPUs with DDP, global batch 64" in out
    assert main(["plan", "--profile", "paper", "--set", "sft.batch_size=6"]) == 3
    assert "sft.batch_size=6 does not split over 4 GPUs" in capsys.readouterr().err
