"""The ``memory`` state backend: one worker's own dicts (the default).

Atomic because nothing in :meth:`MemoryState.take` awaits: the event loop runs it whole. Limits
hold per worker only; ``--workers N`` gives each worker its own counts (use ``sqlite`` or ``redis``).
"""

from __future__ import annotations

import time
from typing import Sequence

from . import ADMITTED, Check, Verdict, Window

#: Expired entries are swept when this many more were stored since the last sweep.
SWEEP_EVERY = 4096


class MemoryState:
    kind = "memory"

    def __init__(self) -> None:
        self._counters: dict[str, list[float]] = {}  # name -> [value, ends at (monotonic)]
        self._values: dict[str, tuple[bytes, float]] = {}
        self._stored = 0

    def _open(self, window: Window, now: float) -> list[float] | None:
        entry = self._counters.get(window.name)
        if entry is not None and entry[1] <= now:
            return None
        return entry

    def _count(self, window: Window, amount: float, now: float) -> None:
        entry = self._counters.get(window.name)  # _open's look-up, inline: twice or thrice per request
        if entry is not None and entry[1] > now:
            entry[0] += amount
            return
        self._counters[window.name] = [amount, now + window.period]
        self._stored += 1
        if self._stored >= SWEEP_EVERY:
            self._sweep(now)

    async def take(self, checks: Sequence[Check]) -> Verdict:
        now = time.monotonic()
        counters = self._counters
        for i, check in enumerate(checks):
            entry = counters.get(check.window.name)
            if entry is not None and check.limit is not None and entry[0] >= check.limit and entry[1] > now:
                return Verdict(i, entry[1] - now)
        for check in checks:
            if check.amount:
                self._count(check.window, check.amount, now)
        return ADMITTED

    def add_now(self, amounts: Sequence[tuple[Window, float]]) -> None:
        now = time.monotonic()
        for window, amount in amounts:
            if amount:
                self._count(window, amount, now)

    async def add(self, amounts: Sequence[tuple[Window, float]]) -> None:
        self.add_now(amounts)

    async def read(self, windows: Sequence[Window]) -> list[tuple[float, float]]:
        now = time.monotonic()
        found = []
        for window in windows:
            entry = self._open(window, now)
            found.append((0.0, 0.0) if entry is None else (entry[0], entry[1] - now))
        return found

    async def get(self, key: str) -> bytes | None:
        found = self._values.get(key)
        if found is None or found[1] <= time.monotonic():
            return None
        return found[0]

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        now = time.monotonic()
        self._values[key] = (value, now + ttl)
        self._stored += 1
        if self._stored >= SWEEP_EVERY:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        self._stored = 0
        self._counters = {k: v for k, v in self._counters.items() if v[1] > now}
        self._values = {k: v for k, v in self._values.items() if v[1] > now}

    async def close(self) -> None:
        pass
