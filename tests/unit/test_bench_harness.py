import numpy as np
import pytest

from llm_router_plugin.bench.harness import NO_MODEL, Harness, evaluate

QUALITY = np.array([[1.0, 0.0]] * 4)
COST = np.array([[1.0, 0.5]] * 4)
BUDGETS = np.array([2.0, 10.0])


def test_a_policy_that_ignores_budgets_is_caught_by_the_overspend_columns() -> None:
    result = evaluate(np.zeros(4, dtype=int), QUALITY, COST, BUDGETS)  # everything to model 0, budget for 2
    assert result.served == 2 and result.dropped == 2
    assert result.quality == 2.0 and result.cost == 2.0
    assert result.overspend_usd == pytest.approx(2.0)  # asked for 4.0 on a budget of 2.0
    assert result.overspend_pct == pytest.approx(100.0)


def test_a_policy_within_its_budgets_has_no_overspend() -> None:
    result = evaluate(np.array([0, 0, 1, 1]), QUALITY, COST, BUDGETS)
    assert (result.served, result.dropped, result.declined) == (4, 0, 0)
    assert result.overspend_usd == 0.0 and result.overspend_pct == 0.0
    assert result.quality_per_cost == pytest.approx(2.0 / 3.0)


def test_declined_queries_are_counted_apart_from_drops() -> None:
    result = evaluate(np.array([NO_MODEL, 1, NO_MODEL, 1]), QUALITY, COST, BUDGETS)
    assert (result.served, result.dropped, result.declined) == (2, 0, 2)
    assert result.quality == 0.0


def test_the_harness_serves_as_long_as_the_true_spend_fits() -> None:
    harness = Harness(QUALITY, COST, np.array([1.5, 10.0]))
    assert harness.serve(0, 0)
    assert not harness.serve(1, 0)  # 1.0 + 1.0 > 1.5
    assert harness.serve(2, 1)
    assert harness.spent.tolist() == [1.0, 0.5]
    assert harness.result().requested.tolist() == [2.0, 0.5]


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="choices"):
        evaluate(np.zeros(3, dtype=int), QUALITY, COST, BUDGETS)
    with pytest.raises(ValueError, match="budgets"):
        Harness(QUALITY, COST, np.ones(3))
