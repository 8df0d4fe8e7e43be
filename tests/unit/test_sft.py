"""TALLRec-like SFT baseline: the training answer, the token layout, a tiny TRL run, caching, the row."""

from __future__ import annotations

import json

import pytest

from recrepro.agent.parser import format_answer
from recrepro.agent.prompt import PromptSpec, build_messages, instance_from_sample, render_prompt
from recrepro.baselines.sft import TABLE1_NAME, encode_example, evaluate_sft, target_ranking, train_sft
from recrepro.config import load_profile
from recrepro.evaluation import load_per_instance
from tests.unit import agent_fakes as af
from tests.unit import rta_fixtures as rf


def test_target_ranking_is_the_target_then_the_following_candidates_cyclically():
    assert target_ranking(20, 7, 10) == [7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    assert target_ranking(20, 1, 10) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert target_ranking(20, 18, 10) == [18, 19, 20, 1, 2, 3, 4, 5, 6, 7]
    assert target_ranking(20, 20, 3) == [20, 1, 2]
    assert target_ranking(3, 2, 10) == [2, 3, 1]  # never longer than the candidate list
    with pytest.raises(ValueError, match="target_index 21 outside 1..20"):
        target_ranking(20, 21, 10)


def test_example_is_the_engine_prompt_then_the_answer_only():
    tok = af.tiny_tokenizer()
    row = af.sample_rows(1)[0]
    spec = PromptSpec("r")
    example = encode_example(tok, row, af.views(), spec, top_k=10)
    ids, mask = example["input_ids"], example["completion_mask"]
    prompt = render_prompt(tok, build_messages(instance_from_sample(row, af.views()), spec), None)
    n_prompt = len(tok.encode(prompt, add_special_tokens=False))
    assert mask == [0] * n_prompt + [1] * (len(ids) - n_prompt)
    answer = format_answer(target_ranking(20, int(row["target_index"]), 10))
    assert tok.decode(ids[n_prompt:]) == answer + tok.eos_token  # no reasoning, then end of turn
    assert ids[-1] == tok.eos_token_id


# One run folder for the data and every SFT setting of this module (named, so overrides do not split it).
SHARED = {"run.name": "smoke", "data.max_users": 40}


@pytest.fixture(scope="module")
def sft_root(tmp_path_factory):
    """A real ml-100k benchmark at tiny size and a tiny random Qwen3 (seconds)."""
    from recrepro.stages.data import run_data

    root = tmp_path_factory.mktemp("sft")
    run_data(load_profile("smoke", SHARED), root)
    return root, rf.tiny_policy_dir(str(root / "start"))


def _profile(**extra):
    return load_profile("smoke", {**SHARED, "sft.steps": 2, "sft.train_instances": 4,
                                  "sft.batch_size": 2, "sft.max_new_tokens": 8, "agent.eval_instances": 3, **extra})


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sft_trains_caches_and_scores_invalid_answers_as_misses(sft_root):
    root, start = sft_root
    profile = _profile()
    messages: list[str] = []
    first = train_sft(profile, root, "ml-100k", str(start), log=messages.append)
    assert not first["skipped"] and first["steps"] == 2 and first["instances"] == 4
    assert len(first["losses"]) == 2 and all(loss > 0 for loss in first["losses"])
    final = profile.run_dir(root) / "sft" / "ml-100k" / "final"
    assert (final / "config.json").is_file() and not (final / "adapter_config.json").exists()  # merged
    assert json.loads((final / "sft_info.json").read_text())["settings"]["lora_r"] == profile.sft.lora_r
    again = train_sft(profile, root, "ml-100k", str(start), log=messages.append)
    assert again["skipped"] and messages == ["[sft] ml-100k: config and start model unchanged, skipping training"]
    messages.clear()
    evaluation_only = _profile(**{"sft.max_new_tokens": 16, "agent.eval_instances": 5, "agent.temperature": 0.9})
    assert train_sft(evaluation_only, root, "ml-100k", str(start), log=messages.append)["skipped"]
    assert not train_sft(_profile(**{"sft.learning_rate": 1e-4}), root, "ml-100k", str(start),
                         log=messages.append)["skipped"]  # a changed training config retrains

    result = evaluate_sft(profile, root, "ml-100k", str(final), first["stamp"], log=messages.append)
    row = result["row"]
    assert row["model"] == TABLE1_NAME and row["n"] == 3 and row["source"] == "measured"
    # an 8-token budget cannot hold a 10-item answer: every answer is invalid, so every metric is 0
    assert result["valid_share"] == 0.0 and result["invalid_reasons"]["truncated"] == 1.0
    assert row["H@10"] == 0.0 and row["N@10"] == 0.0
    per = load_per_instance(profile, "ml-100k", TABLE1_NAME, root)
    assert len(per) == 3 and per["H@10"].sum() == 0.0
    cached = evaluate_sft(profile, root, "ml-100k", str(final), first["stamp"], log=messages.append)
    assert cached["skipped"] and cached["row"]["H@10"] == row["H@10"]


def test_overlong_examples_are_dropped_and_none_left_is_an_error():
    from recrepro.baselines.sft import fit_examples

    examples = [{"input_ids": [1] * 5, "completion_mask": [0, 0, 0, 1, 1]},
                {"input_ids": [1] * 9, "completion_mask": [0] * 7 + [1, 1]}]
    messages: list[str] = []
    assert fit_examples(examples, 6, messages.append) == examples[:1]
    assert messages == ["[sft] dropped 1 of 2 examples longer than sft.max_length=6"]
    with pytest.raises(ValueError, match="sft.max_length=4: every sft training example is longer"):
        fit_examples(examples, 4, messages.append)


def test_disabled_sft_runs_nothing(tmp_path):
    from recrepro.stages.evaluate import run_sft_baseline

    out = run_sft_baseline(load_profile("smoke", {"sft.enabled": False}), tmp_path, log=lambda _: None)
    assert out == {"rows": [], "runs": {}}
    assert not (tmp_path / "results").exists()
