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
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from sanic.response import HTTPResponse, ResponseStream

from . import dialects
from .config import Timeouts
from .context import (
    CLIENT_DISCONNECTED,
    COMPLETED,
    REJECTED,
    UPSTREAM_ERROR,
    Attempt,
    RequestContext,
)
from .errors import (
    ProxyError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from .headers import BODY_FRAMING, STREAM_HEADERS, response_headers
from .plugins import Plugins
from .sse import SSEParser

log = logging.getLogger("ccproxy")

#: Statuses after which the next fallback attempt (if any) is tried.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504, 529})


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
    """The one place httpx's exceptions become ours."""
    if isinstance(exc, httpx.ConnectTimeout):
        return UpstreamTimeout(f"timed out connecting to the upstream after {timeouts.connect:g}s")
    if isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)):
        if head:
            return UpstreamTimeout(f"the upstream sent no response headers within {timeouts.headers:g}s")
        return UpstreamTimeout(f"the upstream sent nothing for {timeouts.idle:g}s")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamConnectError("could not connect to the upstream")
    if isinstance(exc, httpx.RemoteProtocolError):
        return UpstreamProtocolError("the upstream broke the HTTP protocol or closed the response early")
    if isinstance(exc, httpx.HTTPError):
        return UpstreamConnectError(f"the upstream connection failed ({type(exc).__name__})")
    return UpstreamError(f"upstream failure ({type(exc).__name__})")


class StreamingHandler:
    """Decides whether to stream and builds the deferred responses that do the work."""

    def __init__(self, plugins: Plugins) -> None:
        self.plugins = plugins
        # Plugins are fixed once loaded: decide the per-chunk work once.
        self.chunk_hooks = plugins.implemented("ccproxy_stream_chunk")
        self.event_hooks = plugins.implemented("ccproxy_stream_event")
        self.body_hooks = plugins.implemented("ccproxy_response_body")

    @staticmethod
    def should_stream_response(headers: Mapping[str, str]) -> bool:
        """True when ``Accept`` (else ``Content-Type``) names ``text/event-stream``, any case."""
        value = headers.get("accept") or headers.get("Accept") or ""
        if not value:
            value = headers.get("content-type") or headers.get("Content-Type") or ""
        return "text/event-stream" in value.lower()

    @staticmethod
    def should_stream(body: bytes, handler_config: HandlerConfig) -> bool:
        """True only when the provider streams and the JSON body says ``"stream": true``."""
        if not handler_config.supports_streaming:
            return False
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
    ) -> DeferredResponse:
        """A deferred response for one upstream call; nothing happens until Sanic sends it.

        With no ``client`` one is created from ``client_config`` and closed when
        the response is over. ``on_headers(ctx, status, headers)`` runs once when
        the upstream's head arrives, before the header hooks.
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
        )
        return self.deferred(request_context, _one(attempt), on_headers=on_headers)

    def deferred(
        self,
        ctx: RequestContext,
        attempts: AsyncIterable[UpstreamRequest],
        *,
        on_headers: HeadersCallback | None = None,
    ) -> DeferredResponse:
        """A deferred response that tries ``attempts`` in order until one answers usably.

        ``attempts`` is iterated lazily: the next one is prepared only when needed, and
        a :class:`ProxyError` raised while preparing one answers the client.
        """
        return DeferredResponse(self, ctx, aiter(attempts), on_headers)


async def _one(attempt: UpstreamRequest) -> AsyncIterator[UpstreamRequest]:
    yield attempt


class DeferredResponse(ResponseStream):
    """A Sanic response that calls the upstream when sent and relays its answer."""

    __slots__ = ("handler", "ctx", "attempts", "on_headers")

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

    @staticmethod
    async def _unused(_: Any) -> None:  # pragma: no cover - stream() is overridden
        raise NotImplementedError

    async def stream(self) -> HTTPResponse:  # type: ignore[override]
        """Run the exchange; called by Sanic. Returns the response that was written."""
        ctx = self.ctx
        upstream: httpx.Response | None = None
        attempt: UpstreamRequest | None = None
        try:
            try:
                upstream, attempt = await self._open()
            except ProxyError as error:
                ctx.outcome = UPSTREAM_ERROR if isinstance(error, UpstreamError) else REJECTED
                await self._fail_before_head(error)
                return self.response
            await self._relay(upstream, attempt)
        except asyncio.CancelledError:
            if ctx.outcome is None:
                ctx.outcome = CLIENT_DISCONNECTED
            raise
        finally:
            # Shielded: a second cancellation must not leak the pooled connection.
            await asyncio.shield(self._finish(upstream, attempt))
        return self.response

    # -- before the head ----------------------------------------------------------

    async def _open(self) -> tuple[httpx.Response, UpstreamRequest]:
        """Try the attempts in order; return the first usable upstream response.

        A connection failure, a timeout or a retryable status moves on to the
        next attempt when there is one; the last answer (or error) stands.
        """
        ctx = self.ctx
        plugins = self.handler.plugins
        last_error: ProxyError | None = None
        pending: tuple[httpx.Response, UpstreamRequest] | None = None
        while True:
            try:
                attempt = await anext(self.attempts)
            except StopAsyncIteration:
                break
            except ProxyError as error:  # preparing an attempt failed (e.g. cannot be translated)
                last_error = last_error or error
                break
            if pending is not None:
                await asyncio.shield(self._release(*pending))
                pending = None
            ctx.provider, ctx.model = attempt.provider, attempt.model
            ctx.upstream_dialect = attempt.upstream_dialect
            ctx.upstream_url = attempt.url
            record = Attempt(attempt.provider, attempt.model, attempt.url)
            ctx.attempts.append(record)
            try:
                upstream = await self._send(attempt)
            except ProxyError as error:
                record.error, record.elapsed = error.message, ctx.elapsed()
                last_error = error
                await self._release(None, attempt)
                continue
            record.status, record.elapsed = upstream.status_code, ctx.elapsed()
            if upstream.status_code not in RETRYABLE_STATUS:
                return upstream, attempt
            pending, last_error = (upstream, attempt), None
        if pending is not None:
            return pending
        error = last_error or UpstreamError("no upstream could be tried")
        ctx.error = error
        await plugins.notify("ccproxy_stream_error", ctx=ctx, error=error)
        raise error

    async def _send(self, attempt: UpstreamRequest) -> httpx.Response:
        timeouts = attempt.timeouts
        limits = {
            "connect": timeouts.connect,
            "read": timeouts.headers,
            "write": timeouts.connect,
            "pool": timeouts.connect,
        }
        request = httpx.Request(
            attempt.method,
            attempt.url,
            headers=attempt.headers,
            content=attempt.body,
            extensions={"timeout": limits},
        )
        try:
            if attempt.transport is not None:
                response = await attempt.transport.handle_async_request(request)
            else:
                response = await attempt.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _map_httpx_error(exc, timeouts, head=True) from exc
        # From here on each read may wait at most the idle gap (transports read this dict per read).
        limits["read"] = timeouts.idle
        return response

    async def _fail_before_head(self, error: ProxyError) -> None:
        """Answer with ``error`` in the client's dialect; nothing was written yet."""
        ctx = self.ctx
        ctx.status = error.status
        headers = {"x-request-id": ctx.request_id, **error.headers}
        body = dialects.error_body(ctx.client_dialect, error)
        response = await self.request.respond(status=error.status, headers=headers, content_type="application/json")
        self.response = response
        await self._write(response, body)
        await response.eof()

    # -- after the head -------------------------------------------------------------

    async def _relay(self, upstream: httpx.Response, attempt: UpstreamRequest) -> None:
        ctx = self.ctx
        plugins = self.handler.plugins
        ctx.upstream_status = ctx.status = upstream.status_code
        ctx.t_upstream_headers = ctx.elapsed()
        headers = response_headers(upstream.headers.multi_items())
        ctx.response_headers = headers
        factory = attempt.handler_config.response_adapter
        adapter = await factory(ctx) if factory is not None else None
        wants_events = self.handler.event_hooks
        wants_body = self.handler.body_hooks
        # A body already read into memory (e.g. httpx.MockTransport) can only be replayed decoded.
        decode = adapter is not None or wants_events or wants_body or upstream.is_stream_consumed
        if decode:
            for name in BODY_FRAMING:
                headers.pop(name, None)
        is_sse = "text/event-stream" in headers.get("content-type", "")
        if is_sse:
            headers.update(STREAM_HEADERS)
        upstream_id = headers.get("x-request-id")
        if upstream_id is not None and upstream_id != ctx.request_id:
            headers["x-upstream-request-id"] = upstream_id
        headers["x-request-id"] = ctx.request_id
        if self.on_headers is not None:
            self.on_headers(ctx, upstream.status_code, headers)
        await plugins.notify("ccproxy_upstream_headers", ctx=ctx, status=upstream.status_code, headers=headers)

        response = await self.request.respond(
            status=ctx.status or upstream.status_code,
            headers=headers,
            content_type=headers.get("content-type", "application/octet-stream"),
        )
        self.response = response
        await plugins.notify("ccproxy_stream_start", ctx=ctx)

        parser = SSEParser() if wants_events and is_sse else None
        body_parts: list[bytes] | None = [] if wants_body and not is_sse else None
        chunks = upstream.aiter_bytes() if decode else upstream.aiter_raw()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (attempt.timeouts.total - ctx.elapsed())
        try:
            async for chunk in chunks:
                if parser is not None:
                    for event in parser.feed(chunk):
                        await plugins.notify("ccproxy_stream_event", ctx=ctx, event=event)
                if body_parts is not None:
                    body_parts.append(chunk)
                out = adapter.feed(chunk) if adapter is not None else chunk
                if out:
                    await self._write(response, out, is_sse)
                if loop.time() > deadline:
                    raise UpstreamTimeout(f"the response took longer than {attempt.timeouts.total:g}s")
            if parser is not None:
                for event in parser.flush():
                    await plugins.notify("ccproxy_stream_event", ctx=ctx, event=event)
            if body_parts is not None:
                await plugins.notify("ccproxy_response_body", ctx=ctx, body=b"".join(body_parts))
            if adapter is not None:
                tail = adapter.finish()
                if tail:
                    await self._write(response, tail, is_sse)
        except (httpx.HTTPError, ProxyError) as exc:
            error = exc if isinstance(exc, ProxyError) else _map_httpx_error(exc, attempt.timeouts, head=False)
            await self._fail_after_head(response, error, is_sse)
            return
        await response.eof()
        ctx.outcome = COMPLETED

    async def _write(self, response: HTTPResponse, data: bytes, count_events: bool = False) -> None:
        ctx = self.ctx
        if self.handler.chunk_hooks:
            await self.handler.plugins.notify("ccproxy_stream_chunk", ctx=ctx, chunk=data)
        if ctx.t_first_byte is None:
            ctx.t_first_byte = ctx.elapsed()
        await response.send(data)
        ctx.bytes_sent += len(data)
        ctx.chunks_sent += 1
        if count_events:
            # Events end at a blank line. Prefixing the previous write's last byte(s), too
            # short to hold a whole match, counts one that straddles two writes exactly once.
            tail = ctx.state.get("_tail", b"")
            ctx.events_sent += (tail[-1:] + data).count(b"\n\n") + (tail + data).count(b"\n\r\n")
            ctx.state["_tail"] = data[-2:]

    async def _fail_after_head(self, response: HTTPResponse, error: ProxyError, is_sse: bool) -> None:
        """The head is out: say so in the client's dialect, then end visibly broken."""
        ctx = self.ctx
        ctx.outcome, ctx.error = UPSTREAM_ERROR, error
        log.warning("request %s: upstream failed mid-response: %s", ctx.request_id, error.message)
        await self.handler.plugins.notify("ccproxy_stream_error", ctx=ctx, error=error)
        try:
            if is_sse:
                await self._write(response, dialects.error_event(ctx.client_dialect, error), True)
        finally:
            # No terminating chunk: closing the transport makes the truncation visible.
            transport = self.request.transport
            if transport is not None and not transport.is_closing():
                transport.close()

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

    async def _finish(self, upstream: httpx.Response | None, attempt: UpstreamRequest | None) -> None:
        """Release the upstream and run the end-of-request hooks; runs once, shielded."""
        ctx = self.ctx
        await self._release(upstream, attempt)
        ctx.duration = ctx.elapsed()
        ctx.state.pop("_tail", None)
        if ctx.outcome is None:
            ctx.outcome = COMPLETED
        await self.handler.plugins.notify("ccproxy_stream_end", ctx=ctx)
