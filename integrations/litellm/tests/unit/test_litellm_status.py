"""Every routed group's router status through the adapter and the proxy's ``GET /llm-router/status`` route.

The route runs on an app of its own with the key check overridden (the ``client`` fixture); a real proxy checks the
key in the integration tests.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from litellm.proxy.auth.user_api_key_auth import user_api_key_auth
from llm_router_litellm import LiteLLMAdapter, ProxyCallback
from llm_router_litellm.proxy import FEEDBACK_PATH, STATUS_PATH
from router_litellm_support import CHAT, MATH, key_check, proxy_route, routed, seed_history, two_groups

from llm_router_plugin import RouterStatus
from tests.redis_server import RedisServer


def test_the_status_of_every_routed_group_and_only_those(client: tuple[TestClient, LiteLLMAdapter]) -> None:
    http, adapter = client
    for i in range(6):  # past the warm-up of 5 decisions: the chat group has solved its dual weights
        routed(adapter, "chat", f"{CHAT} {i}")
    routed(adapter, "code", MATH)
    response = http.get(STATUS_PATH)
    assert response.status_code == 200
    groups = response.json()["model_groups"]
    assert list(groups) == ["chat", "code"]  # "other" has no router settings
    for group, status in groups.items():
        router = adapter.router(group)
        assert router is not None
        assert RouterStatus.model_validate(status) == router.status()
    chat, code = (RouterStatus.model_validate(groups[g]) for g in ("chat", "code"))
    assert (chat.phase, chat.decisions, code.phase, code.decisions) == ("learned", 6, "warmup", 1)
    assert [(d.name, set(d.weights)) for d in chat.deployments] == [("big", {"tokens"}), ("small", {"tokens"})]


def test_the_route_is_added_once_behind_the_proxys_key_check(make_adapter: Callable[..., LiteLLMAdapter]) -> None:
    app, adapter = FastAPI(), make_adapter()
    callback = ProxyCallback(adapter)
    callback.add_routes(app)
    callback.add_routes(app)
    ProxyCallback(adapter).add_routes(app)
    assert proxy_route(app, STATUS_PATH).methods == {"GET"}  # one route: proxy_route finds exactly one
    assert inspect.unwrap(key_check(app, STATUS_PATH)) is user_api_key_auth
    assert key_check(app, STATUS_PATH) is key_check(app, FEEDBACK_PATH)  # one check for both routes


def test_an_unreachable_ledger_is_a_503_naming_it(settings: dict[str, Any], tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        adapter = LiteLLMAdapter(two_groups, {**settings, "ledger": server.url,
                                              "ledger_namespace": f"test-{uuid.uuid4().hex}"})
        seed_history(adapter)
        routed(adapter, "chat", CHAT)
    app = FastAPI()
    ProxyCallback(adapter).add_routes(app)
    app.dependency_overrides[key_check(app, STATUS_PATH)] = lambda: None
    with TestClient(app, raise_server_exceptions=False) as http:
        response = http.get(STATUS_PATH)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["param"] == "ledger" and f"{server.host}:{server.port}" in error["message"]
