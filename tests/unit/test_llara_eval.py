"""LLaRA's evaluation: the training encoding cut before the answer, explicit greedy settings, a tiny trained
LLaRA scored on eval_subset's instances (row, per-instance file, card, trajectories), malformed completions
scored invalid, the cache, and exact rows for scripted completions."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recrepro import paths, stamps
from recrepro.agent.evaluate import eval_subset
from recrepro.agent.generators import build_generation_config, stop_token_ids
from recrepro.agent.parser import format_answer
from recrepro.agent.prompt import PromptSpec, item_views, render_prompt
from recrepro.baselines import llara as L
from recrepro.baselines import llara_eval as LE
from recrepro.config import load_profile
from recrepro.data.pipeline import load_benchmark
from recrepro.evaluation import load_per_instance, metrics_row
from recrepro.metrics import list_metrics, metric_names
from recrepro.models import load_causal_lm
from recrepro.stages.data import run_data
from tests.unit import agent_fakes as af
from tests.unit import rta_fixtures as rf

SHARED = {"run.name": "smoke", "data.max_users": 40}
BUDGET, N_EVAL = 32, 5  # the answer [1..10] is 25 tokens + end of turn here
DATASET = "ml-100k"


def _profile(**extra):
    return load_profile("smoke", {**SHARED, "sft.steps": 2, "sft.batch_size": 2, "sft.max_new_tokens": BUDGET,
                                  "agent.eval_instances": N_EVAL, **extra})


# ------------------------------------------------------------------------------------------------
# prompts and settings (no training)
# ------------------------------------------------------------------------------------------------

def test_prompt_is_the_training_encoding_cut_before_the_answer(tmp_path):
    loaded = load_causal_lm(rf.tiny_policy_dir(str(tmp_path / "m")), device="cpu", padding_side="left")
    tok, spec = loaded.tokenizer, PromptSpec("r")
    ph = L.add_placeholder_token(loaded.model, tok)
    for row in rf.train_samples(3).to_dict("records"):
        prompt = LE.encode_hybrid_prompt(tok, row, af.views(), spec, 10, ph)
        full = L.encode_hybrid_example(tok, row, af.views(), spec, 10, ph)
        n_prompt = full["completion_mask"].index(1)
        assert prompt["input_ids"] == full["input_ids"][:n_prompt] and prompt["item_ids"] == full["item_ids"]
        # the same ids as rendering the hybrid messages with the engine's template (no answer in them)
        assert prompt["input_ids"] == tok.encode(render_prompt(tok, prompt["messages"]), add_special_tokens=False)
        assert prompt["input_ids"].count(ph) == len(row["history_items"]) + 20 == len(prompt["item_ids"])
        text = tok.decode(prompt["input_ids"])
        assert text.endswith("<|im_start|>assistant\n") and "\\boxed{[" + str(row["target_index"]) not in text
        assert prompt["messages"][1]["content"].count(L.PLACEHOLDER) == len(prompt["item_ids"])
        assert (prompt["sample_id"], prompt["n_candidates"], prompt["target_index"]) == (
            int(row["sample_id"]), 20, int(row["target_index"]))


def test_cut_at_stop_and_explicit_greedy_settings():
    assert LE.cut_at_stop([5, 6, 2, 7, 2], [2, 9]) == ([5, 6, 2], True)
    assert LE.cut_at_stop([5, 9, 2], [2, 9]) == ([5, 9], True)
    assert LE.cut_at_stop([5, 6, 7], [2, 9]) == ([5, 6, 7], False)
    assert LE.cut_at_stop([], [2]) == ([], False)
    profile = _profile(**{"agent.temperature": 0.9, "agent.enable_thinking": False})
    settings = LE.generation_settings(profile)
    assert (settings.do_sample, settings.max_new_tokens_per_turn, settings.max_new_tokens_total) == (
        False, BUDGET, BUDGET)
    assert settings.batch_size == LE.BATCH_SIZE == 16 and settings.enable_thinking is None
    config = build_generation_config(settings, [3, 4], 4, BUDGET)
    assert (config.do_sample, config.num_beams, config.max_new_tokens, config.eos_token_id, config.pad_token_id) == (
        False, 1, BUDGET, [3, 4], 4)
    assert config.temperature is None and config.top_p is None  # greedy: no sampling knob set


# ------------------------------------------------------------------------------------------------
# a tiny trained LLaRA, evaluated
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real ml-100k benchmark at tiny size and a tiny LLaRA trained for two steps on two instances (random
    item vectors for the training period's items stand in for SASRec's)."""
    root = tmp_path_factory.mktemp("llara_eval")
    profile = _profile()
    run_data(profile, root)
    bench = load_benchmark(profile, DATASET, root)
    known = sorted(set(bench.training_interactions()["item_id"].astype(str)))
    table = L.ItemTable.from_embeddings(known, np.random.default_rng(0).normal(size=(len(known), 16)))
    final = L.llara_dir(profile, root, DATASET) / "final"
    start = rf.tiny_policy_dir(str(root / "start"))
    info = L.fit_llara(profile, str(start), bench.samples["train"].head(2), item_views(bench.items), table, final,
                       lambda _: None)
    (final / L.INFO_FILE).write_text(json.dumps(info) + "\n")
    stamps.write_beside(final, "llara", {"test": "tiny"})
    return root, final


def _trajectories(profile, root):
    path = paths.trajectories_file(profile, DATASET, L.TABLE1_NAME, root)
    return [json.loads(line) for line in path.read_text().splitlines()]


def _card(profile, root):
    return json.loads((profile.results_dir(root) / "eval_card.json").read_text())[f"{DATASET}/{L.TABLE1_NAME}"]


@pytest.mark.timeout(180)
def test_evaluate_llara_scores_the_eval_subset_and_caches(trained, monkeypatch):
    root, final = trained
    profile = _profile()
    monkeypatch.setattr(LE, "BATCH_SIZE", 2)  # three batches of sorted lengths: the order must come back
    batch_sizes: list[int] = []
    real_batch = LE.generate_batch
    monkeypatch.setattr(LE, "generate_batch", lambda loaded, prompts, *a: batch_sizes.append(len(prompts))
                        or real_batch(loaded, prompts, *a))
    messages: list[str] = []
    result = LE.evaluate_llara(profile, root, DATASET, final, log=messages.append)
    assert batch_sizes == [2, 2, 1]
    expected_ids = [int(s) for s in eval_subset(profile, load_benchmark(profile, DATASET, root).samples["test"])
                    ["sample_id"]]
    assert len(expected_ids) == N_EVAL and not result["skipped"]
    row = result["row"]
    assert (row["dataset"], row["model"], row["n"], row["source"]) == (DATASET, "LLaRA", N_EVAL, "measured")
    for name in metric_names(profile.eval.ks):
        assert 0.0 <= row[name] <= 1.0 and row[f"{name}_lo"] <= row[name] <= row[f"{name}_hi"]
    assert list(load_per_instance(profile, DATASET, L.TABLE1_NAME, root)["sample_id"]) == expected_ids
    assert result["stamp"]["inputs"] == {"train": stamps.make("llara", {"test": "tiny"}),
                                         "eval": profile.section_hash("eval", "agent", "sft"), "sample_ids": expected_ids}
    saved_info = json.loads((L.llara_dir(profile, root, DATASET) / LE.EVAL_INFO_FILE).read_text())
    assert saved_info["stamp"] == result["stamp"] and saved_info["valid_share"] == result["valid_share"]

    card = _card(profile, root)
    assert (card["model"], card["variant"], card["n_trajectories"], card["n_instances"]) == (
        "LLaRA", "r", N_EVAL, N_EVAL)
    assert 0.0 <= card["valid_share"] <= 1.0 and card["valid_share"] == result["valid_share"]
    assert card["settings"]["do_sample"] is False and card["settings"]["max_new_tokens_per_turn"] == BUDGET
    assert card["model_path"] == "runs/smoke/llara/ml-100k/final" and card["tool_calls_executed"] == 0
    assert abs(sum(result["invalid_reasons"].values()) - (1 - result["valid_share"])) < 1e-9
    records = _trajectories(profile, root)
    assert [r["sample_id"] for r in records] == expected_ids
    for r in records:
        assert len(r["turns"]) == 1 and r["n_tool_calls"] == 0 and 1 <= r["tokens_generated"] <= BUDGET
        assert r["messages"][1]["content"].count(L.PLACEHOLDER) > 20 and r["messages"][-1]["role"] == "assistant"
        assert (r["answer"] is None) == (r["invalid_reason"] is not None)
        assert r["truncated"] == (r["invalid_reason"] == "truncated") == (r["tokens_generated"] == BUDGET)

    # the second call is a cache hit: no model is loaded, the row is identical
    monkeypatch.setattr(LE, "load_llara", lambda *a, **k: pytest.fail("a cached evaluation loaded the model"))
    messages.clear()
    cached = LE.evaluate_llara(profile, root, DATASET, final, log=messages.append)
    assert cached["skipped"] and cached["row"] == row and cached["stamp"] == result["stamp"]
    assert messages == [f"[llara] {DATASET}: evaluation unchanged, reusing LLaRA.parquet"]


def _scripted(tokenizer, text: str | None, calls: list, eos: bool = True):
    """A stand-in for LLaRAModel.generate: every row answers ``text`` (None: BUDGET tokens of noise, no stop)."""
    stops = stop_token_ids(tokenizer)
    if text is None:
        new = [i for i in range(100, 400) if i not in stops][:BUDGET]
    else:
        new = tokenizer.encode(text, add_special_tokens=False) + ([tokenizer.eos_token_id] if eos else [])

    def generate(self, input_ids, attention_mask, item_rows, **kwargs):
        calls.append({"input_ids": input_ids, "attention_mask": attention_mask, "item_rows": item_rows, **kwargs})
        return SimpleNamespace(sequences=torch.tensor([new] * len(input_ids), dtype=torch.long))

    return generate


@pytest.mark.timeout(180)
def test_scripted_completions_are_judged_by_the_kits_parser(trained, monkeypatch):
    root, final = trained
    profile = _profile()
    tokenizer = L.load_llara(final, device="cpu").tokenizer
    samples = eval_subset(profile, load_benchmark(profile, DATASET, root).samples["test"])
    targets = samples["target_index"].tolist()
    calls: list = []

    # garbage without an end: every answer truncated, scored as a miss, no crash
    monkeypatch.setattr(L.LLaRAModel, "generate", _scripted(tokenizer, None, calls))
    bad = LE.evaluate_llara(profile, root, DATASET, final, force=True, log=lambda _: None)
    assert not bad["skipped"] and bad["valid_share"] == 0.0 and bad["invalid_reasons"]["truncated"] == 1.0
    assert all(bad["row"][m] == 0.0 for m in metric_names(profile.eval.ks))
    assert all(r["tokens_generated"] == BUDGET and r["truncated"] for r in _trajectories(profile, root))
    assert _card(profile, root)["truncation_rate"] == 1.0
    # what generate was given: explicit greedy settings, a left-padded hybrid batch
    (call,) = calls  # five prompts, one batch of at most 16
    config = call["generation_config"]
    assert (config.do_sample, config.num_beams, config.max_new_tokens) == (False, 1, BUDGET)
    assert config.eos_token_id == stop_token_ids(tokenizer) and config.pad_token_id == tokenizer.pad_token_id
    ph = tokenizer.convert_tokens_to_ids(L.PLACEHOLDER)
    assert torch.equal(call["item_rows"] >= 0, call["input_ids"] == ph) and (call["item_rows"] >= 0).sum(1).min() > 20
    assert call["attention_mask"][:, -1].all() and call["input_ids"].shape[0] == N_EVAL

    # well-formed but out of range and duplicated: invalid, with the parser's counts
    monkeypatch.setattr(L.LLaRAModel, "generate", _scripted(tokenizer, "<answer>\\boxed{[1, 1, 25]}</answer>", []))
    oor = LE.evaluate_llara(profile, root, DATASET, final, force=True, log=lambda _: None)
    assert oor["valid_share"] == 0.0 and oor["invalid_reasons"]["out_of_range"] == 1.0
    assert all((r["n_out_of_range"], r["n_duplicates"], r["answer"]) == (1, 1, None)
               for r in _trajectories(profile, root))
    card = _card(profile, root)
    assert card["out_of_range_rate"] == card["duplicate_rate"] == 1.0 and card["truncation_rate"] == 0.0

    # a valid answer [1..10] everywhere: exactly the "first ten candidates" scores on these instances
    monkeypatch.setattr(L.LLaRAModel, "generate", _scripted(tokenizer, format_answer(range(1, 11)), []))
    good = LE.evaluate_llara(profile, root, DATASET, final, force=True, log=lambda _: None)
    expected = metrics_row(DATASET, "LLaRA", list_metrics([list(range(1, 11))] * N_EVAL, targets, profile.eval.ks),
                           profile)
    assert good["valid_share"] == 1.0 and good["row"] == expected
    assert good["row"]["H@10"] == sum(t <= 10 for t in targets) / N_EVAL
    assert _card(profile, root)["first_choice_histogram"] == {"1": N_EVAL}

    # another evaluation config (fewer instances) is not a cache hit, and scores eval_subset's instances
    fewer = _profile(**{"agent.eval_instances": 3})
    other = LE.evaluate_llara(fewer, root, DATASET, final, log=lambda _: None)
    ids = [int(s) for s in eval_subset(fewer, load_benchmark(fewer, DATASET, root).samples["test"])["sample_id"]]
    assert not other["skipped"] and other["row"]["n"] == 3 and other["stamp"]["inputs"]["sample_ids"] == ids
    assert [r["sample_id"] for r in _trajectories(fewer, root)] == ids
