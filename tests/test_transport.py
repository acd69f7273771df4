"""Tests for :mod:`ccproxy_core.transport` against real sockets on 127.0.0.1.

Every test runs its own event loop (``asyncio.run`` style via ``asyncio.Runner``),
once with the stock asyncio loop and once with uvloop. Servers are tiny asyncio
stream servers that write raw HTTP bytes so each test controls the wire exactly.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import shutil
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ccproxy_core.transport import FastTransport

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

LOOPS = ["asyncio"] + (["uvloop"] if uvloop is not None else [])
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def _clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[Any]], Any]:
    """Run a coroutine to completion in a new loop of the parametrized kind (10 s cap)."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def runner(coro: Awaitable[Any]) -> Any:
        async def capped() -> Any:
            async with asyncio.timeout(10):
                return await coro

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(capped())

    return runner


# -- a tiny raw HTTP server ----------------------------------------------------------


class Req:
    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.method, self.target, self.headers, self.body = method, target, headers, body


async def read_request(reader: asyncio.StreamReader) -> Req | None:
    """Read one request (head + content-length or chunked body); ``None`` at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head[:-4].split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
    lower = {k.lower(): v for k, v in headers}
    body = b""
    if b"content-length" in lower:
        body = await reader.readexactly(int(lower[b"content-length"]))
    elif lower.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += data[:-2]
    return Req(method, target, headers, body)  # type: ignore[arg-type]


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """``async with Server(handler) as srv``: listens on 127.0.0.1, counts connections."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.requests: list[Req] = []
        self.closed = asyncio.Event()  # set whenever a connection ends (client EOF seen)
        self._tasks: set[asyncio.Task[None]] = set()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self.open -= 1
            self.closed.set()
            writer.close()

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._on_client, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def fixed(status_line: bytes, headers: list[bytes], body: bytes) -> Handler:
    """Answer every request on a connection with the same response."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        while (req := await read_request(reader)) is not None:
            srv.requests.append(req)
            writer.write(status_line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body)
            await writer.drain()

    return handler


OK_HELLO = fixed(b"HTTP/1.1 200 OK", [b"Content-Length: 5"], b"hello")


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def astream(response: httpx.Response) -> Any:
    """The response's byte stream as the transport made it (an async iterator)."""
    assert isinstance(response.stream, httpx.AsyncByteStream)
    return response.stream


def direct(transport: FastTransport, method: str, url: str, **kw: Any) -> Awaitable[httpx.Response]:
    return transport.handle_async_request(httpx.Request(method, url, **kw))


# -- basics ------------------------------------------------------------------------


def test_direct_request_sends_headers_exactly_and_parses_response(run: Any) -> None:
    async def main() -> None:
        handler = fixed(
            b"HTTP/1.1 201 Made It",
            [b"Content-Length: 3", b"X-Dup: a", b"request-id: r1", b"X-Dup: b", b"Set-Cookie: c=1"],
            b"abc",
        )
        async with Server(handler) as srv:
            t = FastTransport()
            req = httpx.Request("POST", srv.url + "/v1/messages?beta=true", headers={"X-Api-Key": "k"}, content=b"{}")
            resp = await t.handle_async_request(req)
            assert resp.status_code == 201
            assert resp.reason_phrase == "Made It"
            assert resp.http_version == "HTTP/1.1"
            assert resp.headers.raw == [
                (b"Content-Length", b"3"),
                (b"X-Dup", b"a"),
                (b"request-id", b"r1"),
                (b"X-Dup", b"b"),
                (b"Set-Cookie", b"c=1"),
            ]
            assert b"".join([c async for c in astream(resp)]) == b"abc"
            await resp.aclose()
            sent = srv.requests[0]
            assert sent.method == b"POST" and sent.target == b"/v1/messages?beta=true"
            assert sent.headers == [
                (b"Host", b"127.0.0.1:%d" % srv.port),
                (b"X-Api-Key", b"k"),
                (b"Content-Length", b"2"),
            ]
            assert sent.body == b"{}"
            await t.aclose()

    run(main())


def test_async_client_keepalive_reuses_one_connection(run: Any) -> None:
    async def main() -> None:
        async with Server(OK_HELLO) as srv:
            t = FastTransport()
            async with httpx.AsyncClient(transport=t) as client:
                for _ in range(20):
                    r = await client.post(srv.url + "/x", content=b"body")
                    assert r.content == b"hello"
                assert srv.connections == 1
                assert t.pool_stats() == {"idle": 1, "active": 0, "total": 1, "waiting": 0}
            assert t.pool_stats()["total"] == 0  # client close -> transport aclose

    run(main())


def test_streaming_request_body_is_chunk_encoded(run: Any) -> None:
    async def main() -> None:
        async def gen() -> Any:
            yield b"ab"
            yield b""
            yield b"cde"

        async with Server(OK_HELLO) as srv, httpx.AsyncClient(transport=FastTransport()) as client:
            r = await client.post(srv.url, content=gen())
            assert r.content == b"hello"
            assert srv.requests[0].body == b"abcde"
            assert (b"Transfer-Encoding", b"chunked") in srv.requests[0].headers

    run(main())


def test_unsupported_scheme(run: Any) -> None:
    async def main() -> None:
        t = FastTransport()
        with pytest.raises(httpx.UnsupportedProtocol):
            await direct(t, "GET", "ftp://127.0.0.1/x")
        with pytest.raises(httpx.UnsupportedProtocol):
            await direct(FastTransport(proxy="socks5://127.0.0.1:1"), "GET", "http://127.0.0.1:1/")

    run(main())


# -- release, early close, pool bounds ------------------------------------------------


def slow_chunked(gate: asyncio.Event) -> Handler:
    """Head + first chunk, then wait for ``gate`` before finishing the body."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        while (req := await read_request(reader)) is not None:
            srv.requests.append(req)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            read_eof = asyncio.ensure_future(reader.read(1))
            gate_wait = asyncio.ensure_future(gate.wait())
            done, _ = await asyncio.wait({read_eof, gate_wait}, return_when=asyncio.FIRST_COMPLETED)
            if read_eof in done:  # the client went away mid-body
                gate_wait.cancel()
                return
            read_eof.cancel()
            await asyncio.gather(read_eof, return_exceptions=True)
            writer.write(b"4\r\nlast\r\n0\r\n\r\n")
            await writer.drain()

    return handler


def test_early_close_discards_connection_and_aclose_is_idempotent(run: Any) -> None:
    async def main() -> None:
        gate = asyncio.Event()
        async with Server(slow_chunked(gate)) as srv:
            t = FastTransport()
            resp = await direct(t, "GET", srv.url)
            it = astream(resp).__aiter__()
            assert await it.__anext__() == b"first"
            assert t.pool_stats()["active"] == 1
            await resp.aclose()
            await resp.aclose()
            await astream(resp).aclose()  # the stream itself, twice more
            assert t.pool_stats() == {"idle": 0, "active": 0, "total": 0, "waiting": 0}
            await asyncio.wait_for(srv.closed.wait(), 2)  # the server saw the socket close
            assert srv.open == 0
            gate.set()
            r2 = await direct(t, "GET", srv.url)  # a new connection works
            assert b"".join([c async for c in astream(r2)]) == b"firstlast"
            assert srv.connections == 2
            assert t.pool_stats()["idle"] == 1

    run(main())


def test_aclose_inside_shield_under_cancellation(run: Any) -> None:
    async def main() -> None:
        gate = asyncio.Event()
        async with Server(slow_chunked(gate)) as srv:
            t = FastTransport()
            client = httpx.AsyncClient(transport=t)
            started = asyncio.Event()

            async def consumer() -> None:
                resp = await client.send(client.build_request("GET", srv.url), stream=True)
                try:
                    async for _ in resp.aiter_raw():
                        started.set()
                finally:
                    await asyncio.shield(resp.aclose())

            task = asyncio.ensure_future(consumer())
            await started.wait()
            task.cancel()
            task.cancel()  # a second cancellation lands while closing
            with pytest.raises(asyncio.CancelledError):
                await task
            assert t.pool_stats()["total"] == 0
            await asyncio.wait_for(srv.closed.wait(), 2)
            await client.aclose()

    run(main())


def test_fully_received_body_closed_unread_goes_back_to_pool(run: Any) -> None:
    async def main() -> None:
        async with Server(OK_HELLO) as srv:
            t = FastTransport()
            resp = await direct(t, "GET", srv.url)
            await asyncio.sleep(0.05)  # the whole body has arrived, nothing read
            await resp.aclose()
            assert t.pool_stats() == {"idle": 1, "active": 0, "total": 1, "waiting": 0}
            r2 = await direct(t, "GET", srv.url)
            assert b"".join([c async for c in astream(r2)]) == b"hello"
            assert srv.connections == 1

    run(main())


def test_pool_bound_waits_and_pool_timeout(run: Any) -> None:
    async def main() -> None:
        gate = asyncio.Event()
        async with Server(slow_chunked(gate)) as srv:
            t = FastTransport(max_connections=2)
            r1 = await direct(t, "GET", srv.url)
            r2 = await direct(t, "GET", srv.url)
            with pytest.raises(httpx.PoolTimeout) as info:
                await direct(t, "GET", srv.url, extensions={"timeout": {"pool": 0.1}})
            assert info.value.request.url == srv.url
            third = asyncio.ensure_future(direct(t, "GET", srv.url, extensions={"timeout": {"pool": 5}}))
            await until(lambda: t.pool_stats()["waiting"] == 1)
            await r1.aclose()  # frees a slot: the waiter connects
            gate.set()
            r3 = await third
            assert b"".join([c async for c in astream(r3)]) == b"firstlast"
            assert b"".join([c async for c in astream(r2)]) == b"firstlast"
            assert srv.max_open <= 2
            assert t.pool_stats() == {"idle": 2, "active": 0, "total": 2, "waiting": 0}

    run(main())


def test_max_keepalive_per_origin_and_idle_eviction_across_origins(run: Any) -> None:
    async def main() -> None:
        async with Server(OK_HELLO) as a, Server(OK_HELLO) as b:
            t = FastTransport(max_keepalive=2, max_connections=4)
            responses = [await direct(t, "GET", a.url) for _ in range(4)]  # 4 busy connections
            for r in responses:
                assert b"".join([c async for c in astream(r)]) == b"hello"
            assert t.pool_stats() == {"idle": 2, "active": 0, "total": 2, "waiting": 0}
            # Fill the pool with idle connections of origin a, then ask for origin b:
            r_a = [await direct(t, "GET", a.url) for _ in range(4)]
            for r in r_a:
                await r.aclose()
            assert t.pool_stats()["idle"] == 2
            r_b = [await direct(t, "GET", b.url) for _ in range(4)]  # evicts a's idle ones
            assert t.pool_stats()["active"] == 4 and t.pool_stats()["total"] == 4
            for r in r_b:
                await r.aclose()

    run(main())


def test_keepalive_expiry_closes_idle_connections(run: Any) -> None:
    async def main() -> None:
        async with Server(OK_HELLO) as srv:
            t = FastTransport(keepalive_expiry=0.1)
            r = await direct(t, "GET", srv.url)
            await r.aread()
            await r.aclose()
            assert t.pool_stats()["idle"] == 1
            await until(lambda: t.pool_stats()["idle"] == 0)
            await asyncio.wait_for(srv.closed.wait(), 2)

    run(main())


def test_a_closed_connection_is_freed_without_the_cycle_collector(run: Any) -> None:
    """A connection closed after its response (here: no room in the pool) leaves no reference cycle: it, and
    the sink its reader gave it, go when the last reference does. A cycle would keep a whole request's
    objects for the collector, whose pass over them stalled 500 streams for tens of ms."""

    class Taker:
        freed = False

        def __call__(self, chunk: bytes) -> bool:
            return False

        def __del__(self) -> None:
            Taker.freed = True

    def connections(transport: FastTransport) -> list[Any]:
        """``transport``'s connections still in memory (other tests' may be too)."""
        return [o for o in gc.get_objects() if type(o).__name__ == "_Connection" and o._pool is transport]

    async def main() -> None:
        async with Server(OK_HELLO) as srv:
            t = FastTransport(max_keepalive=0)
            r = await direct(t, "GET", srv.url)
            assert r.stream.sink(Taker())
            assert b"".join([c async for c in astream(r)]) == b"hello"
            await r.aclose()
            del r
            await asyncio.wait_for(srv.closed.wait(), 2)
            await until(lambda: not connections(t))
            assert Taker.freed
            # A connection kept in the pool forgets its reader's sink when the stream closes.
            Taker.freed = False
            pooled = FastTransport()
            r = await direct(pooled, "GET", srv.url)
            assert r.stream.sink(Taker())
            await r.aread()
            await r.aclose()
            assert pooled.pool_stats()["idle"] == 1 and Taker.freed
            await pooled.aclose()

    gc.collect()
    gc.disable()
    try:
        run(main())
    finally:
        gc.enable()


def test_transport_aclose_closes_pooled_connections(run: Any) -> None:
    async def main() -> None:
        async with Server(OK_HELLO) as srv:
            t = FastTransport()
            for _ in range(3):
                r = await direct(t, "GET", srv.url)
                await r.aread()
            assert t.pool_stats()["idle"] == 1
            await t.aclose()
            await t.aclose()
            assert t.pool_stats()["total"] == 0
            await asyncio.wait_for(srv.closed.wait(), 2)
            with pytest.raises(RuntimeError):
                await direct(t, "GET", srv.url)

    run(main())


# -- body framing and streaming ------------------------------------------------------------


def test_chunks_are_yielded_one_network_read_at_a_time(run: Any) -> None:
    async def main() -> None:
        acks = [asyncio.Event() for _ in range(4)]
        pieces = [b"alpha", b"beta-beta", b"g", b"delta!"]

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece, ack in zip(pieces, acks):
                await asyncio.sleep(0.02)
                writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                await writer.drain()
                await ack.wait()  # the client must have seen this piece before the next
            await asyncio.sleep(0.02)
            # several HTTP chunks in one write: one network read, one yielded chunk
            writer.write(b"3\r\nabc\r\n3\r\ndef\r\n1\r\ng\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            await read_request(reader)

        async with Server(handler) as srv:
            t = FastTransport()
            resp = await direct(t, "GET", srv.url, extensions={"timeout": {"read": 2}})
            got = []
            async for chunk in astream(resp):
                got.append(chunk)
                if len(got) <= len(acks):
                    acks[len(got) - 1].set()
            assert got == pieces + [b"abcdefg"]
            assert t.pool_stats()["idle"] == 1

    run(main())


def test_gzip_passthrough_raw_and_decoded(run: Any) -> None:
    async def main() -> None:
        payload = b'{"hello": "world"}' * 50
        compressed = gzip.compress(payload)
        handler = fixed(
            b"HTTP/1.1 200 OK",
            [b"Content-Encoding: gzip", b"Content-Length: %d" % len(compressed)],
            compressed,
        )
        async with Server(handler) as srv, httpx.AsyncClient(transport=FastTransport()) as client:
            async with client.stream("GET", srv.url) as r:
                raw = b"".join([c async for c in r.aiter_raw()])
            assert raw == compressed
            async with client.stream("GET", srv.url) as r:
                decoded = b"".join([c async for c in r.aiter_bytes()])
            assert decoded == payload
            assert (await client.get(srv.url)).content == payload
            assert srv.connections == 1

    run(main())


def test_large_body_with_slow_consumer_uses_flow_control(run: Any) -> None:
    async def main() -> None:
        body = bytes(range(256)) * 4096 * 4  # 4 MiB

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
            while await read_request(reader) is not None:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                for i in range(0, len(body), 65536):
                    writer.write(body[i : i + 65536])
                    await writer.drain()

        async with Server(handler) as srv:
            t = FastTransport()
            resp = await direct(t, "GET", srv.url)
            conn = astream(resp)._conn
            await until(lambda: conn._read_paused)  # nothing consumed: reading pauses
            await asyncio.sleep(0.05)
            assert conn.buffered <= 512 * 1024  # bounded, not the whole 4 MiB
            data = b"".join([c async for c in astream(resp)])
            assert data == body
            assert t.pool_stats()["idle"] == 1

    run(main())


def test_close_delimited_head_204_304_and_informational(run: Any) -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
            while (req := await read_request(reader)) is not None:
                srv.requests.append(req)
                if req.target == b"/close":
                    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart1")
                    await writer.drain()
                    await asyncio.sleep(0.02)
                    writer.write(b"part2")
                    await writer.drain()
                    return
                if req.target == b"/head":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                elif req.target == b"/204":
                    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                elif req.target == b"/304":
                    writer.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n")
                elif req.target == b"/100":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                elif req.target == b"/10":
                    writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
                    return
                await writer.drain()

        async with Server(handler) as srv:
            t = FastTransport()
            r = await direct(t, "GET", srv.url + "/close")
            assert [c async for c in astream(r)] == [b"part1", b"part2"]
            await r.aclose()
            assert t.pool_stats()["total"] == 0
            for target, status in (("/head", 200), ("/204", 204), ("/304", 304), ("/head", 200), ("/100", 200)):
                method = "HEAD" if target == "/head" else "GET"
                r = await direct(t, method, srv.url + target)
                assert r.status_code == status
                body = b"".join([c async for c in astream(r)])
                assert body == (b"ok" if target == "/100" else b"")
                assert t.pool_stats() == {"idle": 1, "active": 0, "total": 1, "waiting": 0}
            assert srv.connections == 2  # /close, then one keep-alive connection for the rest
            r = await direct(t, "GET", srv.url + "/10")
            assert r.http_version == "HTTP/1.0"
            assert await r.aread() == b"ok"

    run(main())


# -- errors ------------------------------------------------------------------------------


def raw_then_close(data: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
        await read_request(reader)
        writer.write(data)
        await writer.drain()

    return handler


@pytest.mark.parametrize(
    "wire",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",  # garbage instead of HTTP
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",  # truncated chunked
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n",  # bad chunk size
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",  # truncated content-length
        b"HTTP/1.1 200 OK\r\nContent-Le",  # truncated head
        b"",  # closed without a response
    ],
)
def test_protocol_errors(run: Any, wire: bytes) -> None:
    async def main() -> None:
        async with Server(raw_then_close(wire)) as srv:
            t = FastTransport()
            with pytest.raises(httpx.RemoteProtocolError) as info:
                resp = await direct(t, "GET", srv.url)
                async for _ in astream(resp):
                    pass
            assert info.value.request.url == srv.url
            if wire.startswith(b"SSH") or b"ZZ" in wire:
                assert info.value.__cause__ is not None
            assert t.pool_stats()["total"] == 0
            assert srv.connections == 1  # fresh connections are never retried

    run(main())


def test_failed_body_keeps_failing_and_unsolicited_data_is_not_trusted(run: Any) -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
            while (req := await read_request(reader)) is not None:
                if req.target == b"/truncated":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
                    await writer.drain()
                    return
                if req.target == b"/junk":  # a second, unasked-for response in the same write
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                                 b"HTTP/1.1 500 Oops\r\nX-Evil: 1\r\nContent-Length: 0\r\n\r\n")
                elif req.target == b"/later":  # bytes arriving while the connection is idle
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()

        async with Server(handler) as srv:
            t = FastTransport()
            resp = await direct(t, "GET", srv.url + "/truncated")
            it = astream(resp).__aiter__()
            assert await it.__anext__() == b"hello"
            for _ in range(2):  # the failure is not followed by a clean-looking end
                with pytest.raises(httpx.RemoteProtocolError):
                    await it.__anext__()
            await resp.aclose()

            resp = await direct(t, "GET", srv.url + "/junk")
            assert resp.status_code == 200 and resp.headers.raw == [(b"Content-Length", b"2")]
            assert await resp.aread() == b"ok"
            assert t.pool_stats()["total"] == 0  # not pooled

            resp = await direct(t, "GET", srv.url + "/later")
            assert await resp.aread() == b"ok"
            assert t.pool_stats()["idle"] == 1
            await until(lambda: t.pool_stats()["total"] == 0)
            assert srv.connections == 3

    run(main())


def test_refused_port_is_connect_error(run: Any) -> None:
    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        t = FastTransport()
        with pytest.raises(httpx.ConnectError) as info:
            await direct(t, "GET", f"http://127.0.0.1:{port}/")
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.request.url == f"http://127.0.0.1:{port}/"
        assert t.pool_stats()["total"] == 0
        async with httpx.AsyncClient(transport=t) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/")

    run(main())


def test_stale_pooled_connection_is_detected_before_reuse(run: Any) -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # keep-alive, then close
            await writer.drain()

        async with Server(handler) as srv:
            t = FastTransport()
            for _ in range(3):
                r = await direct(t, "GET", srv.url)
                assert await r.aread() == b"ok"
                await until(lambda: srv.open == 0)
                await until(lambda: t.pool_stats()["idle"] == 0)  # noticed the server's FIN
            assert srv.connections == 3

    run(main())


def test_request_written_on_reused_connection_is_never_resent(run: Any) -> None:
    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
            first = True
            while (req := await read_request(reader)) is not None:
                srv.requests.append(req)
                if not first:
                    return  # read the whole request, then close without a response byte
                first = False
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

        async with Server(handler) as srv:
            t = FastTransport()
            r = await direct(t, "POST", srv.url, content=b"x")
            assert await r.aread() == b"ok"
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await direct(t, "POST", srv.url, content=b"y")  # reused, written, dropped: the caller decides
            assert srv.connections == 1
            assert [q.body for q in srv.requests] == [b"x", b"y"]
            assert t.pool_stats()["total"] == 0

    run(main())


# -- timeouts ------------------------------------------------------------------------------


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
    await asyncio.sleep(30)


def test_connect_timeout_during_tls_handshake(run: Any) -> None:
    async def main() -> None:
        async with Server(silent) as srv:  # accepts TCP, never answers the TLS hello
            t = FastTransport()
            with pytest.raises(httpx.ConnectTimeout) as info:
                await direct(t, "GET", f"https://127.0.0.1:{srv.port}/", extensions={"timeout": {"connect": 0.2}})
            assert isinstance(info.value.__cause__, TimeoutError)
            assert t.pool_stats()["total"] == 0
            async with httpx.AsyncClient(transport=t, timeout=httpx.Timeout(5, connect=0.2)) as client:
                with pytest.raises(httpx.ConnectTimeout):
                    await client.get(f"https://127.0.0.1:{srv.port}/")

    run(main())


def test_read_timeout_waiting_for_head(run: Any) -> None:
    async def main() -> None:
        async with Server(silent) as srv:
            t = FastTransport()
            with pytest.raises(httpx.ReadTimeout):
                await direct(t, "GET", srv.url, extensions={"timeout": {"read": 0.15}})
            assert t.pool_stats()["total"] == 0
            async with httpx.AsyncClient(transport=FastTransport(), timeout=0.15) as client:
                with pytest.raises(httpx.ReadTimeout):
                    await client.get(srv.url)

    run(main())


def test_read_timeout_between_body_chunks(run: Any) -> None:
    async def main() -> None:
        gate = asyncio.Event()
        async with Server(slow_chunked(gate)) as srv:
            t = FastTransport()
            resp = await direct(t, "GET", srv.url, extensions={"timeout": {"read": 0.15}})
            got = []
            with pytest.raises(httpx.ReadTimeout):
                async for chunk in astream(resp):
                    got.append(chunk)
            assert got == [b"first"]
            assert t.pool_stats()["total"] == 0
            await asyncio.wait_for(srv.closed.wait(), 2)
            await resp.aclose()

    run(main())


def test_write_timeout_when_server_does_not_read(run: Any) -> None:
    async def main() -> None:
        async def not_reading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
            writer.transport.pause_reading()  # type: ignore[attr-defined]
            await asyncio.sleep(30)

        async with Server(not_reading) as srv:
            t = FastTransport()
            with pytest.raises(httpx.WriteTimeout):
                await direct(
                    t, "POST", srv.url, content=b"x" * (32 * 1024 * 1024), extensions={"timeout": {"write": 0.2}}
                )
            assert t.pool_stats()["total"] == 0

    run(main())


# -- TLS and proxies -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and example.test, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is not installed (needed to make a test certificate)")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=ccproxy-test",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:example.test",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def server_tls(cert: Path, key: Path, sni_seen: list[str | None]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.sni_callback = lambda sock, name, c: sni_seen.append(name)  # type: ignore[assignment,misc,return-value]
    return ctx


def test_tls_verification_and_verify_false(run: Any, tls_cert: tuple[Path, Path]) -> None:
    cert, key = tls_cert

    async def main() -> None:
        async with Server(OK_HELLO, ssl_context=server_tls(cert, key, [])) as srv:
            trusted = FastTransport(ssl_context=ssl.create_default_context(cafile=str(cert)))
            for _ in range(3):
                r = await direct(trusted, "GET", srv.url)
                assert await r.aread() == b"hello"
            assert srv.connections == 1
            with pytest.raises(httpx.ConnectError) as info:
                await direct(FastTransport(), "GET", srv.url)  # default store (certifi): self-signed is refused
            assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
            r = await direct(FastTransport(verify=False), "GET", srv.url)
            assert await r.aread() == b"hello"

    run(main())


def test_http_proxy_from_env_absolute_form_and_no_proxy(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with Server(OK_HELLO) as origin:

            async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
                # A forward proxy: reads absolute-form requests, relays them to the origin.
                up_r, up_w = await asyncio.open_connection("127.0.0.1", origin.port)
                try:
                    while (req := await read_request(reader)) is not None:
                        srv.requests.append(req)
                        head = req.method + b" " + req.target + b" HTTP/1.1\r\n"
                        head += b"".join(k + b": " + v + b"\r\n" for k, v in req.headers)
                        up_w.write(head + b"\r\n" + req.body)
                        writer.write(await up_r.readuntil(b"\r\n\r\n") + await up_r.readexactly(5))
                        await writer.drain()
                finally:
                    up_w.close()

            async with Server(proxy) as px:
                monkeypatch.setenv("HTTP_PROXY", f"http://user:pw@127.0.0.1:{px.port}")
                t = FastTransport()
                async with httpx.AsyncClient(transport=t) as client:
                    for path in ("/a", "/b?q=1"):
                        r = await client.get(f"http://example.test:{origin.port}{path}")
                        assert r.content == b"hello"
                assert [q.target for q in px.requests] == [
                    b"http://example.test:%d/a" % origin.port,
                    b"http://example.test:%d/b?q=1" % origin.port,
                ]
                sent = dict(px.requests[0].headers)
                assert sent[b"Host"] == b"example.test:%d" % origin.port
                assert sent[b"Proxy-Authorization"] == b"Basic dXNlcjpwdw=="
                assert px.connections == 1

                monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
                t2 = FastTransport()
                r = await direct(t2, "GET", origin.url + "/direct")
                assert await r.aread() == b"hello"
                assert origin.requests[-1].target == b"/direct"
                assert len(px.requests) == 2
                assert FastTransport(trust_env=False)._proxy_for("http", "example.test") is None

    run(main())


def test_https_through_connect_tunnel_with_sni(
    run: Any, monkeypatch: pytest.MonkeyPatch, tls_cert: tuple[Path, Path]
) -> None:
    cert, key = tls_cert

    async def main() -> None:
        sni_seen: list[str | None] = []
        async with Server(OK_HELLO, ssl_context=server_tls(cert, key, sni_seen)) as origin:
            connects: list[bytes] = []

            async def tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: Server) -> None:
                head = await reader.readuntil(b"\r\n\r\n")
                connects.append(head)
                if b"refuse.test" in head:
                    writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    return
                up_r, up_w = await asyncio.open_connection("127.0.0.1", origin.port)
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

                async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                    dst.close()

                try:
                    await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer), return_exceptions=True)
                finally:
                    up_w.close()

            async with Server(tunnel) as px:
                monkeypatch.setenv("https_proxy", f"127.0.0.1:{px.port}")
                t = FastTransport(ssl_context=ssl.create_default_context(cafile=str(cert)))
                async with httpx.AsyncClient(transport=t) as client:
                    for _ in range(3):
                        r = await client.get("https://example.test/v1/models")
                        assert r.content == b"hello"
                    with pytest.raises(httpx.ProxyError):
                        await client.get("https://refuse.test/")
                assert connects[0].startswith(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n")
                assert len(connects) == 2  # one tunnel reused for three requests, then the refused one
                assert sni_seen == ["example.test"]
                assert origin.requests[0].target == b"/v1/models"
                # The certificate is checked against the URL host, not the proxy's.
                async with httpx.AsyncClient(transport=FastTransport(ssl_context=t._ssl_context)) as client:
                    with pytest.raises(httpx.ConnectError):
                        await client.get("https://other.test/")

    run(main())
