"""Outcomes written to history in batches (``history_batch_s``): one Chroma call for many recorded calls."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from llm_router_plugin import Router, RouterConfig
from llm_router_plugin.history import decode_outcomes
from tests.conftest import topic_prompt

RouterFactory = Callable[..., Router]


def spy_upserts(router: Router, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the size of every history write."""
    sizes: list[int] = []
    upsert = router.history.upsert

    def counted(records: Any) -> None:
        sizes.append(len(records))
        upsert(records)

    monkeypatch.setattr(router.history, "upsert", counted)
    return sizes


def test_outcomes_wait_and_are_written_together(make_router: RouterFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    router = make_router(history_batch_s=0.2, exploration=0)
    before = router.history.count()
    sizes = spy_upserts(router, monkeypatch)
    decisions = [router.route(topic_prompt("chat", i)) for i in range(3)]
    for decision in decisions:
        router.record(decision.id, prompt_tokens=10, completion_tokens=20)
    router.feedback(decisions[1].id, 0.25)  # scored while waiting: written with its score
    assert sizes == [] and router.status().history_pending == 3
    threading.Event().wait(0.3)  # the batch is due
    router.route(topic_prompt("chat", 9))
    assert sizes == [3]
    assert router.history.count() == before + 3 and router.status().history_pending == 0
    got = router.history._collection.get(ids=[decisions[1].id], include=["metadatas"])
    assert decode_outcomes(got["metadatas"][0])[decisions[1].model][0] == 0.25


def test_without_batching_each_outcome_is_written_when_recorded(
    make_router: RouterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = make_router(exploration=0)
    sizes = spy_upserts(router, monkeypatch)
    decision = router.route(topic_prompt("chat", 1))
    router.record(decision.id, prompt_tokens=10, completion_tokens=20)
    assert sizes == [1] and router.status().history_pending == 0


@pytest.mark.parametrize("bad", [-1.0, float("nan"), 61.0, "soon"])
def test_a_bad_batch_delay_is_refused_naming_the_field(bad: Any) -> None:
    with pytest.raises(ValueError, match="history_batch_s"):
        RouterConfig.from_dict({"deployments": [{"name": "a"}], "history_batch_s": bad})


def test_workers_sharing_a_decision_log_flush_it_one_at_a_time(
    make_router: RouterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two workers writing the same batch: twice the Chroma work, and the second write replaces records, which made
    # its process rescan the whole history.
    router = make_router(history_batch_s=0.01, exploration=0)
    sizes = spy_upserts(router, monkeypatch)
    decision = router.route(topic_prompt("chat", 1))
    router.record(decision.id, prompt_tokens=10, completion_tokens=20)
    assert router.decisions.acquire("history-flush", "another-worker", 60.0)  # it is flushing the log
    threading.Event().wait(0.05)
    router.route(topic_prompt("chat", 2))
    assert sizes == [] and router.status().history_pending == 1
    router.decisions.release("history-flush", "another-worker")
    threading.Event().wait(0.05)
    router.route(topic_prompt("chat", 3))
    assert sizes == [1] and router.status().history_pending == 0


def test_an_outcome_the_store_refuses_does_not_hold_back_the_others(
    make_router: RouterFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    router = make_router(history_batch_s=0.01, exploration=0)
    good = router.route(topic_prompt("chat", 1))
    router.record(good.id, prompt_tokens=10, completion_tokens=20)
    # An outcome no history can take (an embedding of another width, from a config changed under a running log).
    router.decisions.add("bad", "small", "small-model", "learned", np.ones(3, dtype=np.float32), None, {})
    router.decisions.close_decision("bad", "recorded", {"prompt_tokens": 1, "completion_tokens": 1, "quality": None,
                                                        "cost_usd": 0.0})
    router.decisions.mark_history_pending("bad")
    before = router.history.count()
    threading.Event().wait(0.05)
    with caplog.at_level(logging.WARNING, logger="llm_router_plugin"):
        router.route(topic_prompt("chat", 2))
    assert router.history.count() == before + 1  # the good one is written
    assert router.status().history_pending == 0  # the refused one is given up, with a warning naming it
    assert "bad" in caplog.text and "not learned" in caplog.text
