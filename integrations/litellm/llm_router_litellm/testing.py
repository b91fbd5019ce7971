"""Run a LiteLLM proxy as a subprocess on loopback, for integration tests and demos of a config.yaml.

::

    with LiteLLMProxy("config.yaml", log=tmp / "proxy.log") as proxy:
        httpx.post(f"{proxy.url}/v1/chat/completions", headers={"Authorization": "Bearer sk-…"}, json=...)

The proxy is started with the current interpreter's ``litellm`` script and the current environment (set
``LITELLM_LOCAL_MODEL_COST_MAP=True`` to keep it offline), and is always stopped by its PID.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiteLLMProxy:
    """``litellm --config <config> --host 127.0.0.1 --port <port>`` in a subprocess.

    Args:
        config: the proxy's config.yaml.
        port: TCP port; ``None`` picks a free one.
        log: file for the proxy's output; ``None`` = ``proxy.log`` beside the config.
        startup_timeout: seconds to wait for ``/health/liveliness``.
    """

    def __init__(
        self, config: str | Path, *, port: int | None = None, log: str | Path | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        self.config = Path(config)
        if not self.config.is_file():
            raise ValueError(f"config: no such file {self.config}")
        self.port = port or free_port()
        self.log = Path(log) if log else self.config.with_name("proxy.log")
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The proxy's base URL (OpenAI clients take ``url + "/v1"``)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiteLLMProxy:
        """Start the proxy and wait until it answers.

        Returns:
            The proxy itself.

        Raises:
            RuntimeError: the proxy exited or did not answer in time (the message ends with its log); it is stopped.
        """
        command = [str(Path(sys.executable).with_name("litellm")), "--config", str(self.config),
                   "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("wb") as out:
            self._process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=self.config.parent)
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
                raise RuntimeError(f"litellm exited with {self._process.returncode}:\n{self._log_tail()}")
            try:
                if httpx.get(f"{self.url}/health/liveliness", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.5)
        raise RuntimeError(f"litellm did not answer within {self.startup_timeout:.0f} s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-3000:]

    def stop(self) -> None:
        """Stop the proxy by its PID (SIGTERM, then SIGKILL after 20 s); a no-op when it is not running."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> LiteLLMProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
