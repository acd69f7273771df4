"""One HTTP/1.1 connection: socket callbacks, waits with one timer, the body queue and its flow control.

* **Connection.** Each connection is an :class:`asyncio.Protocol` that feeds every
  network read to one ``httptools.HttpResponseParser`` (:mod:`.head` holds its callbacks)
  whose callbacks append to plain lists. The body pieces of one read are joined into one
  chunk, queued in a deque and handed to the response stream (:mod:`.response`) as they
  are: one network read gives one chunk, never coalesced with the next read nor split.
  Reading pauses when the queue holds more than 256 KiB and resumes when the consumer
  drained it below 64 KiB (flow control).
* **Waiting.** A waiter future per wait; no tasks, no ``asyncio.wait_for``. Reads share one
  timer per connection that stays armed between reads and is re-armed only when it fires
  before the current wait's deadline (no ``call_later``/``cancel`` per read).
* **Liveness.** Before a pooled connection carries a request, :meth:`_Connection.alive`
  checks it: not closing, and its socket not readable (one ``poll(0)``).
* **Failure.** A lost connection or a malformed response becomes ``error`` (an httpx
  exception) on the connection; closing or aborting never awaits.
"""

from __future__ import annotations

import asyncio
import select
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Final

import httptools
import httpx

from .head import _HTTP11, _ResponseHead

if TYPE_CHECKING:
    from .fast import FastTransport

_HIGH_WATER: Final = 256 * 1024  # pause reading when this many body bytes are queued
_LOW_WATER: Final = 64 * 1024  # ... and resume below this

_IDLE: Final = 0
_BUSY: Final = 1
_CLOSED: Final = 2


def _expire(fut: asyncio.Future[bool]) -> None:
    """Timer callback: resolve a waiter with ``False`` ("timed out")."""
    if not fut.done():
        fut.set_result(False)


class _Connection(_ResponseHead, asyncio.Protocol):
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
        "sink",
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
        "_wait_timeout",
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
        self.headers: list[tuple[bytes, bytes, bytes]] = []  # (name, lower-case name, value)
        self.http_version = _HTTP11
        self.head_done = False
        self.complete = False
        self.keep_alive = True
        self.error: httpx.TransportError | None = None
        self.got_bytes = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        #: Takes body chunks as they are read, while nothing is queued (see ``_ResponseStream.sink``).
        self.sink: Callable[[bytes], bool] | None = None
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
        #: Loop time by which the current wait times out (None: no timeout), and that wait's timeout.
        self._deadline: float | None = None
        self._wait_timeout = 0.0
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

    def wait(self, timeout: float | None) -> asyncio.Future[bool]:
        """A future for the next parser event (head, chunk, end, error): ``True``, or ``False`` on timeout.

        The timeout runs from this call. A plain function returning the future (no coroutine per
        read). A connection has one timer for all its waits: it
        stays armed when a wait ends, and when it fires before the current wait's deadline
        (later reads moved it) it is re-armed for that deadline. A read therefore costs no
        timer of its own (``call_later`` plus ``cancel`` is ~1.8 µs on uvloop).
        """
        loop = self._loop
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiter = fut
        if timeout is None:
            self._deadline = None
            return fut
        self._wait_timeout = timeout
        deadline = self._deadline = loop.time() + timeout
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = loop.call_at(deadline, self._on_timer)
        return fut

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
            self._feed_past_limit(data)
        parts = self._parts
        if parts:
            chunk = parts[0] if len(parts) == 1 else b"".join(parts)
            parts.clear()
            sink = self.sink
            waiter = self._waiter
            # Only while the reader waits for this very chunk (nothing queued, nothing of its own in progress).
            if sink is not None and waiter is not None and not waiter.done() and not self.chunks and sink(chunk):
                # Taken as it was read: the reader's wait goes on, its idle deadline moved.
                if self._deadline is not None:
                    self._deadline = self._loop.time() + self._wait_timeout
            else:
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
        # The parser's callbacks are this connection's methods: a cycle that would keep the connection, and
        # whatever it references, for the cyclic garbage collector (a pause of tens of ms at 500 streams).
        self._parser = None
        self.sink = None

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
