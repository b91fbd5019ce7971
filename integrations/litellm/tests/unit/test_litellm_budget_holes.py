"""Paths around the ledger, closed: requests without text, client-written metadata, retried refusals, bad configs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import litellm
import pytest
import yaml
from llm_router_litellm import LiteLLMAdapter, ProxyCallback, RoutingStrategy
from llm_router_litellm.adapter import deployment_config
from router_litellm_support import MATH, closed, deployment, eventually, messages, model_list, spend

MakeAdapter = Callable[..., LiteLLMAdapter]
MakeStrategy = Callable[..., RoutingStrategy]

NO_TEXT = {
    "empty": [{"role": "user", "content": ""}],
    "whitespace": [{"role": "user", "content": "   "}],
    "null": [{"role": "user", "content": None}],
    "image": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}],
    "file": [{"role": "user", "content": [{"type": "file", "file": {"file_data": "data:text/plain;base64,aGk="}}]}],
    "tool call": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]}],
}


def proxy_like(adapter: LiteLLMAdapter, deployments: list[dict[str, Any]], **kwargs: Any) -> litellm.Router:
    litellm.logging_callback_manager.add_litellm_callback(ProxyCallback(adapter))
    return litellm.Router(model_list=deployments, **{"num_retries": 0, **kwargs})


@pytest.mark.parametrize("kind", list(NO_TEXT))
async def test_requests_without_text_are_budgeted_not_passed_through(make_adapter: MakeAdapter, kind: str) -> None:
    deployments = model_list(big={"token_budget": 5_000}, small={"token_budget": 5_000})
    adapter = make_adapter(deployments)
    router = proxy_like(adapter, deployments)
    metadata: dict[str, Any] = {}
    response = await router.acompletion(model="chat", messages=NO_TEXT[kind], metadata=metadata)
    decision = metadata["llm_router"]
    assert response._hidden_params["model_id"] == decision["deployment"]
    core = adapter.router("chat")
    assert core is not None
    assert await eventually(lambda: closed(core, decision["decision_id"])) == "recorded"
    assert spend(core, decision["deployment"])[0]["tokens"] > 0  # charged with its actual usage


@pytest.mark.parametrize("kind", list(NO_TEXT))
async def test_requests_without_text_are_refused_when_budgets_are_spent(make_adapter: MakeAdapter, kind: str) -> None:
    exhausted = model_list(big={"token_budget": 1}, small={"token_budget": 1})
    router = proxy_like(make_adapter(exhausted), exhausted)
    with pytest.raises(litellm.RateLimitError):
        await router.acompletion(model="chat", messages=NO_TEXT[kind])


async def test_an_empty_message_list_is_a_bad_request(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter()
    with pytest.raises(litellm.BadRequestError, match="no messages"):
        adapter.choose("chat", model_list()[:2], [], {})


async def test_a_client_cannot_settle_or_release_another_request(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter()
    router = proxy_like(adapter, model_list())
    victim: dict[str, Any] = {"metadata": {}}
    chosen = adapter.choose("chat", model_list()[:2], messages(MATH), victim)  # in flight: no outcome yet
    assert chosen is not None
    core = adapter.router("chat")
    assert core is not None
    stolen = victim["metadata"]["llm_router"]["decision_id"]  # what the response headers show a client
    forged = {"llm_router": {"request": "guess", "decision_id": stolen, "deployment": chosen["model_info"]["id"],
                             "attempts": [{"group": "chat", "decision_id": stolen, "deployment": "big"}]}}
    data: dict[str, Any] = {"metadata": dict(forged)}
    await ProxyCallback(adapter).async_pre_call_hook(None, None, data, "acompletion")
    assert "llm_router" not in data["metadata"]  # the proxy strips it on the way in
    await router.acompletion(model="chat", messages=messages(MATH), metadata=dict(forged))  # and if it did not
    await eventually(lambda: False, timeout=0.3)  # let LiteLLM's success event run
    assert closed(core, stolen) is None  # the victim's decision is untouched ...
    held = spend(core, chosen["model_info"]["id"])[1]["tokens"]
    assert held > 0  # ... and so is its hold
    adapter.settle({"litellm_params": victim, "standard_logging_object": {
        "model_id": chosen["model_info"]["id"], "prompt_tokens": 7, "completion_tokens": 3}}, success=True)
    assert closed(core, stolen) == "recorded"  # its own outcome settles it


async def test_a_budget_refusal_is_not_retried_or_counted_again(make_adapter: MakeAdapter) -> None:
    exhausted = model_list(big={"token_budget": 1}, small={"token_budget": 1})
    adapter = make_adapter(exhausted)
    router = proxy_like(adapter, exhausted, num_retries=2, retry_after=0)
    core = adapter.router("chat")
    assert core is not None
    for _ in range(3):
        with pytest.raises(litellm.RateLimitError, match="budget"):
            await router.acompletion(model="chat", messages=messages(MATH), num_retries=2)
    assert core.status().decisions == 3  # one declined decision per request, none per retry


def test_max_tokens_caps_the_hold(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter()
    request: dict[str, Any] = {"metadata": {}, "max_tokens": 5}
    chosen = adapter.choose("chat", model_list()[:2], messages(MATH), request)
    assert chosen is not None
    core = adapter.router("chat")
    assert core is not None
    held = spend(core, chosen["model_info"]["id"])[1]["tokens"]
    assert held <= request["metadata"]["llm_router"]["prompt_tokens"] + 5
    with pytest.raises(litellm.BadRequestError, match="max_tokens"):
        adapter.choose("chat", model_list()[:2], messages(MATH), {"max_tokens": -3})


def test_prices_come_from_litellm_when_the_block_names_none() -> None:
    known = deployment_config(deployment("g", "d1", "openai/gpt-4-1106-preview", {"usd_budget": 1.0}))
    assert (known.input_usd_per_mtok, known.output_usd_per_mtok) == pytest.approx((10.0, 30.0))
    custom = deployment_config(deployment("g", "d2", "openai/mine", {"usd_budget": 1.0}, input_cost_per_token=2e-6,
                                          output_cost_per_token=4e-6))
    assert (custom.input_usd_per_mtok, custom.output_usd_per_mtok) == pytest.approx((2.0, 4.0))
    configured = deployment_config(deployment("g", "d3", "openai/gpt-4-1106-preview",
                                              {"usd_budget": 1.0, "input_usd_per_mtok": 1.0}))
    assert configured.input_usd_per_mtok == 1.0


@pytest.mark.parametrize(("deployments", "message"), [
    ([deployment("chat", "a", "openai/x", {"usd_budget": -1})], "usd_budget"),
    ([deployment("chat", "a", "openai/x", {"token_budgett": 5})], "token_budgett"),
    ([deployment("chat", "a", "openai/x", {"token_budget": 5}), deployment("chat", "a", "openai/y", {})],
     "model_info.id"),
    ([deployment("chat", "a", "openai/unpriced-model", {"usd_budget": 1.0})], "no price"),
])
def test_install_validates_every_routed_deployment(settings: dict[str, Any], deployments: list[dict[str, Any]],
                                                   message: str) -> None:
    router = litellm.Router(model_list=[{**d, "litellm_params": dict(d["litellm_params"])} for d in deployments])
    with pytest.raises(ValueError, match=message):
        RoutingStrategy.install(router, settings)


def test_a_proxy_config_is_validated_whole(settings: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "model_list": [deployment("chat", "a", "openai/x", {"usd_budget": float("inf")})],
        "callback_settings": {"llm_router": settings},
    }))
    with pytest.raises(ValueError, match="usd_budget"):
        ProxyCallback().validate_proxy_config(str(path))


async def test_calls_sharing_one_metadata_dict_are_each_charged(make_strategy: MakeStrategy) -> None:
    import asyncio

    from router_litellm_support import MOCK_COMPLETION_TOKENS, MOCK_PROMPT_TOKENS

    strategy = make_strategy()
    shared: dict[str, Any] = {}
    await asyncio.gather(*(strategy.router.acompletion(model="chat", messages=messages(f"{MATH} variant {i}"),
                                                       metadata=shared) for i in range(4)))
    core = strategy.adapter.router("chat")
    assert core is not None

    def charged() -> float:
        return sum(spend(core, name)[0]["tokens"] for name in ("big", "small"))

    assert await eventually(lambda: charged() == 4 * (MOCK_PROMPT_TOKENS + MOCK_COMPLETION_TOKENS))


async def test_a_success_after_the_proxy_gave_up_is_still_charged(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter()
    request: dict[str, Any] = {"metadata": {}}
    chosen = adapter.choose("chat", model_list()[:2], messages(MATH), request)
    assert chosen is not None
    name = chosen["model_info"]["id"]
    await ProxyCallback(adapter).async_post_call_failure_hook(request, RuntimeError("output guardrail"), None)
    core = adapter.router("chat")
    assert core is not None
    assert spend(core, name) == ({"tokens": 0.0, "usd": 0.0}, {"tokens": 0.0, "usd": 0.0})  # released ...
    adapter.settle({"litellm_params": request, "standard_logging_object": {
        "model_id": name, "prompt_tokens": 7, "completion_tokens": 3}}, success=True)
    assert spend(core, name)[0]["tokens"] == 10  # ... but the answer's usage, reported after, is charged


def test_a_success_event_without_a_deployment_charges_rather_than_releases(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter()
    request: dict[str, Any] = {"metadata": {}}
    chosen = adapter.choose("chat", model_list()[:2], messages(MATH), request)
    assert chosen is not None
    adapter.settle({"litellm_params": request, "standard_logging_object": {"prompt_tokens": 7,
                                                                           "completion_tokens": 3}}, success=True)
    core = adapter.router("chat")
    assert core is not None
    assert spend(core, chosen["model_info"]["id"])[0]["tokens"] == 10


def test_n_choices_are_held_n_times_and_bad_n_is_a_bad_request(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter()
    request: dict[str, Any] = {"metadata": {}, "max_tokens": 10, "n": 20}
    chosen = adapter.choose("chat", model_list()[:2], messages(MATH), request)
    assert chosen is not None
    core = adapter.router("chat")
    assert core is not None
    held = spend(core, chosen["model_info"]["id"])[1]["tokens"]
    assert held == request["metadata"]["llm_router"]["prompt_tokens"] + 20 * 10
    with pytest.raises(litellm.BadRequestError, match="n"):
        adapter.choose("chat", model_list()[:2], messages(MATH), {"n": 0})


def test_tool_schemas_count_toward_the_prompt(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter()
    tool = {"type": "function", "function": {"name": "lookup", "description": "look things up " * 50,
                                             "parameters": {"type": "object", "properties": {}}}}
    bare: dict[str, Any] = {"metadata": {}}
    with_tools: dict[str, Any] = {"metadata": {}, "tools": [tool] * 5}
    adapter.choose("chat", model_list()[:2], messages(MATH), bare)
    adapter.choose("chat", model_list()[:2], messages(MATH), with_tools)
    tokens = [r["metadata"]["llm_router"]["prompt_tokens"] for r in (bare, with_tools)]
    assert tokens[1] > tokens[0] + 500
