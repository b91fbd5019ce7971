import itertools

import numpy as np
import pytest
from scipy.optimize import linprog

from llm_router_plugin.duals import Budgets, pick, scores, solve_max_quality, solve_quality_target


def instance(seed: int = 0, n: int = 6, m: int = 3) -> tuple[np.ndarray, np.ndarray, Budgets]:
    rng = np.random.default_rng(seed)
    quality = rng.uniform(0, 1, (n, m))
    usage = rng.uniform(1, 10, (n, m))  # one budget per deployment
    return quality, usage, Budgets(np.arange(m), np.array([8.0, 12.0, 5.0])[:m])


def primal_optimum(quality: np.ndarray, usage: np.ndarray, budget: np.ndarray) -> float:
    n, m = quality.shape
    a_ub = []
    for i in range(m):  # budget rows
        row = np.zeros(n * m)
        row[i::m] = usage[:, i]
        a_ub.append(row)
    for j in range(n):  # each query at most once
        row = np.zeros(n * m)
        row[j * m : (j + 1) * m] = 1
        a_ub.append(row)
    res = linprog(-quality.ravel(), A_ub=np.array(a_ub), b_ub=np.concatenate([budget, np.ones(n)]), bounds=(0, 1),
                  method="highs")
    return -float(res.fun)


def brute_force_integer(quality: np.ndarray, usage: np.ndarray, budget: np.ndarray) -> float:
    n, m = quality.shape
    best = 0.0
    for choice in itertools.product(range(m + 1), repeat=n):  # m = drop
        spend = np.zeros(m)
        total = 0.0
        for j, i in enumerate(choice):
            if i < m:
                spend[i] += usage[j, i]
                total += quality[j, i]
        if np.all(spend <= budget + 1e-12):
            best = max(best, total)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dual_optimum_equals_primal_and_bounds_brute_force(seed: int) -> None:
    quality, usage, budgets = instance(seed)
    solution = solve_max_quality(quality, usage, budgets)
    assert solution.objective == pytest.approx(primal_optimum(quality, usage, budgets.amount), rel=1e-6)
    assert solution.objective >= brute_force_integer(quality, usage, budgets.amount) - 1e-9
    assert np.all(solution.lambdas >= 0)


def test_loose_budgets_have_zero_weights_and_tight_ones_positive() -> None:
    quality = np.array([[0.9, 0.5], [0.8, 0.45], [0.7, 0.6]])
    usage = np.array([[10.0, 1.0], [10.0, 1.0], [10.0, 1.0]])
    loose = solve_max_quality(quality, usage, Budgets(np.array([0, 1]), np.array([1e6, 1e6])))
    assert loose.lambdas.tolist() == [0.0, 0.0]
    tight = solve_max_quality(quality, usage, Budgets(np.array([0, 1]), np.array([10.0, 1e6])))
    assert tight.lambdas[0] > 0 and tight.lambdas[1] == 0
    score = scores(quality, usage, np.array([0, 1]), tight)
    share = usage / np.array([10.0, 1e6])
    chosen = [pick(score[j], share[j], [0, 1]) for j in range(3)]
    assert chosen.count(0) == 1  # the weight keeps the expensive deployment within its budget (ties go cheap)


def test_zero_budget_blocks_its_deployment() -> None:
    quality, usage, _ = instance(3, m=2)
    solution = solve_max_quality(quality, usage, Budgets(np.array([0, 1]), np.array([0.0, 50.0])))
    assert np.isinf(solution.lambdas[0])
    assert np.all(scores(quality, usage, np.array([0, 1]), solution).argmax(axis=1) == 1)


def test_two_budgets_on_one_deployment() -> None:
    quality = np.array([[1.0, 0.2]] * 4)
    usage = np.array([[100.0, 0.01]] * 4)  # deployment 0: tokens and USD
    budgets = Budgets(np.array([0, 0]), np.array([1e6, 0.02]))  # USD binds: two queries at most
    solution = solve_max_quality(quality, usage, budgets)
    assert solution.objective == pytest.approx(2 * 1.0 + 2 * 0.2)  # deployment 1 is unlimited
    assert solution.lambdas[0] == 0 and solution.lambdas[1] > 0


def test_bad_shapes_name_the_argument() -> None:
    quality, usage, budgets = instance()
    with pytest.raises(ValueError, match="usage"):
        solve_max_quality(quality, usage[:, :2], budgets)
    with pytest.raises(ValueError, match="amount"):
        Budgets(np.array([0]), np.array([-1.0]))


def test_quality_target_mode_meets_the_target_at_least_cost() -> None:
    quality = np.array([[0.9, 0.3]] * 10)
    cost = np.array([[10.0, 1.0]] * 10)
    budgets = Budgets(np.array([0, 1]), np.array([1e6, 1e6]))
    solution = solve_quality_target(quality, cost, budgets, cost, target=0.6)
    assert solution.feasible
    assert solution.mu > 0  # the quality constraint binds
    # Half the queries on the good model reach 0.6 mean quality: cost 5*10 + 5*1.
    assert solution.objective == pytest.approx(55.0)
    assert solution.notes == []


def test_unreachable_quality_target_falls_back_to_max_quality() -> None:
    quality = np.array([[0.5, 0.3]] * 4)
    cost = np.ones((4, 2))
    solution = solve_quality_target(quality, cost, Budgets(np.array([0, 1]), np.array([10.0, 10.0])), cost, 0.9)
    assert not solution.feasible
    assert "unreachable" in solution.notes[0]
