"""What routers sharing a budget learn together: the decision count, the LP sample, and the dual weights.

Every router on one ledger (the processes of a host on a SQLite file, every host on a Redis namespace) paces its
budgets by the traffic of all of them and routes by the same dual weights. The weights are solved by one router at a
time, under a lease, on the sample of every router's recent decisions, and published through the ledger's state; the
others read them when a solve is due (or every :data:`RELOAD_S` seconds, for a solve another router ran early: a
window reset, an operator's ``resolve``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from llm_router_plugin.budget import BudgetLedger
from llm_router_plugin.config import is_redis_url, ledger_password
from llm_router_plugin.decisions import DecisionLog, SQLiteLearningStore
from llm_router_plugin.duals import DualSolution

if TYPE_CHECKING:
    from llm_router_plugin.config import RouterConfig

#: Decisions the LP sample keeps (the most recent).
SAMPLE_SIZE = 4000
#: Key of the dual weights in the ledger's state.
STATE_KEY = "duals"
#: Seconds between two reads of the published weights when no solve is due here.
RELOAD_S = 5.0
#: Seconds a solver holds the solve lease at most: a solver that dies mid-solve frees it after this.
SOLVE_LEASE_S = 60.0
_SOLVE = "solve"


class LearningStore(Protocol):
    """The decision count, LP sample and leases of the routers sharing a ledger (SQLite file or Redis namespace)."""

    def add(self, decision_id: str, profile: str, estimates: dict[str, dict[str, float]], created_at: float) -> int:
        """Count a logged decision and add its estimates to the sample; the count, this decision included.

        ``profile`` (the chosen deployment's model; ``""`` for a declined query) lets another router score it.
        """
        ...

    def profile_of(self, decision_id: str) -> str | None:
        """The model profile of a decision any router sharing the store made (``None``: unknown or too old)."""
        ...

    def leave_feedback(self, decision_id: str, quality: float) -> None:
        """Keep a score for the router that made the decision, which may not have recorded it yet."""
        ...

    def feedback_for(self, decision_id: str) -> float | None:
        """A score :meth:`leave_feedback` kept for a decision (``None``: none)."""
        ...

    def count(self) -> int:
        """Decisions made by every router sharing the store."""
        ...

    def first_time(self) -> float | None:
        """Epoch seconds of the first of them (``None`` before it)."""
        ...

    def recent(self, limit: int) -> list[dict[str, dict[str, float]]]:
        """Estimates of the newest ``limit`` decisions, oldest first."""
        ...

    def acquire(self, name: str, owner: str, lease_s: float) -> bool:
        """Take (or renew) a lease unless another owner holds it; whether ``owner`` holds it now."""
        ...

    def release(self, name: str, owner: str) -> None:
        """Give a lease back if ``owner`` holds it."""
        ...


class DualState:
    """The dual weights a router uses: the newest published on its ledger, and when they are due to be re-solved.

    Args:
        ledger: where the weights are published (``get_state``/``set_state`` under :data:`STATE_KEY`).
        store: the shared decision count and the solve lease.
        warmup: decisions before the first solve.
        reload_s: seconds between two reads of the published weights when no solve is due.
        lease_s: the solve lease's duration.
    """

    def __init__(
        self, ledger: BudgetLedger, store: LearningStore, warmup: int, *, reload_s: float = RELOAD_S,
        lease_s: float = SOLVE_LEASE_S,
    ) -> None:
        self._ledger = ledger
        self._store = store
        self._warmup = warmup
        self._reload_s = reload_s
        self._lease_s = lease_s
        self._owner = uuid.uuid4().hex
        self._state: dict[str, Any] = {}
        self._loaded_at = -np.inf
        self.reload()

    def reload(self) -> None:
        """Read the newest published weights."""
        self._state = self._ledger.get_state(STATE_KEY) or {}
        self._loaded_at = time.monotonic()

    @property
    def learned(self) -> bool:
        """Whether weights were ever solved."""
        return "solved_at" in self._state

    @property
    def next_solve_at(self) -> int:
        """The decision count that makes the next solve due."""
        return int(self._state.get("next_solve_at", self._warmup))

    @property
    def lambdas(self) -> dict[str, dict[str, float]]:
        """Deployment → unit → weight (empty before the first solve)."""
        return self._state.get("lambdas") or {}

    @property
    def mu(self) -> float:
        """The quality multiplier (quality-target mode)."""
        return float(self._state.get("mu", 0.0))

    @property
    def notes(self) -> list[str]:
        """What the last solve reported."""
        return list(self._state.get("notes", []))

    def solution(self, budgets: list[tuple[str, str]]) -> DualSolution:
        """The weights of ``budgets`` ((deployment, unit) pairs, in LP order) as a :class:`DualSolution`."""
        lambdas = self.lambdas
        return DualSolution(
            np.array([lambdas.get(name, {}).get(unit, 0.0) for name, unit in budgets], dtype=float),
            mu=self.mu, feasible=bool(self._state.get("feasible", True)),
        )

    def due(self, count: int, window_key: list[int]) -> bool:
        """Whether a solve is due at ``count`` decisions in the windows ``window_key`` (re-reading the published
        weights first when it looks due, or when they were last read :data:`RELOAD_S` ago)."""
        if time.monotonic() - self._loaded_at >= self._reload_s or self._due(count, window_key):
            self.reload()
        return self._due(count, window_key)

    def _due(self, count: int, window_key: list[int]) -> bool:
        reset = self.learned and self._state.get("window_key") != window_key
        return count >= self.next_solve_at or reset

    @contextmanager
    def solving(self, count: Callable[[], int], window_key: list[int]) -> Iterator[bool]:
        """Hold the solve lease while a solve is still due; yields whether the caller should solve.

        The published weights are re-read once the lease is held: the previous holder may just have solved.
        """
        if not self._store.acquire(_SOLVE, self._owner, self._lease_s):
            yield False  # another router is solving: route on the current weights meanwhile
            return
        try:
            self.reload()
            yield self._due(count(), window_key)
        finally:
            self._store.release(_SOLVE, self._owner)

    def publish(self, state: dict[str, Any]) -> None:
        """Use and publish newly solved weights."""
        self._ledger.set_state(STATE_KEY, state)
        self._state = state
        self._loaded_at = time.monotonic()


def open_learning_store(config: RouterConfig, decisions: DecisionLog, *, password: str | None = None
                        ) -> LearningStore:
    """The learning store that goes with the config's ledger: the decision log (SQLite), or the Redis namespace.

    Args:
        config: the router config (``ledger``, ``ledger_namespace``, ``ledger_password_env``).
        decisions: the router's decision log.
        password: the Redis password when it comes from elsewhere than ``ledger_password_env`` (as for
            :func:`~llm_router_plugin.budget.open_ledger`); it overrides that variable.

    Returns:
        The store (a Redis one connects on first use).

    Raises:
        ValueError: the password variable is missing or empty.
    """
    if not is_redis_url(config.ledger):
        return SQLiteLearningStore(decisions)
    from llm_router_plugin.redis_learning import RedisLearningStore  # the redis client is loaded only when used

    if password is None:
        password = ledger_password(config.ledger_password_env)
    return RedisLearningStore(config.ledger, namespace=config.ledger_namespace, password=password,
                              sample_size=SAMPLE_SIZE)
