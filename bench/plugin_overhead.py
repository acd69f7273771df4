"""What plugins cost: CPU per request and per chunk with 0, 1 and 3 plugins, side by side.

Usage::

    .venv/bin/python bench/plugin_overhead.py [--requests 400] [--chunks 100] [--rounds 5]

It drives the core's real request and chunk paths in-process — ``Proxy.handle`` and
``DeferredResponse.stream`` — with a fake client connection (``respond``/``send``/``eof``
cost nothing) and an in-process upstream transport that answers every request with a
stream of ``--chunks`` Anthropic ``content_block_delta`` events, one per read. So the
numbers are ccproxy's own work (routing, headers, hooks, relaying) and nothing else's:
no sockets, no HTTP parsing, no Sanic.

For each scenario it measures CPU time (``time.process_time``) per request for a
1-chunk and an N-chunk stream; per-chunk cost is the difference divided by N-1.
Scenarios run interleaved, ``--rounds`` times, and the fastest round is reported, so
they are compared under the same conditions in one run.

Plugins in the scenarios (all trivial, so the cost shown is the calling, not the work):

* ``request``: the per-request hooks ``ccproxy_request_received``,
  ``ccproxy_request_headers``, ``ccproxy_upstream_headers``, ``ccproxy_stream_start``
  and ``ccproxy_stream_end`` (5 calls per request);
* ``chunk``: ``ccproxy_stream_chunk`` (one call per write); ``chunk-async`` the same
  as an ``async def``;
* ``event``: ``ccproxy_stream_event``, which also makes the core parse the stream.

The last lines compare, for context, a pluggy hook call with no implementation with
the check the core makes instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import timeit
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ccproxy_core import ANTHROPIC, hookimpl  # noqa: E402
from ccproxy_core.config import build_config  # noqa: E402
from ccproxy_core.plugins import Plugins  # noqa: E402
from ccproxy_core.proxy import Proxy  # noqa: E402

BODY = json.dumps(
    {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
     "messages": [{"role": "user", "content": "Hello"}]}
).encode()
HEADERS = {
    "host": "127.0.0.1:8000",
    "content-type": "application/json",
    "content-length": str(len(BODY)),
    "x-api-key": "client-key",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "interleaved-thinking-2025-05-14",
    "user-agent": "claude-cli/2.1.197 (external, cli)",
    "accept": "application/json",
}
EVENT = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hello there, this is one streamed token"}}\n\n'
)


# -- plugins --------------------------------------------------------------------------------------


class RequestHooks:
    @hookimpl
    def ccproxy_request_received(self, ctx):
        ctx.state["bench"] = 0

    @hookimpl
    def ccproxy_request_headers(self, headers):
        headers["x-bench"] = "1"

    @hookimpl
    def ccproxy_upstream_headers(self, headers):
        headers["x-bench"] = "1"

    @hookimpl
    def ccproxy_stream_start(self, ctx):
        ctx.state["bench"] = 1

    @hookimpl
    def ccproxy_stream_end(self, ctx):
        ctx.state["bench"] = 2


class ChunkHook:
    @hookimpl
    def ccproxy_stream_chunk(self, ctx, chunk):
        ctx.state["bytes"] = len(chunk)


class AsyncChunkHook:
    @hookimpl
    async def ccproxy_stream_chunk(self, ctx, chunk):
        ctx.state["bytes"] = len(chunk)


class EventHook:
    @hookimpl
    def ccproxy_stream_event(self, ctx, event):
        ctx.state["event"] = event.event


SCENARIOS: dict[str, list[type]] = {
    "no plugins": [],
    "1 request": [RequestHooks],
    "3 request": [RequestHooks] * 3,
    "1 chunk": [ChunkHook],
    "3 chunk": [ChunkHook] * 3,
    "1 chunk-async": [AsyncChunkHook],
    "3 chunk-async": [AsyncChunkHook] * 3,
    "1 event": [EventHook],
    "3 event": [EventHook] * 3,
    "3 request + 3 chunk": [RequestHooks] * 3 + [ChunkHook] * 3,
}


# -- fakes ----------------------------------------------------------------------------------------


class Events(httpx.AsyncByteStream):
    def __init__(self, count: int) -> None:
        self.count = count

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            yield EVENT

    async def aclose(self) -> None:
        pass


class Upstream(httpx.AsyncBaseTransport):
    """Answers every request at once with ``chunks`` events, one per read.

    It offers the fast path (``send_parts``; nothing in it awaits, so it is cancel-safe), as the default
    ``transport: fast`` does: the core then reads the body in the request's task, not a read per task.
    """

    HEADERS = {"content-type": "text/event-stream; charset=utf-8", "request-id": "req_bench",
               "anthropic-ratelimit-requests-remaining": "999"}

    def __init__(self) -> None:
        self.chunks = 1

    async def send_parts(self, method: str, url: httpx.URL, headers: Any, body: bytes, timeouts: Any) -> httpx.Response:
        return httpx.Response(200, headers=self.HEADERS, stream=Events(self.chunks))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=self.HEADERS, stream=Events(self.chunks), request=request)


class ClientResponse:
    """What ``request.respond`` returns: writes go nowhere."""

    stream = None  # no Sanic connection

    async def send(self, data: bytes, end_stream: bool | None = None) -> None:
        pass

    async def eof(self) -> None:
        pass


class ClientRequest:
    method = "POST"
    path = "/v1/messages"
    query_string = ""
    body = BODY
    headers = HEADERS
    transport = None
    stream = None  # no Sanic connection: the core reads the headers from ``headers``

    def __init__(self) -> None:
        self.ctx = SimpleNamespace()  # what the core keeps on Sanic's request

    async def respond(self, response: Any = None, **_: Any) -> ClientResponse:
        return ClientResponse()


# -- measuring ------------------------------------------------------------------------------------


def build(plugin_classes: list[type], upstream: Upstream) -> Proxy:
    names = [f"p{i}" for i in range(len(plugin_classes))]
    config = build_config(
        {
            "providers": {"up": {"format": "anthropic", "base_url": "http://upstream.bench", "api_key": "k",
                                 "models": ["claude-*"]}},
            "plugins": {"enabled": ["providers", *names]},
        },
        "bench",
    )
    plugins = Plugins(config, [(n, cls()) for n, cls in zip(names, plugin_classes)])
    client = httpx.AsyncClient(transport=upstream)
    return Proxy(config, plugins, {"up": client}, {"up": upstream})


async def one(proxy: Proxy, request: ClientRequest) -> None:
    ctx = proxy.context(request, ANTHROPIC)  # type: ignore[arg-type]
    response = await proxy.handle(request, ctx)  # type: ignore[arg-type]
    response.request = request  # type: ignore[assignment]
    await response.stream()
    assert ctx.outcome == "completed", ctx.outcome


async def cpu_per_request(proxy: Proxy, upstream: Upstream, chunks: int, requests: int) -> float:
    upstream.chunks = chunks
    request = ClientRequest()
    for _ in range(20):  # warm up
        await one(proxy, request)
    start = time.process_time()
    for _ in range(requests):
        await one(proxy, request)
    return (time.process_time() - start) / requests


async def main(requests: int, chunks: int, rounds: int) -> None:
    built = {}
    for name, classes in SCENARIOS.items():
        upstream = Upstream()
        built[name] = (build(classes, upstream), upstream)
    short: dict[str, float] = {n: float("inf") for n in SCENARIOS}
    long: dict[str, float] = {n: float("inf") for n in SCENARIOS}
    for _ in range(rounds):
        for name, (proxy, upstream) in built.items():
            short[name] = min(short[name], await cpu_per_request(proxy, upstream, 1, requests))
            long[name] = min(long[name], await cpu_per_request(proxy, upstream, chunks, max(requests // 10, 20)))

    base_req = short["no plugins"]
    base_chunk = (long["no plugins"] - short["no plugins"]) / (chunks - 1)
    print(f"Python {sys.version.split()[0]}, {asyncio.get_running_loop().__class__.__module__} loop; "
          f"CPU time, best of {rounds} rounds; {chunks}-event streams for the per-chunk column.\n")
    print(f"| plugins | per request (1-event stream) | added | per chunk | added |")
    print(f"|---|---:|---:|---:|---:|")
    for name in SCENARIOS:
        per_chunk = (long[name] - short[name]) / (chunks - 1)
        print(f"| {name} | {short[name] * 1e6:.1f} µs | {(short[name] - base_req) * 1e6:+.1f} µs "
              f"| {per_chunk * 1e6:.2f} µs | {(per_chunk - base_chunk) * 1e6:+.2f} µs |")

    # For context: what the chunk path would pay per write if it went through pluggy.
    proxy, _ = built["no plugins"]
    plugins = proxy.plugins
    hook = plugins.pm.hook.ccproxy_stream_chunk
    n = 200_000
    pluggy_empty = timeit.timeit(lambda: hook(ctx=None, chunk=b""), number=n) / n
    guard = timeit.timeit(lambda: proxy.handler.chunk_hooks and None, number=n) / n
    print(f"\npluggy hook call with no implementation: {pluggy_empty * 1e9:.0f} ns per call; "
          f"the core's check instead (a bool attribute): {guard * 1e9:.0f} ns")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per measurement (1-event streams)")
    parser.add_argument("--chunks", type=int, default=100, help="events per stream for the per-chunk column")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the best is reported")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args.requests, args.chunks, args.rounds))
