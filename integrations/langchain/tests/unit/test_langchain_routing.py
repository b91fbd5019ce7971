"""Every LangChain entry point routes each input separately and hands it to the chosen child."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable
from langchain_llm_router import RoutingChatModel, route_info
from langchain_llm_router.testing import WordCountChatModel
from lcr_support import CHAT, MATH, RunSpy, fakes, join_chunks

from llm_router_plugin import Router

PROMPT = ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "{question}")])


@pytest.fixture
def chain(model: RoutingChatModel) -> Runnable[dict[str, str], str]:
    return PROMPT | model | StrOutputParser()


def answer(deployment: str, question: str) -> str:
    """What the fake child of ``deployment`` answers to ``question``."""
    return f"{deployment} answers: {question}"


def test_is_a_chat_model_that_rejects_unknown_or_missing_deployments(router: Router) -> None:
    assert isinstance(RoutingChatModel(router=router, models=fakes()), BaseChatModel)
    with pytest.raises(ValueError, match=r"models: \['medium'\] are not deployments"):
        RoutingChatModel(router=router, models={**fakes(), "medium": WordCountChatModel()})
    with pytest.raises(ValueError, match="models: map at least one deployment"):
        RoutingChatModel(router=router, models={})


def test_invoke_sends_each_topic_to_its_deployment_and_says_why(model: RoutingChatModel, router: Router) -> None:
    math, chat = model.invoke(MATH), model.invoke(CHAT)

    assert (math.content, chat.content) == (answer("big", MATH), answer("small", CHAT))
    info = route_info(math)
    assert info is not None
    logged = router.decisions.get(info["decision_id"])
    assert logged is not None and (logged.deployment, logged.phase) == (info["deployment"], info["phase"]) == (
        "big", "warmup")
    assert "budget-paced greedy" in info["reason"]


async def test_ainvoke_routes_like_invoke(model: RoutingChatModel) -> None:
    math, chat = await model.ainvoke(MATH), await model.ainvoke(CHAT)

    assert (math.content, chat.content) == (answer("big", MATH), answer("small", CHAT))


async def test_a_chain_invokes_the_routed_child_sync_and_async(chain: Runnable[dict[str, str], str]) -> None:
    assert chain.invoke({"question": MATH}) == answer("big", MATH)
    assert await chain.ainvoke({"question": CHAT}) == answer("small", CHAT)


def test_only_the_given_models_are_routed_to(router: Router) -> None:
    model = RoutingChatModel(router=router, models={"small": WordCountChatModel(model_name="small")})

    assert model.invoke(MATH).content == answer("small", MATH)


def test_batch_routes_every_input_separately(chain: Runnable[dict[str, str], str], router: Router) -> None:
    before = router.decisions.count()
    outputs = chain.batch([{"question": MATH}, {"question": CHAT}, {"question": MATH}])

    assert outputs == [answer("big", MATH), answer("small", CHAT), answer("big", MATH)]
    assert router.decisions.count() == before + 3


async def test_abatch_routes_every_input_separately(chain: Runnable[dict[str, str], str], router: Router) -> None:
    outputs = await chain.abatch([{"question": CHAT}, {"question": MATH}])

    assert outputs == [answer("small", CHAT), answer("big", MATH)]
    assert router.decisions.count() == 2


def test_stream_in_a_chain_streams_the_chosen_childs_words(chain: Runnable[dict[str, str], str]) -> None:
    pieces = list(chain.stream({"question": MATH}))

    assert len(pieces) == len(answer("big", MATH).split())
    assert "".join(pieces) == answer("big", MATH)


async def test_astream_in_a_chain_streams_the_chosen_childs_words(chain: Runnable[dict[str, str], str]) -> None:
    pieces = [piece async for piece in chain.astream({"question": CHAT})]

    assert len(pieces) == len(answer("small", CHAT).split())
    assert "".join(pieces) == answer("small", CHAT)


def test_the_first_streamed_chunk_carries_the_decision(model: RoutingChatModel) -> None:
    chunks = list(model.stream(CHAT))

    info = route_info(chunks[0])
    assert info is not None and info["deployment"] == "small"
    assert all(route_info(c) is None for c in chunks[1:])
    total = join_chunks(chunks)
    assert route_info(total) == info


async def test_astream_events_v2_show_one_model_run_with_the_decision(chain: Runnable[dict[str, str], str]) -> None:
    events = [event async for event in chain.astream_events({"question": MATH}, version="v2")]

    starts = [e for e in events if e["event"] == "on_chat_model_start"]
    tokens = [e["data"]["chunk"].content for e in events if e["event"] == "on_chat_model_stream"]
    assert len(starts) == 1  # no wrapper run around the child's
    assert starts[0]["metadata"]["llm_router_deployment"] == "big"
    assert "".join(tokens) == answer("big", MATH)  # each token once
    assert events[-1]["event"] == "on_chain_end" and events[-1]["data"]["output"] == answer("big", MATH)


def test_stream_events_v3_is_routed(model: RoutingChatModel, router: Router) -> None:
    stream = model.stream_events(MATH, version="v3")

    assert "".join(stream.text) == answer("big", MATH)
    assert router.decisions.count() == 1


async def test_astream_events_v3_is_routed(model: RoutingChatModel) -> None:
    stream = await model.astream_events(CHAT, version="v3")

    assert await stream.text == answer("small", CHAT)


@pytest.mark.parametrize("call", [
    lambda model, config: model.invoke(MATH, config),
    lambda model, config: list(model.stream(MATH, config)),
])
def test_child_run_gets_the_callers_and_the_models_config_and_the_decision(
    router: Router, call: Callable[[RoutingChatModel, dict[str, Any]], Any]
) -> None:
    spy, own = RunSpy(), RunSpy()
    model = RoutingChatModel(router=router, models=fakes(), tags=["routed"], metadata={"app": "demo"},
                             callbacks=[own])

    call(model, {"callbacks": [spy], "tags": ["caller"], "metadata": {"user": "u1"}})

    assert len(spy.runs) == len(own.runs) == 1
    tags, metadata = spy.runs[0]
    assert {"caller", "routed"} <= set(tags)
    assert metadata["user"] == "u1" and metadata["app"] == "demo"
    assert metadata["llm_router_deployment"] == "big" and metadata["llm_router_phase"] == "warmup"
    assert router.decisions.get(metadata["llm_router_decision_id"]) is not None


def test_feedback_reaches_the_decision_log(model: RoutingChatModel, router: Router) -> None:
    info = route_info(model.invoke(CHAT))
    assert info is not None

    model.feedback(info["decision_id"], 1.0)

    logged = router.decisions.get(info["decision_id"])
    assert logged is not None and logged.outcome["quality"] == 1.0


async def test_afeedback_reaches_the_decision_log(model: RoutingChatModel, router: Router) -> None:
    info = route_info(await model.ainvoke(CHAT))
    assert info is not None

    await model.afeedback(info["decision_id"], 0.0)

    logged = router.decisions.get(info["decision_id"])
    assert logged is not None and logged.outcome["quality"] == 0.0


def test_tracing_parameters_name_the_router_and_its_deployments(model: RoutingChatModel) -> None:
    params = model._get_ls_params(stop=["\n"], temperature=0.2)

    assert params["ls_provider"] == "llm-router" and params["ls_model_type"] == "chat"
    assert params["ls_model_name"] == "big|small"
    assert params["ls_stop"] == ["\n"] and params["ls_temperature"] == 0.2
    # A per-call model is passed to the chosen child, which then answers with that model.
    assert model._get_ls_params(model="gpt-4o-mini")["ls_model_name"] == "gpt-4o-mini"
