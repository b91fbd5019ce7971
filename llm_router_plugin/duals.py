"""Dual weights: the price of a unit of each deployment's budget, learned from a sample of queries.

Max-quality mode solves the exact dual of the routing LP

    max Σ_ij d_ij x_ij  s.t.  Σ_j g_rj x_{i(r)j} ≤ b_r (each budget r),  Σ_i x_ij ≤ 1,  x ≥ 0

which is   min Σ_r λ_r b_r + Σ_j β_j  s.t.  β_j ≥ d_ij − Σ_{r of i} λ_r g_rj,  λ, β ≥ 0,

with HiGHS; a query then goes to argmax_i (d_ij − Σ_r λ_r g_rj). A deployment may have several budgets (tokens and
USD), each with its own λ. Quality-target mode (OmniRouter) solves

    min Σ_ij c_ij x_ij  s.t.  Σ_ij d_ij x_ij ≥ τ n,  the budgets,  Σ_i x_ij = 1,  x ≥ 0

and reads λ and the quality multiplier μ off the optimal duals; a query goes to argmin_i (c_ij + Σ_r λ_r g_rj − μ d_ij).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix, csr_matrix, hstack, vstack

_LOW_END = 1e-7


@dataclass(frozen=True)
class Budgets:
    """The budget constraints of a routing LP.

    Attributes:
        owner: for each budget r, the index of the deployment it limits.
        amount: for each budget r, the amount available to the sample (already scaled to it).
    """

    owner: np.ndarray
    amount: np.ndarray

    def __post_init__(self) -> None:
        if self.owner.shape != self.amount.shape:
            raise ValueError("amount: needs one entry per budget owner")
        if np.any(self.amount < 0):
            raise ValueError("amount: budgets must be non-negative")


@dataclass(frozen=True)
class DualSolution:
    """Learned dual weights.

    Attributes:
        lambdas: one weight per budget (price of a unit of it); ``inf`` for a budget of 0.
        mu: the quality multiplier (quality-target mode; 0 in max-quality mode).
        objective: the LP optimum (total quality, or total cost in quality-target mode).
        feasible: False when quality-target mode could not reach τ (the weights are then max-quality ones).
        sample_size: queries in the sample.
    """

    lambdas: np.ndarray
    mu: float = 0.0
    objective: float = 0.0
    feasible: bool = True
    sample_size: int = 0
    notes: list[str] = field(default_factory=list)


def _check(quality: np.ndarray, usage: np.ndarray, budgets: Budgets) -> None:
    if quality.ndim != 2:
        raise ValueError(f"quality: expected shape (n, deployments), got {quality.shape}")
    if usage.shape != (quality.shape[0], len(budgets.owner)):
        raise ValueError(f"usage: expected shape {(quality.shape[0], len(budgets.owner))}, got {usage.shape}")
    if len(budgets.owner) and budgets.owner.max() >= quality.shape[1]:
        raise ValueError("owner: a budget names a deployment index outside the quality matrix")
    if not (np.all(np.isfinite(quality)) and np.all(np.isfinite(usage)) and np.all(usage >= 0)):
        raise ValueError("quality/usage: must be finite, and usage non-negative")


def _budget_matrix(quality: np.ndarray, usage: np.ndarray, budgets: Budgets) -> csr_matrix:
    """Σ_r λ_r g_rj for each (j, i) row j·M + i, as a sparse (n·M, R) matrix."""
    n, m = quality.shape
    rows = np.arange(n)[:, None] * m + budgets.owner[None, :]
    return coo_matrix(
        (usage.ravel(), (rows.ravel(), np.tile(np.arange(len(budgets.owner)), n))),
        shape=(n * m, len(budgets.owner)),
    ).tocsr()


def _pair_to_query(n: int, m: int) -> csr_matrix:
    """The (n, n·M) matrix that sums a query's M pair variables."""
    pairs = np.arange(n * m)
    return coo_matrix((np.ones(n * m), (pairs // m, pairs)), shape=(n, n * m)).tocsr()


def _scale(usage: np.ndarray, budgets: Budgets) -> tuple[np.ndarray, np.ndarray]:
    # Measure usage in fractions of each budget: tokens (~1e3) and USD (~1e-4) then share one scale, which keeps
    # HiGHS well conditioned. A zero budget keeps scale 1 and is handled by the caller.
    scale = np.where(budgets.amount > 0, budgets.amount, 1.0)
    return usage / scale, scale


def solve_max_quality(quality: np.ndarray, usage: np.ndarray, budgets: Budgets) -> DualSolution:
    """Solve the exact dual of the max-quality routing LP.

    Args:
        quality: estimated quality d̂, shape ``(n, M)``.
        usage: estimated consumption of each budget if the query went to that budget's owner, shape ``(n, R)``.
        budgets: owners and sample-scaled amounts of the R budgets.

    Returns:
        The weights λ (``inf`` for a zero budget: its deployment is never chosen).

    Raises:
        ValueError: shapes disagree or inputs are not finite.
        RuntimeError: HiGHS failed (it should not: the dual is always feasible and bounded).
    """
    _check(quality, usage, budgets)
    n, m = quality.shape
    r = len(budgets.owner)
    if n == 0 or r == 0:
        return DualSolution(np.zeros(r), sample_size=n)
    zero = budgets.amount <= 0
    blocked = np.zeros(m, dtype=bool)
    blocked[budgets.owner[zero]] = True
    quality = np.where(blocked[None, :], 0.0, quality)  # a deployment with a zero budget earns nothing
    scaled, scale = _scale(usage, budgets)
    g = _budget_matrix(quality, scaled, budgets)
    # β_j + Σ λ_r g_rj ≥ d_ij  →  −β_j − Σ λ_r g_rj ≤ −d_ij
    a_ub = -hstack([g, _pair_to_query(n, m).T], format="csr")
    # The dual optimum is often a whole segment of λ (0/1 quality data makes it so); a tiny extra price on λ picks
    # its low end, where only the marginal query ties and every other query is strictly on one side.
    cost = np.concatenate([np.where(zero, 0.0, 1.0 + _LOW_END), np.ones(n)])
    res = linprog(cost, A_ub=a_ub, b_ub=-quality.ravel(), bounds=(0, None), method="highs")
    if res.status != 0:
        raise RuntimeError(f"HiGHS could not solve the dual LP: {res.message}")
    objective = float(np.sum(np.where(zero, 0.0, res.x[:r])) + np.sum(res.x[r:]))
    lambdas = res.x[:r] / scale
    lambdas[zero] = np.inf
    return DualSolution(lambdas, objective=objective, sample_size=n)


def solve_quality_target(
    quality: np.ndarray, usage: np.ndarray, budgets: Budgets, cost: np.ndarray, target: float
) -> DualSolution:
    """Solve the quality-target LP (minimum cost with mean quality ≥ τ) and return its dual weights.

    Args:
        quality: estimated quality d̂, shape ``(n, M)``.
        usage: estimated consumption of each budget, shape ``(n, R)``.
        budgets: owners and sample-scaled amounts.
        cost: the cost minimised, shape ``(n, M)`` (tokens or USD).
        target: τ, the mean quality every served query must reach on average.

    Returns:
        λ and μ; when τ (with the budgets) is out of reach, the max-quality weights with ``feasible=False``.
    """
    _check(quality, usage, budgets)
    n, m = quality.shape
    r = len(budgets.owner)
    if n == 0:
        return DualSolution(np.zeros(r), sample_size=0)
    cost_scale = float(np.max(cost)) or 1.0
    scaled, scale = _scale(usage, budgets)
    # Primal over x (n·M): budgets (R rows), −quality ≤ −τn (1 row); equality: Σ_i x_ij = 1.
    g = _budget_matrix(quality, scaled, budgets).T
    a_ub = vstack([g, csr_matrix(-quality.ravel()[None, :])], format="csr")
    b_ub = np.concatenate([np.where(budgets.amount > 0, 1.0, 0.0), [-target * n]])
    a_eq = _pair_to_query(n, m)
    res = linprog(
        cost.ravel() / cost_scale, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=np.ones(n), bounds=(0, None),
        method="highs",
    )
    if res.status != 0:
        fallback = solve_max_quality(quality, usage, budgets)
        return DualSolution(
            fallback.lambdas, objective=fallback.objective, feasible=False, sample_size=n,
            notes=[f"quality target {target} unreachable within the budgets ({res.message.strip()})"],
        )
    marginals = -np.asarray(res.ineqlin.marginals)
    lambdas = marginals[:r] * cost_scale / scale
    mu = float(marginals[r] * cost_scale)
    return DualSolution(lambdas, mu=mu, objective=float(res.fun) * cost_scale, sample_size=n)


def scores(
    quality: np.ndarray, usage: np.ndarray, owner: np.ndarray, solution: DualSolution,
    cost: np.ndarray | None = None,
) -> np.ndarray:
    """Score each (query, deployment): higher is better.

    Max-quality mode: d_ij − Σ_r λ_r g_rj. Quality-target mode (``cost`` given): −(c_ij + Σ_r λ_r g_rj − μ d_ij).

    Args:
        quality: shape ``(n, M)``.
        usage: shape ``(n, R)``.
        owner: for each budget, the index of its deployment.
        solution: the weights.
        cost: the minimised cost, shape ``(n, M)``, in quality-target mode.

    Returns:
        Scores of shape ``(n, M)`` (``-inf`` for a deployment with an exhausted zero budget).
    """
    penalty = np.zeros_like(quality, dtype=float)
    with np.errstate(invalid="ignore"):
        weighted = usage * solution.lambdas[None, :]
    weighted = np.where(np.isinf(solution.lambdas)[None, :], np.inf, weighted)
    np.add.at(penalty.T, owner, weighted.T)
    if cost is None:
        return quality - penalty
    return solution.mu * quality - cost - penalty


def pick(score: np.ndarray, share: np.ndarray, candidates: list[int]) -> int:
    """The best candidate by score; near-ties (1e-9) go to the one using the smallest share of its budget.

    The optimal duals sit at a kink of the dual objective, where some queries score the same on two deployments
    (common with 0/1 quality data); the LP splits such a query, the router sends it to the cheaper side.

    Args:
        score: score per deployment.
        share: the fraction of its budget each deployment would spend on this query.
        candidates: deployment indices to choose from (not empty).

    Returns:
        The chosen index.
    """
    return max(candidates, key=lambda i: (round(float(score[i]), 9), -float(share[i])))
