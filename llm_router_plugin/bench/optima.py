"""Offline optima: the routing LP (and its 0/1 version) solved with HiGHS on a whole stream at once.

C_opt solves it on the true d and g, Ĉ_opt on the k-NN estimates. As in PORT's evaluation, each query then goes to
the model with the largest share x_ij (none if all are 0), and that assignment is served through the harness on
true costs; the reported quality is what the harness served. The LP's own optimum is kept beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse import csr_matrix, vstack

from llm_router_plugin.bench.harness import NO_MODEL, RunResult, evaluate

# The constraint matrices are the dual LP's, transposed: one definition of the routing LP for the router and here.
from llm_router_plugin.duals import Budgets, _budget_matrix, _pair_to_query, _scale

#: Shares below this count as "not routed" when an LP solution is turned into decisions.
_ROUTED = 1e-9


@dataclass(frozen=True)
class Assignment:
    """A solution of the routing LP.

    Attributes:
        x: share of each query sent to each model, shape ``(n, M)`` (0/1 for the integral version).
        objective: Σ d_ij x_ij.
    """

    x: np.ndarray
    objective: float

    def choices(self) -> np.ndarray:
        """Per query, the model with the largest share, or :data:`NO_MODEL` if none is routed."""
        best = np.argmax(self.x, axis=1) if self.x.size else np.zeros(len(self.x), dtype=int)
        routed = self.x.max(axis=1, initial=0.0) > _ROUTED
        return np.where(routed, best, NO_MODEL)


def _constraints(quality: np.ndarray, cost: np.ndarray, budgets: np.ndarray) -> tuple[csr_matrix, np.ndarray]:
    """``A x ≤ b`` of the routing LP: one row per model budget, then one row per query (Σ_i x_ij ≤ 1)."""
    n, m = quality.shape
    limits = Budgets(np.arange(m), np.asarray(budgets, dtype=float))
    scaled, _ = _scale(cost, limits)  # costs in fractions of each budget keep HiGHS well conditioned
    a_ub = vstack([_budget_matrix(quality, scaled, limits).T, _pair_to_query(n, m)], format="csr")
    b_ub = np.concatenate([np.where(limits.amount > 0, 1.0, 0.0), np.ones(n)])
    return a_ub, b_ub


def _check(quality: np.ndarray, cost: np.ndarray, budgets: np.ndarray) -> None:
    if quality.ndim != 2 or quality.shape != cost.shape or np.shape(budgets) != (quality.shape[1],):
        raise ValueError(f"quality/cost/budgets: shapes {quality.shape}, {cost.shape}, {np.shape(budgets)} disagree")
    if np.any(cost < 0) or np.any(np.asarray(budgets) < 0):
        raise ValueError("cost/budgets: must be non-negative")


def solve_lp(quality: np.ndarray, cost: np.ndarray, budgets: np.ndarray) -> Assignment:
    """Solve max Σ d x s.t. Σ_j g_ij x_ij ≤ B_i, Σ_i x_ij ≤ 1, x ≥ 0.

    Args:
        quality: d, shape ``(n, M)``.
        cost: g, shape ``(n, M)``.
        budgets: B, shape ``(M,)``.

    Returns:
        The optimal fractional assignment.

    Raises:
        ValueError: shapes disagree or a cost or budget is negative.
        RuntimeError: HiGHS failed.
    """
    _check(quality, cost, budgets)
    n, m = quality.shape
    if n == 0:
        return Assignment(np.zeros((0, m)), 0.0)
    a_ub, b_ub = _constraints(quality, cost, budgets)
    res = linprog(-quality.ravel(), A_ub=a_ub, b_ub=b_ub, bounds=(0, 1), method="highs")
    if res.status != 0:
        raise RuntimeError(f"HiGHS could not solve the routing LP: {res.message}")
    x = np.clip(res.x.reshape(n, m), 0.0, 1.0)
    return Assignment(x, float(-res.fun))


def solve_integral(quality: np.ndarray, cost: np.ndarray, budgets: np.ndarray,
                   time_limit: float | None = None) -> Assignment:
    """The 0/1 version of :func:`solve_lp` (a MILP; BatchSplit solves one per batch).

    Args:
        quality: d, shape ``(n, M)``.
        cost: g, shape ``(n, M)``.
        budgets: B, shape ``(M,)``.
        time_limit: seconds HiGHS may spend; the best assignment found by then is returned.

    Returns:
        The best 0/1 assignment found (optimal without a time limit).

    Raises:
        ValueError: shapes disagree or a cost or budget is negative.
        RuntimeError: HiGHS found no assignment (it always should: routing nothing is feasible).
    """
    _check(quality, cost, budgets)
    n, m = quality.shape
    if n == 0:
        return Assignment(np.zeros((0, m)), 0.0)
    a_ub, b_ub = _constraints(quality, cost, budgets)
    options = {} if time_limit is None else {"time_limit": time_limit}
    res = milp(-quality.ravel(), constraints=LinearConstraint(a_ub, -np.inf, b_ub), integrality=np.ones(n * m),
               bounds=Bounds(0, 1), options=options)
    if res.x is None:
        raise RuntimeError(f"HiGHS found no 0/1 assignment: {res.message}")
    x = np.round(res.x).reshape(n, m)
    return Assignment(x, float(np.sum(quality * x)))


@dataclass(frozen=True)
class OfflineOptimum:
    """An offline optimum, served through the harness.

    Attributes:
        lp_objective: the LP's optimum on the values it was given (estimates for Ĉ_opt).
        result: what its rounded assignment earns on the true outcomes.
    """

    lp_objective: float
    result: RunResult


def offline_optimum(quality: np.ndarray, cost: np.ndarray, budgets: np.ndarray, true_quality: np.ndarray,
                    true_cost: np.ndarray) -> OfflineOptimum:
    """Solve the LP on (``quality``, ``cost``) and serve its assignment on the true outcomes.

    Args:
        quality: the d the LP sees (true for C_opt, estimated for Ĉ_opt).
        cost: the g the LP sees.
        budgets: per-model budgets.
        true_quality: true d of the stream.
        true_cost: true g of the stream.

    Returns:
        The LP optimum and the served result.
    """
    assignment = solve_lp(quality, cost, budgets)
    return OfflineOptimum(assignment.objective, evaluate(assignment.choices(), true_quality, true_cost, budgets))
