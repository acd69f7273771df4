"""The least any Sanic proxy does: forward each request to the upstream and hand back its body.

    FORWARDER_UPSTREAM=127.0.0.1:9000 sanic bench.forwarder:app --single-process --port 8100

A measuring stick beside the floor (``bench/floor.py``), not a proxy: each POST goes to
``$FORWARDER_UPSTREAM`` (host:port) over a pooled keep-alive connection (a bare ``asyncio.Protocol``),
its header lines copied, and the answer comes back with its status, headers and body as Sanic
sends a response (as the floor sends the same answer). A JSON answer framed by ``content-length`` goes
back whole; a chunked one (the mock's streams) as a Sanic stream, each upstream chunk written as it
arrives. No timeouts, no error handling beyond a broken connection. Its CPU per request minus the
floor's, side by side (``bench/ab.py --variant fwd=!forwarder``), is what the upstream hop itself costs a
Sanic app on this machine: docs/performance.md, "A bare forwarder"; its added TTFB (``bench/ab.py --phase
ttfb``) is the least a Sanic proxy adds to the start of a stream here.
"""

from __future__ import annotations

import asyncio
import os

from sanic import Request, Sanic
from sanic.response import HTTPResponse

HOST, _, PORT = os.environ.get("FORWARDER_UPSTREAM", "127.0.0.1:9000").rpartition(":")
SKIP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}

app = Sanic("ccproxy_forwarder")
# The proxy's settings (ccproxy_core.server.create_app), as the floor has them.
app.config.REQUEST_MAX_SIZE = 32 * 1024 * 1024
app.config.RESPONSE_TIMEOUT = 365 * 24 * 3600
app.config.KEEP_ALIVE_TIMEOUT = 75
app.config.NOISY_EXCEPTIONS = False


class _Upstream(asyncio.Protocol):
    """One keep-alive connection; ``answer`` resolves to (status, head, body) of the request in flight, body
    None for a chunked answer, whose chunks then go to ``chunks`` (None after the last)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""
        self.answer: asyncio.Future[tuple[int, bytes, bytes | None]] | None = None
        self.chunks: asyncio.Queue[bytes | None] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.chunks is not None:
            self._dechunk()
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end] + b"\r\n"
        lower = head.lower()
        if b"\r\ntransfer-encoding: chunked\r\n" in lower:
            self.buffer = self.buffer[end + 4:]
            self.chunks = asyncio.Queue()
            self.answer.set_result((int(head[9:12]), head, None))
            self._dechunk()
            return
        at = lower.find(b"\r\ncontent-length:") + 17
        size = int(lower[at:lower.find(b"\r\n", at)])
        if len(self.buffer) >= end + 4 + size:
            body, self.buffer = self.buffer[end + 4:end + 4 + size], self.buffer[end + 4 + size:]
            self.answer.set_result((int(head[9:12]), head, body))

    def _dechunk(self) -> None:
        buffer, chunks = self.buffer, self.chunks
        while True:
            line = buffer.find(b"\r\n")
            if line < 0:
                break
            size = int(buffer[:line], 16)
            if len(buffer) < line + 2 + size + 2:
                break
            if size == 0:
                buffer, self.chunks = buffer[line + 4:], None
                chunks.put_nowait(None)
                break
            chunks.put_nowait(buffer[line + 2:line + 2 + size])
            buffer = buffer[line + 2 + size + 2:]
        self.buffer = buffer

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError("the upstream closed the connection"))
        if self.chunks is not None:
            self.chunks.put_nowait(None)


_idle: list[_Upstream] = []


@app.post("/v1/<path:path>")
async def forward(request: Request, path: str) -> HTTPResponse | None:
    loop = asyncio.get_running_loop()
    upstream = _idle.pop() if _idle else (await loop.create_connection(_Upstream, HOST, int(PORT)))[1]
    upstream.answer = loop.create_future()
    target = request.path + ("?" + request.query_string if request.query_string else "")
    lines = [f"POST {target} HTTP/1.1", f"host: {HOST}:{PORT}", f"content-length: {len(request.body)}"]
    lines += [f"{name}: {value}" for name, value in request.headers.items() if name not in SKIP]
    upstream.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + request.body)
    try:
        status, head, body = await upstream.answer
    except ConnectionError:
        return HTTPResponse(b"", status=502)
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:-1]:
        name, _, value = line.partition(":")
        if name.lower() not in SKIP:
            headers[name] = value.strip()
    if body is not None:
        _idle.append(upstream)
        return HTTPResponse(body, status=status, headers=headers)
    chunks = upstream.chunks
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
    response = await request.respond(status=status, headers=headers, content_type=content_type)
    while (chunk := await chunks.get()) is not None:
        await response.send(chunk)
    await response.eof()
    if not upstream.transport.is_closing():
        _idle.append(upstream)
    return None
