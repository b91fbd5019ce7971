"""``create_agent`` (from the ``langchain`` package, when installed) accepts the routing model."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from langchain_llm_router import RoutingChatModel, route_info
from lcr_support import MATH, deployment

from llm_router_plugin import Router

agents = pytest.importorskip("langchain.agents", reason="create_agent needs the langchain package")


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression."""
    return "42"


@pytest.mark.integration
async def test_create_agent_routes_every_model_call(model: RoutingChatModel, router: Router) -> None:
    agent = agents.create_agent(model, tools=[calculator])

    result = await agent.ainvoke({"messages": [("user", MATH)]})

    replies = [m for m in result["messages"] if isinstance(m, AIMessage)]
    assert [bool(m.tool_calls) for m in replies] == [True, False]
    assert any(isinstance(m, ToolMessage) and m.content == "42" for m in result["messages"])
    infos = [route_info(m) for m in replies]
    assert all(info is not None and info["deployment"] == "big" for info in infos)
    assert deployment(router, "big").spent["tokens"] == sum(
        m.usage_metadata["total_tokens"] for m in replies if m.usage_metadata
    )
