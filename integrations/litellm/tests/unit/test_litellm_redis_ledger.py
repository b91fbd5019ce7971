"""Budgets of LiteLLM model groups on a Redis ledger: per-group key namespaces, and LiteLLM's own Redis settings.

A real redis-server on 127.0.0.1 (the ``redis_url`` fixture, or one of the test's own when it needs a password).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import yaml
from llm_router_litellm import LiteLLMAdapter, ProxyCallback
from router_litellm_support import CHAT, MATH, routed, seed_history, two_groups

from llm_router_plugin.budget import SQLiteLedger
from llm_router_plugin.redis_ledger import RedisLedger
from tests.redis_server import RedisServer

PASSWORD = "s3cret-Redis-pw"


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


def proxy_config(tmp_path: Path, router_settings: dict[str, Any] | None, **llm_router: Any) -> Path:
    """A proxy config.yaml with the test deployments, ``router_settings`` and ``callback_settings.llm_router``."""
    config: dict[str, Any] = {
        "model_list": two_groups(),
        "callback_settings": {"llm_router": {"embedding_model": "hashing-64", "data_dir": str(tmp_path / "router"),
                                             "ledger_namespace": f"test-{uuid.uuid4().hex}", **llm_router}},
    }
    if router_settings is not None:
        config["router_settings"] = router_settings
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def address(adapter: LiteLLMAdapter, group: str = "chat") -> tuple[str, int]:
    """The host and port of the Redis server a group's budgets are on."""
    router = adapter.router(group)
    assert router is not None and isinstance(router.ledger, RedisLedger)
    kwargs = router.ledger.client.connection_pool.connection_kwargs
    return kwargs["host"], kwargs["port"]


def test_litellms_redis_settings_hold_the_budgets(tmp_path: Path, redis_url: str) -> None:
    url = urlsplit(redis_url)
    config = proxy_config(tmp_path, {"redis_host": url.hostname, "redis_port": url.port,
                                     "routing_strategy": "simple-shuffle"})
    adapter = LiteLLMAdapter.from_proxy_config(config)
    assert adapter.settings.ledger == f"redis://{url.hostname}:{url.port}/0"
    assert address(adapter) == (url.hostname, url.port)
    code = adapter.router("code")
    assert code is not None and code.ledger.namespace.startswith(f"{adapter.settings.ledger_namespace}:")


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test that requires :data:`PASSWORD`."""
    with RedisServer(tmp_path / "redis") as server:
        with closing(redis.Redis(host=server.host, port=server.port)) as admin:
            admin.config_set("requirepass", PASSWORD)
        yield server


def test_litellms_redis_password_reaches_the_ledger_and_nothing_else(
    tmp_path: Path, password_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = proxy_config(tmp_path, {"redis_host": password_redis.host, "redis_port": str(password_redis.port),
                                     "redis_password": PASSWORD})
    adapter = LiteLLMAdapter.from_proxy_config(config)
    assert adapter.validate() == ["chat", "code"]
    assert address(adapter) == (password_redis.host, password_redis.port)
    seed_history(adapter)
    routed(adapter, "chat", CHAT)  # reserved on the password-protected server
    assert PASSWORD not in adapter.settings.model_dump_json()
    assert PASSWORD not in caplog.text


def test_os_environ_references_are_read_from_the_environment(
    tmp_path: Path, password_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_REDIS_HOST", password_redis.host)
    monkeypatch.setenv("TEST_REDIS_PORT", str(password_redis.port))
    monkeypatch.setenv("TEST_REDIS_PASSWORD", PASSWORD)
    config = proxy_config(tmp_path, {"redis_host": "os.environ/TEST_REDIS_HOST",
                                     "redis_port": "os.environ/TEST_REDIS_PORT",
                                     "redis_password": "os.environ/TEST_REDIS_PASSWORD"})
    adapter = LiteLLMAdapter.from_proxy_config(config)
    assert adapter.settings.ledger_password_env == "TEST_REDIS_PASSWORD"  # the password stays in the environment
    assert address(adapter) == (password_redis.host, password_redis.port)


def test_a_missing_environment_variable_names_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_REDIS_HOST", raising=False)
    config = proxy_config(tmp_path, {"redis_host": "os.environ/TEST_REDIS_HOST", "redis_port": 6379})
    with pytest.raises(ValueError, match=r"router_settings\.redis_host: .*TEST_REDIS_HOST"):
        LiteLLMAdapter.from_proxy_config(config)


@pytest.mark.parametrize("redis_port", [0, "port", 70_000, True])
def test_a_bad_redis_port_names_the_setting(tmp_path: Path, redis_port: Any) -> None:
    config = proxy_config(tmp_path, {"redis_host": "127.0.0.1", "redis_port": redis_port})
    with pytest.raises(ValueError, match=r"router_settings\.redis_port"):
        LiteLLMAdapter.from_proxy_config(config)


def test_an_explicit_ledger_setting_wins(tmp_path: Path, redis_url: str) -> None:
    litellms = {"redis_host": "127.0.0.1", "redis_port": 1, "redis_password": "unused"}  # nothing listens on port 1
    sqlite = LiteLLMAdapter.from_proxy_config(proxy_config(tmp_path, litellms, ledger="sqlite"))
    chat = sqlite.router("chat")
    assert chat is not None and isinstance(chat.ledger, SQLiteLedger)
    own = LiteLLMAdapter.from_proxy_config(proxy_config(tmp_path, litellms, ledger=redis_url))
    url = urlsplit(redis_url)
    assert address(own) == (url.hostname, url.port)


@pytest.mark.parametrize("router_settings", [None, {}, {"redis_host": "127.0.0.1"}, {"redis_port": 6379}])
def test_without_litellms_redis_budgets_stay_in_sqlite(tmp_path: Path, router_settings: Any) -> None:
    adapter = LiteLLMAdapter.from_proxy_config(proxy_config(tmp_path, router_settings))
    chat = adapter.router("chat")
    assert chat is not None and isinstance(chat.ledger, SQLiteLedger)


def test_the_proxy_callback_serves_on_litellms_redis(tmp_path: Path, password_redis: RedisServer) -> None:
    config = proxy_config(tmp_path, {"redis_host": password_redis.host, "redis_port": password_redis.port,
                                     "redis_password": PASSWORD})
    callback = ProxyCallback()
    callback.validate_proxy_config(str(config))
    assert address(callback.adapter) == (password_redis.host, password_redis.port)


def test_feedback_on_a_local_decision_is_taken_while_redis_is_down(
    settings: dict[str, Any], tmp_path: Path
) -> None:
    # the adapter asks each group in turn whether it knows the decision; the first group ("chat")
    # asks Redis, and its LedgerUnavailableError stops the search before the group whose own decision log holds it.
    with RedisServer(tmp_path / "redis") as server:
        adapter = LiteLLMAdapter(two_groups, redis_settings(settings, server.url))
        seed_history(adapter)
        decision_id = routed(adapter, "code", MATH)
        assert adapter.router("chat") is not None
        server.kill()
    assert adapter.feedback(decision_id, 0.9) == "code"


def test_litellms_redis_password_reaches_the_shared_learning_state(
    tmp_path: Path, password_redis: RedisServer
) -> None:
    # the password written in router_settings goes to the ledger only; the learning store on the same
    # Redis connects without it, so the solve lease is never taken and the group never leaves the warm-up.
    config = proxy_config(tmp_path, {"redis_host": password_redis.host, "redis_port": str(password_redis.port),
                                     "redis_password": PASSWORD}, warmup_queries=5)
    adapter = LiteLLMAdapter.from_proxy_config(config)
    seed_history(adapter)
    for i in range(6):
        routed(adapter, "chat", f"{CHAT} {i}")
    chat = adapter.router("chat")
    assert chat is not None
    assert chat.learning.count() == 6
    assert chat.status().phase == "learned"
