"""A throwaway ``redis-server`` on 127.0.0.1 for the Redis ledger's tests, and the ``redis_url`` fixture.

``make install`` installs Debian's ``redis-server``, so a missing binary is an error by default; set
``LLM_ROUTER_TESTS_ALLOW_NO_REDIS=1`` to skip the Redis tests instead (a machine where nothing may be installed).
The server listens on a free port of its own, so a system Redis on 6379 (Debian starts one on install) is never used.
The root ``conftest.py`` loads this module as a plugin, so every test folder (the integrations' too) has ``redis_url``.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
import redis

from llm_router_plugin.testing import LocalServer

ALLOW_MISSING = "LLM_ROUTER_TESTS_ALLOW_NO_REDIS"
HOST = "127.0.0.1"  # never another address: the server has no password


def redis_binary() -> str:
    """The ``redis-server`` executable.

    Raises:
        pytest.fail.Exception / pytest.skip.Exception: no ``redis-server`` (skip only if the env var allows it).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        why = "redis-server is not installed (`make install` installs it: apt-get install redis-server)"
        if os.environ.get(ALLOW_MISSING) == "1":
            pytest.skip(f"{why}; skipped because {ALLOW_MISSING}=1")
        pytest.fail(f"{why}; set {ALLOW_MISSING}=1 to skip the Redis tests instead", pytrace=False)
    return binary


class RedisServer(LocalServer):
    """``redis-server`` on 127.0.0.1, up once it answers PING; stopped (or killed) by its PID.

    Args:
        workdir: the server's working folder and log.
        persist: keep the data in an append-only file in ``workdir``, written to disk before every write is
            acknowledged (``appendfsync always``), so that a server killed and started again on the same folder has
            every write it acknowledged; otherwise nothing is saved.
        port: TCP port; ``None`` picks a free one (kept by later starts: a restart listens where clients connect).
        startup_timeout: seconds to wait for PING.
    """

    name = "redis-server"

    def __init__(self, workdir: Path, *, persist: bool = False, port: int | None = None,
                 startup_timeout: float = 10.0) -> None:
        self.workdir = Path(workdir)
        self.persist = persist
        self.workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(log=self.workdir / "redis.log", port=port, startup_timeout=startup_timeout)

    @property
    def redis_url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        """The ``redis-server`` command line."""
        saving = (["--appendonly", "yes", "--appendfsync", "always"] if self.persist
                  else ["--save", "", "--appendonly", "no"])
        return [redis_binary(), "--port", str(self.port), "--bind", self.host, *saving, "--daemonize", "no",
                "--dir", str(self.workdir)]

    def ready(self) -> bool:
        """Whether the server answers PING."""
        try:
            with closing(redis.Redis(host=self.host, port=self.port, socket_timeout=1)) as client:
                return bool(client.ping())
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        """SIGKILL the server by its PID (a crash: no shutdown save) and reap it."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
        self.stop()

    def __enter__(self) -> RedisServer:
        self.start()
        return self


@contextmanager
def redis_server(
    workdir: Path, attempts: int = 3, timeout_s: float = 10.0, *, port: int | None = None, persist: bool = False
) -> Iterator[str]:
    """Run ``redis-server`` on 127.0.0.1 and a free port; yield its URL; stop it (by its own PID) at the end.

    Args:
        workdir: the server's working folder and its log.
        attempts: ports tried (another process may take the free port between the probe and the bind).
        timeout_s: how long to wait for PING per attempt.
        port: listen on this port (one attempt), for a server restarted where its clients expect it.
        persist: keep the data in an append-only file in ``workdir`` (see :class:`RedisServer`); else nothing is
            saved (no RDB, no AOF).

    Yields:
        ``redis://127.0.0.1:<port>/0``.

    Raises:
        pytest.fail.Exception / pytest.skip.Exception: no ``redis-server`` (skip only if the env var allows it).
        RuntimeError: the server did not answer PING.
    """
    redis_binary()
    tries = 1 if port is not None else attempts
    for attempt in range(tries):
        server = RedisServer(workdir, persist=persist, port=port, startup_timeout=timeout_s)
        try:
            server.start()
        except RuntimeError:
            if attempt + 1 == tries:
                raise
            continue  # exited (port taken?) or never answered: try another port
        try:
            yield server.redis_url
        finally:
            server.stop()
        return


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on 127.0.0.1 for the session (started only if a test asks for it)."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url
