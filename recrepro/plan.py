"""``python -m recrepro plan --profile paper``: processes, memory per GPU and time of every GPU stage.

Nothing runs; the plan is arithmetic on the profile and the declared hardware (``--gpus``,
``--gpu-memory-gib``; the paper's 4 x A800 80 GB by default, PAPER.md 1.4). It exits non-zero,
naming the profile key to change, when a stage does not fit. Memory per GPU counts the ZeRO-3
states, the reference model, the vLLM pool and its KV cache, activations [G estimate], in-training
validation and :data:`OVERHEAD_GIB`; time [G estimate] scales the paper's 16-21 s per request on one
A800 (PAPER.md 1.3) to the sample counts of its dataset statistics (PAPER.md 1.2).

Details (the memory and time formulas): docs/internals.md, "plan.py".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from recrepro.config import ConfigError, Profile, model_context
from recrepro.paper import reported_dataset_stats

GIB = 1024 ** 3
OVERHEAD_GIB = 3.0  # [G] CUDA context, NCCL buffers, fragmentation
PAPER_SECONDS_PER_REQUEST = (16.0, 21.0)  # [N] PAPER.md 1.3: one A800, vLLM, end to end
TRAIN_SHARE = 0.8  # [N] PAPER.md 1.2: global temporal split 8:1:1


def completions_per_micro_step(profile: Profile, processes: int) -> int:
    """Completions per process per micro-step: ``rta.batch_size`` instances x G spread over processes and
    ``rta.gradient_accumulation_steps`` (as TRL splits them); a split that does not divide evenly raises."""
    rta = profile.rta
    completions = rta.batch_size * rta.group_size
    split = processes * rta.gradient_accumulation_steps
    if completions % split:
        raise ConfigError(f"rta.gradient_accumulation_steps: rta.batch_size x rta.group_size = {completions} completions "
                          f"per step cannot be split evenly over {processes} process(es) x "
                          f"{rta.gradient_accumulation_steps} accumulation steps")
    return completions // split


@dataclass(frozen=True)
class Shape:
    """What the memory formulas need of a backbone (its hub config.json)."""

    params: float
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    vocab: int

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * 2


SHAPES = {  # config.json of each checkpoint; parameters from the model cards
    "Qwen/Qwen3-1.7B": Shape(1.7e9, 28, 2048, 8, 128, 151_936),
    "Qwen/Qwen3-4B-Instruct-2507": Shape(4.0e9, 36, 2560, 8, 128, 151_936),
    "Qwen/Qwen3-8B": Shape(8.2e9, 36, 4096, 8, 128, 151_936),
}


@dataclass(frozen=True)
class Hardware:
    gpus: int = 4
    gpu_memory_gib: float = 80.0
    concurrency: int = 64  # [G] requests vLLM generates at once per GPU


@dataclass(frozen=True)
class TrainMemory:
    """Bytes per GPU of one training process, by part."""

    states: float
    reference: float
    vllm_pool: float
    vllm_weights: float
    activations: float
    validation_kv: float
    overhead: float

    @property
    def total(self) -> float:
        return self.states + self.reference + self.vllm_pool + max(self.activations, self.validation_kv) + self.overhead

    @property
    def kv_cache(self) -> float:
        return self.vllm_pool - self.vllm_weights


class PlanError(ValueError):
    """The profile does not fit the declared hardware; the message names the key to change."""


def shape_of(name: str) -> Shape:
    if name not in SHAPES:
        raise PlanError(f"no memory shape for backbone {name!r}; known: {', '.join(SHAPES)}")
    return SHAPES[name]


def micro_batch(profile: Profile, processes: int) -> int:
    """Completions per process per micro-step (:func:`completions_per_micro_step`)."""
    try:
        return completions_per_micro_step(profile, processes)
    except ConfigError as exc:
        raise PlanError(str(exc)) from None


def train_memory(profile: Profile, shape: Shape, hw: Hardware) -> TrainMemory:
    rta, n = profile.rta, hw.gpus
    context, completion = model_context(profile), rta.max_completion_length
    b = micro_batch(profile, n)
    per_completion = shape.layers * context * shape.hidden * 2 + completion * shape.vocab * 2
    activations = b * per_completion + completion * shape.vocab * 4
    validation = (rta.eval_batch_size or rta.eval_instances) * context * shape.kv_bytes_per_token
    return TrainMemory(states=16 * shape.params / n, reference=2 * shape.params / n if rta.beta > 0 else 0.0,
                       vllm_pool=rta.vllm_gpu_memory_utilization * hw.gpu_memory_gib * GIB,
                       vllm_weights=2 * shape.params, activations=activations, validation_kv=validation,
                       overhead=OVERHEAD_GIB * GIB)


def check_fits(memory: TrainMemory, hw: Hardware, what: str) -> None:
    """Raise :class:`PlanError` naming the key to change when ``memory`` does not fit a GPU."""
    if memory.kv_cache <= 0:
        raise PlanError(f"{what}: rta.vllm_gpu_memory_utilization leaves no KV cache after vLLM's weights "
                        f"({memory.vllm_pool / GIB:.1f} GiB pool, {memory.vllm_weights / GIB:.1f} GiB weights)")
    if memory.total > hw.gpu_memory_gib * GIB:
        parts = {"rta.gradient_accumulation_steps": memory.activations, "rta.eval_batch_size": memory.validation_kv,
                 "rta.vllm_gpu_memory_utilization": memory.vllm_pool, "--gpus (ZeRO-3 shards states)": memory.states}
        key = max(parts, key=parts.get)
        raise PlanError(f"{what}: {memory.total / GIB:.1f} GiB per GPU > {hw.gpu_memory_gib:g} GiB; "
                        f"change {key} (largest part: {parts[key] / GIB:.1f} GiB)")


def training_samples(dataset: str) -> int:
    """The paper's training samples of ``dataset``, estimated from its statistics (PAPER.md 1.2)."""
    stats = reported_dataset_stats().set_index("dataset")
    return int((stats.loc[dataset, "interactions"] - stats.loc[dataset, "users"]) * TRAIN_SHARE)


def steps(profile: Profile, samples: int) -> int:
    rta = profile.rta
    if rta.max_steps > 0:
        return rta.max_steps
    return math.ceil(samples / rta.batch_size) * rta.epochs


def hours(requests: float, hw: Hardware) -> tuple[float, float]:
    """(low, high) hours for ``requests`` at the paper's latency, ``hw.concurrency`` at a time per GPU."""
    return tuple(requests * s / (hw.gpus * hw.concurrency) / 3600 for s in PAPER_SECONDS_PER_REQUEST)


def stage_lines(profile: Profile, hw: Hardware) -> list[str]:
    """The plan as text lines; raises :class:`PlanError` when a training stage does not fit."""
    p = f"--profile {profile.run.name}"
    launch = "accelerate launch --config_file configs/accelerate/zero3.yaml -m"
    lines = [f"Plan for profile {profile.run.name!r} on {hw.gpus} x {hw.gpu_memory_gib:g} GiB "
             f"(vLLM max_model_len {model_context(profile)} tokens)", ""]
    backbone = profile.agent.model_name_or_path
    for name in dict.fromkeys([backbone, *profile.sweeps.backbones]):
        shape = shape_of(name)
        mem = train_memory(profile, shape, hw)
        check_fits(mem, hw, f"training {name}")
        lines.append(f"{name}: per GPU states {mem.states / GIB:.1f} + vLLM pool {mem.vllm_pool / GIB:.1f} "
                     f"(weights {mem.vllm_weights / GIB:.1f}, KV {mem.kv_cache / GIB:.1f} = "
                     f"{mem.kv_cache / shape.kv_bytes_per_token / 1e3:.0f}k tokens) + max(activations "
                     f"{mem.activations / GIB:.1f}, validation KV {mem.validation_kv / GIB:.1f}) + overhead "
                     f"{mem.overhead / GIB:.1f} = {mem.total / GIB:.1f} GiB; micro-batch {micro_batch(profile, hw.gpus)}")
    lines.append("")
    for dataset in profile.data.datasets:
        samples = training_samples(dataset)
        n_steps = steps(profile, samples)
        trajectories = n_steps * profile.rta.batch_size * profile.rta.group_size
        lo, hi = hours(trajectories, hw)
        lines += [f"[{dataset}] ~{samples:,} training samples, {n_steps} steps, {trajectories:,} trajectories "
                  f"per variant: {lo:.1f}-{hi:.1f} h each on {hw.gpus} GPUs",
                  f"  {launch} recrepro.stages.rta {p} --dataset {dataset} --variant tirr --stage train",
                  f"  {launch} recrepro.stages.rta {p} --dataset {dataset} --variant r --stage train",
                  f"  python -m recrepro.stages.rta {p} --dataset {dataset} --variant both --stage eval   # 1 GPU",
                  f"  python -m recrepro.stages.ppr {p} --dataset {dataset} --stage mine                  # 1 GPU",
                  f"  {launch} recrepro.stages.ppr {p} --dataset {dataset} --stage train"]
    lines += baseline_lines(profile, hw)
    lines += ["", "Then the notebooks find every finished policy and only evaluate: python -m recrepro run " + p]
    return lines


# Table 1's trained LLM baselines, in training order (S-DPO and ReRe start from the SFT model).
BASELINE_SECTIONS = ("sft", "sdpo", "llara", "rere")


def baseline_lines(profile: Profile, hw: Hardware) -> list[str]:
    """The GPU commands of the trained LLM baselines (LoRA, DDP: one adapter fits a GPU); raises
    :class:`PlanError` when ``sft.batch_size`` (their global batch) does not split over the GPUs."""
    enabled = [name for name in BASELINE_SECTIONS if getattr(profile, name).enabled]
    if not enabled:
        return []
    if profile.sft.batch_size % hw.gpus:
        raise PlanError(f"sft.batch_size={profile.sft.batch_size} does not split over {hw.gpus} GPUs; the trained "
                        "baselines keep the global batch of one process")
    launch = "accelerate launch --config_file configs/accelerate/ddp.yaml -m recrepro.stages.evaluate"
    p = f"--profile {profile.run.name}"
    lines = ["", f"Trained LLM baselines ({', '.join(enabled)}; LoRA on {hw.gpus} GPUs with DDP, global batch "
             f"{profile.sft.batch_size}); then one process evaluates each and writes Table 1:"]
    for dataset in profile.data.datasets:
        lines += [f"  {launch} {p} --dataset {dataset} --baseline {name} --stage train" for name in enabled]
    return lines + [f"  python -m recrepro.stages.evaluate {p} --baseline {name}   # 1 GPU, every dataset"
                    for name in enabled]
