"""The least any Sanic proxy does: forward each request to the upstream and hand back its body.

    FORWARDER_UPSTREAM=127.0.0.1:9000 sanic bench.forwarder:app --single-process --port 8100

A measuring stick beside the floor (``bench/floor.py``), not a proxy: each POST goes to
``$FORWARDER_UPSTREAM`` (host:port) over a pooled keep-alive connection (a bare ``asyncio.Protocol``),
its header lines copied, and the answer comes back with its status, headers and body as Sanic
sends a response (as the floor sends the same answer). JSON answers framed by ``content-length``
only (the mock's); no streams, no timeouts, no error handling beyond a broken connection. Its CPU
per request minus the floor's, side by side (``bench/ab.py --variant fwd=!forwarder``), is what the
upstream hop itself costs a Sanic app on this machine: docs/performance.md, "A bare forwarder".
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
    """One keep-alive connection; ``answer`` resolves to (status, head, body) of the request in flight."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""
        self.answer: asyncio.Future[tuple[int, bytes, bytes]] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end] + b"\r\n"
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:") + 17
        size = int(lower[at:lower.find(b"\r\n", at)])
        if len(self.buffer) >= end + 4 + size:
            body, self.buffer = self.buffer[end + 4:end + 4 + size], self.buffer[end + 4 + size:]
            self.answer.set_result((int(head[9:12]), head, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError("the upstream closed the connection"))


_idle: list[_Upstream] = []


@app.post("/v1/<path:path>")
async def forward(request: Request, path: str) -> HTTPResponse:
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
    _idle.append(upstream)
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:-1]:
        name, _, value = line.partition(":")
        if name.lower() not in SKIP:
            headers[name] = value.strip()
    return HTTPResponse(body, status=status, headers=headers)
