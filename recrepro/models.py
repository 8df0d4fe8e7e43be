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
from typing import Any, Callable, Iterable, Sequence

import torch

from recrepro import stamps
from recrepro.io import atomic_dir


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


# ---------------------------------------------------------------------------------------------
# Tiny Qwen3-architecture models, built offline (the smoke profile's backbone; DESIGN.md 2, 4).
#
# The paper's backbone is Qwen3-4B-Instruct-2507 (PAPER.md 1.3, [N]); nothing can be downloaded
# here, so the smoke profile builds a randomly initialised model of the same architecture and a
# byte-level BPE tokenizer trained on the kit's own prompt material. The tokenizer carries the
# Qwen3 chat template that TRL recognises (``trl.chat_template_utils.qwen3_chat_template``), so
# TRL's tool-call parsing works on it exactly as on the real model. Sizes grow in width and depth
# for the backbone-size figure (PAPER.md 1.6, Figure 5: 1.7B / 4B / 8B).
# ---------------------------------------------------------------------------------------------

TINY_PREFIX = "tiny-qwen3"
CHAT_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TAG_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
              "<answer>", "</answer>")
TINY_BUILD_VERSION = 1  # bump when the builder changes in a way that changes the files
TINY_KIND = "tiny-model"  # the stamp kind of a built tiny backbone


@dataclass(frozen=True)
class TinySpec:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int  # grouped-query attention, as in Qwen3
    intermediate_size: int


TINY_SIZES: dict[str, TinySpec] = {
    "s": TinySpec(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=192),
    # m and l exist for the Figure 5 sweep (recrepro.rl.sweeps). Kept small on purpose: on one CPU core a
    # warm-start step cost 0.45 s (s), 1.45 s (old m: 128 hidden, 4 layers) and 8.3 s (old l: 256, 6 layers),
    # which does not fit notebook 07's smoke budget.
    "m": TinySpec(hidden_size=96, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=288),
    "l": TinySpec(hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=384),
}
TINY_VOCAB_SIZE = 4096
TINY_MAX_POSITIONS = 8192


def is_tiny_name(name: str | Path) -> bool:
    """True for ``tiny-qwen3`` and ``tiny-qwen3-<size>`` (a profile's model name, not a path)."""
    return str(name) == TINY_PREFIX or any(str(name) == f"{TINY_PREFIX}-{size}" for size in TINY_SIZES)


def tiny_size_of(name: str) -> str:
    """``tiny-qwen3`` -> ``s``; ``tiny-qwen3-m`` -> ``m``."""
    if not is_tiny_name(name):
        raise ValueError(f"{name!r} is not a tiny model name; known: {TINY_PREFIX}[-{'|'.join(TINY_SIZES)}]")
    return "s" if str(name) == TINY_PREFIX else str(name).rsplit("-", 1)[1]


def tiny_model_dir(run_dir: Path | str, size: str) -> Path:
    """Where a built tiny model lives: ``runs/<profile>/models/tiny-qwen3-<size>/``."""
    return Path(run_dir) / "models" / f"{TINY_PREFIX}-{size}"


def qwen3_chat_template() -> str:
    """TRL's Qwen3 chat template (``trl.chat_template_utils.qwen3_chat_template``), byte for byte.

    Read from TRL's package data without importing trl (the import costs seconds); TRL recognises a
    tokenizer's template by string equality, so the copy must be exact, and it is the same file.
    """
    import importlib.util

    spec = importlib.util.find_spec("trl")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "chat_templates" / "qwen3.jinja"
        if path.is_file():
            return path.read_text(encoding="utf-8")
    from trl.chat_template_utils import qwen3_chat_template as template  # layout changed: ask trl itself

    return template


def train_tiny_tokenizer(corpus: Iterable[str], vocab_size: int = TINY_VOCAB_SIZE):
    """A byte-level BPE tokenizer (Qwen-style special tokens and tags) with the Qwen3 chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # Registered before training so the trainer never splits them into byte pieces.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CHAT_SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=list(CHAT_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=TINY_MAX_POSITIONS, padding_side="left",
                                   clean_up_tokenization_spaces=False)
    fast.chat_template = qwen3_chat_template()
    return fast


def _corpus_digest(corpus: Sequence[str]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for text in corpus:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def build_tiny_qwen3(size: str, out_dir: Path | str, corpus: Iterable[str], seed: int = 0,
                     vocab_size: int = TINY_VOCAB_SIZE, corpus_version: str = "custom", corpus_tools: Any = None
                     ) -> Path:
    """Build, save (``save_pretrained``) and return the folder of a tiny Qwen3 model and tokenizer.

    Deterministic for a given (size, corpus, seed): the tokenizer training is deterministic and the
    weights are drawn under a forked, seeded torch RNG. The agent builds its models on its own prompt
    material (:func:`recrepro.agent.corpus.ensure_tiny_agent_model`), recording ``corpus_version``
    and ``corpus_tools`` (the profile's ``tools`` section its tool answers follow) in
    ``build_info.json``. Load the result with :func:`load_causal_lm` like any real model.
    """
    import json

    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    if size not in TINY_SIZES:
        raise ValueError(f"unknown tiny size {size!r}; known: {sorted(TINY_SIZES)}")
    corpus = list(corpus)
    spec = TINY_SIZES[size]
    tokenizer = train_tiny_tokenizer(corpus, vocab_size)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, head_dim=spec.hidden_size // spec.num_heads,
        max_position_embeddings=TINY_MAX_POSITIONS, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    # Neutral on purpose: the rollout engine always passes its own GenerationConfig.
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    info = {"builder_version": TINY_BUILD_VERSION, "size": size, "spec": spec.__dict__, "seed": seed,
            "vocab_size": len(tokenizer), "corpus_sha256": _corpus_digest(corpus), "corpus_texts": len(corpus),
            "corpus_version": corpus_version, **_corpus_tools_key(corpus_tools),
            "parameters": sum(p.numel() for p in model.parameters())}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "build_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        stamps.write_beside(tmp, TINY_KIND, tiny_build_inputs(size, seed, corpus_version, corpus_tools))
    return out_dir


def _corpus_tools_key(corpus_tools: Any) -> dict[str, Any]:
    return {} if corpus_tools is None else {"corpus_tools": dict(sorted(vars(corpus_tools).items()))}


def tiny_build_inputs(size: str, seed: int, corpus_version: str, corpus_tools: Any) -> dict[str, Any]:
    """What decides a tiny model's build (its stamp). The spec is included, so resizing one size rebuilds
    only that size."""
    return {"builder_version": TINY_BUILD_VERSION, "size": size, "spec": TINY_SIZES[size].__dict__, "seed": seed,
            "corpus_version": corpus_version, "corpus_tools": _corpus_tools_key(corpus_tools).get("corpus_tools")}


class ModelNotBuilt(FileNotFoundError):
    """A model a stage builds (a tiny backbone, its warm start) is absent or stale where it is looked up."""


def find_tiny_qwen3(run_dir: Path | str, name: str, corpus_version: str, seed: int = 0,
                    corpus_tools: Any = None) -> Path:
    """The folder of the built tiny model ``name``; :class:`ModelNotBuilt` when it is absent or stale (another
    builder version, spec, seed, ``corpus_version`` or ``corpus_tools``). Builds nothing."""
    size = tiny_size_of(name)
    folder = tiny_model_dir(run_dir, size)
    if stamps.folder_is_current(folder, TINY_KIND, tiny_build_inputs(size, seed, corpus_version, corpus_tools),
                                "config.json"):
        return folder
    raise ModelNotBuilt(f"{folder}: the tiny model {name!r} is not built for this config")


def ensure_tiny_qwen3(run_dir: Path | str, name: str, corpus: Callable[[], Iterable[str]], corpus_version: str,
                      seed: int = 0, corpus_tools: Any = None) -> Path:
    """Build the tiny model ``name`` (tokenizer on ``corpus()``) unless :func:`find_tiny_qwen3` finds it."""
    try:
        return find_tiny_qwen3(run_dir, name, corpus_version, seed, corpus_tools)
    except ModelNotBuilt:
        folder = tiny_model_dir(run_dir, tiny_size_of(name))
        return build_tiny_qwen3(tiny_size_of(name), folder, corpus(), seed=seed, corpus_version=corpus_version,
                                corpus_tools=corpus_tools)


def checkpointing_argument(args_class: type, enabled: bool) -> dict[str, bool]:
    """The trainer-arguments keyword that switches activation (gradient) checkpointing.

    transformers renamed ``gradient_checkpointing`` to ``activation_checkpointing``; the CPU pins
    (5.23) know the new name, the GPU pins (5.17, which vLLM 0.31 needs) only the old one.
    """
    import dataclasses

    names = {f.name for f in dataclasses.fields(args_class)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}
