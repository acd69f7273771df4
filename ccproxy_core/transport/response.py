"""The body of one response: one chunk per network read, and the connection's return to the pool.

A response stream hands out the chunks its connection queued (resuming reading below the
low-water mark), or lets a sink take them as they are read (:meth:`_ResponseStream.sink`), and
gives the connection back (:meth:`~.pool.ConnectionPool._release`) as soon as the last chunk of
a complete message was read. Closing it earlier aborts the
connection, so the upstream stops generating; ``aclose()`` never awaits, so it is
idempotent and a cancellation cannot interrupt it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, AsyncIterator, Callable

import httpx

from .connection import _BUSY, _LOW_WATER, _Connection

if TYPE_CHECKING:
    from .pool import ConnectionPool


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
        pool: ConnectionPool,
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

    def sink(self, take: Callable[[bytes], bool] | None) -> bool:
        """Let ``take`` have the body's chunks as they are read (None: stop); False when the body has no connection.

        ``take`` is called from the connection's read callback with one chunk, only while this stream's
        reader waits in ``__anext__`` and nothing is queued: it returns True when it took the chunk (the
        reader goes on waiting: the chunk is not queued), False to leave it to the reader. It must not raise.
        The connection forgets it when it is given back or closed.
        """
        conn = self._conn
        if conn is None:
            return False
        conn.sink = take
        return True

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
