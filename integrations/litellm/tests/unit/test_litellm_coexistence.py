"""One warning at start naming what of LiteLLM's own routing the router overrides for the groups it routes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import litellm
import pytest
import yaml
from llm_router_litellm import RoutingStrategy
from llm_router_litellm.proxy import ProxyCallback
from router_litellm_support import model_list

MakeStrategy = Callable[..., RoutingStrategy]


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
