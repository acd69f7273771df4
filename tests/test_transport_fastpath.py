"""The fast path is a capability any transport can offer, not a test of the transport's class.

Real sockets on 127.0.0.1: the proxy with a third-party transport registered through
``ccproxy_upstream_transport`` in front of the mock upstream, and a recording upstream
for what goes on the wire. A transport with ``send_parts`` (``transport.FastPath``) is
called with the request's parts and in the request's own task; one without it gets an
``httpx.Request`` through ``handle_async_request``, with the call and each body read in
tasks of their own (cancelled at most once). ``send_parts`` frames a request exactly as
httpx frames the same ``httpx.Request``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest

from ccproxy_core import hookimpl
from ccproxy_core.transport import FastTransport, fast_path
from tests.servers import ANTHROPIC_BODY, provider_config
from tests.socket_upstream import SocketUpstream


class _Reads(httpx.AsyncByteStream):
    """A response body that records the task each read runs in."""

    def __init__(self, inner: httpx.AsyncByteStream, tasks: list[asyncio.Task[Any] | None]) -> None:
        self._inner = inner
        self._tasks = tasks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._tasks.append(asyncio.current_task())
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class PlainTransport(httpx.AsyncBaseTransport):
    """A third-party transport with httpx's interface only (here carried by a FastTransport)."""

    def __init__(self) -> None:
        self.inner = FastTransport(trust_env=False)
        self.calls: list[tuple[str, Any]] = []
        self.send_task: asyncio.Task[Any] | None = None
        self.read_tasks: list[asyncio.Task[Any] | None] = []

    def _recorded(self, response: httpx.Response) -> httpx.Response:
        return httpx.Response(
            response.status_code, headers=response.headers.raw, extensions=response.extensions,
            stream=_Reads(response.stream, self.read_tasks),  # type: ignore[arg-type]
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(("handle_async_request", request))
        self.send_task = asyncio.current_task()
        return self._recorded(await self.inner.handle_async_request(request))

    async def aclose(self) -> None:
        await self.inner.aclose()


class PartsTransport(PlainTransport):
    """The same, offering the fast path."""

    async def send_parts(
        self, method: str, url: httpx.URL, headers: Mapping[str, str], body: bytes, timeouts: dict[str, float | None]
    ) -> httpx.Response:
        self.calls.append(("send_parts", dict(headers)))
        self.send_task = asyncio.current_task()
        return self._recorded(await self.inner.send_parts(method, url, headers, body, timeouts))


class Supplies:
    """Registers ``transport`` for the ``anthropic`` provider."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.transport = transport

    @hookimpl
    def ccproxy_upstream_transport(self, provider):
        return self.transport if provider.name == "anthropic" else None


def _stream_through(make_proxy, mock, transport: httpx.AsyncBaseTransport) -> str:
    config = provider_config(mock.url, plugins={"enabled": ["providers", "supplies"]})
    server = make_proxy(config, plugins=[("supplies", Supplies(transport))])
    with httpx.stream("POST", server.url + "/v1/messages", json={**ANTHROPIC_BODY, "stream": True}, timeout=10) as r:
        assert r.status_code == 200
        return r.read().decode()


def test_plugin_transport_with_send_parts_takes_the_fast_path(make_proxy, upstream):
    transport = PartsTransport()
    body = _stream_through(make_proxy, upstream, transport)
    assert "event: message_stop" in body
    ((how, headers),) = transport.calls  # never handle_async_request
    assert how == "send_parts"
    assert "host" not in {k.lower() for k in headers}  # framing is the transport's
    assert headers["x-api-key"] == "sk-ant-upstream-SECRET"
    # Cancellation-safe by contract: no task per call or per read, all in the request's task.
    assert transport.read_tasks and set(transport.read_tasks) == {transport.send_task}


def test_plugin_transport_without_send_parts_gets_an_httpx_request(make_proxy, upstream):
    transport = PlainTransport()
    body = _stream_through(make_proxy, upstream, transport)
    assert "event: message_stop" in body
    ((how, request),) = transport.calls
    assert how == "handle_async_request" and isinstance(request, httpx.Request)
    assert request.headers.raw[0][0] == b"Host" and request.headers["x-api-key"] == "sk-ant-upstream-SECRET"
    # httpcore-like cleanup may await: the call and each read run in tasks of their own.
    reads = transport.read_tasks
    assert reads and len(set(reads)) == len(reads) and transport.send_task not in reads


def test_fasttransport_subclass_overriding_handle_async_request_sees_every_request(make_proxy, upstream):
    seen: list[httpx.Request] = []

    class Inspecting(FastTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return await super().handle_async_request(request)

    class Overrides(Inspecting):
        async def send_parts(self, *args: Any) -> httpx.Response:
            return await super().send_parts(*args)  # type: ignore[misc]

    assert fast_path(FastTransport()) is not None and fast_path(httpx.AsyncHTTPTransport()) is None
    assert fast_path(Inspecting()) is None and fast_path(Overrides()) is not None
    body = _stream_through(make_proxy, upstream, Inspecting(trust_env=False))
    assert "event: message_stop" in body and len(seen) == 1


class HeadRecorder(SocketUpstream):
    """Records each request as received (head and body) and answers an empty 200, keep-alive."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []

    def serve(self, conn: socket.socket, number: int) -> None:
        buf = b""
        while (request := self.read_request(conn, buf)) is not None:
            head, body, buf = request
            self.received.append(head + b"\r\n\r\n" + body)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")


CASES = [
    ("POST", "/v1/messages?beta=true", {"x-api-key": "k", "Content-Type": "application/json"}, b'{"a":1}'),
    ("post", "/v1/messages", {"anthropic-version": "2023-06-01"}, b'{"a":1}'),
    ("POST", "/v1/messages", {"accept": "*/*"}, b""),
    ("PUT", "/x", {}, b""),
    ("GET", "/v1/models", {"X-Mixed-Case": "v"}, b""),
    ("DELETE", "/x", {}, b""),
    ("POST", "/x", {"Host": "example.test", "content-length": "7"}, b'{"a":1}'),
    ("POST", "/x", {"x-note": "caf\u00e9 \u2603"}, b"{}"),  # not ASCII: the client's UTF-8 bytes
]


@pytest.mark.parametrize(("method", "path", "headers", "body"), CASES)
def test_send_parts_frames_like_an_httpx_request(method: str, path: str, headers: dict[str, str], body: bytes):
    async def both(url: str) -> None:
        transport = FastTransport(trust_env=False)
        try:
            response = await transport.send_parts(method, httpx.URL(url), headers, body, {"read": 5})
            await response.aclose()
            try:
                request = httpx.Request(method, url, headers=headers, content=body)
            except UnicodeEncodeError:  # what the engine sends a transport without the fast path
                raw = [(k, v.encode("utf-8", "surrogateescape")) for k, v in headers.items()]
                request = httpx.Request(method, url, headers=raw, content=body)
            response = await transport.handle_async_request(request)
            await response.aclose()
        finally:
            await transport.aclose()

    with HeadRecorder() as upstream:
        asyncio.run(both(upstream.url + path))
        fast, httpx_request = upstream.received
        assert fast == httpx_request
