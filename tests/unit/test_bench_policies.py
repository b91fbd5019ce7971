import math

import numpy as np
import pytest

from llm_router_plugin.bench.harness import NO_MODEL
from llm_router_plugin.bench.policies import (
    Estimated,
    batch_split,
    greedy_cost,
    greedy_perf,
    port,
    port_gamma,
    port_reference,
    random_policy,
)


def stream(n: int = 40) -> Estimated:
    """Model 0: good and expensive; model 1: mediocre and cheap."""
    quality = np.tile([0.9, 0.5], (n, 1))
    cost = np.tile([1.0, 0.1], (n, 1))
    return Estimated(quality, cost)


def test_greedy_perf_takes_the_best_estimate() -> None:
    estimated = Estimated(np.array([[0.1, 0.7], [0.9, 0.2]]), np.ones((2, 2)))
    assert greedy_perf(estimated).tolist() == [1, 0]


def test_greedy_cost_follows_the_most_estimated_budget_left() -> None:
    estimated = Estimated(np.zeros((4, 2)), np.array([[3.0, 1.0]] * 4))
    # Left: [4, 2] → 0 → [1, 2] → 1 → [1, 1] → 0 (first of a tie) → [-2, 1] → 1.
    assert greedy_cost(estimated, np.array([4.0, 2.0])).tolist() == [0, 1, 0, 1]


def test_random_policy_is_seeded_and_uses_every_model() -> None:
    first = random_policy(200, 3, seed=5)
    assert np.array_equal(first, random_policy(200, 3, seed=5))
    assert set(first.tolist()) == {0, 1, 2}


def test_batch_split_keeps_each_batch_within_the_estimated_budget_left() -> None:
    estimated = stream(40)
    budgets = np.array([5.0, 1.0])
    choices = batch_split(estimated, budgets, batch_size=8)
    routed = choices != NO_MODEL
    spend = np.bincount(choices[routed], weights=estimated.cost[routed, choices[routed]], minlength=2)
    assert np.all(spend <= budgets + 1e-9)
    assert (choices == 0).sum() == 5 and (choices == 1).sum() == 10  # every unit of budget used


def test_port_warms_up_at_random_with_a_drop_arm_then_follows_gamma() -> None:
    estimated = stream(400)
    choices = port(estimated, np.array([10.0, 10.0]), alpha=1.0, seed=3, epsilon=0.1)
    warmup = math.ceil(0.1 * 400)
    assert set(choices[:warmup].tolist()) == {NO_MODEL, 0, 1}
    assert NO_MODEL not in choices[warmup:]  # no drop arm after the warm-up: argmax always picks a model
    assert len(set(choices[warmup:].tolist())) == 1


def test_port_gamma_prices_a_scarce_budget() -> None:
    estimated = stream(40)
    scarce = port_gamma(estimated.quality, estimated.cost, np.array([0.1, 100.0]), alpha=1.0, epsilon=0.025)
    plenty = port_gamma(estimated.quality, estimated.cost, np.array([100.0, 100.0]), alpha=1.0, epsilon=0.025)
    assert np.all((scarce >= 0) & (scarce <= 1))
    assert scarce[0] > plenty[0]


def test_port_reference_reports_the_best_alpha_of_its_grid() -> None:
    estimated = stream(200)
    budgets = np.array([20.0, 5.0])
    grid = (0.1, 1.0)
    each = {a: port_reference(estimated, budgets, estimated.quality, estimated.cost, 1, (a,))[0].quality for a in grid}
    assert each[0.1] != each[1.0]  # the grid matters on this stream
    best, alpha = port_reference(estimated, budgets, estimated.quality, estimated.cost, 1, grid)
    assert alpha == max(each, key=lambda a: each[a])
    assert best.quality == max(each.values())
    with pytest.raises(ValueError, match="alphas"):
        port_reference(estimated, budgets, estimated.quality, estimated.cost, 1, ())


def test_port_gamma_survives_scipy_refusing_its_own_finite_differences(monkeypatch: pytest.MonkeyPatch) -> None:
    import llm_router_plugin.bench.policies as policies

    real = policies.minimize
    estimated = stream(40)
    budgets = np.array([0.5, 100.0])
    expected = port_gamma(estimated.quality, estimated.cost, budgets, alpha=1.0, epsilon=0.025)

    def picky(*args: object, **kwargs: object) -> object:
        if kwargs.get("jac") is None:
            raise ValueError("`x0` violates bound constraints.")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(policies, "minimize", picky)
    gamma = port_gamma(estimated.quality, estimated.cost, budgets, alpha=1.0, epsilon=0.025)
    assert gamma == pytest.approx(expected, abs=1e-3)
