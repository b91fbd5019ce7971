"""A Redis ledger with a local fallback: served per host at a share of the budget while Redis is down, and every
settlement made meanwhile reaches Redis once it is back (nothing lost, nothing doubled).

Redis goes away for real: a private redis-server is stopped by its PID and started again on the same port and folder.
It keeps its data in an append-only file written on every command, so what it held before the outage is still there
after it (as a production server with persistence would); a server that lost its data is a different failure.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from llm_router_plugin import LedgerUnavailableError, RouterConfig
from llm_router_plugin.budget import Reservation, open_ledger
from llm_router_plugin.failover_ledger import FailoverLedger, FallbackLedger
from llm_router_plugin.redis_ledger import RedisLedger
from tests.conftest import topic_prompt
from tests.redis_server import redis_server
from tests.unit.test_redis_router import redis_router, spent

LIMITS = {"tokens": 1000.0}
DEPLOYMENTS = [
    {"name": "big", "model": "big-model", "token_budget": 50_000},
    {"name": "small", "model": "small-model", "token_budget": 50_000},
]


def hold(decision_id: str, tokens: float, expires_at: float = 1e12) -> Reservation:
    return Reservation(decision_id, "big", 0, {"tokens": tokens, "usd": 0.0}, LIMITS, expires_at)


def used(tokens: float) -> dict[str, float]:
    return {"tokens": tokens, "usd": 0.0}


def failover(url: str, namespace: str, path: Path, share: float = 1.0) -> FailoverLedger:
    """A failover ledger that looks for Redis on every call (no pause between probes)."""
    return FailoverLedger(
        lambda: RedisLedger(url, namespace=namespace), FallbackLedger(path), namespace=namespace, share=share,
        probe_interval_s=0.0,
    )


def redis_usage(url: str, namespace: str) -> tuple[dict[str, float], dict[str, float]]:
    """What Redis itself holds for deployment big, window 0 (read by a ledger of its own)."""
    with closing(redis.Redis.from_url(url, decode_responses=True)) as client:
        return RedisLedger(client, namespace=namespace).usage("big", 0)


@contextmanager
def restarted(folder: Path, url: str) -> Iterator[str]:
    """The stopped server started again on its port and folder, with the data it had."""
    with redis_server(folder, port=urlsplit(url).port, persist=True) as again:
        yield again


def test_an_outage_is_served_at_a_share_and_every_settlement_reaches_redis_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    namespace, folder = f"test-{uuid.uuid4().hex}", tmp_path / "redis"
    fallback = tmp_path / "router" / "ledger-fallback.sqlite3"
    with redis_server(folder, persist=True) as url:
        ledger = failover(url, namespace, fallback, share=0.5)
        assert ledger.try_reserve(hold("on-redis", 100))
        assert ledger.try_reserve(hold("settled-on-redis", 200))
        assert ledger.settle("settled-on-redis", used(150)) is not None
        assert ledger.usage("big", 0) == ({"tokens": 150.0, "usd": 0.0}, {"tokens": 100.0, "usd": 0.0})
    # Redis is stopped. 250 was spent or held there: this host may take half of the 750 left.
    caplog.set_level(logging.INFO, logger="llm_router_plugin")
    assert ledger.settle("on-redis", used(80)) is None  # queued: the hold lives in Redis
    assert ledger.try_reserve(hold("local", 300))
    assert not ledger.try_reserve(hold("beyond-the-share", 100))  # 300 + 100 > 375
    now = time.time()
    # A hold whose outcome never comes: it times out locally and is charged, in Redis too.
    assert ledger.try_reserve(hold("lost", 50, expires_at=now - 50), now=now - 100)
    settlement = ledger.settle("local", used(250))
    assert settlement is not None and settlement.reserved["tokens"] == 300
    assert ledger.usage("big", 0) == ({"tokens": 150.0 + 250 + 50, "usd": 0.0}, {"tokens": 100.0, "usd": 0.0})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "per host" in warnings[0] and "50%" in warnings[0]
    # The queue as a drain interrupted before it removed anything finds it (a consistent copy: WAL included).
    interrupted = tmp_path / "copy.sqlite3"
    with closing(sqlite3.connect(fallback)) as source, closing(sqlite3.connect(interrupted)) as copy:
        source.backup(copy)

    with restarted(folder, url):
        spend, held = ledger.usage("big", 0)  # Redis is back: the queue is replayed first
        assert (spend["tokens"], held["tokens"]) == (150 + 80 + 250 + 50, 0)
        assert redis_usage(url, namespace) == (spend, held)
        assert any("replayed 2 queued settlements and 2 holds" in r.getMessage() for r in caplog.records
                   if r.levelno == logging.INFO)
        # The same queue replayed a second time (by another process, or after an interruption) changes nothing.
        again = failover(url, namespace, interrupted)
        assert again.usage("big", 0) == (spend, held)
        assert redis_usage(url, namespace) == (spend, held)
        # Back on Redis, the whole budget is shared again.
        assert ledger.try_reserve(hold("after", 1000 - 530))
        assert ledger.usage("big", 0)[1]["tokens"] == 470
    # Redis is down again: what was replayed counts once, in its last figures, and not a second time locally.
    assert ledger.usage("big", 0) == ({"tokens": 530.0, "usd": 0.0}, {"tokens": 470.0, "usd": 0.0})
    assert not ledger.try_reserve(hold("nothing-left", 1))


def test_a_release_during_the_outage_reaches_redis(tmp_path: Path) -> None:
    namespace, folder = f"test-{uuid.uuid4().hex}", tmp_path / "redis"
    with redis_server(folder, persist=True) as url:
        ledger = failover(url, namespace, tmp_path / "fallback.sqlite3")
        assert ledger.try_reserve(hold("failed-on-redis", 400))
    ledger.release("failed-on-redis")
    assert ledger.try_reserve(hold("failed-locally", 100))
    ledger.release("failed-locally")
    with restarted(folder, url):
        ledger.usage("big", 0)
        assert redis_usage(url, namespace) == ({"tokens": 0.0, "usd": 0.0}, {"tokens": 0.0, "usd": 0.0})


def test_a_deployment_without_limits_is_served_during_the_outage(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        ledger = failover(url, f"test-{uuid.uuid4().hex}", tmp_path / "fallback.sqlite3", share=0.1)
    free = Reservation("d1", "free", 0, used(10_000), {}, 1e12)
    assert ledger.try_reserve(free)


def test_a_router_starts_during_an_outage_on_the_anchor_it_saw_last(tmp_path: Path) -> None:
    namespace, folder = f"test-{uuid.uuid4().hex}", tmp_path / "redis"
    fallback = tmp_path / "fallback.sqlite3"
    with redis_server(folder, persist=True) as url:
        anchor = failover(url, namespace, fallback).anchor
    # Down at start: windows are counted from the anchor Redis had (it never changes while Redis keeps its data).
    ledger = failover(url, namespace, fallback, share=0.5)
    assert ledger.anchor == anchor
    assert ledger.try_reserve(hold("local", 500))
    assert not ledger.try_reserve(hold("beyond-the-share", 1))  # never read from Redis: half of the full limit
    with restarted(folder, url):
        assert ledger.anchor == anchor
        ledger.usage("big", 0)
        assert redis_usage(url, namespace)[1]["tokens"] == 500
    # Another namespace has no anchor here: without its server, the start fails as without the fallback.
    with pytest.raises(redis.ConnectionError):
        failover(url, f"{namespace}-other", fallback)


def test_spend_queued_for_one_namespace_is_never_replayed_into_another(tmp_path: Path) -> None:
    namespace, fallback = f"test-{uuid.uuid4().hex}", tmp_path / "fallback.sqlite3"
    with redis_server(tmp_path / "redis") as url:
        ledger = failover(url, namespace, fallback)
    assert ledger.try_reserve(hold("local", 10))  # queued for this namespace
    with pytest.raises(ValueError, match=f"ledger_namespace: .*still queues spend for namespace '{namespace}'"):
        failover(url, f"{namespace}-other", fallback)


def test_the_fallback_options_are_checked_and_name_their_field(tmp_path: Path) -> None:
    base: dict[str, Any] = {"data_dir": str(tmp_path), "deployments": [{"name": "d"}], "ledger": "redis://h:1/0"}
    assert RouterConfig.from_dict(base).ledger_fallback == "none"
    assert RouterConfig.from_dict({**base, "ledger_fallback": "local"}).ledger_fallback_share == 1.0
    for bad in (float("nan"), -0.5, 0, 1.5):
        with pytest.raises(ValueError, match="ledger_fallback_share"):
            RouterConfig.from_dict({**base, "ledger_fallback": "local", "ledger_fallback_share": bad})
    with pytest.raises(ValueError, match="ledger_fallback_share"):
        RouterConfig.from_dict({**base, "ledger_fallback_share": 0.5})  # no fallback to share
    with pytest.raises(ValueError, match="ledger_fallback"):
        RouterConfig.from_dict({**base, "ledger_fallback": "remote"})
    for option in ({"ledger_fallback": "local"}, {"ledger_fallback_share": 0.5}):
        with pytest.raises(ValueError, match=f"{next(iter(option))}: .*Redis ledger"):
            RouterConfig.from_dict({**base, "ledger": "sqlite", **option})


def test_open_ledger_wraps_redis_in_the_failover_with_the_option(tmp_path: Path, redis_url: str) -> None:
    config = RouterConfig.from_dict({
        "data_dir": str(tmp_path), "deployments": [{"name": "d"}], "ledger": redis_url,
        "ledger_namespace": f"test-{uuid.uuid4().hex}", "ledger_fallback": "local", "ledger_fallback_share": 0.25,
    })
    ledger = open_ledger(config)
    assert isinstance(ledger, FailoverLedger) and ledger.share == 0.25
    assert (tmp_path / "ledger-fallback.sqlite3").exists()


def test_a_router_with_the_fallback_keeps_routing_while_redis_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    namespace, folder = f"test-{uuid.uuid4().hex}", tmp_path / "redis"
    with redis_server(folder, persist=True) as url:
        router = redis_router(tmp_path / "router", url, namespace, ledger_fallback="local", deployments=DEPLOYMENTS)
        strict = redis_router(tmp_path / "strict", url, namespace, deployments=DEPLOYMENTS)
        assert isinstance(router.ledger, FailoverLedger)
        router.ledger.probe_interval_s = 0.0  # look for Redis on every call: no waiting once it is back
        first = router.route(topic_prompt("math", 1), deployments=["big"])
        assert router.record(first.id, prompt_tokens=40, completion_tokens=60) is not None
        pending = router.route(topic_prompt("math", 2), deployments=["big"])
    with pytest.raises(LedgerUnavailableError):  # without the option: fail closed, as before
        strict.route(topic_prompt("math", 3))
    caplog.set_level(logging.INFO, logger="llm_router_plugin")
    router.record(pending.id, prompt_tokens=40, completion_tokens=160)
    during = router.route(topic_prompt("math", 3), deployments=["big"])
    assert during.deployment == "big"
    assert router.record(during.id, prompt_tokens=50, completion_tokens=250) is not None
    assert any("per host" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    with restarted(folder, url):
        assert spent(router, "big") == 100 + 200 + 300
        assert spent(strict, "big") == 600  # another router on the namespace sees it all


def test_a_settlement_racing_another_process_s_replay_reaches_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # worker A (Redis up) settles a hold worker B made during the outage. Redis does not know it yet
    # (B's reserve is still queued), so A turns to the local file; if B replays its queue and empties the local ledger
    # (forget_replayed) in between, A finds nothing there either, queues nothing, and the actual spend never reaches
    # Redis: the replayed hold sits there until it expires and is charged at the reserved amount instead.
    namespace, folder, path = f"test-{uuid.uuid4().hex}", tmp_path / "redis", tmp_path / "fallback.sqlite3"
    with redis_server(folder, persist=True) as url:
        worker_a = FailoverLedger(lambda: RedisLedger(url, namespace=namespace), FallbackLedger(path),
                                  namespace=namespace, probe_interval_s=3600.0)  # A checks no more: Redis stays up
        worker_b = failover(url, namespace, path)
        worker_a.usage("big", 0)
    assert worker_b.try_reserve(hold("x", 100))  # B during the outage: held locally, queued
    with restarted(folder, url):
        original = RedisLedger.settle
        replayed: list[bool] = []

        def settle_then_b_replays(self: RedisLedger, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            if not replayed:  # B's next call, between A's two looks: B replays its queue and forgets its local holds
                replayed.append(True)
                worker_b.usage("big", 0)
            return result

        monkeypatch.setattr(RedisLedger, "settle", settle_then_b_replays)
        worker_a.settle("x", used(150))
        monkeypatch.undo()
        worker_b.usage("big", 0)  # anything still queued reaches Redis
        assert redis_usage(url, namespace) == ({"tokens": 150.0, "usd": 0.0}, {"tokens": 0.0, "usd": 0.0})


def test_a_fallback_at_the_whole_budget_is_pointed_out_at_start(
    tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Several hosts, each allowed all that is left while Redis is away, may spend that many times over.
    base = {"deployments": [{"name": "d"}], "ledger": redis_url, "ledger_fallback": "local"}
    with caplog.at_level(logging.WARNING, logger="llm_router_plugin"):
        open_ledger(RouterConfig.from_dict({**base, "data_dir": str(tmp_path / "a"),
                                            "ledger_namespace": f"test-{uuid.uuid4().hex}"}))
    assert "ledger_fallback_share" in caplog.text and "1/N" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llm_router_plugin"):
        open_ledger(RouterConfig.from_dict({**base, "data_dir": str(tmp_path / "b"), "ledger_fallback_share": 0.5,
                                            "ledger_namespace": f"test-{uuid.uuid4().hex}"}))
    assert "ledger_fallback_share" not in caplog.text
