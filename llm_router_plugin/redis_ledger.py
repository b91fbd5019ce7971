"""A Redis budget ledger: the :class:`~llm_router_plugin.budget.BudgetLedger` semantics, shared by many hosts.

Same promises as :class:`~llm_router_plugin.budget.SQLiteLedger`: a hold is granted atomically with the check that
the limit covers its required headroom; ``settle`` replaces a hold (live, expired or released) by the actual usage
once; ``release`` drops a hold or refunds its expiry charge; a hold whose outcome never came is charged at its
reserved amount when it times out.

Every state change runs in one Lua script over the keys of a single deployment and window, so two routers on
different machines can never both take the last of a budget. Layout, all under the hash tag ``{namespace}`` (one
cluster slot, so the scripts may touch any of them)::

    {ns}:anchor                     epoch seconds window 0 started (SET NX: the first ledger to start sets it)
    {ns}:state:<key>                a JSON value (``get_state``/``set_state``)
    {ns}:decision:<id>              JSON ``[deployment, window]``: where a decision's hold lives
    {ns}:w:<deployment>:<window>:spend   hash unit → amount charged (``%.17g`` text: exact doubles)
    {ns}:w:<deployment>:<window>:holds   hash decision id → ``"<status> <tokens> <usd>"``
    {ns}:w:<deployment>:<window>:live    sorted set of live holds, scored by their expiry time
    {ns}:w:<deployment>:<window>:held    hash unit → sum of the live holds (zeroed when the last one goes)

Keys of a deployment with a timed window expire ``window_seconds + ttl_margin_s`` after their last write; those of
a ``"total"`` budget (or of a deployment whose window the ledger was not told) never expire.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import redis

from llm_router_plugin.budget import UNITS, Reservation, Settlement
from llm_router_plugin.errors import LedgerUnavailableError

# What the client raises when the server cannot answer (refused, reset, timed out, loading, no master, read-only):
# budgets cannot
# be checked. Other errors (a script bug, a wrong type) are not outages and stay as they are.
UNREACHABLE: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ClusterDownError,
    redis.exceptions.ReadOnlyError,  # a replica that took over and refuses writes: the ledger cannot be changed
)

# Shared by the scripts. Amounts stay text in Redis and the arithmetic is Lua's (doubles, like SQLite's REAL): Lua's
# tostring keeps 14 digits, "%.17g" round-trips a double, so spend adds up to the same doubles SQLite computes.
_LUA_COMMON = """
local function fmt(x) return string.format('%.17g', x) end

local function parse(rec)
  local status, tokens, usd = string.match(rec, '^(%S+) (%S+) (%S+)$')
  return status, tonumber(tokens), tonumber(usd), tokens, usd
end

-- unpack() is bounded by Lua's C stack (about 8000 values): ZREM of many ids goes in chunks.
local function zrem(live, ids)
  for first = 1, #ids, 1000 do
    redis.call('ZREM', live, unpack(ids, first, math.min(first + 999, #ids)))
  end
end

local function charge(spend, unit, delta)
  local current = tonumber(redis.call('HGET', spend, unit) or '0')
  redis.call('HSET', spend, unit, fmt(current + delta))
end

-- Live holds are summed as they come and go, so a script costs O(1) per hold and never O(live holds) (a script
-- blocks the whole server). When the last live hold goes the sums are zeroed: rounding never leaves 1e-13 "held".
local function unhold(held, live, tokens, usd)
  if redis.call('ZCARD', live) == 0 then
    redis.call('DEL', held)
  else
    charge(held, 'tokens', -tokens)
    charge(held, 'usd', -usd)
  end
end

-- Charge every live hold of this window whose time is up at its reserved amount (the call may have happened).
-- Summed first, then added once: the same arithmetic as SQLiteLedger's GROUP BY.
local function expire(spend, holds, live, held, now)
  local stale = redis.call('ZRANGEBYSCORE', live, '-inf', now)
  if #stale == 0 then return end
  local tokens, usd = 0, 0
  for _, id in ipairs(stale) do
    local _, t, u, ts, us = parse(redis.call('HGET', holds, id))
    tokens = tokens + t
    usd = usd + u
    redis.call('HSET', holds, id, 'expired ' .. ts .. ' ' .. us)
  end
  zrem(live, stale)
  unhold(held, live, tokens, usd)
  charge(spend, 'tokens', tokens)
  charge(spend, 'usd', usd)
end

local function held_sums(held)
  return tonumber(redis.call('HGET', held, 'tokens') or '0'), tonumber(redis.call('HGET', held, 'usd') or '0')
end

-- Timed windows: keep the keys a while after their window, for late settlements; empty ttl = never expire.
local function touch(ttl, keys)
  if ttl ~= '' then
    for _, key in ipairs(keys) do redis.call('PEXPIRE', key, ttl) end
  end
end
"""

# KEYS: spend, holds, live, held, decision index. ARGV: id, now, expires_at, tokens, usd, ttl_ms, index value, then
# (unit, limit, need) triples. Returns 1 held, 0 refused, -1 the decision already has a hold.
_RESERVE = _LUA_COMMON + """
local spend, holds, live, held, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, now, ttl = ARGV[1], ARGV[2], ARGV[6]
if redis.call('EXISTS', index) == 1 or redis.call('HEXISTS', holds, id) == 1 then return -1 end
expire(spend, holds, live, held, now)
local held_tokens, held_usd = held_sums(held)
local i = 8
while i + 2 <= #ARGV do
  local unit, limit, need = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local spent = tonumber(redis.call('HGET', spend, unit) or '0')
  local on_hold = 0
  if unit == 'tokens' then on_hold = held_tokens elseif unit == 'usd' then on_hold = held_usd end
  if spent + on_hold + need > limit then
    touch(ttl, {spend, holds, live, held})
    return 0
  end
  i = i + 3
end
redis.call('HSET', holds, id, 'held ' .. ARGV[4] .. ' ' .. ARGV[5])
redis.call('ZADD', live, ARGV[3], id)
charge(held, 'tokens', tonumber(ARGV[4]))
charge(held, 'usd', tonumber(ARGV[5]))
redis.call('SET', index, ARGV[7])
touch(ttl, {spend, holds, live, held, index})
return 1
"""

# KEYS: spend, holds, live, held. ARGV: id, now, ttl_ms, then (unit, amount) pairs. Returns nil if there is nothing to
# settle, else {status before, tokens held, usd held}.
_SETTLE = _LUA_COMMON + """
local spend, holds, live, held = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, now, ttl = ARGV[1], ARGV[2], ARGV[3]
expire(spend, holds, live, held, now)
local rec = redis.call('HGET', holds, id)
if not rec then return nil end
local status, tokens, usd, ts, us = parse(rec)
-- A released hold can still be settled: usage reported after a failure report means the call was answered.
if status ~= 'held' and status ~= 'expired' and status ~= 'released' then return nil end
redis.call('HSET', holds, id, 'settled ' .. ts .. ' ' .. us)
if status == 'held' then
  redis.call('ZREM', live, id)
  unhold(held, live, tokens, usd)
end
local actual = {}
local units = {}
for i = 4, #ARGV - 1, 2 do
  actual[ARGV[i]] = tonumber(ARGV[i + 1])
  table.insert(units, ARGV[i])
end
if status == 'expired' then
  -- The expiry charged the reserved amount: replace it by the actual usage (tokens and usd, as SQLiteLedger).
  charge(spend, 'tokens', (actual['tokens'] or 0) - tokens)
  charge(spend, 'usd', (actual['usd'] or 0) - usd)
else
  for _, unit in ipairs(units) do charge(spend, unit, actual[unit]) end
end
touch(ttl, {spend, holds, live, held})
return {status, ts, us}
"""

# KEYS: spend, holds, live, held. ARGV: id, ttl_ms. Returns 1 if a hold was dropped or its expiry charge refunded.
# No expiry pass, as SQLiteLedger: releasing a hold past its time without the charge nets the same as both.
_RELEASE = _LUA_COMMON + """
local spend, holds, live, held = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, ttl = ARGV[1], ARGV[2]
local rec = redis.call('HGET', holds, id)
if not rec then return 0 end
local status, tokens, usd, ts, us = parse(rec)
if status ~= 'held' and status ~= 'expired' then return 0 end
redis.call('HSET', holds, id, 'released ' .. ts .. ' ' .. us)
if status == 'held' then
  redis.call('ZREM', live, id)
  unhold(held, live, tokens, usd)
else
  charge(spend, 'tokens', -tokens)
  charge(spend, 'usd', -usd)
end
touch(ttl, {spend, holds, live, held})
return 1
"""

# KEYS: spend, holds, live, held. ARGV: now, ttl_ms. Returns {spend hash as a flat list, tokens held, usd held}.
_USAGE = _LUA_COMMON + """
local spend, holds, live, held = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
expire(spend, holds, live, held, ARGV[1])
touch(ARGV[2], {spend, holds, live, held})
local tokens, usd = held_sums(held)
return {redis.call('HGETALL', spend), fmt(tokens), fmt(usd)}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def address(client: redis.Redis) -> str:
    """The client's server as ``redis://host:port/db`` (or ``unix://path``): never its credentials."""
    kwargs = client.connection_pool.connection_kwargs
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={db}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


def connect(client_or_url: redis.Redis | str, password: str | None) -> redis.Redis:
    """A client for a ``redis://`` URL (with ``password``, never taken from the URL's text), or the client given.

    Raises:
        ValueError: a password comes with a client (it brings its own).
    """
    if not isinstance(client_or_url, str):
        if password is not None:
            raise ValueError("password: only a URL takes a password (configure it on the client passed in)")
        return client_or_url
    auth = {} if password is None else {"password": password}
    return redis.Redis.from_url(client_or_url, decode_responses=True, **auth)


def key_prefix(namespace: str) -> str:
    """``{namespace}``: the hash tag that keeps a namespace's keys in one cluster slot.

    Raises:
        ValueError: the namespace is empty or holds ``{`` or ``}`` (they would move the tag and mix namespaces).
    """
    if not namespace or "{" in namespace or "}" in namespace:
        raise ValueError(f"namespace must be non-empty and without braces, got {namespace!r}")
    return "{" + namespace + "}"


@contextmanager
def reachable(client: redis.Redis) -> Iterator[None]:
    """Turn the client's "cannot reach the server" errors into :class:`LedgerUnavailableError` (naming the server,
    never its password)."""
    try:
        yield
    except UNREACHABLE as exc:
        reason = str(exc) or type(exc).__name__
        password = client.connection_pool.connection_kwargs.get("password")
        if password:
            reason = reason.replace(str(password), "***")
        raise LedgerUnavailableError(address(client), reason) from None


def _usage_of(reply: Any) -> tuple[dict[str, float], dict[str, float]]:
    """(spent, held) from the usage script's reply: flat unit/amount pairs, then the held tokens and USD."""
    flat, tokens, usd = reply
    spent = dict.fromkeys(UNITS, 0.0)
    pairs = [_text(v) for v in flat]
    for unit, amount in zip(pairs[::2], pairs[1::2], strict=True):
        spent[unit] = float(amount)
    return spent, {"tokens": float(_text(tokens)), "usd": float(_text(usd))}


def _num(value: float) -> str:
    # repr is the shortest text that parses back to the same double (Lua's tonumber reads it exactly).
    return repr(float(value))


class RedisLedger:
    """The budget ledger on a Redis server: every check-and-hold, settlement and expiry is one Lua script.

    Args:
        client_or_url: a ``redis.Redis`` client (its pool is shared by every thread) or a ``redis://`` URL.
        namespace: prefix of every key; routers sharing budgets share a namespace, others must not.
        window_seconds: deployment → its window length in seconds (``None``: ``"total"``). Keys of a timed window
            expire ``ttl_margin_s`` after the window; deployments not listed keep their keys forever.
        ttl_margin_s: how long a timed window's keys outlive it, for settlements that arrive late.
        password: the server's password, for a URL (a client passed in brings its own); overrides one in the URL.

    Raises:
        ValueError: the namespace is empty or holds ``{`` or ``}``, a window is not positive, the margin negative, or
            a password comes with a client.
        redis.RedisError: the server cannot be reached (the anchor is read at start).

    Once started, every method that reaches the server raises
    :class:`~llm_router_plugin.errors.LedgerUnavailableError` (naming the server, never its credentials) when it
    cannot be reached or times out, instead of the client's own error.
    """

    def __init__(
        self,
        client_or_url: redis.Redis | str,
        *,
        namespace: str = "llm-router",
        window_seconds: Mapping[str, float | None] | None = None,
        ttl_margin_s: float = 3600.0,
        password: str | None = None,
    ) -> None:
        self._prefix = key_prefix(namespace)
        windows = dict(window_seconds or {})
        for name, seconds in windows.items():
            if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
                raise ValueError(f"window_seconds: {name}={seconds} must be a positive number of seconds or None")
        if not (math.isfinite(ttl_margin_s) and ttl_margin_s >= 0):
            raise ValueError(f"ttl_margin_s must be finite and non-negative, got {ttl_margin_s}")
        self._owns_client = isinstance(client_or_url, str)
        self.client = connect(client_or_url, password)
        self.namespace = namespace
        self._windows = windows
        self._margin = ttl_margin_s
        self._reserve = self.client.register_script(_RESERVE)
        self._settle = self.client.register_script(_SETTLE)
        self._release = self.client.register_script(_RELEASE)
        self._usage = self.client.register_script(_USAGE)
        # Every ledger on the namespace counts windows from the same instant: the first to start sets it.
        self.client.set(f"{self._prefix}:anchor", _num(time.time()), nx=True)
        self._anchor = float(_text(self.client.get(f"{self._prefix}:anchor")))

    @property
    def anchor(self) -> float:
        """Epoch seconds at which window 0 started (set by the first ledger on the namespace)."""
        return self._anchor

    def close(self) -> None:
        """Close the client if the ledger made it from a URL (a client passed in belongs to the caller)."""
        if self._owns_client:
            self.client.close()

    def ping(self) -> None:
        """Check that the server answers.

        Raises:
            LedgerUnavailableError: the server cannot be reached.
        """
        with self._reachable():
            self.client.ping()

    def _reachable(self) -> AbstractContextManager[None]:
        return reachable(self.client)

    def _keys(self, deployment: str, window: int) -> list[str]:
        # The window is an integer and the suffix fixed, so a deployment name with colons cannot collide.
        base = f"{self._prefix}:w:{deployment}:{int(window)}"
        return [f"{base}:spend", f"{base}:holds", f"{base}:live", f"{base}:held"]

    def _index_key(self, decision_id: str) -> str:
        return f"{self._prefix}:decision:{decision_id}"

    def _ttl_ms(self, deployment: str) -> str:
        seconds = self._windows.get(deployment)
        return "" if seconds is None else str(math.ceil((seconds + self._margin) * 1000))

    def _where(self, decision_id: str) -> tuple[str, int] | None:
        # The index is written once, with the hold, by the reserve script: reading it first is no race.
        raw = self.client.get(self._index_key(decision_id))
        if raw is None:
            return None
        deployment, window = json.loads(_text(raw))
        return str(deployment), int(window)

    def try_reserve(self, reservation: Reservation, now: float | None = None) -> bool:
        """Hold the reservation's amounts if every limited unit covers its required headroom (atomic check-and-hold).

        Args:
            reservation: what to hold, where, and the limits to respect.
            now: the clock (epoch seconds); defaults to ``time.time()``.

        Returns:
            True if held; False if some limit would be exceeded (nothing is held then).

        Raises:
            ValueError: an amount is negative or a unit is unknown, or the decision already has a hold.
            LedgerUnavailableError: the server cannot be reached (nothing is known to be held).
        """
        now = time.time() if now is None else now
        required = reservation.amounts if reservation.required is None else reservation.required
        for name, amounts in (("amounts", reservation.amounts), ("required", required)):
            for unit, amount in amounts.items():
                if unit not in UNITS or amount < 0 or not math.isfinite(amount):
                    raise ValueError(f"{name}: {unit}={amount} must be a known unit with a finite, non-negative amount")
        checks: list[str] = []
        for unit, limit in reservation.limits.items():
            need = max(required.get(unit, 0.0), reservation.amounts.get(unit, 0.0))
            checks += [unit, _num(limit), _num(need)]  # "inf" and "nan" read as in Python (C strtod)
        deployment, window = reservation.deployment, int(reservation.window)
        with self._reachable():
            result = self._reserve(
                keys=[*self._keys(deployment, window), self._index_key(reservation.decision_id)],
                args=[
                    reservation.decision_id, _num(now), _num(reservation.expires_at),
                    _num(reservation.amounts.get("tokens", 0.0)), _num(reservation.amounts.get("usd", 0.0)),
                    self._ttl_ms(deployment), json.dumps([deployment, window]), *checks,
                ],
            )
        if int(result) < 0:
            raise ValueError(f"decision_id: {reservation.decision_id!r} already has a hold")
        return int(result) == 1

    def settle(self, decision_id: str, actual: Mapping[str, float], now: float | None = None) -> Settlement | None:
        """Charge a decision's actual usage to its deployment and window, dropping its hold.

        A hold that expired was charged at its reserved amount; settling it replaces that charge by the actual usage.
        A released hold is charged the actual usage (the call was answered after all). Settling twice charges once.

        Args:
            decision_id: the decision.
            actual: unit → actual usage.
            now: the clock.

        Returns:
            What was held and charged, or ``None`` if the decision is unknown or already settled.

        Raises:
            ValueError: an actual amount is not finite (it would poison the shared totals).
            LedgerUnavailableError: the server cannot be reached (settling again once it is back charges once).
        """
        now = time.time() if now is None else now
        for unit, amount in actual.items():
            if not math.isfinite(amount):
                raise ValueError(f"actual: {unit}={amount} must be finite")
        with self._reachable():
            where = self._where(decision_id)
            if where is None:
                return None
            deployment, window = where
            pairs = [item for unit, amount in actual.items() for item in (unit, _num(amount))]
            result = self._settle(
                keys=self._keys(deployment, window), args=[decision_id, _num(now), self._ttl_ms(deployment), *pairs]
            )
        if result is None:
            return None
        status, tokens, usd = (_text(v) for v in result)
        return Settlement(deployment, {"tokens": float(tokens), "usd": float(usd)}, dict(actual), status == "expired")

    def release(self, decision_id: str) -> bool:
        """Drop a live hold, or refund an expired hold's charge: the call failed, nothing was spent.

        Returns:
            True if a hold was dropped or refunded.

        Raises:
            LedgerUnavailableError: the server cannot be reached.
        """
        with self._reachable():
            where = self._where(decision_id)
            if where is None:
                return False
            deployment, window = where
            result = self._release(keys=self._keys(deployment, window), args=[decision_id, self._ttl_ms(deployment)])
        return int(result) == 1

    def usage(
        self, deployment: str, window: int, now: float | None = None
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Spent and currently held amounts of a deployment in a window, by unit.

        Raises:
            LedgerUnavailableError: the server cannot be reached.
        """
        return self.usages([(deployment, window)], now)[0]

    def usages(
        self, windows: Sequence[tuple[str, int]], now: float | None = None
    ) -> list[tuple[dict[str, float], dict[str, float]]]:
        """:meth:`usage` of several (deployment, window) pairs, in one round trip (a pipeline), in their order.

        Raises:
            LedgerUnavailableError: the server cannot be reached.
        """
        now = time.time() if now is None else now
        with self._reachable():
            pipe = self.client.pipeline(transaction=False)
            for deployment, window in windows:
                self._usage(keys=self._keys(deployment, window), args=[_num(now), self._ttl_ms(deployment)],
                            client=pipe)
            replies = pipe.execute()
        return [_usage_of(reply) for reply in replies]

    def get_state(self, key: str) -> Any:
        """A persisted JSON value, or ``None``.

        Raises:
            LedgerUnavailableError: the server cannot be reached.
        """
        with self._reachable():
            raw = self.client.get(f"{self._prefix}:state:{key}")
        return None if raw is None else json.loads(_text(raw))

    def set_state(self, key: str, value: Any) -> None:
        """Persist a JSON value (never expires).

        Raises:
            LedgerUnavailableError: the server cannot be reached.
        """
        with self._reachable():
            self.client.set(f"{self._prefix}:state:{key}", json.dumps(value))
