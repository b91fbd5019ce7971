"""Quality feedback through the adapter and the proxy's ``POST /llm-router/feedback`` route (on an app of its own).

The route's authentication is LiteLLM's ``user_api_key_auth``; a real proxy checks it in the integration tests. Here
it is overridden, so that every answer to a bad body can be checked without starting a proxy.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from litellm.proxy._types import ProxyErrorTypes, ProxyException
from litellm.proxy.auth import user_api_key_auth as auth
from litellm.proxy.auth.user_api_key_auth import user_api_key_auth
from llm_router_litellm import LiteLLMAdapter, ProxyCallback
from llm_router_litellm.proxy import FEEDBACK_PATH, _key_check
from router_litellm_support import CHAT, MATH, key_check, proxy_route, routed, two_groups

from llm_router_plugin import UnknownDecisionError

MakeAdapter = Callable[..., LiteLLMAdapter]


def test_feedback_reaches_the_router_of_the_group_that_made_the_decision(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(two_groups())
    chat, code = routed(adapter, "chat", CHAT), routed(adapter, "code", MATH)
    assert adapter.feedback(code, 0.5) == "code"
    assert adapter.feedback(chat, 1.0) == "chat"
    for group, decision_id, quality in (("code", code, 0.5), ("chat", chat, 1.0)):
        router = adapter.router(group)
        assert router is not None
        logged = router.decisions.get(decision_id)
        assert logged is not None and logged.outcome["quality"] == quality
    with pytest.raises(UnknownDecisionError):
        adapter.feedback("not-a-decision", 0.5)


def test_feedback_finds_a_decision_made_before_a_restart(make_adapter: MakeAdapter) -> None:
    decision_id = routed(make_adapter(two_groups()), "code", MATH)
    again = make_adapter(two_groups())  # a restarted proxy: no router is built until a group is asked for
    assert again.feedback(decision_id, 0.0) == "code"


def test_the_route_records_a_score_and_answers_with_it(client: tuple[TestClient, LiteLLMAdapter]) -> None:
    http, adapter = client
    decision_id = routed(adapter, "code", MATH)
    response = http.post(FEEDBACK_PATH, json={"decision_id": decision_id, "quality": 1})
    assert response.status_code == 200
    assert response.json() == {"decision_id": decision_id, "quality": 1.0, "status": "recorded"}
    router = adapter.router("code")
    assert router is not None
    logged = router.decisions.get(decision_id)
    assert logged is not None and logged.outcome["quality"] == 1.0


def test_an_unknown_decision_gets_404(client: tuple[TestClient, LiteLLMAdapter]) -> None:
    http, _ = client
    response = http.post(FEEDBACK_PATH, json={"decision_id": "0" * 32, "quality": 0.5})
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "decision_id"


BAD_BODIES: list[tuple[Any, str]] = [
    ({"quality": 0.5}, "decision_id"),
    ({"decision_id": "", "quality": 0.5}, "decision_id"),
    ({"decision_id": 12, "quality": 0.5}, "decision_id"),
    ({"decision_id": ["a"], "quality": 0.5}, "decision_id"),
    ({"decision_id": "x" * 10_000, "quality": 0.5}, "decision_id"),
    ({"decision_id": "DECISION"}, "quality"),
    ({"decision_id": "DECISION", "quality": None}, "quality"),
    ({"decision_id": "DECISION", "quality": "0.5"}, "quality"),
    ({"decision_id": "DECISION", "quality": True}, "quality"),
    ({"decision_id": "DECISION", "quality": 1.5}, "quality"),
    ({"decision_id": "DECISION", "quality": -0.1}, "quality"),
    ({"decision_id": "DECISION", "quality": {"value": 1}}, "quality"),
    ([{"decision_id": "DECISION", "quality": 0.5}], "body"),
    ("0.5", "body"),
    (None, "body"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_a_bad_body_gets_400_naming_the_field(client: tuple[TestClient, LiteLLMAdapter], body: Any,
                                              field: str) -> None:
    http, adapter = client
    decision_id = routed(adapter, "chat", CHAT)
    if isinstance(body, dict) and body.get("decision_id") == "DECISION":
        body = {**body, "decision_id": decision_id}
    response = http.post(FEEDBACK_PATH, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and error["message"].startswith(f"{field}: ")
    assert len(error["message"]) < 300  # a hostile value is not echoed in full


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe\x00", b"NaN", b"[" * 100_000,
                                 b'{"quality": 1' + b"0" * 5000 + b"}"])
def test_a_body_that_is_not_json_gets_400(client: tuple[TestClient, LiteLLMAdapter], raw: bytes) -> None:
    http, _ = client
    response = http.post(FEEDBACK_PATH, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "body"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400])
def test_a_quality_json_reads_as_not_finite_or_huge_gets_400(client: tuple[TestClient, LiteLLMAdapter],
                                                             literal: str) -> None:
    http, adapter = client
    decision_id = routed(adapter, "chat", CHAT)
    raw = f'{{"decision_id": "{decision_id}", "quality": {literal}}}'.encode()
    response = http.post(FEEDBACK_PATH, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "quality"


def test_a_score_for_a_failed_call_gets_400(client: tuple[TestClient, LiteLLMAdapter]) -> None:
    http, adapter = client
    decision_id = routed(adapter, "chat", CHAT)
    router = adapter.router("chat")
    assert router is not None
    router.record(decision_id, 0, 0, error="upstream 500")
    response = http.post(FEEDBACK_PATH, json={"decision_id": decision_id, "quality": 0.5})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "decision_id"


def test_a_score_before_the_call_is_recorded_is_accepted(client: tuple[TestClient, LiteLLMAdapter]) -> None:
    http, adapter = client
    decision_id = routed(adapter, "chat", CHAT)  # answered, its success event not yet handled
    response = http.post(FEEDBACK_PATH, json={"decision_id": decision_id, "quality": 0.0})
    assert response.status_code == 200
    router = adapter.router("chat")
    assert router is not None
    router.record(decision_id, 10, 20)
    logged = router.decisions.get(decision_id)
    assert logged is not None and logged.status == "recorded" and logged.outcome["quality"] == 0.0


def test_the_route_is_added_once_and_requires_the_proxys_key_check(make_adapter: MakeAdapter) -> None:
    app, adapter = FastAPI(), make_adapter()
    callback = ProxyCallback(adapter)
    callback.add_routes(app)
    callback.add_routes(app)
    ProxyCallback(adapter).add_routes(app)  # e.g. a second instance of the callback: still one route
    assert proxy_route(app, FEEDBACK_PATH).methods == {"POST"}  # one route: proxy_route finds exactly one
    assert inspect.unwrap(key_check(app, FEEDBACK_PATH)) is user_api_key_auth


async def test_a_key_check_that_fails_without_a_clear_refusal_is_a_401(monkeypatch: pytest.MonkeyPatch) -> None:
    async def crashes(request: Request) -> None:
        raise ModuleNotFoundError("No module named 'prisma'")  # what LiteLLM's failure handler hits without prisma

    async def refuses(request: Request) -> None:
        raise ProxyException(message="key not allowed", type="auth_error", param="None", code=403)

    async def cannot_look_up(request: Request) -> None:  # a key that is not the master key, on a proxy without a DB
        raise ProxyException(message="No connected db.", type=ProxyErrorTypes.no_db_connection, param=None, code=400)

    for check, code in ((crashes, "401"), (refuses, "403"), (cannot_look_up, "401")):
        monkeypatch.setattr(auth, "user_api_key_auth", check)
        with pytest.raises(ProxyException) as caught:
            await _key_check()(request=None)
        assert caught.value.code == code
