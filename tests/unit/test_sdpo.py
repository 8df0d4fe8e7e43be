"""S-DPO baseline core: the softmax-DPO loss, the preference instances, the trainer, a tiny real run."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from recrepro.agent.parser import format_answer
from recrepro.agent.prompt import PromptSpec
from recrepro.baselines.sdpo import (BETA, N_NEGATIVES, TABLE1_NAME, SoftmaxPreferenceCollator, encode_preference, fit_preferences,
                                     fit_sdpo, negative_indices, sdpo_loss, sdpo_trainer_class, trainer_args,
                                     evaluate_sdpo, train_sdpo)
from recrepro.baselines.sft import encode_example, target_ranking
from recrepro.config import load_profile
from recrepro.models import load_causal_lm
from tests.unit import agent_fakes as af
from tests.unit import rta_fixtures as rf


def _t(*values):
    return torch.tensor(values, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------
# the loss
# ------------------------------------------------------------------------------------------------

def test_settings_are_the_s_dpo_code_defaults():
    assert N_NEGATIVES == 3 and BETA == 1.0  # softmax_dpo.sh: --neg_num 3 --beta 1


def test_loss_on_hand_computed_examples():
    # loss = log(1 + sum_j exp(d_j)), d_j = beta * (r_j - r_w), r = logp - ref_logp; margin = -log sum_j exp(d_j)
    # row A, beta 1: r_w = -1 - (-2) = 1; r = (0, 1); d = (-1, 0) -> log(2 + e^-1)
    losses, margins = sdpo_loss(_t(-1.0), _t([-3.0, -2.0]), _t(-2.0), _t([-3.0, -3.0]), beta=1.0)
    assert losses.tolist() == pytest.approx([0.8619948040582511], abs=1e-12)
    assert margins.tolist() == pytest.approx([-0.31326168751822286], abs=1e-12)  # -log(e^-1 + 1)
    # row B, beta 0.5: r_w = 2; r = (0, -2, -4); d = (-1, -2, -3) -> log(1 + e^-1 + e^-2 + e^-3)
    losses, margins = sdpo_loss(_t(-4.0), _t([-5.0, -7.0, -9.0]), _t(-6.0), _t([-5.0, -5.0, -5.0]), beta=0.5)
    assert losses.tolist() == pytest.approx([0.44018969856119533], abs=1e-12)
    assert margins.tolist() == pytest.approx([0.5923940355556196], abs=1e-12)  # -log(e^-1 + e^-2 + e^-3)
    # a batch of two rows, K = 1, equal log-ratios: log 2 and margin 0 in both
    losses, margins = sdpo_loss(_t(-1.0, -5.0), _t([-2.0], [-3.0]), _t(-1.5, -4.0), _t([-2.5], [-2.0]), beta=1.0)
    assert losses.tolist() == pytest.approx([math.log(2)] * 2, abs=1e-12) and margins.tolist() == [0.0, 0.0]


def test_one_negative_is_trls_dpo_sigmoid_loss():
    # TRL 1.16 trl/trainer/dpo_trainer.py: delta_score = chosen_logratios - rejected_logratios (l. 1383),
    # loss_type "sigmoid": -F.logsigmoid(self.beta * delta_score) (l. 1388); rewards/margins = beta * delta (l. 1595)
    gen = torch.Generator().manual_seed(0)
    chosen, ref_chosen, rejected, ref_rejected = (-20 * torch.rand(64, generator=gen, dtype=torch.float64)
                                                  for _ in range(4))
    for beta in (0.1, 1.0, 5.0):
        delta = (chosen - ref_chosen) - (rejected - ref_rejected)
        losses, margins = sdpo_loss(chosen, rejected.unsqueeze(1), ref_chosen, ref_rejected.unsqueeze(1), beta)
        torch.testing.assert_close(losses, -F.logsigmoid(beta * delta), rtol=0, atol=1e-12)
        torch.testing.assert_close(margins, beta * delta, rtol=0, atol=1e-12)


def test_loss_is_stable_for_large_log_ratios():
    losses, margins = sdpo_loss(_t(-1.0, -1.0), _t([-1.0, 2000.0], [-1.0, -3000.0]), _t(-1.0, -1.0),
                                _t([-1.0, 0.0], [-1.0, 0.0]), beta=1.0)
    assert torch.isfinite(losses).all() and torch.isfinite(margins).all()
    assert losses.tolist() == pytest.approx([2000.0, math.log(2)], abs=1e-9)  # softplus(2000) = 2000


def test_gradient_pushes_the_chosen_up_and_every_rejected_down():
    chosen = _t(-1.0).requires_grad_()
    rejected = _t([-3.0, -2.0]).requires_grad_()
    losses, _ = sdpo_loss(chosen, rejected, _t(-2.0), _t([-3.0, -3.0]), beta=1.0)
    losses.sum().backward()
    # dL/dd_j = e^d_j / (1 + sum e^d) and dL/dchosen = -beta * sum_j dL/dd_j (row A above)
    assert chosen.grad.tolist() == pytest.approx([-0.5776812017484818], abs=1e-12)  # < 0: raises log pi(y_w)
    assert rejected.grad[0].tolist() == pytest.approx([0.15536240349696362, 0.4223187982515182], abs=1e-12)  # > 0


def test_masked_negatives_are_left_out_with_zero_gradient():
    chosen = _t(-1.0, -1.0, -1.0).requires_grad_()
    rejected = _t([-3.0, -2.0, 9.0], [-3.0, float("-inf"), float("-inf")], [-5.0, -6.0, -7.0]).requires_grad_()
    ref_rejected = _t([-3.0, -3.0, 0.0], [-3.0, -3.0, float("-inf")], [-1.0, -1.0, -1.0])
    mask = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    losses, margins = sdpo_loss(chosen, rejected, _t(-2.0, -2.0, -2.0), ref_rejected, 1.0, mask=mask)
    # row 0 = row A (third negative masked); row 1: -inf marks two missing negatives, d = (-1,) -> log(1 + e^-1);
    # row 2: no negative left -> loss 0, margin +inf
    assert losses.tolist() == pytest.approx([0.8619948040582511, 0.31326168751822286, 0.0], abs=1e-12)
    assert margins.tolist()[:2] == pytest.approx([-0.31326168751822286, 1.0], abs=1e-12)
    assert margins[2].item() == math.inf
    losses.sum().backward()
    assert torch.isfinite(rejected.grad).all() and torch.isfinite(chosen.grad).all()
    assert rejected.grad[0, 2].item() == 0.0 and rejected.grad[1, 1:].tolist() == [0.0, 0.0]
    assert rejected.grad[2].tolist() == [0.0, 0.0, 0.0] and chosen.grad[2].item() == 0.0
    with pytest.raises(ValueError, match=r"\[batch, K\]"):
        sdpo_loss(_t(-1.0), _t(-1.0), _t(-1.0), _t(-1.0), 1.0)


# ------------------------------------------------------------------------------------------------
# training instances
# ------------------------------------------------------------------------------------------------

def test_negatives_are_distinct_never_the_target_and_seeded():
    for sample_id in range(50):
        negatives = negative_indices(20, 7, 3, seed=11, sample_id=sample_id)
        assert len(set(negatives)) == 3 and 7 not in negatives and all(1 <= n <= 20 for n in negatives)
        assert negatives == negative_indices(20, 7, 3, seed=11, sample_id=sample_id)
    draws = {tuple(negative_indices(20, 7, 3, seed=s, sample_id=4)) for s in range(10)}
    assert len(draws) > 5  # the seed matters
    assert negative_indices(3, 2, 5, seed=0, sample_id=0) in ([1, 3], [3, 1])  # at most n_candidates - 1
    with pytest.raises(ValueError, match="target_index 21 outside 1..20"):
        negative_indices(20, 21, 3, 0, 0)


def test_instance_is_the_sft_prompt_with_target_first_chosen_and_negative_first_rejected():
    tok, spec = af.tiny_tokenizer(), PromptSpec("r")
    rows = rf.train_samples(6).to_dict("records")
    for row in rows:
        ex = encode_preference(tok, row, af.views(), spec, top_k=10, n_negatives=3, seed=7)
        target = int(row["target_index"])
        sft = encode_example(tok, row, af.views(), spec, top_k=10)  # the TALLRec-like instance
        n_prompt = sft["completion_mask"].index(1)
        assert ex["prompt_ids"] == sft["input_ids"][:n_prompt] and ex["chosen_ids"] == sft["input_ids"][n_prompt:]
        assert tok.decode(ex["chosen_ids"]) == format_answer(target_ranking(20, target, 10)) + tok.eos_token
        assert len(ex["rejected_ids"]) == 3 and len(set(ex["negative_indices"])) == 3
        for negative, ids in zip(ex["negative_indices"], ex["rejected_ids"]):
            assert negative != target
            assert tok.decode(ids) == format_answer(target_ranking(20, negative, 10)) + tok.eos_token
        again = encode_preference(tok, row, af.views(), spec, top_k=10, n_negatives=3, seed=7)
        assert again == ex  # deterministic for a seed
    other = [encode_preference(tok, r, af.views(), spec, 10, 3, seed=8)["negative_indices"] for r in rows]
    assert other != [encode_preference(tok, r, af.views(), spec, 10, 3, seed=7)["negative_indices"] for r in rows]
    small = {**rows[0], "candidates": list(rows[0]["candidates"])[:2], "target_index": 2}
    assert encode_preference(tok, small, af.views(), spec, 10, 3, seed=7)["negative_indices"] == [1]


def test_collator_lays_out_chosen_then_rejected_rows_and_masks_missing_negatives():
    examples = [{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [[10], [11, 12, 13]]},
                {"prompt_ids": [20, 21], "chosen_ids": [22], "rejected_ids": [[23, 24]]}]
    batch = SoftmaxPreferenceCollator(pad_token_id=0)(examples)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0], [20, 21, 22, 0, 0, 0],  # chosen rows
                                           [5, 6, 7, 10, 0, 0], [5, 6, 7, 11, 12, 13],  # example 0's negatives
                                           [20, 21, 23, 24, 0, 0], [20, 0, 0, 0, 0, 0]]  # example 1's, stand-in
    assert batch["completion_mask"].tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0],
                                                 [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist()[5] == [1, 0, 0, 0, 0, 0]
    assert batch["rejected_mask"].tolist() == [[True, True], [True, False]]


def test_overlong_instances_are_dropped_and_none_left_is_an_error():
    examples = [{"prompt_ids": [1] * 4, "chosen_ids": [2], "rejected_ids": [[3, 3]]},
                {"prompt_ids": [1] * 4, "chosen_ids": [2], "rejected_ids": [[3], [3, 3, 3]]}]
    messages: list[str] = []
    assert fit_preferences(examples, 6, messages.append) == examples[:1]
    assert messages == ["[sdpo] dropped 1 of 2 examples longer than sft.max_length=6"]
    with pytest.raises(ValueError, match="sft.max_length=5: every sdpo training example is longer"):
        fit_preferences(examples, 5, messages.append)


# ------------------------------------------------------------------------------------------------
# the trainer on a tiny real model
# ------------------------------------------------------------------------------------------------

def _tiny_profile(**extra):
    # full batch (4 instances), a high rate: a tiny random model needs it (the smoke SFT uses 5e-3)
    return load_profile("smoke", {"sft.steps": 6, "sft.batch_size": 4, "sft.learning_rate": 1e-2,
                                  "sft.lora_dropout": 0.0, **extra})


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(rf.tiny_policy_dir(str(tmp_path_factory.mktemp("sdpo_model"))))


def _trainer(trainer_class, model_dir, tmp_path, examples):
    import datasets
    from peft import LoraConfig

    loaded = load_causal_lm(model_dir, device="cpu", padding_side="right")
    rows = datasets.Dataset.from_list(examples)
    trainer = trainer_class(model=loaded.model, args=trainer_args(_tiny_profile(), tmp_path, on_cpu=True),
                            train_dataset=rows, processing_class=loaded.tokenizer,
                            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                   task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # the same non-zero adapter in both trainers: policy != reference
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=gen))
    return trainer


def test_trainer_loss_with_one_negative_equals_trls_dpo_trainer(tiny_model, tmp_path):
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    tokenizer = load_causal_lm(tiny_model, device="cpu").tokenizer
    rows = rf.train_samples(4).to_dict("records")
    instances = [encode_preference(tokenizer, r, af.views(), PromptSpec("r"), 10, 1, seed=5) for r in rows]
    pairs = [{"prompt_ids": e["prompt_ids"], "chosen_ids": e["chosen_ids"], "rejected_ids": e["rejected_ids"][0]}
             for e in instances]
    stock = _trainer(DPOTrainer, tiny_model, tmp_path / "dpo",
                     [{"prompt": "a b", "chosen": " c", "rejected": " d"}])  # text rows: never read here
    ours = _trainer(sdpo_trainer_class(), tiny_model, tmp_path / "sdpo",
                    [{k: e[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for e in instances])
    with torch.no_grad():
        expected = stock.compute_loss(stock.model, DataCollatorForPreference(pad_token_id=0)(pairs))
        got = ours.compute_loss(ours.model, SoftmaxPreferenceCollator(pad_token_id=0)(instances))
    assert abs(expected.item() - math.log(2)) > 0.05  # the adapter makes policy and reference differ
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)


def _logps(model, tokenizer, instances):
    """Per instance: (log pi(chosen), [log pi(rejected_j)]) by a plain forward (no TRL)."""
    batch = SoftmaxPreferenceCollator(tokenizer.pad_token_id)(instances)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    token = torch.gather(logits[:, :-1].log_softmax(-1), 2, batch["input_ids"][:, 1:].unsqueeze(2)).squeeze(2)
    seq = (token * batch["completion_mask"][:, 1:]).sum(1)
    n = len(instances)
    return seq[:n], seq[n:].view(n, -1)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_short_run_raises_the_chosen_over_rejected_margin(tiny_model, tmp_path):
    profile = _tiny_profile()
    samples = rf.train_samples(4)
    messages: list[str] = []
    info = fit_sdpo(profile, tiny_model, samples, af.views(), tmp_path / "final", messages.append)
    assert info["steps"] == 6 and info["instances"] == 4 and len(info["losses"]) == 6 and not messages
    # step 1: the fresh adapter is zero, so the policy is the reference: every d_j = 0, the (soft-minimum)
    # margin is -log K and the loss log(1 + K)
    assert info["margins"][0] == pytest.approx(-math.log(N_NEGATIVES), abs=1e-5)
    assert info["losses"][0] == pytest.approx(math.log(1 + N_NEGATIVES), abs=1e-5)
    # then the logged (training-batch) margin rises at every step, and the loss falls
    assert all(later > earlier for earlier, later in zip(info["margins"], info["margins"][1:])), info["margins"]
    assert info["margins"][-1] > 3.0 and info["losses"][-1] < 0.1 and info["accuracies"][-1] == 1.0
    assert (tmp_path / "final" / "config.json").is_file() and not (tmp_path / "final" / "adapter_config.json").exists()

    # measured again on the saved model, by a plain forward, against the start model
    start, trained = (load_causal_lm(p, device="cpu", padding_side="right") for p in (tiny_model, tmp_path / "final"))
    spec = PromptSpec("r")
    instances = [encode_preference(start.tokenizer, r, af.views(), spec, 10, N_NEGATIVES, profile.run.seed)
                 for r in samples.to_dict("records")]
    chosen0, rejected0 = _logps(start.model, start.tokenizer, instances)
    chosen1, rejected1 = _logps(trained.model, trained.tokenizer, instances)
    gap0 = (chosen0 - rejected0.max(dim=1).values).mean().item()
    gap1 = (chosen1 - rejected1.max(dim=1).values).mean().item()
    assert gap1 > gap0 + 3.0, (gap0, gap1)  # log pi(chosen) - max_j log pi(rejected_j) rose by > 3 nats
    assert bool((chosen1 > rejected1.max(dim=1).values).all())  # every training target now beats its negatives


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    """A real ml-100k benchmark at tiny size (as in test_sft)."""
    from recrepro.stages.data import run_data

    root = tmp_path_factory.mktemp("sdpo")
    run_data(load_profile("smoke", {"run.name": "smoke", "data.max_users": 40}), root)
    return root


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_train_sdpo_runs_sft_first_writes_its_folder_and_caches(bench_root, tiny_model):
    # run.name keeps every profile in the benchmark's folder (overrides would name a run of its own)
    overrides = {"run.name": "smoke", "data.max_users": 40, "sft.steps": 1, "sft.train_instances": 2,
                 "sft.batch_size": 2, "sdpo.steps": 2, "sdpo.train_instances": 4, "agent.eval_instances": 3}
    profile = load_profile("smoke", overrides)
    messages: list[str] = []
    final = train_sdpo(profile, bench_root, "ml-100k", start_model=tiny_model, log=messages.append)
    assert final == bench_root / "runs" / "smoke" / "sdpo" / "ml-100k" / "final"
    info = json.loads((final / "sdpo_info.json").read_text())
    assert info["steps"] == 2 and info["instances"] == 4 and info["settings"]["n_negatives"] == N_NEGATIVES
    stamp = json.loads((final / "stamp.json").read_text())
    sft_stamp = json.loads((bench_root / "runs/smoke/sft/ml-100k/final/stamp.json").read_text())
    assert stamp["kind"] == "sdpo" and stamp["inputs"]["sft_stage"] == sft_stamp  # the SFT stage ran first and is the start
    assert (final / "config.json").is_file() and not (final / "adapter_config.json").exists()
    messages.clear()
    assert train_sdpo(profile, bench_root, "ml-100k", start_model=tiny_model, log=messages.append) == final
    assert messages == ["[sft] ml-100k: config and start model unchanged, skipping training",
                        "[sdpo] ml-100k: config and SFT model unchanged, skipping training"]
    messages.clear()
    train_sdpo(profile, bench_root, "ml-100k", force=True, start_model=tiny_model, log=messages.append)
    assert messages == ["[sft] ml-100k: config and start model unchanged, skipping training"]  # S-DPO retrained
    assert json.loads((final / "stamp.json").read_text()) == stamp
    # Its Table 1 row: the TALLRec-like evaluation (one greedy answer turn) under its own name and folder
    evaluated = evaluate_sdpo(profile, bench_root, "ml-100k", final, log=messages.append)
    assert evaluated["row"]["model"] == TABLE1_NAME and evaluated["row"]["n"] == 3 and not evaluated["skipped"]
    assert (bench_root / "runs/smoke/sdpo/ml-100k/eval_info.json").is_file()
    again = evaluate_sdpo(profile, bench_root, "ml-100k", final, log=messages.append)
    assert again["skipped"] and again["row"] == evaluated["row"]
