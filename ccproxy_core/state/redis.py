"""The ``redis`` state backend: every worker of every instance shares one Redis (or Valkey).

Client: the ``redis`` package's asyncio API (``pip install 'ccproxy-core[redis]'``), imported only
when this backend is chosen. One round trip per request: ``take`` is one Lua script (``EVALSHA``;
Redis runs a script whole, so a check and its count cannot interleave with another instance's),
and ``add`` only merges its amounts into a pending set (per window) that rides along with the
next ``take``, in the same script, or is sent on its own at most :data:`FLUSH_AFTER` seconds
later. So tokens and spend reach the other instances within that delay; amounts that cannot be
sent stay pending until Redis answers again. ``read`` sends what is pending first. Window ends
are Redis's own key expiries, so the instances' clocks do not matter.

The scripts (``take`` and the adds sent alone) go through :class:`Pipe`: one connection per
worker that redis-py opens (URL, TLS, ACL user and password, db, unix socket), then a few lines
of our own write each command pre-packed and pipelined (one write per loop turn, the replies in
order). redis-py's own call cost ~100 µs of CPU per ``EVALSHA`` (its pool, its packing, a task
and two timeouts per call); see docs/instances.md, *Cost*. ``read``, ``get`` and ``put`` stay
redis-py calls.

No retry inside an operation and ``state.timeout`` on connecting and on every read (a command's
reply not in within it fails the connection and every command on it): a Redis that is down or
stalled fails the operation at once (:class:`StateUnavailable`); a later operation connects
again, so the gateway recovers by itself when Redis returns. A Redis restarted empty answers
``NOSCRIPT``: the script is then sent whole (``EVAL``), which nothing ran before.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from typing import Any, Sequence
from urllib.parse import urlsplit

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
_SHA = {script: hashlib.sha1(script.encode()).hexdigest() for script in (_TAKE, _ADD)}
#: Bytes of an unfinished reply a pipe holds (the scripts' replies are a few dozen bytes): more fails it.
MAX_BUFFERED = 1 << 20


def pack(*args: str | bytes | int | float) -> bytes:
    """One command in the Redis protocol (numbers written as redis-py writes them: ``repr``)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg if isinstance(arg, bytes) else repr(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def parse(buffer: bytes, pos: int) -> tuple[Any, int] | None:
    """The reply at ``pos`` and where the next starts; None while it is incomplete. An error reply is
    a ``ResponseError`` returned, not raised; a kind of reply the scripts never get is ``InvalidResponse``."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, line, pos = buffer[pos:pos + 1], buffer[pos + 1:end], end + 2
    if kind == b":":
        return int(line), pos
    if kind == b"*" or kind == b">":
        items = []
        for _ in range(int(line)):
            found = parse(buffer, pos)
            if found is None:
                return None
            item, pos = found
            items.append(item)
        return (items if kind == b"*" else Pipe.PUSH), pos
    if kind == b"-":
        return ResponseError(line.decode(errors="replace")), pos
    if kind == b"+":
        return line, pos
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        return (buffer[pos:pos + size], pos + size + 2) if len(buffer) >= pos + size + 2 else None
    if kind == b"_":
        return None, pos
    raise InvalidResponse(f"unexpected reply from redis: {kind!r}")


class Pipe(asyncio.Protocol):
    """One connection that takes over a connected redis-py connection's streams' transport and carries
    commands pipelined: :meth:`send` queues one, all queued in a loop turn go in one write, and
    each reply resolves its command's future, in order. A reply not in within ``timeout`` seconds
    of its command, a connection lost or a reply that cannot be parsed fails the pipe (its
    ``error``) and every command waiting on it; a failed pipe is not used again."""

    PUSH = object()  # a RESP3 push message (no command waits for it)

    def __init__(self, streams: tuple[asyncio.StreamReader, asyncio.StreamWriter], timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.streams = streams  # kept: a stream writer collected closes its transport
        self.transport = transport = streams[1].transport
        self.timeout = timeout
        self.error: Exception | None = None
        self.waiting: deque[tuple[float, asyncio.Future[Any]]] = deque()  # (deadline, reply)
        self.out: list[bytes] = []
        self.buffer = b""
        self.watchdog: asyncio.TimerHandle | None = None
        transport.set_protocol(self)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """The future of ``command``'s reply (an error reply is its result, not its exception)."""
        future = self.loop.create_future()
        if self.error is not None:
            future.set_exception(type(self.error)(*self.error.args))
            return future
        self.waiting.append((self.loop.time() + self.timeout, future))
        if not self.out:
            self.loop.call_soon(self._write)
        self.out.append(command)
        if self.watchdog is None:
            self.watchdog = self.loop.call_at(self.waiting[0][0], self._check)
        return future

    def _write(self) -> None:
        out, self.out = self.out, []
        if out and self.error is None:
            self.transport.write(b"".join(out))

    def _check(self) -> None:
        self.watchdog = None
        if self.waiting and self.waiting[0][0] <= self.loop.time():
            self.fail(RedisTimeoutError("Timeout reading from redis"))
        elif self.waiting:
            self.watchdog = self.loop.call_at(self.waiting[0][0], self._check)

    def data_received(self, data: bytes) -> None:
        buffer, pos = self.buffer + data, 0
        try:
            while (found := parse(buffer, pos)) is not None:
                reply, pos = found
                if reply is self.PUSH:
                    continue
                if not self.waiting:
                    raise ValueError("a reply to no command")
                future = self.waiting.popleft()[1]
                if not future.done():  # else its caller was cancelled
                    future.set_result(reply)
        except Exception as exc:  # noqa: BLE001 - any reply we cannot read ends the connection
            self.fail(exc if isinstance(exc, InvalidResponse) else InvalidResponse(f"bad reply from redis ({exc})"))
        self.buffer = buffer[pos:]
        if len(self.buffer) > MAX_BUFFERED:
            self.fail(InvalidResponse(f"a reply from redis over {MAX_BUFFERED} bytes"))
            self.buffer = b""

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError("Connection closed by server."))

    def fail(self, error: Exception) -> None:
        """End the pipe: close its connection now and fail what waits on it with ``error``."""
        if self.error is not None:
            return
        self.error = error
        self.transport.abort()
        if self.watchdog is not None:
            self.watchdog.cancel()
        while self.waiting:
            future = self.waiting.popleft()[1]
            if not future.done():
                future.set_exception(type(error)(*error.args))

    def close(self) -> None:
        """Close after what is written has gone."""
        if self.error is None:
            self._write()
            self.transport.close()


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
        self._pipe: Pipe | None = None
        self._connecting: asyncio.Future[Pipe] | None = None
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

    async def _connect(self) -> Pipe:
        """A pipe on a new connection; callers that come while it connects wait for the same one."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(lambda done: done.cancelled() or done.exception())  # seen
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None

    async def _open(self) -> Pipe:
        connection = self.client.connection_pool.make_connection()
        await connection.connect()  # redis-py: the URL's TLS, unix socket, AUTH or HELLO, SELECT
        streams = connection._reader, connection._writer
        connection._reader = connection._writer = None  # the transport is the pipe's now
        self._pipe = Pipe(streams, self.timeout)
        return self._pipe

    async def _script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """``EVALSHA`` of ``script`` on the pipe (``EVAL`` when Redis does not know it: nothing ran)."""
        pipe = self._pipe
        if pipe is None or pipe.error is not None:
            pipe = await self._connect()
        reply = await pipe.send(pack("EVALSHA", _SHA[script], len(keys), *keys, *args))
        if isinstance(reply, Exception) and str(reply).startswith("NOSCRIPT"):
            reply = await pipe.send(pack("EVAL", script, len(keys), *keys, *args))
        if isinstance(reply, Exception):
            raise reply
        return reply

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
            refused, ttl = await self._run(self._script(_TAKE, keys, args))
        except BaseException:
            self._restore(pending)
            raise
        return ADMITTED if not refused else Verdict(int(refused) - 1, max(int(ttl), 0) / 1000)

    async def add(self, amounts: Sequence[tuple[Window, float]]) -> None:
        self.add_now(amounts)

    def add_now(self, amounts: Sequence[tuple[Window, float]]) -> None:
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
            await self._run(self._script(_ADD, keys, args))
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
        if self._pipe is not None:
            self._pipe.close()
        try:
            await self.client.aclose()
        except self._errors:
            pass
