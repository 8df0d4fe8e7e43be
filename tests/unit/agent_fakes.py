"""Shared material for the agent tests: a small real ToolKit, tasks, a tiny tokenizer, a scripted model.

The ToolKit is the real one (``recrepro.tools``) on the synthetic benchmark of
``tests/unit/tools_data.py``; the tokenizer is a byte-level BPE trained in well under a second on the
prompt texts with the Qwen3 template; the scripted generator plays a model whose turns are written
in advance per trajectory, so the rollout engine is tested end to end without training anything.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from recrepro.agent.env import RecAgentEnv, make_env_factory
from recrepro.agent.parser import format_answer, format_tool_call
from recrepro.agent.prompt import PromptSpec, build_messages, instance_from_sample, item_views, system_prompt
from recrepro.agent.generators import GenOutput, GenRequest, RolloutSettings
from recrepro.agent.rollout import AgentTask
from recrepro.tools import ToolKit
from tests.unit.tools_data import TEST_TOOLS, synthetic_benchmark


@lru_cache(maxsize=1)
def synthetic():
    return synthetic_benchmark()


@lru_cache(maxsize=1)
def toolkit() -> ToolKit:
    syn = synthetic()
    return ToolKit(syn.log, syn.items, TEST_TOOLS, history_max=10, space=syn.space,
                   snapshot_times=syn.snapshot_times, dataset="synthetic")


def sample_rows(n: int = 6) -> list[dict]:
    samples = synthetic().samples
    return samples[samples["split"] == "test"].head(n).to_dict("records")


def views() -> dict:
    return item_views(synthetic().items)


def env_factory(max_tool_calls: int = 10):
    return make_env_factory(toolkit().bind, max_tool_calls)


def tasks(n: int = 6, variant: str = "tirr") -> list[AgentTask]:
    spec = PromptSpec(variant)
    out = []
    for row in sample_rows(n):
        instance = instance_from_sample(row, views())
        out.append(AgentTask(row, build_messages(instance, spec), spec.uses_tools, instance.sample_id,
                             instance.n_candidates, instance.target_index))
    return out


@lru_cache(maxsize=1)
def tiny_tokenizer():
    """A small BPE with the Qwen3 template, trained on prompt texts (fast; for format tests only)."""
    from recrepro.models import train_tiny_tokenizer

    corpus = [system_prompt(PromptSpec(v, s)) for v in ("tirr", "r") for s in ("react", "apa")]
    corpus += [m["content"] for t in tasks(6) for m in t.messages]
    corpus += [format_tool_call("item_info_search", {"item_name": "Book Alpha 1"}), format_answer(range(1, 11))]
    return train_tiny_tokenizer(corpus * 3, vocab_size=1200)


def think(text: str = "checking") -> str:
    return f"<think>\n{text}\n</think>\n\n"


class ScriptedGenerator:
    """Plays pre-written turns: ``scripts[key]`` is the list of turns of trajectory ``key``.

    A turn ending in ``"<TRUNCATE>"`` is returned without a stop token (a model that does not stop).
    The turn index is read from the sequence itself (assistant headers so far), like a model would.
    """

    def __init__(self, tokenizer, scripts: dict[int, Sequence[str]]) -> None:
        self.tokenizer = tokenizer
        self.scripts = scripts
        self.asked: dict[int, int] = {}
        self.batch_sizes: list[int] = []
        self.seen_ids: dict[int, list[list[int]]] = {}

    def release(self, key: int) -> None:
        return None

    def generate(self, requests: Sequence[GenRequest], settings: RolloutSettings, max_new_tokens: int,
                 seed: int) -> list[GenOutput]:
        self.batch_sizes.append(len(requests))
        outputs = []
        for request in requests:
            text = self.tokenizer.decode(request.ids, skip_special_tokens=False)
            turn = text.count("<|im_start|>assistant") - 1
            self.asked[request.key] = self.asked.get(request.key, 0) + 1
            self.seen_ids.setdefault(request.key, []).append(list(request.ids))
            text = self.scripts[request.key][turn]
            if text.endswith("<TRUNCATE>"):
                ids = self.tokenizer.encode(text[: -len("<TRUNCATE>")], add_special_tokens=False)[:max_new_tokens]
                outputs.append(GenOutput(ids, False))
            else:
                ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
                outputs.append(GenOutput(ids[:max_new_tokens], len(ids) <= max_new_tokens))
        return outputs


def make_env(max_tool_calls: int = 10, row: dict | None = None) -> RecAgentEnv:
    env = env_factory(max_tool_calls)()
    env.reset(**(row or sample_rows(1)[0]))
    return env
