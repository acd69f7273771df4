"""The upstream exchange: one prepared attempt sent, its head awaited, its errors translated.

Owns :class:`UpstreamRequest` (one prepared attempt), :func:`send` (the request out, the
status and headers back), :func:`keep` (a retryable answer read into memory so its
connection is free), :func:`release`, and the one place httpx's exceptions become ours
(:func:`map_httpx_error`). Also the shims that keep a cancellation (a client leaving)
from leaking a pooled connection of transports that are not cancel-safe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import httpx

from .adapters import AdapterFactory
from .config import Limits, Timeouts
from .context import RequestContext
from .decoding import decoded, decoder_for
from .errors import (
    CONNECT_TIMEOUT,
    HEADERS_TIMEOUT,
    IDLE_TIMEOUT,
    POOL_TIMEOUT,
    WRITE_TIMEOUT,
    ProxyError,
    UpstreamConfigError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from .headers import BODY_FRAMING
from .transport import fast_path

log = logging.getLogger("ccproxy")

#: A retryable answer kept (to pass through if nothing better comes) is buffered up to this size.
MAX_KEPT_ERROR_BODY = 1024 * 1024


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


def aim(ctx: RequestContext, provider: str, model: str, upstream_dialect: str | None) -> None:
    """Point ``ctx`` at the attempt being prepared or sent: the one place these fields are written."""
    ctx.provider, ctx.model, ctx.upstream_dialect = provider, model, upstream_dialect


def map_httpx_error(exc: Exception, timeouts: Timeouts, *, head: bool) -> ProxyError:
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


_URLS: dict[str, httpx.URL] = {}


def parsed_url(url: str) -> httpx.URL:
    """``httpx.URL(url)``, cached: upstream URLs repeat (a base URL, a path, the client's query)."""
    parsed = _URLS.get(url)
    if parsed is None:
        if len(_URLS) >= 1024:  # the query string comes from clients: bound the cache
            _URLS.clear()
        parsed = _URLS[url] = httpx.URL(url)
    return parsed


def cancel_safe(attempt: UpstreamRequest) -> bool:
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
    as soon as it arrives (see :func:`cancel_safe`).
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


def reading(chunks: AsyncIterator[bytes], attempt: UpstreamRequest) -> AsyncIterator[bytes]:
    """An upstream body's ``chunks``, each read in its own task unless the attempt's transport is cancel-safe."""
    return chunks if cancel_safe(attempt) else _guarded(chunks)


def raw_chunks(upstream: httpx.Response, attempt: UpstreamRequest) -> AsyncIterator[bytes]:
    """``upstream.aiter_raw()`` read as :func:`reading` reads it. A fast path's body stream is read
    directly: its reads are the raw chunks already, without httpx's generator and context per chunk
    (the response is closed by :func:`release` as any other)."""
    if cancel_safe(attempt) and isinstance(upstream.stream, AsyncIterator):
        upstream.is_stream_consumed = True
        return upstream.stream
    return reading(upstream.aiter_raw(), attempt)


async def send(attempt: UpstreamRequest) -> httpx.Response:
    """Send ``attempt``; return the upstream's response once its status and headers arrived.

    Raises:
    ProxyError: the attempt failed before the head (mapped by :func:`map_httpx_error`),
        or the status cannot be relayed (1xx, 600+).
    """
    timeouts = attempt.timeouts
    limits = {
        "connect": timeouts.connect,
        "read": timeouts.headers,
        "write": timeouts.connect,
        "pool": timeouts.connect,
    }
    url = parsed_url(attempt.url)
    transport = attempt.transport
    send_parts = fast_path(transport)
    try:
        if send_parts is not None:
            # The hot path (transport.FastPath): the transport frames and writes the parts, no httpx.Request.
            response = await send_parts(attempt.method, url, attempt.headers, attempt.body, limits)
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
        raise map_httpx_error(exc, timeouts, head=True) from exc
    if not 200 <= response.status_code <= 599:  # 101 (an upgrade), other 1xx, 600+: nothing to relay
        await asyncio.shield(release(response, None))
        raise UpstreamProtocolError(f"the upstream answered with status {response.status_code}, which cannot be relayed")
    # From here on each read may wait at most the idle gap (transports read this dict per read).
    limits["read"] = timeouts.idle
    return response


async def keep(upstream: httpx.Response, attempt: UpstreamRequest, limits: Limits) -> httpx.Response | None:
    """``upstream`` with its body read (up to :data:`MAX_KEPT_ERROR_BODY`, decoded within the
    limits when it is gzip or deflate), its connection freed; None if that failed."""
    cap = min(MAX_KEPT_ERROR_BODY, limits.max_response_body_bytes or MAX_KEPT_ERROR_BODY)
    headers = upstream.headers.multi_items()
    encoding = upstream.headers.get("content-encoding")
    decoder = decoder_for(encoding, limits.max_decompression_ratio) if encoding is not None else None
    parts: list[bytes] = []
    size = 0
    chunks = reading(upstream.aiter_raw(), attempt)
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
        await asyncio.shield(release(upstream, None))
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


async def release(upstream: httpx.Response | None, attempt: UpstreamRequest | None) -> None:
    """Close the upstream response (and a client the handler created)."""
    if upstream is not None:
        try:
            if upstream.__class__ is httpx.Response:  # httpx's aclose without its exception context (dropped here)
                if not upstream.is_closed:
                    upstream.is_closed = True
                    await upstream.stream.aclose()  # type: ignore[union-attr]
            else:
                await upstream.aclose()
        except Exception:  # the connection is gone either way
            log.debug("closing upstream response failed", exc_info=True)
    if attempt is not None and attempt.close_client_on_finish:
        await attempt.client.aclose()
