"""The serving harness: true outcomes, true costs, and the budgets enforced the way PORT's evaluation does.

A decision is served only if the chosen model's true spend stays within its budget; otherwise the query is dropped.
The harness also adds up what each policy *asked* each model to spend (served or dropped): a policy that routes
past a budget shows up in the overspend columns even though the harness refused to serve those queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: A decision that routes the query nowhere (PORT's drop arm, or a router that refused it).
NO_MODEL = -1


@dataclass(frozen=True)
class RunResult:
    """What one policy achieved on one test stream.

    Attributes:
        quality: Σ true quality of the served queries.
        cost: Σ true cost of the served queries (USD).
        served: queries served.
        dropped: queries the harness dropped because the chosen model's budget could not cover them.
        declined: queries the policy routed nowhere.
        requested: per model, the true cost of every query the policy sent there (served or dropped).
        budgets: per-model budgets.
    """

    quality: float
    cost: float
    served: int
    dropped: int
    declined: int
    requested: np.ndarray
    budgets: np.ndarray

    @property
    def quality_per_cost(self) -> float:
        """Quality per USD (0 when nothing was spent)."""
        return self.quality / self.cost if self.cost > 0 else 0.0

    @property
    def overspend_usd(self) -> float:
        """The largest amount by which a policy's requests to one model exceed that model's budget (USD)."""
        return float(np.max(np.maximum(0.0, self.requested - self.budgets), initial=0.0))

    @property
    def overspend_pct(self) -> float:
        """The largest overspend of one model in percent of its budget (``inf`` for a request on a zero budget)."""
        over = np.maximum(0.0, self.requested - self.budgets)
        with np.errstate(divide="ignore", invalid="ignore"):
            pct = np.where(over > 0, 100.0 * over / self.budgets, 0.0)
        return float(np.max(pct, initial=0.0))

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready numbers."""
        return {
            "quality": self.quality, "cost": self.cost, "served": self.served, "dropped": self.dropped,
            "declined": self.declined, "quality_per_cost": self.quality_per_cost,
            "overspend_usd": self.overspend_usd, "overspend_pct": self.overspend_pct,
            "requested_usd": self.requested.tolist(),
        }


class Harness:
    """Serves one test stream against the true outcomes and the budgets.

    Args:
        quality: true quality of the stream, shape ``(n, M)``.
        cost: true cost of the stream, shape ``(n, M)``.
        budgets: per-model budgets, shape ``(M,)``.
    """

    def __init__(self, quality: np.ndarray, cost: np.ndarray, budgets: np.ndarray) -> None:
        if quality.shape != cost.shape or quality.ndim != 2 or budgets.shape != (quality.shape[1],):
            raise ValueError(f"quality/cost/budgets: shapes {quality.shape}, {cost.shape}, {budgets.shape} disagree")
        self._quality = quality
        self._cost = cost
        self.budgets = np.asarray(budgets, dtype=float)
        self.spent = np.zeros(quality.shape[1])
        self._requested = np.zeros(quality.shape[1])
        self._value = 0.0
        self._served = self._dropped = self._declined = 0

    def cost_of(self, query: int, model: int) -> float:
        """The true cost of serving ``query`` on ``model``."""
        return float(self._cost[query, model])

    def serve(self, query: int, model: int) -> bool:
        """Serve a decision if the model's budget covers its true cost.

        Args:
            query: row of the stream.
            model: chosen model, or :data:`NO_MODEL`.

        Returns:
            True if served; False if declined or dropped.
        """
        if model == NO_MODEL:
            self._declined += 1
            return False
        price = self.cost_of(query, model)
        self._requested[model] += price
        if self.spent[model] + price > self.budgets[model]:
            self._dropped += 1
            return False
        self.spent[model] += price
        self._value += float(self._quality[query, model])
        self._served += 1
        return True

    def result(self) -> RunResult:
        """What the policy achieved so far."""
        return RunResult(
            quality=self._value, cost=float(self.spent.sum()), served=self._served, dropped=self._dropped,
            declined=self._declined, requested=self._requested.copy(), budgets=self.budgets.copy(),
        )


def evaluate(choices: np.ndarray, quality: np.ndarray, cost: np.ndarray, budgets: np.ndarray) -> RunResult:
    """Serve a whole sequence of decisions made without feedback from the harness.

    Args:
        choices: model index per query (:data:`NO_MODEL` for none), in stream order.
        quality: true quality, shape ``(n, M)``.
        cost: true cost, shape ``(n, M)``.
        budgets: per-model budgets.

    Returns:
        The run's result.
    """
    if len(choices) != len(quality):
        raise ValueError(f"choices: need one per query ({len(quality)}), got {len(choices)}")
    harness = Harness(quality, cost, budgets)
    for query, model in enumerate(choices):
        harness.serve(query, int(model))
    return harness.result()
