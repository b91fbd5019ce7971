import itertools

import numpy as np
import pytest

from llm_router_plugin.bench.harness import NO_MODEL
from llm_router_plugin.bench.optima import offline_optimum, solve_integral, solve_lp
from llm_router_plugin.duals import Budgets, solve_max_quality


def tiny_instance(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """5 queries × 2 models, 0/1-ish quality, budgets that bind."""
    rng = np.random.default_rng(seed)
    quality = rng.choice([0.0, 0.5, 1.0], size=(5, 2))
    cost = rng.uniform(0.5, 2.0, size=(5, 2)) * np.array([1.0, 3.0])
    budgets = np.array([2.0, 3.0])
    return quality, cost, budgets


def brute_force_integral(quality: np.ndarray, cost: np.ndarray, budgets: np.ndarray) -> float:
    """Best total quality over every assignment of each query to a model or to nothing."""
    n, m = quality.shape
    best = 0.0
    for assignment in itertools.product(range(-1, m), repeat=n):
        spend = np.zeros(m)
        value = 0.0
        for query, model in enumerate(assignment):
            if model >= 0:
                spend[model] += cost[query, model]
                value += quality[query, model]
        if np.all(spend <= budgets + 1e-12):
            best = max(best, value)
    return best


def brute_force_dual(quality: np.ndarray, cost: np.ndarray, budgets: np.ndarray) -> float:
    """min over a λ grid of Σ λ_i B_i + Σ_j max(0, max_i d_ij − λ_i g_ij): the LP optimum by strong duality."""
    grid = np.linspace(0.0, 2.0, 401)
    lam = np.array(list(itertools.product(grid, repeat=quality.shape[1])))  # (points, M)
    slack = quality[None, :, :] - cost[None, :, :] * lam[:, None, :]  # (points, n, M)
    values = lam @ budgets + np.maximum(0.0, slack.max(axis=2)).sum(axis=1)
    return float(values.min())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_integral_optimum_matches_brute_force(seed: int) -> None:
    quality, cost, budgets = tiny_instance(seed)
    solution = solve_integral(quality, cost, budgets)
    assert solution.objective == pytest.approx(brute_force_integral(quality, cost, budgets))
    assert set(np.unique(solution.x)) <= {0.0, 1.0}
    assert np.all((solution.x * cost).sum(axis=0) <= budgets + 1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lp_optimum_matches_the_dual_brute_force_and_bounds_the_integral_one(seed: int) -> None:
    quality, cost, budgets = tiny_instance(seed)
    lp = solve_lp(quality, cost, budgets)
    # The optimal λ_i lies in [0, max d/g] ⊂ [0, 2] (the grid's range); the grid minimum exceeds the true one by at
    # most a half step times the dual's Lipschitz constant, Σ_i (B_i + Σ_j g_ij).
    grid_min = brute_force_dual(quality, cost, budgets)
    assert grid_min - 0.0025 * (budgets.sum() + cost.sum()) <= lp.objective <= grid_min + 1e-9
    assert lp.objective >= brute_force_integral(quality, cost, budgets) - 1e-9
    assert np.all((lp.x * cost).sum(axis=0) <= budgets + 1e-6)
    assert np.all(lp.x.sum(axis=1) <= 1 + 1e-9)


def test_lp_optimum_agrees_with_the_routers_dual_solver() -> None:
    quality, cost, budgets = tiny_instance(7)
    dual = solve_max_quality(quality, cost, Budgets(np.arange(2), budgets))
    assert solve_lp(quality, cost, budgets).objective == pytest.approx(dual.objective, rel=1e-6)


def test_loose_budgets_route_every_query_to_its_best_model() -> None:
    quality = np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 0.9]])
    cost = np.ones_like(quality)
    lp = solve_lp(quality, cost, np.array([10.0, 10.0]))
    assert lp.objective == pytest.approx(2.9)
    assert lp.choices().tolist() == [0, 1, 1]


def test_a_query_with_no_share_is_not_routed() -> None:
    quality = np.array([[1.0], [1.0]])
    cost = np.array([[1.0], [1.0]])
    lp = solve_lp(quality, cost, np.array([1.0]))  # room for one query only
    assert sorted(lp.choices().tolist()) == [NO_MODEL, 0]


def test_offline_optimum_serves_its_assignment_on_the_true_outcomes() -> None:
    true_quality = np.array([[1.0, 0.0], [0.0, 1.0]])
    cost = np.ones((2, 2))
    believed = np.array([[0.0, 1.0], [1.0, 0.0]])  # estimates that are exactly wrong
    optimum = offline_optimum(believed, cost, np.array([5.0, 5.0]), true_quality, cost)
    assert optimum.lp_objective == pytest.approx(2.0)
    assert optimum.result.quality == 0.0
    assert optimum.result.served == 2


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="budgets"):
        solve_lp(np.ones((2, 2)), np.ones((2, 2)), np.ones(3))
