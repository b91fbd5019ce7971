"""The proxy callback, exercised through a ``litellm.Router`` (the filter hook runs there as in the proxy)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import litellm
import pytest
from llm_router_litellm import LiteLLMAdapter, ProxyCallback
from router_litellm_support import (
    CHAT,
    MATH,
    MOCK_COMPLETION_TOKENS,
    MOCK_PROMPT_TOKENS,
    closed,
    eventually,
    messages,
    model_list,
    spend,
)

MakeAdapter = Callable[..., LiteLLMAdapter]


def proxy_like(adapter: LiteLLMAdapter, deployments: list[dict[str, Any]]) -> litellm.Router:
    """A LiteLLM router with LiteLLM's own selection and the callback registered, as config.yaml does."""
    litellm.logging_callback_manager.add_litellm_callback(ProxyCallback(adapter))
    return litellm.Router(model_list=deployments, num_retries=0)


async def test_the_filter_leaves_only_the_routers_choice_and_outcomes_are_recorded(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter()
    router = proxy_like(adapter, model_list())
    served = {}
    for topic, text in (("math", MATH), ("chat", CHAT)):
        metadata: dict[str, Any] = {}
        response = await router.acompletion(model="chat", messages=messages(f"{text} variant 5"), metadata=metadata)
        assert response._hidden_params["model_id"] == metadata["llm_router"]["deployment"]
        served[topic] = metadata["llm_router"]
    assert {t: d["deployment"] for t, d in served.items()} == {"math": "big", "chat": "small"}
    core = adapter.router("chat")
    assert core is not None
    assert await eventually(lambda: all(closed(core, d["decision_id"]) == "recorded" for d in served.values()))
    for name in ("big", "small"):
        spent, reserved = spend(core, name)
        assert spent["tokens"] == MOCK_PROMPT_TOKENS + MOCK_COMPLETION_TOKENS and reserved["tokens"] == 0


async def test_the_response_headers_show_the_decision(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter()
    router = proxy_like(adapter, model_list())
    request: dict[str, Any] = {"metadata": {}}
    await router.acompletion(model="chat", messages=messages(MATH), metadata=request["metadata"])
    headers = await ProxyCallback(adapter).async_post_call_response_headers_hook(request, None, None)
    decision = request["metadata"]["llm_router"]
    assert headers is not None
    assert headers["x-llm-router-deployment"] == decision["deployment"]
    assert headers["x-llm-router-decision-id"] == decision["decision_id"]
    assert headers["x-llm-router-phase"] == decision["phase"]
    assert unquote(headers["x-llm-router-reason"]) == decision["reason"]
    assert all(value.isascii() for value in headers.values())


async def test_requests_the_router_does_not_route_get_no_headers(make_adapter: MakeAdapter) -> None:
    callback = ProxyCallback(make_adapter())
    assert await callback.async_post_call_response_headers_hook({"metadata": {"user": "x"}}, None, None) is None


async def test_other_groups_calls_without_messages_and_unknown_deployments_pass_untouched(
    make_adapter: MakeAdapter,
) -> None:
    deployments = model_list()
    callback = ProxyCallback(make_adapter(deployments))
    other, chat = [deployments[2]], deployments[:2]
    added_later = [{**deployments[0], "model_info": {"id": "added-later"}}]
    for model, healthy, chat_messages in (("other", other, messages("hi")), ("chat", chat, None),
                                          ("chat", added_later, messages(MATH))):
        request: dict[str, Any] = {}
        assert await callback.async_filter_deployments(model, healthy, chat_messages, request) is healthy
        assert request == {}


async def test_exhausted_budgets_raise_a_429_from_the_filter(make_adapter: MakeAdapter) -> None:
    deployments = model_list(big={"token_budget": 1}, small={"token_budget": 1})
    callback = ProxyCallback(make_adapter(deployments))
    with pytest.raises(litellm.RateLimitError) as caught:
        await callback.async_filter_deployments("chat", deployments[:2], messages(MATH), {})
    assert caught.value.status_code == 429
    assert "big (" in str(caught.value) and "small (" in str(caught.value)


async def test_a_streamed_call_is_recorded_with_the_usage_litellm_reports(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter()
    router = proxy_like(adapter, model_list())
    metadata: dict[str, Any] = {}
    stream = await router.acompletion(model="chat", messages=messages(CHAT), metadata=metadata, stream=True,
                                      stream_options={"include_usage": True})
    usage = [chunk.usage async for chunk in stream if getattr(chunk, "usage", None)][-1]
    decision = metadata["llm_router"]
    core = adapter.router("chat")
    assert core is not None
    assert await eventually(lambda: closed(core, decision["decision_id"])) == "recorded"
    spent, _ = spend(core, decision["deployment"])
    assert spent["tokens"] == usage.prompt_tokens + usage.completion_tokens
