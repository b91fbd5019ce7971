"""Each routed call settles its reservation exactly once: usage, latency, errors, budgets, abandoned streams."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Iterator
from typing import Any, cast

import pytest
from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_llm_router import RoutingChatModel, route_info
from langchain_llm_router.testing import WordCountChatModel
from lcr_support import CHAT, MATH, RunSpy, deployment, fakes, join_chunks

from llm_router_plugin import BudgetExhaustedError, Router, estimate_tokens


async def _ainvoke(model: RoutingChatModel, config: RunnableConfig) -> BaseMessage:
    return await model.ainvoke(MATH, config)


async def _astream(model: RoutingChatModel, config: RunnableConfig) -> BaseMessage:
    return join_chunks([chunk async for chunk in model.astream(MATH, config)])


async def _astream_v3(model: RoutingChatModel, config: RunnableConfig) -> BaseMessage:
    return await (await model.astream_events(MATH, config, version="v3"))


CALLS: dict[str, Callable[[RoutingChatModel, RunnableConfig], Any]] = {
    "invoke": lambda model, config: model.invoke(MATH, config),
    "stream": lambda model, config: join_chunks(list(model.stream(MATH, config))),
    "stream_events_v3": lambda model, config: model.stream_events(MATH, config, version="v3").output,
    "ainvoke": _ainvoke,
    "astream": _astream,
    "astream_events_v3": _astream_v3,
}


@pytest.mark.parametrize("name", CALLS)
async def test_usage_is_recorded_exactly_once_per_call(model: RoutingChatModel, router: Router, name: str) -> None:
    counter, spy = UsageMetadataCallbackHandler(), RunSpy()
    result = CALLS[name](model, {"callbacks": [counter, spy]})
    message = await result if asyncio.iscoroutine(result) else result

    usage = message.usage_metadata
    assert usage is not None and usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    # Callback handlers see one model run: no wrapper run counts the usage a second time.
    assert [u["total_tokens"] for u in counter.usage_metadata.values()] == [usage["total_tokens"]]
    big = deployment(router, "big")
    assert big.spent["tokens"] == usage["total_tokens"] and big.reserved["tokens"] == 0
    (decision_id,) = spy.decision_ids
    logged = router.decisions.get(decision_id)
    assert logged is not None and logged.status == "recorded"
    assert (logged.outcome["prompt_tokens"], logged.outcome["completion_tokens"]) == (
        usage["input_tokens"], usage["output_tokens"])
    assert logged.outcome["latency_s"] >= 0 and logged.outcome["error"] is None


def test_streams_record_time_to_first_token_and_invokes_do_not(model: RoutingChatModel, router: Router) -> None:
    streamed, invoked = route_info(next(iter(list(model.stream(CHAT))))), route_info(model.invoke(CHAT))
    assert streamed is not None and invoked is not None

    stream_outcome = router.decisions.get(streamed["decision_id"])
    invoke_outcome = router.decisions.get(invoked["decision_id"])
    assert stream_outcome is not None and invoke_outcome is not None
    assert 0 <= stream_outcome.outcome["ttft_s"] <= stream_outcome.outcome["latency_s"]
    assert invoke_outcome.outcome["ttft_s"] is None


class _Down(WordCountChatModel):
    """A provider that fails before answering."""

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        raise RuntimeError("provider down")

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        raise RuntimeError("provider down")


class _DropsMidStream(WordCountChatModel):
    """A provider whose stream breaks after its first chunk."""

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        yield next(super()._stream(messages, stop, **kwargs))
        raise RuntimeError("connection lost")


async def _aconsume(model: RoutingChatModel) -> None:
    async for _ in model.astream(CHAT):
        pass


@pytest.mark.parametrize("call", [
    lambda model: model.invoke(CHAT),
    lambda model: list(model.stream(CHAT)),
    lambda model: model.ainvoke(CHAT),
    _aconsume,
])
async def test_a_failed_call_releases_its_reservation_and_raises(
    router: Router, call: Callable[[RoutingChatModel], Any]
) -> None:
    spy = RunSpy()
    model = RoutingChatModel(router=router, models={"small": _Down(model_name="small")}, callbacks=[spy])

    with pytest.raises(RuntimeError, match="provider down"):
        result = call(model)
        if asyncio.iscoroutine(result):
            await result

    small = deployment(router, "small")
    assert small.spent["tokens"] == 0 and small.reserved["tokens"] == 0
    logged = router.decisions.get(spy.decision_ids[0])
    assert logged is not None and logged.status == "failed" and "provider down" in logged.outcome["error"]


def test_a_stream_that_breaks_is_charged_the_prompt_and_the_output_so_far(router: Router) -> None:
    model = RoutingChatModel(router=router, models={"small": _DropsMidStream(model_name="small")})
    chunks: list[AIMessageChunk] = []

    with pytest.raises(RuntimeError, match="connection lost"):
        chunks.extend(model.stream(CHAT))

    info = route_info(chunks[0])
    assert info is not None
    small = deployment(router, "small")
    assert small.reserved["tokens"] == 0
    assert small.spent["tokens"] == estimate_tokens(CHAT) + estimate_tokens(str(chunks[0].content))
    logged = router.decisions.get(info["decision_id"])
    assert logged is not None and logged.status == "failed"


def test_a_sync_stream_closed_early_settles_at_once(model: RoutingChatModel, router: Router) -> None:
    stream = cast(Generator[AIMessageChunk, None, None], model.stream(CHAT))
    first = next(stream)
    stream.close()

    info = route_info(first)
    assert info is not None
    logged = router.decisions.get(info["decision_id"])
    assert logged is not None and logged.status == "failed" and logged.outcome["error"] == "abandoned by the caller"
    small = deployment(router, "small")
    assert small.reserved["tokens"] == 0
    assert small.spent["tokens"] == estimate_tokens(CHAT) + estimate_tokens(str(first.content))


async def test_an_async_stream_abandoned_early_still_settles(model: RoutingChatModel, router: Router) -> None:
    stream = model.astream(CHAT)
    first = await anext(stream)
    info = route_info(first)
    assert info is not None
    del stream  # the event loop's async-generator finalizer closes it: nobody calls aclose()

    for _ in range(500):  # wait (bounded) for the loop to run the close
        logged = router.decisions.get(info["decision_id"])
        if logged is not None and logged.status != "open":
            break
        await asyncio.sleep(0.01)

    assert logged is not None and logged.status == "failed" and logged.outcome["error"] == "abandoned by the caller"
    small = deployment(router, "small")
    assert small.reserved["tokens"] == 0
    assert small.spent["tokens"] == estimate_tokens(CHAT) + estimate_tokens(str(first.content))


def test_budgets_are_enforced_until_exhausted(make_router: Callable[..., Router]) -> None:
    router = make_router(deployments=[{"name": "big", "token_budget": 10}, {"name": "small", "token_budget": 100}])
    chain = RoutingChatModel(router=router, models=fakes()) | StrOutputParser()

    # The math query would go to "big", but only "small" can afford anything.
    assert chain.invoke(MATH).startswith("small answers")
    for _ in range(20):
        try:
            chain.invoke(CHAT)
        except BudgetExhaustedError as exc:
            assert "every deployment's budget is exhausted" in str(exc) and "small (" in str(exc)
            break
    else:
        pytest.fail("the budget never ran out")
    small = deployment(router, "small")
    assert 0 < small.spent["tokens"] <= 100 and small.reserved["tokens"] == 0
    assert deployment(router, "big").spent["tokens"] == 0


def test_a_fallback_deployment_answers_when_budgets_are_exhausted(make_router: Callable[..., Router]) -> None:
    router = make_router(deployments=[{"name": "big", "token_budget": 0},
                                      {"name": "small", "token_budget": 0, "fallback": True}])
    message = RoutingChatModel(router=router, models=fakes()).invoke(MATH)

    info = route_info(message)
    assert info is not None and (info["deployment"], info["phase"]) == ("small", "fallback")


def test_with_fallbacks_catches_an_exhausted_budget(make_router: Callable[..., Router]) -> None:
    router = make_router(deployments=[{"name": "big", "token_budget": 0}, {"name": "small", "token_budget": 0}])
    model = RoutingChatModel(router=router, models=fakes())

    with pytest.raises(BudgetExhaustedError):
        model.invoke(MATH)
    backed = model.with_fallbacks([WordCountChatModel(model_name="backup")])
    assert backed.invoke(MATH).content == f"backup answers: {MATH}"
