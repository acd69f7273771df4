"""The relay: an upstream's answer written to the client, from its head to the last byte.

Once an attempt answered usably, its status and headers become the client's head (after
the response adapters, ``on_headers`` and the header hooks had their say), then each
upstream read is written as it arrives: no buffering, no coalescing, and byte for byte
unless a response adapter rewrites the body. Owns the client side: the write gate and the
stalled-client cut-off, the body limits of what the proxy reads, the end-of-body observers
and tails, and the visibly broken end after a failure mid-response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import httpx
from sanic.response import HTTPResponse, ResponseStream

from . import dialects
from .adapters import ResponseAdapter
from .client_head import ClientHead
from .client_writes import ChunkFrames, Open, events_ended, write_gate
from .context import CLIENT_DISCONNECTED, UPSTREAM_ERROR, RequestContext
from .decoding import decoded, decoder_for
from .errors import ProxyError, SendTimeout, UpstreamProtocolError
from .headers import BODY_FRAMING, REQUEST_ID_HEADER, STREAM_HEADERS, raw_response_headers, response_headers
from .sse import EventSizeLimit, SSEParser
from .upstream import UpstreamRequest, map_httpx_error, raw_chunks

if TYPE_CHECKING:  # pragma: no cover
    from .streaming import HeadersCallback, StreamingHandler

log = logging.getLogger("ccproxy")

#: Seconds the error event written at shutdown or on the total timeout may take.
END_WRITE_TIMEOUT = 2.0


def _header_items(headers: httpx.Headers) -> list[tuple[str, str]]:
    """``headers.multi_items()``, cheaper: lower-case names, from httpx's own layout (pinned below 0.29).

    Headers that are UTF-8 (ASCII: nearly all) are decoded here, as httpx's guess of the encoding would
    (ASCII, else UTF-8; ``decode()`` without an encoding name takes CPython's fastest path); otherwise
    httpx's guess decides (ISO-8859-1).
    """
    try:
        return [(k.decode(), v.decode()) for _, k, v in headers._list]
    except UnicodeDecodeError:
        return headers.multi_items()


def _body_too_large(limit: int) -> UpstreamProtocolError:
    return UpstreamProtocolError(f"the upstream's response body is larger than {limit} bytes")


class _Through:
    """What one upstream read goes through before the client gets it: the bound on what the proxy
    holds (one event of a stream, or the whole body), the end-of-body observers' copy, the adapter."""

    __slots__ = ("events", "max_held", "held", "parts", "adapter")

    def __init__(self, events: EventSizeLimit | None, max_held: int, parts: list[bytes] | None,
                 adapter: ResponseAdapter | None) -> None:
        self.events = events
        self.max_held = max_held
        self.held = 0
        self.parts = parts
        self.adapter = adapter

    def check(self, chunk: bytes) -> None:
        """Raises ProxyError past a bound."""
        if self.events is not None:
            self.events.feed(chunk)
        elif self.max_held > 0:
            self.held += len(chunk)
            if self.held > self.max_held:
                raise _body_too_large(self.max_held)

    def adapt(self, chunk: bytes) -> bytes:
        """What the client gets of ``chunk`` (the adapter's code may raise)."""
        if self.parts is not None:
            self.parts.append(chunk)
        return self.adapter.feed(chunk) if self.adapter is not None else chunk


class Relay(ResponseStream):
    """The client side of a deferred response: the head the upstream's answer gets, then its body.

    Subclassed by :class:`~.streaming.DeferredResponse`, which runs the exchange; this part
    writes what the upstream sends, as it arrives.
    """

    __slots__ = (
        "handler", "ctx", "on_headers", "_cancellable", "_is_sse", "_tail", "_writable", "_frames", "_ending",
        "_done", "_length", "_through", "_sink_error",
    )

    def __init__(self, handler: StreamingHandler, ctx: RequestContext, on_headers: HeadersCallback | None) -> None:
        super().__init__(self._unused, status=200)
        self.handler = handler
        self.ctx = ctx
        self.on_headers = on_headers
        self.response = None  # type: ignore[assignment]  # set when the head is prepared
        #: The task may be cancelled to end the response early (see ``DeferredResponse.end``).
        self._cancellable = False
        self._is_sse = False
        self._tail = b""  # the last bytes written to the client (counting events across writes)
        self._writable: asyncio.Event | Open | None = None  # set while the client's buffer has room
        #: Writes this response's body chunks straight to the client, once the head is out (see ``_write``).
        self._frames: ChunkFrames | None = None
        #: Async end-of-body observers running in their own task (see ``_end``).
        self._ending: asyncio.Future[None] | None = None
        self._done = False  # the response's last byte was handed to the transport
        self._length: int | None = None  # the body's content-length, when the client is told one
        self._through: _Through | None = None  # set while the body is relayed
        self._sink_error: Exception | None = None  # what stopped the sink (see ``_sink``), raised by the task

    @staticmethod
    async def _unused(_: Any) -> None:  # pragma: no cover - stream() is overridden
        raise NotImplementedError

    async def _relay(self, upstream: httpx.Response, attempt: UpstreamRequest) -> None:
        """Give the client ``upstream``'s head (as adapters and hooks decide), then its body as it arrives.

        A failure while relaying the body ends the response visibly broken (``_fail_after_head``).
        """
        ctx = self.ctx
        plugins = self.handler.plugins
        ctx.upstream_status = ctx.status = upstream.status_code
        ctx.t_upstream_headers = ctx.elapsed()
        headers = raw_response_headers(upstream.headers._list)  # httpx's own layout (pinned below 0.29)
        if headers is None:
            headers = response_headers(_header_items(upstream.headers))
        ctx.response_headers = headers
        upstream_length = headers.get("content-length", "")  # before an adapter drops it
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
        if self.handler.headers_hooks:
            pending = plugins.run("ccproxy_upstream_headers", ctx=ctx, status=upstream.status_code, headers=headers)
            if pending is not None:
                await pending

        self._is_sse = is_sse
        length = headers.get("content-length")
        self._length = int(length) if length is not None and length.isdigit() else None
        response = await self.request.respond(ClientHead(
            ctx.status or upstream.status_code, headers, headers.get("content-type", "application/octet-stream")
        ))
        self.response = response
        if self.handler.start_hooks:
            pending = plugins.run("ccproxy_stream_start", ctx=ctx)
            if pending is not None:
                await pending

        parser = SSEParser() if wants_events else None
        body_parts: list[bytes] | None = [] if wants_body else None
        chunks = upstream.aiter_bytes() if upstream.is_stream_consumed else raw_chunks(upstream, attempt)
        if decoder is not None:
            chunks = decoded(chunks, decoder)
        # What the proxy holds of an upstream body it reads: one event of a stream, a whole other body.
        reads = adapter is not None or wants_events or wants_body
        events = (
            EventSizeLimit(limits.max_sse_event_bytes)
            if upstream_sse and reads and limits.max_sse_event_bytes > 0 else None
        )
        max_held = limits.max_response_body_bytes if not upstream_sse and reads else 0
        announced = upstream_length if max_held > 0 and not encoded else ""
        if announced.isdigit() and int(announced) > max_held:  # announced too large: refused before any byte
            refusal = _body_too_large(max_held)
        through = self._through = _Through(events, max_held, body_parts, adapter)
        # The stream's reads may be written from the read callback itself while this task waits for them
        # (no wake-up per read): not when each read goes through an async hook.
        sink = getattr(chunks, "sink", None) if parser is None and not self.handler.chunk_hooks else None
        try:
            if refusal is not None:
                raise refusal
            if sink is not None:
                sink(self._sink)
            async for chunk in chunks:
                if self._sink_error is not None:
                    raise self._sink_error
                through.check(chunk)
                if parser is not None:
                    for event in parser.feed(chunk):
                        pending = plugins.run("ccproxy_stream_event", ctx=ctx, event=event)
                        if pending is not None:
                            await pending
                out = through.adapt(chunk)
                if out:
                    # The read that completes a content-length body ends the response in the same write.
                    length = self._length
                    await self._write(response, out, is_sse, length is not None and ctx.bytes_sent + len(out) >= length)
        except (httpx.HTTPError, ProxyError) as exc:
            error = exc if isinstance(exc, ProxyError) else map_httpx_error(exc, attempt.timeouts, head=False)
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
        finally:
            if sink is not None:
                sink(None)
        self._cancellable = False
        await self._end(response, parser, through, is_sse)

    async def _end(self, response: HTTPResponse, parser: SSEParser | None, through: _Through, is_sse: bool) -> None:
        """The upstream body ended: the end-of-body observers, the adapter's tail (after its ``settle``), the
        last chunk.

        The observers see the whole body even if the client leaves now: sync ones cannot be
        interrupted, async ones run in a task that a cancellation does not reach (``_finish``
        waits for it). Then the tail and the last chunk; ``_done`` once it was handed over.
        """
        events = parser.flush() if parser is not None else ()
        body_parts, adapter = through.parts, through.adapter
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
        settle = getattr(adapter, "settle", None) if adapter is not None else None
        if settle is not None:  # what the tail waits for (see ResponseAdapter)
            try:
                await settle()
            except ProxyError as exc:
                await self._fail_after_head(response, exc, is_sse)
                return
            except Exception as exc:
                await self._fail_after_head(response, self.handler.plugins.failed_mid_response(exc, self.ctx), is_sse)
                return
        if tail:
            # An adapter that held the whole body (a JSON answer renamed or translated) gives it here: with
            # nothing written yet it goes out with its head and Sanic's content-length, in one write.
            whole = not is_sse and self.ctx.t_first_byte is None
            await self._write(response, tail, is_sse, whole)
        if not self._done:  # else the body's last write ended the response
            await self._eof(response)
            self._done = True

    async def _observe_end(self, events: Any, body_parts: list[bytes] | None) -> None:
        """The last events and the whole body, to their observer hooks."""
        ctx = self.ctx
        plugins = self.handler.plugins
        for event in events:
            pending = plugins.run("ccproxy_stream_event", ctx=ctx, event=event)
            if pending is not None:
                await pending
        if body_parts is not None:
            pending = plugins.run("ccproxy_response_body", ctx=ctx, body=b"".join(body_parts))
            if pending is not None:
                await pending

    def _delivered(self) -> bool:
        """True once the response's last byte was handed to the transport (nothing is left to send)."""
        return self._done or (self._length is not None and self.ctx.bytes_sent >= self._length)

    async def _write(self, response: HTTPResponse, data: bytes, count_events: bool = False, end: bool = False) -> None:
        """Write ``data`` to the client; ``end``: it is the body's last byte, the response ends with it
        (one write for a body that fits its head's write, no empty last write)."""
        ctx = self.ctx
        if self.handler.chunk_hooks:
            pending = self.handler.plugins.run("ccproxy_stream_chunk", ctx=ctx, chunk=data)
            if pending is not None:
                await pending
        frames = self._frames
        # The hot path, once the head is out: a body chunk written at once while the client keeps up.
        if frames is None or not data or not frames.write(data):
            first = ctx.t_first_byte is None
            if first:
                ctx.t_first_byte = ctx.elapsed()
            if self._gate().is_set():  # the client keeps up: the write does not wait
                await response.send(data, end)
            else:
                await self._waiting(response.send(data, end))
            if first and not end:  # the head is out: a chunked body's next chunks can take the hot path
                self._frames = ChunkFrames.of(response, self._gate())
        self._sent(data, count_events)
        if end:
            self._done = True

    def _sent(self, data: bytes, count_events: bool) -> None:
        ctx = self.ctx
        ctx.bytes_sent += len(data)
        ctx.chunks_sent += 1
        if count_events:
            ctx.events_sent += events_ended(self._tail, data)
            self._tail = data[-2:]

    def _sink(self, chunk: bytes) -> bool:
        """An upstream read, written from the read callback while the relay's task waits for it: True when
        taken. Left to the task (False) unless a body chunk can be written at once without waiting (see
        ``ChunkFrames.open``); an error is kept for the task to raise (the read is queued, not passed on again).
        """
        frames, through = self._frames, self._through
        if frames is None or through is None or self._sink_error is not None or not frames.open():
            return False
        try:
            through.check(chunk)
            out = through.adapt(chunk)
            if out:
                frames.put(out)  # open() held: nothing has waited since
                self._sent(out, self._is_sse)
        except Exception as exc:
            self._sink_error = exc
            return False
        return True

    def _gate(self) -> asyncio.Event | Open:
        gate = self._writable
        if gate is None:
            gate = self._writable = write_gate(self.request)
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


