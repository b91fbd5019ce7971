"""A router whose config names a Redis ledger: budgets shared by every router on the same URL and namespace."""

from __future__ import annotations

import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import redis

from llm_router_plugin import BudgetExhaustedError, HashingEmbedder, Router, RouterConfig
from llm_router_plugin.budget import SQLiteLedger, open_ledger
from llm_router_plugin.redis_ledger import RedisLedger
from tests.conftest import topic_history, topic_prompt


def redis_router(data_dir: Path, url: str, namespace: str, **overrides: Any) -> Router:
    """A router on its own data_dir whose budgets live in Redis under ``namespace``."""
    config: dict[str, Any] = {
        "data_dir": str(data_dir),
        "embedding_model": "hashing-64",
        "exploration": 0,
        "estimator": {"region_weight": 0},
        "ledger": url,
        "ledger_namespace": namespace,
        "deployments": [
            {"name": "big", "model": "big-model", "token_budget": 3_000},
            {"name": "small", "model": "small-model", "token_budget": 20_000, "window": "1h"},
        ],
    }
    config.update(overrides)
    embedder = HashingEmbedder(64)
    router = Router(RouterConfig.from_dict(config), embedder=embedder)
    router.history.upsert(topic_history(embedder))
    return router


def spent(router: Router, deployment: str) -> float:
    return next(d for d in router.status().deployments if d.name == deployment).spent["tokens"]


def test_open_ledger_is_sqlite_by_default(tmp_path: Path) -> None:
    config = RouterConfig.from_dict({"data_dir": str(tmp_path), "deployments": [{"name": "d"}]})
    ledger = open_ledger(config)
    assert isinstance(ledger, SQLiteLedger)
    assert (tmp_path / "ledger.sqlite3").exists()


def test_router_with_a_redis_ledger_routes_and_records_in_redis(tmp_path: Path, redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    router = redis_router(tmp_path / "a", redis_url, namespace)
    assert isinstance(router.ledger, RedisLedger) and router.ledger.namespace == namespace
    for deployment in ("big", "small"):
        decision = router.route(topic_prompt("math", 1), deployments=[deployment])
        assert router.record(decision.id, prompt_tokens=40, completion_tokens=60) is not None
    # The spend is in Redis: a ledger of its own on the namespace reads it.
    windows = {d.name: d.window_index for d in router.status().deployments}
    with closing(redis.Redis.from_url(redis_url, decode_responses=True)) as client:
        reader = RedisLedger(client, namespace=namespace)
        assert reader.usage("big", windows["big"])[0]["tokens"] == 100
        assert reader.usage("small", windows["small"])[0]["tokens"] == 100
        # Each deployment's window reached the ledger: the 1h window's keys expire, the "total" ones do not.
        assert client.pttl(f"{{{namespace}}}:w:small:{windows['small']}:spend") > 0
        assert client.pttl(f"{{{namespace}}}:w:big:{windows['big']}:spend") == -1
    # The decision log stays in data_dir. Its file, switched back to the SQLite ledger, is a ledger with no spend
    # (not a "corrupt" one: it holds the decision log's tables only).
    assert router.decisions.get(decision.id) is not None
    back = RouterConfig.from_dict({**router.config.model_dump(mode="json"), "ledger": "sqlite"})
    assert open_ledger(back).usage("big", 0)[0]["tokens"] == 0


def test_routers_on_one_redis_and_namespace_share_a_budget(tmp_path: Path, redis_url: str) -> None:
    namespace = f"test-{uuid.uuid4().hex}"
    first = redis_router(tmp_path / "first", redis_url, namespace)
    second = redis_router(tmp_path / "second", redis_url, namespace)
    other = redis_router(tmp_path / "other", redis_url, f"{namespace}-other")

    decision = first.route(topic_prompt("math", 1), deployments=["big"])
    first.record(decision.id, prompt_tokens=40, completion_tokens=60)
    assert spent(second, "big") == 100  # the second router sees the first's spend
    decision = first.route(topic_prompt("math", 2), deployments=["big"])
    first.record(decision.id, prompt_tokens=100, completion_tokens=2_800)  # the budget of 3000 is used up
    assert spent(first, "big") == spent(second, "big") == 3_000

    with pytest.raises(BudgetExhaustedError) as caught:
        second.route(topic_prompt("math", 3), deployments=["big"])
    assert caught.value.remaining["big"]["tokens"] == 0
    # Another namespace on the same server keeps budgets of its own.
    assert spent(other, "big") == 0
    assert other.route(topic_prompt("math", 3), deployments=["big"]).deployment == "big"


def test_redis_ledger_password_comes_from_the_named_variable(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An ACL user with a password on the shared test server (the default user stays open for the other tests).
    user, password = f"router-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with closing(redis.Redis.from_url(redis_url)) as admin:
        admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "+@all")
        try:
            host_part = redis_url.split("://", 1)[1]
            url = f"redis://{user}@{host_part}"
            monkeypatch.setenv("LLM_ROUTER_TEST_REDIS_PASSWORD", "wrong")
            config = RouterConfig.from_dict({
                "data_dir": str(tmp_path), "deployments": [{"name": "d"}], "ledger": url,
                "ledger_password_env": "LLM_ROUTER_TEST_REDIS_PASSWORD", "ledger_namespace": f"test-{user}",
            })
            with pytest.raises(redis.AuthenticationError):
                open_ledger(config)
            monkeypatch.setenv("LLM_ROUTER_TEST_REDIS_PASSWORD", password)
            ledger = open_ledger(config)
            assert isinstance(ledger, RedisLedger) and ledger.anchor > 0
            ledger.close()
            # The variable is read at start: one gone since the config was loaded stops the start, naming it.
            monkeypatch.delenv("LLM_ROUTER_TEST_REDIS_PASSWORD")
            with pytest.raises(ValueError, match=r"ledger_password_env: .*LLM_ROUTER_TEST_REDIS_PASSWORD"):
                open_ledger(config)
        finally:
            admin.execute_command("ACL", "DELUSER", user)
