"""Exported sequential models (SASRec, GRU4Rec, Caser) loaded back and used to score candidates.

The export (written by :mod:`recrepro.baselines.sequential`, ``<out_dir>/<model_name>/``) holds no
pickles: ``weights.safetensors``, ``item_embeddings.safetensors``, ``item_ids.json`` /
``user_ids.json`` (external id of each embedding row, row 0 is ``[PAD]``) and ``model_config.json``.
:func:`load_sequential` rebuilds the RecBole model class from those files alone (a plain mapping
stands in for RecBole's ``Config`` and a two-method stub for its dataset) and wraps it in a
:class:`SequentialScorer`. Scoring an exported model is deterministic for a given batch size;
different batch sizes can differ in the last float bits.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from recrepro.baselines import rearec, recbole_compat  # noqa: F401  (recbole_compat patches RecBole before use)

PAD_TOKEN = "[PAD]"  # RecBole's name for row 0 of every id remapping
EXPORT_FORMAT = "recrepro-sequential/1"
WEIGHTS_FILE = "weights.safetensors"
ITEM_EMBEDDINGS_FILE = "item_embeddings.safetensors"
ITEM_IDS_FILE = "item_ids.json"
USER_IDS_FILE = "user_ids.json"
CONFIG_FILE = "model_config.json"


class _ConstructorConfig(dict):
    """Stands in for RecBole's ``Config`` in a model constructor: a mapping of the keys it reads.

    A real ``Config`` would need a dataset name, RecBole's yaml files and its device set-up; the
    constructors only index it, so a dict with exactly the recorded keys is enough. A missing key
    is an error here (a real Config returns None), so a changed RecBole fails loudly.
    """

    def __missing__(self, key: str) -> Any:
        raise KeyError(f"model constructor read config key {key!r}, which the export does not record")


class _DatasetStub:
    """Stands in for RecBole's dataset in a model constructor.

    ``SequentialRecommender.__init__`` reads ``dataset.num(ITEM_ID_FIELD)``; Caser also reads
    ``dataset.user_num``. Nothing else of the dataset is touched by SASRec, GRU4Rec or Caser.
    """

    def __init__(self, n_items: int, n_users: int, item_field: str, user_field: str) -> None:
        self.item_num = n_items
        self.user_num = n_users
        self._counts = {item_field: n_items, user_field: n_users}

    def num(self, field_name: str) -> int:
        if field_name not in self._counts:
            raise KeyError(f"dataset stub has no field {field_name!r}")
        return self._counts[field_name]


def build_model(model_config: dict[str, Any], device: str = "cpu") -> torch.nn.Module:
    """An untrained instance of the recorded model class, built without RecBole data or pickles."""
    if model_config.get("format") != EXPORT_FORMAT:
        raise ValueError(f"unsupported export format {model_config.get('format')!r}; expected {EXPORT_FORMAT}")
    fields = model_config["fields"]
    config = _ConstructorConfig({**fields, **model_config["params"], "device": torch.device(device)})
    stub = _DatasetStub(
        model_config["n_items"], model_config["n_users"], fields["ITEM_ID_FIELD"], fields["USER_ID_FIELD"]
    )
    # Construction draws random initial weights; do not move the caller's torch generator.
    with torch.random.fork_rng(devices=[]):
        model = rearec.model_class(model_config["model"])(config, stub)
    return model


def load_sequential(export_dir: Path, device: str = "cpu") -> "SequentialScorer":
    """Rebuild an exported model from ``model_config.json`` + ``weights.safetensors``."""
    from safetensors.torch import load_file

    export_dir = Path(export_dir)
    model_config = json.loads((export_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    item_ids = json.loads((export_dir / ITEM_IDS_FILE).read_text(encoding="utf-8"))
    user_ids = json.loads((export_dir / USER_IDS_FILE).read_text(encoding="utf-8"))
    if len(item_ids) != model_config["n_items"] or len(user_ids) != model_config["n_users"]:
        raise ValueError(f"{export_dir}: id lists do not match n_items / n_users in {CONFIG_FILE}")
    model = build_model(model_config, "cpu")
    model.load_state_dict(load_file(str(export_dir / WEIGHTS_FILE), device="cpu"), strict=True)
    return SequentialScorer(model, model_config, item_ids, user_ids, device)


# ----------------------------------------------------------------------------- scoring


class SequentialScorer:
    """Scores candidate items given item histories with a trained SASRec / GRU4Rec / Caser.

    Histories are lists of external item ids, oldest first. Items the model never saw are dropped,
    then the last ``max_seq_length`` remaining items are used. A history with nothing left scores
    every known candidate 0.0 (all equal) and has a zero sequence representation.

    Caser also embeds the user. Users seen in training use their own embedding; unknown users (and
    every row when ``user_ids`` is None) use the mean of all trained user embeddings, an "average
    user". It is stored in row 0, RecBole's padding row, which no real user maps to and which
    training never updates, so known users' scores are unaffected.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        model_config: dict[str, Any],
        item_ids: Sequence[str],
        user_ids: Sequence[str],
        device: str = "cpu",
    ) -> None:
        self.model_name: str = model_config["model"]
        self.model_config = model_config
        self.max_seq_length = int(model_config["max_seq_length"])
        self.device = torch.device(device)
        self._item_ids = list(item_ids)
        self._item_row = {tok: row for row, tok in enumerate(self._item_ids) if row > 0}
        self._user_row = {tok: row for row, tok in enumerate(user_ids) if row > 0}
        # A private copy: the padding-row edit below must not leak into the caller's model.
        self._model = copy.deepcopy(model).to(self.device).eval()
        if self.model_name == "Caser":
            self._set_mean_user_row()

    @property
    def uses_user_embedding(self) -> bool:
        return self.model_name == "Caser"

    def _set_mean_user_row(self) -> None:
        weight = self._model.user_embedding.weight
        with torch.no_grad():
            if weight.shape[0] > 1:
                weight[0] = weight[1:].mean(dim=0)
            else:
                weight[0] = 0.0

    # -- encoding

    def _encode(
        self, histories: Sequence[Sequence[str]], user_ids: Sequence[str] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
        """RecBole's layout: items left-aligned, oldest first, zero padding on the right."""
        n = len(histories)
        seq = torch.zeros((n, self.max_seq_length), dtype=torch.long)
        lengths = torch.ones(n, dtype=torch.long)  # 1 for empty rows keeps gather_indexes valid
        empty = np.zeros(n, dtype=bool)
        for i, history in enumerate(histories):
            rows = [self._item_row[item] for item in history if item in self._item_row]
            rows = rows[-self.max_seq_length:]
            if not rows:
                empty[i] = True
                continue
            seq[i, : len(rows)] = torch.tensor(rows, dtype=torch.long)
            lengths[i] = len(rows)
        users = torch.zeros(n, dtype=torch.long)
        if user_ids is not None:
            users = torch.tensor([self._user_row.get(str(u), 0) for u in user_ids], dtype=torch.long)
        return seq, lengths, users, empty

    def _sequence_output(self, seq: torch.Tensor, lengths: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        seq, lengths, users = seq.to(self.device), lengths.to(self.device), users.to(self.device)
        if self.model_name == "Caser":
            return self._model(users, seq)
        return self._model(seq, lengths)

    @staticmethod
    def _check_lengths(histories: Sequence[Any], other: Sequence[Any] | None, name: str) -> None:
        if other is not None and len(other) != len(histories):
            raise ValueError(f"{name} has {len(other)} rows but histories has {len(histories)}")

    # -- public API

    def score_candidates(
        self,
        histories: list[list[str]],
        candidates: list[list[str]],
        user_ids: list[str] | None = None,
        batch_size: int = 1024,
    ) -> np.ndarray:
        """Scores [n, n_candidates] (float32); candidates unknown to the model get ``-inf``."""
        self._check_lengths(histories, candidates, "candidates")
        self._check_lengths(histories, user_ids, "user_ids")
        widths = {len(row) for row in candidates}
        if len(widths) > 1:
            raise ValueError(f"every candidate list must have the same length, got lengths {sorted(widths)}")
        width = widths.pop() if widths else 0
        out = np.zeros((len(histories), width), dtype=np.float32)
        if width == 0:
            return out
        cand_rows = np.array([[self._item_row.get(item, 0) for item in row] for row in candidates], dtype=np.int64)
        for start in range(0, len(histories), batch_size):
            stop = start + batch_size
            users = None if user_ids is None else user_ids[start:stop]
            seq, lengths, user_rows, empty = self._encode(histories[start:stop], users)
            with torch.inference_mode():
                seq_output = self._sequence_output(seq, lengths, user_rows)  # [B, H]
                cand_emb = self._model.item_embedding(torch.from_numpy(cand_rows[start:stop]).to(self.device))
                # Same arithmetic as RecBole's predict(): elementwise product summed over hidden.
                scores = torch.mul(seq_output.unsqueeze(1), cand_emb).sum(dim=-1)
            block = scores.float().cpu().numpy()
            block[empty] = 0.0
            out[start:stop] = block
        out[cand_rows == 0] = -np.inf
        return out

    def sequence_representations(
        self, histories: list[list[str]], batch_size: int = 1024, user_ids: list[str] | None = None
    ) -> np.ndarray:
        """The model's sequence output [n, hidden] (float32): the vector dotted with item embeddings."""
        self._check_lengths(histories, user_ids, "user_ids")
        blocks = []
        for start in range(0, len(histories), batch_size):
            users = None if user_ids is None else user_ids[start:start + batch_size]
            seq, lengths, user_rows, empty = self._encode(histories[start:start + batch_size], users)
            with torch.inference_mode():
                block = self._sequence_output(seq, lengths, user_rows).float().cpu().numpy()
            block[empty] = 0.0
            blocks.append(block)
        if not blocks:
            return np.zeros((0, self._model.item_embedding.embedding_dim), dtype=np.float32)
        return np.concatenate(blocks).astype(np.float32, copy=False)

    def item_embeddings(self) -> tuple[list[str], np.ndarray]:
        """External item ids and their embedding rows [n_items - 1, hidden]; the padding row is left out."""
        weight = self._model.item_embedding.weight.detach().float().cpu().numpy()
        return self._item_ids[1:], weight[1:].copy()

    def known_items(self) -> set[str]:
        return set(self._item_row)
