"""User profiles: the template text, the LLM generator (tiny random Qwen3), batching, cache and stage."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from recrepro.tools.profile_writers import HistoryIndex, LLMProfileGenerator, TemplateProfileGenerator, instance_keys
from recrepro.tools.profiles import CACHE_COLUMNS, ProfileCache, generate_profiles, write_user_profiles
from tests.unit.tools_data import INSTANCE_TIME, handmade_tables

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A random 2-layer Qwen3 (hidden 32) and a byte-level BPE tokenizer trained on a few sentences."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    corpus = ["The user likes crime dramas and rates them highly.", "Heat (1995) | Action, Thriller | rated 4",
              "Write a profile of this user in at most four sentences.", "system user assistant history"] * 5
    raw.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-qwen3")
    Qwen3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model_dir):
    from recrepro.models import load_causal_lm

    return load_causal_lm(tiny_model_dir, device="cpu")


def handmade_requests(n: int = 5):
    log, items = handmade_tables()
    index = HistoryIndex(log, items)
    keys = [("u1", INSTANCE_TIME), ("u2", INSTANCE_TIME), ("u3", INSTANCE_TIME), ("u4", INSTANCE_TIME),
            ("u1", INSTANCE_TIME - 86_400 * 4)][:n]
    return index.requests(keys)


def test_requests_hold_only_earlier_interactions():
    request = handmade_requests(1)[0]
    assert [e.title for e in request.entries] == ["Casino (1995)", "Nixon (1995)", "Babe (1995)", "Heat (1995)",
                                                  "Seven (1995)"]  # Toy Story, at the cut-off, is not there
    assert request.last_time < request.cutoff_time
    assert request.entries[0].labels == ("Drama", "Crime")  # the root label "Movies" is dropped


def test_template_text():
    text = TemplateProfileGenerator("v1").generate(handmade_requests(1))[0]
    assert text == """\
Based on 5 interaction(s) from 2001-09-10 to 2001-09-18 (last one 21 hours before the cut-off).
Favourite categories: Crime (2), Drama (2), Thriller (2), Action (1).
Rating habits: mean 3.4; 3 high (>= 4), 1 neutral, 1 low (<= 2).
Rated highest: "Casino (1995)", "Seven (1995)", "Nixon (1995)".
Rated lowest: "Heat (1995)".
Most recent: "Seven (1995)", "Heat (1995)", "Babe (1995)".
Categories of the last 5 item(s): Crime 2, Drama 2, Thriller 2, Action 1, 2 more."""


def test_llm_prompt_is_versioned_and_lists_the_history(tiny_model_dir, tiny_loaded):
    generator = LLMProfileGenerator(tiny_model_dir, "v1", loaded=tiny_loaded)
    prompt = generator.render(handmade_requests(1)[0], tiny_loaded.tokenizer)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    messages = generator.messages(handmade_requests(1)[0])
    assert messages[0]["role"] == "system" and "recommender" in messages[0]["content"]
    assert "oldest first (5 items)" in messages[1]["content"]
    assert "2001-09-18 | Seven (1995) | Thriller, Crime | rated 4" in messages[1]["content"]
    assert "Toy Story" not in messages[1]["content"]
    with pytest.raises(ValueError, match="no prompt file"):
        LLMProfileGenerator(tiny_model_dir, "v999")


def test_llm_batches_with_left_padding(tiny_model_dir, tiny_loaded, monkeypatch):
    requests = handmade_requests(5)
    single = LLMProfileGenerator(tiny_model_dir, "v1", max_new_tokens=4, batch_size=1, loaded=tiny_loaded)
    expected = single.generate(requests)
    batched = LLMProfileGenerator(tiny_model_dir, "v1", max_new_tokens=4, batch_size=2, loaded=tiny_loaded)
    loaded = batched._load()
    assert loaded.tokenizer.padding_side == "left"
    calls = []
    original = loaded.model.generate

    def counting(**kwargs):
        calls.append(kwargs["input_ids"].shape)
        return original(**kwargs)

    monkeypatch.setattr(loaded.model, "generate", counting)
    assert batched.generate(requests) == expected  # padding on the left changes nothing
    assert [shape[0] for shape in calls] == [2, 2, 1]
    assert all(isinstance(t, str) for t in expected)


def test_cache_skips_what_exists_and_keys_on_the_model(tiny_model_dir, tiny_loaded, tmp_path):
    requests = handmade_requests(5)
    path = tmp_path / "llm-v1.parquet"
    generator = LLMProfileGenerator(tiny_model_dir, "v1", max_new_tokens=2, batch_size=2, loaded=tiny_loaded)
    first = generate_profiles(requests[:3], generator, ProfileCache(path), progress=False)
    assert first == {"requested": 3, "generated": 3, "reused": 0} and generator.calls == 2
    second = generate_profiles(requests, generator, ProfileCache(path), progress=False)
    assert second == {"requested": 5, "generated": 2, "reused": 3} and generator.calls == 3
    again = generate_profiles(requests, generator, ProfileCache(path), progress=False)
    assert again["generated"] == 0 and generator.calls == 3  # nothing generated on a full cache

    frame = pd.read_parquet(path)
    assert list(frame.columns) == list(CACHE_COLUMNS) and len(frame) == 5
    assert set(frame["model"]) == {str(tiny_model_dir)} and set(frame["prompt_version"]) == {"v1"}
    assert set(zip(frame["user_id"], frame["cutoff_time"])) == {(r.user_id, r.cutoff_time) for r in requests}
    assert (frame["last_time"] < frame["cutoff_time"]).all()

    generator.model = "another-model"  # a different model is a different key: everything is new
    assert generate_profiles(requests, generator, ProfileCache(path), progress=False)["generated"] == 5
    store = ProfileCache(path).store("llm", "v1", "another-model")
    assert len(store) == 5 and store.get("u1", INSTANCE_TIME).n_history == 5


def test_write_user_profiles_stage(tmp_path):
    from recrepro.config import load_profile
    from recrepro.data.pipeline import load_benchmark, prepare_dataset
    from recrepro.tools.profiles import load_profile_store

    tiny_profile = load_profile("smoke", {"data.max_users": 15})

    prepare_dataset(tiny_profile, "ml-100k", tmp_path)
    table = write_user_profiles(tiny_profile, tmp_path, progress=False)
    row = table.iloc[0]
    assert (row["generator"], row["prompt_version"], row["reused"]) == ("template", "v1", 0)
    assert row["generated"] == row["profiles"] > 0
    assert (tmp_path / row["cache"]).is_file() and (tiny_profile.results_dir(tmp_path) / "user_profiles.csv").is_file()
    again = write_user_profiles(tiny_profile, tmp_path, progress=False).iloc[0]
    assert (again["generated"], again["reused"]) == (0, row["profiles"])

    bench = load_benchmark(tiny_profile, "ml-100k", tmp_path)
    store = load_profile_store(tiny_profile, "ml-100k", tmp_path)
    keys = instance_keys(bench.samples)
    assert len(store) == len(keys) == row["profiles"]
    for user, cutoff in keys[::20]:
        record = store.get(user, cutoff)
        assert record.last_time < cutoff and record.text.startswith("Based on")


def test_a_tiny_llm_writer_needs_its_builder():
    """The tools layer cannot build agent models: without ``tiny_model`` the error names the key."""
    from recrepro.config import load_profile
    from recrepro.tools.profiles import make_generator

    profile = load_profile("smoke", {"user_profile.generator": "llm", "user_profile.model_name_or_path": "tiny-qwen3"})
    with pytest.raises(ValueError, match="user_profile.model_name_or_path 'tiny-qwen3'"):
        make_generator(profile)


def test_a_tiny_llm_writer_loads_the_built_folder_and_keys_profiles_by_name(tiny_model_dir):
    """Issue 14: the paper profile's LLM writer with a tiny model asked the hub for 'tiny-qwen3', because
    the name kept for the cache key also served as the path to load."""
    from recrepro.config import load_profile
    from recrepro.tools.profiles import make_generator

    profile = load_profile("smoke", {"user_profile.generator": "llm", "user_profile.model_name_or_path": "tiny-qwen3",
                                     "user_profile.max_new_tokens": 2})
    generator = make_generator(profile, tiny_model=lambda name: Path(tiny_model_dir))
    assert generator.model == "tiny-qwen3" and generator.path == str(tiny_model_dir)
    loaded = generator._load()  # from the folder: no network call, which would fail here
    assert loaded.model.config.model_type == "qwen3"
