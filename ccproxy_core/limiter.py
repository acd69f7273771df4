"""The concurrency limiter: how many responses a worker sends at once, and ending them at shutdown."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .config import Limits
from .errors import Overloaded, ProxyError
from .relay import END_WRITE_TIMEOUT

if TYPE_CHECKING:  # pragma: no cover
    from .streaming import DeferredResponse

log = logging.getLogger("ccproxy")


class Limiter:
    """The responses being sent now (this worker): admits new ones, drains them at shutdown."""

    def __init__(self, limits: Limits) -> None:
        self.max_streams = limits.max_concurrent_streams
        self.overload_retry_after = limits.overload_retry_after
        #: The responses being sent now (this worker), for the concurrency limit and shutdown.
        self.active: set[DeferredResponse] = set()
        #: Set at shutdown: new responses are refused with 503.
        self.draining = False

    def refusal(self) -> ProxyError | None:
        """The error a new response gets instead of an upstream call, or None to go ahead."""
        if self.draining:
            return Overloaded("the proxy is shutting down; retry on another instance", headers={"retry-after": "1"})
        if self.max_streams and len(self.active) >= self.max_streams:
            return Overloaded(
                f"the proxy is at its limit of {self.max_streams} concurrent requests; retry shortly",
                headers={"retry-after": str(self.overload_retry_after)},
            )
        return None

    async def drain(self, grace: float) -> None:
        """Shutdown: refuse new work, let responses run for ``grace`` seconds, then end the rest.

        Each response still running is ended in its client's dialect (a 503 before its
        head, an ``overloaded`` error event after it) and its upstream closed.
        """
        self.draining = True
        loop = asyncio.get_running_loop()
        if self.active:
            log.warning(
                "shutting down: %d response(s) in flight, waiting up to %gs for them to finish",
                len(self.active), grace,
            )
        deadline = loop.time() + grace
        while self.active and loop.time() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
        if not self.active:
            log.info("shutting down: no response in flight")
            return
        log.warning("shutting down: grace period of %gs over, ending %d response(s) with an error", grace, len(self.active))
        for response in list(self.active):
            response.end(Overloaded("the proxy is shutting down; the response was cut short", headers={"retry-after": "1"}))
        deadline = loop.time() + END_WRITE_TIMEOUT + 1
        while self.active and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.active:
            log.error("shutting down: %d response(s) did not end; their connections are aborted", len(self.active))
