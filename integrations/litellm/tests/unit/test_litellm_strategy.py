"""The strategy inside a real ``litellm.Router`` whose deployments answer with mock responses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import litellm
import pytest
from llm_router_litellm import RoutingStrategy
from router_litellm_support import (
    CHAT,
    MATH,
    MOCK_COMPLETION_TOKENS,
    MOCK_PROMPT_TOKENS,
    closed,
    deployment,
    eventually,
    messages,
    model_list,
    recorded_outcome,
    spend,
    wait_for,
)

from llm_router_plugin import LedgerUnavailableError

MakeStrategy = Callable[..., RoutingStrategy]


async def test_the_routers_choice_answers_and_its_actual_usage_is_recorded(make_strategy: MakeStrategy) -> None:
    strategy = make_strategy()
    metadata: dict[str, Any] = {}
    response = await strategy.router.acompletion(model="chat", messages=messages(f"{MATH} variant 99"),
                                                 metadata=metadata)
    decision = metadata["llm_router"]
    assert response._hidden_params["model_id"] == decision["deployment"]
    assert decision["phase"] == "warmup" and decision["reason"]
    core = strategy.adapter.router("chat")
    assert core is not None
    assert await eventually(lambda: closed(core, decision["decision_id"])) == "recorded"
    outcome = recorded_outcome(core, decision["decision_id"])
    assert (outcome["prompt_tokens"], outcome["completion_tokens"]) == (MOCK_PROMPT_TOKENS, MOCK_COMPLETION_TOKENS)
    spent, reserved = spend(core, decision["deployment"])
    assert spent["tokens"] == MOCK_PROMPT_TOKENS + MOCK_COMPLETION_TOKENS
    assert reserved["tokens"] == 0


async def test_history_of_each_profile_decides_where_a_query_goes(make_strategy: MakeStrategy) -> None:
    # Profiles come from litellm_params.model without the provider prefix: openai/big-model → big-model.
    strategy = make_strategy()
    served = {}
    for topic, text in (("math", MATH), ("chat", CHAT)):
        response = await strategy.router.acompletion(model="chat", messages=messages(f"{text} variant 42"))
        served[topic] = response._hidden_params["model_id"]
    assert served == {"math": "big", "chat": "small"}


async def test_litellm_computed_cost_is_what_the_ledger_charges(make_strategy: MakeStrategy) -> None:
    # "small" cannot afford anything, so every query goes to "big", whose LiteLLM price is known.
    strategy = make_strategy(model_list(small={"token_budget": 1}))
    ids = []
    for i in range(3):
        metadata: dict[str, Any] = {}
        await strategy.router.acompletion(model="chat", messages=messages(f"{CHAT} {i}"), metadata=metadata)
        ids.append(metadata["llm_router"]["decision_id"])
    core = strategy.adapter.router("chat")
    assert core is not None
    assert await eventually(lambda: all(closed(core, i) == "recorded" for i in ids))
    spent, _ = spend(core, "big")
    assert spent["usd"] == pytest.approx(3 * (MOCK_PROMPT_TOKENS * 1e-5 + MOCK_COMPLETION_TOKENS * 3e-5))


async def test_a_group_without_router_settings_passes_through(make_strategy: MakeStrategy) -> None:
    strategy = make_strategy()
    metadata: dict[str, Any] = {}
    response = await strategy.router.acompletion(model="other", messages=messages("hi"), metadata=metadata)
    assert response._hidden_params["model_id"] == "other"
    assert "llm_router" not in metadata
    assert strategy.adapter.router("other") is None


async def test_calls_without_messages_keep_litellms_selection(make_strategy: MakeStrategy) -> None:
    strategy = make_strategy()
    request: dict[str, Any] = {}
    chosen = await strategy.async_get_available_deployment(model="chat", input=["embed me"], request_kwargs=request)
    assert chosen["model_name"] == "chat"
    assert "llm_router" not in request.get("metadata", {})
    core = strategy.adapter.router("chat")
    assert core is not None and core.status().decisions == 0


async def test_exhausted_budgets_fail_fast_with_429_naming_the_deployments(make_strategy: MakeStrategy) -> None:
    strategy = make_strategy(model_list(big={"token_budget": 1}, small={"token_budget": 1}))
    with pytest.raises(litellm.RateLimitError) as caught:
        await strategy.router.acompletion(model="chat", messages=messages(MATH))
    assert caught.value.status_code == 429
    assert "big" in str(caught.value) and "small" in str(caught.value)


async def test_an_unreachable_ledger_fails_fast_with_503_naming_it(
    make_strategy: MakeStrategy, monkeypatch: pytest.MonkeyPatch
) -> None:
    strategy = make_strategy()
    core = strategy.adapter.router("chat")
    assert core is not None

    def unreachable(*args: Any, **kwargs: Any) -> bool:
        raise LedgerUnavailableError("redis://127.0.0.1:1/0", "Connection refused")

    monkeypatch.setattr(core.ledger, "try_reserve", unreachable)
    with pytest.raises(litellm.ServiceUnavailableError) as caught:
        await strategy.router.acompletion(model="chat", messages=messages(MATH))
    assert caught.value.status_code == 503
    assert caught.value.num_retries == 0
    assert "budget ledger unreachable (redis://127.0.0.1:1/0: Connection refused)" in str(caught.value)
    assert core.status().decisions == 0  # nothing was served, nothing is open


async def test_exhausted_budgets_go_to_the_fallback_deployment(make_strategy: MakeStrategy) -> None:
    strategy = make_strategy(model_list(big={"token_budget": 1}, small={"token_budget": 1, "fallback": True}))
    metadata: dict[str, Any] = {}
    response = await strategy.router.acompletion(model="chat", messages=messages(MATH), metadata=metadata)
    assert response._hidden_params["model_id"] == "small"
    assert metadata["llm_router"]["phase"] == "fallback"


async def test_a_failed_call_releases_its_reservation(make_strategy: MakeStrategy) -> None:
    broken = model_list(small={"token_budget": 1})
    broken[0]["litellm_params"]["mock_response"] = "litellm.InternalServerError"
    strategy = make_strategy(broken)
    metadata: dict[str, Any] = {}
    with pytest.raises(litellm.InternalServerError):
        await strategy.router.acompletion(model="chat", messages=messages(MATH), metadata=metadata)
    core = strategy.adapter.router("chat")
    assert core is not None
    assert await eventually(lambda: closed(core, metadata["llm_router"]["decision_id"])) == "failed"
    spent, reserved = spend(core, "big")
    assert spent["tokens"] == 0 and reserved["tokens"] == 0


async def test_a_retry_settles_the_failed_attempt_and_the_one_that_answered(
    make_strategy: MakeStrategy, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployments = model_list()
    deployments[0]["litellm_params"]["mock_response"] = "litellm.InternalServerError"
    # allowed_fails=0: the failed deployment cools down, so the retry is routed to the other one.
    strategy = make_strategy(deployments, num_retries=1, allowed_fails=0, retry_after=0)
    core = strategy.adapter.router("chat")
    assert core is not None
    made: list[Any] = []
    route = core.route
    monkeypatch.setattr(core, "route", lambda *a, **k: made.append(route(*a, **k)) or made[-1])
    metadata: dict[str, Any] = {}
    response = await strategy.router.acompletion(model="chat", messages=messages(f"{MATH} variant 7"),
                                                 metadata=metadata)
    first, second = made
    assert (first.deployment, second.deployment) == ("big", "small")
    assert response._hidden_params["model_id"] == "small"
    assert await eventually(lambda: closed(core, first.id) and closed(core, second.id))
    assert (closed(core, first.id), closed(core, second.id)) == ("failed", "recorded")
    assert spend(core, "big") == ({"tokens": 0.0, "usd": 0.0}, {"tokens": 0.0, "usd": 0.0})
    assert spend(core, "small")[0]["tokens"] == MOCK_PROMPT_TOKENS + MOCK_COMPLETION_TOKENS


async def test_a_stream_is_recorded_once_at_its_end(make_strategy: MakeStrategy) -> None:
    strategy = make_strategy()
    metadata: dict[str, Any] = {}
    stream = await strategy.router.acompletion(model="chat", messages=messages(CHAT), metadata=metadata, stream=True)
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    decision = metadata["llm_router"]
    assert text == f"answer of {decision['deployment']}"
    core = strategy.adapter.router("chat")
    assert core is not None
    assert await eventually(lambda: closed(core, decision["decision_id"])) == "recorded"
    spent, reserved = spend(core, decision["deployment"])
    assert spent["tokens"] > 0 and reserved["tokens"] == 0


def test_sync_calls_are_routed_and_recorded(make_strategy: MakeStrategy) -> None:
    strategy = make_strategy()
    metadata: dict[str, Any] = {}
    response = strategy.router.completion(model="chat", messages=messages(MATH), metadata=metadata)
    decision = metadata["llm_router"]
    assert response._hidden_params["model_id"] == decision["deployment"]
    core = strategy.adapter.router("chat")
    assert core is not None
    assert wait_for(lambda: closed(core, decision["decision_id"])) == "recorded"


def test_sync_calls_with_exhausted_budgets_fail_with_429(make_strategy: MakeStrategy) -> None:
    strategy = make_strategy(model_list(big={"token_budget": 1}, small={"token_budget": 1}))
    with pytest.raises(litellm.RateLimitError, match="big"):
        strategy.router.completion(model="chat", messages=messages(MATH))


def test_uninstall_restores_litellms_selection(make_strategy: MakeStrategy) -> None:
    strategy = make_strategy([deployment("chat", "only", "openai/only-model", {"token_budget": 1})])
    strategy.uninstall()
    metadata: dict[str, Any] = {}
    response = strategy.router.completion(model="chat", messages=messages(MATH), metadata=metadata)
    assert response._hidden_params["model_id"] == "only"  # the router would have refused: no budget
    assert "llm_router" not in metadata
    assert strategy.logger not in litellm.callbacks
