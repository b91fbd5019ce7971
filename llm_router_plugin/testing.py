"""Servers on loopback for integration tests and demos, always stopped by their PID.

::

    with ChromaServer(tmp / "chroma") as chroma:
        config = RouterConfig(..., chroma_host=chroma.host, chroma_port=chroma.port)
    with RedisServer(tmp / "redis") as redis_server:
        config = RouterConfig(..., ledger=redis_server.url)

:class:`LocalServer` is the shared machinery (start a command, wait until it answers, stop by PID); the LiteLLM
integration's proxy runner builds on it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx
import redis

#: The only address the servers started here listen on.
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def script(name: str) -> str:
    """The path of a console script installed beside the current interpreter (``litellm``, ``chroma`` …)."""
    return str(Path(sys.executable).with_name(name))


class LocalServer:
    """A server subprocess on 127.0.0.1 that is up once ``health_path`` answers 200 (or :meth:`ready` says so).

    Subclasses give the command line (:meth:`command`) and the health path (or their own :meth:`ready`).

    Args:
        log: file for the server's output.
        port: TCP port; ``None`` picks a free one.
        startup_timeout: seconds to wait for the health path.
        cwd: working folder of the server (``None`` = the current one).
    """

    #: Display name in error messages.
    name = "server"
    #: Path that answers 200 once the server is up.
    health_path = "/"
    #: Seconds between two checks of whether the server is up.
    poll_interval_s = 0.5

    def __init__(
        self, *, log: str | Path, port: int | None = None, startup_timeout: float = 120.0, cwd: Path | None = None
    ) -> None:
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout: must be positive, got {startup_timeout}")
        self.host = LOOPBACK
        self.port = port or free_port()
        self.log = Path(log)
        self.startup_timeout = startup_timeout
        self.cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's PID while it runs."""
        return self._process.pid if self._process is not None else None

    def command(self) -> list[str]:
        """The command line that starts the server on ``self.host:self.port``."""
        raise NotImplementedError

    def start(self) -> LocalServer:
        """Start the server and wait until it answers.

        Returns:
            The server itself.

        Raises:
            RuntimeError: the server exited or did not answer in time (the message ends with its log); it is
                stopped.
        """
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self._process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd)
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_up(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._process.returncode}:\n{self._log_tail()}")
            if self.ready():
                return
            time.sleep(self.poll_interval_s)
        raise RuntimeError(f"{self.name} did not answer within {self.startup_timeout:.0f} s:\n{self._log_tail()}")

    def ready(self) -> bool:
        """Whether the server answers: ``health_path`` returns 200 (servers that do not speak HTTP override this)."""
        try:
            return httpx.get(f"{self.url}{self.health_path}", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False  # not listening yet

    def _log_tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        """Stop the server by its PID (SIGTERM, then SIGKILL after 20 s); a no-op when it is not running."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


class ChromaServer(LocalServer):
    """``chroma run --host 127.0.0.1 --port <port> --path <path>``: a Chroma server for ``chroma_host`` configs.

    Args:
        path: the server's persistence folder.
        log: file for the server's output; ``None`` = ``chroma.log`` beside ``path``.
        port: TCP port; ``None`` picks a free one.
        startup_timeout: seconds to wait for the heartbeat.
    """

    name = "chroma"
    health_path = "/api/v2/heartbeat"

    def __init__(
        self, path: str | Path, *, log: str | Path | None = None, port: int | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.path = Path(path)
        super().__init__(log=log or self.path.with_name("chroma.log"), port=port, startup_timeout=startup_timeout)

    def command(self) -> list[str]:
        """The ``chroma run`` command line."""
        return [script("chroma"), "run", "--host", self.host, "--port", str(self.port), "--path", str(self.path)]

    def __enter__(self) -> ChromaServer:
        self.start()
        return self


class RedisServer(LocalServer):
    """A private ``redis-server`` on 127.0.0.1 (no password) for ``ledger: redis://...``; stopped (or killed) by PID.

    It listens on a free port of its own, so a system Redis on 6379 is never used. Another process may take the free
    port between the probe and the bind: :meth:`start` then tries other ports.

    Args:
        workdir: the server's working folder; its log is ``redis.log`` there.
        persist: keep the data in an append-only file in ``workdir``, written to disk before every write is
            acknowledged (``appendfsync always``), so that a server killed and started again on the same folder and
            port has every write it acknowledged; otherwise nothing is saved (no RDB, no AOF).
        port: TCP port; ``None`` picks a free one (kept by later starts: a restart listens where clients connect).
        startup_timeout: seconds to wait for PING, per port tried.
        attempts: ports tried before giving up (1 when ``port`` is given).

    Raises:
        FileNotFoundError: no ``redis-server`` on the PATH (Debian: ``apt-get install redis-server``).
    """

    name = "redis-server"
    poll_interval_s = 0.05

    def __init__(
        self, workdir: str | Path, *, persist: bool = False, port: int | None = None, startup_timeout: float = 10.0,
        attempts: int = 3,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (Debian: apt-get install redis-server)")
        if attempts < 1:
            raise ValueError(f"attempts: must be at least 1, got {attempts}")
        self.binary = binary
        self.workdir = Path(workdir)
        self.persist = persist
        self.attempts = 1 if port else attempts
        super().__init__(log=self.workdir / "redis.log", port=port, startup_timeout=startup_timeout)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        """The ``redis-server`` command line: loopback only, logging to stdout (the log file)."""
        saving = (["--appendonly", "yes", "--appendfsync", "always"] if self.persist
                  else ["--save", "", "--appendonly", "no"])
        return [self.binary, "--port", str(self.port), "--bind", self.host, *saving, "--daemonize", "no",
                "--dir", str(self.workdir)]

    def kill(self) -> None:
        """SIGKILL the server by its PID (a crash: no shutdown save) and reap it."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
        self.stop()

    def ready(self) -> bool:
        """Whether the server answers PING."""
        try:
            with redis.Redis(host=self.host, port=self.port, socket_timeout=1) as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False  # not listening (or still loading) yet

    def start(self) -> RedisServer:
        """Start the server and wait for PING, on another free port if this one was taken meanwhile.

        Returns:
            The server itself.

        Raises:
            RuntimeError: no attempt answered PING (the message ends with the last log).
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(self.attempts - 1):
            try:
                super().start()
                return self
            except RuntimeError:
                self.port = free_port()
        super().start()
        return self

    def __enter__(self) -> RedisServer:
        return self.start()


class ReplayUpstream(LocalServer):
    """``llm-router replay-server`` in a process of its own: the replay upstream, off the caller's interpreter (a
    load generator in the same process would share its GIL).

    Args:
        log: file for the server's output.
        port: TCP port; ``None`` picks a free one.
        startup_timeout: seconds to wait for ``/v1/models``.
    """

    name = "replay-server"
    health_path = "/v1/models"

    def __init__(self, *, log: str | Path, port: int | None = None, startup_timeout: float = 60.0) -> None:
        super().__init__(log=log, port=port, startup_timeout=startup_timeout)

    def command(self) -> list[str]:
        """``python -m llm_router_plugin.cli replay-server`` on this host and port (the shipped sample and prices)."""
        return [sys.executable, "-m", "llm_router_plugin.cli", "replay-server", "--host", self.host, "--port",
                str(self.port)]

    def __enter__(self) -> ReplayUpstream:
        self.start()
        return self
