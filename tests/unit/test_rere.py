"""ReRe baseline core: the constrained decoder, the rank-aware reward, explicit generation settings, tiny runs."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessorList

from recrepro.agent.parser import format_answer, format_tool_call, parse_answer
from recrepro.agent.prompt import PromptSpec
from recrepro.baselines.rere import (CONSTRAINED_EVAL, TABLE1_NAME, CandidateListGrammar, CandidateListLogitsProcessor, ReReRewardFunc,
                                     answer_token_budget, constrained_generation, fit_rere, rank_penalties,
                                     rere_group_rewards, rere_grpo_config, rere_reward, rere_trainer_class, train_rere,
                                     evaluate_rere)
from recrepro.config import load_profile
from recrepro.models import load_causal_lm
from recrepro.rl.grpo import build_dataset
from recrepro.rl.rta import training_rows
from tests.unit import agent_fakes as af
from tests.unit import rta_fixtures as rf

PREFIX = "<answer>\\boxed{["


class CharTokenizer:
    """One token per character (id = code point); the end of turn is id 0."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]


class MergingTokenizer(CharTokenizer):
    """Encodes ``]}`` as one token inside a whole answer only: the pieces do not add up."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return super().encode(text.replace("]}", "\x01") if text.startswith("<answer>") else text)


def _after(grammar: CandidateListGrammar, text: str):
    state = grammar.start
    for ch in text:
        state = grammar.advance(state, ord(ch))
    return state


def _next_chars(grammar: CandidateListGrammar, text: str) -> str:
    return "".join(sorted(chr(t) for t in grammar.allowed(_after(grammar, text))))


# ------------------------------------------------------------------------------------------------
# the grammar and the logits processor
# ------------------------------------------------------------------------------------------------

def test_grammar_allows_exactly_the_continuations_of_a_valid_answer():
    g = CandidateListGrammar(CharTokenizer(), n_candidates=12, top_k=3, stop_ids=[0])
    assert _next_chars(g, "") == "<" and _next_chars(g, "<answer>\\boxed{") == "["
    assert _next_chars(g, PREFIX) == "123456789"  # no 0, no leading zero
    assert _next_chars(g, PREFIX + "1") == ",012"  # 1 done, or 10, 11, 12; "]" only after 3 indices
    assert _next_chars(g, PREFIX + "1,") == " "
    assert _next_chars(g, PREFIX + "1, ") == "123456789"  # "1" can still become 10, 11, 12
    assert _next_chars(g, PREFIX + "1, 1") == "012"  # 1 is used: no separator after it
    assert _next_chars(g, PREFIX + "12, 1") == ",01"  # 1, 10, 11, not 12 again
    assert _next_chars(g, PREFIX + "12, 1, 3") == "]"  # the third index: only the closing
    assert _next_chars(g, PREFIX + "12, 1, 1") == "01"  # 10 or 11
    assert _next_chars(g, PREFIX + "12, 1, 3]}</answer") == ">"
    assert _next_chars(g, PREFIX + "12, 1, 3]}</answer>") == "\x00"  # the end of turn, nothing else
    for bad in ("<b", PREFIX + "0", PREFIX + "13", PREFIX + "1 ", PREFIX + "1,2", PREFIX + "1, 1,", PREFIX + "1]",
                PREFIX + "1, 2, 3,", PREFIX + "1, 2, 3]}</answer>x"):
        assert _after(g, bad) is None, bad
    assert g.tokens([12, 1, 3]) == tuple(ord(c) for c in format_answer([12, 1, 3]))
    with pytest.raises(ValueError, match="does not encode"):
        CandidateListGrammar(MergingTokenizer(), 12, 3, stop_ids=[0])
    with pytest.raises(ValueError, match="top_k=4 needs"):
        CandidateListGrammar(CharTokenizer(), 3, 4, stop_ids=[0])


def test_budget_is_the_longest_answer_plus_the_end_of_turn():
    assert answer_token_budget(20, 10) == len(format_answer(range(11, 21))) + 1 == 66
    assert answer_token_budget(12, 3) == len("<answer>\\boxed{[10, 11, 12]}</answer>") + 1


def _decode_random(grammar, tokenizer, rows: int, seed: int, greedy: bool, scale: float) -> torch.Tensor:
    """Decode ``rows`` answers from random scores through the processor, as generate does (pad when done)."""
    gen = torch.Generator().manual_seed(seed)
    prompt = 3
    ids = torch.full((rows, prompt), tokenizer.pad_token_id)
    processor = CandidateListLogitsProcessor(grammar, prompt)
    done = torch.zeros(rows, dtype=torch.bool)
    for _ in range(answer_token_budget(grammar.n, grammar.top_k)):
        scores = processor(ids, scale * torch.randn(rows, len(tokenizer), generator=gen))
        nxt = (scores.argmax(-1) if greedy
               else torch.multinomial(scores.softmax(-1), 1, generator=gen).squeeze(1))
        nxt = torch.where(done, torch.tensor(tokenizer.pad_token_id), nxt)
        done |= torch.isin(nxt, torch.tensor(grammar.stop_ids))
        ids = torch.cat([ids, nxt.unsqueeze(1)], dim=1)
    assert processor.dead_rows == 0 and bool(done.all())
    return ids[:, prompt:]


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_random_logits_always_give_a_valid_answer_in_its_own_tokens(greedy):
    tok = af.tiny_tokenizer()
    grammar = CandidateListGrammar(tok, 20, 10)
    eos = tok.eos_token_id
    seen = set()
    for seed in range(60):
        for row in _decode_random(grammar, tok, rows=4, seed=seed, greedy=greedy, scale=1.0 + 10 * (seed % 3)):
            ids = row.tolist()
            ids = ids[:ids.index(eos) + 1]
            parsed = parse_answer(tok.decode(ids[:-1], skip_special_tokens=False), 20, 10)
            assert parsed.valid and len(set(parsed.ranking)) == 10, parsed
            assert tuple(ids[:-1]) == grammar.tokens(parsed.ranking)  # the canonical tokens: one per answer
            seen.add(parsed.ranking)
    assert len(seen) > 200  # the rows really were random


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(rf.tiny_policy_dir(str(tmp_path_factory.mktemp("rere_model"))))


def _prompts(tokenizer, n: int) -> torch.Tensor:
    rows = training_rows(rf.train_samples(n), af.views(), PromptSpec("r"))
    encoded = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"] for r in rows]
    width = max(len(e) for e in encoded)
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + list(e) for e in encoded])
    return ids, (ids != tokenizer.pad_token_id).long()


def _answers(tokenizer, out: torch.Tensor, width: int) -> list[tuple[int, ...]]:
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    parsed = [parse_answer(t, 20, 10) for t in texts]
    assert all(p.valid for p in parsed), [(t, p.reason) for t, p in zip(texts, parsed) if not p.valid]
    return [p.ranking for p in parsed]


def test_a_tiny_random_model_decodes_only_valid_answers_greedy_sampled_and_by_beams(tiny_model):
    loaded = load_causal_lm(tiny_model, device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    grammar = CandidateListGrammar(tok, 20, 10)
    ids, mask = _prompts(tok, 3)
    width = ids.shape[1]
    common = dict(max_new_tokens=answer_token_budget(20, 10), eos_token_id=list(grammar.stop_ids),
                  pad_token_id=tok.pad_token_id)
    greedy = GenerationConfig(do_sample=False, **common)
    with constrained_generation(model, grammar):
        _answers(tok, model.generate(input_ids=ids, attention_mask=mask, generation_config=greedy), width)
        for seed in range(4):
            torch.manual_seed(seed)
            sampled = GenerationConfig(do_sample=True, temperature=1.5, top_k=0, top_p=1.0, **common)
            out = model.generate(input_ids=ids.repeat_interleave(4, 0), attention_mask=mask.repeat_interleave(4, 0),
                                 generation_config=sampled)
            _answers(tok, out, width)
        beams = GenerationConfig(do_sample=False, num_beams=6, num_return_sequences=6, length_penalty=0.0, **common)
        # rows come in groups of identical prompts (as TRL repeats them); each group gets its 6 beams
        out = model.generate(input_ids=ids.repeat_interleave(6, 0), attention_mask=mask.repeat_interleave(6, 0),
                             generation_config=beams)
        best = GenerationConfig(do_sample=False, num_beams=6, num_return_sequences=1, length_penalty=0.0, **common)
        top = model.generate(input_ids=ids, attention_mask=mask, generation_config=best)
    assert "generate" not in vars(model)  # the wrapper is gone
    ranked = _answers(tok, out, width)
    assert len(ranked) == 18
    for group in range(3):
        assert len(set(ranked[6 * group:6 * group + 6])) == 6  # distinct answers within a group
    assert [ranked[6 * g] for g in range(3)] == _answers(tok, top, width)  # beam rank 1 first
    with constrained_generation(model, grammar), pytest.raises(ValueError, match="whole groups of 6"):
        model.generate(input_ids=ids, attention_mask=mask, generation_config=beams)


# ------------------------------------------------------------------------------------------------
# the reward
# ------------------------------------------------------------------------------------------------

def test_rank_penalties_are_the_papers_normalised_discounts():
    s = 1 + 1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)  # 2.5616063116448506
    assert rank_penalties(4) == pytest.approx([-1 / s, -0.6309297535714575 / s, -0.5 / s, -0.43067655807339306 / s],
                                              abs=1e-15)
    assert rank_penalties(4) == pytest.approx([-0.3903800499921017, -0.24630238874073, -0.19519002499605084,
                                               -0.16812753627111746], abs=1e-15)
    for g in (1, 2, 8, 16):
        assert sum(rank_penalties(g)) == pytest.approx(-1.0, abs=1e-12)
    assert rank_penalties(1) == [-1.0]


def test_reward_on_hand_computed_groups():
    # target 5, K = 3, G = 4: beam 2 ranks it first (correct: 1); the others are negatives of a group that
    # has a correct answer: NDCG@3 of the target (1/log2(3) at position 2) plus the penalty of their beam rank
    got = rere_group_rewards([[2, 5, 1], [5, 1, 2], None, [3, 4, 6]], target_index=5, top_k=3)
    assert [r.total for r in got] == pytest.approx([0.6309297535714575 - 0.3903800499921017, 1.0,
                                                    -0.19519002499605084, -0.16812753627111746], abs=1e-12)
    assert [r.total for r in got] == pytest.approx([0.24054970357935584, 1.0, -0.19519002499605084,
                                                    -0.16812753627111746], abs=1e-12)
    assert [(r.position, r.correct, r.valid) for r in got] == [(2, False, True), (1, True, True), (0, False, False),
                                                                (0, False, True)]
    assert [r.rule for r in got] == pytest.approx([0.6309297535714575, 1.0, 0.0, 0.0], abs=1e-12)
    # no correct answer in the group: no ranking reward at all
    got = rere_group_rewards([[2, 5, 1], [1, 2, 3]], target_index=5, top_k=3)
    assert [(r.total, r.ranking) for r in got] == [(pytest.approx(0.6309297535714575, abs=1e-12), 0.0), (0.0, 0.0)]
    one = rere_reward([4, 2, 5], 5, beam_rank=2, group_size=3, group_has_correct=True, top_k=3)
    assert one.total == pytest.approx(0.5 - 0.6309297535714575 / (1 + 0.6309297535714575 + 0.5), abs=1e-12)
    with pytest.raises(ValueError, match="beam_rank 5 outside 1..4"):
        rere_reward([1], 1, beam_rank=5, group_size=4, group_has_correct=False, top_k=1)


def test_with_one_item_per_answer_the_reward_is_the_papers():
    # ReRe (rere.py, reward_type "ranking"): rule = 1 for the target, else 0; ranking reward for the
    # j-th completion (0-based) that is not the target, when the group holds the target:
    # -(1/log2(j+2)) / sum_k 1/log2(k+2); a group without the target gets 0 everywhere
    gen = torch.Generator().manual_seed(0)
    for g in (2, 4, 16):
        norm = sum(1 / math.log2(k + 2) for k in range(g))
        for _ in range(50):
            items = torch.randint(1, 6, (g,), generator=gen).tolist()
            hit = 3 in items
            paper = [1.0 if i == 3 else (-(1 / math.log2(j + 2)) / norm if hit else 0.0) for j, i in enumerate(items)]
            ours = [r.total for r in rere_group_rewards([[i] for i in items], target_index=3, top_k=1)]
            assert ours == pytest.approx(paper, abs=1e-12)


def test_trl_reward_function_parses_token_ids_in_groups():
    tok = af.tiny_tokenizer()
    eos = tok.eos_token_id
    func = ReReRewardFunc(tok, top_k=10, group_size=4, stops=[eos])
    others = [i for i in range(1, 21) if i != 7]

    def ids(text: str, end: bool = True) -> list[int]:
        return tok.encode(text, add_special_tokens=False) + ([eos] if end else [])

    completions = [ids(format_answer(others[:3] + [7] + others[3:9])),  # target 4th
                   ids(format_answer([7] + others[:9])),  # correct
                   ids(format_answer([7] + others[:9]), end=False),  # cut by the token limit: invalid
                   ids(format_tool_call("item_info_search", {"item_name": "x"}) + format_answer([7] + others[:9]))]
    logged: list[tuple[str, float]] = []
    rewards = func(prompts=[None] * 4, completions=[None] * 4, completion_ids=completions, target_index=[7] * 4,
                   candidates=[list(range(20))] * 4, log_metric=lambda k, v: logged.append((k, v)))
    expected = [1 / math.log2(5) - 0.3903800499921017, 1.0, -0.19519002499605084, -0.16812753627111746]
    assert rewards == pytest.approx(expected, abs=1e-12)
    assert [r.valid for r in func.last] == [True, True, False, False]  # a tool call is not allowed here
    assert ("rere/correct", 1.0) in logged and len(logged) == 16
    with pytest.raises(ValueError, match="not whole groups of 4"):
        func(prompts=[None], completions=[None], completion_ids=completions[:1], target_index=[7],
             candidates=[[0] * 20])
    with pytest.raises(ValueError, match="mixes training instances"):
        func(prompts=[None] * 4, completions=[None] * 4, completion_ids=completions, target_index=[7, 7, 7, 8],
             candidates=[list(range(20))] * 4)


# ------------------------------------------------------------------------------------------------
# explicit generation settings
# ------------------------------------------------------------------------------------------------

def test_grpo_config_passes_every_generation_setting_explicitly(tmp_path):
    profile = load_profile("smoke", {"rta.group_size": 4})
    beam = rere_grpo_config(profile, tmp_path, n_candidates=20)
    assert (beam.num_generations, beam.temperature, beam.top_p, beam.top_k, beam.min_p, beam.repetition_penalty,
            beam.max_completion_length) == (4, 1.0, 1.0, 0, 0.0, 1.0, 66)
    assert beam.generation_kwargs == {"do_sample": False, "num_beams": 4, "num_return_sequences": 4,
                                      "length_penalty": 0.0, "max_new_tokens": 66, "min_new_tokens": 0,
                                      "no_repeat_ngram_size": 0, "renormalize_logits": True}
    assert (beam.use_vllm, beam.scale_rewards, beam.loss_type, beam.num_iterations) == (False, "group", "grpo", 1)
    assert (beam.learning_rate, beam.beta) == (profile.sft.learning_rate, profile.rta.beta)
    assert (beam.lr_scheduler_type, beam.warmup_steps, beam.max_grad_norm) == ("cosine", 0.03, 0.3)
    sampled = rere_grpo_config(profile, tmp_path, n_candidates=20, beam_search=False)
    assert sampled.generation_kwargs["do_sample"] is True and sampled.generation_kwargs["num_beams"] == 1


def _trainer(model_dir, tmp_path, beam: bool):
    profile = load_profile("smoke", {"rta.group_size": 4, "rta.batch_size": 2})
    loaded = load_causal_lm(model_dir, device="cpu")
    rows = training_rows(rf.train_samples(2), af.views(), PromptSpec("r"))
    reward = ReReRewardFunc(loaded.tokenizer, 10, 4, [loaded.tokenizer.eos_token_id])
    return rere_trainer_class()(model=loaded.model, reward_funcs=[reward],
                                args=rere_grpo_config(profile, tmp_path, 20, beam_search=beam),
                                train_dataset=build_dataset(rows), processing_class=loaded.tokenizer,
                                n_candidates=20, top_k=10)


def test_a_models_generation_config_json_changes_nothing(tiny_model, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(tiny_model, odd)
    tok = load_causal_lm(tiny_model, device="cpu").tokenizer
    GenerationConfig(do_sample=True, temperature=0.05, top_k=1, top_p=0.1, typical_p=0.05, repetition_penalty=5.0,
                     no_repeat_ngram_size=1, num_beams=3, length_penalty=2.0, max_new_tokens=3,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(odd)
    ids, mask = _prompts(tok, 2)
    ids, mask = ids.repeat_interleave(4, 0), mask.repeat_interleave(4, 0)
    prompt_ids = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    outputs, trainers = {}, {}
    for beam in (False, True):
        for folder in (tiny_model, odd):
            trainer = trainers[beam, folder] = _trainer(folder, tmp_path / f"{beam}{folder == odd}", beam)
            torch.manual_seed(0)
            outputs[beam, folder] = trainer._generate_single_turn(prompt_ids, None, {}, 4)[0]
        assert outputs[beam, tiny_model] == outputs[beam, odd], beam
        answers = [parse_answer(tok.decode(c[:-1]), 20, 10) for c in outputs[beam, odd]]
        assert all(a.valid for a in answers) and all(c[-1] == tok.eos_token_id for c in outputs[beam, odd])
    # the odd file would have mattered: generate inherits what the passed config leaves unset (typical_p)
    trainer = trainers[False, odd]
    processor = CandidateListLogitsProcessor(trainer.answer_grammar, ids.shape[1])
    torch.manual_seed(0)
    plain = trainer.model.generate(input_ids=ids, attention_mask=mask, generation_config=trainer.generation_config,
                                   logits_processor=LogitsProcessorList([processor]))
    plain = [row[:row.index(tok.eos_token_id) + 1] for row in plain[:, ids.shape[1]:].tolist()]
    assert plain != outputs[False, odd]


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_short_run_reaches_the_known_optimum_of_a_toy_task(tiny_model, tmp_path):
    # one instance whose target is set to 18: the start model's four beams rank it first twice (reward 1)
    # and fifth twice; the optimum, every beam ranking it first, has mean reward exactly 1
    profile = load_profile("smoke", {"rta.group_size": 4, "rta.batch_size": 1, "rta.max_steps": 3,
                                     "rta.train_instances": 1, "sft.learning_rate": 5e-3, "rta.logging_steps": 1})
    samples = rf.train_samples(2).iloc[1:].reset_index(drop=True)
    samples["target_index"] = 18
    info = fit_rere(profile, tiny_model, samples, af.views(), tmp_path / "final", log=lambda _: None)
    assert info["steps"] == 3 and info["instances"] == 1 and info["valid"] == [1.0, 1.0, 1.0]
    beams = [1 / math.log2(6) - 0.3903800499921017, 1.0, 1 / math.log2(6) - 0.19519002499605084, 1.0]
    assert info["rewards"][0] == pytest.approx(sum(beams) / 4, abs=1e-5)  # 0.547
    assert info["rewards"][-1] == pytest.approx(1.0, abs=1e-6) and info["correct"][-1] == 1.0
    assert (tmp_path / "final" / "config.json").is_file() and not (tmp_path / "final" / "adapter_config.json").exists()


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    from recrepro.stages.data import run_data

    root = tmp_path_factory.mktemp("rere")
    run_data(load_profile("smoke", {"run.name": "smoke", "data.max_users": 40}), root)
    return root


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_train_rere_runs_sft_first_writes_its_folder_and_caches(bench_root, tiny_model):
    overrides = {"run.name": "smoke", "data.max_users": 40, "sft.steps": 1, "sft.train_instances": 2,
                 "sft.batch_size": 2, "rere.group_size": 2, "rta.batch_size": 1, "rere.steps": 1,
                 "rere.train_instances": 1, "agent.eval_instances": 4}
    profile = load_profile("smoke", overrides)
    messages: list[str] = []
    final = train_rere(profile, bench_root, "ml-100k", start_model=tiny_model, log=messages.append)
    assert final == bench_root / "runs" / "smoke" / "rere" / "ml-100k" / "final"
    info = json.loads((final / "rere_info.json").read_text())
    assert info["steps"] == 1 and info["instances"] == 1 and info["valid"] == [1.0]
    assert info["settings"]["group_size"] == 2 and info["settings"]["beam_search"] is True
    stamp = json.loads((final / "stamp.json").read_text())
    sft_stamp = json.loads((bench_root / "runs/smoke/sft/ml-100k/final/stamp.json").read_text())
    assert stamp["kind"] == "rere" and stamp["inputs"]["sft_stage"] == sft_stamp
    messages.clear()
    assert train_rere(profile, bench_root, "ml-100k", start_model=tiny_model, log=messages.append) == final
    assert messages == ["[sft] ml-100k: config and start model unchanged, skipping training",
                        "[rere] ml-100k: config and SFT model unchanged, skipping training"]
    # Evaluation decodes under the candidate-list constraint: every answer is a valid list by construction
    evaluated = evaluate_rere(profile, bench_root, "ml-100k", final, log=messages.append)
    assert evaluated["row"]["model"] == TABLE1_NAME and evaluated["row"]["n"] == 4
    assert evaluated["valid_share"] == 1.0 and evaluated["stamp"]["inputs"]["context"] == CONSTRAINED_EVAL
