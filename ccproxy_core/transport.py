"""A fast HTTP/1.1 upstream transport behind httpx's transport interface.

Why: httpx's default transport (httpcore) spends 1.6-3 ms of CPU per proxied request
at 32 concurrent requests, mostly in its pool bookkeeping. ccproxy keeps httpx as its
client *API* (``httpx.Request``/``httpx.Response``, exception types, timeouts) and
swaps the wire layer for this module, which costs roughly a tenth of that.

Design, in one pass over a request:

* **Routing.** ``(scheme, host, port)`` maps to a cached :class:`_Route` (direct, via
  an HTTP forward proxy, or through a ``CONNECT`` tunnel), so the environment's
  ``HTTP(S)_PROXY``/``NO_PROXY`` are consulted once per origin, not per request.
* **Pool.** One ``deque`` of idle connections per pool key plus two counters. Acquire
  pops the most recently used idle connection (LIFO: the warmest, least likely to have
  been closed by the server); release appends; expired connections are trimmed from the
  old end by an occasional timer. Nothing on the request path scans all connections.
  ``max_connections`` bounds busy + idle connections in total; when it is reached, an
  idle connection of another origin is evicted, or the request waits (``pool`` timeout).
* **Connection.** Each connection is an :class:`asyncio.Protocol` that feeds every
  network read to one ``httptools.HttpResponseParser`` whose callbacks append to plain
  lists. The body pieces of one read are joined into one chunk, queued in a deque and
  handed to the response stream as they are: one network read gives one chunk, never
  coalesced with the next read nor split. Reading pauses when the queue holds more than
  256 KiB and resumes when the consumer drained it below 64 KiB (flow control).
* **Waiting.** A waiter future per wait; no tasks, no ``asyncio.wait_for``. Reads share one
  timer per connection that stays armed between reads and is re-armed only when it fires
  before the current wait's deadline (no ``call_later``/``cancel`` per read).
* **Release.** A connection returns to the pool only when its response message was
  received completely and the server allows keep-alive; this happens when the consumer
  reads the last chunk (or closes a response whose body has fully arrived). Closing a
  response whose body is still arriving aborts the socket, so the upstream stops
  generating. ``aclose()`` never awaits anything, so it is idempotent and cannot be
  interrupted by a cancellation.
* **Never sent twice silently.** Before a pooled connection carries a request it is
  checked: not closing, and its socket not readable (one ``poll(0)``, ~0.5 µs; an idle
  keep-alive socket that is readable holds the server's FIN or junk the loop has not
  delivered yet). A dead one is closed and the next one (or a new connection) is used:
  nothing was sent. A request is written again only when the write failed synchronously
  (the kernel refused it; caught for plain TCP, not under TLS). Once written, a failure
  before any response byte is an ``httpx.RemoteProtocolError`` ("Server disconnected
  without sending a response") or ``httpx.ReadError`` (reset), for the caller to retry
  by its own policy and report: an LLM request that reached the upstream is billed.
* **Bounded heads.** At most ``max_head_bytes`` (interim heads included) are fed to the
  parser before the head completes, and ``on_header`` stops the parser at the
  ``max_headers``-th + 1 line: :class:`ResponseHeadTooLarge` (a ``RemoteProtocolError``
  naming the limit). ``100`` and ``103`` are skipped as interim; ``101``, other ``1xx``
  and statuses outside 100-599 are a ``RemoteProtocolError``: a proxy cannot relay them.

No content decoding happens here: ``content-encoding`` is left to httpx
(``Response.aiter_bytes``) or to the caller (``aiter_raw`` gives the bytes as sent).
HTTP/2, HTTPS proxies (TLS to the proxy itself), SOCKS and upgrades are not supported.
"""

from __future__ import annotations

import asyncio
import base64
import select
import ssl
import urllib.request
from collections import deque
from typing import Any, AsyncIterable, AsyncIterator, Final, Iterable

import httptools
import httpx

__all__ = ["FastTransport", "ResponseHeadTooLarge", "environment_proxy"]

_HIGH_WATER: Final = 256 * 1024  # pause reading when this many body bytes are queued
_LOW_WATER: Final = 64 * 1024  # ... and resume below this
_ROUTE_CACHE_MAX: Final = 4096

_IDLE: Final = 0
_BUSY: Final = 1
_CLOSED: Final = 2

_HTTP11: Final = b"HTTP/1.1"
_HTTP10: Final = b"HTTP/1.0"
_NO_TIMEOUTS: Final[dict[str, float | None]] = {}
_METHODS: Final = {
    m: m.encode("ascii") for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
}
_DEFAULT_PORTS: Final = {b"http": 80, b"https": 443}


class ResponseHeadTooLarge(httpx.RemoteProtocolError):
    """The upstream's response head passed a limit (bytes or header lines); the message names it."""


def environment_proxy(scheme: str, host: str, proxies: dict[str, str] | None = None) -> str | None:
    """The proxy URL for ``scheme://host`` from ``HTTP(S)_PROXY``/``ALL_PROXY``/``NO_PROXY``, or None.

    ``proxies`` is ``urllib.request.getproxies_environment()`` (read now when not given).
    """
    if proxies is None:
        proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
        return None
    return proxy


def _expire(fut: asyncio.Future[bool]) -> None:
    """Timer callback: resolve a waiter with ``False`` ("timed out")."""
    if not fut.done():
        fut.set_result(False)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: socket callbacks, response parser state, body queue.

    Per-response state lives on the connection (reset by :meth:`begin`) so a request
    allocates only its header list and body chunks. Owned by a :class:`FastTransport`;
    ``state`` is ``_IDLE`` (in the pool), ``_BUSY`` (checked out) or ``_CLOSED``.
    """

    __slots__ = (
        "key",
        "transport",
        "state",
        "reused",
        "idle_since",
        "status",
        "reason",
        "headers",
        "http_version",
        "head_done",
        "complete",
        "keep_alive",
        "error",
        "got_bytes",
        "chunks",
        "buffered",
        "_pool",
        "_loop",
        "_parser",
        "_stale_parser",
        "_no_body",
        "_close_delimited",
        "_informational",
        "_parts",
        "_wake",
        "_waiter",
        "_deadline",
        "_timer",
        "_timer_at",
        "_read_paused",
        "_write_paused",
        "_drain_waiter",
        "_poll",
        "_head_room",
        "_max_headers",
    )

    def __init__(self, pool: FastTransport, key: tuple[Any, ...], loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.state = _BUSY
        self.reused = False
        self.idle_since = 0.0
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.http_version = _HTTP11
        self.head_done = False
        self.complete = False
        self.keep_alive = True
        self.error: httpx.TransportError | None = None
        self.got_bytes = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self._pool = pool
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._stale_parser = False
        self._no_body = False
        self._close_delimited = False
        self._informational = False
        self._parts: list[bytes] = []
        self._wake = False
        self._waiter: asyncio.Future[bool] | None = None
        #: Loop time by which the current wait times out (None: no timeout).
        self._deadline: float | None = None
        #: The connection's one read timer, re-armed lazily (see :meth:`wait`), and when it fires.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._read_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[bool] | None = None
        #: Polls the socket for readability (see :meth:`alive`); None when there is no socket.
        self._poll: Any = None
        #: Response head bytes still allowed before the head must be complete (see :meth:`data_received`).
        self._head_room = pool._max_head_bytes
        self._max_headers = pool._max_headers

    # -- request side ----------------------------------------------------------

    def begin(self, no_body: bool) -> None:
        """Reset the per-response state before a request is written."""
        self.status = 0
        self.reason = b""
        self.headers = []
        self.head_done = False
        self.complete = False
        self.error = None
        self.got_bytes = False
        self._no_body = no_body
        self._close_delimited = False
        self._head_room = self._pool._max_head_bytes
        if self.chunks:
            self.chunks.clear()
        self.buffered = 0
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        if self._stale_parser:
            self._parser = httptools.HttpResponseParser(self)
            self._stale_parser = False

    def alive(self) -> bool:
        """Whether an idle connection can carry a request: not closing, and nothing to read.

        An idle keep-alive connection whose socket is readable holds the server's EOF (or
        bytes nobody asked for) that the loop has not delivered yet: the server closed it.
        One ``poll(0)`` system call: ~0.5 µs (bench/transport_micro.py, "idle check").
        """
        if self.transport.is_closing():  # type: ignore[union-attr]
            return False
        return self._poll is None or not self._poll.poll(0)

    async def drain(self, timeout: float | None) -> None:
        """Wait until the socket's write buffer is below its high-water mark.

        Raises:
            httpx.WriteTimeout: still paused after ``timeout`` seconds.
            httpx.TransportError: the connection failed meanwhile.
        """
        while self._write_paused:
            if self.error is not None:
                raise self.error
            if self.state == _CLOSED:
                if self.head_done:
                    return  # the server answered (and closed) before reading everything
                raise httpx.WriteError("Connection closed while sending the request.")
            fut = self._loop.create_future()
            self._drain_waiter = fut
            handle = None if timeout is None else self._loop.call_later(timeout, _expire, fut)
            try:
                ok = await fut
            finally:
                if handle is not None:
                    handle.cancel()
            if not ok:
                raise httpx.WriteTimeout("Timed out while sending the request body.")
        if self.error is not None:
            raise self.error

    async def wait(self, timeout: float | None) -> bool:
        """Wait for the next parser event (head, chunk, end, error); ``False`` on timeout.

        The timeout runs from this call. A connection has one timer for all its waits: it
        stays armed when a wait ends, and when it fires before the current wait's deadline
        (later reads moved it) it is re-armed for that deadline. A read therefore costs no
        timer of its own (``call_later`` plus ``cancel`` is ~1.8 µs on uvloop).
        """
        loop = self._loop
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiter = fut
        if timeout is None:
            self._deadline = None
            return await fut
        deadline = self._deadline = loop.time() + timeout
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = loop.call_at(deadline, self._on_timer)
        return await fut

    def _on_timer(self) -> None:
        """The read timer fired: time the current wait out, or re-arm for its deadline."""
        self._timer = None
        fut = self._waiter
        deadline = self._deadline
        if fut is None or fut.done() or deadline is None:
            return  # nothing waits (the next wait arms the timer again)
        if self._loop.time() >= deadline:
            fut.set_result(False)
        else:
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def wait_head(self, timeout: float | None) -> None:
        """Wait until the response head was parsed.

        Raises:
            httpx.ReadTimeout: no head within ``timeout`` seconds (measured per wait).
            httpx.TransportError: the connection failed or the server spoke garbage.
        """
        while not self.head_done:
            if self.error is not None:
                raise self.error
            if not await self.wait(timeout):
                raise httpx.ReadTimeout("Timed out waiting for the response head.")

    def close(self) -> None:
        """Close gracefully (idle connections). Idempotent."""
        self._stop_timer()
        if self.state != _CLOSED:
            self.state = _CLOSED
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        """Close at once, discarding buffers (a response abandoned mid-body). Idempotent."""
        self._stop_timer()
        if self.state != _CLOSED:
            self.state = _CLOSED
            if self.transport is not None:
                self.transport.abort()

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:  # noqa: D102
        if self.state != _BUSY:
            if self.state == _IDLE:
                # Bytes on an idle connection (nothing was asked): it cannot be trusted.
                self._pool._idle_lost(self)
                self.close()
            return
        self.got_bytes = True
        if self.head_done or len(data) <= self._head_room:
            if not self.head_done:
                self._head_room -= len(data)
            self._feed(data)
        else:
            # Feed only what the head limit allows: a head still incomplete after it is too large.
            room = self._head_room
            self._head_room = 0
            self._feed(data[:room])
            if self.error is None:
                if self.head_done:
                    self._feed(data[room:])
                else:
                    limit = self._pool._max_head_bytes
                    self._fail(ResponseHeadTooLarge(
                        f"the upstream's response head is larger than limits.max_response_head_bytes ({limit} bytes)"
                    ), None)
        parts = self._parts
        if parts:
            chunk = parts[0] if len(parts) == 1 else b"".join(parts)
            parts.clear()
            self.chunks.append(chunk)
            self.buffered += len(chunk)
            self._wake = True
            if self.buffered > _HIGH_WATER and not self._read_paused and self.state == _BUSY:
                self._read_paused = True
                self.transport.pause_reading()  # type: ignore[union-attr]
        if self._wake:
            self._wake = False
            waiter = self._waiter
            if waiter is not None:
                self._waiter = None
                if not waiter.done():
                    waiter.set_result(True)

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._fail(httpx.RemoteProtocolError("Unexpected protocol upgrade in the response."), exc)
        except httptools.HttpParserError as exc:
            ours = exc.__context__
            if self.complete:
                self.keep_alive = False  # trailing bytes after a complete message
            elif isinstance(ours, httpx.RemoteProtocolError):
                self._fail(ours, None)  # a callback refused the head (a limit, a status)
            else:
                self._fail(httpx.RemoteProtocolError(f"Malformed HTTP response: {exc}"), exc)

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        self._stop_timer()
        previous = self.state
        self.state = _CLOSED
        self.keep_alive = False
        if previous == _IDLE:
            self._pool._idle_lost(self)
            return
        if not self.complete and self.error is None:
            err: httpx.TransportError
            if self.head_done and self._close_delimited and exc is None:
                self.complete = True
            elif not self.got_bytes:
                err = (
                    httpx.RemoteProtocolError("Server disconnected without sending a response.")
                    if exc is None
                    else httpx.ReadError(f"Connection lost before the response: {exc!r}")
                )
                self._fail(err, exc)
            elif self.head_done:
                err = (
                    httpx.RemoteProtocolError("Peer closed connection without sending complete message body.")
                    if exc is None
                    else httpx.ReadError(f"Connection lost while reading the body: {exc!r}")
                )
                self._fail(err, exc)
            else:
                self._fail(httpx.RemoteProtocolError("Server disconnected while sending the response head."), exc)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(True)
        self._wake_drain()

    def pause_writing(self) -> None:  # noqa: D102
        self._write_paused = True

    def resume_writing(self) -> None:  # noqa: D102
        self._write_paused = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(True)

    def _fail(self, err: httpx.TransportError, cause: BaseException | None) -> None:
        err.__cause__ = cause
        self.error = err
        self.keep_alive = False
        self._wake = True
        if self.transport is not None and self.state != _CLOSED:
            self.state = _CLOSED
            self.transport.abort()

    # -- httptools callbacks -------------------------------------------------------

    def on_message_begin(self) -> None:  # noqa: D102
        if self.complete:
            # A second message in the same read: nothing was asked for it. Raising stops
            # the parser; data_received then marks the connection as not reusable.
            raise httpx.RemoteProtocolError("Unsolicited response data.")

    def on_status(self, status: bytes) -> None:  # noqa: D102
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:  # noqa: D102
        headers = self.headers
        if len(headers) >= self._max_headers:  # raising stops the parser at once
            raise ResponseHeadTooLarge(
                f"the upstream's response has more than limits.max_response_headers ({self._max_headers}) header lines"
            )
        headers.append((name, value))

    def on_headers_complete(self) -> None:  # noqa: D102
        parser = self._parser
        status = parser.get_status_code()
        if not 200 <= status <= 599:
            if status == 100 or status == 103:  # 100 Continue, 103 Early Hints: interim, skipped
                self._informational = True
                self.headers = []
                self.reason = b""
                return
            raise httpx.RemoteProtocolError(f"the upstream answered with status {status}, which cannot be relayed")
        self.status = status
        self.keep_alive = keep_alive = parser.should_keep_alive()
        self.http_version = _HTTP11 if parser.get_http_version() == "1.1" else _HTTP10
        self.head_done = True
        self._wake = True
        if self._no_body:
            # HEAD: no body follows whatever the headers say; the parser would wait for
            # one, so it is replaced before the next request on this connection.
            self.complete = True
            self._stale_parser = True
        elif not keep_alive and status != 204 and status != 304:
            for name, value in self.headers:
                lower = name.lower()
                if lower == b"content-length" or lower == b"transfer-encoding":
                    break
            else:
                self._close_delimited = True

    def on_body(self, body: bytes) -> None:  # noqa: D102
        if self.complete:  # bytes after a HEAD response: not a clean connection
            self.keep_alive = False
            return
        self._parts.append(body)

    def on_message_complete(self) -> None:  # noqa: D102
        if self._informational:
            self._informational = False
            return
        if not self.complete:
            self.complete = True
            self._wake = True


class _TunnelProtocol(asyncio.Protocol):
    """Reads the proxy's answer to ``CONNECT`` (the head only) before TLS starts."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.head: asyncio.Future[bytes] = loop.create_future()
        self._buf = bytearray()

    def data_received(self, data: bytes) -> None:  # noqa: D102
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end >= 0 and not self.head.done():
            if end + 4 != len(self._buf):
                self.head.set_exception(httpx.ProxyError("Proxy sent data after its CONNECT response."))
            else:
                self.head.set_result(bytes(self._buf[:end]))
        elif len(self._buf) > 65536 and not self.head.done():
            self.head.set_exception(httpx.ProxyError("Proxy response head too large."))

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        if not self.head.done():
            err = httpx.ProxyError("Proxy closed the connection during CONNECT.")
            err.__cause__ = exc
            self.head.set_exception(err)


class _Route:
    """How to reach one origin: pool key, socket address, TLS and proxy details."""

    __slots__ = ("key", "host", "port", "ssl", "sni", "target_prefix", "extra_head", "tunnel")

    def __init__(
        self,
        key: tuple[Any, ...],
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        sni: str | None,
        target_prefix: bytes | None = None,
        extra_head: bytes = b"",
        tunnel: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.key = key
        self.host = host  # where the socket connects (origin or proxy)
        self.port = port
        self.ssl = ssl_context
        self.sni = sni
        self.target_prefix = target_prefix  # b"http://netloc" for absolute-form, else None
        self.extra_head = extra_head  # header lines added for a forward proxy
        self.tunnel = tunnel  # (authority, auth header lines) for CONNECT


class _ResponseStream(httpx.AsyncByteStream):
    """The body of one response, as raw network reads (transfer coding removed).

    Iterating yields one ``bytes`` per network read. It ends cleanly, or raises
    ``httpx.ReadTimeout`` / ``httpx.RemoteProtocolError`` / ``httpx.ReadError``.
    ``aclose()`` is idempotent and never awaits.
    """

    __slots__ = ("_conn", "_pool", "_timeouts", "_request", "_error")

    def __init__(
        self,
        conn: _Connection | None,
        pool: FastTransport,
        timeouts: dict[str, float | None],
        request: httpx.Request | None,
    ) -> None:
        self._conn = conn
        self._pool = pool
        self._timeouts = timeouts  # the caller's dict: "read" is looked up per wait
        self._request = request
        self._error: Exception | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            if self._error is not None:
                raise self._error  # a failed or aborted body never looks complete
            raise StopAsyncIteration
        chunks = conn.chunks
        while not chunks:
            if conn.error is not None:
                self._conn = None
                self._pool._discard(conn)
                err = conn.error
                err.request = self._request
                self._error = err
                raise err
            if conn.complete:
                self._conn = None
                self._pool._release(conn)
                raise StopAsyncIteration
            # Read per wait: the caller may lower "read" once the head arrived (the idle gap).
            if not await conn.wait(self._timeouts.get("read")):
                self._conn = None
                self._pool._discard(conn)
                self._error = httpx.ReadTimeout("Timed out reading the response body.", request=self._request)
                raise self._error
        chunk = chunks.popleft()
        conn.buffered -= len(chunk)
        if conn._read_paused and conn.buffered < _LOW_WATER and conn.state == _BUSY:
            conn._read_paused = False
            conn.transport.resume_reading()  # type: ignore[union-attr]
        if not chunks and conn.complete and conn.error is None:
            # Last chunk of a complete message: give the connection back right away.
            self._conn = None
            self._pool._release(conn)
        return chunk

    async def aclose(self) -> None:
        """Release the connection if its message fully arrived, else abort it."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            if conn.complete and conn.error is None:
                self._pool._release(conn)
            else:
                self._pool._discard(conn)
                self._error = httpx.StreamClosed()

    def __del__(self) -> None:
        conn = self._conn
        if conn is not None:  # response dropped without aclose(): do not leak the slot
            self._conn = None
            try:
                self._pool._discard(conn)
            except Exception:  # pragma: no cover - loop already closed
                pass


class FastTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 transport on asyncio protocols and httptools, for ``httpx.AsyncClient``.

    Use as ``httpx.AsyncClient(transport=FastTransport())``, or call
    :meth:`handle_async_request` directly for a lower cost, or :meth:`send` with the
    request's parts (no ``httpx.Request`` at all) for the lowest. One instance belongs to
    one event loop.

    Args:
        verify: Verify TLS certificates (default). ``False`` disables verification
            (ignored when ``ssl_context`` is given).
        ssl_context: Context for ``https://`` origins; default
            ``httpx.create_ssl_context(verify)`` (certifi's CA bundle, as httpx's own
            transport uses) with ALPN ``http/1.1``. SNI is the URL host.
        max_connections: Bound on open connections (busy and idle), all origins.
        max_keepalive: Idle connections kept per origin; more are closed on release.
        keepalive_expiry: Seconds an idle connection may stay in the pool.
        trust_env: Read ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY``/``NO_PROXY`` (and
            their lowercase forms) once, at construction.
        proxy: An ``http://`` proxy for all origins (overrides the environment).
            ``http://`` targets are sent in absolute form, ``https://`` targets through
            a ``CONNECT`` tunnel. Credentials in the URL become ``Proxy-Authorization``.
        max_head_bytes: Largest response head (status line, headers, interim heads
            included); past it the response fails with :class:`ResponseHeadTooLarge`
            and no more of it is parsed.
        max_headers: Most header lines in a response head; the same error past it.
    """

    def __init__(
        self,
        *,
        verify: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 1000,
        max_keepalive: int = 100,
        keepalive_expiry: float = 15.0,
        trust_env: bool = True,
        proxy: str | None = None,
        max_head_bytes: int = 64 * 1024,
        max_headers: int = 100,
    ) -> None:
        if max_connections < 1 or max_keepalive < 0:
            raise ValueError("max_connections must be >= 1 and max_keepalive >= 0")
        self._max_head_bytes = max_head_bytes
        self._max_headers = max_headers
        self._verify = verify
        self._ssl_context = ssl_context
        self._max_connections = max_connections
        self._max_keepalive = max_keepalive
        self._expiry = keepalive_expiry
        self._proxies: dict[str, str] = {}
        self._explicit_proxy = proxy
        if proxy is None and trust_env:
            self._proxies = urllib.request.getproxies_environment()
        self._routes: dict[tuple[bytes, bytes, int | None], _Route] = {}
        self._idle: dict[tuple[Any, ...], deque[_Connection]] = {}
        self._idle_count = 0
        self._active = 0
        self._busy: set[_Connection] = set()
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- public --------------------------------------------------------------------

    def pool_stats(self) -> dict[str, int]:
        """Counts for tests and health: ``idle``, ``active`` (checked out), ``total``, ``waiting``."""
        return {
            "idle": self._idle_count,
            "active": self._active,
            "total": self._idle_count + self._active,
            "waiting": sum(1 for w in self._waiters if not w.done()),
        }

    async def aclose(self) -> None:
        """Close every pooled connection and abort busy ones; later requests fail."""
        self._closed = True
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        for dq in self._idle.values():
            while dq:
                dq.pop().close()
        self._idle.clear()
        self._idle_count = 0
        for conn in list(self._busy):
            conn.abort()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(True)
        self._waiters.clear()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return a response whose body has not been read yet.

        The headers go out exactly as in ``request.headers`` (``content-length`` is
        added only for a bytes body that lacks framing headers). Timeouts come from
        ``request.extensions["timeout"]`` (httpx's dict; missing keys mean none).

        Raises:
            httpx.UnsupportedProtocol: not ``http://``/``https://``, or an unusable proxy.
            httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError, httpx.PoolTimeout,
            httpx.WriteTimeout, httpx.WriteError, httpx.ReadTimeout, httpx.ReadError,
            httpx.RemoteProtocolError: as the names say; ``__cause__`` holds the
            low-level exception when there was one.
        """
        try:
            body: bytes | None = request.content
        except httpx.RequestNotRead:
            body = None
        return await self._exchange(
            request.method, request.url, request.headers.raw, body,
            request.extensions.get("timeout") or _NO_TIMEOUTS, request,
        )

    async def send(
        self,
        method: str,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: dict[str, float | None],
    ) -> httpx.Response:
        """Like :meth:`handle_async_request`, from the request's parts: no ``httpx.Request`` is built.

        The lowest-cost entry, used by the proxy's hot path. ``headers`` go out exactly as
        given (names and values as bytes, in order; add ``Host`` yourself); ``content-length``
        is added when the body is not empty and no framing header is there. ``timeouts`` is
        httpx's timeout dict; ``"read"`` is read again before each body read, so the caller
        may change it once the head arrived. The response is an ordinary ``httpx.Response``
        except that it has no ``request`` (nor have the exceptions raised).
        """
        return await self._exchange(method, url, headers, body, timeouts, None)

    async def _exchange(
        self,
        method: str,
        url: httpx.URL,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes | None,
        timeouts: dict[str, float | None],
        request: httpx.Request | None,
    ) -> httpx.Response:
        if self._closed:
            raise RuntimeError("FastTransport is closed.")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        route = self._routes.get((url.raw_scheme, url.raw_host, url.port))
        if route is None:
            route = self._make_route(url, request)

        # Request head (+ body when it is bytes), in one join.
        bmethod = _METHODS.get(method) or method.encode("ascii")
        target = url.raw_path if route.target_prefix is None else route.target_prefix + url.raw_path
        parts = [bmethod, b" ", target, b" HTTP/1.1\r\n"]
        framed = False
        if body:
            for name, value in headers:
                parts += (name, b": ", value, b"\r\n")
                lower = name.lower()
                if lower == b"content-length" or lower == b"transfer-encoding":
                    framed = True
            if not framed:
                parts += (b"Content-Length: ", str(len(body)).encode("ascii"), b"\r\n")
        else:
            for name, value in headers:
                parts += (name, b": ", value, b"\r\n")
        if route.extra_head:
            parts.append(route.extra_head)
        parts.append(b"\r\n")
        if body:
            parts.append(body)
        data = b"".join(parts)
        no_body = method == "HEAD"

        # A request is sent again only when it provably never left: the pooled connection it
        # was written on refused the write at once (found dead before writing, _acquire skips).
        # Once written, a failure is the caller's to retry or report, never silently resent.
        for attempt in (0, 1):
            try:
                pooled = await self._acquire(route, timeouts.get("pool"))
            except httpx.TransportError as exc:
                exc.request = request
                raise
            if pooled is not None:
                conn = pooled
            else:
                try:
                    conn = await self._connect(route, timeouts.get("connect"))
                except BaseException as exc:
                    self._active -= 1
                    self._slot_freed()
                    if isinstance(exc, httpx.TransportError):
                        exc.request = request
                    raise
                self._busy.add(conn)
            try:
                conn.begin(no_body)
                transport = conn.transport
                assert transport is not None
                transport.write(data)
                if transport.is_closing():  # the write failed synchronously: nothing was sent
                    if attempt == 0 and conn.reused:
                        self._discard(conn)
                        continue
                    raise httpx.WriteError("The connection closed as the request was written.")
                if body is None:
                    assert request is not None
                    await self._send_stream(conn, request, timeouts.get("write"))
                elif conn._write_paused:
                    await conn.drain(timeouts.get("write"))
                await conn.wait_head(timeouts.get("read"))
            except httpx.TransportError as exc:
                self._discard(conn)
                exc.request = request
                raise
            except BaseException:
                self._discard(conn)
                raise
            break

        stream = _ResponseStream(conn, self, timeouts, request)
        if conn.complete and not conn.chunks and conn.error is None:
            stream._conn = None  # HEAD / 204 / 304 / empty body: done already
            self._release(conn)
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=stream,
            extensions={"http_version": conn.http_version, "reason_phrase": conn.reason},
            request=request,
        )

    # -- request helpers -------------------------------------------------------------

    async def _send_stream(self, conn: _Connection, request: httpx.Request, timeout: float | None) -> None:
        """Write a streaming request body, chunk-encoded if the headers say so."""
        chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
        stream = request.stream
        if not isinstance(stream, AsyncIterable):
            raise httpx.UnsupportedProtocol("FastTransport needs an async request body stream.")
        transport = conn.transport
        assert transport is not None
        async for part in stream:
            if not part:
                continue
            if conn.error is not None or transport.is_closing():
                raise conn.error or httpx.WriteError("Connection closed while sending the body.")
            if chunked:
                transport.write(b"%x\r\n%b\r\n" % (len(part), part))
            else:
                transport.write(part)
            if conn._write_paused:
                await conn.drain(timeout)
        if chunked:
            transport.write(b"0\r\n\r\n")
        if conn._write_paused:
            await conn.drain(timeout)

    def _make_route(self, url: httpx.URL, request: httpx.Request | None) -> _Route:
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(
                f"FastTransport supports http:// and https:// only, not {url.scheme!r}.", request=request
            )
        host = url.host
        port = url.port or _DEFAULT_PORTS[scheme]
        tls = self._tls_context() if scheme == b"https" else None
        proxy = self._proxy_for(url.scheme, host)
        if proxy is None:
            route = _Route((scheme, url.raw_host, port), host, port, tls, host if tls else None)
        else:
            purl = httpx.URL(proxy if "://" in proxy else "http://" + proxy)
            if purl.scheme != "http":
                raise httpx.UnsupportedProtocol(
                    f"Only http:// proxies are supported, not {purl.scheme!r}.", request=request
                )
            auth = b""
            if purl.username or purl.password:
                token = base64.b64encode(f"{purl.username}:{purl.password}".encode()).decode("ascii")
                auth = f"Proxy-Authorization: Basic {token}\r\n".encode("ascii")
            phost, pport = purl.host, purl.port or 80
            if tls is None:  # absolute-form requests to a forward proxy, connections shared
                route = _Route(
                    (b"forward", phost, pport, auth), phost, pport, None, None,
                    target_prefix=scheme + b"://" + url.netloc, extra_head=auth,
                )
            else:
                authority = url.raw_host if b":" not in url.raw_host else b"[" + url.raw_host + b"]"
                authority += b":%d" % port
                route = _Route(
                    (scheme, url.raw_host, port, phost, pport, auth), phost, pport, tls, host,
                    tunnel=(authority, auth),
                )
        if len(self._routes) >= _ROUTE_CACHE_MAX:
            self._routes.clear()
        self._routes[(scheme, url.raw_host, url.port)] = route
        return route

    def _proxy_for(self, scheme: str, host: str) -> str | None:
        if self._explicit_proxy is not None:
            return self._explicit_proxy
        if not self._proxies:
            return None
        return environment_proxy(scheme, host, self._proxies)

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            ctx = httpx.create_ssl_context(verify=self._verify)  # certifi's store, as httpx's own transport
            ctx.set_alpn_protocols(["http/1.1"])
            self._ssl_context = ctx
        return self._ssl_context

    async def _connect(self, route: _Route, timeout: float | None) -> _Connection:
        """Open a new connection for ``route`` (TCP, proxy tunnel, TLS) within ``timeout``."""
        loop = self._loop
        assert loop is not None
        conn = _Connection(self, route.key, loop)
        try:
            async with asyncio.timeout(timeout):
                if route.tunnel is None:
                    await loop.create_connection(
                        lambda: conn, route.host, route.port, ssl=route.ssl, server_hostname=route.sni
                    )
                else:
                    await self._open_tunnel(conn, route)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"Timed out connecting to {route.host}:{route.port}.") from exc
        except httpx.TransportError:
            raise
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"Cannot connect to {route.host}:{route.port}: {exc}") from exc
        return conn

    async def _open_tunnel(self, conn: _Connection, route: _Route) -> None:
        loop = self._loop
        assert loop is not None and route.tunnel is not None
        authority, auth = route.tunnel
        tunnel = _TunnelProtocol(loop)
        transport, _ = await loop.create_connection(lambda: tunnel, route.host, route.port)
        try:
            transport.write(b"CONNECT %b HTTP/1.1\r\nHost: %b\r\n%b\r\n" % (authority, authority, auth))
            head = await tunnel.head
            status_line = head.split(b"\r\n", 1)[0]
            fields = status_line.split(b" ", 2)
            if len(fields) < 2 or not fields[0].startswith(b"HTTP/1.") or not fields[1].isdigit():
                raise httpx.ProxyError(f"Malformed proxy response to CONNECT: {status_line[:100]!r}")
            if not 200 <= int(fields[1]) < 300:
                raise httpx.ProxyError(f"Proxy refused CONNECT {authority.decode()}: {status_line.decode(errors='replace')}")
            tls = await loop.start_tls(transport, conn, route.ssl, server_hostname=route.sni)  # type: ignore[arg-type]
            if tls is None:  # pragma: no cover - closed during the handshake
                raise httpx.ConnectError("Connection closed during the TLS handshake.")
            conn.connection_made(tls)
        except BaseException:
            transport.abort()
            raise

    # -- pool --------------------------------------------------------------------------

    async def _acquire(self, route: _Route, timeout: float | None) -> _Connection | None:
        """Check out an idle connection (returned) or reserve a slot for a new one (``None``).

        Idle connections that are closing or readable (the server closed them) are dropped here.
        """
        key = route.key
        deadline: float | None = None
        while True:
            if self._closed:
                raise RuntimeError("FastTransport is closed.")
            dq = self._idle.get(key)
            if dq:
                now = self._loop.time()  # type: ignore[union-attr]
                expiry = self._expiry
                while dq:
                    conn = dq.pop()
                    self._idle_count -= 1
                    if conn.state == _IDLE and now - conn.idle_since < expiry and conn.alive():
                        conn.state = _BUSY
                        conn.reused = True
                        self._active += 1
                        self._busy.add(conn)
                        return conn
                    conn.close()
            if self._active + self._idle_count < self._max_connections:
                self._active += 1
                return None
            if self._idle_count:
                self._evict_one()
                continue
            deadline = await self._wait_for_slot(timeout, deadline)

    async def _wait_for_slot(self, timeout: float | None, deadline: float | None) -> float | None:
        loop = self._loop
        assert loop is not None
        if timeout is not None and deadline is None:
            deadline = loop.time() + timeout
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(fut)
        handle = None if deadline is None else loop.call_at(deadline, _expire, fut)
        try:
            ok = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result():
                self._slot_freed()  # pass our wake-up on
            raise
        finally:
            if handle is not None:
                handle.cancel()
        if not ok:
            try:
                self._waiters.remove(fut)
            except ValueError:  # pragma: no cover
                pass
            raise httpx.PoolTimeout("Timed out waiting for a connection from the pool.")
        return deadline

    def _slot_freed(self) -> None:
        """A slot became free or a connection went idle: wake one pool waiter."""
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(True)
                return

    def _evict_one(self) -> None:
        for key, dq in self._idle.items():
            if dq:
                dq.popleft().close()
                self._idle_count -= 1
                if not dq:
                    del self._idle[key]
                return

    def _release(self, conn: _Connection) -> None:
        """Take back a connection whose response was received completely."""
        self._active -= 1
        self._busy.discard(conn)
        if conn.keep_alive and conn.state == _BUSY and not self._closed and self._max_keepalive:
            conn.state = _IDLE
            conn.idle_since = self._loop.time()  # type: ignore[union-attr]
            dq = self._idle.get(conn.key)
            if dq is None:
                dq = self._idle[conn.key] = deque()
            elif len(dq) >= self._max_keepalive:
                dq.popleft().close()
                self._idle_count -= 1
            dq.append(conn)
            self._idle_count += 1
            if self._sweep_handle is None:
                self._sweep_handle = self._loop.call_later(self._expiry, self._sweep)  # type: ignore[union-attr]
        else:
            conn.close()
        if self._waiters:
            self._slot_freed()

    def _discard(self, conn: _Connection) -> None:
        """Abort a busy connection (error, timeout, response closed early)."""
        self._active -= 1
        self._busy.discard(conn)
        conn.abort()
        if self._waiters:
            self._slot_freed()

    def _idle_lost(self, conn: _Connection) -> None:
        """An idle connection was closed by the server: drop it (O(n) per origin, rare)."""
        dq = self._idle.get(conn.key)
        if dq is not None:
            try:
                dq.remove(conn)
            except ValueError:
                return
            self._idle_count -= 1
            if self._waiters:
                self._slot_freed()

    def _sweep(self) -> None:
        """Timer: close idle connections past ``keepalive_expiry`` (oldest end of each deque)."""
        self._sweep_handle = None
        loop = self._loop
        assert loop is not None
        limit = loop.time() - self._expiry
        for key in list(self._idle):
            dq = self._idle[key]
            while dq and dq[0].idle_since <= limit:
                dq.popleft().close()
                self._idle_count -= 1
            if not dq:
                del self._idle[key]
        if self._idle_count and not self._closed:
            self._sweep_handle = loop.call_later(max(self._expiry / 4, 0.05), self._sweep)
