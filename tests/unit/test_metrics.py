"""Prometheus metrics of a router: decisions, refusals, estimate errors and route times as they happen, budgets read
from the ledger at scrape time; each test on a registry of its own."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llm_router_plugin import BudgetExhaustedError, EmptyQueryError, LedgerUnavailableError, Router
from llm_router_plugin.budget import SQLiteLedger
from llm_router_plugin.metrics import RouterMetrics, exposition
from tests.conftest import topic_prompt

RouterFactory = Callable[..., Router]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0 when it is not there."""
    return registry.get_sample_value(name, labels) or 0.0


def decisions(registry: CollectorRegistry, outcome: str, deployment: str, phase: str, group: str = "chat") -> float:
    return sample(registry, "llm_router_decisions_total", group=group, deployment=deployment, phase=phase,
                  outcome=outcome)


def test_a_routed_decision_is_counted_once_routed_and_once_recorded(
    make_router: RouterFactory, registry: CollectorRegistry
) -> None:
    router = make_router(metrics=RouterMetrics("chat", registry))
    decision = router.route(topic_prompt("math", 1))
    assert decisions(registry, "routed", decision.deployment, decision.phase) == 1
    assert decisions(registry, "recorded", decision.deployment, decision.phase) == 0
    router.record(decision.id, prompt_tokens=10, completion_tokens=20)
    router.record(decision.id, prompt_tokens=10, completion_tokens=20)  # a repeat closes nothing: not counted
    assert decisions(registry, "recorded", decision.deployment, decision.phase) == 1
    assert decisions(registry, "failed", decision.deployment, decision.phase) == 0


def test_a_failed_call_is_counted_as_failed(make_router: RouterFactory, registry: CollectorRegistry) -> None:
    router = make_router(metrics=RouterMetrics("chat", registry))
    decision = router.route(topic_prompt("code", 1))
    router.record(decision.id, prompt_tokens=0, completion_tokens=0, error="upstream timed out")
    assert decisions(registry, "failed", decision.deployment, decision.phase) == 1
    assert decisions(registry, "recorded", decision.deployment, decision.phase) == 0


async def test_dry_runs_are_not_counted(make_router: RouterFactory, registry: CollectorRegistry) -> None:
    router = make_router(metrics=RouterMetrics("chat", registry))
    decision = router.route(topic_prompt("math", 1), dry_run=True)
    decision = await router.aroute(topic_prompt("math", 2), dry_run=True)
    assert decisions(registry, "routed", decision.deployment, decision.phase) == 0
    assert sample(registry, "llm_router_route_duration_seconds_count", group="chat") == 0


async def test_async_routes_are_counted(make_router: RouterFactory, registry: CollectorRegistry) -> None:
    router = make_router(metrics=RouterMetrics("chat", registry))
    routed = await asyncio.gather(*(router.aroute(topic_prompt("chat", i)) for i in range(3)))
    for deployment in {d.deployment for d in routed}:
        assert decisions(registry, "routed", deployment, "warmup") == sum(d.deployment == deployment for d in routed)
    assert sample(registry, "llm_router_route_duration_seconds_count", group="chat") == 3


def test_budget_refusals_are_counted_by_reason(make_router: RouterFactory, registry: CollectorRegistry) -> None:
    router = make_router(metrics=RouterMetrics("chat", registry), deployments=[
        {"name": "big", "model": "big-model", "token_budget": 1},
        {"name": "small", "model": "small-model", "token_budget": 1},
    ])
    with pytest.raises(BudgetExhaustedError):
        router.route(topic_prompt("math", 1))
    assert sample(registry, "llm_router_refusals_total", group="chat", reason="budget_exhausted") == 1
    assert decisions(registry, "refused", "", "declined") == 1
    # Refused routes are timed too: a slow refusal is as slow for the caller.
    assert sample(registry, "llm_router_route_duration_seconds_count", group="chat") == 1


def test_invalid_requests_are_counted_by_reason(make_router: RouterFactory, registry: CollectorRegistry) -> None:
    router = make_router(metrics=RouterMetrics("chat", registry))
    with pytest.raises(EmptyQueryError):
        router.route("   ")
    with pytest.raises(ValueError, match="max_tokens"):
        router.route(topic_prompt("math", 1), max_tokens=0)
    assert sample(registry, "llm_router_refusals_total", group="chat", reason="empty_query") == 1
    assert sample(registry, "llm_router_refusals_total", group="chat", reason="invalid_request") == 1
    assert decisions(registry, "refused", "", "declined") == 2


class _UnreachableLedger(SQLiteLedger):
    """A ledger whose server went away: every read of the budgets fails."""

    def usages(self, windows: Any, now: float | None = None) -> Any:
        raise LedgerUnavailableError("redis://127.0.0.1:1/0", "Connection refused")

    def usage(self, deployment: str, window: int, now: float | None = None) -> Any:
        raise LedgerUnavailableError("redis://127.0.0.1:1/0", "Connection refused")


def test_an_unreachable_ledger_is_a_refusal_and_a_scrape_that_says_so(
    make_router: RouterFactory, registry: CollectorRegistry, tmp_path: Path
) -> None:
    router = make_router(metrics=RouterMetrics("chat", registry), ledger=_UnreachableLedger(tmp_path / "l.sqlite3"))
    with pytest.raises(LedgerUnavailableError):
        router.route(topic_prompt("math", 1))
    assert sample(registry, "llm_router_refusals_total", group="chat", reason="ledger_unavailable") == 1
    # The scrape itself succeeds (a proxy's /metrics must not fail with the ledger): the status is marked down.
    generate_latest(registry)
    assert registry.get_sample_value("llm_router_status_up", {"group": "chat"}) == 0
    assert registry.get_sample_value("llm_router_budget_remaining",
                                     {"group": "chat", "deployment": "big", "unit": "tokens"}) is None


def test_budget_gauges_show_what_every_router_on_the_ledger_spent(
    make_router: RouterFactory, registry: CollectorRegistry, tmp_path: Path
) -> None:
    # Kept in a variable: the registry holds routers weakly.
    watched = make_router(metrics=RouterMetrics("chat", registry), data_dir=tmp_path / "shared")
    other = make_router(history=False, data_dir=tmp_path / "shared", metrics=False)  # another process on the ledger
    served = other.route(topic_prompt("math", 1))
    other.record(served.id, prompt_tokens=100, completion_tokens=400)
    held = other.route(topic_prompt("math", 2))  # still open: its hold is live
    assert (served.deployment, held.deployment) == ("big", "big")  # the only one right on math
    labels = {"group": "chat", "deployment": "big"}
    assert registry.get_sample_value("llm_router_status_up", {"group": "chat"}) == 1
    assert registry.get_sample_value("llm_router_budget_limit", {**labels, "unit": "tokens"}) == 20_000
    assert registry.get_sample_value("llm_router_budget_spent", {**labels, "unit": "tokens"}) == 500
    assert registry.get_sample_value("llm_router_budget_reserved", {**labels, "unit": "tokens"}) == held.reserved[
        "tokens"]
    assert registry.get_sample_value("llm_router_budget_remaining", {**labels, "unit": "tokens"}) == (
        20_000 - 500 - held.reserved["tokens"])
    assert registry.get_sample_value("llm_router_reservations_open", labels) == 1
    assert registry.get_sample_value("llm_router_reservations_open", {"group": "chat", "deployment": "small"}) == 0
    # A unit without a limit has no remaining budget to show.
    assert registry.get_sample_value("llm_router_budget_remaining", {**labels, "unit": "usd"}) is None
    del watched


def test_open_reservations_follow_the_routers_own_clock(make_router: RouterFactory, registry: CollectorRegistry
                                                        ) -> None:
    # A replay's router stamps decisions with its own clock, far from the wall clock.
    now = [1_000.0]
    router = make_router(metrics=RouterMetrics("chat", registry), clock=lambda: now[0])
    decision = router.route(topic_prompt("math", 1))
    labels = {"group": "chat", "deployment": decision.deployment}
    assert registry.get_sample_value("llm_router_reservations_open", labels) == 1
    now[0] += router.config.reservation_timeout_s + 1  # the hold has expired: it holds nothing any more
    assert registry.get_sample_value("llm_router_reservations_open", labels) == 0


def test_estimate_ratio_is_the_actual_usage_over_the_decisions_estimate(
    make_router: RouterFactory, registry: CollectorRegistry
) -> None:
    router = make_router(metrics=RouterMetrics("chat", registry))
    decision = router.route(topic_prompt("math", 1), prompt_tokens=100)
    estimate = next(c for c in decision.candidates if c.deployment == decision.deployment).tokens
    used = round(2 * estimate)
    router.record(decision.id, prompt_tokens=100, completion_tokens=used - 100)
    labels = {"group": "chat", "deployment": decision.deployment, "unit": "tokens"}
    assert registry.get_sample_value("llm_router_estimate_ratio_count", labels) == 1
    assert registry.get_sample_value("llm_router_estimate_ratio_sum", labels) == pytest.approx(used / estimate)
    # Neither a price nor a reported cost: the USD charged is the estimate itself, which says nothing of its error.
    assert registry.get_sample_value("llm_router_estimate_ratio_count", {**labels, "unit": "usd"}) is None


def test_a_reported_cost_is_compared_with_the_usd_estimate(
    make_router: RouterFactory, registry: CollectorRegistry
) -> None:
    router = make_router(metrics=RouterMetrics("chat", registry), deployments=[
        {"name": "big", "model": "big-model", "usd_budget": 10, "input_usd_per_mtok": 1, "output_usd_per_mtok": 2},
    ])
    decision = router.route(topic_prompt("math", 1))
    estimate = decision.candidates[0].usd
    router.record(decision.id, prompt_tokens=10, completion_tokens=10, cost_usd=estimate / 2)
    labels = {"group": "chat", "deployment": "big", "unit": "usd"}
    assert registry.get_sample_value("llm_router_estimate_ratio_sum", labels) == pytest.approx(0.5)


def test_routers_of_several_groups_share_a_registry(make_router: RouterFactory, registry: CollectorRegistry,
                                                     tmp_path: Path) -> None:
    chat = make_router(metrics=RouterMetrics("chat", registry), data_dir=tmp_path / "chat")
    code = make_router(metrics=RouterMetrics("code", registry), data_dir=tmp_path / "code")
    chat.route(topic_prompt("math", 1))
    code.route(topic_prompt("math", 2))
    for group in ("chat", "code"):
        assert decisions(registry, "routed", "big", "warmup", group=group) == 1
        assert registry.get_sample_value("llm_router_status_up", {"group": group}) == 1


def test_a_newer_router_of_a_group_replaces_the_older_in_the_gauges(
    make_router: RouterFactory, registry: CollectorRegistry, tmp_path: Path
) -> None:
    older = make_router(metrics=RouterMetrics("chat", registry), data_dir=tmp_path / "old")
    older.record(older.route(topic_prompt("math", 1)).id, prompt_tokens=100, completion_tokens=100)
    make_router(metrics=RouterMetrics("chat", registry), data_dir=tmp_path / "new")
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    spent = [s for s in families["llm_router_budget_spent"].samples
             if s.labels == {"group": "chat", "deployment": "big", "unit": "tokens"}]
    assert [s.value for s in spent] == [0.0]  # one series, the newer router's ledger


def test_a_router_that_is_gone_leaves_the_gauges(make_router: RouterFactory, registry: CollectorRegistry) -> None:
    router = make_router(metrics=RouterMetrics("chat", registry))
    assert registry.get_sample_value("llm_router_status_up", {"group": "chat"}) == 1
    del router
    gc.collect()  # a router's parts refer to each other: freed by the cycle collector
    assert registry.get_sample_value("llm_router_status_up", {"group": "chat"}) is None


def test_broken_metrics_never_fail_a_route_or_a_record(
    make_router: RouterFactory, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = RouterMetrics("chat", registry)
    router = make_router(metrics=metrics)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("broken metric")

    for family in ("decisions", "refusals", "route_seconds", "estimate_ratio"):
        monkeypatch.setattr(getattr(metrics.families, family), "labels", broken)
    monkeypatch.setattr(router, "status", broken)
    decision = router.route(topic_prompt("math", 1))
    assert router.record(decision.id, prompt_tokens=10, completion_tokens=20) is not None
    with pytest.raises(EmptyQueryError):  # the router's own error, not the metric's
        router.route("")
    generate_latest(registry)  # a scrape of a router whose status fails does not fail either


def test_routers_report_to_the_default_registry_unless_turned_off(make_router: RouterFactory) -> None:
    before = sample(REGISTRY, "llm_router_refusals_total", group="default", reason="empty_query")
    on = make_router(history=False)
    assert on.metrics is not None and on.metrics.group == "default"
    with pytest.raises(EmptyQueryError):
        on.route("")
    assert sample(REGISTRY, "llm_router_refusals_total", group="default", reason="empty_query") == before + 1
    assert make_router(history=False, metrics=False).metrics is None


def test_metrics_of_one_registry_register_once(registry: CollectorRegistry) -> None:
    first, second = RouterMetrics("chat", registry), RouterMetrics("chat", registry)
    assert first.families is second.families
    assert RouterMetrics("chat", CollectorRegistry()).families is not first.families


def test_exposition_holds_the_router_metrics_alone(make_router: RouterFactory, registry: CollectorRegistry) -> None:
    Counter("someone_elses", "Not the router's.", registry=registry).inc()
    router = make_router(metrics=RouterMetrics("chat", registry))
    router.route(topic_prompt("math", 1))
    names = {f.name for f in text_string_to_metric_families(exposition(registry).decode())}
    assert {"llm_router_decisions", "llm_router_budget_remaining", "llm_router_route_duration_seconds"} <= names
    assert "someone_elses" not in names
