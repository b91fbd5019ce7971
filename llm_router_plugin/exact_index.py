"""Exact nearest-neighbour search over history held in memory: deterministic, and immune to duplicate vectors.

Chroma's HNSW index is approximate, and it fails badly on history with many identical vectors (the same system
prompt or few-shot examples in front of many queries, the same question asked again and again): their nodes link
only to each other, and a search that enters such a group never leaves it. Measured on the RouterBench sample with
its protocol embeddings (2,727 of 3,150 prompts in four groups of identical vectors), a short coding question got
eight "nearest" neighbours at cosine similarity 0.04 from one such group, while its true neighbours were at 0.7:
its cost was estimated from one-letter answers, and the call overspent its budget. For histories up to a few tens of
thousands of records, a dot product with every record is exact, takes about a millisecond, and returns the same
neighbours, ties broken by insertion order, in every process (a few milliseconds at 20,000 records).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ExactIndex:
    """Record ids and normalised embeddings, searched by exact cosine similarity.

    Args:
        ids: record ids.
        embeddings: their normalised embeddings, shape ``(len(ids), dimension)``.
    """

    def __init__(self, ids: Sequence[str], embeddings: np.ndarray) -> None:
        if len(ids) != len(embeddings):
            raise ValueError("ids/embeddings: need one embedding per record")
        self._row = {record_id: row for row, record_id in enumerate(ids)}
        self._ids = list(ids)
        # Rows beyond len(ids) are spare capacity: learning one record at a time must not copy the whole matrix.
        vectors = np.asarray(embeddings, dtype=np.float32)
        self._buffer = vectors.reshape(len(ids), -1) if len(ids) else np.zeros((0, 0), np.float32)

    def __len__(self) -> int:
        return len(self._ids)

    def upsert(self, ids: Sequence[str], embeddings: np.ndarray) -> None:
        """Insert records, or replace those whose id is already present."""
        vectors = np.asarray(embeddings, dtype=np.float32).reshape(len(ids), -1)
        for i, record_id in enumerate(ids):
            row = self._row.get(record_id)
            if row is None:
                row = self._row[record_id] = len(self._ids)
                self._ids.append(record_id)
                self._reserve(row + 1, vectors.shape[1])
            self._buffer[row] = vectors[i]

    def _reserve(self, rows: int, dimension: int) -> None:
        """Make room for ``rows`` rows of ``dimension``, doubling the buffer when it is full."""
        if self._buffer.shape[1] != dimension:
            if rows > 1:  # the index holds records of another dimension
                raise ValueError(f"embeddings: dimension {dimension} differs from the index's {self._buffer.shape[1]}")
            self._buffer = np.zeros((0, dimension), dtype=np.float32)
        if rows > len(self._buffer):
            grown = np.zeros((max(rows, 2 * len(self._buffer), 64), dimension), dtype=np.float32)
            grown[: len(self._buffer)] = self._buffer
            self._buffer = grown

    def rows(self) -> tuple[list[str], np.ndarray]:
        """Every record's id and embedding (shape ``(len, dimension)``), in insertion order."""
        return list(self._ids), self._buffer[: len(self._ids)]

    def search(self, embeddings: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
        """The ``k`` most similar records of each query, most similar first (ties: the earlier inserted first).

        Args:
            embeddings: normalised queries, shape ``(n, dimension)``.
            k: records per query (fewer when the index is smaller).

        Returns:
            Per query the ids, and the similarities (shape ``(n, min(k, len))``).
        """
        width = min(k, len(self._ids))
        similarity = np.atleast_2d(np.asarray(embeddings, dtype=np.float32)) @ self._buffer[: len(self._ids)].T
        similarity[np.isnan(similarity)] = -np.inf  # a NaN query still gets k (meaningless) neighbours, not fewer
        top = np.stack([_top(row, width) for row in similarity]) if width else np.zeros((len(similarity), 0), int)
        sims = np.take_along_axis(similarity, top, axis=1).astype(float)
        return [[self._ids[i] for i in row] for row in top], sims


def _top(similarity: np.ndarray, width: int) -> np.ndarray:
    """The indices of the ``width`` largest values, largest first, ties in index (insertion) order.

    A full sort of every record costs more than the dot products: only the records at or above the width-th value
    are sorted (all of them, so that ties at the boundary are broken by insertion order, as a stable sort would).
    """
    if width >= len(similarity):
        return np.argsort(-similarity, kind="stable")[:width]
    boundary = np.partition(similarity, len(similarity) - width)[len(similarity) - width]
    candidates = np.flatnonzero(similarity >= boundary)
    return candidates[np.argsort(-similarity[candidates], kind="stable")[:width]]
