"""The protocol's baselines and the PORT reference, as published (Wu & Silwal, arXiv 2509.02718, and its code).

Each policy decides from k-NN estimates only and never hears back from the harness, exactly as in the paper's
evaluation: it returns one model index per query (:data:`~llm_router_plugin.bench.harness.NO_MODEL` for none),
and the harness serves them on true costs. The greedy policies, BatchSplit and PORT read approximate neighbours
(the HNSW index of the history store); kNN-perf and kNN-cost read exact ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from llm_router_plugin.bench.harness import NO_MODEL, RunResult, evaluate
from llm_router_plugin.bench.optima import solve_integral

#: PORT's warm-up share of the stream (ε).
PORT_EPSILON = 0.025
#: The α grid PORT-reference is tuned over (half decades; the paper uses 1e-4 on RouterBench).
PORT_ALPHAS = (*(float(f"{m}e{e}") for e in range(-7, 0) for m in (1, 3)), 1.0)
#: Finite-difference step of PORT's optimiser (scipy's default for L-BFGS-B).
_STEP = 1e-8
#: Queries per BatchSplit batch.
BATCH_SIZE = 256
#: Seconds HiGHS may spend on one BatchSplit batch (the best assignment found so far is used after that).
BATCH_TIME_LIMIT = 20.0


@dataclass(frozen=True)
class Estimated:
    """Estimated quality and cost of a test stream, shape ``(n, M)`` each.

    Attributes:
        quality: d̂.
        cost: ĝ.
    """

    quality: np.ndarray
    cost: np.ndarray


def random_policy(n: int, models: int, seed: int) -> np.ndarray:
    """Uniformly random models (no drop arm)."""
    return np.random.default_rng(seed).integers(0, models, size=n)


def greedy_perf(estimated: Estimated) -> np.ndarray:
    """The model with the highest estimated quality, budgets ignored."""
    return np.argmax(estimated.quality, axis=1)


def greedy_cost(estimated: Estimated, budgets: np.ndarray) -> np.ndarray:
    """The model with the most estimated budget left (the estimated cost of its choices subtracted)."""
    left = np.asarray(budgets, dtype=float).copy()
    choices = np.empty(len(estimated.cost), dtype=int)
    for query, costs in enumerate(estimated.cost):
        choice = int(np.argmax(left))
        choices[query] = choice
        left[choice] -= costs[choice]
    return choices


def batch_split(estimated: Estimated, budgets: np.ndarray, batch_size: int = BATCH_SIZE,
                time_limit: float | None = BATCH_TIME_LIMIT) -> np.ndarray:
    """Per batch, the 0/1 assignment that maximises estimated quality within the estimated budget left.

    Args:
        estimated: d̂, ĝ of the stream.
        budgets: per-model budgets.
        batch_size: queries per batch.
        time_limit: seconds per batch for HiGHS.

    Returns:
        The decisions.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
    left = np.asarray(budgets, dtype=float).copy()
    choices = np.full(len(estimated.quality), NO_MODEL, dtype=int)
    for start in range(0, len(choices), batch_size):
        part = slice(start, start + batch_size)
        assignment = solve_integral(estimated.quality[part], estimated.cost[part], np.maximum(left, 0.0), time_limit)
        chosen = assignment.choices()
        choices[part] = chosen
        routed = chosen != NO_MODEL
        np.subtract.at(left, chosen[routed], estimated.cost[part][routed, chosen[routed]])
    return choices


def port_gamma(quality: np.ndarray, cost: np.ndarray, budgets: np.ndarray, alpha: float, epsilon: float) -> np.ndarray:
    """PORT's one-time optimisation: min_γ∈[0,1]^M ε γ·B + Σ_j max_i (α d̂_ij − γ_i ĝ_ij), by L-BFGS-B from 1/M.

    Args:
        quality: d̂ of the warm-up queries, shape ``(w, M)``.
        cost: ĝ of the warm-up queries.
        budgets: the full per-model budgets B.
        alpha: PORT's control parameter α.
        epsilon: the warm-up share ε.

    Returns:
        γ, shape ``(M,)``.
    """
    models = quality.shape[1]

    def objective(gamma: np.ndarray) -> float:
        return float(epsilon * gamma @ budgets + np.max(alpha * quality - cost * gamma, axis=1).sum())

    def gradient(gamma: np.ndarray) -> np.ndarray:
        # scipy's forward differences, computed here for the rare iterate that rounding put a hair outside the
        # box: scipy's own refuse it.
        gamma = np.clip(gamma, 0.0, 1.0)
        base = objective(gamma)
        steps = np.where(gamma + _STEP <= 1.0, _STEP, -_STEP)
        return np.array([(objective(gamma + steps[i] * np.eye(models)[i]) - base) / steps[i] for i in range(models)])

    start = np.full(models, 1.0 / models)
    bounds = [(0.0, 1.0)] * models
    try:
        result = minimize(objective, start, method="L-BFGS-B", bounds=bounds)  # exactly as PORT's code
    except ValueError:
        result = minimize(objective, start, jac=gradient, method="L-BFGS-B", bounds=bounds)
    return np.clip(np.asarray(result.x), 0.0, 1.0)


def port(estimated: Estimated, budgets: np.ndarray, alpha: float, seed: int,
         epsilon: float = PORT_EPSILON) -> np.ndarray:
    """PORT as published: ⌈εN⌉ random warm-up decisions (with a drop arm), then argmax_i (α d̂_ij − γ_i ĝ_ij).

    Args:
        estimated: d̂, ĝ of the stream.
        budgets: per-model budgets.
        alpha: the control parameter α.
        seed: seeds the warm-up draws.
        epsilon: the warm-up share ε.

    Returns:
        The decisions.
    """
    n, models = estimated.quality.shape
    warmup = min(n, math.ceil(epsilon * n))
    draws = np.random.default_rng(seed).integers(0, models + 1, size=warmup)  # index `models` is the drop arm
    choices = np.full(n, NO_MODEL, dtype=int)
    choices[:warmup] = np.where(draws == models, NO_MODEL, draws)
    if warmup < n:
        gamma = port_gamma(estimated.quality[:warmup], estimated.cost[:warmup], budgets, alpha, epsilon)
        scores = alpha * estimated.quality[warmup:] - estimated.cost[warmup:] * gamma
        choices[warmup:] = np.argmax(scores, axis=1)
    return choices


def port_reference(estimated: Estimated, budgets: np.ndarray, true_quality: np.ndarray, true_cost: np.ndarray,
                   seed: int, alphas: Sequence[float] = PORT_ALPHAS) -> tuple[RunResult, float]:
    """PORT with the best α of a grid, chosen on the served quality of this very run (generous to PORT).

    Args:
        estimated: d̂, ĝ of the stream.
        budgets: per-model budgets.
        true_quality: true d of the stream (to pick α).
        true_cost: true g of the stream.
        seed: seeds the warm-up draws (the same draws for every α).
        alphas: the grid.

    Returns:
        The best run and its α.
    """
    if not alphas:
        raise ValueError("alphas: the grid is empty")
    runs = [(evaluate(port(estimated, budgets, a, seed), true_quality, true_cost, budgets), a) for a in alphas]
    return max(runs, key=lambda run: run[0].quality)
