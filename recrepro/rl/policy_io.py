"""Saving and recognising trained policies: the final save (atomic, ZeRO-3 aware, LoRA merged), the
config stamp beside it, the weights' hashes that evaluation records name, and the check that every
data-parallel process ends with the same weights. Shared by stage 1, PPR and the sweeps (through
:mod:`recrepro.rl.grpo`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from recrepro import stamps
from recrepro.config import Profile
from recrepro.stamps import read_json
from recrepro.io import atomic_dir, sha256_file, write_json_atomic


POLICY_KIND = "policy"


def finished_policy(final: Path, stamp: Mapping[str, Any]) -> bool:
    """Whether ``final`` holds a policy trained to the end with exactly this config stamp.

    Lets the one-process evaluation after an ``accelerate launch`` training run use its policy
    instead of resuming a DeepSpeed checkpoint without DeepSpeed.
    """
    return stamps.folder_is_current(final, POLICY_KIND, stamp, "config.json")


def save_final(trainer: Any, final: Path, stamp: Mapping[str, Any] | None = None) -> Path:
    """``save_pretrained`` of the policy (LoRA merged into the weights) and tokenizer, atomically;
    with ``stamp``, also the config it was trained with (:func:`finished_policy`)."""

    accelerator = trainer.accelerator
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(trainer.model)
    digests = replica_digests(accelerator, model)
    # Under ZeRO-3 each process holds a shard: every process takes part in gathering the whole weights
    # onto the main process (ds_zero3.json sets stage3_gather_16bit_weights_on_model_save).
    gathered = accelerator.get_state_dict(trainer.model) if zero3(accelerator) else None
    if accelerator.is_main_process:
        if hasattr(model, "merge_and_unload"):  # peft: evaluation loads a plain model
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        with atomic_dir(final) as tmp:
            model.save_pretrained(tmp, state_dict=gathered, safe_serialization=True)
            trainer.processing_class.save_pretrained(tmp)
            if stamp is not None:
                stamps.write_beside(tmp, POLICY_KIND, stamp)
            if digests:
                write_json_atomic(tmp / REPLICAS_FILE, {"processes": len(digests), "sha256": digests})
            write_json_atomic(tmp / WEIGHTS_FILE, {f.name: sha256_file(f) for f in sorted(tmp.glob("*.safetensors"))})
    accelerator.wait_for_everyone()
    return final


def zero3(accelerator: Any) -> bool:
    """Whether the run shards the weights themselves (DeepSpeed ZeRO stage 3)."""
    return getattr(getattr(accelerator.state, "deepspeed_plugin", None), "zero_stage", 0) == 3


def refuse_lora_under_zero3(profile: Profile) -> None:
    """A LoRA policy cannot be merged from ZeRO-3 shards at the final save; say so before training, not
    hours later. ``accelerate launch`` exports the ZeRO stage of its config."""
    if profile.rta.use_lora and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        raise ValueError("rta.use_lora: LoRA policies are not saved from ZeRO-3 shards; launch with "
                         "configs/accelerate/zero2.yaml or ddp.yaml, or set rta.use_lora=false")


REPLICAS_FILE = "replicas.json"  # beside a policy trained by several data-parallel processes
WEIGHTS_FILE = "weights_sha256.json"  # beside every saved policy: which weights these are


def policy_id(final: Path) -> dict[str, str] | None:
    """The saved policy's weight-file hashes, or None. An evaluation record keeps it, so a policy
    retrained with the same config (``--force``, a launched run) is evaluated again, not skipped."""
    return read_json(Path(final) / WEIGHTS_FILE)


def weights_digest(model: Any) -> str:
    """sha256 over the names and bytes of every tensor of ``model``'s state dict."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def replica_digests(accelerator: Any, model: Any) -> list[str]:
    """Every data-parallel process's weights digest (main process first); empty on one process or
    under ZeRO-3, where no process holds whole weights.

    Data parallelism keeps the replicas identical by construction; a drift (a process that skipped a
    step, a group split unevenly) would silently save one process's policy, so it stops the run.
    """
    from accelerate.utils import gather_object

    if accelerator.num_processes < 2 or zero3(accelerator):
        return []
    digests = gather_object([weights_digest(model)])
    if len(set(digests)) != 1:
        raise RuntimeError(f"the {len(digests)} training processes ended with different weights: {digests}")
    return digests
