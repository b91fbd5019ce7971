"""Test helpers: LiteLLM deployments with mock responses, a small topic history, the proxy's routes, and polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI
from fastapi.routing import APIRoute
from llm_router_litellm import LiteLLMAdapter

from llm_router_plugin import HistoryRecord, ModelOutcome, Router

#: The example proxy config the integration tests run (against the replay upstream).
EXAMPLE_PROXY_CONFIG = Path(__file__).resolve().parents[3] / "examples" / "litellm_proxy" / "config.yaml"
#: Usage LiteLLM reports for every mock response.
MOCK_PROMPT_TOKENS = 10
MOCK_COMPLETION_TOKENS = 20

MATH = "solve the equation integral derivative algebra number proof"
CHAT = "hello tell me a story about your weekend and the weather"


def deployment(
    group: str, deployment_id: str, model: str, router: dict[str, Any] | None = None, **params: Any
) -> dict[str, Any]:
    """One ``model_list`` entry answering with a mock response; ``router`` is its ``model_info.llm_router`` block."""
    info: dict[str, Any] = {"id": deployment_id}
    if router is not None:
        info["llm_router"] = router
    litellm_params = {"model": model, "api_key": "test-key", "mock_response": f"answer of {deployment_id}", **params}
    return {"model_name": group, "litellm_params": litellm_params, "model_info": info}


def model_list(big: dict[str, Any] | None = None, small: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Group "chat" (routed: "big" and "small", token budgets) and group "other" (not routed)."""
    return [
        deployment("chat", "big", "openai/big-model", big or {"token_budget": 20_000},
                   input_cost_per_token=1e-5, output_cost_per_token=3e-5),
        deployment("chat", "small", "openai/small-model", small or {"token_budget": 20_000}),
        deployment("other", "other", "openai/other-model"),
    ]


def two_groups() -> list[dict[str, Any]]:
    """Routed groups "chat" and "code" (each with its own router and decision log), and "other" (not routed)."""
    return [*model_list(), deployment("code", "code-big", "openai/big-model", {"token_budget": 20_000}),
            deployment("code", "code-small", "openai/small-model", {"token_budget": 20_000})]


def seed_history(adapter: LiteLLMAdapter, per_topic: int = 10) -> None:
    """History where big-model is right on math and small-model is not; both are fine at chat."""
    records = []
    for topic, text, (q_big, q_small) in (("math", MATH, (1.0, 0.0)), ("chat", CHAT, (0.8, 0.7))):
        prompts = [f"{text} variant {i}" for i in range(per_topic)]
        for i, vector in enumerate(adapter.embedder.embed(prompts)):
            records.append(HistoryRecord(id=f"{topic}-{i}", embedding=vector, task=topic, outcomes={
                "big-model": ModelOutcome(quality=q_big, prompt_tokens=100, completion_tokens=200),
                "small-model": ModelOutcome(quality=q_small, prompt_tokens=100, completion_tokens=50),
            }))
    adapter.history.upsert(records)


def messages(text: str) -> list[dict[str, str]]:
    """A one-turn chat."""
    return [{"role": "user", "content": text}]


def routed(adapter: LiteLLMAdapter, group: str, text: str) -> str:
    """Route a request of a group; the decision id a client reads from ``x-llm-router-decision-id``."""
    request: dict[str, Any] = {}
    healthy = [d for d in adapter.model_list() if d["model_name"] == group]
    assert adapter.choose(group, healthy, messages(text), request) is not None
    return str(request["metadata"]["llm_router"]["decision_id"])


def example_config(path: Path, upstream: str, settings: dict[str, Any], *, budget_share: float,
                   router_settings: dict[str, Any] | None = None, **deployment_block: Any) -> Path:
    """The example proxy config.yaml against an upstream, written to ``path``, with the tests' changes.

    Args:
        path: where to write it.
        upstream: the upstream's base URL (the replay server).
        settings: merged into ``callback_settings.llm_router`` (a test's data_dir, embedder, warm-up …).
        budget_share: every USD budget is multiplied by it (so that budgets run out within a test).
        router_settings: LiteLLM's ``router_settings`` (e.g. its Redis), if any.
        deployment_block: merged into every routed deployment's ``model_info.llm_router`` block.

    Returns:
        ``path``.
    """
    config = yaml.safe_load(EXAMPLE_PROXY_CONFIG.read_text(encoding="utf-8"))
    for entry in config["model_list"]:
        entry["litellm_params"]["api_base"] = upstream
        block = entry["model_info"].get("llm_router")
        if block:
            block["usd_budget"] *= budget_share
            block.update(deployment_block)
    config["callback_settings"]["llm_router"].update(settings)
    if router_settings is not None:
        config["router_settings"] = router_settings
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def master_key(config: Path) -> str:
    """The master key of a proxy config.yaml."""
    return str(yaml.safe_load(config.read_text(encoding="utf-8"))["general_settings"]["master_key"])


def proxy_route(app: FastAPI, path: str) -> APIRoute:
    """The one route of ``app`` at ``path``."""
    [route] = [r for r in app.routes if isinstance(r, APIRoute) and r.path == path]
    return route


def key_check(app: FastAPI, path: str) -> Callable[..., Any]:
    """The key check the route at ``path`` depends on."""
    [dependency] = proxy_route(app, path).dependant.dependencies
    assert dependency.call is not None
    return dependency.call


def wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll until ``condition()`` is truthy (LiteLLM logs events on a background worker) and return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


async def eventually(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """:func:`wait_for` inside an event loop: LiteLLM's async events need the loop to run meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.02)


def closed(router: Router, decision_id: str) -> str | None:
    """The decision's status once it is no longer open."""
    logged = router.decisions.get(decision_id)
    return None if logged is None or logged.status == "open" else logged.status


def recorded_outcome(router: Router, decision_id: str) -> dict[str, Any]:
    """What ``record`` stored for a decision."""
    logged = router.decisions.get(decision_id)
    assert logged is not None
    return logged.outcome


def spend(router: Router, name: str) -> tuple[dict[str, float], dict[str, float]]:
    """(spent, reserved) of a deployment."""
    row = next(d for d in router.status().deployments if d.name == name)
    return row.spent, row.reserved
