"""The engine's public face: :class:`StreamingHandler` decides streaming and builds deferred responses.

:meth:`StreamingHandler.handle_streaming_request` returns a :class:`DeferredResponse`. Sanic
sends it by awaiting it; only then is the upstream called. The work is split by concern:

- :mod:`.attempts`: which prepared attempt goes next (retries, fallbacks, ``retry-after``, total deadline);
- :mod:`.upstream`: one attempt sent and its head awaited, httpx's errors translated;
- :mod:`.relay`: the upstream's answer written to the client;
- :mod:`.adapters`: the response adapter protocol; :mod:`.limiter`: concurrent responses and shutdown.

:class:`DeferredResponse` here ties them together for one request and settles its outcome.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import AsyncIterable, Callable, Mapping
from typing import Any

import httpx
from sanic.response import HTTPResponse

from . import dialects
from .adapters import AdapterChain, ResponseAdapter, plugin_adapters
from .attempts import RETRYABLE_STATUS, Scheduler, retry_after_seconds
from .client_head import ClientHead
from .config import Limits, Retries, Timeouts
from .context import CLIENT_DISCONNECTED, COMPLETED, REJECTED, UPSTREAM_ERROR, RequestContext
from .errors import ProxyError, UpstreamError
from .headers import REQUEST_ID_HEADER
from .limiter import Limiter
from .plugins import Plugins
from .relay import END_WRITE_TIMEOUT, Relay
from .upstream import HandlerConfig, UpstreamRequest, cancel_safe, release

__all__ = [
    "END_WRITE_TIMEOUT",
    "RETRYABLE_STATUS",
    "AdapterChain",
    "DeferredResponse",
    "HandlerConfig",
    "HeadersCallback",
    "ResponseAdapter",
    "StreamingHandler",
    "UpstreamRequest",
    "retry_after_seconds",
]

log = logging.getLogger("ccproxy")

HeadersCallback = Callable[[RequestContext, int, dict[str, str]], Any]


class StreamingHandler:
    """Decides whether to stream and builds the deferred responses that do the work."""

    def __init__(self, plugins: Plugins, *, retries: Retries | None = None, limits: Limits | None = None) -> None:
        self.plugins = plugins
        # Plugins are fixed once loaded: decide the per-chunk work once.
        self.chunk_hooks = plugins.implemented("ccproxy_stream_chunk")
        self.event_hooks = plugins.implemented("ccproxy_stream_event")
        self.body_hooks = plugins.implemented("ccproxy_response_body")
        self.attempt_hooks = plugins.implemented("ccproxy_upstream_attempt")
        # Calling a hook nobody implements still costs its keyword dict and a method call.
        self.headers_hooks = plugins.implemented("ccproxy_upstream_headers")
        self.start_hooks = plugins.implemented("ccproxy_stream_start")
        self.end_hooks = plugins.implemented("ccproxy_stream_end")
        #: The plugins' ``ccproxy_response_adapter`` as a ``HandlerConfig.response_adapter``; None when
        #: no plugin implements it.
        self.plugin_adapters = plugin_adapters(plugins)
        #: Some end-of-body observer is async, so it can be suspended and a client leaving then could
        #: cut it short: such observers run in a task of their own (sync ones cannot be interrupted).
        self.end_hooks_suspend = any(
            inspect.iscoroutinefunction(func)
            for name in ("ccproxy_stream_event", "ccproxy_response_body")
            for _, func, _ in plugins.impls(name)
        )
        #: Some ``ccproxy_stream_end`` implementation is async, so the end of a response can wait.
        self.stream_end_suspends = any(
            inspect.iscoroutinefunction(func) for _, func, _ in plugins.impls("ccproxy_stream_end")
        )
        self.retries = retries or Retries()
        self.limits = limits or Limits()
        self.limiter = Limiter(self.limits)

    async def drain(self, grace: float) -> None:
        """Shutdown: see :meth:`.Limiter.drain`."""
        await self.limiter.drain(grace)


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

        ``fallbacks`` are further attempts, tried in order when this one fails retryably,
        each prepared only when it is needed; a :class:`ProxyError` raised while preparing
        one answers the client. The ``retries`` policy governs them all (see :class:`.attempts.Scheduler`).
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
        return self.respond(request_context, attempt, fallbacks, on_headers)

    def respond(
        self,
        ctx: RequestContext,
        first: UpstreamRequest,
        fallbacks: AsyncIterable[UpstreamRequest] | None = None,
        on_headers: HeadersCallback | None = None,
    ) -> DeferredResponse:
        """A deferred response for prepared attempts: ``first``, then ``fallbacks`` as needed."""
        schedule = Scheduler(self, ctx, first, aiter(fallbacks) if fallbacks is not None else None)
        return DeferredResponse(self, ctx, schedule, on_headers)


class DeferredResponse(Relay):
    """A Sanic response that makes the attempts when sent and relays the answer."""

    __slots__ = ("schedule", "_task", "_reason")

    def __init__(
        self, handler: StreamingHandler, ctx: RequestContext, schedule: Scheduler, on_headers: HeadersCallback | None
    ) -> None:
        super().__init__(handler, ctx, on_headers)
        self.schedule = schedule  # the attempts, made when the response is sent
        self._task: asyncio.Task[Any] | None = None
        #: Why the response is being ended early (total timeout, shutdown); set with a cancel.
        self._reason: ProxyError | None = None

    async def stream(self) -> HTTPResponse:  # type: ignore[override]
        """Run the exchange; called by Sanic. Returns the response that was written."""
        ctx = self.ctx
        handler = self.handler
        refusal = handler.limiter.refusal()
        if refusal is not None:
            ctx.outcome, ctx.error = REJECTED, refusal
            try:
                await self._fail_before_head(refusal)
            finally:
                await asyncio.shield(self._finish(None, None))
            return self.response
        task = self._task = asyncio.current_task()
        handler.limiter.active.add(self)
        self._cancellable = True
        schedule = self.schedule
        upstream: httpx.Response | None = None
        attempt: UpstreamRequest | None = None
        try:
            try:
                try:
                    upstream, attempt = await schedule.run(self.end)
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
            if schedule.timer is not None:
                schedule.timer.cancel()
            handler.limiter.active.discard(self)
            # A cancellation must not cut the end short (a leaked pooled connection, a lost outcome).
            # It can only land where the end waits: when nothing in it can, no task is needed.
            if self._finish_waits(attempt):
                await asyncio.shield(self._finish(upstream, attempt))
            else:
                await self._finish(upstream, attempt)
        return self.response

    def _finish_waits(self, attempt: UpstreamRequest | None) -> bool:
        """False when :meth:`_finish` cannot wait: no end-of-body observer still running, a transport
        whose close never waits (a fast path), no client to close and only plain ``ccproxy_stream_end``
        implementations."""
        return (
            self.handler.stream_end_suspends
            or (self._ending is not None and not self._ending.done())
            or (attempt is not None and (attempt.close_client_on_finish or not cancel_safe(attempt)))
        )

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

    async def _fail_before_head(self, error: ProxyError) -> None:
        """Answer with ``error`` in the client's dialect; nothing was written yet."""
        ctx = self.ctx
        ctx.status = error.status
        if self.handler.limiter.draining:
            self._close_after_response()
        headers = {REQUEST_ID_HEADER: ctx.request_id, **error.headers}
        body = dialects.error_body(ctx.client_dialect, error)
        response = await self.request.respond(ClientHead(error.status, headers, "application/json"))
        self.response = response
        await self._write(response, body)
        await self._eof(response)

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
        if self.handler.limiter.draining:
            self._close_after_response()
        await release(upstream, attempt)
        ctx.duration = ctx.elapsed()
        if ctx.outcome is None:
            # One rule: the response is complete when its last byte was handed to the transport.
            ctx.outcome = COMPLETED if self._delivered() else CLIENT_DISCONNECTED
        if self.handler.end_hooks:
            pending = self.handler.plugins.run("ccproxy_stream_end", ctx=ctx)
            if pending is not None:
                await pending
