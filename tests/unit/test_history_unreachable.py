"""A history store that goes away mid-traffic: the router keeps routing on what it cached, and says so."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from llm_router_plugin import BudgetExhaustedError, Router
from llm_router_plugin import history as history_module
from llm_router_plugin.estimator import PRIOR_QUALITY
from llm_router_plugin.history import FIELDS, ChromaHistory
from llm_router_plugin.outcome_table import OutcomeTable
from tests.conftest import topic_prompt

RouterFactory = Callable[..., Router]
DEGRADED = "history unreachable: estimated from each model's cached mean"


class _Dead:
    """Stands for a Chroma collection or client whose server went away: every call is refused."""

    def __init__(self, wrapped: Any) -> None:
        self.name = getattr(wrapped, "name", "dead")

    def __getattr__(self, attribute: str) -> Any:
        def refused(*args: Any, **kwargs: Any) -> Any:
            # What chromadb's HttpClient raises when nothing listens on the port any more.
            raise httpx.ConnectError("[Errno 111] Connection refused")

        return refused


def take_store_down(history: ChromaHistory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "_collection", _Dead(history._collection))
    monkeypatch.setattr(history, "_client", _Dead(history._client))


def unreachable_warnings(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_exact_index_keeps_serving_when_the_recheck_cannot_reach_the_store(
    make_router: RouterFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(history_module, "EXACT_RECHECK_S", 0.0)  # every query re-checks the store's size
    router = make_router()
    history = router.history
    profiles = list(router.config.profiles)
    query = router.embedder.embed([topic_prompt("math", 3)])
    before = history.neighbours(query, 5, profiles)
    means = history.profile_means(profiles)
    centres = router.profile_set.centres
    clusters = history.cluster_stats(centres, profiles)
    take_store_down(history, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="llm_router_plugin"):
        for _ in range(3):
            after = history.neighbours(query, 5, profiles)
            assert after.ids == before.ids
            np.testing.assert_array_equal(after.outcomes, before.outcomes)
    assert unreachable_warnings(caplog, "history store unreachable") == 1  # one warning, not one per query
    np.testing.assert_array_equal(history.profile_means(profiles), means)
    np.testing.assert_array_equal(history.cluster_stats(centres, profiles).sums, clusters.sums)


def test_routes_on_cached_means_when_neighbours_cannot_be_read(
    make_router: RouterFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    router = make_router(exact_search_max=0)  # neighbours come from Chroma's own index, on every query
    router.route(topic_prompt("math", 1))
    means = router.history.profile_means(list(router.config.profiles))[:, FIELDS.index("quality")]
    take_store_down(router.history, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="llm_router_plugin"):
        decisions = [router.route(topic_prompt(topic, 2)) for topic in ("math", "code", "math")]
    for decision in decisions:
        assert DEGRADED in decision.reason
        quality = {c.model: c.quality for c in decision.candidates}
        assert quality == pytest.approx(dict(zip(router.config.profiles, means, strict=True)))
    assert unreachable_warnings(caplog, "history unreachable") == 1  # rate-limited, not one per query
    assert router.unknown_models() == []


def test_routes_on_the_priors_when_nothing_is_cached(
    make_router: RouterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = make_router(exact_search_max=0)
    monkeypatch.setattr(router.history, "_table", OutcomeTable(None))  # nothing read yet when the store went away
    take_store_down(router.history, monkeypatch)
    assert router.unknown_models() == []  # nothing known: no model is named unknown, and nothing raises
    decision = router.route(topic_prompt("math", 1))
    assert DEGRADED in decision.reason
    assert {c.quality for c in decision.candidates} == {PRIOR_QUALITY}


def test_budgets_are_still_enforced_while_the_store_is_down(
    make_router: RouterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = make_router(exact_search_max=0, deployments=[
        {"name": "big", "model": "big-model", "token_budget": 10},
        {"name": "small", "model": "small-model", "token_budget": 10},
    ])
    router.history.profile_means(list(router.config.profiles))  # cached before the outage
    take_store_down(router.history, monkeypatch)
    with pytest.raises(BudgetExhaustedError):
        router.route(topic_prompt("math", 1))


def test_record_and_feedback_after_the_store_went_away_settle_the_ledger(
    make_router: RouterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = make_router(exact_search_max=0)
    served = router.route(topic_prompt("math", 1))
    take_store_down(router.history, monkeypatch)
    degraded = router.route(topic_prompt("code", 1))
    assert DEGRADED in degraded.reason
    for decision in (served, degraded):
        settlement = router.record(decision.id, prompt_tokens=10, completion_tokens=90)
        assert settlement is not None and settlement.actual["tokens"] == 100
        logged = router.decisions.get(decision.id)
        assert logged is not None and logged.status == "recorded"
        router.feedback(decision.id, 1.0)  # kept in the decision log; history learns nothing now
    now = router._clock()
    spent = {d.name: router.ledger.usage(d.name, router._window(d, now), now)[0]["tokens"]
             for d in router.config.deployments}
    assert sum(spent.values()) == 200
