"""The mock's HTTP/1.1 server: one :class:`Connection` (an :class:`asyncio.Protocol` parsing with
``httptools``) per client, and :class:`MockUpstream` on the running loop.

A connection answers its requests in order. A JSON reply without faults is written at once from
the parser's callback (the benchmark's hot path); anything that waits (a stream, a delay, a
fault) is written by a task that notices at once when the client leaves, even while it sleeps,
and waits for the client to read (back-pressure) before writing more.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as ssl_module
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httptools

from tests.mock_upstream.dialect import dumps
from tests.mock_upstream.openai_chat import OpenAIChat
from tests.mock_upstream.request import Aborted, BadRequest, PeerGone, RecordedRequest
from tests.mock_upstream.routes import dialect_of, route
from tests.mock_upstream.scenario import Scenario
from tests.mock_upstream.wire import Canned, ReplyWriter, head

_MAX_HEAD = 65536


class Connection(asyncio.Protocol):
    """One TCP connection: requests parsed as they arrive, answered one at a time."""

    def __init__(self, upstream: MockUpstream):
        self.upstream = upstream
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        # Any header value a proxy may forward (control characters, raw UTF-8) is recorded, not refused:
        # what is valid is for the proxy's tests to decide.
        self.parser.set_dangerous_leniencies(lenient_headers=True)
        self.transport: asyncio.Transport | None = None
        self.id = 0
        self.gone = False  # the client closed or reset the connection
        self._queue: deque[tuple[RecordedRequest, tuple[Any, ...] | None]] = deque()
        self._task: asyncio.Task[None] | None = None  # the reply being written, when it waits
        self._waiter: asyncio.Future[None] | None = None  # a sleep, or a wait for the client to read
        self._paused = False
        self._url, self._raw, self._body, self._head, self._expect = b"", [], [], 0, False

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        up = self.upstream
        up.connections_accepted += 1
        up.open_connections += 1
        up._connections.add(self)
        self.id = up.connections_accepted
        if up._closing:
            self.close()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._bad("protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._bad(str(exc.__context__ or exc))

    def eof_received(self) -> bool:
        self._peer_left()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._peer_left()
        up = self.upstream
        up.open_connections -= 1
        up._connections.discard(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake()

    # -- httptools callbacks

    # Called for every header of every request: as little as possible here, the rest once per request.

    def on_message_begin(self) -> None:
        self._url, self._raw, self._body, self._head, self._expect = b"", [], [], 0, False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw.append((name, value))
        if len(name) == 6 and name.lower() == b"expect":
            self._expect = value.strip().lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self._head = len(self._raw)  # what follows are the trailers of a chunked body
        if len(self._url) + sum(len(n) + len(v) for n, v in self._raw) > _MAX_HEAD:
            raise BadRequest("request head too large")
        if self._expect:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        target = self._url.decode("latin-1")
        if target.startswith(("http://", "https://")):  # absolute-form, as sent to proxies
            parts = urlsplit(target)
            path, query = parts.path or "/", parts.query
        else:
            path, _, query = target.partition("?")
        up, body = self.upstream, b"".join(self._body)
        method, version = self.parser.get_method(), self.parser.get_http_version()
        key = None if up.record else (method, self._url, version, tuple(self._raw), body)
        if key is not None and self._task is None and not self._queue and (canned := up._canned.get(key)):
            self.transport.write(canned.now())  # type: ignore[union-attr]
            up.completed += 1
            if not canned.keep_alive:
                self.close()
            return
        headers = [(n.decode("latin-1"), v.decode("latin-1").strip(" \t")) for n, v in self._raw[: self._head]]
        self._queue.append((RecordedRequest(method.decode("latin-1"), path, query, headers, body, f"HTTP/{version}",
                                            self.id), key))
        if self._task is None:
            self._next()

    # -- answering

    def _next(self) -> None:
        """Answer queued requests until one needs a task (or the connection ends)."""
        while self._queue and self._task is None and not self.gone:
            request, key = self._queue.popleft()
            try:
                if not self._answer(request, key):
                    self.close()
                    return
            except Exception as exc:  # a bug in the mock: keep it for the tests to see
                self.upstream.errors.append(exc)
                self.close()
                return

    def _answer(self, request: RecordedRequest, key: tuple[Any, ...] | None) -> bool:
        """Answer ``request`` now, or start the task that will; False when the connection must end.
        ``key`` (the request's bytes) remembers a reply that depends on nothing else."""
        up = self.upstream
        if up.record:
            up.requests.append(request)
        keep_alive = request.keep_alive
        try:
            sc = Scenario.from_headers(request.headers)
        except ValueError as exc:
            sc = Scenario()
            reply = dialect_of(request)(request).error_reply(400, str(exc))
        else:
            reply = route(request, sc)
        writer = ReplyWriter(self, sc, keep_alive=keep_alive, head_only=request.method == "HEAD",
                             gzip=sc.gzip and request.accepts_gzip)
        if reply.events is None and sc.plain:
            data = writer.json_bytes(reply)
            if key is not None and sc.fixed_ids and not sc.echo:
                if len(up._canned) >= 64:
                    up._canned.clear()
                up._canned[key] = Canned(data, keep_alive)
            self.transport.write(data)  # type: ignore[union-attr]
            up.completed += 1
            return keep_alive
        up.active_streams += 1
        self._task = self.loop.create_task(self._respond(writer, reply, keep_alive))
        return True

    async def _respond(self, writer: ReplyWriter, reply: Any, keep_alive: bool) -> None:
        up = self.upstream
        outcome = ""
        try:
            await writer.send(reply)
            outcome = "completed"
        except PeerGone:
            outcome = "disconnects"
        except Aborted:
            outcome = "aborted"
        except Exception as exc:  # a bug in the mock: keep it for the tests to see
            up.errors.append(exc)
        finally:
            if outcome:
                setattr(up, outcome, getattr(up, outcome) + 1)
            up.active_streams -= 1
            self._task = None
        if outcome == "completed" and keep_alive and not self.gone:
            self._next()
        else:
            self.close()

    def _bad(self, message: str) -> None:
        """Bytes that are not an HTTP/1.x request: a 400 (unless a reply is being written), then close."""
        if self._task is None and not self.gone:
            body = dumps(OpenAIChat().error(400, message))
            self.transport.write(head(400, [("content-type", "application/json"),  # type: ignore[union-attr]
                                            ("content-length", str(len(body))), ("connection", "close")]) + body)
        self.close()

    # -- what ReplyWriter uses

    def time(self) -> float:
        return self.loop.time()

    async def write(self, data: bytes) -> None:
        """Write, then wait while the client is not reading. Raises :class:`PeerGone` if it left."""
        if self.send(data):
            await self.drain()

    async def drain(self) -> None:
        """Wait while the client is not reading. Raises :class:`PeerGone` if it left."""
        if self._paused:
            await self._wait(None)

    def send(self, data: bytes) -> bool:
        """Write without waiting; True when the caller must :meth:`drain` before writing more.
        Raises :class:`PeerGone` if the client left."""
        if self.gone or self.transport.is_closing():  # type: ignore[union-attr]
            raise PeerGone
        self.transport.write(data)  # type: ignore[union-attr]
        return self._paused

    async def sleep(self, seconds: float) -> None:
        """Sleep, but raise :class:`PeerGone` as soon as the client leaves."""
        if self.gone:
            raise PeerGone
        if seconds > 0:
            await self._wait(self.loop.time() + seconds)

    async def sleep_until(self, when: float) -> None:
        """:meth:`sleep` until loop time ``when``."""
        if self.gone:
            raise PeerGone
        if when > self.loop.time():
            await self._wait(when)

    def _wait(self, when: float | None) -> asyncio.Future[None]:
        """Until loop time ``when`` (None: until the client reads); :class:`PeerGone` if it leaves."""
        self._waiter = waiter = self.loop.create_future()
        if when is not None:
            self.loop.call_at(when, self._wake, waiter)  # not cancelled: a waiter woken before is done
        return waiter

    def _wake(self, waiter: asyncio.Future[None] | None = None) -> None:
        waiter = waiter or self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _peer_left(self) -> None:
        self.gone = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(PeerGone())
            self._waiter.exception()  # retrieved here: a cancelled reply may never await it

    def close(self) -> None:
        """Close after flushing what was written (FIN)."""
        if self.transport is not None:
            self.transport.close()

    def reset(self) -> None:
        """Close with an RST: SO_LINGER 0, then abort."""
        sock = self.transport.get_extra_info("socket")  # type: ignore[union-attr]
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()  # type: ignore[union-attr]

    def stop(self) -> asyncio.Task[None] | None:
        """Cancel the reply being written and close; returns the cancelled task to wait for."""
        task = self._task
        if task is not None:
            task.cancel()
        self.close()
        return task


class MockUpstream:
    """The mock server on the running event loop.

    Counters (plain ints, safe to read from another thread):
        open_connections: TCP connections open now.
        connections_accepted: TCP connections accepted in total.
        active_streams: responses being written now (JSON or SSE) by a task; a JSON reply without
            faults is written at once and never shows here.
        completed: responses written to the end.
        disconnects: responses cut short because the client closed or reset the connection.
        aborted: responses cut short on purpose by a fault scenario.
    ``requests`` holds every request received (unless ``record`` is off: a benchmark's mock would
    keep gigabytes); ``errors`` every unexpected exception (a bug in the mock; tests should assert
    it stays empty). ``ssl`` serves TLS.

    Without ``record``, a JSON reply without faults to a request with ``x-mock-fixed-ids`` depends on
    nothing but the request's bytes, so it is encoded once and sent again (with the current ``date``)
    when the same bytes come again: what keeps the mock cheaper than what a benchmark measures.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, ssl: ssl_module.SSLContext | None = None,
                 record: bool = True):
        self.host, self.port, self.ssl, self.record = host, port, ssl, record
        self._canned: dict[tuple[Any, ...], Canned] = {}
        self.requests: list[RecordedRequest] = []
        self.errors: list[BaseException] = []
        self.open_connections = 0
        self.connections_accepted = 0
        self.active_streams = 0
        self.reset_stats()
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self._closing = False

    def reset_stats(self) -> None:
        """Forget recorded requests and zero the cumulative counters (not the live gauges, and
        not ``errors``)."""
        self.requests.clear()
        self.disconnects = 0
        self.completed = 0
        self.aborted = 0

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (``https`` with TLS), valid after :meth:`start`."""
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen; with port 0 the chosen port is in :attr:`port` and :attr:`url`."""
        self._closing = False
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(self), self.host, self.port,
                                                ssl=self.ssl, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, cancel every connection and wait until all of them are gone."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        await asyncio.sleep(0)  # let just-accepted connections register
        tasks = [task for conn in list(self._connections) if (task := conn.stop()) is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.wait_for(lambda u: u.open_connections == 0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def wait_for(self, predicate: Callable[[MockUpstream], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate(self)`` until true (returns True) or ``timeout`` seconds (False)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True
