"""The whole gateway's dashboard: each worker's counters published to, and read from, the shared state.

With ``state.backend`` ``sqlite`` or ``redis`` (``app.ctx.state``, :mod:`ccproxy_core.state`) every
worker of every instance runs :meth:`Shared.publish` once per push interval, never per request: when
its numbers changed (or before they would expire) it ``put``s its :meth:`Aggregate.export` under
``dashboard:worker:ID`` for :attr:`Shared.ttl` seconds, and keeps its ID in the roster
(``dashboard:roster``, JSON ``{ID: unix time}``; rewritten only when its own entry is missing or a
third of ``ttl`` old, so two workers rewriting it at once lose at most one refresh, which the next
interval repeats). :meth:`Shared.gather` reads the roster and each listed worker's parts (its own
from memory): the view of the whole gateway, as fresh as one interval. A worker that stopped drops
out after ``ttl`` seconds, and its numbers with it.

Every failure of the state is :class:`StateUnavailable` to the caller, which shows its own worker's
numbers and says so.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from typing import Any

from ccproxy_core import StateBackend

from .aggregate import Aggregate

ROSTER = "dashboard:roster"
#: The layout of a published part; parts of another layout (an instance mid-upgrade) are left out.
FORMAT = 1


class Shared:
    """One worker's link to the others through ``state`` (see the module docstring)."""

    def __init__(self, state: StateBackend, aggregate: Aggregate, interval: float) -> None:
        self.state = state
        self.aggregate = aggregate
        self.ttl = max(10.0, 5 * interval)
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.published = (-1, 0.0)  # (version, time) of the last put
        self.listed = 0.0  # when this worker last wrote itself into the roster

    async def publish(self) -> None:
        """Put this worker's parts when they changed or are a third of ``ttl`` old; keep the roster."""
        now = time.time()
        version = self.aggregate.version
        if version != self.published[0] or now - self.published[1] > self.ttl / 3:
            parts = json.dumps({**self.aggregate.export(), "format": FORMAT}, separators=(",", ":")).encode()
            await self.state.put(f"dashboard:worker:{self.id}", parts, self.ttl)
            self.published = (version, now)
        if now - self.listed > self.ttl / 3:
            roster = await self._roster(now)
            roster[self.id] = now
            await self.state.put(ROSTER, json.dumps(roster).encode(), self.ttl)
            self.listed = now

    async def gather(self) -> list[dict[str, Any]]:
        """The parts of every live worker, this one's first (read now, not published)."""
        parts = [self.aggregate.export()]
        for worker in await self._roster(time.time()):
            if worker != self.id:
                part = loaded(await self.state.get(f"dashboard:worker:{worker}"))
                if part.get("format") == FORMAT:
                    parts.append(part)
        return parts

    async def _roster(self, now: float) -> dict[str, float]:
        roster = loaded(await self.state.get(ROSTER))
        return {worker: seen for worker, seen in roster.items() if isinstance(seen, (int, float)) and now - seen < self.ttl}


def loaded(found: bytes | None) -> dict[str, Any]:
    """A stored JSON object, or ``{}`` for nothing or anything else (the state may be shared with others)."""
    try:
        value = json.loads(found) if found else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
