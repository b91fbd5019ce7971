"""Per-query estimates of each model's quality and cost, from the nearest past queries.

For a query, the estimator reads its k nearest history records and averages, per model profile, the outcomes
those neighbours recorded. A neighbour without a profile's outcome is skipped for that profile; a profile with
no neighbour outcome falls back to its mean over all history, and then to the configured prior.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from llm_router_plugin.config import EstimatorConfig
from llm_router_plugin.history import FIELDS, Neighbours

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
    """

    profiles: tuple[str, ...]
    quality: np.ndarray
    prompt_tokens: np.ndarray
    completion_tokens: np.ndarray
    cost_usd: np.ndarray
    support: np.ndarray


def neighbour_weights(similarity: np.ndarray, config: EstimatorConfig) -> np.ndarray:
    """Weights of the neighbours, shape like ``similarity``: 1 each (uniform) or exp((s − s_max) / T) ≤ 1."""
    present = ~np.isnan(similarity)
    if config.weighting == "uniform":
        return present.astype(float)
    top = np.nanmax(np.where(present, similarity, -np.inf), axis=1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        weights = np.exp((np.where(present, similarity, top) - top) / config.temperature)
    return np.where(present, weights, 0.0)


def combine(neighbours: Neighbours, means: np.ndarray, config: EstimatorConfig) -> Estimates:
    """Turn neighbours into estimates (weighted means, shrunk toward ``means``, with fallbacks).

    Args:
        neighbours: the queries' nearest records.
        means: each profile's global mean outcome, shape ``(len(profiles), len(FIELDS))``.
        config: weighting, shrinkage and priors.

    Returns:
        The estimates for every query and profile.
    """
    weights = neighbour_weights(neighbours.similarity, config)[:, :, None, None]
    values = neighbours.outcomes
    has = ~np.isnan(values)
    weight_sum = np.sum(np.where(has, weights, 0.0), axis=1)
    value_sum = np.sum(np.where(has, weights * np.nan_to_num(values), 0.0), axis=1)
    prior = means.copy()
    prior[:, _QUALITY] = np.where(np.isnan(prior[:, _QUALITY]), PRIOR_QUALITY, prior[:, _QUALITY])
    prior[:, _COMPLETION] = np.where(
        np.isnan(prior[:, _COMPLETION]), config.default_completion_tokens, prior[:, _COMPLETION]
    )
    shrink = config.shrinkage * ~np.isnan(prior)[None]
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = (value_sum + shrink * np.nan_to_num(prior)[None]) / (weight_sum + shrink)
    estimate = np.where(weight_sum + shrink > 0, estimate, prior[None])
    return Estimates(
        profiles=neighbours.profiles,
        quality=np.clip(estimate[:, :, _QUALITY], 0.0, 1.0),
        prompt_tokens=estimate[:, :, _PROMPT],
        completion_tokens=estimate[:, :, _COMPLETION],
        cost_usd=estimate[:, :, _COST],
        support=has[:, :, :, _QUALITY].sum(axis=1),
    )


class KnnEstimator:
    """Estimates from the k nearest history records.

    Args:
        history: the store to read neighbours from.
        config: k, weighting, shrinkage and priors.
    """

    def __init__(self, history: NeighbourSource, config: EstimatorConfig | None = None) -> None:
        self._history = history
        self._config = config or EstimatorConfig()

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
        neighbours = self._history.neighbours(np.atleast_2d(embeddings), self._config.k, profiles)
        return combine(neighbours, self._history.profile_means(profiles), self._config)
