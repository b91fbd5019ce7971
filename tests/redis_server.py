"""A throwaway ``redis-server`` on 127.0.0.1 for the Redis ledger's tests.

``make install`` installs Debian's ``redis-server``, so a missing binary is an error by default; set
``LLM_ROUTER_TESTS_ALLOW_NO_REDIS=1`` to skip the Redis tests instead (a machine where nothing may be installed).
The server listens on a free port of its own, so a system Redis on 6379 (Debian starts one on install) is never used.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
import redis

ALLOW_MISSING = "LLM_ROUTER_TESTS_ALLOW_NO_REDIS"
HOST = "127.0.0.1"  # never another address: the server has no password


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


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
        persist: keep the data in an append-only file in ``workdir``, written on every command (a server started
            again on the same folder has it all); else nothing is saved (no RDB, no AOF).

    Yields:
        ``redis://127.0.0.1:<port>/0``.

    Raises:
        pytest.fail.Exception / pytest.skip.Exception: no ``redis-server`` (skip only if the env var allows it).
        RuntimeError: the server did not answer PING.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        why = "redis-server is not installed (`make install` installs it: apt-get install redis-server)"
        if os.environ.get(ALLOW_MISSING) == "1":
            pytest.skip(f"{why}; skipped because {ALLOW_MISSING}=1")
        pytest.fail(f"{why}; set {ALLOW_MISSING}=1 to skip the Redis tests instead", pytrace=False)
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "redis.log"
    aof = ["--appendonly", "yes", "--appendfsync", "always"] if persist else ["--appendonly", "no"]
    ports = [port] if port is not None else (_free_port() for _ in range(attempts))
    for listen in ports:
        command = [binary, "--port", str(listen), "--bind", HOST, "--save", "", *aof,
                   "--daemonize", "no", "--dir", str(workdir), "--logfile", str(log)]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        url = f"redis://{HOST}:{listen}/0"
        try:
            deadline = time.monotonic() + timeout_s
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    with closing(redis.Redis(host=HOST, port=listen, socket_timeout=1)) as client:
                        if client.ping():
                            break
                except redis.ConnectionError:
                    time.sleep(0.05)
            else:
                continue  # exited (port taken?) or never answered: try another port
            yield url
            return
        finally:
            _stop(process)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    tried = f"port {port}" if port is not None else f"{attempts} ports"
    raise RuntimeError(f"redis-server did not answer PING on {HOST} ({tried}); log:\n{tail}")
