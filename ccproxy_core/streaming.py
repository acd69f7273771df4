"""The streaming core: one upstream exchange relayed to one client.

:meth:`StreamingHandler.handle_streaming_request` returns a
:class:`DeferredResponse`. Sanic sends it by awaiting it; only then is the
upstream called. Nothing is written to the client until the upstream's status
and headers have arrived, so the client gets the upstream's real status and
headers (or, before that point, a clean error or the next fallback's answer).
After the head, each upstream read is written as it arrives: no buffering, no
coalescing, and byte for byte unless a response adapter rewrites the body.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import json
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from sanic.response import HTTPResponse, ResponseStream

from . import dialects
from .config import Limits, Retries, Timeouts
from .context import (
    CLIENT_DISCONNECTED,
    COMPLETED,
    REJECTED,
    UPSTREAM_ERROR,
    Attempt,
    RequestContext,
)
from .decoding import decoded, decoder_for
from .errors import (
    CONNECT_TIMEOUT,
    HEADERS_TIMEOUT,
    IDLE_TIMEOUT,
    POOL_TIMEOUT,
    STATUS,
    TOTAL_TIMEOUT,
    WRITE_TIMEOUT,
    Overloaded,
    ProxyError,
    SendTimeout,
    UpstreamConfigError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from .headers import BODY_FRAMING, REQUEST_ID_HEADER, STREAM_HEADERS, response_headers
from .plugins import Plugins
from .sse import EventSizeLimit, SSEParser
from .transport import fast_path

log = logging.getLogger("ccproxy")

#: Statuses after which the next fallback attempt (if any) is tried, or the same one retried.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})
#: A retryable answer kept (to pass through if nothing better comes) is buffered up to this size.
MAX_KEPT_ERROR_BODY = 1024 * 1024
#: Seconds the error event written at shutdown or on the total timeout may take.
END_WRITE_TIMEOUT = 2.0


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


class ResponseAdapter(Protocol):
    """Rewrites one response body; returned by ``ccproxy_response_adapter``."""

    def feed(self, data: bytes) -> bytes:
        """Take decoded upstream bytes (split anywhere); return bytes for the client (may be empty)."""

    def finish(self) -> bytes:
        """The upstream body ended cleanly; return what is left to write."""


class AdapterChain:
    """Several adapters in a row: each one's output is the next one's input."""

    __slots__ = ("adapters",)

    def __init__(self, adapters: list[ResponseAdapter]) -> None:
        self.adapters = adapters

    def feed(self, data: bytes) -> bytes:
        for adapter in self.adapters:
            data = adapter.feed(data)
        return data

    def finish(self) -> bytes:
        data = b""
        for adapter in self.adapters:
            data = (adapter.feed(data) if data else b"") + adapter.finish()
        return data


AdapterFactory = Callable[[RequestContext], Awaitable["ResponseAdapter | None"]]
HeadersCallback = Callable[[RequestContext, int, dict[str, str]], Any]


@dataclass(frozen=True, slots=True)
class HandlerConfig:
    """How one provider's responses are processed."""

    #: Called once the upstream answered; returns the adapter for this response or None.
    response_adapter: AdapterFactory | None = None
    supports_streaming: bool = True


@dataclass(slots=True)
class UpstreamRequest:
    """One prepared attempt at one provider."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    handler_config: HandlerConfig
    client: httpx.AsyncClient
    timeouts: Timeouts
    provider: str = ""
    model: str = ""
    upstream_dialect: str | None = None
    #: Close ``client`` when the response is over (the handler created it).
    close_client_on_finish: bool = False
    #: When set, called directly instead of ``client.send`` (the hot path skips httpx's client layer).
    transport: httpx.AsyncBaseTransport | None = None


def _map_httpx_error(exc: Exception, timeouts: Timeouts, *, head: bool) -> ProxyError:
    """The one place httpx's exceptions become ours, each with its :data:`~.errors.ERROR_KINDS` entry."""
    if isinstance(exc, httpx.ConnectTimeout):
        return UpstreamTimeout(
            f"timed out connecting to the upstream after {timeouts.connect:g}s", error_kind=CONNECT_TIMEOUT
        )
    if isinstance(exc, httpx.PoolTimeout):
        return UpstreamTimeout(
            f"no connection to the upstream became free within {timeouts.connect:g}s (the connection pool is full)",
            error_kind=POOL_TIMEOUT,
        )
    if isinstance(exc, httpx.WriteTimeout):
        return UpstreamTimeout(
            f"sending the request to the upstream stalled for {timeouts.connect:g}s", error_kind=WRITE_TIMEOUT
        )
    if isinstance(exc, httpx.TimeoutException):  # ReadTimeout
        if head:
            return UpstreamTimeout(
                f"the upstream sent no response headers within {timeouts.headers:g}s", error_kind=HEADERS_TIMEOUT
            )
        return UpstreamTimeout(f"the upstream sent nothing for {timeouts.idle:g}s", error_kind=IDLE_TIMEOUT)
    if isinstance(exc, httpx.UnsupportedProtocol):
        # The URL comes from the configuration: name the problem, never the URL (it may hold a key).
        return UpstreamConfigError(
            "the provider's URL cannot be used (unsupported scheme or proxy); check its base_url in the configuration"
        )
    if isinstance(exc, httpx.ConnectError):
        return UpstreamConnectError("could not connect to the upstream")
    if isinstance(exc, httpx.RemoteProtocolError):
        return UpstreamProtocolError("the upstream broke the HTTP protocol or closed the response early")
    if isinstance(exc, httpx.HTTPError):
        return UpstreamConnectError(f"the upstream connection failed ({type(exc).__name__})")
    return UpstreamError(f"upstream failure ({type(exc).__name__})")


class StreamingHandler:
    """Decides whether to stream and builds the deferred responses that do the work."""

    def __init__(self, plugins: Plugins, *, retries: Retries | None = None, limits: Limits | None = None) -> None:
        self.plugins = plugins
        # Plugins are fixed once loaded: decide the per-chunk work once.
        self.chunk_hooks = plugins.implemented("ccproxy_stream_chunk")
        self.event_hooks = plugins.implemented("ccproxy_stream_event")
        self.body_hooks = plugins.implemented("ccproxy_response_body")
        self.attempt_hooks = plugins.implemented("ccproxy_upstream_attempt")
        #: Some end-of-body observer is async, so it can be suspended and a client leaving then could
        #: cut it short: such observers run in a task of their own (sync ones cannot be interrupted).
        self.end_hooks_suspend = any(
            inspect.iscoroutinefunction(func)
            for name in ("ccproxy_stream_event", "ccproxy_response_body")
            for _, func, _ in plugins.impls(name)
        )
        self.retries = retries or Retries()
        limits = self.limits = limits or Limits()
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

    @staticmethod
    def should_stream_response(headers: Mapping[str, str]) -> bool:
        """True when ``Accept`` (else ``Content-Type``) names ``text/event-stream``, any case."""
        value = headers.get("accept") or headers.get("Accept") or ""
        if not value:
            value = headers.get("content-type") or headers.get("Content-Type") or ""
        return "text/event-stream" in value.lower()

    @staticmethod
    def should_stream(body: bytes | Mapping[str, Any], handler_config: HandlerConfig) -> bool:
        """True only when the provider streams and the JSON body says ``"stream": true``.

        ``body`` is the request's bytes (not JSON, or not an object: False) or its parsed object.
        """
        if not handler_config.supports_streaming:
            return False
        if isinstance(body, Mapping):
            return body.get("stream") is True
        try:
            data = json.loads(body)
        except (ValueError, TypeError):
            return False
        return isinstance(data, dict) and data.get("stream") is True

    def handle_streaming_request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes,
        handler_config: HandlerConfig,
        request_context: RequestContext,
        client: httpx.AsyncClient | None = None,
        client_config: dict[str, Any] | None = None,
        *,
        timeouts: Timeouts | None = None,
        on_headers: HeadersCallback | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        fallbacks: AsyncIterable[UpstreamRequest] | None = None,
    ) -> DeferredResponse:
        """A deferred response for one upstream call; nothing happens until Sanic sends it.

        With no ``client`` one is created from ``client_config`` and closed when
        the response is over. ``on_headers(ctx, status, headers)`` runs once when
        the upstream's head arrives, before the header hooks. ``transport``, when
        given, is called directly instead of ``client.send``.

        ``fallbacks`` are further attempts (the proxy routes pass the model's other
        routes), tried in order when this one fails retryably, each prepared only when
        it is needed; a :class:`ProxyError` raised while preparing one answers the client.
        The ``retries`` policy governs them all (see :meth:`DeferredResponse._open`).
        """
        attempt = UpstreamRequest(
            method=method,
            url=url,
            headers=headers,
            body=body,
            handler_config=handler_config,
            client=client or httpx.AsyncClient(**(client_config or {})),
            timeouts=timeouts or Timeouts(),
            provider=request_context.provider or "",
            model=request_context.model or "",
            upstream_dialect=request_context.upstream_dialect,
            close_client_on_finish=client is None,
            transport=transport,
        )
        return DeferredResponse(self, request_context, _chain(attempt, fallbacks), on_headers)


def _header_items(headers: httpx.Headers) -> list[tuple[str, str]]:
    """``headers.multi_items()`` with the names as received (the caller lower-cases them), cheaper.

    ASCII headers (nearly all) are decoded here; otherwise httpx's own guess of the encoding is used.
    """
    try:
        return [(k.decode("ascii"), v.decode("ascii")) for k, v in headers.raw]
    except UnicodeDecodeError:
        return headers.multi_items()


_URLS: dict[str, httpx.URL] = {}


def parsed_url(url: str) -> httpx.URL:
    """``httpx.URL(url)``, cached: upstream URLs repeat (a base URL, a path, the client's query)."""
    parsed = _URLS.get(url)
    if parsed is None:
        if len(_URLS) >= 1024:  # the query string comes from clients: bound the cache
            _URLS.clear()
        parsed = _URLS[url] = httpx.URL(url)
    return parsed


async def _chain(
    first: UpstreamRequest, rest: AsyncIterable[UpstreamRequest] | None
) -> AsyncIterator[UpstreamRequest]:
    yield first
    if rest is not None:
        async for attempt in rest:
            yield attempt


def _cancel_safe(attempt: UpstreamRequest) -> bool:
    """True when the attempt's transport survives a cancelled request or read (a :class:`~.transport.FastPath` does).

    httpcore (httpx's stock transport, and any ``AsyncClient``) cleans up after a
    cancellation with awaits of its own; a second cancellation landing there (a client
    that leaves while the response ends) leaves the connection checked out for good:
    about 5% of 1,000 random disconnects did. For those transports each upstream call
    and each body read runs in its own task (:func:`_uninterrupted`, :func:`_guarded`),
    which is cancelled at most once.
    """
    return fast_path(attempt.transport) is not None


async def _guarded(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks`` with each read in its own task: a cancellation reaches a read at most once."""
    step = chunks.__anext__
    while True:
        read = asyncio.ensure_future(step())
        try:
            chunk = await asyncio.shield(read)
        except StopAsyncIteration:
            return
        except asyncio.CancelledError:
            if not read.done():
                # The read may be in the transport's cleanup already (an upstream error): let
                # that finish; a read still waiting for data is cancelled, once.
                await asyncio.wait([read], timeout=0.05)
                if not read.done():
                    read.cancel()
                    await asyncio.wait([read])
            if not read.cancelled():
                read.exception()  # retrieved: no "never retrieved" warning
            raise
        yield chunk


async def _uninterrupted(sending: Awaitable[httpx.Response]) -> httpx.Response:
    """Await an upstream call that a cancellation must not interrupt; if one comes, close its response later.

    The call runs in its own task; when the caller is cancelled, the response is closed
    as soon as it arrives (see :func:`_cancel_safe`).
    """
    task = asyncio.ensure_future(sending)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_close_late)
        raise


_closing: set[asyncio.Future[Any]] = set()  # strong references until done


def _close_late(task: asyncio.Future[httpx.Response]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    closing = asyncio.ensure_future(task.result().aclose())
    _closing.add(closing)
    closing.add_done_callback(_closing.discard)


def _body_too_large(limit: int) -> UpstreamProtocolError:
    return UpstreamProtocolError(f"the upstream's response body is larger than {limit} bytes")


class _Open:
    """A write gate that is always open (no Sanic protocol to ask, e.g. under ASGI)."""

    @staticmethod
    def is_set() -> bool:
        return True


def _write_gate(request: Any) -> asyncio.Event | _Open:
    """The event Sanic's ``send`` waits on before each write (cleared while the client's buffer is full)."""
    try:
        gate = request.protocol._can_write
    except AttributeError:
        return _Open()
    return gate if isinstance(gate, asyncio.Event) else _Open()


class DeferredResponse(ResponseStream):
    """A Sanic response that calls the upstream when sent and relays its answer."""

    __slots__ = (
        "handler", "ctx", "attempts", "on_headers", "_task", "_reason", "_cancellable", "_timer", "_deadline",
        "_is_sse", "_tail", "_writable", "_ending", "_done", "_length",
    )

    def __init__(
        self,
        handler: StreamingHandler,
        ctx: RequestContext,
        attempts: AsyncIterator[UpstreamRequest],
        on_headers: HeadersCallback | None,
    ) -> None:
        super().__init__(self._unused, status=200)
        self.handler = handler
        self.ctx = ctx
        self.attempts = attempts
        self.on_headers = on_headers
        self.response = None  # type: ignore[assignment]  # set when the head is prepared
        self._task: asyncio.Task[Any] | None = None
        #: Why the response is being ended early (total timeout, shutdown); set with a cancel.
        self._reason: ProxyError | None = None
        self._cancellable = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._is_sse = False
        self._tail = b""  # the last bytes written to the client (counting events across writes)
        self._writable: asyncio.Event | _Open | None = None  # set while the client's buffer has room
        #: Async end-of-body observers running in their own task (see ``_end``).
        self._ending: asyncio.Future[None] | None = None
        self._done = False  # the response's last byte was handed to the transport
        self._length: int | None = None  # the body's content-length, when the client is told one

    @staticmethod
    async def _unused(_: Any) -> None:  # pragma: no cover - stream() is overridden
        raise NotImplementedError

    async def stream(self) -> HTTPResponse:  # type: ignore[override]
        """Run the exchange; called by Sanic. Returns the response that was written."""
        ctx = self.ctx
        handler = self.handler
        refusal = handler.refusal()
        if refusal is not None:
            ctx.outcome, ctx.error = REJECTED, refusal
            try:
                await self._fail_before_head(refusal)
            finally:
                await asyncio.shield(self._finish(None, None))
            return self.response
        task = self._task = asyncio.current_task()
        handler.active.add(self)
        self._cancellable = True
        upstream: httpx.Response | None = None
        attempt: UpstreamRequest | None = None
        try:
            try:
                try:
                    upstream, attempt = await self._open()
                except ProxyError as error:
                    self._cancellable = False
                    ctx.outcome = UPSTREAM_ERROR if isinstance(error, UpstreamError) else REJECTED
                    await self._fail_before_head(error)
                    return self.response
                await self._relay(upstream, attempt)
            except asyncio.CancelledError:
                reason = self._reason
                # Ours (total timeout, shutdown) unless the client left as well; the outcome is
                # settled in _finish, once the end of the response (if it began) is over.
                if reason is None or task is None or task.uncancel() > 0:
                    raise
                await self._end_early(reason)
        finally:
            self._cancellable = False
            if self._timer is not None:
                self._timer.cancel()
            handler.active.discard(self)
            # Shielded: a second cancellation must not leak the pooled connection.
            await asyncio.shield(self._finish(upstream, attempt))
        return self.response

    def end(self, reason: ProxyError) -> bool:
        """End this response early with ``reason`` (from outside its task); False when too late.

        Before the head the client gets ``reason`` as an error response; after it an error
        event and a broken end. The upstream is closed either way.
        """
        if not self._cancellable or self._reason is not None or self._task is None or self._task.done():
            return False
        self._reason = reason
        self._task.cancel()
        return True

    def _arm(self, total: float) -> None:
        """Start the whole-exchange timer (once, when the first attempt is known)."""
        if self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        remaining = max(0.0, total - self.ctx.elapsed())
        self._deadline = loop.time() + remaining
        self._timer = loop.call_later(
            remaining, self.end,
            UpstreamTimeout(f"the response took longer than {total:g}s", error_kind=TOTAL_TIMEOUT),
        )

    async def _end_early(self, reason: ProxyError) -> None:
        """Our own cancellation arrived: answer with ``reason`` in the client's dialect."""
        self._cancellable = False
        ctx = self.ctx
        log.warning("request %s: ended early: %s", ctx.request_id, reason.message)
        if self.response is None:
            ctx.outcome = UPSTREAM_ERROR if isinstance(reason, UpstreamError) else REJECTED
            ctx.error = reason
            await self.handler.plugins.notify("ccproxy_stream_error", ctx=ctx, error=reason)
            await self._fail_before_head(reason)
        else:
            await self._fail_after_head(self.response, reason, self._is_sse, bounded=True)

    # -- before the head ----------------------------------------------------------

    async def _open(self) -> tuple[httpx.Response, UpstreamRequest]:
        """Try the attempts until one answers usably; return that response.

        Every route (the model's own, then its fallbacks) is tried once, in order, with
        no wait in between. While ``retries.max_attempts`` allows, routes that failed
        retryably (connect error, timeout, broken HTTP, a status in
        :data:`RETRYABLE_STATUS`) are then tried again in the order they failed, each
        after its backoff or ``retry-after`` (up to the cap; a longer ``retry-after``
        means that route is not retried). When nothing answers usably, the last
        upstream answer is passed through (with its ``retry-after``), else the last
        error is the client's answer. Nothing has been written to the client yet.
        """
        ctx = self.ctx
        policy = self.handler.retries
        loop = asyncio.get_running_loop()
        routes: list[UpstreamRequest] = []
        tries: list[int] = []
        ready_at: dict[int, float] = {}  # loop time a failed route may be retried
        retry: deque[int] = deque()
        exhausted = False
        prepare_error: ProxyError | None = None
        last_error: ProxyError | None = None
        kept: tuple[httpx.Response, UpstreamRequest] | None = None
        kept_buffered = False
        answered: UpstreamRequest | None = None
        count = 0

        async def fresh() -> int | None:
            nonlocal exhausted, prepare_error
            if exhausted:
                return None
            try:
                attempt = await anext(self.attempts)
            except StopAsyncIteration:
                exhausted = True
                return None
            except ProxyError as error:  # preparing an attempt failed (e.g. cannot be translated)
                exhausted, prepare_error = True, error
                return None
            routes.append(attempt)
            tries.append(0)
            self._arm(attempt.timeouts.total)
            return len(routes) - 1

        def next_retry() -> tuple[int, float] | None:
            if count >= policy.max_attempts:
                return None
            while retry:
                index = retry.popleft()
                delay = max(0.0, ready_at.get(index, 0.0) - loop.time())
                if self._deadline is None or loop.time() + delay < self._deadline - 0.05:
                    return index, delay
            return None

        try:
            index = await fresh()
            delay = 0.0
            while index is not None:
                attempt = routes[index]
                if delay > 0:
                    await asyncio.sleep(delay)
                tries[index] += 1
                count += 1
                ctx.provider, ctx.model = attempt.provider, attempt.model
                ctx.upstream_dialect = attempt.upstream_dialect
                ctx.upstream_url = attempt.url
                record = Attempt(attempt.provider, attempt.model, attempt.url, delay=delay)
                ctx.attempts.append(record)
                wait: float | None = None
                try:
                    upstream = await self._send(attempt)
                except ProxyError as error:
                    record.error, record.error_kind, record.elapsed = error.message, error.error_kind, ctx.elapsed()
                    last_error = error
                    # A URL that cannot be used fails the same way every time: no retry, no fallback.
                    retryable = not isinstance(error, UpstreamConfigError)
                    if not retryable:
                        exhausted = True
                        retry.clear()
                else:
                    # From here the response is always held by `kept`, so that a cancellation
                    # at any await below still closes it.
                    previous, kept = kept, (upstream, attempt)
                    record.status, record.elapsed = upstream.status_code, ctx.elapsed()
                    if upstream.status_code >= 400:
                        record.error_kind = STATUS
                    if previous is not None:
                        await asyncio.shield(self._release(previous[0], None))
                    if upstream.status_code not in RETRYABLE_STATUS:
                        if self.handler.attempt_hooks:
                            await self.handler.plugins.notify("ccproxy_upstream_attempt", ctx=ctx, attempt=record)
                        if len(ctx.attempts) > 1:
                            log.info(
                                "request %s: attempt %d at %s (%s) answered %d",
                                ctx.request_id, len(ctx.attempts), attempt.provider, attempt.model,
                                upstream.status_code,
                            )
                        kept, answered = None, attempt
                        return upstream, attempt
                    wait = retry_after_seconds(upstream.headers)
                    retryable = wait is None or wait <= policy.retry_after_cap
                    kept_buffered, last_error = upstream.is_stream_consumed, None
                if self.handler.attempt_hooks:
                    await self.handler.plugins.notify("ccproxy_upstream_attempt", ctx=ctx, attempt=record)
                if retryable:
                    if wait is None:
                        step = min(policy.backoff_max, policy.backoff_base * 2 ** (tries[index] - 1))
                        wait = step * (0.5 + random.random() / 2)
                    ready_at[index] = loop.time() + wait
                    retry.append(index)
                # Choose what comes next: an untried route first, then retries.
                index = await fresh()
                delay = 0.0
                if index is None:
                    chosen = next_retry()
                    if chosen is not None:
                        index, delay = chosen
                failure = record.error or f"status {record.status}"
                if index is None:
                    log.warning(
                        "request %s: attempt %d at %s (%s) failed: %s; no attempt left",
                        ctx.request_id, len(ctx.attempts), attempt.provider, attempt.model, failure,
                    )
                    break
                target = routes[index]
                log.warning(
                    "request %s: attempt %d at %s (%s) failed: %s; %s %s (%s)%s",
                    ctx.request_id, len(ctx.attempts), attempt.provider, attempt.model, failure,
                    "retrying" if target is attempt else "falling back to", target.provider, target.model,
                    f" in {delay:.2f}s" if delay > 0 else "",
                )
                if kept is not None and not kept_buffered:
                    # Another attempt follows: free the connection, keep the answer in memory.
                    kept_buffered = True
                    buffered = await self._keep(*kept)
                    if buffered is None:
                        last_error = UpstreamProtocolError(f"the upstream answered {kept[0].status_code} and broke off")
                        kept = None
                    else:
                        kept = (buffered, kept[1])
        except BaseException:
            if kept is not None:
                await asyncio.shield(self._release(kept[0], None))
            raise
        finally:
            # Clients the handler created for attempts that are not the answer.
            answer = kept[1] if kept is not None else answered
            for other in routes:
                if other.close_client_on_finish and other is not answer:
                    await asyncio.shield(other.client.aclose())
        if kept is not None:
            return kept
        error = last_error or prepare_error or UpstreamError("no upstream could be tried")
        ctx.error = error
        await self.handler.plugins.notify("ccproxy_stream_error", ctx=ctx, error=error)
        raise error

    async def _keep(self, upstream: httpx.Response, attempt: UpstreamRequest) -> httpx.Response | None:
        """``upstream`` with its body read (up to :data:`MAX_KEPT_ERROR_BODY`, decoded within the
        limits when it is gzip or deflate), its connection freed; None if that failed."""
        limits = self.handler.limits
        cap = min(MAX_KEPT_ERROR_BODY, limits.max_response_body_bytes or MAX_KEPT_ERROR_BODY)
        headers = upstream.headers.multi_items()
        encoding = upstream.headers.get("content-encoding")
        decoder = decoder_for(encoding, limits.max_decompression_ratio) if encoding is not None else None
        parts: list[bytes] = []
        size = 0
        chunks = upstream.aiter_raw() if _cancel_safe(attempt) else _guarded(upstream.aiter_raw())
        if decoder is not None:
            chunks = decoded(chunks, decoder)
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > cap:
                    return None
                parts.append(chunk)
        except (httpx.HTTPError, ProxyError):
            return None
        finally:
            await asyncio.shield(self._release(upstream, None))
        body = b"".join(parts)
        if decoder is not None:
            headers = [(k, v) for k, v in headers if k.lower() not in BODY_FRAMING]
            headers.append(("content-length", str(len(body))))
        try:
            request: httpx.Request | None = upstream.request
        except RuntimeError:  # a fast path's responses may have none
            request = None
        # A stream, not content=: httpx would decode content= at once, without any bound.
        return httpx.Response(upstream.status_code, headers=headers, stream=httpx.ByteStream(body), request=request)

    async def _send(self, attempt: UpstreamRequest) -> httpx.Response:
        timeouts = attempt.timeouts
        limits = {
            "connect": timeouts.connect,
            "read": timeouts.headers,
            "write": timeouts.connect,
            "pool": timeouts.connect,
        }
        url = parsed_url(attempt.url)
        transport = attempt.transport
        send = fast_path(transport)
        try:
            if send is not None:
                # The hot path (transport.FastPath): the transport frames and writes the parts, no httpx.Request.
                response = await send(attempt.method, url, attempt.headers, attempt.body, limits)
            else:
                try:
                    request = httpx.Request(
                        attempt.method, url, headers=attempt.headers, content=attempt.body,
                        extensions={"timeout": limits},
                    )
                except UnicodeEncodeError:
                    # A non-ASCII header value (httpx encodes str as ASCII): forward the bytes the client sent.
                    raw = [(k, v.encode("utf-8", "surrogateescape")) for k, v in attempt.headers.items()]
                    request = httpx.Request(
                        attempt.method, url, headers=raw, content=attempt.body, extensions={"timeout": limits}
                    )
                if transport is not None:
                    response = await _uninterrupted(transport.handle_async_request(request))
                else:
                    response = await _uninterrupted(attempt.client.send(request, stream=True))
        except httpx.HTTPError as exc:
            raise _map_httpx_error(exc, timeouts, head=True) from exc
        if not 200 <= response.status_code <= 599:  # 101 (an upgrade), other 1xx, 600+: nothing to relay
            await asyncio.shield(self._release(response, None))
            raise UpstreamProtocolError(f"the upstream answered with status {response.status_code}, which cannot be relayed")
        # From here on each read may wait at most the idle gap (transports read this dict per read).
        limits["read"] = timeouts.idle
        return response

    async def _fail_before_head(self, error: ProxyError) -> None:
        """Answer with ``error`` in the client's dialect; nothing was written yet."""
        ctx = self.ctx
        ctx.status = error.status
        if self.handler.draining:
            self._close_after_response()
        headers = {REQUEST_ID_HEADER: ctx.request_id, **error.headers}
        body = dialects.error_body(ctx.client_dialect, error)
        response = await self.request.respond(status=error.status, headers=headers, content_type="application/json")
        self.response = response
        await self._write(response, body)
        await self._eof(response)

    # -- after the head -------------------------------------------------------------

    async def _relay(self, upstream: httpx.Response, attempt: UpstreamRequest) -> None:
        ctx = self.ctx
        plugins = self.handler.plugins
        ctx.upstream_status = ctx.status = upstream.status_code
        ctx.t_upstream_headers = ctx.elapsed()
        headers = response_headers(_header_items(upstream.headers))
        ctx.response_headers = headers
        # Observers read the upstream's body; the client gets what the adapter makes of it
        # (e.g. a stream synthesised from a JSON answer, for a provider that cannot stream).
        upstream_sse = "text/event-stream" in headers.get("content-type", "")
        factory = attempt.handler_config.response_adapter
        adapter = await factory(ctx) if factory is not None else None
        is_sse = self.handler.should_stream_response(headers)
        wants_events = self.handler.event_hooks and upstream_sse
        wants_body = self.handler.body_hooks and not upstream_sse
        # Adapters and observers get decoded bytes (decoding.py: bounded pieces, bounded ratio);
        # without a content-encoding those are the raw bytes. A body already read into memory
        # (e.g. httpx.MockTransport) can only be replayed decoded.
        encoding = headers.get("content-encoding")
        encoded = encoding is not None
        decode = ((adapter is not None or wants_events or wants_body) and encoded) or upstream.is_stream_consumed
        limits = self.handler.limits
        refusal: ProxyError | None = None
        decoder = None
        if decode and encoded and not upstream.is_stream_consumed:
            decoder = decoder_for(encoding, limits.max_decompression_ratio)  # type: ignore[arg-type]
            if decoder is None:  # a coding we cannot bound (br, zstd, several)
                if adapter is None:  # observers only: pass it through unread
                    decode = wants_events = wants_body = False
                else:
                    refusal = UpstreamProtocolError("the upstream's body has a content-encoding the proxy cannot decode")
        # Observers alone (no adapter) leave an unencoded body as it is: its content-length stands.
        if adapter is not None or (decode and encoded):
            for name in BODY_FRAMING:
                headers.pop(name, None)
        if is_sse:
            headers.update(STREAM_HEADERS)
        headers[REQUEST_ID_HEADER] = ctx.request_id  # the provider's own ids pass through untouched
        if self.on_headers is not None:
            self.on_headers(ctx, upstream.status_code, headers)
        await plugins.notify("ccproxy_upstream_headers", ctx=ctx, status=upstream.status_code, headers=headers)

        self._is_sse = is_sse
        length = headers.get("content-length")
        self._length = int(length) if length is not None and length.isdigit() else None
        response = await self.request.respond(
            status=ctx.status or upstream.status_code,
            headers=headers,
            content_type=headers.get("content-type", "application/octet-stream"),
        )
        self.response = response
        await plugins.notify("ccproxy_stream_start", ctx=ctx)

        parser = SSEParser() if wants_events else None
        body_parts: list[bytes] | None = [] if wants_body else None
        chunks = upstream.aiter_bytes() if upstream.is_stream_consumed else upstream.aiter_raw()
        if not _cancel_safe(attempt):
            chunks = _guarded(chunks)
        if decoder is not None:
            chunks = decoded(chunks, decoder)
        # What the proxy holds of an upstream body it reads: one event of a stream, a whole other body.
        reads = adapter is not None or wants_events or wants_body
        events = (
            EventSizeLimit(limits.max_sse_event_bytes)
            if upstream_sse and reads and limits.max_sse_event_bytes > 0 else None
        )
        max_held = limits.max_response_body_bytes if not upstream_sse and reads else 0
        announced = upstream.headers.get("content-length", "") if max_held > 0 and not encoded else ""
        if announced.isdigit() and int(announced) > max_held:  # announced too large: refused before any byte
            refusal = _body_too_large(max_held)
        held = 0
        try:
            if refusal is not None:
                raise refusal
            async for chunk in chunks:
                if events is not None:
                    events.feed(chunk)
                elif max_held > 0:
                    held += len(chunk)
                    if held > max_held:
                        raise _body_too_large(max_held)
                if parser is not None:
                    for event in parser.feed(chunk):
                        await plugins.notify("ccproxy_stream_event", ctx=ctx, event=event)
                if body_parts is not None:
                    body_parts.append(chunk)
                out = adapter.feed(chunk) if adapter is not None else chunk
                if out:
                    await self._write(response, out, is_sse)
        except (httpx.HTTPError, ProxyError) as exc:
            error = exc if isinstance(exc, ProxyError) else _map_httpx_error(exc, attempt.timeouts, head=False)
            self._cancellable = False
            await self._fail_after_head(response, error, is_sse)
            return
        except Exception as exc:  # plugin code (a response adapter's feed) failed mid-response
            self._cancellable = False
            await self._fail_after_head(response, plugins.failed_mid_response(exc, ctx), is_sse)
            return
        except asyncio.CancelledError:
            # A client that read the last byte (a content-length body) may leave before the
            # upstream's end was read: its body is whole, so the response ends as usual.
            if not self._delivered():
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        self._cancellable = False
        await self._end(response, parser, body_parts, adapter, is_sse)

    async def _end(
        self,
        response: HTTPResponse,
        parser: SSEParser | None,
        body_parts: list[bytes] | None,
        adapter: ResponseAdapter | None,
        is_sse: bool,
    ) -> None:
        """The upstream body ended: the end-of-body observers, the adapter's tail, the last chunk.

        The observers see the whole body even if the client leaves now: sync ones cannot be
        interrupted, async ones run in a task that a cancellation does not reach (``_finish``
        waits for it). Then the tail and the last chunk; ``_done`` once it was handed over.
        """
        events = parser.flush() if parser is not None else ()
        if events or body_parts is not None:
            observing = self._observe_end(events, body_parts)
            if self.handler.end_hooks_suspend:
                self._ending = asyncio.ensure_future(observing)
                await asyncio.shield(self._ending)
            else:
                await observing
        try:
            tail = adapter.finish() if adapter is not None else b""
        except Exception as exc:  # a response adapter's finish failed
            await self._fail_after_head(response, self.handler.plugins.failed_mid_response(exc, self.ctx), is_sse)
            return
        if tail:
            await self._write(response, tail, is_sse)
        await self._eof(response)
        self._done = True

    async def _observe_end(self, events: Any, body_parts: list[bytes] | None) -> None:
        ctx = self.ctx
        plugins = self.handler.plugins
        for event in events:
            await plugins.notify("ccproxy_stream_event", ctx=ctx, event=event)
        if body_parts is not None:
            await plugins.notify("ccproxy_response_body", ctx=ctx, body=b"".join(body_parts))

    def _delivered(self) -> bool:
        """True once the response's last byte was handed to the transport (nothing is left to send)."""
        return self._done or (self._length is not None and self.ctx.bytes_sent >= self._length)

    async def _write(self, response: HTTPResponse, data: bytes, count_events: bool = False) -> None:
        ctx = self.ctx
        if self.handler.chunk_hooks:
            await self.handler.plugins.notify("ccproxy_stream_chunk", ctx=ctx, chunk=data)
        if ctx.t_first_byte is None:
            ctx.t_first_byte = ctx.elapsed()
        if self._gate().is_set():  # the client keeps up: the write does not wait
            await response.send(data)
        else:
            await self._waiting(response.send(data))
        ctx.bytes_sent += len(data)
        ctx.chunks_sent += 1
        if count_events:
            # Events end at a blank line. Prefixing the previous write's last byte(s), too
            # short to hold a whole match, counts one that straddles two writes exactly once.
            tail = self._tail
            ctx.events_sent += (tail[-1:] + data).count(b"\n\n") + (tail + data).count(b"\n\r\n")
            self._tail = data[-2:]

    def _gate(self) -> asyncio.Event | _Open:
        gate = self._writable
        if gate is None:
            gate = self._writable = _write_gate(self.request)
        return gate

    async def _eof(self, response: HTTPResponse) -> None:
        """``response.eof()``, bounded like a write (the last chunk may wait for a stalled reader too)."""
        if self._gate().is_set():
            await response.eof()
        else:
            await self._waiting(response.eof())

    async def _waiting(self, sending: Awaitable[None]) -> None:
        """A write while the client's buffer is full: a client that does not take it within
        ``limits.send_timeout`` is cut off (its upstream is then closed)."""
        timeout = self.handler.limits.send_timeout
        if timeout <= 0:
            await sending
            return
        timer = asyncio.get_running_loop().call_later(timeout, self._cut_stalled_client, timeout)
        try:
            await sending
        finally:
            timer.cancel()

    def _cut_stalled_client(self, timeout: float) -> None:
        """Abort the client's connection; Sanic then cancels this response's task."""
        ctx = self.ctx
        if ctx.outcome is None:
            ctx.outcome = CLIENT_DISCONNECTED
            ctx.error = SendTimeout(f"the client read nothing for {timeout:g}s; the response was cut off")
        log.warning("request %s: the client read nothing for %gs; cut off, upstream closed", ctx.request_id, timeout)
        transport = self.request.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    async def _fail_after_head(
        self, response: HTTPResponse, error: ProxyError, is_sse: bool, *, bounded: bool = False
    ) -> None:
        """The head is out: say so in the client's dialect, then end visibly broken.

        ``bounded``: the error event may take at most :data:`END_WRITE_TIMEOUT` seconds
        to write (a client that does not read is cut off instead).
        """
        ctx = self.ctx
        ctx.outcome, ctx.error = UPSTREAM_ERROR, error
        if not bounded:
            log.warning("request %s: upstream failed mid-response: %s", ctx.request_id, error.message)
        await self.handler.plugins.notify("ccproxy_stream_error", ctx=ctx, error=error)
        if ctx.t_first_byte is None and not bounded:
            # Nothing written yet, so the head is still ours: answer with a plain error response.
            ctx.status = response.status = error.status
            for name in ("content-length", "content-encoding", *STREAM_HEADERS):
                response.headers.pop(name, None)
            response.headers["content-type"] = "application/json"
            response.headers.update(error.headers)
            await self._write(response, dialects.error_body(ctx.client_dialect, error))
            await self._eof(response)
            return
        written = True
        try:
            if is_sse:
                event = self._write(response, dialects.error_event(ctx.client_dialect, error), True)
                if bounded:
                    try:
                        await asyncio.wait_for(event, END_WRITE_TIMEOUT)
                    except asyncio.TimeoutError:
                        written = False
                else:
                    await event
        finally:
            # No terminating chunk: closing the transport makes the truncation visible.
            transport = self.request.transport
            if transport is not None and not transport.is_closing():
                if written:
                    transport.close()
                else:
                    transport.abort()

    @staticmethod
    async def _release(upstream: httpx.Response | None, attempt: UpstreamRequest | None) -> None:
        """Close the upstream response (and a client the handler created)."""
        if upstream is not None:
            try:
                await upstream.aclose()
            except Exception:  # the connection is gone either way
                log.debug("closing upstream response failed", exc_info=True)
        if attempt is not None and attempt.close_client_on_finish:
            await attempt.client.aclose()

    def _close_after_response(self) -> None:
        """No keep-alive for this connection: the worker is shutting down."""
        stream = getattr(self.request, "stream", None)
        if stream is not None and hasattr(stream, "keep_alive"):
            stream.keep_alive = False

    async def _finish(self, upstream: httpx.Response | None, attempt: UpstreamRequest | None) -> None:
        """Release the upstream and run the end-of-request hooks; runs once, shielded."""
        ctx = self.ctx
        if self._ending is not None and not self._ending.done():
            await asyncio.wait([self._ending])  # a client that left meanwhile does not stop it
        if self.handler.draining:
            self._close_after_response()
        await self._release(upstream, attempt)
        ctx.duration = ctx.elapsed()
        if ctx.outcome is None:
            # One rule: the response is complete when its last byte was handed to the transport.
            ctx.outcome = COMPLETED if self._delivered() else CLIENT_DISCONNECTED
        await self.handler.plugins.notify("ccproxy_stream_end", ctx=ctx)
