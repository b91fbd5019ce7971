"""A throwaway ``redis-server`` on 127.0.0.1 for the Redis ledger's tests (:class:`RedisServer`, with pytest's
skip-or-fail policy for a machine without the binary), and the ``redis_url`` fixture.

``make install`` installs Debian's ``redis-server``, so a missing binary is an error by default; set
``LLM_ROUTER_TESTS_ALLOW_NO_REDIS=1`` to skip the Redis tests instead (a machine where nothing may be installed).
The server listens on a free port of its own, so a system Redis on 6379 (Debian starts one on install) is never used.
The root ``conftest.py`` loads this module as a plugin, so every test folder (the integrations' too) has ``redis_url``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from llm_router_plugin.testing import RedisServer

__all__ = ["RedisServer", "redis_binary", "redis_server", "redis_url"]

ALLOW_MISSING = "LLM_ROUTER_TESTS_ALLOW_NO_REDIS"


def redis_binary() -> None:
    """Check that ``redis-server`` is installed.

    Raises:
        pytest.fail.Exception / pytest.skip.Exception: no ``redis-server`` (skip only if the env var allows it).
    """
    if shutil.which("redis-server") is None:
        why = "redis-server is not installed (`make install` installs it: apt-get install redis-server)"
        if os.environ.get(ALLOW_MISSING) == "1":
            pytest.skip(f"{why}; skipped because {ALLOW_MISSING}=1")
        pytest.fail(f"{why}; set {ALLOW_MISSING}=1 to skip the Redis tests instead", pytrace=False)


@contextmanager
def redis_server(workdir: Path, *, port: int | None = None, persist: bool = False) -> Iterator[str]:
    """Run ``redis-server`` on 127.0.0.1 and a free port; yield its URL; stop it (by its own PID) at the end.

    Args:
        workdir: the server's working folder and its log.
        port: listen on this port, for a server restarted where its clients expect it.
        persist: keep the data in an append-only file in ``workdir`` (see :class:`RedisServer`).

    Yields:
        ``redis://127.0.0.1:<port>/0``.

    Raises:
        pytest.fail.Exception / pytest.skip.Exception: no ``redis-server`` (skip only if the env var allows it).
        RuntimeError: the server did not answer PING.
    """
    redis_binary()
    with RedisServer(workdir, port=port, persist=persist) as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on 127.0.0.1 for the session (started only if a test asks for it)."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url
