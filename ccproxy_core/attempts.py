"""The attempt scheduler: which prepared attempt goes next, when, and what the client gets if none answers.

Every route (the model's own, then its fallbacks) is tried once, in order, with no wait in
between. While ``retries.max_attempts`` allows, routes that failed retryably (connect error,
timeout, broken HTTP, a status in :data:`RETRYABLE_STATUS`) are then tried again in the order
they failed, each after its backoff or ``retry-after`` (up to the cap; a longer ``retry-after``
means that route is not retried), never past the total deadline. Attempts come prepared from
the routing (``proxy.py``); each fallback is prepared only when it is needed.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING

import httpx

from .context import Attempt, RequestContext
from .errors import (
    STATUS,
    TOTAL_TIMEOUT,
    ProxyError,
    UpstreamConfigError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from .upstream import UpstreamRequest, aim, keep, release, send

if TYPE_CHECKING:  # pragma: no cover
    from .streaming import StreamingHandler

log = logging.getLogger("ccproxy")

#: Statuses after which the next fallback attempt (if any) is tried, or the same one retried.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait an upstream asked for: ``retry-after-ms``, or ``retry-after`` in seconds or as an HTTP date."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Scheduler:
    """The attempts of one request, made one after the other until one answers usably.

    ``first`` is prepared already; ``rest`` prepares the others, one per ``anext``, and
    raises the :class:`ProxyError` of a route that cannot be prepared. :meth:`run` closes
    ``rest`` (``aclose``, when it has one) before it returns or raises.
    """

    __slots__ = (
        "handler", "ctx", "rest", "routes", "tries", "ready_at", "retry", "exhausted", "count",
        "prepare_error", "last_error", "kept", "kept_buffered", "timer", "deadline",
    )

    def __init__(
        self,
        handler: StreamingHandler,
        ctx: RequestContext,
        first: UpstreamRequest,
        rest: AsyncIterator[UpstreamRequest] | None,
    ) -> None:
        self.handler = handler
        self.ctx = ctx
        self.rest = rest
        self.routes = [first]  # every attempt prepared so far, in order
        self.tries = [0]  # per route: how often it was sent
        self.ready_at: dict[int, float] = {}  # per failed route: the loop time it may be retried
        self.retry: deque[int] = deque()  # failed routes to retry, in the order they failed
        self.exhausted = rest is None  # no route left to prepare
        self.count = 0  # attempts sent
        self.prepare_error: ProxyError | None = None
        self.last_error: ProxyError | None = None
        #: The last retryable answer (status), passed through when nothing better comes.
        self.kept: tuple[httpx.Response, UpstreamRequest] | None = None
        self.kept_buffered = False
        self.timer: asyncio.TimerHandle | None = None
        self.deadline: float | None = None  # loop time of the total timeout

    async def run(self, end: Callable[[ProxyError], object]) -> tuple[httpx.Response, UpstreamRequest]:
        """Make attempts until one answers usably; return its response (head read) and the attempt.

        ``end`` is called with a timeout error when the first attempt's ``timeouts.total``
        runs out (it ends the whole response, relay included); the caller cancels
        :attr:`timer` when the response is over. When nothing answers usably, the last upstream answer is returned (with its
        ``retry-after``), else the last error is raised. Nothing has been written to the
        client yet.

        Raises:
            ProxyError: no attempt answered; ``ctx.error`` is set and ``ccproxy_stream_error`` ran.
        """
        ctx = self.ctx
        answer: UpstreamRequest | None = None
        self._arm(self.routes[0].timeouts.total, end)
        index: int | None = 0
        delay = 0.0
        try:
            while index is not None:
                attempt = self.routes[index]
                upstream = await self._make(index, delay)
                if upstream is not None:
                    answer = attempt
                    return upstream, attempt
                index, delay = await self._next()
                self._log_failure(attempt, index, delay)
                if index is not None and self.kept is not None and not self.kept_buffered:
                    await self._buffer_kept()
        except BaseException:
            if self.kept is not None:
                await asyncio.shield(release(self.kept[0], None))
            raise
        finally:
            # No route is prepared after this: close the generator that prepares them now, or the
            # loop's finalizer does it later from another wake-up, with a task of its own.
            rest, self.rest = self.rest, None
            aclose = getattr(rest, "aclose", None)
            if aclose is not None:
                await aclose()
            # Clients the handler created for attempts that are not the answer.
            if answer is None and self.kept is not None:
                answer = self.kept[1]
            for other in self.routes:
                if other.close_client_on_finish and other is not answer:
                    await asyncio.shield(other.client.aclose())
        if self.kept is not None:
            return self.kept
        error = self.last_error or self.prepare_error or UpstreamError("no upstream could be tried")
        ctx.error = error
        await self.handler.plugins.notify("ccproxy_stream_error", ctx=ctx, error=error)
        raise error

    def _arm(self, total: float, end: Callable[[ProxyError], object]) -> None:
        """Start the whole-exchange timer (when the first attempt is made)."""
        loop = asyncio.get_running_loop()
        remaining = max(0.0, total - self.ctx.elapsed())
        self.deadline = loop.time() + remaining
        self.timer = loop.call_later(remaining, _expire, end, total)

    async def _make(self, index: int, delay: float) -> httpx.Response | None:
        """Send route ``index`` after ``delay``; its response when usable, else None.

        A failure is recorded in ``ctx.attempts`` and, when retryable, scheduled for a retry;
        a retryable answer is held in :attr:`kept` (so that a cancellation still closes it).
        """
        ctx = self.ctx
        handler = self.handler
        policy = handler.retries
        attempt = self.routes[index]
        if delay > 0:
            await asyncio.sleep(delay)
        self.tries[index] += 1
        self.count += 1
        aim(ctx, attempt.provider, attempt.model, attempt.upstream_dialect)
        ctx.upstream_url = attempt.url
        record = Attempt(attempt.provider, attempt.model, attempt.url, delay=delay)
        ctx.attempts.append(record)
        wait: float | None = None
        try:
            upstream = await send(attempt)
        except ProxyError as error:
            record.error, record.error_kind, record.elapsed = error.message, error.error_kind, ctx.elapsed()
            self.last_error = error
            # A URL that cannot be used fails the same way every time: no retry, no fallback.
            retryable = not isinstance(error, UpstreamConfigError)
            if not retryable:
                self.exhausted = True
                self.retry.clear()
        else:
            # From here the response is always held by `kept`, so that a cancellation
            # at any await below still closes it.
            previous, self.kept = self.kept, (upstream, attempt)
            record.status, record.elapsed = upstream.status_code, ctx.elapsed()
            if upstream.status_code >= 400:
                record.error_kind = STATUS
            if previous is not None:
                await asyncio.shield(release(previous[0], None))
            if upstream.status_code not in RETRYABLE_STATUS:
                if handler.attempt_hooks:
                    pending = handler.plugins.run("ccproxy_upstream_attempt", ctx=ctx, attempt=record)
                    if pending is not None:
                        await pending
                if len(ctx.attempts) > 1:
                    log.info(
                        "request %s: attempt %d at %s (%s) answered %d",
                        ctx.request_id, len(ctx.attempts), attempt.provider, attempt.model, upstream.status_code,
                    )
                self.kept = None
                return upstream
            wait = retry_after_seconds(upstream.headers)
            retryable = wait is None or wait <= policy.retry_after_cap
            self.kept_buffered, self.last_error = upstream.is_stream_consumed, None
        if handler.attempt_hooks:
            pending = handler.plugins.run("ccproxy_upstream_attempt", ctx=ctx, attempt=record)
            if pending is not None:
                await pending
        if retryable:
            if wait is None:
                step = min(policy.backoff_max, policy.backoff_base * 2 ** (self.tries[index] - 1))
                wait = step * (0.5 + random.random() / 2)
            self.ready_at[index] = asyncio.get_running_loop().time() + wait
            self.retry.append(index)
        return None

    async def _next(self) -> tuple[int | None, float]:
        """The route to send next and the wait before it: an untried route first, then retries."""
        index = await self._fresh()
        if index is not None:
            return index, 0.0
        if self.count >= self.handler.retries.max_attempts:
            return None, 0.0
        loop = asyncio.get_running_loop()
        while self.retry:
            index = self.retry.popleft()
            delay = max(0.0, self.ready_at.get(index, 0.0) - loop.time())
            if self.deadline is None or loop.time() + delay < self.deadline - 0.05:
                return index, delay
        return None, 0.0

    async def _fresh(self) -> int | None:
        """Prepare the next route; its index, or None when none is left."""
        if self.exhausted:
            return None
        assert self.rest is not None
        try:
            attempt = await anext(self.rest)
        except StopAsyncIteration:
            self.exhausted = True
            return None
        except ProxyError as error:  # preparing an attempt failed (e.g. cannot be translated)
            self.exhausted, self.prepare_error = True, error
            return None
        self.routes.append(attempt)
        self.tries.append(0)
        return len(self.routes) - 1

    def _log_failure(self, attempt: UpstreamRequest, index: int | None, delay: float) -> None:
        ctx = self.ctx
        record = ctx.attempts[-1]
        failure = record.error or f"status {record.status}"
        if index is None:
            log.warning(
                "request %s: attempt %d at %s (%s) failed: %s; no attempt left",
                ctx.request_id, len(ctx.attempts), attempt.provider, attempt.model, failure,
            )
            return
        target = self.routes[index]
        log.warning(
            "request %s: attempt %d at %s (%s) failed: %s; %s %s (%s)%s",
            ctx.request_id, len(ctx.attempts), attempt.provider, attempt.model, failure,
            "retrying" if target is attempt else "falling back to", target.provider, target.model,
            f" in {delay:.2f}s" if delay > 0 else "",
        )

    async def _buffer_kept(self) -> None:
        """Another attempt follows: free the kept answer's connection, keep the answer in memory."""
        self.kept_buffered = True
        assert self.kept is not None
        upstream, attempt = self.kept
        buffered = await keep(upstream, attempt, self.handler.limits)
        if buffered is None:
            self.last_error = UpstreamProtocolError(f"the upstream answered {upstream.status_code} and broke off")
            self.kept = None
        else:
            self.kept = (buffered, attempt)


def _expire(end: Callable[[ProxyError], object], total: float) -> None:
    """The total timeout ran out: ``end`` the response with the error (made only now: rarely needed)."""
    end(UpstreamTimeout(f"the response took longer than {total:g}s", error_kind=TOTAL_TIMEOUT))
