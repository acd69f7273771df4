"""The benchmark's mock LLM upstream: fast enough not to be what is measured.

A raw :class:`asyncio.Protocol` HTTP/1.1 server (``httptools`` parses requests) that
answers both dialects:

* ``POST …/messages`` speaks Anthropic Messages, ``POST …/chat/completions`` OpenAI
  Chat Completions; anything else is a 404.
* ``"stream": true`` in the request body gives Server-Sent Events
  (``transfer-encoding: chunked``), otherwise a JSON body with ``content-length``.
* Request headers shape the stream (the proxy forwards them end to end):
  ``x-bench-events`` (events in the stream, default 50, at least 6) and
  ``x-bench-rate`` (events per second; 0, the default, writes them back to back).
* Each event is **one write** of one chunk. Every text delta carries the time it
  was written, ``"@"`` + 20 digits of ``time.monotonic_ns()`` (CLOCK_MONOTONIC, shared
  by every process on the machine), so the client can compute per-event latency.
* Events follow a schedule (``t0 + i / rate``), not a chain of sleeps: no drift.

Responses carry the rate-limit and request-id headers real providers send, so the
proxy's header filtering does its real work.

Run: ``python bench/upstream.py [--port 0] [--tls-port 0 --cert C --key K] [--cpu 1]``.
It prints one JSON line (``{"port": …, "tls_port": …}``) once listening, and exits
when its stdin closes (the benchmark died), on SIGTERM/SIGINT, or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
import time

import httptools

MIN_EVENTS = 6

_now_ns = time.monotonic_ns

# -- canned bodies -------------------------------------------------------------------

ANTHROPIC_JSON = json.dumps(
    {
        "id": "msg_bench_0123456789abcdef",
        "type": "message",
        "role": "assistant",
        "model": "claude-bench-1",
        "content": [{"type": "text", "text": "Hello from the benchmark upstream. This is a short answer."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 42,
            "output_tokens": 12,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    },
    separators=(",", ":"),
).encode()

OPENAI_JSON = json.dumps(
    {
        "id": "chatcmpl-bench0123456789",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-bench-1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the benchmark upstream. This is a short answer."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 42, "completion_tokens": 12, "total_tokens": 54},
    },
    separators=(",", ":"),
).encode()

_ANTHROPIC_HEADERS = (
    b"request-id: req_bench_0123456789abcdef\r\n"
    b"anthropic-organization-id: 00000000-0000-0000-0000-000000000000\r\n"
    b"anthropic-ratelimit-requests-limit: 4000\r\n"
    b"anthropic-ratelimit-requests-remaining: 3999\r\n"
    b"anthropic-ratelimit-requests-reset: 2030-01-01T00:00:00Z\r\n"
    b"anthropic-ratelimit-tokens-limit: 400000\r\n"
    b"anthropic-ratelimit-tokens-remaining: 399000\r\n"
    b"anthropic-ratelimit-tokens-reset: 2030-01-01T00:00:00Z\r\n"
)
_OPENAI_HEADERS = (
    b"x-request-id: req_bench_0123456789abcdef\r\n"
    b"openai-processing-ms: 12\r\n"
    b"x-ratelimit-limit-requests: 10000\r\n"
    b"x-ratelimit-remaining-requests: 9999\r\n"
    b"x-ratelimit-reset-requests: 6ms\r\n"
    b"x-ratelimit-limit-tokens: 2000000\r\n"
    b"x-ratelimit-remaining-tokens: 1999000\r\n"
    b"x-ratelimit-reset-tokens: 30ms\r\n"
)


def _json_response(extra: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


JSON_RESPONSES = {
    "anthropic": _json_response(_ANTHROPIC_HEADERS, ANTHROPIC_JSON),
    "openai": _json_response(_OPENAI_HEADERS, OPENAI_JSON),
}
SSE_HEADS = {
    "anthropic": b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\n" + _ANTHROPIC_HEADERS + b"transfer-encoding: chunked\r\n\r\n",
    "openai": b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    + _OPENAI_HEADERS
    + b"transfer-encoding: chunked\r\n\r\n",
}
_NOT_FOUND_BODY = b'{"type":"error","error":{"type":"not_found_error","message":"no such route"}}'
NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
    % (len(_NOT_FOUND_BODY), _NOT_FOUND_BODY)
)

# -- SSE events ------------------------------------------------------------------------

_A_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_bench_0123456789abcdef",'
    b'"type":"message","role":"assistant","model":"claude-bench-1","content":[],"stop_reason":null,'
    b'"stop_sequence":null,"usage":{"input_tokens":42,"cache_creation_input_tokens":0,'
    b'"cache_read_input_tokens":0,"output_tokens":1}}}\n\n'
)
_A_BLOCK_START = (
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
)
_A_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"@%020d token "}}\n\n'
)
_A_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
_A_MESSAGE_DELTA = (
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
    b'"stop_sequence":null},"usage":{"output_tokens":%d}}\n\n'
)
_A_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'

_O_PREFIX = b'data: {"id":"chatcmpl-bench0123456789","object":"chat.completion.chunk","created":1700000000,"model":"gpt-bench-1","choices":[{"index":0,"delta":'
_O_FIRST = _O_PREFIX + b'{"role":"assistant","content":"@%020d token "},"finish_reason":null}]}\n\n'
_O_DELTA = _O_PREFIX + b'{"content":"@%020d token "},"finish_reason":null}]}\n\n'
_O_LAST = _O_PREFIX + b'{},"finish_reason":"stop"}]}\n\n'
_O_DONE = b"data: [DONE]\n\n"


def sse_event(dialect: str, i: int, n: int) -> bytes:
    """Event ``i`` (0-based) of an ``n``-event stream, stamped now when it carries text."""
    if dialect == "anthropic":
        if i == 0:
            return _A_START
        if i == 1:
            return _A_BLOCK_START
        if i < n - 3:
            return _A_DELTA % _now_ns()
        if i == n - 3:
            return _A_BLOCK_STOP
        if i == n - 2:
            return _A_MESSAGE_DELTA % (n - 5)
        return _A_STOP
    if i == 0:
        return _O_FIRST % _now_ns()
    if i < n - 2:
        return _O_DELTA % _now_ns()
    if i == n - 2:
        return _O_LAST
    return _O_DONE


def timestamped_events(dialect: str, n: int) -> int:
    """How many events of an ``n``-event stream carry a send timestamp."""
    return n - 5 if dialect == "anthropic" else n - 2


# -- the server --------------------------------------------------------------------------


class UpstreamProtocol(asyncio.Protocol):
    """One client connection; requests are answered in order (no pipelining needed)."""

    __slots__ = (
        "loop", "transport", "parser", "url", "body", "events", "rate", "keep_alive",
        "dialect", "i", "n", "t0", "interval", "handle", "closed", "paused", "_write",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.events = 50
        self.rate = 0.0
        self.keep_alive = True
        self.handle: asyncio.TimerHandle | None = None
        self.closed = False
        self.paused = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._write = transport.write  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []
        self.events = 50
        self.rate = 0.0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 14 and name.lower() == b"x-bench-events":
            self.events = max(MIN_EVENTS, int(value))
        elif len(name) == 12 and name.lower() == b"x-bench-rate":
            self.rate = float(value)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        path = self.url.split(b"?", 1)[0]
        if path.endswith(b"/messages"):
            dialect = "anthropic"
        elif path.endswith(b"/chat/completions"):
            dialect = "openai"
        else:
            self._finish(NOT_FOUND)
            return
        body = b"".join(self.body)
        if b'"stream":true' in body or b'"stream": true' in body:
            self._start_stream(dialect)
        else:
            self._finish(JSON_RESPONSES[dialect])

    # responses
    def _finish(self, data: bytes) -> None:
        self._write(data)
        if not self.keep_alive:
            self.transport.close()  # type: ignore[union-attr]

    def _start_stream(self, dialect: str) -> None:
        self.dialect = dialect
        self.i = 0
        self.n = self.events
        self._write(SSE_HEADS[dialect])
        if self.rate <= 0:
            write = self._write
            for i in range(self.n):
                ev = sse_event(dialect, i, self.n)
                write(b"%x\r\n%b\r\n" % (len(ev), ev))
            self._finish(b"0\r\n\r\n")
            return
        self.interval = 1.0 / self.rate
        self.t0 = self.loop.time()
        self.handle = self.loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.handle = None
        if self.closed:
            return
        i = self.i
        ev = sse_event(self.dialect, i, self.n)
        self._write(b"%x\r\n%b\r\n" % (len(ev), ev))
        i += 1
        self.i = i
        if i >= self.n:
            self._finish(b"0\r\n\r\n")
            return
        self.handle = self.loop.call_at(self.t0 + i * self.interval, self._tick)


def pin_to(cpu: int | None) -> None:
    """Pin this process to one CPU when the machine has it (silently skipped otherwise)."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return
    if cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {cpu})


def install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def _stop(*_: object) -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop)
    loop.call_later(args.max_seconds, _stop)
    servers = []
    plain = await loop.create_server(lambda: UpstreamProtocol(loop), args.host, args.port, backlog=4096)
    servers.append(plain)
    info = {"port": plain.sockets[0].getsockname()[1], "pid": os.getpid()}
    if args.cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.cert, args.key)
        tls = await loop.create_server(
            lambda: UpstreamProtocol(loop), args.host, args.tls_port, ssl=ctx, backlog=4096
        )
        servers.append(tls)
        info["tls_port"] = tls.sockets[0].getsockname()[1]
    if args.watch_stdin:
        # The benchmark holds our stdin open; EOF means it is gone, so we go too.
        def _on_stdin() -> None:
            if not os.read(0, 4096):
                loop.remove_reader(0)
                _stop()

        loop.add_reader(0, _on_stdin)
    print(json.dumps(info), flush=True)
    await stop
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-port", type=int, default=0)
    parser.add_argument("--cert", help="PEM certificate: also serve TLS on --tls-port")
    parser.add_argument("--key", help="PEM private key for --cert")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--watch-stdin", action="store_true", help="exit when stdin reaches EOF")
    args = parser.parse_args(argv)
    pin_to(args.cpu)
    install_uvloop()
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()


if __name__ == "__main__":
    main()
