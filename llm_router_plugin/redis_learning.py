"""The shared learning state on Redis: decision count, LP sample and solve lease of every router on a namespace.

Routers on many hosts share a budget through :class:`~llm_router_plugin.redis_ledger.RedisLedger`; they must also pace
it by the traffic of every host and solve its dual weights on every host's decisions, one solver at a time. Layout,
under the same ``{namespace}`` hash tag as the ledger::

    {ns}:learning:count     decisions made by every router on the namespace
    {ns}:learning:first     epoch seconds of the first of them (SET NX)
    {ns}:learning:sample    list of the newest decisions' estimates (JSON), newest first, trimmed to ``sample_size``
    {ns}:lease:<name>       the holder of a lease, expiring with it
    {ns}:learning:profile:<id>    the model a decision went to, so that any router can take its feedback (a day)
    {ns}:learning:feedback:<id>   a score taken by a router that did not make the decision, for the one that did

The sample is a list trimmed on every push, not a stream: the LP reads the newest N rows and nothing else (no consumer
groups, no acknowledgements, no ids to keep), and ``LPUSH`` + ``LTRIM`` keep it bounded in O(1) per decision.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from llm_router_plugin.learning import SAMPLE_SIZE
from llm_router_plugin.redis_ledger import connect, key_prefix, reachable
from llm_router_plugin.validation import lease_ms

#: Seconds a decision can be scored by a router other than its own (its profile and a score left for it are kept).
RETENTION_S = 86_400

# Take the lease if it is free or already ours (a renewal); never take another holder's live lease.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisLearningStore:
    """Decision count, LP sample and leases shared by every router on a Redis namespace.

    Args:
        client_or_url: a ``redis.Redis`` client or a ``redis://`` URL (the client connects on first use).
        namespace: the ledger's namespace (routers sharing budgets share their learning).
        password: the server's password, for a URL.
        sample_size: how many of the newest decisions' estimates the sample keeps.
        retention_s: how long another router can score a decision (its profile, and a score left for it, are kept
            this long).

    Raises:
        ValueError: the namespace is empty or holds braces, ``sample_size`` is below 1, or a password comes with a
            client.

    Every method raises :class:`~llm_router_plugin.errors.LedgerUnavailableError` when the server cannot be reached.
    """

    def __init__(
        self, client_or_url: redis.Redis | str, *, namespace: str = "llm-router", password: str | None = None,
        sample_size: int = SAMPLE_SIZE, retention_s: int = RETENTION_S,
    ) -> None:
        prefix = key_prefix(namespace)
        if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1:
            raise ValueError(f"sample_size: must be a whole number of at least 1, got {sample_size!r}")
        if isinstance(retention_s, bool) or not isinstance(retention_s, int) or retention_s < 1:
            raise ValueError(f"retention_s: must be a whole number of seconds of at least 1, got {retention_s!r}")
        self._owns_client = isinstance(client_or_url, str)
        self.client = connect(client_or_url, password)
        self.sample_size = sample_size
        self.retention_s = retention_s
        self._count_key = f"{prefix}:learning:count"
        self._first_key = f"{prefix}:learning:first"
        self._sample_key = f"{prefix}:learning:sample"
        self._lease_prefix = f"{prefix}:lease:"
        self._profile_prefix = f"{prefix}:learning:profile:"
        self._feedback_prefix = f"{prefix}:learning:feedback:"
        self._acquire = self.client.register_script(_ACQUIRE)
        self._release = self.client.register_script(_RELEASE)

    def close(self) -> None:
        """Close the client if the store made it from a URL."""
        if self._owns_client:
            self.client.close()

    def add(self, decision_id: str, profile: str, estimates: dict[str, dict[str, float]], created_at: float) -> int:
        """Count a decision, push its estimates onto the sample and note its profile (one transaction).

        Args:
            decision_id: the decision.
            profile: the chosen deployment's model (``""``: a declined query, which nobody scores).
            estimates: deployment → {"quality", "tokens", "usd", ...} at decision time.
            created_at: epoch seconds of the decision.

        Returns:
            The number of decisions made on the namespace, this one included.
        """
        with reachable(self.client):
            pipe = self.client.pipeline(transaction=True)
            pipe.incr(self._count_key)
            pipe.set(self._first_key, repr(float(created_at)), nx=True)
            pipe.lpush(self._sample_key, json.dumps(estimates))
            pipe.ltrim(self._sample_key, 0, self.sample_size - 1)
            if profile:
                pipe.set(self._profile_prefix + decision_id, profile, ex=self.retention_s)
            count, *_ = pipe.execute()
        return int(count)

    def profile_of(self, decision_id: str) -> str | None:
        """The profile of a decision made on the namespace within ``retention_s``."""
        with reachable(self.client):
            raw = self.client.get(self._profile_prefix + decision_id)
        return None if raw is None else str(raw)

    def leave_feedback(self, decision_id: str, quality: float) -> None:
        """Keep a score for the decision's router for ``retention_s`` (a later score replaces it)."""
        with reachable(self.client):
            self.client.set(self._feedback_prefix + decision_id, repr(float(quality)), ex=self.retention_s)

    def feedback_for(self, decision_id: str) -> float | None:
        """The score kept for a decision (``None``: none)."""
        with reachable(self.client):
            raw = self.client.get(self._feedback_prefix + decision_id)
        return None if raw is None else float(raw)

    def count(self) -> int:
        """Decisions made by every router on the namespace."""
        with reachable(self.client):
            raw = self.client.get(self._count_key)
        return 0 if raw is None else int(raw)

    def first_time(self) -> float | None:
        """Epoch seconds of the first decision on the namespace (``None`` before it)."""
        with reachable(self.client):
            raw = self.client.get(self._first_key)
        return None if raw is None else float(raw)

    def recent(self, limit: int) -> list[dict[str, dict[str, float]]]:
        """The estimates of the newest ``limit`` decisions (at most ``sample_size``), oldest first."""
        if limit < 1:
            return []
        with reachable(self.client):
            rows: list[Any] = self.client.lrange(self._sample_key, 0, limit - 1)
        return [json.loads(row) for row in reversed(rows)]

    def acquire(self, name: str, owner: str, lease_s: float) -> bool:
        """Take (or renew) the lease ``name`` for ``lease_s`` seconds unless another owner holds it.

        Args:
            name: the lease (e.g. ``"solve"``).
            owner: a token unique to the caller.
            lease_s: how long the lease lasts if not released (a holder that dies frees it then).

        Returns:
            Whether ``owner`` holds the lease now.

        Raises:
            ValueError: ``lease_s`` is not a finite number above 0.
        """
        ms = lease_ms(lease_s)
        with reachable(self.client):
            return int(self._acquire(keys=[self._lease_prefix + name], args=[owner, ms])) == 1

    def release(self, name: str, owner: str) -> None:
        """Give the lease back if ``owner`` holds it (another holder's lease is left alone)."""
        with reachable(self.client):
            self._release(keys=[self._lease_prefix + name], args=[owner])
