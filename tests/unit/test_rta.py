"""Stage 1 (RTA) on TRL: config, reward verdicts, advantages and dropped groups, loss masks, training, resume.

The trainer tests run TRL's real GRPOTrainer loop on a real tiny Qwen3 whose sampling is replaced
by teacher scripts (``tests/unit/rta_fixtures.py``), so rollouts are multi-turn with real tool calls
and a known token layout, on 2 CPU cores in seconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from recrepro.agent.env import Episode, env_tools, tool_schemas
from recrepro.agent.parser import format_answer, format_tool_call
from recrepro.agent.prompt import PromptSpec, build_messages, instance_from_sample, render_prompt
from recrepro.agent.generators import stop_token_ids
from recrepro.agent.rollout import tool_suffix_text
from recrepro.config import load_profile
from recrepro import stamps
from recrepro.rl import grpo, rta
from recrepro.rl.policy_io import POLICY_KIND
from recrepro.rl.reward import ListwiseRewardFunc, assistant_turns, listwise_reward
from tests.unit import agent_fakes as af
from tests.unit import rta_fixtures as rf

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs" / "accelerate"


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------

def test_grpo_config_follows_the_profile(tmp_path):
    profile = load_profile("smoke")
    config = grpo.build_grpo_config(profile, tmp_path / "out", processes=1)
    assert config.num_generations == profile.rta.group_size
    assert config.scale_rewards == "none"  # PAPER.md 1.4: reward minus group mean
    assert (config.loss_type, config.beta, config.epsilon) == (profile.rta.loss_type, profile.rta.beta,
                                                               profile.rta.epsilon)
    assert config.temperature == pytest.approx(0.6) and config.top_p == profile.agent.top_p and config.top_k == 0
    assert config.max_completion_length == profile.rta.max_completion_length
    assert config.max_tool_calling_iterations == profile.agent.max_tool_calls
    assert config.generation_kwargs == {"max_new_tokens": profile.agent.max_new_tokens_per_turn}
    assert config.use_cpu and not config.bf16 and not config.gradient_checkpointing and not config.use_vllm
    assert config.report_to == [] or config.report_to in ("none", ["none"])
    assert config.seed == profile.run.seed and config.save_steps == profile.rta.save_steps
    # one optimiser step = rta.batch_size instances x G completions
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps == \
        profile.rta.batch_size * profile.rta.group_size
    assert config.generation_batch_size == profile.rta.batch_size * profile.rta.group_size


def test_paper_batch_is_split_over_processes_and_accumulation():
    paper = load_profile("paper")
    assert grpo.per_device_batch(paper, 4) == 4  # 64 instances x G=8 over 4 GPUs x 32 accumulation steps
    assert [grpo.per_device_batch(paper, n) for n in (1, 2, 8)] == [16, 8, 2]
    with pytest.raises(ValueError, match="cannot be split"):
        grpo.per_device_batch(load_profile("smoke", {"rta.batch_size": 3, "rta.gradient_accumulation_steps": 5}), 1)


def test_training_rows_hold_the_prompt_and_what_reset_needs_but_not_the_target_item():
    samples = rf.train_samples(3)
    rows = rta.training_rows(samples, af.views(), PromptSpec("tirr"))
    assert len(rows) == 3
    for row, sample in zip(rows, samples.to_dict("records")):
        assert row["prompt"] == build_messages(instance_from_sample(sample, af.views()), PromptSpec("tirr"))
        assert "target_item" not in row and "target_rating" not in row
        assert row["candidates"] == list(sample["candidates"]) and row["target_index"] == sample["target_index"]
    dataset = grpo.build_dataset(rows)
    assert dataset[0]["prompt"][0]["role"] == "system" and dataset[0]["prompt"][1]["role"] == "user"


def test_seeded_subset_is_deterministic_and_sorted():
    samples = af.synthetic().samples
    a, b = rta.seeded_subset(samples, 10, 7), rta.seeded_subset(samples, 10, 7)
    assert a.equals(b) and a["sample_id"].is_monotonic_increasing and len(a) == 10
    assert len(rta.seeded_subset(samples, None, 7)) == len(samples)


# ------------------------------------------------------------------------------------------------
# The reward function: TRL's token ids -> turns -> Episode.finish -> listwise_reward
# ------------------------------------------------------------------------------------------------

def _completion(tok, turns, tool_texts, cut_last=False):
    """(ids, tool mask) laid out as TRL lays them out: turn + eos (1), tool suffix (0), ..."""
    ids, mask = [], []
    for i, turn in enumerate(turns):
        part = tok.encode(turn, add_special_tokens=False)
        if not (cut_last and i == len(turns) - 1):
            part = part + [tok.eos_token_id]
        ids += part
        mask += [1] * len(part)
        if i < len(tool_texts):
            suffix = tok.encode(tool_suffix_text(tok, [{"role": "tool", "name": "t", "content": tool_texts[i]}]),
                                add_special_tokens=False)
            ids += suffix
            mask += [0] * len(suffix)
    return ids, mask


def _reward_func(schemas):
    tok = af.tiny_tokenizer()
    return ListwiseRewardFunc(load_profile("smoke"), tok, schemas, grpo.RolloutTrace(), stop_token_ids(tok)), tok


def test_turns_are_the_runs_of_generated_tokens():
    tok = af.tiny_tokenizer()
    call = af.think() + format_tool_call("get_user_profile")
    answer = af.think("done") + format_answer(range(1, 11))
    ids, mask = _completion(tok, [call, answer], ["a profile"])
    turns, truncated = assistant_turns(ids, mask, set(stop_token_ids(tok)), tok)
    assert turns == [call, answer] and not truncated
    ids, mask = _completion(tok, [call, answer], ["a profile"], cut_last=True)
    assert assistant_turns(ids, mask, set(stop_token_ids(tok)), tok) == ([call, answer], True)
    assert assistant_turns([], [], set(stop_token_ids(tok)), tok) == ([], True)


def test_reward_verdicts_match_the_parser_and_the_reward():
    env = af.make_env()
    schemas = tool_schemas(env)
    func, tok = _reward_func(schemas)
    target = 3
    ranking = [3] + [i for i in range(1, 21) if i != 3][:9]
    call = af.think() + format_tool_call("get_user_profile")
    env.get_user_profile()  # the environment executed the call, as TRL would have
    ids, mask = _completion(tok, [call, af.think() + format_answer(ranking)], ["profile"])
    func.trace.tool_masks = [mask]
    out = func(prompts=[None], completions=[None], completion_ids=[ids], target_index=[target],
               candidates=[env.episode.candidates], environments=[env])
    assert out == [pytest.approx(1.1)]  # NDCG 1 + tool bonus (PAPER.md 1.4)
    b = func.last[0]
    expected = listwise_reward(env.episode.finish([call, af.think() + format_answer(ranking)], 10, schemas),
                               target, load_profile("smoke").reward, 10)
    assert b == expected


def test_an_unanswered_final_call_is_truncated_and_r_variant_calls_are_invalid():
    env = af.make_env()
    schemas = tool_schemas(env)
    func, tok = _reward_func(schemas)
    call = af.think() + format_tool_call("get_user_profile")
    ids, mask = _completion(tok, [call], [])  # TRL dropped the tool result: the budget was full
    func.trace.tool_masks = [mask]
    func(prompts=[None], completions=[None], completion_ids=[ids], target_index=[1],
         candidates=[env.episode.candidates], environments=[env])
    assert func.last[0].reason == "truncated" and func.last[0].total == -1.0
    # An unknown tool in the final turn stays a bad tool call (it was not merely cut off).
    bad = af.think() + format_tool_call("no_such_tool")
    ids, mask = _completion(tok, [bad], [])
    func.trace.tool_masks = [mask]
    func(prompts=[None], completions=[None], completion_ids=[ids], target_index=[1],
         candidates=[env.episode.candidates], environments=[af.make_env()])
    assert func.last[0].reason == "bad_tool_call"
    # Reasoning-only variant: no environment, schemas None -> any tool call is a bad tool call.
    r_func, _ = _reward_func(None)
    ids = tok.encode(call + format_answer(range(1, 11)), add_special_tokens=False) + [tok.eos_token_id]
    out = r_func(prompts=[None], completions=[None], completion_ids=[ids], target_index=[1],
                 candidates=[[str(i) for i in range(20)]])
    assert out == [-1.0] and r_func.last[0].reason == "bad_tool_call"
    ids = tok.encode(af.think() + format_answer(range(1, 11)), add_special_tokens=False) + [tok.eos_token_id]
    assert r_func(prompts=[None], completions=[None], completion_ids=[ids], target_index=[1],
                  candidates=[[str(i) for i in range(20)]]) == [pytest.approx(1.0)]  # no tool: no bonus


def test_drop_negative_groups_function():
    rewards = torch.tensor([[1.0], [-0.5], [-1.0], [-0.5], [float("nan")], [-1.0]])
    out, drop = grpo.drop_negative_groups(rewards, 2)
    assert drop.dropped_share == pytest.approx(1 / 3)
    assert (drop.groups_kept, drop.groups_total, drop.effective_batch) == (2, 3, 4)
    assert torch.isnan(out[2:4]).all() and out[0, 0] == 1.0 and out[1, 0] == -0.5
    assert torch.isnan(out[4, 0]) and out[5, 0] == -1.0  # an unscorable row does not make a group negative
    same, kept_all = grpo.drop_negative_groups(rewards, 2, enabled=False)
    assert same is rewards and (kept_all.groups_kept, kept_all.groups_total, kept_all.dropped_share) == (3, 3, 0.0)
    assert kept_all.metrics() == {"rta/dropped_group_share": 0.0, "rta/groups_kept": 3.0, "rta/groups_total": 3.0,
                                  "rta/effective_batch": 6.0}


# ------------------------------------------------------------------------------------------------
# Accelerate / DeepSpeed configs
# ------------------------------------------------------------------------------------------------

def _zero_stage(name: str) -> int:
    import re

    return int(re.search(r"zero(\d)", name).group(1))


def test_accelerate_and_deepspeed_configs_load():
    yamls, jsons = sorted(CONFIG_DIR.glob("*.yaml")), sorted(CONFIG_DIR.glob("*.json"))
    assert {"ddp.yaml", "zero2.yaml", "zero3.yaml"} <= {p.name for p in yamls}
    assert {"ds_zero2.json", "ds_zero3.json"} <= {p.name for p in jsons}
    for path in yamls:
        cfg = yaml.safe_load(path.read_text())
        for key in ("distributed_type", "num_processes", "mixed_precision", "num_machines", "machine_rank"):
            assert key in cfg, f"{path.name}: missing {key}"
        assert cfg["mixed_precision"] == "bf16" and cfg["num_processes"] == 4 and cfg["use_cpu"] is False
        if cfg["distributed_type"] == "DEEPSPEED":
            referenced = REPO / cfg["deepspeed_config"]["deepspeed_config_file"]  # relative to the repo root
            assert referenced.is_file(), f"{path.name}: {referenced} missing"
            ds = json.loads(referenced.read_text())
            assert ds["zero_optimization"]["stage"] == _zero_stage(path.name)
            # accelerate refuses DeepSpeed keys in the YAML when a DeepSpeed file is given
            assert not {"zero_stage", "offload_optimizer_device", "gradient_accumulation_steps"} & \
                set(cfg["deepspeed_config"])
        else:
            assert cfg["distributed_type"] == "MULTI_GPU"
    for path in jsons:
        ds = json.loads(path.read_text())
        zero = ds["zero_optimization"]
        assert zero["stage"] == _zero_stage(path.name) and zero["stage"] in (2, 3)
        assert ds["bf16"]["enabled"] == "auto"
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping",
                    "train_batch_size"):
            assert ds[key] == "auto", f"{path.name}: {key} must be filled in by the Trainer"
        if zero["stage"] == 3:  # save_pretrained of the final policy needs the gathered 16-bit weights
            assert zero["stage3_gather_16bit_weights_on_model_save"] is True
        if "offload_optimizer" in zero:
            assert zero["offload_optimizer"]["device"] == "cpu" and ds["optimizer"]["type"] == "AdamW"
        else:
            assert ds.get("zero_allow_untested_optimizer") is True  # the Trainer's own AdamW


# ------------------------------------------------------------------------------------------------
# The trainer: advantages, dropped groups, masks, a short run, resume
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rta")
    rf.tiny_policy_dir(str(folder / "model"))
    return folder


def _rows_for_batch(setup, group):
    return [dict(row) for row in setup.train_rows for _ in range(group)]


@pytest.mark.slow
def test_advantages_are_reward_minus_group_mean_and_all_negative_groups_are_dropped(workdir):
    setup = rf.setup(workdir / "adv", workdir / "model")
    preset = [1.0, 0.0, -0.5, 0.5, -1.0, -0.5, -1.0, -0.5]  # group 1 mean 0.25; group 2 all negative

    def fixed(completions, **_):
        return preset[: len(completions)]

    for drop in (True, False):
        model, tok = grpo.load_policy(setup.model_path, setup.profile)
        config = grpo.build_grpo_config(setup.profile, workdir / f"adv{drop}")
        trainer = grpo.grpo_trainer_class()(model=model, reward_funcs=[fixed], args=config,
                                            train_dataset=grpo.build_dataset(setup.train_rows), processing_class=tok,
                                            environment_factory=setup.env_factory, drop_all_negative_groups=drop)
        rf.script_trainer(trainer, "tirr", 2)
        trainer.model.train()
        out = trainer._generate_and_score_completions(_rows_for_batch(setup, 4))
        advantages = out["advantages"].tolist()
        assert advantages[:4] == pytest.approx([0.75, -0.25, -0.75, 0.25])  # no std division
        if drop:
            assert advantages[4:] == [0.0, 0.0, 0.0, 0.0]
            assert trainer._metrics["train"]["rta/dropped_group_share"] == [0.5]
            assert trainer._metrics["train"]["reward"] == [pytest.approx(0.25)]  # dropped rows left out
        else:
            assert advantages[4:] == pytest.approx([-0.25, 0.25, -0.25, 0.25])


class _PresetReward:
    """A reward function with fixed values per completion (built like :class:`ListwiseRewardFunc`)."""

    __name__ = "preset"
    values = [1.0, 0.0, -0.5, 0.5, -1.0, -0.5, -1.0, -0.5]  # group 1 mixed; group 2 all negative

    def __init__(self, *args):
        pass

    def __call__(self, completions, **_):
        return self.values[: len(completions)]


@pytest.mark.slow
def test_a_step_logs_the_effective_batch_after_the_drop(workdir, tmp_path, capsys):
    setup = rf.setup(tmp_path, workdir / "model", n=2)  # one step: 2 instances x G = 4
    trainer, _ = grpo.build_trainer(setup, reward_class=_PresetReward)
    rf.script_trainer(trainer, "tirr", 2)
    trainer.train()
    log = pd.read_csv(setup.log_path)
    assert list(log["step"]) == [1]
    row = log.iloc[0]
    assert (row["groups_kept"], row["groups_total"], row["effective_batch"]) == (1, 2, 4)
    assert row["dropped_group_share"] == 0.5
    assert "groups kept 1/2 (effective batch 4 trajectories)" in capsys.readouterr().out


@pytest.mark.slow
def test_loss_mask_is_zero_exactly_on_tool_observation_tokens(workdir):
    setup = rf.setup(workdir / "mask", workdir / "model")
    trainer, reward = grpo.build_trainer(setup, ListwiseRewardFunc)
    rf.script_trainer(trainer, "tirr", 2)
    tok = trainer.processing_class
    captured = {}
    generate = trainer._generate

    def spy_generate(prompts):
        captured["gen"] = generate(prompts)
        return captured["gen"]

    trainer._generate = spy_generate
    trainer.model.train()
    inputs = trainer._generate_and_score_completions(_rows_for_batch(setup, 4))
    prompt_ids, completion_ids, tool_mask = captured["gen"][:3]
    assert [b.reason for b in reward.last] == [None] * 8 and all(b.n_tool_calls >= 2 for b in reward.last)

    tools = env_tools(setup.env_factory())
    stops = stop_token_ids(tok)
    for i, row in enumerate(_rows_for_batch(setup, 4)):
        # Prompt: exactly the chat-template rendering the evaluation engine uses; none of it in the completion.
        assert prompt_ids[i] == tok.encode(render_prompt(tok, row["prompt"], tools), add_special_tokens=False)
        # Completion: teacher turns (mask 1, with their end-of-turn token) and tool results (mask 0), computed
        # here independently from the transcripts our own environment produced.
        layouts = []
        for transcript in rf.transcripts("tirr", 2)[i // 4]:
            ids, mask = [], []
            for turn, tool_messages in zip(transcript.turns, transcript.tool_messages):
                part = tok.encode(turn, add_special_tokens=False) + [stops[0]]
                ids, mask = ids + part, mask + [1] * len(part)
                if tool_messages:
                    suffix = tok.encode(tool_suffix_text(tok, tool_messages), add_special_tokens=False)
                    ids, mask = ids + suffix, mask + [0] * len(suffix)
            layouts.append((ids, mask))
        assert (completion_ids[i], tool_mask[i]) in layouts
        observation = [t for t, m in zip(completion_ids[i], tool_mask[i]) if not m]
        assert "<tool_response>" in tok.decode(observation) and "<tool_response>" not in \
            tok.decode([t for t, m in zip(completion_ids[i], tool_mask[i]) if m])

    # The gradient of the loss reaches a completion token's log-probability exactly where the mask is 1.
    logps_seen = {}
    per_token = trainer._get_per_token_logps_and_entropies

    def spy_logps(*args, **kwargs):
        logps, entropies, aux = per_token(*args, **kwargs)
        if logps.requires_grad:
            logps.retain_grad()
            logps_seen["logps"] = logps
        return logps, entropies, aux

    trainer._get_per_token_logps_and_entropies = spy_logps
    trainer.current_gradient_accumulation_steps = 1
    inputs["advantages"] = torch.ones_like(inputs["advantages"])  # every trajectory pushes, so zeros mean masked
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    grad = logps_seen["logps"].grad
    width = inputs["completion_ids"].shape[1]
    assert grad.shape == (8, width)  # log-probabilities of completion positions only: the prompt gets none
    expected = torch.zeros(8, width, dtype=torch.bool)
    for i, mask in enumerate(tool_mask):
        expected[i, : len(mask)] = torch.tensor(mask, dtype=torch.bool)
    assert torch.equal(grad != 0, expected)
    assert int((~expected[:, :]).sum()) > 100  # the observations are many tokens, all without gradient


def _params(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.slow
def test_a_short_training_run_has_finite_loss_changes_parameters_and_logs(workdir, tmp_path):
    setup = rf.setup(tmp_path, workdir / "model", n=2, **{"rta.max_steps": 2})
    trainer, _ = grpo.build_trainer(setup, ListwiseRewardFunc)
    rf.script_trainer(trainer, "tirr", 2)
    before = _params(trainer.model)
    trainer.train()
    after = _params(trainer.model)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert len(changed) > len(before) // 2
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(np.isfinite(losses))
    log = pd.read_csv(setup.log_path)
    assert list(log["step"]) == [1, 2]
    assert set(rta.read_train_log(setup.log_path).columns) >= {"reward", "valid_share", "tool_calls_mean",
                                                               "positive_with_tool_share", "dropped_group_share",
                                                               "loss", "calls_get_user_profile"}
    assert (log["valid_share"] == 1.0).all() and (log["tool_calls_mean"] >= 2).all()
    assert log["dropped_group_share"].isin([0.0, 0.5, 1.0]).all()  # two groups per step
    assert (log["positive_with_tool_share"].dropna() == 1.0).all()  # every scripted trajectory calls tools
    assert log["reward"].between(-0.5, 1.1).all()


@pytest.mark.slow
def test_resume_from_a_checkpoint_gives_the_same_next_step(workdir, tmp_path):
    def run(out: Path, resume: str | None = None):
        setup = rf.setup(out, workdir / "model", n=4, **{"rta.max_steps": 2, "rta.save_steps": 1})
        trainer, reward = grpo.build_trainer(setup, ListwiseRewardFunc)
        rf.script_trainer(trainer, "tirr", 4)
        trainer.train(resume_from_checkpoint=resume)
        history = [h for h in trainer.state.log_history if "loss" in h]
        return _params(trainer.model), history, [b.total for b in reward.last]

    full_params, full_history, full_rewards = run(tmp_path / "full")
    checkpoint = tmp_path / "full" / "checkpoint-1"
    assert (checkpoint / "optimizer.pt").is_file() and (checkpoint / "rng_state.pth").is_file()
    # An interrupted run: only checkpoint-1 exists in its folder; it resumes and does step 2.
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    import shutil

    shutil.copytree(checkpoint, resumed_dir / "checkpoint-1")
    shutil.copyfile(tmp_path / "full" / "train_log.csv", resumed_dir / "train_log.csv")
    resumed_params, resumed_history, resumed_rewards = run(resumed_dir, str(resumed_dir / "checkpoint-1"))
    assert len(set(full_rewards)) > 1  # step 2 drew both scripted answers: the RNG matters
    assert resumed_rewards == full_rewards  # the same step-2 rollouts (data order and RNG restored)
    assert full_history[-1]["grad_norm"] > 0
    assert resumed_history[-1]["step"] == full_history[-1]["step"] == 2
    # Same process, same thread count, same op order: the CPU result is bit-for-bit identical.
    assert resumed_history[-1]["loss"] == full_history[-1]["loss"]
    assert resumed_history[-1]["grad_norm"] == full_history[-1]["grad_norm"]
    assert all(torch.equal(resumed_params[name], value) for name, value in full_params.items())
    assert list(pd.read_csv(resumed_dir / "train_log.csv")["step"]) == [1, 2]  # the log continues


@pytest.mark.slow
def test_trained_r_variant_runs_without_tools(workdir, tmp_path):
    setup = rf.setup(tmp_path, workdir / "model", variant="r", n=2)
    trainer, reward = grpo.build_trainer(setup, ListwiseRewardFunc)
    rf.script_trainer(trainer, "r", 2)
    assert not trainer.tools and trainer.environment_factories is None
    trainer.train()
    assert all(b.n_tool_calls == 0 and b.valid for b in reward.last)
    assert {round(b.total, 3) for b in reward.last} <= {1.0, -0.5}  # no tool, no bonus
    log = pd.read_csv(setup.log_path)
    assert log["tool_calls_mean"].iloc[-1] == 0


def test_episode_for_r_variant_has_no_tools():
    episode = Episode(candidates=tuple(str(i) for i in range(20)), max_tool_calls=10)
    verdict = episode.finish([af.think() + format_answer(range(1, 11))], 10, None)
    assert verdict.valid


@pytest.mark.slow
def test_lora_trains_adapters_only_and_saves_a_plain_model(workdir, tmp_path):
    from recrepro.models import load_causal_lm

    setup = rf.setup(tmp_path, workdir / "model", n=2, **{"rta.use_lora": True, "rta.lora_r": 4,
                                                           "rta.lora_alpha": 8})
    trainer, _ = grpo.build_trainer(setup, ListwiseRewardFunc)
    rf.script_trainer(trainer, "tirr", 2)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = _params(trainer.model)
    trainer.train()
    after = _params(trainer.model)
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_" not in n)
    assert any(not torch.equal(before[n], after[n]) for n in trainable)
    final = grpo.save_final(trainer, tmp_path / "final", {"config": "a", "step": np.int64(2)})
    assert grpo.finished_policy(final, {"config": "a", "step": 2})
    assert not grpo.finished_policy(final, {"config": "b", "step": 2})
    loaded = load_causal_lm(final, device="cpu")
    assert not any("lora" in n for n, _ in loaded.model.named_parameters())
    assert (final / "tokenizer_config.json").is_file()


def test_a_policy_finished_with_the_same_config_is_reused_not_retrained(workdir, tmp_path, monkeypatch):
    """After ``accelerate launch ... --stage train`` the one-process stage must not resume DeepSpeed checkpoints."""
    setup = rf.setup(tmp_path, workdir / "model", n=2)
    final = setup.output_dir.parent / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    stamp = rta.config_stamp(setup.profile, setup.variant, setup.model_path, setup.dataset)

    def no_training(*args, **kwargs):
        raise AssertionError("build_trainer called")

    monkeypatch.setattr(grpo, "build_trainer", no_training)
    stamps.write_beside(final, POLICY_KIND, stamp)
    reused = rta.train_policy(setup, log=lambda _: None)
    assert reused["trainer"] is None and reused["final"] == final
    stamps.write_beside(final, POLICY_KIND, {**stamp, "seed": -1})  # another config: train again
    with pytest.raises(AssertionError, match="build_trainer called"):
        rta.train_policy(setup, log=lambda _: None)


def test_with_colocated_vllm_every_policy_trains_in_a_process_of_its_own(monkeypatch, tmp_path):
    """Issue 14: TRL's colocated vLLM engine stays alive after training, so on GPUs run_rta trains through
    a job process even for a single policy and only evaluates in its own process (one engine each)."""
    from recrepro.stages import rta as rta_stage

    calls = []
    monkeypatch.setattr(rta_stage, "vllm_colocate_available", lambda profile: True)
    monkeypatch.setattr(rta_stage, "build_starting_model", lambda profile, root: "start")
    monkeypatch.setattr(rta_stage, "train_side_by_side", lambda profile, root, variants, model_path, force=False,
                        log=print, min_jobs=2: calls.append((tuple(variants), model_path, min_jobs)))
    monkeypatch.setattr(rta_stage, "run_variant", lambda profile, root, dataset, v, force=False, log=print: {"v": v})
    out = rta_stage.run_rta(load_profile("smoke"), tmp_path, variant="tirr")
    assert calls == [(("tirr",), "start", 1)] and out["runs"] == {"ml-100k/tirr": {"v": "tirr"}}
    monkeypatch.setattr(rta_stage, "vllm_colocate_available", lambda profile: False)
    calls.clear()
    rta_stage.run_rta(load_profile("smoke"), tmp_path, variant="tirr")  # CPU, one job: no job process
    assert calls == []
