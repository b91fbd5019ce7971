"""Neighbour estimates for the offline policies: exact (numpy brute force) or approximate (Chroma's HNSW).

Both feed the core :class:`~llm_router_plugin.estimator.KnnEstimator`, so a baseline estimates exactly the way the
router does for the same settings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llm_router_plugin.config import EstimatorConfig
from llm_router_plugin.estimator import KnnEstimator, NeighbourSource
from llm_router_plugin.history import FIELDS, ClusterStats, HistoryRecord, ModelOutcome, Neighbours

_QUALITY, _PROMPT, _COMPLETION, _COST = (FIELDS.index(f) for f in FIELDS)
#: Neighbour rows per store lookup: Chroma fetches them in one SQL statement, whose variables SQLite caps.
NEIGHBOUR_ROWS = 20_000


class ExactHistory:
    """History held in arrays; neighbours by exact cosine similarity (a dot product of normalised rows).

    Args:
        embeddings: normalised history embeddings, shape ``(n, dimension)``.
        quality: quality per row and model, shape ``(n, M)``.
        cost: cost per row and model, shape ``(n, M)``.
        models: the model profiles of the columns.
        prompt_tokens: prompt tokens per row and model, shape ``(n, M)`` (``None``: unknown).
        completion_tokens: completion tokens per row and model, shape ``(n, M)``, NaN where unknown.
    """

    def __init__(self, embeddings: np.ndarray, quality: np.ndarray, cost: np.ndarray, models: Sequence[str],
                 prompt_tokens: np.ndarray | None = None, completion_tokens: np.ndarray | None = None) -> None:
        if not (len(embeddings) == len(quality) == len(cost)) or quality.shape != cost.shape:
            raise ValueError("embeddings/quality/cost: need one row per history query and one column per model")
        self._embeddings = np.asarray(embeddings, dtype=np.float32)
        self._outcomes = np.full((*quality.shape, len(FIELDS)), np.nan)
        self._outcomes[:, :, _QUALITY] = quality
        self._outcomes[:, :, _COST] = cost
        for field, values in ((_PROMPT, prompt_tokens), (_COMPLETION, completion_tokens)):
            if values is not None:
                if values.shape != quality.shape:
                    raise ValueError("prompt_tokens/completion_tokens: need the shape of quality")
                self._outcomes[:, :, field] = values
        self._models = list(models)

    def _columns(self, profiles: Sequence[str]) -> list[int]:
        unknown = [p for p in profiles if p not in self._models]
        if unknown:
            raise ValueError(f"profiles: not in this history: {unknown}")
        return [self._models.index(p) for p in profiles]

    def neighbours(self, embeddings: np.ndarray, k: int, profiles: Sequence[str]) -> Neighbours:
        """The exact ``k`` nearest rows of each query (ties broken by row order)."""
        columns = self._columns(profiles)
        width = min(k, len(self._embeddings))
        similarity = np.atleast_2d(embeddings).astype(np.float32) @ self._embeddings.T
        top = np.argsort(-similarity, axis=1, kind="stable")[:, :width]
        sims = np.full((len(similarity), k), np.nan)
        sims[:, :width] = np.take_along_axis(similarity, top, axis=1)
        outcomes = np.full((len(similarity), k, len(columns), len(FIELDS)), np.nan)
        outcomes[:, :width] = self._outcomes[top][:, :, columns]
        ids = [[str(i) for i in row] for row in top]
        return Neighbours(ids, sims, outcomes, tuple(profiles))

    def profile_means(self, profiles: Sequence[str]) -> np.ndarray:
        """Each profile's mean outcome, shape ``(len(profiles), len(FIELDS))``."""
        values = self._outcomes[:, self._columns(profiles)]
        present = ~np.isnan(values)
        counts = present.sum(axis=0)
        sums = np.where(present, values, 0.0).sum(axis=0)
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)

    def cluster_stats(self, centres: np.ndarray, profiles: Sequence[str]) -> ClusterStats:
        """Each profile's outcome statistics per cluster, each array ``(K, len(profiles), len(FIELDS))``."""
        label = np.argmax(self._embeddings @ np.asarray(centres, dtype=np.float32).T, axis=1)
        values = self._outcomes[:, self._columns(profiles)]
        present = ~np.isnan(values)
        sums = np.zeros((len(centres), *values.shape[1:]))
        counts = np.zeros_like(sums)
        maxes = np.full_like(sums, -np.inf)
        np.add.at(sums, label, np.where(present, values, 0.0))
        np.add.at(counts, label, present.astype(float))
        np.maximum.at(maxes, label, np.where(present, values, -np.inf))
        return ClusterStats(sums, counts, np.where(counts > 0, maxes, np.nan))

    def subset(self, rows: np.ndarray) -> ExactHistory:
        """The history of these rows only."""
        out = self._outcomes[rows]
        return ExactHistory(self._embeddings[rows], out[:, :, _QUALITY], out[:, :, _COST], self._models,
                            out[:, :, _PROMPT], out[:, :, _COMPLETION])

    def forget(self, models: Sequence[str], keep: np.ndarray) -> ExactHistory:
        """A copy in which ``models`` have outcomes only on the rows ``keep`` (a boolean mask): unseen models."""
        out = self._outcomes.copy()
        out[np.ix_(~np.asarray(keep, dtype=bool), np.asarray(self._columns(models)))] = np.nan
        return ExactHistory(self._embeddings, out[:, :, _QUALITY], out[:, :, _COST], self._models,
                            out[:, :, _PROMPT], out[:, :, _COMPLETION])

    def records(self, ids: Sequence[str]) -> list[HistoryRecord]:
        """The rows as history records (quality and cost per model), to load a Chroma store with.

        Args:
            ids: one stable id per row.

        Returns:
            The records.
        """
        if len(ids) != len(self._embeddings):
            raise ValueError("ids: need one id per history row")
        return [
            HistoryRecord(
                id=record_id, embedding=vector,
                outcomes={model: _outcome(row[i]) for i, model in enumerate(self._models)},
            )
            for record_id, vector, row in zip(ids, self._embeddings, self._outcomes, strict=True)
        ]


def _outcome(fields: np.ndarray) -> ModelOutcome:
    """A model's outcome from one row of the outcome array (NaN fields are missing)."""
    known: dict[str, float | int] = {name: float(v) for name, v in zip(FIELDS, fields, strict=True) if not np.isnan(v)}
    for name in ("prompt_tokens", "completion_tokens"):
        if name in known:
            known[name] = int(known[name])
    return ModelOutcome(**known)  # type: ignore[arg-type]


def plain_config(k: int) -> EstimatorConfig:
    """The paper's estimator: the plain mean of the k nearest neighbours, nothing else."""
    return EstimatorConfig(k=k, pool=k, region_weight=0.0, weighting="uniform", shrinkage=0.0, tie_break=0.0)


def estimate(source: NeighbourSource, embeddings: np.ndarray, models: Sequence[str],
             config: EstimatorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Estimated quality d̂ and cost ĝ of every query on every model, in one batch.

    Args:
        source: exact or Chroma history.
        embeddings: the queries, shape ``(n, dimension)``.
        models: the model profiles.
        config: the estimator settings (the protocol's baselines use plain means of k neighbours).

    Returns:
        (d̂, ĝ), each of shape ``(n, M)``; a cost history lacks is taken as 0.
    """
    estimator = KnnEstimator(source, config)
    quality, cost = [np.zeros((0, len(models)))], [np.zeros((0, len(models)))]
    chunk = max(1, NEIGHBOUR_ROWS // max(config.k, config.pool))
    for start in range(0, len(embeddings), chunk):
        estimates = estimator.estimate(embeddings[start : start + chunk], list(models))
        quality.append(estimates.quality)
        cost.append(np.nan_to_num(estimates.cost_usd))
    return np.concatenate(quality), np.concatenate(cost)
