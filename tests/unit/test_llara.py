"""LLaRA baseline core: the projector, hybrid prompts and embeddings, the curriculum, gradients, the SASRec
item table (training period only), a tiny run that lowers the answer loss, train_llara's folder and cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recrepro import paths
from recrepro.agent.parser import format_answer
from recrepro.agent.prompt import PromptSpec
from recrepro.baselines import llara as L
from recrepro.baselines.sequential import train_sequential
from recrepro.baselines.sft import encode_example, target_ranking
from recrepro.config import RecBoleConfig, load_profile
from recrepro.data.pipeline import load_benchmark
from recrepro.models import load_causal_lm
from recrepro.stages.data import run_data
from tests.unit import agent_fakes as af
from tests.unit import rta_fixtures as rf

REC_SIZE = 16


def _table() -> L.ItemTable:
    """Random item vectors for the synthetic items of the training period (as a SASRec fitted there)."""
    syn = af.synthetic()
    known = sorted(syn.log.loc[syn.log["timestamp"] < syn.valid_start, "item_id"].unique())
    return L.ItemTable.from_embeddings(known, np.random.default_rng(0).normal(size=(len(known), REC_SIZE)))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(rf.tiny_policy_dir(str(tmp_path_factory.mktemp("llara_model"))))


def _loaded(model_dir):
    loaded = load_causal_lm(model_dir, device="cpu", padding_side="right")
    return loaded, L.add_placeholder_token(loaded.model, loaded.tokenizer)


def _examples(tokenizer, placeholder_id, n=4):
    return [L.encode_hybrid_example(tokenizer, row, af.views(), PromptSpec("r"), 10, placeholder_id)
            for row in rf.train_samples(n).to_dict("records")]


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


# ------------------------------------------------------------------------------------------------
# settings, projector, curriculum
# ------------------------------------------------------------------------------------------------

def test_original_settings_are_the_codes():
    s = L.ORIGINAL_SETTINGS
    assert (s["rec_size"], s["lora_r"], s["lora_alpha"], s["lora_dropout"]) == (64, 8, 32, 0.1)  # main.py
    assert s["learning_rate"] == {"movielens": 8e-4, "steam": 5e-4, "lastfm": 7e-4}  # train_*.sh
    assert (s["batch_size"], s["max_epochs"], s["n_candidates"]) == (128, 5, 20)


def test_projector_is_linear_gelu_linear():
    torch.manual_seed(0)
    projector = L.ItemProjector(REC_SIZE, 24)
    first, act, second = projector.mlp
    assert (first.in_features, first.out_features, second.in_features, second.out_features) == (16, 24, 24, 24)
    assert isinstance(act, torch.nn.GELU) and act.approximate == "none"
    x = torch.randn(5, REC_SIZE)
    by_hand = F.linear(F.gelu(F.linear(x, first.weight, first.bias)), second.weight, second.bias)
    torch.testing.assert_close(projector(x), by_hand, rtol=0, atol=0)


def test_hybrid_probability_on_hand_computed_steps():
    # TrainCollater: hybrid when random() < cur_step / max_step, cur_step = 1, 2, ...
    assert [L.hybrid_probability(s, 4) for s in (1, 2, 3, 4, 5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert L.hybrid_probability(3, 8) == 0.375 and L.hybrid_probability(1, 10) == 0.1
    assert L.hybrid_probability(0, 10) == 0.0 and L.hybrid_probability(7, 7) == 1.0
    assert L.hybrid_probability(1, 1) == 1.0
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        L.hybrid_probability(1, 0)
    assert L.training_batches(10, 4, 6, 1) == 6 and L.training_batches(10, 4, -1, 2) == 6  # ceil(10/4) * 2


def test_collator_draws_hybrid_examples_per_example_with_the_schedule():
    table = L.ItemTable.from_embeddings(["a", "b"], np.ones((2, 3)))
    examples = [{"input_ids": [5, 9, 6, 9, 7], "completion_mask": [0, 0, 0, 0, 1], "item_ids": ["a", "zz"]}] * 8
    collator = L.CurriculumCollator(pad_token_id=0, placeholder_id=9, table=table, total_steps=4, seed=11)
    for step in (1, 2, 3, 4, 5):
        batch = collator(examples)
        expected = np.random.default_rng([11, step]).random(8) < min(1.0, step / 4)
        hybrid = (batch["item_rows"] >= 0).any(dim=1).numpy()
        assert hybrid.tolist() == expected.tolist() and collator.hybrid_shares[-1] == expected.mean()
        for row, is_hybrid in zip(batch["item_rows"].tolist(), hybrid):
            assert row == ([-1, 1, -1, 0, -1] if is_hybrid else [-1] * 5)  # "a" is row 1, unknown "zz" row 0
    assert collator.hybrid_shares[-2:] == [1.0, 1.0]
    assert batch["labels"].tolist()[0] == [-100, -100, -100, -100, 7]
    # the share follows the schedule over many examples; validation (train=False) is always hybrid
    many = L.CurriculumCollator(0, 9, table, total_steps=4, seed=3)
    assert abs(float((many(examples * 250)["item_rows"] >= 0).any(1).float().mean()) - 0.25) < 0.04
    left = L.CurriculumCollator(0, 9, table, total_steps=10**6, seed=3, train=False, padding_side="left")
    batch = left([examples[0], {"input_ids": [9, 4], "item_ids": ["b"]}])
    assert batch["input_ids"].tolist() == [[5, 9, 6, 9, 7], [0, 0, 0, 9, 4]]
    assert batch["attention_mask"].tolist()[1] == [0, 0, 0, 1, 1]
    assert batch["item_rows"].tolist() == [[-1, 1, -1, 0, -1], [-1, -1, -1, 2, -1]]
    assert batch["labels"].tolist()[1] == [-100] * 5  # no completion mask: nothing to learn


# ------------------------------------------------------------------------------------------------
# hybrid prompts and embeddings on a tiny model
# ------------------------------------------------------------------------------------------------

def test_hybrid_example_is_the_sft_example_with_one_placeholder_per_item(tiny_model):
    loaded, ph = _loaded(tiny_model)
    tok = loaded.tokenizer
    assert tok.convert_ids_to_tokens(ph) == L.PLACEHOLDER
    assert tok.encode(f"a {L.PLACEHOLDER}\n", add_special_tokens=False).count(ph) == 1  # one token
    assert loaded.model.get_input_embeddings().num_embeddings == ph + 1  # the tiny vocabulary had no spare row
    for row in rf.train_samples(3).to_dict("records"):
        ex = L.encode_hybrid_example(tok, row, af.views(), PromptSpec("r"), 10, ph)
        assert ex["item_ids"] == [str(i) for i in row["history_items"]] + [str(i) for i in row["candidates"]]
        assert ex["input_ids"].count(ph) == len(row["history_items"]) + 20
        text = tok.decode(ex["input_ids"])
        lines = text.split("\n")
        assert sum(line.endswith(" " + L.PLACEHOLDER) for line in lines) == len(ex["item_ids"])
        assert [line for line in lines if line.startswith("[")][0].endswith(L.PLACEHOLDER)  # candidate [1]
        sft = encode_example(tok, row, af.views(), PromptSpec("r"), 10)
        assert text.replace(" " + L.PLACEHOLDER, "") == tok.decode(sft["input_ids"])  # nothing else changes
        n_prompt = ex["completion_mask"].index(1)
        answer = format_answer(target_ranking(20, int(row["target_index"]), 10)) + tok.eos_token
        assert tok.decode(ex["input_ids"][n_prompt:]) == answer and set(ex["completion_mask"][n_prompt:]) == {1}


def test_inputs_embeds_are_word_embeddings_except_at_hybrid_placeholders(tiny_model):
    loaded, ph = _loaded(tiny_model)
    embeddings = loaded.model.get_input_embeddings()
    torch.testing.assert_close(embeddings.weight[ph], embeddings.weight[:ph].mean(0), rtol=0, atol=1e-6)
    table = _table()
    model = L.llara_model(loaded.model, table, _lora(), seed=0)
    examples = _examples(loaded.tokenizer, ph, 2)
    examples[1] = {**examples[1], "item_ids": ["never-seen"] + examples[1]["item_ids"][1:]}  # unknown -> zero vector
    batch = L.CurriculumCollator(0, ph, table, 1, seed=0, train=False)(examples)
    ids, rows = batch["input_ids"], batch["item_rows"]
    with torch.no_grad():
        embeds = model.inputs_embeds(ids, rows)
        words = embeddings(ids)
        where = rows >= 0
        assert torch.equal(where, ids == ph) and int(where.sum()) == sum(len(e["item_ids"]) for e in examples)
        assert torch.equal(embeds[~where], words[~where])
        projected = model.projector(table.matrix[rows[where]])
        assert torch.equal(embeds[where], projected)
        first_unknown = torch.nonzero(where[1]).view(-1)[0]
        torch.testing.assert_close(embeds[1, first_unknown], model.projector(torch.zeros(REC_SIZE)), rtol=0, atol=1e-6)
        assert rows[0][where[0]].tolist() == table.rows(examples[0]["item_ids"])
        # text-only: every position keeps its word embedding (the placeholder's own row included)
        assert torch.equal(model.inputs_embeds(ids, torch.full_like(rows, -1)), words)
        # and the hybrid path of the model is the embedding path of the LLM itself
        plain = model.llm(input_ids=ids, attention_mask=batch["attention_mask"]).logits
        via = model(ids, batch["attention_mask"], torch.full_like(rows, -1)).logits
        torch.testing.assert_close(via, plain, rtol=0, atol=1e-5)


def test_one_backward_reaches_the_projector_and_lora_only(tiny_model):
    loaded, ph = _loaded(tiny_model)
    model = L.llara_model(loaded.model, _table(), _lora(), seed=0)
    with torch.no_grad():  # B starts at zero, which would leave every lora_A gradient exactly zero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    batch = L.CurriculumCollator(0, ph, _table(), 1, seed=0)(_examples(loaded.tokenizer, ph, 2))
    assert (batch["item_rows"] >= 0).any(1).all()  # step 1 of 1: every example hybrid
    model(**batch).loss.backward()
    params = dict(model.named_parameters())
    lora = {n: p for n, p in params.items() if "lora_" in n}
    projector = {n: p for n, p in params.items() if n.startswith("projector.")}
    frozen = {n: p for n, p in params.items() if n not in lora and n not in projector}
    assert len(projector) == 4 and len(lora) > 0 and len(frozen) > 0
    for name, param in {**lora, **projector}.items():
        assert param.requires_grad and param.grad is not None and float(param.grad.abs().sum()) > 0, name
    for name, param in frozen.items():
        assert not param.requires_grad and param.grad is None, name
    assert any("embed_tokens" in n for n in frozen)  # the word embeddings (placeholder row too) stay frozen
    assert "item_table" not in params and not model.item_table.requires_grad


@pytest.mark.timeout(120)
def test_a_short_run_lowers_the_answer_loss_and_saves_a_loadable_model(tiny_model, tmp_path):
    # A random tiny model's logits are its frozen, tied, small embeddings times a normed state: LoRA can
    # lower the loss by about 1 nat per token here (it levels off near 6), not to 0.
    profile = load_profile("smoke", {"sft.steps": 16, "sft.batch_size": 4, "sft.learning_rate": 1e-2,
                                     "sft.lora_dropout": 0.0})
    samples, table = rf.train_samples(4), _table()
    info = L.fit_llara(profile, tiny_model, samples, af.views(), table, tmp_path / "final", lambda _: None)
    assert info["steps"] == 16 and info["instances"] == 4 and info["curriculum_batches"] == 16
    shares = [float((np.random.default_rng([profile.run.seed, s]).random(4) < s / 16).mean()) for s in range(1, 17)]
    assert info["hybrid_shares"] == shares and shares[-1] == 1.0  # the curriculum as scheduled
    assert {p.name for p in (tmp_path / "final").iterdir()} >= {"config.json", L.PROJECTOR_FILE, L.ITEM_TABLE_FILE}
    assert not (tmp_path / "final" / "adapter_config.json").exists() and not (tmp_path / "final" / "trainer").exists()

    def answer_loss(model, tokenizer, ph):
        batch = L.CurriculumCollator(tokenizer.pad_token_id, ph, table, 1, 0, train=False)(
            _examples(tokenizer, ph, 4))
        with torch.no_grad():
            return model(**batch).loss.item()

    start, ph = _loaded(tiny_model)  # the start of training: LoRA B = 0 and the same seeded projector
    before = answer_loss(L.llara_model(start.model, table, _lora(), seed=profile.run.seed), start.tokenizer, ph)
    saved = L.load_llara(tmp_path / "final", device="cpu")
    after = answer_loss(saved.model, saved.tokenizer, saved.placeholder_id)
    assert saved.placeholder_id == ph and saved.table.item_ids == table.item_ids
    assert info["losses"][-1] < info["losses"][0] - 0.5
    assert after < before - 0.5, (before, after)  # hybrid prompts, mean loss per answer token (7.09 -> 6.15)
    batch = L.CurriculumCollator(0, ph, table, 1, 0, train=False, padding_side="left")(
        [{k: e[k] for k in ("input_ids", "item_ids")} for e in _examples(saved.tokenizer, ph, 2)])
    new = saved.model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert new.shape == (2, 4)  # greedy continuation of the hybrid prompts


# ------------------------------------------------------------------------------------------------
# the SASRec item table and the stage
# ------------------------------------------------------------------------------------------------

SHARED = {"run.name": "smoke", "data.max_users": 40}


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    """A real ml-100k benchmark at tiny size with the kit's SASRec trained on its training period."""
    root = tmp_path_factory.mktemp("llara")
    profile = load_profile("smoke", SHARED)
    run_data(profile, root)
    bench = load_benchmark(profile, "ml-100k", root)
    cfg = RecBoleConfig(models=["SASRec"], epochs=1, hidden_size=REC_SIZE, n_layers=1, n_heads=2, dropout=0.1,
                        learning_rate=0.01, train_batch_size=256, eval_batch_size=256, stopping_step=10,
                        loss_type="CE")
    # the call of notebook 02 (recrepro.stages.baselines.run_classic_baselines), at tiny size
    train_sequential("SASRec", bench.training_interactions(), cfg, profile.data.history_max, profile.run.seed,
                     paths.recbole_work_dir(profile, "ml-100k", root),
                     paths.classic_models_dir(profile, "ml-100k", root))
    return root, bench


def test_item_table_holds_the_training_period_items_only(bench_root):
    root, bench = bench_root
    table = L.load_item_table(L.sasrec_export_dir(load_profile("smoke", SHARED), root, "ml-100k"))
    train_items = set(bench.training_interactions()["item_id"].astype(str))
    later = bench.interactions[bench.interactions["timestamp"] >= bench.valid_start_time]
    only_later = set(later["item_id"].astype(str)) - train_items
    assert len(only_later) > 10  # the check below is not empty
    assert set(table.item_ids) == train_items and len(table.item_ids) == len(train_items)
    assert not only_later & set(table.item_ids)
    assert set(table.rows(sorted(only_later))) == {0} and not table.matrix[0].any()  # they get the zero vector
    assert table.matrix.shape == (len(train_items) + 1, REC_SIZE) and table.matrix[1:].abs().sum(1).min() > 0
    test = bench.samples["test"]
    shown = {str(i) for col in ("history_items", "candidates") for row in test[col] for i in row}
    assert shown & only_later  # test prompts do show such items: they are the unknown-item case


@pytest.mark.timeout(180)
def test_train_llara_writes_its_folder_and_caches(bench_root, tiny_model):
    root, _ = bench_root
    profile = load_profile("smoke", {**SHARED, "llara.steps": 2, "llara.train_instances": 2, "sft.batch_size": 2})
    messages: list[str] = []
    final = L.train_llara(profile, root, "ml-100k", start_model=tiny_model, log=messages.append)
    assert final == root / "runs" / "smoke" / "llara" / "ml-100k" / "final"
    info = json.loads((final / L.INFO_FILE).read_text())
    assert info["steps"] == 2 and info["instances"] == 2 and info["rec_model"] == "SASRec"
    inputs = json.loads((final / "stamp.json").read_text())["inputs"]
    assert inputs["rec_export"]["weights.safetensors"] and inputs["stage"]["dataset"] == "ml-100k"
    assert info["items_known_to_rec_model"] > 0
    messages.clear()
    assert L.train_llara(profile, root, "ml-100k", start_model=tiny_model, log=messages.append) == final
    assert messages == ["[llara] ml-100k: config, start model and SASRec unchanged, skipping training"]
    with pytest.raises(FileNotFoundError, match="no SASRec export"):
        L.train_llara(load_profile("smoke", {"run.name": "elsewhere"}), root, "ml-100k", start_model=tiny_model)
