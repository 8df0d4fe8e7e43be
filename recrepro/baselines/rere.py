"""ReRe baseline (core): GRPO with constrained beam search and a rank-aware reward.

ReRe is "Reinforced Preference Optimization for Recommendation" (Tan et al., arXiv 2510.12211; code
github.com/sober-clever/ReRe; [N] = the abstract, ``rere_trainer.py`` and ``rere.sh`` @290b509,
``rere.py`` @045c646; [G] = our choice). PAPER.md 1.6 lists it among the Table 1 baselines trained
on the same backbone (learning rate 1e-5). Kept [N]: beam search with G beams constrained to valid
outputs, the rule reward plus the auxiliary rank penalty by beam rank (:func:`rank_penalties`),
group-normalised advantages. Adapted [G]: the completion is a ranked list
(:class:`CandidateListLogitsProcessor` admits only ``<answer>\\boxed{[...]}</answer>`` lists of
``agent.top_k`` distinct candidates), the rule reward is the target's NDCG@K (the 0/1 reward for
K = 1), and training starts from the TALLRec-like SFT model with a fresh LoRA adapter. Evaluation
(:func:`evaluate_rere`) is one greedy answer under the same constraint, so every answer is valid.

Details (generation, reward, optimisation, mapping, output): docs/protocol.md, "ReRe: implementation notes".
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from recrepro import paths, stamps
from recrepro.agent.generators import stop_token_ids
from recrepro.agent.parser import judge_trajectory
from recrepro.agent.prompt import item_views
from recrepro.baselines.constrained import (CandidateListGrammar, CandidateListLogitsProcessor, answer_token_budget,
                                            constrained_generation)
from recrepro.baselines.sft import baseline_profile, evaluate_answer_model, sft_stamp, train_once, train_sft
from recrepro.config import Profile
from recrepro.data.pipeline import load_benchmark
from recrepro.io import sha256_file
from recrepro.progress import trainer_progress
from recrepro.rl.grpo import build_dataset, build_grpo_config, load_policy
from recrepro.rl.reward import assistant_turns, ndcg_at_rank
from recrepro.rl.rta import prompt_spec, seeded_subset, starting_model, training_rows

RERE_VERSION = "v1"  # bump when the recipe below changes in a way that changes the model
TABLE1_NAME = "ReRe"
# The paper's settings ([N], files as in the module docstring); the profile's rere section sets G, steps and rate.
GROUP_SIZE = 16  # rere.sh --num_generations 16 (= beams)
LEARNING_RATE = 1e-5  # rere.sh --learning_rate 1e-5; PAPER.md 1.6
KL_BETA = 1e-3  # rere.sh --beta 1e-3
EPOCHS = 2  # rere.sh --num_train_epochs 2
TEMPERATURE = 1.0  # rere.sh --temperature 1.0
LENGTH_PENALTY = 0.0  # rere_trainer.py: GenerationConfig(length_penalty=0.0)
WARMUP_RATIO = 0.03  # rere.py GRPOConfig(warmup_ratio=0.03)
MAX_GRAD_NORM = 0.3  # rere.py GRPOConfig(max_grad_norm=0.3)
LR_SCHEDULER = "cosine"  # rere.py GRPOConfig(lr_scheduler_type="cosine")


# ------------------------------ The reward ------------------------------------------------------

def rank_penalties(group_size: int) -> list[float]:
    """ReRe's ranking reward of a negative at beam rank j = 1..G: ``-(1/log2(j+1)) / sum_k 1/log2(k+1)``."""
    weights = [1.0 / math.log2(j + 1) for j in range(1, group_size + 1)]
    return [-w / sum(weights) for w in weights]


@dataclasses.dataclass(frozen=True)
class ReReReward:
    total: float
    rule: float  # NDCG@K of the target in the list (0 when absent or invalid)
    ranking: float  # the auxiliary ranking reward (<= 0)
    valid: bool
    position: int  # 1-based position of the target in the list, 0 when absent or invalid
    correct: bool  # the target is ranked first


def rere_reward(ranking: Sequence[int] | None, target_index: int, *, beam_rank: int, group_size: int,
                group_has_correct: bool, top_k: int) -> ReReReward:
    """The reward of one completion: ``ranking`` (None when invalid) at ``beam_rank`` (1-based) in a group
    of ``group_size`` (module docstring: rule reward + ReRe's ranking reward)."""
    if not 1 <= beam_rank <= group_size:
        raise ValueError(f"beam_rank {beam_rank} outside 1..{group_size}")
    ranking = None if ranking is None else [int(i) for i in ranking]
    position = ranking.index(int(target_index)) + 1 if ranking and int(target_index) in ranking[:top_k] else 0
    rule = ndcg_at_rank(position, top_k) if position else 0.0
    correct = position == 1
    penalty = rank_penalties(group_size)[beam_rank - 1] if group_has_correct and not correct else 0.0
    return ReReReward(rule + penalty, rule, penalty, ranking is not None, position, correct)


def rere_group_rewards(rankings: Sequence[Sequence[int] | None], target_index: int, top_k: int) -> list[ReReReward]:
    """Rewards of one group, ``rankings`` in beam order (best first)."""
    hit = any(r is not None and len(r) > 0 and int(r[0]) == int(target_index) for r in rankings)
    return [rere_reward(r, target_index, beam_rank=j + 1, group_size=len(rankings), group_has_correct=hit,
                        top_k=top_k) for j, r in enumerate(rankings)]


class ReReRewardFunc:
    """TRL reward function: the parser's verdict per completion (one answer turn, no tools), then the
    group rewards. TRL passes each group's G completions consecutively, in beam order."""

    __name__ = "rere"

    def __init__(self, tokenizer: Any, top_k: int, group_size: int, stops: Sequence[int]) -> None:
        self.tokenizer, self.top_k, self.group_size = tokenizer, int(top_k), int(group_size)
        self.stops = set(int(s) for s in stops)
        self.last: list[ReReReward] = []

    def ranking(self, ids: Sequence[int], n_candidates: int) -> tuple[int, ...] | None:
        turns, truncated = assistant_turns(ids, None, self.stops, self.tokenizer)
        return judge_trajectory(turns, n_candidates, self.top_k, 0, None, truncated).ranking

    def __call__(self, prompts: list, completions: list, completion_ids: list, target_index: list,
                 candidates: list, log_metric: Callable[[str, float], None] | None = None, **_: Any) -> list[float]:
        g = self.group_size
        if len(completion_ids) % g:
            raise ValueError(f"{len(completion_ids)} completions are not whole groups of {g}")
        self.last = []
        for start in range(0, len(completion_ids), g):
            if len({int(t) for t in target_index[start:start + g]}) != 1:
                raise ValueError("a group mixes training instances")
            rankings = [self.ranking(completion_ids[i], len(candidates[i])) for i in range(start, start + g)]
            self.last += rere_group_rewards(rankings, int(target_index[start]), self.top_k)
        for r in self.last if log_metric is not None else ():
            for key in ("rule", "ranking", "valid", "correct"):
                log_metric(f"rere/{key}", float(getattr(r, key)))
        return [r.total for r in self.last]


# ------------------------------ The trainer -----------------------------------------------------

def rere_grpo_config(profile: Profile, output_dir: Path | str, n_candidates: int, beam_search: bool = True,
                     **overrides: Any):
    """TRL ``GRPOConfig``: the kit's harness (:func:`recrepro.rl.grpo.build_grpo_config`) with ReRe's recipe
    and every generation setting explicit (nothing is left to a model's ``generation_config.json``)."""
    g = profile.rta.group_size
    budget = answer_token_budget(n_candidates, profile.agent.top_k)
    search = (dict(do_sample=False, num_beams=g, num_return_sequences=g, length_penalty=LENGTH_PENALTY)
              if beam_search else dict(do_sample=True, num_beams=1, num_return_sequences=1))
    settings: dict[str, Any] = dict(
        num_generations=g, temperature=TEMPERATURE, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0,
        max_completion_length=budget,
        generation_kwargs=dict(search, max_new_tokens=budget, min_new_tokens=0, no_repeat_ngram_size=0,
                               renormalize_logits=True),
        use_vllm=False, scale_rewards="group", loss_type="grpo", beta=profile.rta.beta, num_iterations=1,
        learning_rate=profile.sft.learning_rate, lr_scheduler_type=LR_SCHEDULER, warmup_steps=WARMUP_RATIO,
        max_grad_norm=MAX_GRAD_NORM, save_strategy="no",
    )
    settings.update(overrides)
    return build_grpo_config(profile, output_dir, **settings)


@functools.lru_cache(maxsize=1)
def rere_trainer_class() -> type:
    """:class:`ReReTrainer`, built on first use so that importing this module does not import TRL."""
    from trl import GRPOTrainer

    class ReReTrainer(GRPOTrainer):
        """TRL 1.16 ``GRPOTrainer`` generating under :func:`constrained_generation` (transformers only)."""

        def __init__(self, *args: Any, n_candidates: int, top_k: int, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if self.use_vllm or self.use_transformers_continuous_batching:
                raise ValueError("ReRe's constrained decoding runs through transformers generate: set use_vllm=False")
            tokenizer = getattr(self, "_tokenizer", self.processing_class)
            self.answer_grammar = CandidateListGrammar(tokenizer, n_candidates, top_k, self.eos_token_ids)

        def _generate_single_turn(self, *args: Any, **kwargs: Any):
            with constrained_generation(self.accelerator.unwrap_model(self.model_wrapped), self.answer_grammar):
                return super()._generate_single_turn(*args, **kwargs)

    return ReReTrainer


# ------------------------------ The stage -------------------------------------------------------

def rere_dir(profile: Profile, root: Path | str, dataset: str) -> Path:
    """``runs/<profile>/rere/<dataset>``."""
    return paths.stage_dir(profile, "rere", dataset, root)


def fit_rere(profile: Profile, model_path: str, samples: Any, views: Mapping[str, Any], out_dir: Path,
             log: Callable[[str], None] = print, what: str = "rere training",
             beam_search: bool = True) -> dict[str, Any]:
    """ReRe on ``samples`` from ``model_path`` with a fresh LoRA adapter; the merged model goes to ``out_dir``.
    Returns what goes into ``rere_info.json`` (without the stamp)."""
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback

    rows = training_rows(samples, views, prompt_spec(profile, "r"))
    n_candidates = len(rows[0]["candidates"])
    if any(len(r["candidates"]) != n_candidates for r in rows):
        raise ValueError("every training instance needs the same number of candidates")
    model, tokenizer = load_policy(model_path, profile)
    reward = ReReRewardFunc(tokenizer, profile.agent.top_k, profile.rta.group_size, stop_token_ids(tokenizer))
    config = rere_grpo_config(profile, Path(out_dir) / "trainer", n_candidates, beam_search)
    sft = profile.sft
    lora = LoraConfig(r=sft.lora_r, lora_alpha=sft.lora_alpha, lora_dropout=sft.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    log(f"[rere] {len(rows)} instances, G={profile.rta.group_size}, {'beam search' if beam_search else 'sampling'}")
    began = time.perf_counter()
    trainer = rere_trainer_class()(model=model, reward_funcs=[reward], args=config, train_dataset=build_dataset(rows),
                                   processing_class=tokenizer, peft_config=lora, n_candidates=n_candidates,
                                   top_k=profile.agent.top_k)
    trainer.remove_callback(PrinterCallback)  # progress lines instead of a dict per step
    trainer.add_callback(trainer_progress(what, note_key="reward"))
    trainer.train()
    history = [e for e in trainer.state.log_history if "reward" in e]
    merged = trainer.model.merge_and_unload()  # a plain model: evaluation and vLLM load it as is
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    shutil.rmtree(Path(out_dir) / "trainer", ignore_errors=True)
    return {"instances": len(rows), "steps": trainer.state.global_step,
            "wall_s_train": round(time.perf_counter() - began, 2),
            "rewards": [e["reward"] for e in history], "valid": [e.get("rere/valid") for e in history],
            "correct": [e.get("rere/correct") for e in history], "settings": rere_settings(profile, beam_search)}


RTA_SETTINGS = ("group_size", "batch_size", "epochs", "max_steps", "train_instances", "gradient_accumulation_steps",
                "beta")
SFT_SETTINGS = ("learning_rate", "lora_r", "lora_alpha", "lora_dropout")


def rere_settings(profile: Profile, beam_search: bool = True) -> dict[str, Any]:
    """The settings a run uses (``profile`` as :func:`recrepro.baselines.sft.baseline_profile` gives it), then ReRe's fixed recipe."""
    return {**{k: getattr(profile.rta, k) for k in RTA_SETTINGS}, **{k: getattr(profile.sft, k) for k in SFT_SETTINGS},
            "top_k": profile.agent.top_k, "beam_search": beam_search, "temperature": TEMPERATURE,
            "length_penalty": LENGTH_PENALTY, "lr_scheduler": LR_SCHEDULER, "warmup_ratio": WARMUP_RATIO,
            "max_grad_norm": MAX_GRAD_NORM}


def rere_stamp(profile: Profile, dataset: str, sft_info: Mapping[str, Any]) -> dict[str, Any]:
    """Recipe, settings, the SFT stage's stamp and the exact SFT model ReRe starts from."""
    sft_final = Path(sft_info["final"])
    return {"rere_version": RERE_VERSION, "settings": rere_settings(profile), "seed": profile.run.seed,
            "sft_stage": sft_info["stamp"], "sft_model": sha256_file(sft_final / "sft_info.json"),
            "stage": sft_stamp(profile, dataset, str(sft_final))}


def train_rere(profile: Profile, root: Path | str, dataset: str, force: bool = False, *,
               start_model: str | None = None, log: Callable[[str], None] = print) -> Path:
    """SFT stage (the cached TALLRec-like model), then ReRe with the ``rere`` section's group, subset, steps
    and rate; returns ``runs/<profile>/rere/<dataset>/final``.

    ``start_model`` defaults to the agent's start model (:func:`recrepro.rl.rta.starting_model`);
    ``force`` retrains ReRe only (the SFT stage keeps its own cache).
    """
    start = start_model or starting_model(profile, root)
    sft_info = train_sft(profile, root, dataset, start, log=log)
    own = baseline_profile(profile, "rere")
    final = rere_dir(profile, root, dataset) / "final"
    stamp = rere_stamp(own, dataset, sft_info)

    def fit(out_dir: Path) -> dict[str, Any]:
        bench = load_benchmark(profile, dataset, root)
        train = seeded_subset(bench.samples["train"], own.rta.train_instances, profile.run.seed)
        return fit_rere(own, sft_info["final"], train, item_views(bench.items), out_dir, log,
                        what=f"rere/{dataset} training")

    train_once(own, final, "rere_info.json", stamp, fit, force=force, log=log,
               skipping=f"[rere] {dataset}: config and SFT model unchanged, skipping training")
    return final


CONSTRAINED_EVAL = "candidate-list constrained greedy"  # [G] ReRe decodes under its constraint at test time too


def evaluate_rere(profile: Profile, root: Path | str, dataset: str, final: Path | str, force: bool = False,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """ReRe's answers on the agent's test subset -> its Table 1 row: one greedy answer turn under the
    candidate-list constraint (ReRe generates under its item constraint at test time; a beam of one, the
    other rows being greedy too), scored by the same parser and metrics."""
    stamp = stamps.read_json(Path(final) / stamps.STAMP_FILE)

    def constrained(backend: Any) -> contextlib.AbstractContextManager:
        model = getattr(backend.generator, "model", None)
        if model is None:
            raise ValueError("ReRe's constrained evaluation needs the transformers back end (a model with generate)")
        grammar = CandidateListGrammar(backend.tokenizer, profile.data.n_candidates, profile.agent.top_k)
        return constrained_generation(model, grammar)

    return evaluate_answer_model(profile, root, dataset, str(final), stamp, TABLE1_NAME,
                                 rere_dir(profile, root, dataset), force=force, log=log,
                                 generation_context=constrained, context_name=CONSTRAINED_EVAL,
                                 transformers_only=True)


# The constrained decoding (:mod:`recrepro.baselines.constrained`) is ReRe's, so it is importable from here too.
__all__: Sequence[str] = ("TABLE1_NAME", "CONSTRAINED_EVAL", "CandidateListGrammar", "CandidateListLogitsProcessor",
                          "answer_token_budget", "constrained_generation", "rank_penalties", "rere_reward",
                          "rere_group_rewards", "ReReRewardFunc", "rere_grpo_config", "rere_trainer_class", "fit_rere",
                          "train_rere", "evaluate_rere")
