"""S-DPO baseline (core): softmax DPO with several negatives, after the TALLRec-like SFT stage.

S-DPO is "On Softmax Direct Preference Optimization for Recommendation" (Chen et al., NeurIPS
2024; arXiv 2406.09215, code github.com/chenyuxin1999/S-DPO). PAPER.md 1.6 lists it among the
Table 1 baselines trained on the same backbone (learning rate 1e-5). Kept [N]: the softmax-DPO
loss over :data:`N_NEGATIVES` negatives drawn from the prompt's own candidates, :data:`BETA`, SFT
first and the SFT model as the frozen reference. Adapted [G]: the kit answers a ranked list, so the
chosen list starts at the target and each rejected list at a negative; the preference learned is
still S-DPO's, the target first. :class:`SDPOTrainer` is TRL's ``DPOTrainer`` with its pairwise data
path and loss replaced; :func:`evaluate_sdpo` scores it exactly as the TALLRec-like row.

Details (loss, negatives, schedule, mapping, training): docs/protocol.md, "S-DPO: implementation notes".
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from recrepro import paths, stamps
from recrepro.agent.prompt import item_views
from recrepro.baselines.sft import (baseline_profile, encode_example, evaluate_answer_model, fit_examples, sft_stamp,
                                   train_once, train_sft, training_kwargs)
from recrepro.config import Profile
from recrepro.data.pipeline import load_benchmark
from recrepro.io import sha256_file
from recrepro.models import load_causal_lm, resolve_device
from recrepro.progress import trainer_progress
from recrepro.rl.rta import prompt_spec, seeded_subset, starting_model

SDPO_VERSION = "v1"  # bump when the recipe below changes in a way that changes the model
TABLE1_NAME = "S-DPO"
N_NEGATIVES = 3  # [N] S-DPO code, softmax_dpo.sh: --neg_num 3
BETA = 1.0  # [N] S-DPO code, softmax_dpo.sh: --beta 1
TRAIN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


# ------------------------------------------------------------------------------------------------
# The loss
# ------------------------------------------------------------------------------------------------

def sdpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
              ref_rejected_logps: torch.Tensor, beta: float,
              mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example S-DPO loss and reward margin.

    ``chosen_logps`` and ``ref_chosen_logps`` are [B]; ``rejected_logps`` and ``ref_rejected_logps``
    [B, K]. A negative is used where ``mask`` (bool [B, K], default all) is true and both of its
    log-probabilities are finite (``-inf`` marks a missing one). With d_j = beta * (r_j - r_w),
    r = log pi - log ref: ``loss = -log sigmoid(-logsumexp_j d_j)`` (= log(1 + sum_j exp d_j)).
    The margin is ``-logsumexp_j d_j``: for K = 1 DPO's ``beta * (r_w - r_l)``, for K > 1 a soft
    minimum of the pairwise margins; the loss is ``-log sigmoid(margin)``. A row without any
    negative has loss 0 (no gradient) and margin +inf.
    """
    if rejected_logps.dim() != 2 or rejected_logps.shape != ref_rejected_logps.shape:
        raise ValueError(f"rejected log-probs must be [batch, K] and match; got {tuple(rejected_logps.shape)} "
                         f"and {tuple(ref_rejected_logps.shape)}")
    valid = torch.isfinite(rejected_logps) & torch.isfinite(ref_rejected_logps)
    if mask is not None:
        valid = valid & mask.bool()
    chosen_ratio = chosen_logps - ref_chosen_logps
    # where() rather than arithmetic on the -inf entries: masked entries get exactly zero gradient.
    rejected_ratio = torch.where(valid, rejected_logps - ref_rejected_logps, torch.zeros_like(rejected_logps))
    diffs = beta * (rejected_ratio - chosen_ratio.unsqueeze(1))
    diffs = torch.where(valid, diffs, torch.full_like(diffs, float("-inf")))
    any_valid = valid.any(dim=1)
    # A row of -inf only would give a NaN gradient in logsumexp; it is replaced by 0 and its loss by 0.
    lse = torch.logsumexp(torch.where(any_valid.unsqueeze(1), diffs, torch.zeros_like(diffs)), dim=1)
    losses = torch.where(any_valid, -F.logsigmoid(-lse), torch.zeros_like(lse))  # softplus(lse), exactly
    margins = torch.where(any_valid, -lse, torch.full_like(lse, float("inf"))).detach()
    return losses, margins


# ------------------------------------------------------------------------------------------------
# Training data
# ------------------------------------------------------------------------------------------------

def negative_indices(n_candidates: int, target_index: int, k: int, seed: int, sample_id: int) -> list[int]:
    """``min(k, n_candidates - 1)`` distinct 1-based candidate positions other than the target.

    Drawn uniformly with a generator seeded by (run seed, sample id): the same for an instance
    whatever subset or order it is built in.
    """
    if not 1 <= target_index <= n_candidates:
        raise ValueError(f"target_index {target_index} outside 1..{n_candidates}")
    pool = [i for i in range(1, n_candidates + 1) if i != target_index]
    rng = np.random.default_rng([int(seed), int(sample_id)])
    return [int(i) for i in rng.choice(pool, size=min(k, len(pool)), replace=False)]


def encode_preference(tokenizer: Any, row: Mapping[str, Any], views: Mapping[str, Any], spec: Any, top_k: int,
                      n_negatives: int, seed: int) -> dict[str, Any]:
    """One training instance: prompt ids, the chosen answer's ids, one list of ids per rejected answer.

    Each completion is laid out by :func:`recrepro.baselines.sft.encode_example` (answer + end of
    turn); a rejected one is the SFT answer of the same prompt with a negative as its target.
    """
    target = int(row["target_index"])
    negatives = negative_indices(len(row["candidates"]), target, n_negatives, seed, int(row["sample_id"]))

    def split(start: int) -> tuple[list[int], list[int]]:
        example = encode_example(tokenizer, {**row, "target_index": start}, views, spec, top_k)
        n_prompt = example["completion_mask"].index(1)
        return example["input_ids"][:n_prompt], example["input_ids"][n_prompt:]

    prompt, chosen = split(target)
    rejected = []
    for negative in negatives:
        other_prompt, completion = split(negative)
        if other_prompt != prompt:  # the prompt must not depend on the target
            raise ValueError(f"sample {row['sample_id']}: the prompt changes with the target position")
        rejected.append(completion)
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected,
            "sample_id": int(row["sample_id"]), "target_index": target, "negative_indices": negatives}


def preference_length(example: Mapping[str, Any]) -> int:
    """Tokens of an S-DPO instance as trained: its prompt plus its longest completion."""
    return len(example["prompt_ids"]) + max(len(c) for c in [example["chosen_ids"], *example["rejected_ids"]])


def fit_preferences(examples: list[dict[str, Any]], max_length: int,
                    log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Drop instances whose prompt plus longest completion exceeds ``max_length`` (no truncation)."""
    return fit_examples(examples, max_length, log, what="sdpo", length=preference_length)


@dataclasses.dataclass
class SoftmaxPreferenceCollator:
    """Pads a batch of B instances to B chosen rows, then B x K rejected rows (row-major).

    K is the batch's largest number of negatives; a missing negative is a one-token stand-in with
    an empty completion, flagged false in ``rejected_mask`` [B, K] (the loss skips it). Right
    padding; ``completion_mask`` marks the answer tokens.
    """

    pad_token_id: int

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        k = max(len(e["rejected_ids"]) for e in examples)
        rows: list[tuple[list[int], int]] = [(list(e["prompt_ids"]), len(e["chosen_ids"])) for e in examples]
        rows = [(p + list(e["chosen_ids"]), n) for (p, n), e in zip(rows, examples)]
        for e in examples:
            for j in range(k):
                if j < len(e["rejected_ids"]):
                    rows.append((list(e["prompt_ids"]) + list(e["rejected_ids"][j]), len(e["rejected_ids"][j])))
                else:
                    rows.append((list(e["prompt_ids"][:1]), 0))
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        completion = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, n_completion) in enumerate(rows):
            input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[i, :len(ids)] = 1
            completion[i, len(ids) - n_completion:len(ids)] = 1
        mask = torch.tensor([[j < len(e["rejected_ids"]) for j in range(k)] for e in examples], dtype=torch.bool)
        return {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion,
                "rejected_mask": mask}


# ------------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------------

def _completion_logps(outputs: Any, completion_mask: torch.Tensor) -> torch.Tensor:
    """Sum of the answer tokens' log-probabilities per row, from a fused-LM-head forward."""
    shift_mask = completion_mask[:, 1:]
    per_token = outputs.log_probs[:, -shift_mask.size(1):]  # prompt-learning PEFT prepends virtual tokens
    return per_token.masked_fill(shift_mask == 0, 0.0).sum(dim=1)


@functools.lru_cache(maxsize=1)
def sdpo_trainer_class() -> type:
    """:class:`SDPOTrainer`, built on first use so that importing this module does not import TRL."""
    from accelerate.utils import is_peft_model
    from trl import DPOTrainer
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import use_adapter

    class SDPOTrainer(DPOTrainer):
        """TRL 1.16 ``DPOTrainer`` with the S-DPO loss over one chosen and K rejected completions.

        Kept from DPOTrainer: model and peft set-up, the reference (adapter disabled, or a ``ref``
        adapter, or ``ref_model``), the fused LM head, dropout disabled, the metric log. Replaced:
        ``_prepare_dataset`` (the rows come tokenized by :func:`encode_preference`; DPOTrainer's
        tokenizer knows one rejected text only) and ``compute_loss`` (pairwise losses -> :func:`sdpo_loss`).
        The collator is :class:`SoftmaxPreferenceCollator`. ``precompute_ref_log_probs`` is not supported.
        """

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            missing = [c for c in TRAIN_COLUMNS if c not in dataset.column_names]
            if missing:
                raise ValueError(f"S-DPO {dataset_name} rows must be tokenized by encode_preference; missing {missing}")
            return dataset

        def _reference_context(self):
            if self.ref_model is None and is_peft_model(self.model):
                unwrapped = self.accelerator.unwrap_model(self.model)
                return use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
            return contextlib.nullcontext()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or self.precompute_ref_logps:
                raise NotImplementedError("S-DPO computes the loss only, with the reference on the fly")
            mode = "train" if self.model.training else "eval"
            completion_mask, rejected_mask = inputs["completion_mask"], inputs["rejected_mask"].bool()
            n, k = rejected_mask.shape
            kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "use_cache": False}
            labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
            logps = _completion_logps(model(**kwargs, labels=labels, fused_lm_head=True), completion_mask)
            with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
                with self._reference_context():
                    reference = self.model if self.ref_model is None else self.ref_model
                    ref_logps = _completion_logps(reference(**kwargs, labels=labels, fused_lm_head=True),
                                                  completion_mask)
            chosen, rejected = logps[:n], logps[n:].view(n, k)
            ref_chosen, ref_rejected = ref_logps[:n], ref_logps[n:].view(n, k)
            losses, margins = sdpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta, rejected_mask)
            self._log_metrics(mode, chosen, rejected, ref_chosen, ref_rejected, rejected_mask, margins)
            return losses.mean()  # the code's losses.mean() over the batch

        def _log_metrics(self, mode, chosen, rejected, ref_chosen, ref_rejected, mask, margins) -> None:
            # Whole [B] / [B, K] tensors are gathered (same shapes on every process), then masked.
            gather = self.accelerator.gather
            chosen_rewards = self.beta * (chosen - ref_chosen).detach()
            rejected_rewards = self.beta * (rejected - ref_rejected).detach()
            beaten = ((chosen_rewards.unsqueeze(1) > rejected_rewards) | ~mask).all(dim=1)  # the code's accuracy
            valid, finite = gather(mask), gather(margins)
            metrics = self._metrics[mode]
            metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
            metrics["rewards/rejected"].append(gather(rejected_rewards)[valid].mean().item())
            metrics["rewards/accuracies"].append(gather(beaten.float()).mean().item())
            metrics["rewards/margins"].append(finite[torch.isfinite(finite)].mean().item())
            metrics["logps/chosen"].append(gather(chosen.detach()).mean().item())
            metrics["logps/rejected"].append(gather(rejected.detach())[valid].mean().item())

    return SDPOTrainer


def __getattr__(name: str) -> Any:
    # ``from recrepro.baselines.sdpo import SDPOTrainer`` without importing TRL with the module.
    if name == "SDPOTrainer":
        return sdpo_trainer_class()
    raise AttributeError(name)


# ------------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------------

def sdpo_dir(profile: Profile, root: Path | str, dataset: str) -> Path:
    """``runs/<profile>/sdpo/<dataset>``."""
    return paths.stage_dir(profile, "sdpo", dataset, root)


def trainer_args(profile: Profile, output_dir: Path, on_cpu: bool):
    """TRL ``DPOConfig`` from ``sft`` (as :func:`recrepro.baselines.sft.baseline_profile` sets it) and the S-DPO constants."""
    from trl import DPOConfig

    return DPOConfig(**training_kwargs(profile, output_dir, on_cpu),
                     beta=BETA, max_length=profile.sft.max_length)  # longer instances dropped before (fit_preferences)


def fit_sdpo(profile: Profile, model_path: str, samples: Any, views: Mapping[str, Any], out_dir: Path,
             log: Callable[[str], None] = print, what: str = "sdpo training") -> dict[str, Any]:
    """Train a LoRA adapter on ``model_path`` with S-DPO on ``samples``; save the merged model in ``out_dir``.

    ``samples`` (a frame of training samples) become instances through :func:`encode_preference`
    with ``model_path``'s tokenizer; ``what`` names the progress lines. Returns what goes into
    ``sdpo_info.json`` (without the stamp).
    """
    import datasets
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback

    device = resolve_device(profile.run.device)
    loaded = load_causal_lm(model_path, device=device, padding_side="right")
    spec = prompt_spec(profile, "r")
    examples = fit_preferences([encode_preference(loaded.tokenizer, row, views, spec, profile.agent.top_k, N_NEGATIVES,
                                                  profile.run.seed) for row in samples.to_dict("records")],
                               profile.sft.max_length, log)
    rows = datasets.Dataset.from_list([{c: e[c] for c in TRAIN_COLUMNS} for e in examples])
    lora = LoraConfig(r=profile.sft.lora_r, lora_alpha=profile.sft.lora_alpha, lora_dropout=profile.sft.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    began = time.perf_counter()
    trainer = sdpo_trainer_class()(
        model=loaded.model, args=trainer_args(profile, Path(out_dir) / "trainer", device == "cpu"),
        data_collator=SoftmaxPreferenceCollator(loaded.tokenizer.pad_token_id), train_dataset=rows,
        processing_class=loaded.tokenizer, peft_config=lora)
    trainer.remove_callback(PrinterCallback)  # progress lines instead of a dict per step
    trainer.add_callback(trainer_progress(what, note_key="loss"))
    trainer.train()
    history = [e for e in trainer.state.log_history if "loss" in e]
    merged = trainer.model.merge_and_unload()  # a plain model: the rollout engine and vLLM load it as is
    merged.save_pretrained(out_dir)
    loaded.tokenizer.save_pretrained(out_dir)
    shutil.rmtree(Path(out_dir) / "trainer", ignore_errors=True)
    return {"instances": len(examples), "steps": trainer.state.global_step,
            "wall_s_train": round(time.perf_counter() - began, 2), "losses": [e["loss"] for e in history],
            "margins": [e.get("rewards/margins") for e in history],
            "accuracies": [e.get("rewards/accuracies") for e in history],
            "settings": {"beta": BETA, "n_negatives": N_NEGATIVES, **dataclasses.asdict(profile.sft)}}


def sdpo_stamp(profile: Profile, dataset: str, sft_info: Mapping[str, Any]) -> dict[str, Any]:
    """Recipe, S-DPO constants, the SFT stage's stamp and the exact SFT model it starts from."""
    sft_final = Path(sft_info["final"])
    return {"sdpo_version": SDPO_VERSION, "beta": BETA, "n_negatives": N_NEGATIVES, "sft_stage": sft_info["stamp"],
            "sft_model": sha256_file(sft_final / "sft_info.json"),  # changes whenever SFT retrains
            "stage": sft_stamp(profile, dataset, str(sft_final))}


def train_sdpo(profile: Profile, root: Path | str, dataset: str, force: bool = False, *,
               start_model: str | None = None, log: Callable[[str], None] = print) -> Path:
    """SFT stage (the cached TALLRec-like model), then S-DPO with the ``sdpo`` section's subset, steps and
    rate; returns ``runs/<profile>/sdpo/<dataset>/final``.

    ``start_model`` defaults to the agent's start model (:func:`recrepro.rl.rta.starting_model`);
    ``force`` retrains S-DPO only (the SFT stage keeps its own cache).
    """
    start = start_model or starting_model(profile, root)
    sft_info = train_sft(profile, root, dataset, start, log=log)
    own = baseline_profile(profile, "sdpo")
    final = sdpo_dir(profile, root, dataset) / "final"
    stamp = sdpo_stamp(own, dataset, sft_info)

    def fit(out_dir: Path) -> dict[str, Any]:
        bench = load_benchmark(profile, dataset, root)
        train = seeded_subset(bench.samples["train"], own.sft.train_instances, profile.run.seed)
        return fit_sdpo(own, sft_info["final"], train, item_views(bench.items), out_dir, log,
                        what=f"sdpo/{dataset} training")

    train_once(own, final, "sdpo_info.json", stamp, fit, force=force, log=log,
               skipping=f"[sdpo] {dataset}: config and SFT model unchanged, skipping training")
    return final


def evaluate_sdpo(profile: Profile, root: Path | str, dataset: str, final: Path | str, force: bool = False,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Greedy one-turn answers of the S-DPO model ``final`` on the agent's test subset -> its Table 1 row."""
    stamp = stamps.read_json(Path(final) / stamps.STAMP_FILE)
    return evaluate_answer_model(profile, root, dataset, str(final), stamp, TABLE1_NAME,
                                 sdpo_dir(profile, root, dataset), force=force, log=log)


__all__: Sequence[str] = ("BETA", "N_NEGATIVES", "TABLE1_NAME", "sdpo_loss", "negative_indices", "encode_preference",
                          "SoftmaxPreferenceCollator", "sdpo_trainer_class", "fit_sdpo", "train_sdpo", "evaluate_sdpo")
