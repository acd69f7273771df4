"""Shared state: counters in time windows and expiring values, in one of three backends.

What must hold across workers (``sanic --workers N``) or instances — rate limits, budgets, stored
responses — lives behind :class:`StateBackend`, chosen by the top-level ``state:`` block:
``memory`` (one worker's own dicts; the default), ``sqlite`` (one file, every worker on one
machine, each operation a transaction) or ``redis`` (every instance; each operation one round
trip, a Lua script where it must be atomic). The core opens one per worker (``app.ctx.state``)
before ``ccproxy_startup`` and closes it after ``ccproxy_shutdown``.

The interface (every method a coroutine but ``add_now``; every failure of the backend is
:class:`StateUnavailable`):

* ``take(checks)`` — the atomic check-and-count. Each :class:`Check` names a :class:`Window`,
  a ``limit`` (None: none) and an ``amount``: when every window's current value is below its limit, every
  amount is added and the result is ``Verdict(None, 0)``; otherwise nothing is added and the
  verdict names the first check refused and the seconds until its window ends. With many
  requests in flight, a limit of N lets exactly N through (memory: per worker; sqlite: per
  machine; redis: everywhere).
* ``add(amounts)`` — add ``(window, amount)`` pairs after the fact (tokens, dollars), no check.
  ``add_now(amounts)`` is the same as a plain call: no backend's add waits (memory and sqlite count at
  once, redis queues the amounts for its next round trip), and a caller that must not suspend (the
  gateway's ``ccproxy_stream_end``) uses it.
* ``read(windows)`` — each window's ``(value, seconds left)``; ``(0, 0)`` for a window not open.
* ``get(key)`` / ``put(key, value, ttl)`` — a value (bytes) kept ``ttl`` seconds (the Responses
  store's ``previous_response_id``).

A window opens at its first count and lasts ``period`` seconds, then starts again from zero (a
fixed window anchored at first use: one number per window, no clock shared between machines
besides the backend's own).

Backends log the start and the end of an outage once each (a line, no traceback); what a
failure means for a request (``state.on_error``) is the caller's decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from ..config import StateSettings

log = logging.getLogger("ccproxy.state")

__all__ = ["Check", "StateBackend", "StateUnavailable", "Verdict", "Window", "open_state"]

#: Every name a backend stores starts with this (Redis and SQLite may be shared with others).
PREFIX = "ccproxy:"


class StateUnavailable(Exception):
    """The backend could not answer (down, timed out, locked); the message says why, without secrets."""


@dataclass(frozen=True, slots=True)
class Window:
    """A counter named ``name`` that lives ``period`` seconds from its first count."""

    name: str
    period: float


class Check(NamedTuple):
    """Refuse when ``window``'s value is already ``limit`` or more (None: never); else add ``amount`` (may be 0)."""

    window: Window
    limit: float | None
    amount: float = 1


class Verdict(NamedTuple):
    """What :meth:`StateBackend.take` decided: ``refused`` is None or the index of the refusing check."""

    refused: int | None
    retry_after: float


ADMITTED = Verdict(None, 0.0)


class StateBackend(Protocol):
    """The state interface (see the module docstring); ``kind`` is ``memory``, ``sqlite`` or ``redis``."""

    kind: str

    async def take(self, checks: Sequence[Check]) -> Verdict: ...

    async def add(self, amounts: Sequence[tuple[Window, float]]) -> None: ...

    def add_now(self, amounts: Sequence[tuple[Window, float]]) -> None: ...

    async def read(self, windows: Sequence[Window]) -> list[tuple[float, float]]: ...

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl: float) -> None: ...

    async def close(self) -> None: ...


class Outages:
    """Logs the start and the end of a backend's outage, once each."""

    def __init__(self, what: str, on_error: str) -> None:
        self.what = what
        self.on_error = on_error
        self.down = False

    def failed(self, exc: BaseException) -> StateUnavailable:
        """The error to raise for ``exc``; the first failure of an outage is logged (one line)."""
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if not self.down:
            self.down = True
            if self.on_error == "open":
                log.warning("state: %s unavailable (%s); on_error: open, requests pass without limits until it returns",
                            self.what, reason)
            else:
                log.error("state: %s unavailable (%s); on_error: closed, limited requests get 503 until it returns",
                          self.what, reason)
        return StateUnavailable(f"{self.what} unavailable ({reason})")

    def ok(self) -> None:
        if self.down:
            self.down = False
            log.warning("state: %s is back", self.what)


def open_state(settings: StateSettings) -> StateBackend:
    """The backend ``settings`` name (Redis connects on first use; SQLite opens its file now)."""
    if settings.backend == "sqlite":
        from .sqlite import SQLiteState

        return SQLiteState(settings.path, settings.timeout, Outages(f"sqlite {settings.path}", settings.on_error))
    if settings.backend == "redis":
        from .redis import RedisState, describe

        return RedisState(settings.url, settings.timeout, Outages(f"redis {describe(settings.url)}", settings.on_error))
    from .memory import MemoryState

    return MemoryState()
