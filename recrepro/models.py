"""Loading causal language models by hub id or local path, with profile-chosen device and dtype.

One loader for every model the kit uses (backbones, profile writers, the tiny offline models), so
dtype, device, offline behaviour and ``trust_remote_code`` are decided in one place:
bf16 on GPU, fp32 on CPU; ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` are honoured by
transformers itself, and ``local_files_only`` is forced when either is set; remote code stays off
unless asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class LoadedModel:
    model: object  # transformers.PreTrainedModel
    tokenizer: object  # transformers.PreTrainedTokenizerBase
    device: str
    dtype: torch.dtype


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device is 'cuda' but torch sees no GPU; use 'auto' or 'cpu'")
    return requested


def default_dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def offline_mode() -> bool:
    return any(os.environ.get(flag, "").lower() in ("1", "true", "yes")
               for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def load_causal_lm(name_or_path: str | Path, device: str = "auto", dtype: torch.dtype | None = None,
                   trust_remote_code: bool = False, padding_side: str = "left") -> LoadedModel:
    """Load a model and its tokenizer; tokenizers pad on the left for batched generation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    local = Path(name_or_path).is_dir()
    kwargs = {"trust_remote_code": trust_remote_code, "local_files_only": local or offline_mode()}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype, **kwargs)
    except OSError as exc:
        hint = " (offline mode is on: the model must already be in the local cache)" if offline_mode() else ""
        raise OSError(f"cannot load model {str(name_or_path)!r}{hint}: {exc}") from exc
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, dtype=dtype)
