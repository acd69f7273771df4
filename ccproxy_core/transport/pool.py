"""The connection pool: idle connections per origin, the bound on connections, waiting for a slot.

* **Pool.** One ``deque`` of idle connections per pool key plus two counters. Acquire
  pops the most recently used idle connection (LIFO: the warmest, least likely to have
  been closed by the server); release appends; expired connections are trimmed from the
  old end by an occasional timer. Nothing on the request path scans all connections.
  ``max_connections`` bounds busy + idle connections in total; when it is reached, an
  idle connection of another origin is evicted, or the request waits (``pool`` timeout).
* **Release.** A connection returns to the pool only when its response message was
  received completely and the server allows keep-alive (:mod:`.response` decides when);
  any other connection is closed or aborted. An idle connection that is closing or
  readable (the server closed it) is dropped when it is next acquired, never used.

:class:`ConnectionPool` is the base class of :class:`~.fast.FastTransport`; connections and
response streams call back into it (``_release``, ``_discard``, ``_idle_lost``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

import httpx

from .connection import _BUSY, _IDLE, _Connection, _expire

if TYPE_CHECKING:
    from .tunnel import _Route


class ConnectionPool:
    """Busy and idle connections of one transport, for all origins; one event loop."""

    def __init__(self, max_connections: int, max_keepalive: int, keepalive_expiry: float) -> None:
        if max_connections < 1 or max_keepalive < 0:
            raise ValueError("max_connections must be >= 1 and max_keepalive >= 0")
        self._max_connections = max_connections
        self._max_keepalive = max_keepalive
        self._expiry = keepalive_expiry
        self._idle: dict[tuple[Any, ...], deque[_Connection]] = {}
        self._idle_count = 0
        self._active = 0
        self._busy: set[_Connection] = set()
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

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
        conn.sink = None  # an idle connection keeps nothing of the request it carried
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
