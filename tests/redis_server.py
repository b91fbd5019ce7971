"""A throwaway ``redis-server`` on 127.0.0.1 for the Redis ledger's tests (:class:`RedisServer`, with pytest's
skip-or-fail policy for a machine without the binary).

``make install`` installs Debian's ``redis-server``, so a missing binary is an error by default; set
``LLM_ROUTER_TESTS_ALLOW_NO_REDIS=1`` to skip the Redis tests instead (a machine where nothing may be installed).
The server listens on a free port of its own, so a system Redis on 6379 (Debian starts one on install) is never used.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from llm_router_plugin.testing import RedisServer

ALLOW_MISSING = "LLM_ROUTER_TESTS_ALLOW_NO_REDIS"


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """Run ``redis-server`` on 127.0.0.1 and a free port; yield its URL; stop it (by its own PID) at the end.

    Args:
        workdir: the server's working folder (nothing is saved there: no RDB, no AOF) and its log.

    Yields:
        ``redis://127.0.0.1:<port>/0``.

    Raises:
        pytest.fail.Exception / pytest.skip.Exception: no ``redis-server`` (skip only if the env var allows it).
        RuntimeError: the server did not answer PING.
    """
    if shutil.which("redis-server") is None:
        why = "redis-server is not installed (`make install` installs it: apt-get install redis-server)"
        if os.environ.get(ALLOW_MISSING) == "1":
            pytest.skip(f"{why}; skipped because {ALLOW_MISSING}=1")
        pytest.fail(f"{why}; set {ALLOW_MISSING}=1 to skip the Redis tests instead", pytrace=False)
    with RedisServer(workdir) as server:
        yield server.url
