"""The ``redis`` state backend: every worker of every instance shares one Redis (or Valkey).

Client: the ``redis`` package's asyncio API (``pip install 'ccproxy-core[redis]'``), imported only
when this backend is chosen. Each operation is one round trip: ``take`` and ``add`` are Lua
scripts (``EVALSHA``; Redis runs a script whole, so a check and its count cannot interleave with
another instance's), ``read`` is a pipeline. Window ends are Redis's own key expiries, so the
instances' clocks do not matter.

No retry inside an operation and ``state.timeout`` on connecting and on every read: a Redis that
is down or stalled fails the operation at once (:class:`StateUnavailable`); the pool reconnects
on a later operation, so the gateway recovers by itself when Redis returns.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence
from urllib.parse import urlsplit

from . import ADMITTED, PREFIX, Check, Outages, Verdict, Window

# KEYS: the windows; ARGV: per window, its period (ms), limit (-1: none) and amount.
_TAKE = """
for i = 1, #KEYS do
  local value = tonumber(redis.call('GET', KEYS[i]) or '0')
  local limit = tonumber(ARGV[3 * i - 1])
  if limit >= 0 and value >= limit then
    return {i, redis.call('PTTL', KEYS[i])}
  end
end
for i = 1, #KEYS do
  if tonumber(ARGV[3 * i]) ~= 0 then
    redis.call('INCRBYFLOAT', KEYS[i], ARGV[3 * i])
    if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ARGV[3 * i - 2]) end
  end
end
return {0, 0}
"""

# KEYS: the windows; ARGV: per window, its period (ms) and amount.
_ADD = """
for i = 1, #KEYS do
  redis.call('INCRBYFLOAT', KEYS[i], ARGV[2 * i])
  if redis.call('PTTL', KEYS[i]) < 0 then redis.call('PEXPIRE', KEYS[i], ARGV[2 * i - 1]) end
end
return 0
"""


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

    async def _run(self, call: Any) -> Any:
        try:
            result = await call
        except self._errors as exc:
            raise self.outages.failed(exc) from None
        self.outages.ok()
        return result

    async def take(self, checks: Sequence[Check]) -> Verdict:
        keys, args = [], []
        for check in checks:
            keys.append(PREFIX + check.window.name)
            args += [int(check.window.period * 1000), -1 if check.limit is None else check.limit, check.amount]
        refused, ttl = await self._run(self._take(keys=keys, args=args))
        return ADMITTED if not refused else Verdict(int(refused) - 1, max(int(ttl), 0) / 1000)

    async def add(self, amounts: Sequence[tuple[Window, float]]) -> None:
        keys, args = [], []
        for window, amount in amounts:
            if amount:
                keys.append(PREFIX + window.name)
                args += [int(window.period * 1000), amount]
        if keys:
            await self._run(self._add(keys=keys, args=args))

    async def read(self, windows: Sequence[Window]) -> list[tuple[float, float]]:
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
        try:
            await self.client.aclose()
        except self._errors:
            pass
