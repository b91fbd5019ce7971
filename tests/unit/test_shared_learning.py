"""Routers on one Redis namespace (proxy workers, proxy hosts) learn as one: decision count, LP sample, weights."""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path

import pytest

from llm_router_plugin import Router, UnknownDecisionError
from llm_router_plugin.decisions import DecisionLog, SQLiteLearningStore
from llm_router_plugin.redis_learning import RedisLearningStore
from llm_router_plugin.testing import free_port
from tests.conftest import topic_prompt
from tests.unit.test_redis_router import redis_router, spent
from tests.unit.test_router import learned_quality

TOPICS = ("math", "code", "chat")
# Once weights are learned, a query may be worth no budget: the fallback serves it, so every route is a decision.
DEPLOYMENTS = [
    {"name": "big", "model": "big-model", "token_budget": 3_000},
    {"name": "small", "model": "small-model", "token_budget": 20_000, "window": "1h", "fallback": True},
]


def weights(router: Router) -> dict[str, dict[str, float]]:
    return {d.name: d.weights for d in router.status().deployments}


def test_routers_on_one_namespace_count_decisions_together(tmp_path: Path, redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    first = redis_router(tmp_path / "first", redis_url, namespace, warmup_queries=1000)
    second = redis_router(tmp_path / "second", redis_url, namespace, warmup_queries=1000)
    for i in range(3):
        first.route(topic_prompt("math", i))
    for i in range(2):
        second.route(topic_prompt("code", i))
    # Budgets are paced by the traffic of every host, not of one.
    assert first.status().decisions == second.status().decisions == 5
    other = redis_router(tmp_path / "other", redis_url, f"{namespace}-other", warmup_queries=1000)
    assert other.status().decisions == 0


def test_one_re_solve_serves_every_router_on_the_namespace(tmp_path: Path, redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    first = redis_router(tmp_path / "first", redis_url, namespace, warmup_queries=8, deployments=DEPLOYMENTS)
    second = redis_router(tmp_path / "second", redis_url, namespace, warmup_queries=8, deployments=DEPLOYMENTS)
    for i in range(4):
        first.route(topic_prompt(TOPICS[i % 3], i))
        second.route(topic_prompt(TOPICS[(i + 1) % 3], i))
    # The eighth decision (second's) completed the shared warm-up: the solve ran on both routers' decisions.
    status = second.status()
    assert status.phase == "learned"
    assert status.next_solve_at == 16
    # The other router uses the weights the solve published, without solving again itself.
    first.route(topic_prompt("chat", 9))
    assert first.status().phase == "learned"
    assert weights(first) == weights(second)
    assert any(w for w in weights(first).values())


def test_the_solve_runs_on_the_decisions_of_every_router(tmp_path: Path, redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    first = redis_router(tmp_path / "first", redis_url, namespace, warmup_queries=1000)
    second = redis_router(tmp_path / "second", redis_url, namespace, warmup_queries=1000)
    for i in range(3):
        first.route(topic_prompt("math", i))
        second.route(topic_prompt("code", i))
    first.resolve()
    assert first.ledger.get_state("duals")["sample_size"] == 6


def test_a_held_lease_defers_the_solve_and_routing_goes_on(tmp_path: Path, redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    router = redis_router(tmp_path / "a", redis_url, namespace, warmup_queries=3, deployments=DEPLOYMENTS)
    # Another process is solving: it holds the lease.
    assert router.learning.acquire("solve", "another-process", 60.0)
    for i in range(4):
        router.route(topic_prompt("math", i))
    assert router.status().phase == "warmup"  # not solved twice at once; routes were still served
    router.learning.release("solve", "another-process")
    router.route(topic_prompt("math", 5))
    assert router.status().phase == "learned"


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> RedisLearningStore | SQLiteLearningStore:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return RedisLearningStore(url, namespace=f"test-{uuid.uuid4().hex}", sample_size=5)
    return SQLiteLearningStore(DecisionLog(tmp_path / "ledger.sqlite3"))


def test_a_lease_has_one_holder_until_it_expires_or_is_released(
    store: RedisLearningStore | SQLiteLearningStore,
) -> None:
    assert store.acquire("solve", "a", 60.0)
    assert store.acquire("solve", "a", 60.0)  # the holder renews it
    assert not store.acquire("solve", "b", 60.0)
    store.release("solve", "b")  # not b's to release
    assert not store.acquire("solve", "b", 60.0)
    store.release("solve", "a")
    assert store.acquire("solve", "b", 0.05)
    threading.Event().wait(0.2)  # the holder died: its lease runs out
    assert store.acquire("solve", "c", 60.0)


def test_a_lease_is_won_by_one_of_many_concurrent_callers(store: RedisLearningStore | SQLiteLearningStore) -> None:
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def contend(owner: str) -> None:
        barrier.wait()
        if store.acquire("solve", owner, 60.0):
            winners.append(owner)

    threads = [threading.Thread(target=contend, args=(f"owner-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1


def test_a_lease_rejects_a_non_positive_duration(store: RedisLearningStore | SQLiteLearningStore) -> None:
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lease_s"):
            store.acquire("solve", "a", bad)


def test_the_redis_sample_keeps_the_newest_estimates_only(redis_url: str) -> None:
    store = RedisLearningStore(redis_url, namespace=f"test-{uuid.uuid4().hex}", sample_size=5)
    for i in range(8):
        assert store.add(f"id{i}", "m", {"d": {"quality": float(i)}}, created_at=100.0 + i) == i + 1
    assert store.count() == 8
    assert store.first_time() == 100.0
    assert [row["d"]["quality"] for row in store.recent(10)] == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert [row["d"]["quality"] for row in store.recent(2)] == [6.0, 7.0]


def test_routes_go_on_when_the_learning_state_cannot_be_read(
    tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    # The budgets' Redis answers; the learning state's does not (nothing listens on its port).
    namespace = f"test-{uuid.uuid4().hex}"
    base = redis_router(tmp_path / "a", redis_url, namespace, warmup_queries=3, deployments=DEPLOYMENTS)
    dead = RedisLearningStore(f"redis://127.0.0.1:{free_port()}/0", namespace=namespace)
    router = Router(base.config, embedder=base.embedder, history=base.history, learning=dead)
    with caplog.at_level(logging.WARNING, logger="llm_router_plugin"):
        decisions = [router.route(topic_prompt("math", i)) for i in range(5)]
    # Served and held in the ledger; the router counted its own decisions and solved on its own when due.
    assert all(router.record(d.id, prompt_tokens=10, completion_tokens=10) is not None for d in decisions)
    assert sum(spent(router, name) for name in ("big", "small")) == 100
    assert "shared learning state unreachable" in caplog.text
    assert len([r for r in caplog.records if "learning state unreachable" in r.getMessage()]) == 1  # rate-limited


def hosts(tmp_path: Path, redis_url: str) -> tuple[Router, Router]:
    """Two routers on one Redis namespace and one history, each with its own data_dir (two proxy hosts)."""
    namespace = f"test-{uuid.uuid4().hex}"
    first = redis_router(tmp_path / "first", redis_url, namespace, deployments=DEPLOYMENTS)
    second = Router(first.config.model_copy(update={"data_dir": tmp_path / "second"}), embedder=first.embedder,
                    history=first.history)
    return first, second


def test_feedback_sent_to_another_host_reaches_the_recorded_outcome(tmp_path: Path, redis_url: str) -> None:
    first, second = hosts(tmp_path, redis_url)
    decision = first.route(topic_prompt("chat", 1))
    first.record(decision.id, prompt_tokens=10, completion_tokens=20)
    assert second.decisions.get(decision.id) is None  # the decision was made on the first host
    assert second.knows(decision.id) and first.knows(decision.id) and not second.knows("0" * 32)
    second.feedback(decision.id, 0.25)
    assert learned_quality(first, decision.id, decision.model) == 0.25


def test_feedback_sent_to_another_host_before_the_record_is_learned_by_the_record(
    tmp_path: Path, redis_url: str,
) -> None:
    first, second = hosts(tmp_path, redis_url)
    decision = first.route(topic_prompt("chat", 2))
    second.feedback(decision.id, 0.75)
    first.record(decision.id, prompt_tokens=10, completion_tokens=20)
    assert learned_quality(first, decision.id, decision.model) == 0.75
    logged = first.decisions.get(decision.id)
    assert logged is not None and logged.outcome["quality"] == 0.75


def test_feedback_for_a_decision_no_host_made_is_unknown(tmp_path: Path, redis_url: str) -> None:
    _, second = hosts(tmp_path, redis_url)
    with pytest.raises(UnknownDecisionError, match="decision_id"):
        second.feedback("0" * 32, 0.5)
    with pytest.raises(ValueError, match="quality"):  # checked before any lookup
        second.feedback("0" * 32, float("nan"))
