"""Alongside LiteLLM's own routing and budgets: one warning at start naming what of its routing the router overrides
for the groups it routes, and LiteLLM's budget limiter narrowing a routed group before the router picks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import litellm
import pytest
import yaml
from litellm.router_strategy.budget_limiter import RouterBudgetLimiting
from litellm.types.router import RouterErrors
from llm_router_litellm import LiteLLMAdapter, RoutingStrategy
from llm_router_litellm.proxy import ProxyCallback
from router_litellm_support import MATH, messages, model_list

MakeStrategy = Callable[..., RoutingStrategy]
MakeAdapter = Callable[..., LiteLLMAdapter]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "llm_router_litellm" and r.levelno == logging.WARNING]


def test_install_names_the_routing_strategy_it_overrides(
    make_strategy: MakeStrategy, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="llm_router_litellm"):
        make_strategy(routing_strategy="latency-based-routing")
    assert warnings_of(caplog) == [
        "llm-router routes model group 'chat'; routing_strategy 'latency-based-routing' is not used for it (it "
        "still applies to other groups)"]


def test_install_over_the_default_strategy_says_nothing(
    make_strategy: MakeStrategy, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="llm_router_litellm"):
        make_strategy()
    assert warnings_of(caplog) == []


def test_install_over_another_custom_strategy_and_plugins_says_what_is_replaced(
    settings: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    class Plugin:
        async def run(self, context: Any) -> Any:
            return context

    router = litellm.Router(model_list=model_list(), plugins=[Plugin()])
    previous = RoutingStrategy(router, None)  # type: ignore[arg-type]  # only its methods are installed
    router.set_custom_routing_strategy(previous)
    with caplog.at_level(logging.WARNING, logger="llm_router_litellm"):
        RoutingStrategy.install(router, settings)
    [message] = warnings_of(caplog)
    assert message.startswith("llm-router routes model group 'chat'; ")
    assert "the custom routing strategy set before is replaced for every group" in message
    assert "routing plugins (Router(plugins=...)) do not run for it" in message


def test_a_proxy_config_with_a_routing_strategy_warns_once_at_start(
    settings: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "model_list": model_list(),
        "router_settings": {"routing_strategy": "latency-based-routing"},
        "callback_settings": {"llm_router": settings},
    }), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="llm_router_litellm"):
        ProxyCallback().validate_proxy_config(str(path))
    assert warnings_of(caplog) == [
        "llm-router routes model group 'chat'; router_settings.routing_strategy 'latency-based-routing' is not used "
        "for it (it still applies to other groups)"]


def test_proxy_routing_plugins_are_named_with_what_they_still_do(caplog: pytest.LogCaptureFixture) -> None:
    from llm_router_litellm.adapter import proxy_routing_overrides, warn_routing_overrides

    with caplog.at_level(logging.WARNING, logger="llm_router_litellm"):
        warn_routing_overrides(["chat", "code"], proxy_routing_overrides({"plugins": ["policies.deny_list"]}))
    assert warnings_of(caplog) == [
        "llm-router routes model groups 'chat', 'code'; router_settings.plugins still narrow them after the router's "
        "choice, and a choice they exclude fails the request"]


# ---------------------------------------------------------------------------------- LiteLLM's budget limiter, proxy

#: LiteLLM's deployment budget: a deployment with ``max_budget`` is taken out once its recorded spend reaches it.
LITELLM_BUDGET = {"max_budget": 1e-4, "budget_duration": "1d"}


def limited_model_list(**budgets: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`model_list` with ``litellm_params`` added to the named deployments (e.g. ``big=LITELLM_BUDGET``)."""
    deployments = model_list()
    for entry in deployments:
        entry["litellm_params"].update(budgets.get(entry["model_info"]["id"], {}))
    return deployments


def proxy_like(adapter: LiteLLMAdapter, deployments: list[dict[str, Any]]) -> litellm.Router:
    """As the proxy builds it: the config's callbacks first, then the router, which registers LiteLLM's limiter."""
    litellm.logging_callback_manager.add_litellm_callback(ProxyCallback(adapter))
    router = litellm.Router(model_list=deployments, num_retries=0)
    assert [type(c) for c in litellm.callbacks if isinstance(c, RouterBudgetLimiting)] == [RouterBudgetLimiting]
    return router


async def spend_litellm_budget(router: litellm.Router, deployment_id: str) -> None:
    """Record a spend over the deployment's LiteLLM budget, where LiteLLM's limiter reads it."""
    await router.cache.async_set_cache(key=f"deployment_spend:{deployment_id}:1d", value=1.0)


async def test_in_the_proxy_a_pick_over_its_litellm_budget_goes_to_another_deployment(
    make_adapter: MakeAdapter,
) -> None:
    deployments = limited_model_list(big=LITELLM_BUDGET)
    adapter = make_adapter(deployments)
    router = proxy_like(adapter, deployments)
    within: dict[str, Any] = {}
    response = await router.acompletion(model="chat", messages=messages(f"{MATH} variant 1"), metadata=within)
    assert within["llm_router"]["deployment"] == "big" == response._hidden_params["model_id"]  # the router's pick
    await spend_litellm_budget(router, "big")
    over: dict[str, Any] = {}
    response = await router.acompletion(model="chat", messages=messages(f"{MATH} variant 2"), metadata=over)
    assert over["llm_router"]["deployment"] == "small" == response._hidden_params["model_id"]


async def test_in_the_proxy_the_limiter_refuses_when_no_deployment_is_within_its_litellm_budget(
    make_adapter: MakeAdapter,
) -> None:
    deployments = limited_model_list(big=LITELLM_BUDGET, small=LITELLM_BUDGET)
    adapter = make_adapter(deployments)
    router = proxy_like(adapter, deployments)
    for name in ("big", "small"):
        await spend_litellm_budget(router, name)
    with pytest.raises(ValueError, match=RouterErrors.no_deployments_with_provider_budget_routing.value):
        await router.acompletion(model="chat", messages=messages(MATH))
    core = adapter.router("chat")
    assert core is not None and core.status().decisions == 0  # the stricter wins, before the router decides


async def test_the_limiter_is_not_run_for_groups_the_router_does_not_route(make_adapter: MakeAdapter) -> None:
    deployments = limited_model_list(other=LITELLM_BUDGET)
    adapter = make_adapter(deployments)
    router = proxy_like(adapter, deployments)
    await spend_litellm_budget(router, "other")
    healthy = [deployments[2]]
    assert await ProxyCallback(adapter).async_filter_deployments("other", healthy, messages("hi"), {}) is healthy


async def test_only_litellms_own_limiter_narrows_a_routed_group(make_adapter: MakeAdapter) -> None:
    class VirtualKeyBudgets(RouterBudgetLimiting):  # as the proxy's own subclasses: not the deployment limiter
        def __init__(self) -> None:
            self.calls = 0

        async def async_filter_deployments(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            self.calls += 1
            return []

    other = VirtualKeyBudgets()
    litellm.logging_callback_manager.add_litellm_callback(other)
    deployments = model_list()
    chosen = await ProxyCallback(make_adapter(deployments)).async_filter_deployments(
        "chat", deployments[:2], messages(MATH), {})
    assert [d["model_info"]["id"] for d in chosen] == ["big"] and other.calls == 0
