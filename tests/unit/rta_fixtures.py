"""Material for the RTA trainer tests: a tiny real policy whose sampling follows teacher scripts.

A randomly initialised tiny Qwen3 never emits a tool call, and warm-starting one until it reliably
does takes minutes of CPU. The trainer tests need real multi-turn rollouts through TRL, with a known
trajectory to check the masks against. So the policy here is a real tiny Qwen3 (its forward pass
gives the log-probabilities, the loss and the gradients) whose ``generate`` is replaced by a script:
for each training instance, the scripted teacher's turns (``recrepro.agent.warmstart``: two or
three tool calls, then an answer). Everything else is TRL's own loop on real token ids: the prompt
rendering, the parsing of each turn's tool calls, the calls into the kit's ``RecAgentEnv``, the tool
results' chat-template tokens, the tool mask, the rewards, the advantages and the loss.

The final answer is drawn per trajectory with torch's global RNG (as sampling would): the target
first (reward 1.1) or the target left out (reward -0.5), so groups have reward variance, and a
resumed run must restore the RNG to reproduce a step.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from recrepro.agent.env import env_tools
from recrepro.agent.parser import format_answer
from recrepro.agent.prompt import PromptSpec, instance_from_sample, render_prompt
from recrepro.agent.teacher import Transcript, teacher_transcript
from recrepro.config import load_profile
from recrepro.rl.grpo import TrainingSetup, plain
from recrepro.rl.rta import ROW_COLUMNS, training_rows
from tests.unit import agent_fakes as af


def train_samples(n: int):
    samples = af.synthetic().samples
    return samples[samples["split"] == "train"].sort_values("sample_id").head(n).reset_index(drop=True)


def _with_answer(transcript: Transcript, ranking: list[int]) -> Transcript:
    final = transcript.turns[-1].split("<answer>")[0] + format_answer(ranking)
    messages = transcript.messages[:-1] + [{"role": "assistant", "content": final}]
    return dataclasses.replace(transcript, messages=messages, turns=transcript.turns[:-1] + [final])


def transcripts(variant: str, n: int) -> list[tuple[Transcript, Transcript]]:
    """Per training instance: (target first, target left out) teacher transcripts."""
    spec = PromptSpec(variant)
    out = []
    for sample in train_samples(n).to_dict("records"):
        instance = instance_from_sample(sample, af.views())
        env = None
        if spec.uses_tools:
            env = af.env_factory()()
            env.reset(**{k: plain(sample[k]) for k in ROW_COLUMNS})
        base = teacher_transcript(instance, spec, env)
        target = int(sample["target_index"])
        others = [i for i in range(1, instance.n_candidates + 1) if i != target]
        out.append((_with_answer(base, [target] + others[:9]), _with_answer(base, others[:10])))
    return out


class ScriptedGenerate:
    """Stands in for ``model.generate``: each row continues with its instance's next scripted turn.

    The instance is recognised by its user message in the decoded input, the turn by the number of
    assistant headers so far; the last turn is one of the alternatives, drawn with torch's RNG.
    Respects ``generation_config.max_new_tokens`` (a cut turn has no end-of-turn token).
    """

    def __init__(self, tokenizer: Any, scripts: dict[str, list[list[str]]]) -> None:
        self.tokenizer = tokenizer
        self.scripts = scripts
        self.calls = 0

    def __call__(self, input_ids, attention_mask=None, generation_config=None, **_: Any):
        self.calls += 1
        tok = self.tokenizer
        limit = getattr(generation_config, "max_new_tokens", None) or 1 << 30
        new_rows = []
        for row, mask in zip(input_ids, attention_mask if attention_mask is not None else torch.ones_like(input_ids)):
            text = tok.decode(row[mask.bool()].tolist(), skip_special_tokens=False)
            key = next(k for k in self.scripts if k in text)
            options = self.scripts[key][text.count("<|im_start|>assistant") - 1]
            choice = options[int(torch.randint(len(options), (1,)))] if len(options) > 1 else options[0]
            new_rows.append((tok.encode(choice, add_special_tokens=False) + [tok.eos_token_id])[:limit])
        width = max(len(r) for r in new_rows)
        pad = tok.pad_token_id
        tail = torch.tensor([r + [pad] * (width - len(r)) for r in new_rows], dtype=input_ids.dtype)
        return torch.cat([input_ids, tail.to(input_ids.device)], dim=1)


def scripts_for(variant: str, n: int) -> dict[str, list[list[str]]]:
    out = {}
    for hit, miss in transcripts(variant, n):
        user = hit.messages[1]["content"]
        out[user] = [[t] for t in hit.turns[:-1]] + [[hit.turns[-1], miss.turns[-1]]]
    return out


@lru_cache(maxsize=None)
def tiny_policy_dir(folder: str) -> Path:
    """A randomly initialised tiny Qwen3 with a tokenizer trained on these prompts (seconds)."""
    from recrepro.models import build_tiny_qwen3

    tools = env_tools(af.env_factory()())
    probe = af.tiny_tokenizer()
    texts = []
    for variant in ("tirr", "r"):
        for pair in transcripts(variant, 6):
            for t in pair:
                texts.append(render_prompt(probe, t.messages[:2], tools if t.uses_tools else None))
                texts += t.turns + [m["content"] for group in t.tool_messages for m in group]
    return build_tiny_qwen3("s", Path(folder), corpus=texts * 3, seed=0, vocab_size=1500)


def tiny_training_profile(**overrides: Any):
    """The smoke profile cut to a one-step, two-instance run on the synthetic benchmark."""
    base = {"rta.group_size": 4, "rta.batch_size": 2, "rta.max_steps": 1, "rta.gradient_accumulation_steps": 1,
            "rta.max_completion_length": 2048, "agent.max_new_tokens_per_turn": 200, "rta.logging_steps": 1,
            "rta.eval_every": 1000, "rta.save_steps": 1, "rta.learning_rate": 1e-3}
    base.update(overrides)
    return load_profile("smoke", base)


def setup(out_dir: Path, model_dir: Path, variant: str = "tirr", n: int = 2, **overrides: Any) -> TrainingSetup:
    """A training setup on ``n`` synthetic training instances, writing under ``out_dir``."""
    profile = tiny_training_profile(**overrides)
    return TrainingSetup(profile=profile, variant=variant, model_path=str(tiny_policy_dir(str(model_dir))),
                         train_rows=training_rows(train_samples(n), af.views(), PromptSpec(variant)),
                         env_factory=af.env_factory() if variant == "tirr" else None, valid=None,
                         output_dir=Path(out_dir), log_path=Path(out_dir) / "train_log.csv")


def script_trainer(trainer: Any, variant: str, n: int) -> ScriptedGenerate:
    """Replace the trainer's policy sampling by the scripts (the forward pass stays the model's)."""
    scripted = ScriptedGenerate(trainer.processing_class, scripts_for(variant, n))
    trainer.model.generate = scripted
    return scripted
