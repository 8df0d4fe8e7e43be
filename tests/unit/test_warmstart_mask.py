"""The warm start trains on exactly the generated tokens of the rollout engine's token layout."""

from __future__ import annotations

import os

import pytest
import torch

from recrepro.agent.env import env_tools
from recrepro.agent.teacher import encode_transcript
from recrepro.agent.warmstart import WarmStartSettings, warm_start
from recrepro.models import load_causal_lm
from tests.unit import agent_fakes as af
from tests.unit import rta_fixtures as rf

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    folder = rf.tiny_policy_dir(str(tmp_path_factory.mktemp("ws") / "model"))
    loaded = load_causal_lm(folder, device="cpu")
    hit, _ = rf.transcripts("tirr", 1)[0]
    example = encode_transcript(loaded.tokenizer, hit, env_tools(af.env_factory()()))
    return loaded, example, folder


def _masked_loss(model, ids, mask):
    """Mean next-token loss over exactly the tokens with mask 1 (computed here, not by TRL)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    targets = torch.tensor(ids[1:])
    losses = torch.nn.functional.cross_entropy(logits[:-1], targets, reduction="none")
    keep = torch.tensor(mask[1:], dtype=torch.bool)
    return float(losses[keep].mean())


@pytest.mark.slow
def test_loss_is_taken_on_exactly_the_generated_tokens(policy):
    loaded, (ids, mask), _ = policy
    assert 0 < sum(mask) < len(mask) // 2  # prompt and tool results dominate and must carry no loss
    expected = _masked_loss(loaded.model, ids, mask)
    losses = warm_start(loaded.model, loaded.tokenizer, [(ids, mask)], WarmStartSettings(steps=1, batch_size=1, learning_rate=0.0,
                                                                       warmup_steps=1), progress=False)
    assert losses == [pytest.approx(expected, rel=1e-4)]


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(policy):
    loaded, example, _ = policy
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    losses = warm_start(loaded.model, loaded.tokenizer, [example] * 4, WarmStartSettings(steps=6, batch_size=2, learning_rate=5e-3,
                                                                       warmup_steps=1), progress=False)
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert any(not torch.equal(before[n], p) for n, p in loaded.model.named_parameters())
    assert not loaded.model.training


@pytest.mark.slow
def test_the_same_seed_gives_the_same_weights(policy):
    _, example, folder = policy
    settings = WarmStartSettings(steps=3, batch_size=2, learning_rate=5e-3, warmup_steps=1, seed=7)
    runs = []
    for _ in range(2):
        fresh = load_causal_lm(folder, device="cpu")
        losses = warm_start(fresh.model, fresh.tokenizer, [example] * 3, settings, progress=False)
        runs.append((losses, {n: p.detach().clone() for n, p in fresh.model.named_parameters()}))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][n], runs[1][1][n]) for n in runs[0][1])


def test_getters_find_start_models_and_only_the_build_step_builds_them(tmp_path):
    """Issue 13: reading the starting model, or loading the agent backend, never builds or fine-tunes one."""
    from recrepro.agent.evaluate import load_backend
    from recrepro.config import load_profile
    from recrepro.models import ModelNotBuilt
    from recrepro.rl.rta import build_starting_model, starting_model

    profile = load_profile("smoke", {"warmstart.enabled": False, "run.name": "t"})
    with pytest.raises(ModelNotBuilt, match="tiny-qwen3-s: the tiny model 'tiny-qwen3' is not built"):
        starting_model(profile, tmp_path)
    with pytest.raises(ModelNotBuilt):
        load_backend(profile, tmp_path)
    assert not (profile.run_dir(tmp_path) / "models").exists()
    built = build_starting_model(profile, tmp_path, progress=False)
    assert starting_model(profile, tmp_path) == built and built.endswith("models/tiny-qwen3-s")
    warm = load_profile("smoke", {"run.name": "t"})  # the same run folder
    with pytest.raises(ModelNotBuilt, match="tiny-qwen3-s-warm: the warm-started model is not built"):
        starting_model(warm, tmp_path)  # the base exists; its warm start does not
