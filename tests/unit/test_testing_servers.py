"""The loopback servers of ``llm_router_plugin.testing`` that the benchmarks start outside pytest."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from llm_router_plugin.testing import RedisServer
from tests.redis_server import redis_server


def test_a_redis_server_answers_on_loopback_and_is_gone_once_stopped(tmp_path: Path) -> None:
    with redis_server(tmp_path / "redis") as url:
        assert url.startswith("redis://127.0.0.1:")
        with redis.Redis.from_url(url) as client:
            assert client.ping()
    with redis.Redis.from_url(url, socket_timeout=1) as client, pytest.raises(redis.ConnectionError):
        client.ping()


def test_redis_server_refuses_no_attempts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="attempts"):
        RedisServer(tmp_path, attempts=0)
