"""A positive control for the GRPO machinery: a toy task with a known optimum must be learned.

The stage-1 runs at smoke size barely move the policy (README "Stage 1"), which by itself cannot tell
"RL at this size is noise" from "the training loop cannot learn". This test rules out the second: the
kit's own trainer class and GRPO config (:func:`recrepro.rl.rta.build_grpo_config`, the same
``scale_rewards="none"``, ``loss_type``, ``beta``, ``epsilon``, sampling temperature, on-policy pass
and truncation handling as stage 1 and PPR) train a tiny Qwen3 on a bandit: the reward is 1 when the
first generated token is a designated token and 0 otherwise. A randomly initialised model emits it
with probability about 1/vocabulary; a working loop must raise that above one half in twelve steps
(measured with ten training seeds: the sampled mean reward passed 0.5 at step 3 to 7, and the
probability ended above 0.99 every time).
It runs on one CPU thread in seconds (no tools, no recommendation environment, one token per
completion), and it fails when the learning rate is 0 (checked by hand when it was written).
"""

from __future__ import annotations

import os

import torch

from recrepro.config import load_profile
from recrepro.rl import grpo

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
WORDS = [f"w{i}" for i in range(28)]  # with the 4 special tokens a vocabulary of 32
SPECIALS = ["<pad>", "<eos>", "<unk>", "<s>"]
TARGET = "w7"  # the designated first token: the known optimum
PROMPTS = [" ".join(WORDS[i: i + 3]) for i in range(0, 24, 3)]  # 8 distinct three-word prompts
LEARNING_RATE = 0.05  # [G] high on purpose: the control must move within a handful of steps
STEPS = 12
START_MAX = 0.1  # about 1/32 at initialisation
END_MIN = 0.5


def _tokenizer():
    """A word-level tokenizer over ``WORDS`` (no BPE: every word is one token, the target included)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                   padding_side="left")


def _model(tokenizer):
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    return model


def first_token_reward(completion_ids: list[list[int]], target_id: int) -> list[float]:
    """1 when the completion starts with the designated token, else 0."""
    return [1.0 if ids and ids[0] == target_id else 0.0 for ids in completion_ids]


class FirstTokenReward:
    __name__ = "first_token"  # TRL names the reward's log keys after it

    def __init__(self, target_id: int) -> None:
        self.target_id = target_id

    def __call__(self, completion_ids: list[list[int]], **_) -> list[float]:
        return first_token_reward(completion_ids, self.target_id)


@torch.no_grad()
def target_probability(model, tokenizer) -> float:
    """Mean probability (temperature 1) that the first generated token is the target, over the prompts."""
    was_training = model.training
    model.eval()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    logits = model(**batch).logits[:, -1, :]
    model.train(was_training)
    return float(torch.softmax(logits.float(), dim=-1)[:, tokenizer.convert_tokens_to_ids(TARGET)].mean())



def _trainer(tmp_path, learning_rate: float):
    """The kit's trainer class and GRPO config, cut to one-token completions: 8 prompts x G = 8 per step."""
    from datasets import Dataset

    profile = load_profile("smoke", {
        "run.device": "cpu", "rta.group_size": 8, "rta.batch_size": 8, "rta.gradient_accumulation_steps": 1,
        "rta.max_completion_length": 1, "rta.learning_rate": learning_rate, "rta.max_steps": STEPS,
        "rta.logging_steps": 1, "rta.save_steps": 10_000})
    tokenizer = _tokenizer()
    config = grpo.build_grpo_config(profile, tmp_path / "out", processes=1, save_strategy="no")
    return grpo.grpo_trainer_class()(
        model=_model(tokenizer), reward_funcs=[FirstTokenReward(tokenizer.convert_tokens_to_ids(TARGET))],
        args=config, train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]), processing_class=tokenizer,
        drop_all_negative_groups=profile.rta.drop_all_negative_groups)


def test_grpo_learns_a_bandit_with_a_known_optimum(tmp_path, one_thread):
    trainer = _trainer(tmp_path, LEARNING_RATE)
    args, smoke = trainer.args, load_profile("smoke").rta
    assert (args.scale_rewards, args.num_generations, args.max_completion_length) == ("none", 8, 1)
    assert (args.loss_type, args.beta, args.epsilon, args.num_iterations) == (smoke.loss_type, smoke.beta,
                                                                              smoke.epsilon, 1)
    tokenizer = trainer.processing_class
    before = target_probability(trainer.model, tokenizer)
    assert before < START_MAX  # the start is near 1/vocabulary: there is something to learn
    trainer.train()
    after = target_probability(trainer.model, tokenizer)
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    assert len(rewards) == STEPS
    assert after > END_MIN, f"P(target first) {before:.3f} -> {after:.3f}; rewards per step {rewards}"
    assert rewards[-1] > rewards[0]  # the sampled batches show it too (temperature from the profile)


def test_first_token_reward():
    assert first_token_reward([[7, 1], [3, 7], []], 7) == [1.0, 0.0, 0.0]
