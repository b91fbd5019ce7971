"""Run a LiteLLM proxy as a subprocess on loopback, for integration tests and demos of a config.yaml.

::

    with LiteLLMProxy("config.yaml", log=tmp / "proxy.log") as proxy:
        httpx.post(f"{proxy.url}/v1/chat/completions", headers={"Authorization": "Bearer sk-…"}, json=...)

The proxy is started with the current interpreter's ``litellm`` script and the current environment (set
``LITELLM_LOCAL_MODEL_COST_MAP=True`` to keep it offline), and is always stopped by its PID.
"""

from __future__ import annotations

from pathlib import Path

from llm_router_plugin.testing import LocalServer, free_port, script

__all__ = ["LiteLLMProxy", "free_port"]


class LiteLLMProxy(LocalServer):
    """``litellm --config <config> --host 127.0.0.1 --port <port> [--num_workers N]`` in a subprocess.

    Args:
        config: the proxy's config.yaml.
        port: TCP port; ``None`` picks a free one.
        log: file for the proxy's output; ``None`` = ``proxy.log`` beside the config.
        startup_timeout: seconds to wait for ``/health/liveliness``.
        num_workers: uvicorn worker processes sharing the port (each loads the config and its own router); stopping
            the proxy stops them with it.

    Raises:
        ValueError: no such config file, or ``num_workers`` below 1.
    """

    name = "litellm"
    health_path = "/health/liveliness"

    def __init__(
        self, config: str | Path, *, port: int | None = None, log: str | Path | None = None,
        startup_timeout: float = 120.0, num_workers: int = 1,
    ) -> None:
        self.config = Path(config)
        if not self.config.is_file():
            raise ValueError(f"config: no such file {self.config}")
        if num_workers < 1:
            raise ValueError(f"num_workers: must be at least 1, got {num_workers}")
        self.num_workers = num_workers
        super().__init__(log=log or self.config.with_name("proxy.log"), port=port, startup_timeout=startup_timeout,
                         cwd=self.config.parent)

    def command(self) -> list[str]:
        """The ``litellm`` command line."""
        return [script("litellm"), "--config", str(self.config), "--host", self.host, "--port", str(self.port),
                "--num_workers", str(self.num_workers)]

    def __enter__(self) -> LiteLLMProxy:
        self.start()
        return self
