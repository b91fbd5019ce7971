"""Each routed group's Prometheus metrics, under its model group's name, and the proxy's ``GET /llm-router/metrics``.

The routers report to prometheus_client's default registry (what LiteLLM's ``/metrics`` serves), which every test of
the process shares: counts are compared before and after. The route runs on an app of its own with the key check
overridden (the ``client`` fixture); a real proxy checks the key in the integration tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from llm_router_litellm import LiteLLMAdapter, ProxyCallback
from llm_router_litellm.proxy import FEEDBACK_PATH, METRICS_PATH
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from router_litellm_support import (
    CHAT,
    MATH,
    key_check,
    model_list,
    proxy_route,
    routed,
    seed_history,
    two_groups,
)

from tests.redis_server import RedisServer


def routed_count(group: str, deployment: str) -> float:
    return REGISTRY.get_sample_value("llm_router_decisions_total", {
        "group": group, "deployment": deployment, "phase": "warmup", "outcome": "routed"}) or 0.0


def scrape(http: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``GET /llm-router/metrics``, as (sample name, sorted labels) → value."""
    response = http.get(METRICS_PATH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def test_each_routed_group_reports_under_its_model_group(client: tuple[TestClient, LiteLLMAdapter]) -> None:
    http, adapter = client
    before = {(g, d): routed_count(g, d) for g in ("chat", "code") for d in ("big", "small", "code-big", "code-small")}
    chosen = [("chat", d) for d in (router_choice(adapter, "chat", MATH), router_choice(adapter, "chat", CHAT))]
    chosen.append(("code", router_choice(adapter, "code", MATH)))
    for key, count in before.items():
        assert routed_count(*key) == count + chosen.count(key)
    samples = scrape(http)
    assert samples[("llm_router_status_up", (("group", "chat"),))] == 1
    assert samples[("llm_router_status_up", (("group", "code"),))] == 1
    assert ("llm_router_status_up", (("group", "other"),)) not in samples  # not routed: no router
    limit = ("llm_router_budget_limit", (("deployment", "code-big"), ("group", "code"), ("unit", "tokens")))
    assert samples[limit] == 20_000
    assert not any(name.startswith("litellm_") for name, _ in samples)  # the router's metrics alone


def router_choice(adapter: LiteLLMAdapter, group: str, text: str) -> str:
    """Route a request; the deployment chosen."""
    router = adapter.router(group)
    assert router is not None
    logged = router.decisions.get(routed(adapter, group, text))
    assert logged is not None
    return logged.deployment


def test_budgets_show_before_a_groups_first_request(make_adapter: Callable[..., LiteLLMAdapter]) -> None:
    budget = 12_345  # this test's: routers of other tests may still report group "chat"
    app = FastAPI()
    ProxyCallback(make_adapter(model_list(small={"token_budget": budget}))).add_routes(app)
    app.dependency_overrides[key_check(app, METRICS_PATH)] = lambda: None
    with TestClient(app) as http:
        samples = scrape(http)
    remaining = ("llm_router_budget_remaining", (("deployment", "small"), ("group", "chat"), ("unit", "tokens")))
    assert samples[remaining] == budget


def test_the_route_is_behind_the_proxys_key_check(make_adapter: Callable[..., LiteLLMAdapter]) -> None:
    app = FastAPI()
    ProxyCallback(make_adapter()).add_routes(app)
    assert proxy_route(app, METRICS_PATH).methods == {"GET"}
    assert key_check(app, METRICS_PATH) is key_check(app, FEEDBACK_PATH)


def test_metrics_can_be_turned_off(settings: dict[str, Any]) -> None:
    adapter = LiteLLMAdapter(two_groups, {**settings, "metrics": False})
    router = adapter.router("chat")
    assert router is not None and router.metrics is None
    on = LiteLLMAdapter(two_groups, settings).router("code")
    assert on is not None and on.metrics is not None and on.metrics.group == "code"


def test_an_unreachable_ledger_still_answers_and_says_so(settings: dict[str, Any], tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        adapter = LiteLLMAdapter(two_groups, {**settings, "ledger": server.url,
                                              "ledger_namespace": f"test-{uuid.uuid4().hex}"})
        seed_history(adapter)
        routed(adapter, "chat", CHAT)
    app = FastAPI()
    ProxyCallback(adapter).add_routes(app)
    app.dependency_overrides[key_check(app, METRICS_PATH)] = lambda: None
    with TestClient(app, raise_server_exceptions=False) as http:
        samples = scrape(http)  # the "code" router cannot even be built (no Redis to connect to): a 200 all the same
    assert samples[("llm_router_status_up", (("group", "chat"),))] == 0
    assert not [labels for name, labels in samples if name == "llm_router_budget_spent" and ("group", "chat") in labels]
