"""Micro-benchmark: client CPU per request, FastTransport vs httpx.AsyncHTTPTransport.

Runs a small keep-alive HTTP/1.1 server (asyncio + httptools) in a child process on
127.0.0.1, then, in this process, sends small POST requests (2,000 sequential, then
4,000 from 32 concurrent workers) through each transport, and reports this process's
CPU time (user + system) per request. The server's CPU is not counted.

Paths measured:
  parts    ``await transport.send_parts(method, url, headers, body, timeouts)`` (the proxy's
           fast path, ``transport.FastPath``: no ``httpx.Request``), read body, aclose
  direct   ``await transport.handle_async_request(httpx.Request(...))``, read body, aclose
  client   ``await httpx.AsyncClient(transport=...).post(...)`` (adds httpx's client layer)
  idle check  FastTransport's check of a pooled connection before reuse, alone (per call)

Usage: ``python bench/transport_micro.py [--loop asyncio|uvloop|both]``. Stops by itself
(the server exits with its parent or after 300 s).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import httpx  # noqa: E402

from ccproxy_core.transport import FastTransport  # noqa: E402

BODY = b'{"id":"msg_1","type":"message","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":5}}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nrequest-id: req_123\r\n"
    b"anthropic-ratelimit-requests-remaining: 99\r\ncontent-length: %d\r\n\r\n%b" % (len(BODY), BODY)
)
REQUEST_BODY = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
REQUEST_HEADERS = {
    "x-api-key": "sk-test",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
}
SEQUENTIAL = 2000
CONCURRENT_WORKERS = 32
CONCURRENT_TOTAL = 4000


def serve(port_queue: Any, parent_pid: int) -> None:
    """Child process: answer every request with RESPONSE until the parent is gone."""
    import httptools

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_complete(self) -> None:
            self.transport.write(RESPONSE)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Proto, "127.0.0.1", 0, backlog=1024)
        port_queue.put(server.sockets[0].getsockname()[1])
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and os.getppid() == parent_pid:
            await asyncio.sleep(0.5)

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def cpu() -> float:
    return time.process_time()


async def read_body(resp: httpx.Response) -> None:
    try:
        async for _ in resp.stream:  # type: ignore[union-attr]
            pass
    finally:
        await resp.aclose()
    assert resp.status_code == 200


async def one_direct(transport: httpx.AsyncBaseTransport, url: str) -> None:
    req = httpx.Request("POST", url, headers=REQUEST_HEADERS, content=REQUEST_BODY)
    await read_body(await transport.handle_async_request(req))


async def one_parts(transport: FastTransport, url: httpx.URL) -> None:
    await read_body(await transport.send_parts("POST", url, REQUEST_HEADERS, REQUEST_BODY, {}))


async def one_client(client: httpx.AsyncClient, url: str) -> None:
    resp = await client.post(url, headers=REQUEST_HEADERS, content=REQUEST_BODY)
    assert resp.status_code == 200 and len(resp.content) == len(BODY)


async def measure(call: Any, arg: Any, url: Any) -> tuple[float, float]:
    """Return (CPU µs/request sequential, CPU µs/request at 32 concurrent)."""
    for _ in range(200):  # warm up: connections, caches
        await call(arg, url)
    t0 = cpu()
    for _ in range(SEQUENTIAL):
        await call(arg, url)
    seq = (cpu() - t0) / SEQUENTIAL * 1e6

    per_worker = CONCURRENT_TOTAL // CONCURRENT_WORKERS

    async def worker() -> None:
        for _ in range(per_worker):
            await call(arg, url)

    await asyncio.gather(*(worker() for _ in range(CONCURRENT_WORKERS)))  # warm the pool to 32
    t0 = cpu()
    await asyncio.gather(*(worker() for _ in range(CONCURRENT_WORKERS)))
    conc = (cpu() - t0) / (per_worker * CONCURRENT_WORKERS) * 1e6
    return seq, conc


def idle_checks(transport: FastTransport) -> list[tuple[str, float, float]]:
    """Cost of checking a pooled connection before reuse: the closing flag, and the full check."""
    conn = next(c for dq in transport._idle.values() for c in dq)
    rows = []
    for label, check in (
        ("  idle check: is_closing() only", conn.transport.is_closing),
        ("  idle check: alive() (+ poll(0))", conn.alive),
    ):
        t0 = cpu()
        for _ in range(100_000):
            check()
        per = (cpu() - t0) / 100_000 * 1e6
        rows.append((label, per, per))
    return rows


async def run_all(url: str) -> list[tuple[str, float, float]]:
    rows = []
    # Cost of building the httpx.Request alone (included in both "direct" rows).
    t0 = cpu()
    for _ in range(SEQUENTIAL):
        httpx.Request("POST", url, headers=REQUEST_HEADERS, content=REQUEST_BODY)
    build = (cpu() - t0) / SEQUENTIAL * 1e6
    rows.append(("httpx.Request(...) alone", build, build))

    for name, factory in (
        ("FastTransport", lambda: FastTransport(trust_env=False)),
        ("httpx.AsyncHTTPTransport", lambda: httpx.AsyncHTTPTransport()),
    ):
        transport = factory()
        if isinstance(transport, FastTransport):
            rows.append((f"{name} parts", *await measure(one_parts, transport, httpx.URL(url))))
        rows.append((f"{name} direct", *await measure(one_direct, transport, url)))
        if isinstance(transport, FastTransport):
            rows += idle_checks(transport)
        await transport.aclose()
    for name, factory in (
        ("FastTransport", lambda: FastTransport(trust_env=False)),
        ("httpx.AsyncHTTPTransport", lambda: httpx.AsyncHTTPTransport()),
    ):
        async with httpx.AsyncClient(transport=factory()) as client:
            rows.append((f"AsyncClient on {name}", *await measure(one_client, client, url)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    port_queue = ctx.Queue()
    server = ctx.Process(target=serve, args=(port_queue, os.getpid()), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{port_queue.get(timeout=20)}/v1/messages"
        loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
        for kind in loops:
            if kind == "uvloop":
                import uvloop

                runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
            else:
                runner = asyncio.Runner()

            async def capped() -> list[tuple[str, float, float]]:
                async with asyncio.timeout(240):
                    return await run_all(url)

            with runner:
                rows = runner.run(capped())
            print(f"\nclient CPU µs/request, {kind} loop, Python {sys.version.split()[0]}, httpx {httpx.__version__}")
            print(f"{'path':38} {'sequential':>11} {'32 concurrent':>14}")
            for label, seq, conc in rows:
                print(f"{label:38} {seq:11.1f} {conc:14.1f}")
    finally:
        server.terminate()
        server.join(5)


if __name__ == "__main__":
    main()
