"""A Redis ledger that goes away: the router fails closed with :class:`LedgerUnavailableError`, not a redis error."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from llm_router_plugin import BudgetExhaustedError, LedgerUnavailableError, RouterError
from llm_router_plugin import outcomes as outcomes_module
from llm_router_plugin.budget import Reservation
from llm_router_plugin.redis_ledger import RedisLedger
from tests.conftest import topic_prompt
from tests.redis_server import redis_server
from tests.unit.test_redis_router import redis_router, spent


def test_the_error_is_a_router_error_naming_the_ledger() -> None:
    error = LedgerUnavailableError("redis://127.0.0.1:1/0", "Connection refused")
    assert isinstance(error, RouterError) and not isinstance(error, BudgetExhaustedError)
    assert error.ledger == "redis://127.0.0.1:1/0"
    assert "budget ledger unreachable (redis://127.0.0.1:1/0: Connection refused)" in str(error)
    assert "budgets cannot be checked" in str(error)


def test_every_ledger_method_of_a_stopped_server_raises_ledger_unavailable(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        ledger = RedisLedger(url, namespace=f"test-{uuid.uuid4().hex}")
    # The server is stopped (by its PID) when the block ends.
    reservation = Reservation("d1", "big", 0, {"tokens": 1.0, "usd": 0.0}, {"tokens": 10.0}, 1e12)
    calls: list[Any] = [
        lambda: ledger.try_reserve(reservation),
        lambda: ledger.settle("d1", {"tokens": 1.0, "usd": 0.0}),
        lambda: ledger.release("d1"),
        lambda: ledger.usage("big", 0),
        lambda: ledger.get_state("k"),
        lambda: ledger.set_state("k", 1),
    ]
    for call in calls:
        with pytest.raises(LedgerUnavailableError) as caught:
            call()
        assert caught.value.ledger == url
        assert url in str(caught.value)
    ledger.close()


def test_a_password_never_reaches_the_message(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        ledger = RedisLedger(url, namespace=f"test-{uuid.uuid4().hex}")
    ledger.client.connection_pool.connection_kwargs["password"] = "s3cret-pw"
    with pytest.raises(LedgerUnavailableError) as caught:
        ledger.get_state("k")
    assert "s3cret-pw" not in str(caught.value) and "s3cret-pw" not in repr(caught.value)
    ledger.close()


def test_a_router_whose_redis_goes_away_refuses_to_route_and_to_record(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        router = redis_router(tmp_path / "router", url, f"test-{uuid.uuid4().hex}")
        first = router.route(topic_prompt("math", 1))
        assert router.record(first.id, prompt_tokens=40, completion_tokens=60) is not None
        pending = router.route(topic_prompt("math", 2))
    # Budgeted or not, no deployment is served without a hold.
    for deployments in (None, ["big"], ["small"]):
        with pytest.raises(LedgerUnavailableError):
            router.route(topic_prompt("math", 3), deployments=deployments)
    with pytest.raises(LedgerUnavailableError):
        router.record(pending.id, prompt_tokens=40, completion_tokens=60)
    with pytest.raises(LedgerUnavailableError):
        router.record(pending.id, 0, 0, error="timeout")
    logged = router.decisions.get(pending.id)
    assert logged is not None and logged.status == "open"  # left open: a retry once the ledger is back settles it


def test_a_router_with_no_budget_still_refuses_without_its_ledger(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        router = redis_router(tmp_path / "router", url, f"test-{uuid.uuid4().hex}", deployments=[
            {"name": "free", "model": "small-model"},
        ])
    with pytest.raises(LedgerUnavailableError):
        router.route(topic_prompt("chat", 1))


def test_a_record_that_met_an_outage_is_settled_once_by_its_retry(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = redis_router(tmp_path / "router", redis_url, f"test-{uuid.uuid4().hex}")
    decision = router.route(topic_prompt("math", 1), deployments=["big"])
    ledger = router.ledger
    assert isinstance(ledger, RedisLedger)
    script = ledger._settle
    outages = iter([redis.exceptions.ConnectionError("Connection reset by peer")])

    def flaky(**kwargs: Any) -> Any:
        for outage in outages:
            raise outage
        return script(**kwargs)

    monkeypatch.setattr(ledger, "_settle", flaky)
    with pytest.raises(LedgerUnavailableError, match="Connection reset by peer"):
        router.record(decision.id, prompt_tokens=40, completion_tokens=60)
    logged = router.decisions.get(decision.id)
    assert logged is not None and logged.status == "open"
    assert spent(router, "big") == 0
    assert router.record(decision.id, prompt_tokens=40, completion_tokens=60) is not None
    assert router.record(decision.id, prompt_tokens=40, completion_tokens=60) is None
    assert spent(router, "big") == 100


def test_a_timeout_is_an_outage_too(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    router = redis_router(tmp_path / "router", redis_url, f"test-{uuid.uuid4().hex}")
    ledger = router.ledger
    assert isinstance(ledger, RedisLedger)

    def slow(**kwargs: Any) -> Any:
        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(ledger, "_reserve", slow)
    with pytest.raises(LedgerUnavailableError, match="Timeout reading from socket"):
        router.route(topic_prompt("math", 1))


def test_outcomes_reported_during_an_outage_are_settled_when_redis_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nobody calls record() again in a proxy: the router keeps what it was told and settles it itself.
    monkeypatch.setattr(outcomes_module, "RECORD_RETRY_S", 0.0)
    folder = tmp_path / "redis"
    with redis_server(folder, persist=True) as url:
        router = redis_router(tmp_path / "router", url, f"test-{uuid.uuid4().hex}")
        answered = router.route(topic_prompt("math", 1), deployments=["big"])
        failed = router.route(topic_prompt("math", 2), deployments=["small"])
    with pytest.raises(LedgerUnavailableError):
        router.record(answered.id, prompt_tokens=40, completion_tokens=60, quality=0.5)
    with pytest.raises(LedgerUnavailableError):
        router.record(failed.id, 0, 0, error="timeout")
    with pytest.raises(LedgerUnavailableError):
        router.status()  # budgets cannot be shown without the ledger
    assert router.decisions.unsettled_count() == 2
    with redis_server(folder, port=urlsplit(url).port, persist=True):
        router.route(topic_prompt("math", 3), deployments=["small"])  # any later call settles the queue first
        assert spent(router, "big") == 100
        assert spent(router, "small") == 0  # the failed call's hold was released, not charged
        for decision, status in ((answered, "recorded"), (failed, "failed")):
            logged = router.decisions.get(decision.id)
            assert logged is not None and logged.status == status
        # Settled once: a caller's own retry changes nothing.
        assert router.record(answered.id, prompt_tokens=40, completion_tokens=60) is None
        assert spent(router, "big") == 100
        assert router.status().unsettled == 0


def test_the_command_line_reports_a_redis_ledger_that_is_down_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    from llm_router_plugin.testing import free_port

    config = tmp_path / "router.yaml"
    config.write_text(f"data_dir: {tmp_path / 'd'}\nembedding_model: hashing-64\n"
                      f"ledger: redis://127.0.0.1:{free_port()}/0\ndeployments: [{{name: m, token_budget: 10}}]\n")
    result = subprocess.run([sys.executable, "-m", "llm_router_plugin.cli", "status", "-c", str(config)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: "), result.stderr[-2000:]
