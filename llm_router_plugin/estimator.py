"""Per-query estimates of each model's quality and cost, from the nearest past queries.

For a query, the estimator reads its ``pool`` nearest history records and averages, per model profile and outcome
field, the k nearest that recorded that field; a neighbour without it is skipped, so traffic recorded without a
quality score never crowds out the records that have one. That mean is shrunk toward the mean of the rest of the
pool (the query's region), which steadies it when the k nearest are few or noisy. A profile with no neighbour
outcome falls back to its mean over all history, and then to the configured prior.

A model that few of the k nearest records know (a model onboarded from a profile set, UniRoute) is estimated from
its per-cluster means instead: the history is split into the K clusters of a profile set's centres, and the model's
mean outcome over the records of the query's cluster, shrunk toward its overall mean by ``cluster_shrinkage``
pseudo-records, stands for the query. The two estimates are blended per query and profile by the share of the k
nearest scored records that carry the model's quality: a model every neighbour knows is estimated by its neighbours
alone, an onboarded model by its cluster means, and as traffic with feedback adds its outcomes near a query the
estimate moves from the one to the other. Without centres the whole history is one cluster (the model's overall mean).

Queries whose neighbours are the same get the same estimates, and the dual rule would then serve all or none of
them. A tiny deterministic offset per (query, profile) makes their quality estimates distinct, so that the learned
price splits such a group the way the LP's fractional solution does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from llm_router_plugin.config import EstimatorConfig
from llm_router_plugin.history import FIELDS, ClusterStats, Neighbours
from llm_router_plugin.timing import stage

_QUALITY, _PROMPT, _COMPLETION, _COST = (FIELDS.index(f) for f in FIELDS)

#: Quality assumed for a profile that history knows nothing about.
PRIOR_QUALITY = 0.5


class NeighbourSource(Protocol):
    """What the estimator needs from a history store."""

    def neighbours(self, embeddings: np.ndarray, k: int, profiles: list[str]) -> Neighbours:
        """The k nearest records of each embedding, with the outcomes of ``profiles``."""
        ...

    def profile_means(self, profiles: list[str]) -> np.ndarray:
        """Each profile's mean outcome over all history, shape ``(len(profiles), len(FIELDS))``."""
        ...

    def cluster_stats(self, centres: np.ndarray, profiles: list[str]) -> ClusterStats:
        """Each profile's outcome statistics per cluster (records in the cluster of their nearest centre)."""
        ...


class Estimator(Protocol):
    """What the router needs from an estimator (:class:`KnnEstimator`, or a replacement)."""

    def estimate(self, embeddings: np.ndarray, profiles: list[str]) -> Estimates:
        """Estimate every profile's outcome for a batch of query embeddings."""
        ...

    def estimate_without_text(self, profiles: list[str]) -> Estimates:
        """Estimates for one query without text to look neighbours up with."""
        ...


@dataclass(frozen=True)
class Estimates:
    """Estimated outcomes of a batch of queries on every profile (arrays of shape ``(n, len(profiles))``).

    Attributes:
        profiles: the profiles of the second axis.
        quality: estimated quality d̂ in [0, 1].
        prompt_tokens: prompt tokens the neighbours recorded (NaN where unknown).
        completion_tokens: estimated completion tokens.
        cost_usd: estimated cost in USD (NaN where history has no cost).
        support: how many neighbours had a quality outcome for the profile.
        completion_tokens_high: the most completion tokens a neighbour recorded (at least the estimate): what a
            reservation holds for the answer, so that a call answering at more than average length still fits.
    """

    profiles: tuple[str, ...]
    quality: np.ndarray
    prompt_tokens: np.ndarray
    completion_tokens: np.ndarray
    cost_usd: np.ndarray
    support: np.ndarray
    completion_tokens_high: np.ndarray


def neighbour_weights(similarity: np.ndarray, config: EstimatorConfig) -> np.ndarray:
    """Weights of the neighbours, shape like ``similarity``: 1 each (uniform) or exp((s − s_max) / T) ≤ 1."""
    present = ~np.isnan(similarity)
    if config.weighting == "uniform":
        return present.astype(float)
    top = np.nanmax(np.where(present, similarity, -np.inf), axis=1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        weights = np.exp((np.where(present, similarity, top) - top) / config.temperature)
    return np.where(present, weights, 0.0)


def _prior(means: np.ndarray, config: EstimatorConfig) -> np.ndarray:
    """The global means, with the configured priors where history has nothing."""
    prior = means.copy()
    prior[:, _QUALITY] = np.where(np.isnan(prior[:, _QUALITY]), PRIOR_QUALITY, prior[:, _QUALITY])
    prior[:, _COMPLETION] = np.where(
        np.isnan(prior[:, _COMPLETION]), config.default_completion_tokens, prior[:, _COMPLETION]
    )
    return prior


def cluster_values(stats: ClusterStats, means: np.ndarray, config: EstimatorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each cluster's mean outcome per profile, shrunk toward the profile's overall mean (then the priors), and the
    largest value the cluster has seen (else the largest in any cluster): its high side.

    Args:
        stats: outcome statistics per cluster, arrays of shape ``(K, len(profiles), len(FIELDS))``.
        means: each profile's overall mean outcome, shape ``(len(profiles), len(FIELDS))``.
        config: ``cluster_shrinkage`` and the priors.

    Returns:
        ``(values, highs)``, each of shape ``(K, len(profiles), len(FIELDS))``; NaN where nothing is known.
    """
    prior = _prior(means, config)[None]
    known = ~np.isnan(prior)
    weight = config.cluster_shrinkage * known
    total = stats.counts + weight
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (stats.sums + weight * np.nan_to_num(prior)) / total
    values = np.where(total > 0, values, np.broadcast_to(prior, values.shape))
    with np.errstate(all="ignore"):
        widest = np.fmax.reduce(stats.maxes, axis=0, initial=-np.inf)
    highs = np.where(np.isnan(stats.maxes), np.where(np.isfinite(widest), widest, np.nan)[None], stats.maxes)
    return values, highs


def combine(neighbours: Neighbours, means: np.ndarray, config: EstimatorConfig,
            cluster: tuple[np.ndarray, np.ndarray] | None = None) -> Estimates:
    """Turn neighbours into estimates (weighted means, shrunk toward the region and ``means``, with fallbacks).

    Each field of each profile is estimated from the ``k`` nearest neighbours that recorded it (neighbours must come
    nearest first); the remaining neighbours that recorded it form the query's region, whose plain mean counts as
    ``region_weight`` pseudo-observations, and the global mean counts as ``shrinkage`` more. With ``cluster``, that
    estimate is blended with the cluster's by :func:`knn_share`.

    Args:
        neighbours: the queries' nearest records, nearest first.
        means: each profile's global mean outcome, shape ``(len(profiles), len(FIELDS))``.
        config: k, weighting, region weight, shrinkage and priors.
        cluster: each query's cluster values and highs, each of shape ``(n, len(profiles), len(FIELDS))`` (see
            :func:`cluster_values`); ``None`` = neighbours only. Where the neighbours do not all know a model, the
            cluster's high side joins its completion high side.

    Returns:
        The estimates for every query and profile.
    """
    values = neighbours.outcomes
    has = ~np.isnan(values)
    # Records without a field (e.g. traffic recorded without a quality score) must not crowd out those with it.
    near = has & (np.cumsum(has, axis=1) <= config.k)
    region = has & ~near
    weights = neighbour_weights(neighbours.similarity, config)[:, :, None, None]
    filled = np.nan_to_num(values)
    weight_sum = np.sum(np.where(near, weights, 0.0), axis=1)
    value_sum = np.sum(np.where(near, weights * filled, 0.0), axis=1)
    region_count = region.sum(axis=1)
    region_weight = config.region_weight * (region_count > 0)
    region_mean = np.sum(np.where(region, filled, 0.0), axis=1) / np.maximum(region_count, 1)
    prior = _prior(means, config)
    shrink = config.shrinkage * ~np.isnan(prior)[None]
    total = weight_sum + region_weight + shrink
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = (value_sum + region_weight * region_mean + shrink * np.nan_to_num(prior)[None]) / total
    estimate = np.where(total > 0, estimate, prior[None])
    high = np.max(np.where(has, values, -np.inf), axis=1)
    if cluster is not None:
        share = knn_share(has[:, :, :, _QUALITY], config.k)
        estimate = _blend(estimate, cluster[0], share)
        # A model the neighbours know little of could answer as long as its longest answer in the cluster.
        high = np.where(share[:, :, None] < 1, np.fmax(high, cluster[1]), high)
    # A model no record gives a length for (unknown, or onboarded from an endpoint without usage) could answer as
    # long as any model would here: a prior of a few hundred tokens would under-hold it.
    unsized = ~np.isfinite(high[:, :, _COMPLETION])
    longest = np.max(np.where(unsized, -np.inf, high[:, :, _COMPLETION]), axis=1, keepdims=True)
    high[:, :, _COMPLETION] = np.where(unsized, longest, high[:, :, _COMPLETION])
    high = np.fmax(estimate, high)
    return Estimates(
        profiles=neighbours.profiles,
        quality=np.clip(estimate[:, :, _QUALITY], 0.0, 1.0),
        prompt_tokens=estimate[:, :, _PROMPT],
        completion_tokens=estimate[:, :, _COMPLETION],
        cost_usd=estimate[:, :, _COST],
        support=near[:, :, :, _QUALITY].sum(axis=1),
        completion_tokens_high=high[:, :, _COMPLETION],
    )


def knn_share(has_quality: np.ndarray, k: int) -> np.ndarray:
    """Per query and profile, the share of the k nearest scored records that carry the profile's quality.

    A record that carries no quality for any profile (traffic recorded without a score) says nothing about which
    model is better and is skipped; a query with no scored neighbour gets 0.

    Args:
        has_quality: whether each neighbour carries each profile's quality, shape ``(n, pool, len(profiles))``.
        k: neighbours counted.

    Returns:
        Shape ``(n, len(profiles))``, in [0, 1].
    """
    scored = has_quality.any(axis=2)
    nearest = scored & (np.cumsum(scored, axis=1) <= k)
    return np.asarray((has_quality & nearest[:, :, None]).sum(axis=1) / np.maximum(1, nearest.sum(axis=1))[:, None])


def _blend(knn: np.ndarray, cluster: np.ndarray, share: np.ndarray) -> np.ndarray:
    """``share``·kNN + (1 − ``share``)·cluster, field by field (either alone where the other is unknown)."""
    share = share[:, :, None]
    blended = share * np.nan_to_num(knn) + (1.0 - share) * np.nan_to_num(cluster)
    return np.where(np.isnan(cluster), knn, np.where(np.isnan(knn), cluster, blended))


def tie_offsets(embeddings: np.ndarray, profiles: list[str]) -> np.ndarray:
    """A deterministic number in [0, 1) per (query, profile), hashed from the embedding and the profile name."""
    out = np.empty((len(embeddings), len(profiles)))
    for row, vector in enumerate(np.asarray(embeddings, dtype=np.float32)):
        for col, profile in enumerate(profiles):
            digest = hashlib.blake2b(vector.tobytes() + profile.encode("utf-8"), digest_size=8).digest()
            out[row, col] = int.from_bytes(digest, "little") / 2.0**64
    return out


class KnnEstimator:
    """Estimates from the k nearest history records.

    Args:
        history: the store to read neighbours from.
        config: k, weighting, shrinkage and priors.
        centres: normalised cluster centres of a profile set, shape ``(K, dimension)``, for the models few
            neighbours know; ``None`` = one cluster (the whole history).
    """

    def __init__(self, history: NeighbourSource, config: EstimatorConfig | None = None,
                 centres: np.ndarray | None = None) -> None:
        self._history = history
        self._config = config or EstimatorConfig()
        self._centres = None if centres is None else np.asarray(centres, dtype=np.float32)

    @property
    def config(self) -> EstimatorConfig:
        """The estimator settings."""
        return self._config

    def estimate(self, embeddings: np.ndarray, profiles: list[str]) -> Estimates:
        """Estimate every profile's outcome for a batch of query embeddings.

        Args:
            embeddings: shape ``(n, dimension)``.
            profiles: the model profiles to estimate.

        Returns:
            Estimates of shape ``(n, len(profiles))`` per field.
        """
        embeddings = np.atleast_2d(embeddings)
        read = max(self._config.k, self._config.pool)
        with stage("lookup"):
            neighbours = self._history.neighbours(embeddings, read, profiles)
        means = self._history.profile_means(profiles)
        estimates = combine(neighbours, means, self._config, self._cluster_estimates(embeddings, profiles, means))
        if self._config.tie_break <= 0:
            return estimates
        # (1 − t)·d̂ + t·u stays in [0, 1] and keeps the order of estimates that differ by more than t.
        t = self._config.tie_break
        return replace(estimates, quality=(1.0 - t) * estimates.quality + t * tie_offsets(embeddings, profiles))

    def _cluster_estimates(self, embeddings: np.ndarray, profiles: list[str], means: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
        """Each query's cluster values and highs, each of shape ``(n, len(profiles), len(FIELDS))``."""
        vectors = np.asarray(embeddings, dtype=np.float32)
        # Without centres one zero centre holds the whole history: every query is in its one cluster.
        centres = self._centres if self._centres is not None else np.zeros((1, vectors.shape[1]), np.float32)
        values, highs = cluster_values(self._history.cluster_stats(centres, profiles), means, self._config)
        label = np.argmax(vectors @ centres.T, axis=1)
        return values[label], highs[label]

    def estimate_without_text(self, profiles: list[str]) -> Estimates:
        """Estimates for one query that has no text to look neighbours up with (an image, a file, an empty turn).

        Each profile's mean over all history (then the configured priors) stands for the query.

        Args:
            profiles: the model profiles to estimate.

        Returns:
            Estimates of shape ``(1, len(profiles))`` per field.
        """
        return mean_estimates(self._history.profile_means(profiles), profiles, self._config)


def mean_estimates(means: np.ndarray, profiles: list[str], config: EstimatorConfig) -> Estimates:
    """Estimates for one query from each profile's mean over history (then the configured priors where NaN).

    Args:
        means: each profile's mean outcome, shape ``(len(profiles), len(FIELDS))``; NaN where unknown.
        profiles: the model profiles of its rows.
        config: the priors.

    Returns:
        Estimates of shape ``(1, len(profiles))`` per field.
    """
    prior = _prior(means, config)[None]
    return Estimates(
        profiles=tuple(profiles), quality=np.clip(prior[:, :, _QUALITY], 0.0, 1.0),
        prompt_tokens=prior[:, :, _PROMPT], completion_tokens=prior[:, :, _COMPLETION],
        cost_usd=prior[:, :, _COST], support=np.zeros(prior.shape[:2], dtype=int),
        completion_tokens_high=prior[:, :, _COMPLETION],
    )
