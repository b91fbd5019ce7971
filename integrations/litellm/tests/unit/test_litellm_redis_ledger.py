"""Budgets of LiteLLM model groups on a Redis ledger: per-group key namespaces.

A real redis-server on 127.0.0.1 (the ``redis_url`` fixture).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from llm_router_litellm import LiteLLMAdapter
from router_litellm_support import CHAT, MATH, routed, seed_history, two_groups


def redis_settings(settings: dict[str, Any], redis_url: str) -> dict[str, Any]:
    """``settings`` with the budgets on ``redis_url``, under a namespace of this test alone."""
    return {**settings, "ledger": redis_url, "ledger_namespace": f"test-{uuid.uuid4().hex}"}


def test_each_routed_group_keeps_its_own_state_on_a_shared_redis(settings: dict[str, Any], redis_url: str) -> None:
    adapter = LiteLLMAdapter(two_groups, redis_settings(settings, redis_url))
    seed_history(adapter)
    for i in range(settings["warmup_queries"] + 1):
        routed(adapter, "chat", f"{CHAT} {i}")
    chat, code = adapter.router("chat"), adapter.router("code")
    assert chat is not None and code is not None
    assert chat.status().phase == "learned"
    assert chat.ledger.get_state("duals") is not None
    # The other group has made no decision: none of the chat group's dual weights is its own.
    assert code.ledger.get_state("duals") is None
    assert code.status().phase == "warmup"
    assert all(d.weights == {} for d in code.status().deployments)


def test_the_same_group_on_two_proxies_shares_its_budgets(
    settings: dict[str, Any], redis_url: str, tmp_path: Path
) -> None:
    shared = redis_settings(settings, redis_url)
    first = LiteLLMAdapter(two_groups, shared)
    second = LiteLLMAdapter(two_groups, {**shared, "data_dir": str(tmp_path / "second-host")})
    seed_history(first)
    decision_id = routed(first, "code", MATH)
    code = first.router("code")
    assert code is not None
    deployment = code.decisions.get(decision_id)
    assert deployment is not None
    code.record(decision_id, 100, 200)
    elsewhere = second.router("code")
    assert elsewhere is not None
    spent = {d.name: d.spent["tokens"] for d in elsewhere.status().deployments}
    assert spent[deployment.deployment] == 300
