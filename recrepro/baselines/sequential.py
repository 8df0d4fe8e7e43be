"""Sequential baselines (SASRec, GRU4Rec, Caser) trained with RecBole and exported as plain files.

:func:`train_sequential` (or :func:`fit_sequential`, to keep the model in memory) feeds RecBole the
training-period interactions only, with ``MAX_ITEM_LIST_LENGTH`` set to the paper's history cap,
keeps the best epoch's weights in memory (RecBole never writes or reads a pickled checkpoint) and
exports safetensors and JSON under ``<out_dir>/<model_name>/``, from which
:func:`recrepro.baselines.sequential_scorer.load_sequential` alone rebuilds the model.

Not thread-safe: training changes the process's working directory while RecBole runs.

Details: docs/protocol.md, "Sequential models (SASRec, GRU4Rec, Caser): implementation notes".
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from recrepro.baselines import rearec, recbole_compat  # noqa: F401  (recbole_compat patches RecBole before use)
from recrepro.baselines.sequential_scorer import (CONFIG_FILE, EXPORT_FORMAT, ITEM_EMBEDDINGS_FILE, ITEM_IDS_FILE,
                                                  USER_IDS_FILE, WEIGHTS_FILE, SequentialScorer)
from recrepro.config import RecBoleConfig

SUPPORTED_MODELS: tuple[str, ...] = ("SASRec", "GRU4Rec", "Caser", *rearec.VARIANTS)  # ReaRec-ERL, ReaRec-PRL

# RecBole's leave-one-out mode. "valid_only" holds out each user's last sample for validation and
# trains on all the others. "valid_and_test" would also hold out a RecBole test sample per user that
# nothing here uses: with about two training interactions per user (Amazon, PAPER.md 1.2) that would
# discard a large share of the training samples. Our real test is the benchmark's own split.
LEAVE_ONE_MODE = "valid_only"
VALID_METRIC = "NDCG@10"  # full ranking over all items, history items excluded (RecBole default)

# Caser-only hyper-parameters [G]: RecBole's own Caser.yaml defaults (4 vertical and 8 horizontal
# filters per height, L2 weight 1e-4); small enough for CPU at length 10.
CASER_DEFAULTS: dict[str, Any] = {"nv": 4, "nh": 8, "reg_weight": 1e-4}

# SASRec settings the profile does not carry [G]: RecBole's SASRec.yaml values, with the feed-forward
# width kept at RecBole's ratio of 4x the hidden size.
SASREC_FIXED: dict[str, Any] = {"hidden_act": "gelu", "layer_norm_eps": 1e-12, "initializer_range": 0.02}

# Config keys that SequentialRecommender.__init__ reads besides the model's own parameters.
_STRUCTURE_KEYS: tuple[str, ...] = (
    "USER_ID_FIELD", "ITEM_ID_FIELD", "LIST_SUFFIX", "ITEM_LIST_LENGTH_FIELD", "NEG_PREFIX",
    "MAX_ITEM_LIST_LENGTH",
)


# ----------------------------------------------------------------------------- configuration


def model_parameters(model_name: str, cfg: RecBoleConfig) -> dict[str, Any]:
    """The constructor parameters of ``model_name`` derived from the profile's recbole section."""
    _check_model_name(model_name)
    if model_name in rearec.VARIANTS:  # SASRec's backbone plus the reasoning steps (recrepro.baselines.rearec)
        return {**model_parameters("SASRec", cfg), **rearec.variant_parameters(model_name)}
    common = {"loss_type": cfg.loss_type}
    if model_name == "SASRec":
        if cfg.hidden_size % cfg.n_heads:
            raise ValueError(f"SASRec: hidden_size {cfg.hidden_size} is not divisible by n_heads {cfg.n_heads}")
        return {
            **common, **SASREC_FIXED,
            "hidden_size": cfg.hidden_size, "inner_size": 4 * cfg.hidden_size,
            "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
            "hidden_dropout_prob": cfg.dropout, "attn_dropout_prob": cfg.dropout,
        }
    if model_name == "GRU4Rec":
        # One size for item embeddings and GRU state, as RecBole's dot-product scoring needs the
        # GRU output projected back to the embedding size anyway.
        return {
            **common, "embedding_size": cfg.hidden_size, "hidden_size": cfg.hidden_size,
            "num_layers": cfg.n_layers, "dropout_prob": cfg.dropout,
        }
    return {**common, **CASER_DEFAULTS, "embedding_size": cfg.hidden_size, "dropout_prob": cfg.dropout}


def _check_model_name(model_name: str) -> None:
    if model_name not in SUPPORTED_MODELS:
        raise ValueError(f"unknown sequential model {model_name!r}; supported: {SUPPORTED_MODELS}")


def _recbole_config_dict(
    model_name: str, cfg: RecBoleConfig, history_max: int, seed: int, work_dir: Path, device: str
) -> dict[str, Any]:
    use_gpu = device.startswith("cuda")
    config: dict[str, Any] = {
        "data_path": str(work_dir / "recbole_data"),
        "checkpoint_dir": str(work_dir / "checkpoints"),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        # Ratings are not needed by sequential models; loading fewer columns keeps RecBole's pandas
        # code on the paths known to work (DESIGN.md section 4).
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": history_max,
        "eval_args": {"split": {"LS": LEAVE_ONE_MODE}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["Hit", "NDCG"],
        "topk": [10],
        "valid_metric": VALID_METRIC,
        "epochs": cfg.epochs,
        "eval_step": 1,
        "stopping_step": cfg.stopping_step,
        "learning_rate": cfg.learning_rate,
        "train_batch_size": cfg.train_batch_size,
        "eval_batch_size": cfg.eval_batch_size,
        "seed": seed,
        "reproducibility": True,
        "use_gpu": use_gpu,
        "gpu_id": device.split(":", 1)[1] if use_gpu and ":" in device else ("0" if use_gpu else ""),
        "worker": 0,
        "show_progress": False,
        "log_wandb": False,
        "save_dataset": False,
        "save_dataloaders": False,
    }
    # CE scores every item, so RecBole requires negative sampling to be off; BPR needs one negative.
    config["train_neg_sample_args"] = (
        None if cfg.loss_type == "CE" else {"distribution": "uniform", "sample_num": 1}
    )
    config.update(model_parameters(model_name, cfg))
    return config


# ----------------------------------------------------------------------------- training


@dataclass
class FittedSequential:
    """A trained model still in memory, with what is needed to export or score it."""

    model: torch.nn.Module
    model_config: dict[str, Any]
    item_ids: list[str]
    user_ids: list[str]
    summary: dict[str, Any] = field(default_factory=dict)

    def scorer(self, device: str = "cpu") -> "SequentialScorer":
        return SequentialScorer(self.model, self.model_config, self.item_ids, self.user_ids, device)

    def export(self, export_dir: Path) -> Path:
        return _export(self, Path(export_dir))


def train_sequential(
    model_name: str,
    train_interactions: pd.DataFrame,
    cfg: RecBoleConfig,
    history_max: int,
    seed: int,
    work_dir: Path,
    out_dir: Path,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train ``model_name`` on ``train_interactions`` and export it to ``out_dir/<model_name>/``.

    ``train_interactions`` must already be restricted to the training period (columns user_id,
    item_id, rating, timestamp). Returns the training summary plus ``export_dir``.
    """
    fitted = fit_sequential(model_name, train_interactions, cfg, history_max, seed, work_dir, device)
    export_dir = fitted.export(Path(out_dir) / model_name)
    return {**fitted.summary, "export_dir": str(export_dir)}


def fit_sequential(
    model_name: str,
    train_interactions: pd.DataFrame,
    cfg: RecBoleConfig,
    history_max: int,
    seed: int,
    work_dir: Path,
    device: str = "cpu",
) -> FittedSequential:
    """Train as :func:`train_sequential` does, but return the model in memory instead of exporting."""
    _check_model_name(model_name)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_trainer, init_seed

    work_dir = Path(work_dir).resolve()
    dataset_name = f"recrepro_{model_name.lower()}"
    _write_atomic_file(train_interactions, work_dir / "recbole_data" / dataset_name)
    config_dict = _recbole_config_dict(model_name, cfg, history_max, seed, work_dir, device)

    with _preserved_rng_state(), _working_directory(work_dir), recbole_compat.known_warnings_silenced():
        model_class = rearec.model_class(model_name)  # RecBole's own class, or ReaRec for its variants
        config = Config(model=model_class if model_name in rearec.VARIANTS else model_name, dataset=dataset_name,
                        config_dict=config_dict)
        config["device"] = torch.device(device)
        init_seed(config["seed"], config["reproducibility"])
        dataset = create_dataset(config)
        train_data, valid_data, _ = data_preparation(config, dataset)
        # quick_start reseeds here too, so model init does not depend on how much data loading drew.
        init_seed(config["seed"], config["reproducibility"])
        model = model_class(config, train_data._dataset).to(config["device"])
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        tracker = _BestStateTracker(trainer)
        start = time.perf_counter()
        best_score, _ = trainer.fit(train_data, valid_data, verbose=False, saved=False, callback_fn=tracker)
        seconds = time.perf_counter() - start
        trainer.tensorboard.close()

    if tracker.best_state is not None:
        model.load_state_dict(tracker.best_state)
    model.eval()
    epochs_run = len(trainer.train_loss_dict)
    summary = {
        "model": model_name,
        "epochs_run": epochs_run,
        "best_epoch": tracker.best_epoch if tracker.best_state is not None else epochs_run - 1,
        "valid_metric": VALID_METRIC,
        "best_valid_score": float(best_score) if tracker.best_state is not None else None,
        "train_seconds": round(seconds, 3),
        "seconds_per_epoch": round(seconds / max(epochs_run, 1), 3),
        "n_train_samples": len(train_data._dataset),
        "n_valid_samples": len(valid_data._dataset),
        "n_interactions": int(len(train_interactions)),
        "seed": seed,
        "device": device,
    }
    model_config = _model_config(model_name, config, dataset, cfg, summary)
    item_ids = [str(t) for t in dataset.field2id_token["item_id"]]
    user_ids = [str(t) for t in dataset.field2id_token["user_id"]]
    return FittedSequential(model.cpu(), model_config, item_ids, user_ids, summary)


class _BestStateTracker:
    """``Trainer.fit`` callback keeping a copy of the weights of the best validation epoch.

    RecBole's early stopping resets ``trainer.cur_step`` to 0 exactly when the validation score
    improved (ties count as improvements, as in RecBole's own checkpointing), so copying the state
    then reproduces what RecBole would have saved to its pickled checkpoint.
    """

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch = -1

    def __call__(self, epoch_idx: int, valid_score: float) -> None:
        if self.trainer.cur_step == 0:
            state = self.trainer.model.state_dict()
            self.best_state = {k: v.detach().clone() for k, v in state.items()}
            self.best_epoch = epoch_idx


def _write_atomic_file(interactions: pd.DataFrame, folder: Path) -> Path:
    """Write RecBole's ``<name>.inter`` (tab separated, typed header) into ``folder``.

    The folder always exists afterwards: a missing one makes RecBole try to download the dataset.
    Rows are sorted by user, then time, keeping the caller's order for equal timestamps.
    """
    missing = {"user_id", "item_id", "timestamp"} - set(interactions.columns)
    if missing:
        raise ValueError(f"train_interactions lacks column(s) {sorted(missing)}")
    if interactions.empty:
        raise ValueError("train_interactions is empty")
    if interactions[["user_id", "item_id", "timestamp"]].isna().any().any():
        raise ValueError("train_interactions has missing user_id, item_id or timestamp values")
    table = interactions[["user_id", "item_id", "timestamp"]].astype(
        {"user_id": str, "item_id": str, "timestamp": "int64"}
    )
    for column in ("user_id", "item_id"):
        bad = table[column].str.contains(r"[\t\n\r]", regex=True)
        if bad.any():
            raise ValueError(f"{column} {table[column][bad].iloc[0]!r} contains a tab or newline")
    table = table.sort_values(["user_id", "timestamp"], kind="stable")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{folder.name}.inter"
    header = "user_id:token\titem_id:token\ttimestamp:float\n"
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(header)
        table.to_csv(handle, sep="\t", header=False, index=False, lineterminator="\n")
    return path


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """RecBole writes ``log_tensorboard/`` into the current directory; point it at ``path``.

    This changes the process-wide working directory for the duration of training (not thread-safe).
    """
    path.mkdir(parents=True, exist_ok=True)
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _preserved_rng_state() -> Iterator[None]:
    """RecBole's ``init_seed`` reseeds the global Python, numpy and torch generators and sets the
    cuDNN flags; give the caller theirs back afterwards."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    cudnn_flags = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn_flags


def _model_config(
    model_name: str, config: Any, dataset: Any, cfg: RecBoleConfig, summary: dict[str, Any]
) -> dict[str, Any]:
    params = model_parameters(model_name, cfg)
    # Record what RecBole actually used (its Config merges our dict with its yaml defaults).
    resolved = {key: _plain(config[key]) for key in params}
    return {
        "format": EXPORT_FORMAT,
        "model": model_name,
        "recbole_version": _recbole_version(),
        "max_seq_length": int(config["MAX_ITEM_LIST_LENGTH"]),
        "n_items": int(dataset.num("item_id")),
        "n_users": int(dataset.num("user_id")),
        "hidden_size": cfg.hidden_size,
        "params": resolved,
        "fields": {key: _plain(config[key]) for key in _STRUCTURE_KEYS},
        "recbole_config": dataclasses.asdict(cfg),
        "training": summary,
    }


def _plain(value: Any) -> Any:
    """JSON-safe copy of a config value (RecBole may hand back numpy scalars or tuples)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _recbole_version() -> str:
    import recbole

    return str(getattr(recbole, "__version__", "unknown"))


# ----------------------------------------------------------------------------- export


def _export(fitted: FittedSequential, export_dir: Path) -> Path:
    from safetensors.torch import save_file

    export_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in fitted.model.state_dict().items()}
    save_file(state, str(export_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    embeddings = {"item_embedding": state["item_embedding.weight"].clone()}
    save_file(embeddings, str(export_dir / ITEM_EMBEDDINGS_FILE), metadata={"format": "pt"})
    _write_json(export_dir / ITEM_IDS_FILE, fitted.item_ids)
    _write_json(export_dir / USER_IDS_FILE, fitted.user_ids)
    _write_json(export_dir / CONFIG_FILE, fitted.model_config)
    return export_dir


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=1, sort_keys=isinstance(payload, dict)) + "\n", encoding="utf-8")
