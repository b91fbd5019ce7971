"""Tools and structured output are bound on the router and applied to whichever child each call goes to."""

from __future__ import annotations

import pytest
from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableBinding
from langchain_core.tools import tool
from langchain_llm_router import RoutingChatModel, route_info
from langchain_llm_router.testing import WordCountChatModel
from lcr_support import CHAT, MATH, deployment, fakes, join_chunks
from pydantic import BaseModel

from llm_router_plugin import Router


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression."""
    return "42"


class Solution(BaseModel):
    """The answer to a question."""

    answer: str
    steps: int


def run_agent(model: RoutingChatModel, question: str) -> list[BaseMessage]:
    """A minimal tool-calling agent loop: call the model, run the tools it asks for, until it answers in text."""
    tools = {calculator.name: calculator}
    bound = model.bind_tools(list(tools.values()))
    messages: list[BaseMessage] = [HumanMessage(question)]
    for _ in range(5):
        reply = bound.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            break
        messages.extend(ToolMessage(tools[c["name"]].invoke(c["args"]), tool_call_id=c["id"]) for c in reply.tool_calls)
    return messages


def test_an_agent_loop_routes_every_turn_and_records_each(model: RoutingChatModel, router: Router) -> None:
    messages = run_agent(model, MATH)

    call, result, final = messages[1:]
    assert isinstance(call, AIMessage) and [c["name"] for c in call.tool_calls] == ["calculator"]
    assert call.tool_calls[0]["args"] == {"expression": MATH}
    assert isinstance(result, ToolMessage) and result.content == "42"
    assert isinstance(final, AIMessage) and final.tool_calls == [] and final.text.endswith("answers: 42")
    decisions = [route_info(call), route_info(final)]
    assert all(d is not None for d in decisions) and len({d["decision_id"] for d in decisions if d}) == 2
    spent = deployment(router, "big").spent["tokens"] + deployment(router, "small").spent["tokens"]
    assert spent == sum(m.usage_metadata["total_tokens"] for m in (call, final) if isinstance(m, AIMessage)
                        and m.usage_metadata)


async def test_bound_tools_reach_the_child_on_the_async_and_streaming_paths(model: RoutingChatModel) -> None:
    bound = model.bind_tools([calculator], tool_choice="calculator")

    invoked = await bound.ainvoke(CHAT)
    streamed = [chunk async for chunk in bound.astream(CHAT)]

    assert [c["name"] for c in invoked.tool_calls] == ["calculator"]
    total = join_chunks(streamed)
    assert [c["name"] for c in total.tool_calls] == ["calculator"]


def test_binding_tools_leaves_the_unbound_model_unchanged(model: RoutingChatModel) -> None:
    bound = model.bind_tools([calculator])

    assert bound.invoke(MATH).tool_calls and not model.invoke(MATH).tool_calls


def test_bound_tools_are_visible_as_call_arguments_of_a_binding(model: RoutingChatModel) -> None:
    # Agent frameworks (e.g. create_agent) look for tools already bound in a RunnableBinding's kwargs.
    bound = model.bind_tools([calculator], tool_choice="calculator")

    assert isinstance(bound, RunnableBinding) and bound.bound is model
    assert bound.kwargs["tools"] == [calculator] and bound.kwargs["tool_choice"] == "calculator"


def test_tools_passed_as_call_arguments_are_bound_on_the_chosen_child(model: RoutingChatModel) -> None:
    reply = model.invoke(MATH, tools=[calculator], tool_choice="calculator")

    assert [c["name"] for c in reply.tool_calls] == ["calculator"]


def test_binding_tools_needs_children_that_support_them(router: Router) -> None:
    model = RoutingChatModel(router=router, models={**fakes(), "small": FakeListChatModel(responses=["hi"])})

    with pytest.raises(ValueError, match=r"models: \['small'\] do not implement bind_tools"):
        model.bind_tools([calculator])
    with pytest.raises(ValueError, match="with_structured_output or bind_tools"):
        model.with_structured_output(Solution)


def test_structured_output_comes_from_the_routed_child_and_is_recorded(model: RoutingChatModel,
                                                                        router: Router) -> None:
    solution = model.with_structured_output(Solution).invoke(MATH)

    assert solution == Solution(answer=MATH, steps=1)
    big = deployment(router, "big")
    assert big.spent["tokens"] > 0 and big.reserved["tokens"] == 0
    assert router.decisions.count() == 1


async def test_structured_output_with_raw_carries_the_decision_and_usage(model: RoutingChatModel) -> None:
    output = await model.with_structured_output(Solution, include_raw=True).ainvoke(CHAT)

    assert isinstance(output, dict) and output["parsed"] == Solution(answer=CHAT, steps=1)
    info = route_info(output["raw"])
    assert info is not None and info["deployment"] == "small"
    assert output["raw"].usage_metadata["output_tokens"] > 0


def test_a_structured_output_that_does_not_parse_raises(router: Router) -> None:
    broken = {"big": WordCountChatModel(tool_args={"answer": "x"}), "small": WordCountChatModel(tool_args={})}
    model = RoutingChatModel(router=router, models=broken)

    with pytest.raises(ValueError, match="steps"):
        model.with_structured_output(Solution).invoke(MATH)
    assert deployment(router, "big").spent["tokens"] > 0  # the call itself succeeded and is charged
