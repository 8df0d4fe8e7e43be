"""Batched rollouts end to end with a scripted model, plus the real generator's batching and cache reuse."""

from __future__ import annotations

import json

import pytest

from recrepro.agent.env import tool_schemas
from recrepro.agent.parser import format_answer, format_tool_call
from recrepro.agent.generators import HFGenerator, RolloutSettings, build_generation_config
from recrepro.agent.rollout import RolloutEngine, tool_suffix_text
from tests.unit.agent_fakes import ScriptedGenerator, env_factory, tasks, think, tiny_tokenizer

VALID = think("ranked") + format_answer([3, 1, 2, 4, 5, 6, 7, 8, 9, 10])
SETTINGS = RolloutSettings(max_new_tokens_per_turn=400, max_new_tokens_total=4000, progress=False)


def call(name: str, **arguments) -> str:
    return think(f"use {name}") + format_tool_call(name, arguments)


SCRIPTS = {  # trajectory key -> turns; keys run over (task, sample) pairs, 2 samples per task
    0: [call("get_user_profile"), call("item_info_search", item_name="[2]"), VALID],  # multi-turn, valid
    1: [call("candidates_analyze") + "\n" + format_tool_call("get_rating_behavior"), VALID],  # two calls, one turn
    2: [VALID],  # answers at once
    3: [think("x") + format_answer([1, 1, 2, 3, 4, 5, 6, 7, 8, 9])],  # duplicate
    4: [call("get_user_profile")] * 11 + [VALID],  # the 11th call breaks the budget
    5: [think("x") + "<tool_call>{not json</tool_call>", VALID],  # malformed call
    6: [call("item_info_search", item_name="zzzz no such title qqq"), VALID],  # tool rejects the item
    7: [call("get_user_profile"), think("I keep thinking and never stop " * 3) + "<TRUNCATE>"],  # no stop token
    8: [call("no_such_tool"), VALID],  # unknown tool
    9: [think("x") + format_answer([21, 1, 2, 3, 4, 5, 6, 7, 8, 9])],  # out of range
}


@pytest.fixture(scope="module")
def run():
    tokenizer = tiny_tokenizer()
    generator = ScriptedGenerator(tokenizer, SCRIPTS)
    engine = RolloutEngine(generator, tokenizer, env_factory(10), SETTINGS, top_k=10, max_tool_calls=10,
                           max_context_tokens=100_000)
    records = engine.run(tasks(5), n_samples=2)
    return tokenizer, generator, engine, records


def test_records_in_task_sample_order(run):
    _, _, _, records = run
    assert [(r.sample_id, r.sample_index) for r in records] == \
        [(t.sample_id, s) for t in tasks(5) for s in range(2)]


def test_verdicts(run):
    _, _, _, records = run
    reasons = [r.invalid_reason for r in records]
    assert reasons == [None, None, None, "duplicate", "too_many_tool_calls", "bad_tool_call", "bad_tool_call",
                       "truncated", "bad_tool_call", "out_of_range"]
    assert records[0].answer == (3, 1, 2, 4, 5, 6, 7, 8, 9, 10)
    assert all(r.answer is None for r in records if not r.valid)
    assert records[3].n_duplicates == 1 and records[9].n_out_of_range == 1
    assert records[7].truncated and not records[0].truncated


def test_tool_calls_are_executed_counted_and_recorded(run):
    _, _, _, records = run
    assert [r.n_tool_calls for r in records] == [2, 2, 0, 0, 11, 1, 1, 1, 1, 0]
    first = records[0]
    assert [c.name for c in first.tool_calls] == ["get_user_profile", "item_info_search"]
    assert [c.turn for c in first.tool_calls] == [1, 2]
    assert first.calls_per_tool["item_info_search"] == 1 and first.n_tool_errors == 0
    assert records[6].tool_calls[0].error_kind == "unknown_item" and records[6].n_tool_errors == 1
    assert len(records[4].tool_calls) == 11 and records[4].tool_calls[-1].error_kind == "over_budget"
    assert records[8].tool_calls == []  # an unknown tool never reaches the environment


def test_messages_hold_the_real_tool_answers(run):
    _, _, _, records = run
    messages = records[0].messages
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert messages[3]["name"] == "get_user_profile" and messages[3]["content"]
    assert messages[5]["content"].startswith("[2] ")
    assert messages[-1]["content"] == VALID
    assert [m["role"] for m in records[1].messages[2:]] == ["assistant", "tool", "tool", "assistant"]


def test_batched_one_generate_call_per_turn(run):
    _, generator, _, _ = run
    # All 10 trajectories are live in turn 1; later calls hold only the unfinished ones: after turn 1
    # keys 0, 1, 4 and 7 (key 6's rejected item and key 8's unknown tool end theirs), after turn 2
    # keys 0 and 4, then key 4 alone until its 11th call.
    assert generator.batch_sizes == [10, 4, 2] + [1] * 8
    assert sum(generator.batch_sizes) == sum(generator.asked.values())


def test_token_bookkeeping_matches_the_chat_template(run):
    """prompt + generated turns + tool suffixes == the chat template's own rendering of the messages."""
    tokenizer, _, engine, records = run
    record = records[0]
    text = tokenizer.decode(record.prompt_ids + record.completion_ids, skip_special_tokens=False)
    rendered = tokenizer.apply_chat_template(record.messages, tools=engine._probe_tools, tokenize=False)
    assert text + "\n" == rendered  # the template closes the last turn with a newline
    assert len(record.completion_mask) == len(record.completion_ids)
    generated = [t for t, m in zip(record.completion_ids, record.completion_mask) if m]
    assert record.tokens_generated == len(generated)
    assert "<tool_response>" not in tokenizer.decode(generated)
    assert "<tool_response>" in tokenizer.decode([t for t, m in zip(record.completion_ids, record.completion_mask)
                                                  if not m])


def test_tool_suffix_equals_trls_training_template():
    from trl.chat_template_utils import get_training_chat_template

    tokenizer = tiny_tokenizer()
    training = get_training_chat_template(tokenizer)
    messages = [{"role": "tool", "name": "a", "content": "one"}, {"role": "tool", "name": "b", "content": "two"}]
    dummy = [{"role": "user", "content": "dummy"},
             {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                                                                  "function": {"name": "dummy", "arguments": {}}}]}]
    prefix = tokenizer.apply_chat_template(dummy, tokenize=False, chat_template=training)
    full = tokenizer.apply_chat_template(dummy + messages, tokenize=False, add_generation_prompt=True,
                                         chat_template=training)
    prefix = prefix[: prefix.rindex("<|im_end|>") + len("<|im_end|>")]
    assert full.startswith(prefix)
    assert tool_suffix_text(tokenizer, messages) == full[len(prefix):]


def test_one_by_one_gives_the_same_records():
    tokenizer = tiny_tokenizer()
    batched = RolloutEngine(ScriptedGenerator(tokenizer, SCRIPTS), tokenizer, env_factory(10), SETTINGS,
                            max_context_tokens=100_000).run(tasks(5), n_samples=2)
    generator = ScriptedGenerator(tokenizer, SCRIPTS)
    alone = RolloutEngine(generator, tokenizer, env_factory(10), SETTINGS,
                          max_context_tokens=100_000).run_one_by_one(tasks(5), n_samples=2)
    assert [r.answer for r in alone] == [r.answer for r in batched]
    assert [r.invalid_reason for r in alone] == [r.invalid_reason for r in batched]
    assert [r.completion_ids for r in alone] == [r.completion_ids for r in batched]
    assert set(generator.batch_sizes) == {1}


def test_reasoning_only_variant_forbids_tools():
    tokenizer = tiny_tokenizer()
    scripts = {0: [call("get_user_profile"), VALID], 1: [VALID]}
    records = RolloutEngine(ScriptedGenerator(tokenizer, scripts), tokenizer, env_factory(10), SETTINGS,
                            max_context_tokens=100_000).run(tasks(2, variant="r"), n_samples=1)
    assert [r.invalid_reason for r in records] == ["bad_tool_call", None]
    assert "# Tools" not in tokenizer.decode(records[1].prompt_ids)


def test_total_token_budget_truncates():
    tokenizer = tiny_tokenizer()
    settings = RolloutSettings(max_new_tokens_per_turn=400, max_new_tokens_total=30, progress=False)
    scripts = {0: [call("get_user_profile"), VALID]}
    (record,) = RolloutEngine(ScriptedGenerator(tokenizer, scripts), tokenizer, env_factory(10), settings,
                              max_context_tokens=100_000).run(tasks(1), n_samples=1)
    assert record.truncated and record.invalid_reason == "truncated" and record.tokens_generated <= 30


def test_generation_config_is_ours_not_the_models():
    greedy = build_generation_config(RolloutSettings(do_sample=False, temperature=0.6), [5, 6], 0, 17)
    assert greedy.do_sample is False and greedy.max_new_tokens == 17 and greedy.eos_token_id == [5, 6]
    sampled = build_generation_config(RolloutSettings(do_sample=True, temperature=0.6, top_p=0.9, top_k=0), [5], 0, 9)
    assert (sampled.do_sample, sampled.temperature, sampled.top_p, sampled.top_k) == (True, 0.6, 0.9, 0)


# ------------------------------------------------------------------ the real generator (tiny random model)


@pytest.fixture(scope="module")
def tiny_model():
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = tiny_tokenizer()
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=4096,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).eval()
    model.generation_config.do_sample = True  # must be ignored: the engine passes its own config
    model.generation_config.temperature = 5.0
    return model, tokenizer


def test_left_padded_batch_equals_single_rows(tiny_model):
    import torch

    model, tokenizer = tiny_model
    generator = HFGenerator(model, tokenizer)
    settings = RolloutSettings(reuse_cache=False, progress=False)
    torch.manual_seed(1)
    prompts = [torch.randint(10, len(tokenizer), (n,)).tolist() for n in (30, 57, 12)]
    from recrepro.agent.generators import GenRequest

    batch = generator.generate([GenRequest(i, p) for i, p in enumerate(prompts)], settings, 12, seed=0)
    alone = [generator.generate([GenRequest(9, p)], settings, 12, seed=0)[0] for p in prompts]
    assert [b.new_ids for b in batch] == [a.new_ids for a in alone]


def test_kv_cache_reuse_across_turns_matches_fresh_encoding(tiny_model):
    import torch

    from recrepro.agent.generators import GenRequest

    model, tokenizer = tiny_model
    settings_reuse = RolloutSettings(reuse_cache=True, progress=False)
    settings_fresh = RolloutSettings(reuse_cache=False, progress=False)
    torch.manual_seed(2)
    prompts = [torch.randint(10, len(tokenizer), (n,)).tolist() for n in (40, 23)]
    suffixes = [torch.randint(10, len(tokenizer), (n,)).tolist() for n in (7, 19)]
    reuse, fresh = HFGenerator(model, tokenizer), HFGenerator(model, tokenizer)
    outputs = {}
    for name, gen, settings in (("reuse", reuse, settings_reuse), ("fresh", fresh, settings_fresh)):
        first = gen.generate([GenRequest(i, p) for i, p in enumerate(prompts)], settings, 9, seed=0)
        grown = [p + f.new_ids + s for p, f, s in zip(prompts, first, suffixes)]
        second = gen.generate([GenRequest(i, g) for i, g in enumerate(grown)], settings, 9, seed=0)
        outputs[name] = ([f.new_ids for f in first], [s.new_ids for s in second])
    assert outputs["reuse"] == outputs["fresh"]
    assert set(reuse._kv) == {0, 1}  # caches kept per trajectory until released
    reuse.release(0)
    assert set(reuse._kv) == {1}


def test_eval_card_summarises_the_records(run, tmp_path):
    from recrepro.agent.card import build_card, load_eval_cards, write_eval_card

    _, _, _, records = run
    card = build_card(records, dataset="synthetic", model="frozen-TIRR", variant="tirr", profile="test",
                      n_candidates=20, top_k=10, max_tool_calls=10, settings={}, model_path="scripted",
                      wall_s_total=1.0, prompt_version="v1", prompt_fingerprint="x")
    assert card["n_trajectories"] == 10 and card["valid_share"] == pytest.approx(0.3)
    assert card["invalid_reasons"]["bad_tool_call"] == pytest.approx(0.3)
    assert card["valid_share"] + sum(card["invalid_reasons"].values()) == pytest.approx(1.0)
    assert card["duplicate_rate"] == pytest.approx(0.1) and card["out_of_range_rate"] == pytest.approx(0.1)
    assert card["truncation_rate"] == pytest.approx(0.1)
    assert card["tool_calls_per_trajectory"]["histogram"] == {"0": 3, "1": 4, "2": 2, ">10": 1}
    assert card["tool_calls_per_trajectory"]["mean"] == pytest.approx(1.9)
    # 2 + 2 + 11 + 1 (the rejected item) + 1 (key 7) calls reached the tools; 2 of them failed
    assert card["tool_calls_executed"] == 17 and card["tool_error_rate"] == pytest.approx(2 / 17)
    assert card["tool_errors_by_kind"] == {"over_budget": 1, "unknown_item": 1}
    assert sum(row["n"] for row in card["target_position_vs_hit"]) == 10
    write_eval_card(tmp_path, card)
    write_eval_card(tmp_path, {**card, "model": "frozen-R"})
    assert set(load_eval_cards(tmp_path)) == {"synthetic/frozen-TIRR", "synthetic/frozen-R"}
    text = (tmp_path / "eval_card.md").read_text()
    assert "## synthetic/frozen-TIRR" in text and "valid answers: **30.0%**" in text
    # Issue 15: times live beside the card, so a reproduced run rewrites the card byte for byte.
    stored = load_eval_cards(tmp_path)["synthetic/frozen-TIRR"]
    assert not {"wall_s_total", "wall_s_per_request", "tool_latency_s"} & set(stored)
    timings = json.loads((tmp_path / "eval_timings.json").read_text())
    assert timings["synthetic/frozen-R"]["wall_s_total"] == 1.0 and timings["synthetic/frozen-R"]["n_trajectories"] == 10
    assert "| synthetic/frozen-R | 10 |" in (tmp_path / "eval_timings.md").read_text()
    write_eval_card(tmp_path, {**card, "model": "sweep tiny-qwen3-s-G2"})
    text = (tmp_path / "eval_card.md").read_text()
    assert text.index("## synthetic/frozen-TIRR") < text.index("# Sweep points") < text.index("## synthetic/sweep tiny")


def test_segmented_generation_gives_the_same_trajectories(tiny_model):
    """Turns generated in segments of a few tokens (finished rows leave the batch) equal whole turns."""
    import dataclasses

    model, tokenizer = tiny_model
    settings = RolloutSettings(max_new_tokens_per_turn=24, max_new_tokens_total=48, progress=False)
    whole = RolloutEngine(HFGenerator(model, tokenizer), tokenizer, env_factory(10), settings,
                          max_context_tokens=4096).run(tasks(2), n_samples=1)
    segmented = RolloutEngine(HFGenerator(model, tokenizer), tokenizer, env_factory(10),
                              dataclasses.replace(settings, segment_tokens=5),
                              max_context_tokens=4096).run(tasks(2), n_samples=1)
    assert [r.completion_ids for r in segmented] == [r.completion_ids for r in whole]
    assert [r.invalid_reason for r in segmented] == [r.invalid_reason for r in whole] == ["truncated"] * 2


def test_shared_prefix_is_encoded_once_and_changes_nothing(tiny_model):
    from recrepro.agent.generators import GenRequest

    model, tokenizer = tiny_model
    settings = RolloutSettings(reuse_cache=True, progress=False)
    prefix = list(range(20, 60))
    prompts = [prefix + [70, 71, 72], prefix + [80]]
    shared, plain = HFGenerator(model, tokenizer), HFGenerator(model, tokenizer)
    shared.register_prefix(prefix)
    shared.register_prefix(prefix)  # idempotent
    assert len(shared._prefixes) == 1 and shared._cached(GenRequest(0, prompts[0]), settings)[0] == 40
    assert shared._cached(GenRequest(0, prefix), settings) is None  # a request needs a token of its own
    a = shared.generate([GenRequest(i, p) for i, p in enumerate(prompts)], settings, 8, seed=0)
    b = plain.generate([GenRequest(i, p) for i, p in enumerate(prompts)], settings, 8, seed=0)
    assert [x.new_ids for x in a] == [x.new_ids for x in b]


def test_engine_registers_the_common_prompt_prefix(tiny_model):
    model, tokenizer = tiny_model
    generator = HFGenerator(model, tokenizer)
    engine = RolloutEngine(generator, tokenizer, env_factory(10),
                           RolloutSettings(max_new_tokens_per_turn=4, max_new_tokens_total=4, progress=False),
                           max_context_tokens=4096)
    engine.run(tasks(3), n_samples=1)
    ((prefix, _),) = generator._prefixes
    text = tokenizer.decode(list(prefix))
    assert text.startswith("<|im_start|>system\n") and "</tools>" in text  # system turn and tool schemas


def test_cards_show_model_folders_relative_to_the_root_and_hub_ids_unchanged(tmp_path):
    from recrepro.agent.evaluate import shown_path

    folder = tmp_path / "runs" / "smoke" / "rta" / "final"
    folder.mkdir(parents=True)
    assert shown_path(folder, tmp_path) == "runs/smoke/rta/final"
    assert shown_path("Qwen/Qwen3-4B-Instruct-2507", tmp_path) == "Qwen/Qwen3-4B-Instruct-2507"
    outside = tmp_path.parent / "elsewhere-model"
    outside.mkdir(exist_ok=True)
    assert shown_path(outside, tmp_path) == str(outside)
