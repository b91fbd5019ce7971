"""Prometheus metrics of the router, with ``prometheus_client``.

Two kinds:

- **events**, counted in this process as they happen: decisions routed, refused and closed (recorded or failed) by
  deployment and phase, refusals by reason, how long routes take, and how a recorded call's usage compares with its
  decision's estimate;
- **budgets**, read from each router's :meth:`~llm_router_plugin.Router.status` when the registry is scraped: limit,
  spend, live holds and remaining budget per deployment and unit, open reservations, queued outcomes, and whether the
  status could be read at all. They come from the ledger, so they are right whichever process (or host, on a Redis
  ledger) spent the budget.

Every sample carries a ``group`` label: the LiteLLM model group, or the name given to :class:`RouterMetrics`
(``"default"``). The metric families are registered once per registry and shared by every router reporting to it, so
routers of several groups, or several routers of one group (tests, a rebuilt router), live in one process; the
budgets of a group are the newest router's.

Nothing here may fail a route or a record: an observation that raises is logged and dropped, and a status that cannot
be read is exported as ``llm_router_status_up 0``.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, ParamSpec

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llm_router_plugin.errors import BudgetExhaustedError, EmptyQueryError, LedgerUnavailableError

if TYPE_CHECKING:
    from llm_router_plugin.decisions import LoggedDecision
    from llm_router_plugin.router import Decision, Router

#: The ``group`` label of a router that is not given one (a plain :class:`~llm_router_plugin.Router`).
DEFAULT_GROUP = "default"
#: The ``phase`` label of a refused query (the decision log's name for it).
REFUSED_PHASE = "declined"
#: Route durations span a cached embedding on SQLite (about a millisecond) to a cold model on a remote ledger.
ROUTE_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Actual usage over estimate: 1 is exact; dense around 1, where a well-calibrated router lives.
ESTIMATE_RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0, 10.0)
_log = logging.getLogger("llm_router_plugin")
_P = ParamSpec("_P")


def refusal_reason(error: Exception) -> str:
    """The ``reason`` label of a route that raised ``error``.

    Args:
        error: what the route raised.

    Returns:
        ``"budget_exhausted"`` (no deployment could afford the query), ``"priced_out"`` (some could, but the learned
        price of their budget is above the query's estimated quality), ``"ledger_unavailable"``, ``"empty_query"``,
        ``"invalid_request"`` (an argument the router refused) or ``"error"`` (anything else).
    """
    if isinstance(error, BudgetExhaustedError):
        return "priced_out" if error.priced_out else "budget_exhausted"
    if isinstance(error, LedgerUnavailableError):
        return "ledger_unavailable"
    if isinstance(error, EmptyQueryError):
        return "empty_query"
    if isinstance(error, ValueError):
        return "invalid_request"
    return "error"


def _harmless(observe: Callable[_P, None]) -> Callable[_P, None]:
    """An observation that logs and drops its own errors: metrics must never fail a route or a record."""

    @functools.wraps(observe)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            observe(*args, **kwargs)
        except Exception as exc:
            _log.warning("metrics: %s failed, its sample is dropped: %r", observe.__name__, exc)

    return guarded


class _Gauges:
    """The budget gauges of one scrape."""

    def __init__(self) -> None:
        units = ("group", "deployment", "unit")
        self.up = GaugeMetricFamily("llm_router_status_up", "1 if the router's status (its budget ledger) could be "
                                    "read at this scrape, else 0 (its budget gauges are then absent).",
                                    labels=("group",))
        self.limit = GaugeMetricFamily("llm_router_budget_limit", "Budget per window of a deployment, by unit.",
                                       labels=units)
        self.spent = GaugeMetricFamily("llm_router_budget_spent", "Settled usage of a deployment in its current "
                                       "window, by unit (every process on the ledger).", labels=units)
        self.reserved = GaugeMetricFamily("llm_router_budget_reserved", "Usage held by live reservations of a "
                                          "deployment in its current window, by unit.", labels=units)
        self.remaining = GaugeMetricFamily("llm_router_budget_remaining", "Limit minus spent minus reserved, by "
                                           "limited unit (negative when over budget).", labels=units)
        self.open = GaugeMetricFamily("llm_router_reservations_open", "Decisions of this host's decision log whose "
                                      "outcome is not recorded yet and whose hold has not expired.",
                                      labels=("group", "deployment"))
        self.queued = GaugeMetricFamily("llm_router_outcomes_queued", "Outcomes waiting for a store that could not "
                                        "be reached: queue=history (history writes), queue=ledger (settlements).",
                                        labels=("group", "queue"))

    def families(self) -> list[Metric]:
        return [self.up, self.limit, self.spent, self.reserved, self.remaining, self.open, self.queued]

    def add(self, group: str, router: Router) -> None:
        """Add a router's budgets under its group (or ``up 0`` when its status cannot be read)."""
        try:
            status = router.status()
            open_counts = router.open_decisions()
        except Exception as exc:  # a ledger outage, a closed store: the scrape goes on without this router
            _log.info("metrics: the status of group %s cannot be read: %r", group, exc)
            self.up.add_metric([group], 0)
            return
        self.up.add_metric([group], 1)
        for row in status.deployments:
            for family, amounts in ((self.limit, row.limits), (self.spent, row.spent), (self.reserved, row.reserved),
                                    (self.remaining, row.remaining)):
                for unit, amount in amounts.items():
                    family.add_metric([group, row.name, unit], amount)
            self.open.add_metric([group, row.name], open_counts.get(row.name, 0))
        self.queued.add_metric([group, "history"], status.history_pending)
        self.queued.add_metric([group, "ledger"], status.unsettled)


class _StatusCollector:
    """The budget gauges of the routers watched, read from each router's status at every scrape.

    Routers are held weakly, one per group: a newer router of a group replaces the older (two would export the same
    series twice), and a router that is gone stops being exported.
    """

    def __init__(self) -> None:
        self._routers: dict[str, weakref.ref[Router]] = {}
        self._lock = threading.Lock()

    def watch(self, group: str, router: Router) -> None:
        with self._lock:
            self._routers[group] = weakref.ref(router)

    def describe(self) -> list[Metric]:
        """The families without samples: the registry checks names with them, without reading any status."""
        return _Gauges().families()

    def collect(self) -> list[Metric]:
        with self._lock:
            for group in [g for g, ref in self._routers.items() if ref() is None]:
                del self._routers[group]
            watched = [(group, ref()) for group, ref in self._routers.items()]
        gauges = _Gauges()
        for group, router in watched:
            if router is not None:  # collected since the sweep above
                gauges.add(group, router)
        return gauges.families()


class MetricFamilies:
    """The router's metric families on one registry, shared by every :class:`RouterMetrics` reporting to it.

    Attributes:
        decisions: counter ``llm_router_decisions_total{group, deployment, phase, outcome}``.
        refusals: counter ``llm_router_refusals_total{group, reason}``.
        route_seconds: histogram ``llm_router_route_duration_seconds{group}``.
        estimate_ratio: histogram ``llm_router_estimate_ratio{group, deployment, unit}``.
        status: the collector of the budget gauges.
    """

    def __init__(self) -> None:
        self.decisions = Counter(
            "llm_router_decisions", "Decisions by outcome: routed (a deployment was chosen and its budget held), "
            "refused (no decision; deployment and phase empty/declined), recorded or failed (the call's outcome "
            "closed the decision).", ("group", "deployment", "phase", "outcome"), registry=None)
        self.refusals = Counter("llm_router_refusals", "Routes that returned no decision, by reason.",
                                ("group", "reason"), registry=None)
        self.route_seconds = Histogram("llm_router_route_duration_seconds", "Wall time of a route (embedding, "
                                       "estimate, ledger), refused ones included.", ("group",),
                                       buckets=ROUTE_SECONDS_BUCKETS, registry=None)
        self.estimate_ratio = Histogram(
            "llm_router_estimate_ratio", "A recorded call's actual usage divided by its decision's estimate, by unit "
            "(1 = exact; usd only when the call's cost was reported or priced).", ("group", "deployment", "unit"),
            buckets=ESTIMATE_RATIO_BUCKETS, registry=None)
        self.status = _StatusCollector()

    def collectors(self) -> tuple[Collector, ...]:
        """Every collector of the families, in exposition order."""
        return self.decisions, self.refusals, self.route_seconds, self.estimate_ratio, self.status

    def collect(self) -> Iterator[Metric]:
        """Every family's metrics (what :func:`exposition` renders)."""
        for collector in self.collectors():
            yield from collector.collect()


_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, MetricFamilies] = weakref.WeakKeyDictionary()
_FAMILIES_LOCK = threading.Lock()


def families(registry: CollectorRegistry = REGISTRY) -> MetricFamilies:
    """The router's metric families on a registry, registered there the first time.

    Args:
        registry: the registry (default: prometheus_client's global one, which LiteLLM's ``/metrics`` serves).

    Returns:
        The families every router reporting to ``registry`` shares.

    Raises:
        ValueError: the registry already holds another collector with one of the router's metric names.
    """
    with _FAMILIES_LOCK:
        found = _FAMILIES.get(registry)
        if found is None:
            found = MetricFamilies()
            for collector in found.collectors():
                registry.register(collector)
            _FAMILIES[registry] = found
        return found


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The router's metrics on a registry, alone, in Prometheus' text format (what ``GET /llm-router/metrics`` serves).

    Args:
        registry: the registry the routers report to.

    Returns:
        The text exposition (``prometheus_client.CONTENT_TYPE_LATEST``).
    """
    return generate_latest(families(registry))


class RouterMetrics:
    """Where a router reports its metrics: a registry, and the ``group`` label of its samples.

    Pass one to :class:`~llm_router_plugin.Router` (``metrics=``); with the config's ``metrics: true`` (the default)
    a router without one reports to the default registry as group ``"default"``.

    Args:
        group: the ``group`` label (the LiteLLM model group; name each router of a process differently).
        registry: the registry to report to (default: prometheus_client's global one).

    Attributes:
        group: the ``group`` label.
        families: the metric families on the registry.

    Raises:
        ValueError: the registry already holds another collector with one of the router's metric names.

    Example:
        >>> metrics = RouterMetrics("chat")  # doctest: +SKIP
        >>> router = Router.from_config("router.yaml", metrics=metrics)  # doctest: +SKIP
        >>> prometheus_client.start_http_server(9100, addr="127.0.0.1")  # doctest: +SKIP
    """

    def __init__(self, group: str = DEFAULT_GROUP, registry: CollectorRegistry = REGISTRY) -> None:
        self.group = group
        self.families = families(registry)

    def watch(self, router: Router) -> None:
        """Export a router's budgets under this group at every scrape, instead of an earlier router of the group.

        Args:
            router: the router (held weakly: a router that is gone stops being exported).
        """
        self.families.status.watch(self.group, router)

    @contextmanager
    def routing(self) -> Iterator[Callable[[Decision], Decision]]:
        """Time a route and count its decision, or its refusal if the block raises.

        ::

            with metrics.routing() as routed:
                return routed(decide())

        Yields:
            A function that counts a decision and returns it.
        """
        started = time.perf_counter()
        try:
            yield self._routed
        except Exception as exc:  # the route's own error goes on to the caller; BaseException is no refusal
            self._refused(exc, time.perf_counter() - started)
            raise
        self._timed(time.perf_counter() - started)

    def _routed(self, decision: Decision) -> Decision:
        self._count_routed(decision)
        return decision

    @_harmless
    def _count_routed(self, decision: Decision) -> None:
        self.families.decisions.labels(self.group, decision.deployment, decision.phase, "routed").inc()

    @_harmless
    def _refused(self, error: Exception, seconds: float) -> None:
        self.families.decisions.labels(self.group, "", REFUSED_PHASE, "refused").inc()
        self.families.refusals.labels(self.group, refusal_reason(error)).inc()
        self._timed(seconds)

    @_harmless
    def _timed(self, seconds: float) -> None:
        self.families.route_seconds.labels(self.group).observe(seconds)

    @_harmless
    def closed(self, logged: LoggedDecision, status: str, actual: Mapping[str, float]) -> None:
        """Count a decision its outcome closed and, for a recorded call, compare its usage with the estimate.

        Args:
            logged: the decision as logged when it was routed (deployment, phase, estimates).
            status: ``"recorded"`` or ``"failed"``.
            actual: unit → the call's measured usage (a unit that was not measured is absent).
        """
        self.families.decisions.labels(self.group, logged.deployment, logged.phase, status).inc()
        if status != "recorded":
            return
        estimates = logged.estimates.get(logged.deployment, {})
        for unit, amount in actual.items():
            estimate = estimates.get(unit, 0.0)
            if estimate > 0 and math.isfinite(amount):  # no estimate, no ratio (an unpriced deployment's usd)
                self.families.estimate_ratio.labels(self.group, logged.deployment, unit).observe(amount / estimate)


#: What a route without metrics runs in: the decision passes through.
_UNOBSERVED: AbstractContextManager[Callable[[Any], Any]] = nullcontext(lambda decision: decision)


def observing(metrics: RouterMetrics | None) -> AbstractContextManager[Callable[[Decision], Decision]]:
    """:meth:`RouterMetrics.routing`, or a block that observes nothing when ``metrics`` is ``None``.

    Args:
        metrics: the router's metrics, if any.

    Returns:
        The context manager; it yields a function that counts a decision and returns it.
    """
    return _UNOBSERVED if metrics is None else metrics.routing()
