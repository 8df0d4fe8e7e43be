"""The collaborative tools' embedding space and the neighbour indexes built on it.

PAPER.md 1.3 [N]: ``get_similar_items`` and ``get_similar_users`` work in "a SASRec embedding space
trained on the training split"; :class:`EmbeddingSpace` holds what the tools need from it (item ids,
item vectors, a history encoder), so tests can pass hand-made vectors. Our choices [G] (the paper
gives no similarity function or neighbour count): cosine similarity for items and for users; user
vectors come from snapshots at fixed quantiles of the benchmark's target times, and a query at time t
uses the latest snapshot dated at or before t, so nothing at or after t can enter.

Details (adapters, the snapshot rule): docs/internals.md, "tools/space.py".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ENCODE_BATCH = 2_048  # histories per call of the encoder when building snapshots
SIM_BLOCK = 1_024  # rows per block of the item-item similarity product (bounds memory)


@dataclass(frozen=True)
class EmbeddingSpace:
    """Item vectors plus a history encoder; vectors of a zero norm mean "nothing known"."""

    item_ids: tuple[str, ...]
    item_vectors: np.ndarray  # [n_items, d] float32, row i belongs to item_ids[i]
    encode: Callable[[list[list[str]]], np.ndarray]  # histories (oldest first) -> [n, d'] float32
    name: str = "SASRec"

    def __post_init__(self) -> None:
        if self.item_vectors.ndim != 2 or len(self.item_ids) != self.item_vectors.shape[0]:
            raise ValueError(f"item_vectors has shape {self.item_vectors.shape} for {len(self.item_ids)} item ids")


def mean_pooling_space(item_ids: Sequence[str], vectors: np.ndarray, name: str = "mean-pooled") -> EmbeddingSpace:
    """A space whose history vector is the mean of its known items' vectors (tests, benchmarks)."""
    ids = tuple(str(i) for i in item_ids)
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    row_of = {item: row for row, item in enumerate(ids)}

    def encode(histories: list[list[str]]) -> np.ndarray:
        out = np.zeros((len(histories), matrix.shape[1]), dtype=np.float32)
        for i, history in enumerate(histories):
            rows = [row_of[item] for item in history if item in row_of]
            if rows:
                out[i] = matrix[rows].mean(axis=0)
        return out

    return EmbeddingSpace(ids, matrix, encode, name)


def space_from_scorer(scorer, name: str | None = None) -> EmbeddingSpace:
    """Adapt a ``SequentialScorer`` (``recrepro.baselines.sequential``) to an EmbeddingSpace."""
    ids, vectors = scorer.item_embeddings()
    ids = [str(i) for i in ids]
    if ids and ids[0] == "[PAD]":  # some exports keep RecBole's padding row 0
        ids, vectors = ids[1:], vectors[1:]

    def encode(histories: list[list[str]]) -> np.ndarray:
        return np.asarray(scorer.sequence_representations([list(h) for h in histories]), dtype=np.float32)

    return EmbeddingSpace(tuple(ids), np.ascontiguousarray(vectors, dtype=np.float32), encode,
                          name or getattr(scorer, "model_name", "SASRec"))


def load_embedding_space(export_dir: Path | str, device: str = "cpu") -> EmbeddingSpace:
    """The space of a model exported by notebook 02 (``runs/<profile>/models/<dataset>/<Model>/``)."""
    from recrepro.baselines.sequential_scorer import load_sequential

    return space_from_scorer(load_sequential(Path(export_dir), device=device))


def normalize_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length rows (zero rows stay zero) and a mask of the rows that were non-zero."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1)
    nonzero = norms > 0
    out = np.zeros_like(matrix)
    out[nonzero] = matrix[nonzero] / norms[nonzero, None]
    return out, nonzero


def top_k_vector(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of a vector, best first; ties go to the lower index."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < len(scores):
        threshold = np.partition(scores, len(scores) - k)[len(scores) - k]
        # Every entry >= the k-th value is a contender, so ties at the boundary are broken by index.
        pool = np.flatnonzero(scores >= threshold)
    else:
        pool = np.arange(len(scores))
    order = np.lexsort((pool, -scores[pool]))
    return pool[order[:k]]


@dataclass(frozen=True)
class ItemNeighbours:
    """For every item of the space: its ``k`` nearest other items (space rows) and their cosines."""

    rows: np.ndarray  # [n_items, k] int32, -1 where fewer than k neighbours exist
    sims: np.ndarray  # [n_items, k] float32


def item_neighbours(vectors: np.ndarray, k: int) -> ItemNeighbours:
    """Exact cosine neighbours of every item, excluding itself and items with a zero vector."""
    unit, nonzero = normalize_rows(vectors)
    n = len(unit)
    rows = np.full((n, k), -1, dtype=np.int32)
    sims = np.zeros((n, k), dtype=np.float32)
    for start in range(0, n, SIM_BLOCK):
        block = unit[start:start + SIM_BLOCK] @ unit.T
        block[:, ~nonzero] = -np.inf
        block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
        for i, scores in enumerate(block):
            if not nonzero[start + i]:
                continue
            top = top_k_vector(scores, k)
            top = top[np.isfinite(scores[top])]
            rows[start + i, :len(top)] = top
            sims[start + i, :len(top)] = scores[top]
    return ItemNeighbours(rows, sims)


def snapshot_grid(target_times: Sequence[int] | np.ndarray, n_snapshots: int) -> np.ndarray:
    """``n_snapshots`` distinct time points at the quantiles 0, 1/n, ..., (n-1)/n of the target times.

    The first point is the earliest target time, so every instance has a snapshot at or before it;
    quantiles put more snapshots where there are more instances to answer.
    """
    times = np.sort(np.asarray(target_times, dtype=np.int64))
    if len(times) == 0 or n_snapshots < 1:
        return np.zeros(0, dtype=np.int64)
    positions = (np.arange(n_snapshots) * len(times)) // n_snapshots
    return np.unique(times[positions])


@dataclass(frozen=True)
class UserSnapshots:
    """Per snapshot time: the users with a known history before it and their unit vectors."""

    times: np.ndarray  # [S] int64, ascending
    users: list[np.ndarray]  # per snapshot: user rows (int32), ascending
    vectors: list[np.ndarray]  # per snapshot: [n_users_s, d] float32, unit rows

    def index_at(self, t: int) -> int:
        """The latest snapshot dated at or before ``t``; -1 when none is."""
        return int(np.searchsorted(self.times, t, side="right")) - 1


def build_user_snapshots(space: EmbeddingSpace, times: np.ndarray, user_ptr: np.ndarray, user_items: np.ndarray,
                         user_times: np.ndarray, item_ids: Sequence[str], history_max: int) -> UserSnapshots:
    """Encode every user's last ``history_max`` items dated strictly before each snapshot time.

    ``user_ptr`` / ``user_items`` / ``user_times`` are the per-user, time-sorted log (CSR layout,
    items as catalogue rows). A (user, number of earlier items) pair is encoded once even when it
    recurs across snapshots; most users of sparse data change between few snapshots.
    """
    times = np.asarray(times, dtype=np.int64)
    n_users = len(user_ptr) - 1
    counts = np.zeros((len(times), n_users), dtype=np.int64)
    for s, t in enumerate(times):
        before = (user_times < t).astype(np.int64)
        # Per-user sums over CSR segments; empty users (no rows) get 0.
        csum = np.concatenate([[0], np.cumsum(before)])
        counts[s] = csum[user_ptr[1:]] - csum[user_ptr[:-1]]
    pairs = np.unique(np.stack([np.repeat(np.arange(n_users)[None, :], len(times), 0).ravel(), counts.ravel()], 1),
                      axis=0)
    pairs = pairs[pairs[:, 1] > 0]
    histories = []
    for user, count in pairs:
        end = user_ptr[user] + count
        rows = user_items[max(user_ptr[user], end - history_max):end]
        histories.append([item_ids[r] for r in rows])
    encoded = encode_batched(space, histories)
    unit, nonzero = normalize_rows(encoded) if len(encoded) else (encoded, np.zeros(0, dtype=bool))
    pair_index = {(int(u), int(c)): i for i, (u, c) in enumerate(pairs)}
    users_out, vectors_out = [], []
    for s in range(len(times)):
        chosen = [(u, pair_index[(u, int(counts[s, u]))]) for u in np.flatnonzero(counts[s] > 0)]
        chosen = [(u, i) for u, i in chosen if nonzero[i]]
        users_out.append(np.array([u for u, _ in chosen], dtype=np.int32))
        dim = space.item_vectors.shape[1] if not len(unit) else unit.shape[1]
        vectors_out.append(unit[[i for _, i in chosen]] if chosen else np.zeros((0, dim), dtype=np.float32))
    return UserSnapshots(times, users_out, vectors_out)


def encode_batched(space: EmbeddingSpace, histories: list[list[str]]) -> np.ndarray:
    if not histories:
        return np.zeros((0, space.item_vectors.shape[1]), dtype=np.float32)
    blocks = [np.asarray(space.encode(histories[i:i + ENCODE_BATCH]), dtype=np.float32)
              for i in range(0, len(histories), ENCODE_BATCH)]
    return np.concatenate(blocks)
