"""The ``redis`` state backend: every worker of every instance shares one Redis (or Valkey).

Client: the ``redis`` package's asyncio API (``pip install 'ccproxy-core[redis]'``), imported only
when this backend is chosen. One round trip per request: ``take`` is one Lua script (``EVALSHA``;
Redis runs a script whole, so a check and its count cannot interleave with another instance's),
and ``add`` only merges its amounts into a pending set (per window) that rides along with the
next ``take``, in the same script, or is sent on its own at most :data:`FLUSH_AFTER` seconds
later. So tokens and spend reach the other instances within that delay; amounts that cannot be
sent stay pending until Redis answers again. ``read`` sends what is pending first. Window ends
are Redis's own key expiries, so the instances' clocks do not matter.

No retry inside an operation and ``state.timeout`` on connecting and on every read: a Redis that
is down or stalled fails the operation at once (:class:`StateUnavailable`); the pool reconnects
on a later operation, so the gateway recovers by itself when Redis returns.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence
from urllib.parse import urlsplit

from . import ADMITTED, PREFIX, Check, Outages, StateUnavailable, Verdict, Window

#: Seconds an ``add`` may wait for a ``take`` to carry it before it is sent on its own.
FLUSH_AFTER = 0.05

# Adds first (KEYS[1..n], ARGV: n, then per window its period (ms) and amount), then the take
# (KEYS[n+1..], per window its period (ms), limit (-1: none) and amount): one script, one round trip.
_TAKE = """
local n = tonumber(ARGV[1])
for i = 1, n do
  redis.call('INCRBYFLOAT', KEYS[i], ARGV[2 * i])
  if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ARGV[2 * i + 1]) end
end
local base = 2 * n + 1
for i = n + 1, #KEYS do
  local j = i - n
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  local limit = tonumber(ARGV[base + 3 * j - 1])
  if limit >= 0 and value >= limit then
    return {j, redis.call('PTTL', KEYS[i])}
  end
end
for i = n + 1, #KEYS do
  local j = i - n
  if tonumber(ARGV[base + 3 * j]) ~= 0 then
    redis.call('INCRBYFLOAT', KEYS[i], ARGV[base + 3 * j])
    if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ARGV[base + 3 * j - 2]) end
  end
end
return {0, 0}
"""
# The adds alone (the first part of _TAKE, same arguments).
_ADD = _TAKE[: _TAKE.index("local base")] + "return 0\n"


def describe(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    host = parts.hostname or "localhost"
    return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path or ''}"


class RedisState:
    kind = "redis"

    def __init__(self, url: str, timeout: float, outages: Outages) -> None:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        self.outages = outages
        self.timeout = timeout
        self._errors = (RedisError, OSError, asyncio.TimeoutError)
        self.client = redis.asyncio.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_error=[],
        )
        self._take = self.client.register_script(_TAKE)
        self._add = self.client.register_script(_ADD)
        self._pending: dict[str, list[Any]] = {}  # key -> [period (ms), amount]
        self._flush: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task[None]] = set()

    def _adds(self) -> tuple[list[str], list[Any], dict[str, list[Any]]]:
        """The pending adds as script keys and arguments, and the pending set they empty."""
        pending, self._pending = self._pending, {}
        keys, args = list(pending), [len(pending)]
        for period, amount in pending.values():
            args += [amount, period]
        return keys, args, pending

    def _restore(self, pending: dict[str, list[Any]]) -> None:
        """Put amounts that could not be sent back into the pending set."""
        for key, (period, amount) in pending.items():
            entry = self._pending.setdefault(key, [period, 0])
            entry[1] += amount

    async def _run(self, call: Any) -> Any:
        try:
            result = await call
        except self._errors as exc:
            raise self.outages.failed(exc) from None
        self.outages.ok()
        return result

    async def take(self, checks: Sequence[Check]) -> Verdict:
        keys, args, pending = self._adds()
        for check in checks:
            keys.append(PREFIX + check.window.name)
            args += [int(check.window.period * 1000), -1 if check.limit is None else check.limit, check.amount]
        try:
            refused, ttl = await self._run(self._take(keys=keys, args=args))
        except BaseException:
            self._restore(pending)
            raise
        return ADMITTED if not refused else Verdict(int(refused) - 1, max(int(ttl), 0) / 1000)

    async def add(self, amounts: Sequence[tuple[Window, float]]) -> None:
        for window, amount in amounts:
            if amount:
                entry = self._pending.setdefault(PREFIX + window.name, [int(window.period * 1000), 0])
                entry[1] += amount
        if self._pending and self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(FLUSH_AFTER, self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush = None
        task = asyncio.get_running_loop().create_task(self._send_quietly())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _send_quietly(self) -> None:
        try:
            await self._send_pending()
        except StateUnavailable:
            pass  # logged once per outage; the amounts stay pending

    async def _send_pending(self) -> None:
        """Send the pending adds on their own (none left: nothing); a failure keeps them pending."""
        if not self._pending:
            return
        keys, args, pending = self._adds()
        try:
            await self._run(self._add(keys=keys, args=args))
        except BaseException:
            self._restore(pending)
            if self._flush is None:  # try again later (the outage is logged once)
                self._flush = asyncio.get_running_loop().call_later(1.0, self._flush_soon)
            raise

    async def read(self, windows: Sequence[Window]) -> list[tuple[float, float]]:
        await self._send_pending()
        pipe = self.client.pipeline(transaction=False)
        for window in windows:
            pipe.get(PREFIX + window.name)
            pipe.pttl(PREFIX + window.name)
        answers = await self._run(pipe.execute())
        found = []
        for value, ttl in zip(answers[::2], answers[1::2]):
            found.append((0.0, 0.0) if value is None else (float(value), max(int(ttl), 0) / 1000))
        return found

    async def get(self, key: str) -> bytes | None:
        return await self._run(self.client.get(PREFIX + key))

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        await self._run(self.client.set(PREFIX + key, value, px=max(int(ttl * 1000), 1)))

    async def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        await self._send_quietly()
        try:
            await self.client.aclose()
        except self._errors:
            pass
