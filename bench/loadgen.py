"""The load client of the benchmark and the soak: asyncio protocols, keep-alive HTTP/1.1, httptools parsing.

Not httpx: a general-purpose client costs more CPU per request than the proxy
it would be measuring. Each :class:`Conn` is one keep-alive connection running
one request at a time; every network read is timestamped as it arrives, so
the client sees exactly what the wire delivered:

* time to first byte (request written → first response byte read);
* per-event latency: each text delta carries its send time (``"@"`` + 20 digits of
  ``time.monotonic_ns()``, the mock upstream's ``x-mock-stamp``), compared with the read time;
* inter-arrival gaps between events, and reads that carry more than one event
  (coalescing somewhere between the upstream's writes and the client);
* event counts (an event ends at a blank line), to check every event arrived.

The requests ask the mock upstream (``tests/mock_upstream``) for their stream's shape with its
``x-mock-*`` headers.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httptools

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the mock upstream is the package tests/mock_upstream of the repository
    sys.path.append(str(ROOT))

from tests.mock_upstream import stream_framing  # noqa: E402

_now = time.monotonic_ns
#: The client dialects of :func:`build_request`: the two of every mixed phase, and every route, in report order.
DIALECTS = ("anthropic", "openai")
ROUTES = ("anthropic", "openai", "responses")


@dataclass(slots=True)
class Target:
    """Where the load goes: the proxy, the upstream directly, or another proxy."""

    name: str
    host: str
    port: int
    #: Client-side TLS (only for a direct TLS connection to the upstream).
    ssl: ssl.SSLContext | None = None
    #: Prefix of the OpenAI path: the proxy serves ``/v1/chat/completions``, so does the upstream.
    openai_path: str = "/v1/chat/completions"
    anthropic_path: str = "/v1/messages?beta=true"
    responses_path: str = "/v1/responses"


@dataclass(slots=True)
class Result:
    """What one phase measured (times in ns)."""

    requests: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[int] = field(default_factory=list)
    ttfb: list[int] = field(default_factory=list)
    streams: int = 0
    incomplete_streams: int = 0
    events: int = 0
    expected_events: int = 0
    #: Response body bytes (without the chunked framing) of the requests counted.
    body_bytes: int = 0
    event_latencies: list[int] = field(default_factory=list)
    gaps: list[int] = field(default_factory=list)
    event_reads: int = 0
    multi_event_reads: int = 0
    wall: float = 0.0

    def ok(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


@dataclass(slots=True)
class Request:
    """Pre-encoded request bytes and what to expect back."""

    data: bytes
    sse: bool = False
    #: Events the stream should carry (its text deltas, ``x-mock-events``, and the dialect's framing).
    events: int = 0


def build_request(
    target: Target,
    dialect: str,
    *,
    stream: bool = False,
    events: int = 50,
    rate: float = 0.0,
    delay_ms: float = 0.0,
    body_bytes: int = 0,
    model: str | None = None,
) -> Request:
    """A request as Claude Code or the OpenAI SDK would send it, pre-encoded.

    A stream carries ``events`` SSE events in all (at least one text delta, each stamped with its
    send time), ``rate`` per second on a schedule (0: back to back) or ``delay_ms`` apart; a JSON answer
    comes ``delay_ms`` late (the upstream's own time, as in the field's 20 ms mock-upstream method).
    ``body_bytes`` pads the conversation to about that size (Claude Code sends ~80 KB). ``model`` names
    another model than the dialect's benchmark one (e.g. an alias of the proxy's configuration).
    """
    if dialect == "anthropic":
        path = target.anthropic_path
        default = "claude-bench-1"
    elif dialect == "responses":
        path = target.responses_path
        default = "resp-bench-1"
    else:
        path = target.openai_path
        default = "gpt-bench-1"
    model = model or default
    text = "Say hello."
    if body_bytes > 200:
        text = ("lorem ipsum dolor sit amet " * (body_bytes // 27 + 1))[: body_bytes - 180]
    if dialect == "anthropic":
        body = (
            '{"model":"%s","max_tokens":1024,"stream":%s,"metadata":{"user_id":"bench"},'
            '"system":[{"type":"text","text":"You are a benchmark.","cache_control":{"type":"ephemeral"}}],'
            '"messages":[{"role":"user","content":"%s"}]}' % (model, "true" if stream else "false", text)
        ).encode()
    elif dialect == "responses":
        body = (
            '{"model":"%s","max_output_tokens":1024,"stream":%s,"instructions":"You are a benchmark.",'
            '"input":[{"role":"user","content":"%s"}]}' % (model, "true" if stream else "false", text)
        ).encode()
    else:
        body = (
            '{"model":"%s","max_tokens":1024,"stream":%s,'
            '"messages":[{"role":"system","content":"You are a benchmark."},{"role":"user","content":"%s"}]}'
            % (model, "true" if stream else "false", text)
        ).encode()
    headers = [
        ("Host", f"{target.host}:{target.port}"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Accept", "application/json"),
        ("User-Agent", "claude-cli/2.1.197 (external, cli)"),
        ("Accept-Encoding", "gzip, deflate"),
        ("X-Stainless-Lang", "js"),
        ("X-Stainless-Package-Version", "0.60.0"),
        ("X-Stainless-Runtime", "node"),
        ("x-mock-fixed-ids", "1"),  # no random ids or request hashing: the mock's cheapest replies
    ]
    deltas = max(1, events - stream_framing[dialect])
    if stream:
        headers += [("x-mock-events", str(deltas)), ("x-mock-stamp", "1")]
        if rate > 0:
            headers.append(("x-mock-rate", f"{rate:g}"))
    if delay_ms > 0:
        headers.append(("x-mock-delay", f"{delay_ms:g}"))
    if dialect == "anthropic":
        headers += [
            ("x-api-key", "sk-ant-client-key-not-forwarded"),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"),
            ("x-app", "cli"),
        ]
    else:
        headers.append(("Authorization", "Bearer sk-client-key-not-forwarded"))
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return Request(head.encode() + body, stream, deltas + stream_framing[dialect] if stream else 0)


class Conn(asyncio.Protocol):
    """One keep-alive client connection; :meth:`send` runs one request and resolves when its response ended."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.lost = False
        self.res = Result()
        self.sse = False
        self.t_sent = 0
        self.t_first = 0
        self.status = 0
        self.events = 0
        self.body_bytes = 0
        self.tail = b""
        self.last_arrival = 0
        self.read_events = 0
        self.now = 0

    def send(self, request: Request, res: Result) -> asyncio.Future[None]:
        if self.lost or self.transport is None:
            raise ConnectionError("connection closed")
        self.res = res
        self.sse = request.sse
        self.t_first = 0
        self.status = 0
        self.events = 0
        self.body_bytes = 0
        self.tail = b""
        self.last_arrival = 0
        self.waiter = self.loop.create_future()
        self.t_sent = _now()
        self.transport.write(request.data)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.close()

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = _now()
        self.now = now
        if not self.t_first:
            self.t_first = now
        self.read_events = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad response: {exc}"))
            self.transport.abort()  # type: ignore[union-attr]
            return
        n = self.read_events
        if n:
            res = self.res
            res.event_reads += 1
            if n > 1:
                res.multi_event_reads += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(ConnectionError("connection lost"))

    def _fail(self, exc: Exception) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if not self.sse:
            return
        res = self.res
        now = self.now
        # An event ends at a blank line; the previous piece's last byte catches one split across reads.
        n = (self.tail + body).count(b"\n\n") if self.tail else body.count(b"\n\n")
        self.tail = body[-1:]
        if n:
            self.events += n
            self.read_events += n
            if self.last_arrival:
                res.gaps.append(now - self.last_arrival)
                if n > 1:
                    res.gaps.extend([0] * (n - 1))
            self.last_arrival = now
        i = body.find(b'"@')
        if i >= 0:
            lat = res.event_latencies
            size = len(body)
            while i >= 0:
                j = i + 22
                if j <= size:
                    lat.append(now - int(body[i + 2 : j]))
                i = body.find(b'"@', j)

    def on_message_complete(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def connect(target: Target) -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: Conn(loop), target.host, target.port, ssl=target.ssl, server_hostname=target.host if target.ssl else None
    )
    return conn


async def connect_many(target: Target, n: int, batch: int = 50) -> list[Conn]:
    conns: list[Conn] = []
    while len(conns) < n:
        k = min(batch, n - len(conns))
        conns += await asyncio.gather(*(connect(target) for _ in range(k)))
    return conns


def _record(conn: Conn, req: Request, res: Result, t_done: int) -> None:
    res.requests += 1
    res.ok(conn.status)
    if conn.status != 200:
        res.errors += 1
    res.latencies.append(t_done - conn.t_sent)
    res.body_bytes += conn.body_bytes
    if req.sse:
        res.ttfb.append(conn.t_first - conn.t_sent)
        res.streams += 1
        res.events += conn.events
        res.expected_events += req.events
        if conn.events != req.events:
            res.incomplete_streams += 1


async def closed_loop(target: Target, requests: list[Request], concurrency: int, seconds: float) -> Result:
    """``concurrency`` connections, each sending its request back to back for ``seconds``.

    Connection ``i`` sends ``requests[i % len(requests)]``. Requests in flight when the
    time is up finish and count.
    """
    loop = asyncio.get_running_loop()
    conns = await connect_many(target, concurrency)
    res = Result()
    end = loop.time() + seconds

    async def worker(i: int, conn: Conn) -> None:
        req = requests[i % len(requests)]
        while loop.time() < end:
            try:
                await conn.send(req, res)
            except ConnectionError:
                res.errors += 1
                conn = await connect(target)
                conns.append(conn)  # closed with the others at the end
                continue
            _record(conn, req, res, _now())

    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(worker(i, c) for i, c in enumerate(conns))), seconds + 30)
    finally:
        res.wall = time.perf_counter() - t0
        for c in conns:
            c.close()
    return res


async def together(
    targets: Sequence[tuple[Target, list[Request]]], clients: int, rounds: int, warmup: int = 1, pause: float = 0.02,
) -> list[Result]:
    """``rounds`` times, each target in turn (the order reversed every other round): ``clients`` requests
    written in the same loop iteration, then wait for all. One result per target.

    Each target keeps its ``clients`` connections for every round; the first ``warmup`` rounds (the
    connections' first requests) are not counted. Taking turns puts the machine's noise on each alike.
    """
    conns = [await connect_many(target, clients) for target, _ in targets]
    results = [Result() for _ in targets]
    t0 = time.perf_counter()
    try:
        for i in range(warmup + rounds):
            order = range(len(targets)) if i % 2 == 0 else range(len(targets) - 1, -1, -1)
            for k in order:
                res = results[k] if i >= warmup else Result()
                requests = targets[k][1]
                pairs = [(c, requests[j % len(requests)]) for j, c in enumerate(conns[k])]
                futures = [c.send(req, res) for c, req in pairs]
                await asyncio.wait_for(asyncio.gather(*futures), 30)
                t_done = _now()
                for c, req in pairs:
                    _record(c, req, res, t_done)
                await asyncio.sleep(pause)
    finally:
        for res in results:
            res.wall = time.perf_counter() - t0
        for c in (c for group in conns for c in group):
            c.close()
    return results


async def in_turns(targets: Sequence[tuple[Target, list[Request]]], seconds: float, blocks: int) -> list[Result]:
    """One connection per target, one request in flight, ``seconds`` in all per target, in ``blocks`` slices
    taking turns (the order reversed every other block); the requests of a target cycle through its list.
    One result per target.

    Each connection's first request is not counted (a new connection's costs are not the steady state).
    """
    loop = asyncio.get_running_loop()
    conns = [await connect(target) for target, _ in targets]
    results = [Result() for _ in targets]
    sent = [0] * len(targets)
    try:
        for k, (_, requests) in enumerate(targets):
            await asyncio.wait_for(conns[k].send(requests[0], Result()), 30)
        for b in range(blocks):
            for k in range(len(targets)) if b % 2 == 0 else range(len(targets) - 1, -1, -1):
                target, requests = targets[k]
                res, t0 = results[k], time.perf_counter()
                end = loop.time() + seconds / blocks
                while loop.time() < end:
                    req = requests[sent[k] % len(requests)]
                    sent[k] += 1
                    try:
                        await asyncio.wait_for(conns[k].send(req, res), 30)
                    except ConnectionError:
                        res.errors += 1
                        conns[k] = await connect(target)
                        continue
                    _record(conns[k], req, res, _now())
                res.wall += time.perf_counter() - t0
    finally:
        for c in conns:
            c.close()
    return results


async def many_streams(
    target: Target, requests: list[Request], streams: int, ramp: float, timeout: float
) -> Result:
    """``streams`` concurrent streams started evenly over ``ramp`` seconds; each request once.

    A stream still running after ``timeout`` seconds is counted incomplete with the events it got.
    """
    loop = asyncio.get_running_loop()
    conns = await connect_many(target, streams)
    res = Result()
    start = loop.time()

    async def one(i: int, conn: Conn) -> None:
        req = requests[i % len(requests)]
        await asyncio.sleep(max(0.0, start + ramp * i / streams - loop.time()))
        try:
            await conn.send(req, res)
        except ConnectionError:
            res.errors += 1
            res.streams += 1
            res.incomplete_streams += 1
            res.events += conn.events
            res.expected_events += req.events
            return
        _record(conn, req, res, _now())

    tasks = [asyncio.ensure_future(one(i, c)) for i, c in enumerate(conns)]
    t0 = time.perf_counter()
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    res.wall = time.perf_counter() - t0
    if pending:
        for i, c in enumerate(conns):
            if c.waiter is not None and not c.waiter.done():
                res.streams += 1
                res.incomplete_streams += 1
                res.events += c.events
                res.expected_events += requests[i % len(requests)].events
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for c in conns:
        c.close()
    return res


async def one_request(target: Target, request: Request, timeout: float = 5.0) -> int:
    """Status of one request on a new connection (raises OSError when nothing listens)."""
    conn = await connect(target)
    try:
        res = Result()
        await asyncio.wait_for(conn.send(request, res), timeout)
        return conn.status
    finally:
        conn.close()
