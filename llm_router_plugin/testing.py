"""Servers on loopback for integration tests and demos, always stopped by their PID.

::

    with ChromaServer(tmp / "chroma") as chroma:
        config = RouterConfig(..., chroma_host=chroma.host, chroma_port=chroma.port)

:class:`LocalServer` is the shared machinery (start a command, wait for a health URL, stop by PID); the LiteLLM
integration's proxy runner builds on it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

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
    """A server subprocess on 127.0.0.1 that is up once ``health_path`` answers 200.

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
            time.sleep(0.5)
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
