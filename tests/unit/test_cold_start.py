"""A deployment whose model history knows nothing: a stated prior, a flag in status, and an exploration share."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from llm_router_plugin import Router
from llm_router_plugin.cli import format_status
from tests.conftest import topic_prompt

DEPLOYMENTS = [
    {"name": "big", "model": "big-model", "token_budget": 200_000},
    {"name": "small", "model": "small-model", "token_budget": 200_000},
    {"name": "fresh", "model": "fresh-model", "token_budget": 200_000},
]


def _router(make_router: Callable[..., Router], **overrides: Any) -> Router:
    return make_router(deployments=DEPLOYMENTS, **overrides)


def test_status_flags_a_model_without_history(make_router: Callable[..., Router]) -> None:
    router = _router(make_router)
    snapshot = router.status()
    assert snapshot.unknown_models == ["fresh-model"]
    assert "no history for model fresh-model" in format_status(snapshot)
    assert "llm-router onboard fresh-model" in format_status(snapshot)


def test_a_decision_for_an_unknown_model_says_it_is_the_prior(
    make_router: Callable[..., Router], caplog: pytest.LogCaptureFixture
) -> None:
    router = _router(make_router, exploration=0)
    with caplog.at_level(logging.WARNING, logger="llm_router_plugin"):
        decision = router.route(topic_prompt("chat", 1), deployments=["fresh"])
        router.route(topic_prompt("chat", 2))
    named = [r.getMessage()[:32] for r in caplog.records if r.getMessage().startswith("no history")]
    assert named == ["no history for model fresh-model"]  # once
    assert decision.deployment == "fresh"
    assert "history has no quality for model fresh-model" in decision.reason and "prior 0.5" in decision.reason
    known = router.route(topic_prompt("math", 1), deployments=["big"])
    assert "prior" not in known.reason


def test_every_nth_decision_explores_the_unknown_model_and_is_charged(make_router: Callable[..., Router]) -> None:
    router = _router(make_router, exploration=0.1)
    decisions = [router.route(topic_prompt("math", i % 20)) for i in range(30)]
    explored = [i for i, d in enumerate(decisions) if d.phase == "explore"]
    assert explored == [9, 19, 29]  # every tenth decision
    assert all(decisions[i].deployment == "fresh" and "exploration" in decisions[i].reason for i in explored)
    held = router.status().deployments[2].reserved["tokens"]
    assert held == sum(d.reserved["tokens"] for d in decisions if d.deployment == "fresh")
    assert all(decisions[i].reserved["tokens"] > 0 for i in explored)


def test_no_exploration_once_the_model_has_a_score_or_when_off(make_router: Callable[..., Router]) -> None:
    off = _router(make_router, exploration=0)
    assert all(off.route(topic_prompt("math", i)).phase != "explore" for i in range(20))

    router = _router(make_router, exploration=0.1)
    decision = router.route(topic_prompt("chat", 1), deployments=["fresh"])
    router.record(decision.id, 100, 50, quality=0.9)  # its first scored outcome: the model is known now
    assert router.status().unknown_models == []
    assert all(router.route(topic_prompt("math", i)).phase != "explore" for i in range(20))


def test_an_exploration_hold_lost_to_a_concurrent_request_falls_back_to_normal_selection(
    make_router: Callable[..., Router], monkeypatch: pytest.MonkeyPatch
) -> None:
    router = _router(make_router, exploration=1.0)  # every decision explores
    reserve = router._reserve

    def busy_fresh(decision_id: str, index: int, *args: Any, **kwargs: Any) -> bool:
        # Another request took fresh's budget between the affordability check and the hold.
        return False if router._deployments[index].name == "fresh" else reserve(decision_id, index, *args, **kwargs)

    monkeypatch.setattr(router, "_reserve", busy_fresh)
    decision = router.route(topic_prompt("math", 1))
    assert decision.deployment in {"big", "small"} and decision.phase != "explore"


def test_a_tiny_exploration_share_never_fails_a_route(make_router: Callable[..., Router]) -> None:
    router = _router(make_router, exploration=5e-324)
    assert router.route(topic_prompt("math", 1)).deployment
