"""The proxy's request-head parse (``request_head.ClientHttp``) against Sanic's own, head by head.

Each head goes through both parsers on a stand-in connection; what they make of it must be the
same: the request (method, target, headers in order), the connection's state (keep-alive, HEAD,
websocket upgrade, the body's framing, ``Expect``), what is left in the buffer, or the error
(class and message, which the error boundary turns into the client's dialect).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from sanic import Request
from sanic.config import Config
from sanic.http import Http

from ccproxy_core.errors import InvalidRequest
from ccproxy_core.request_head import ClientHttp, check_headers, header_fields

CLAUDE = (
    b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: application/json\r\n"
    b"Content-Length: 5\r\nAccept: application/json\r\nUser-Agent: claude-cli/2.1.197 (external, cli)\r\n"
    b"X-Stainless-Lang: js\r\nx-api-key: sk-ant-client\r\nanthropic-version: 2023-06-01\r\n"
    b"anthropic-beta: claude-code-20250219,interleaved-thinking-2025-05-14\r\nx-app: cli\r\n\r\nhello"
)


def _post(*lines: str, body: bytes = b"", line: str = "POST /v1/messages HTTP/1.1") -> bytes:
    return ("\r\n".join([line, *lines]) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


HEADS = [
    CLAUDE,
    CLAUDE + b"POST /next HTTP/1.1\r\n\r\n",  # a pipelined request stays in the buffer
    _post("HOST: a:1", "X-Spaces:   v  ", "X-Tab:\tv", "X-Empty:", "x-colon: a:b:c", "content-length: 2", body=b"{}"),
    _post("accept: a", "Accept: b", "x-a: 1", "ACCEPT: c"),  # repeats keep their order
    _post("connection: close"),
    _post("Connection: Keep-Alive", line="GET /health HTTP/1.0"),
    _post("connection: close", "connection: keep-alive"),  # the last one decides
    _post("connection: keep-alive", "connection: upgrade"),
    _post("host: x", line="HEAD /health HTTP/1.1"),
    _post("upgrade: WebSocket", "connection: upgrade", "upgrade: h2c"),
    _post("upgrade: h2c", "upgrade: websocket"),  # the first one counts
    _post(line="GET /health HTTP/1.1"),  # no fields at all
    _post("transfer-encoding: chunked", body=b"2\r\n{}\r\n0\r\n\r\n"),
    _post("transfer-encoding: gzip, chunked"),  # not chunked, no length
    _post("expect: 100-continue", "content-length: 2", body=b"{}"),
    _post("expect: 100-Continue", "content-length: 2", body=b"{}"),
    _post("expect: something", "content-length: 2", body=b"{}"),  # 417
    _post("expect: something"),  # no body: Expect is not looked at
    _post("content-length: 2", "content-length: 2"),  # smuggling defences
    _post("content-length: 2", "Transfer-Encoding: chunked"),
    _post("transfer-encoding: chunked", "transfer-encoding: chunked"),
    _post("content-length: -1"),
    _post("content-length: +5"),
    _post("content-length: 1_0"),
    _post("content-length: x"),
    _post("content-length:  7 ", body=b"1234567"),
    _post("x-no-colon"),
    _post("host: x", ""),
    _post(": empty-name"),
    _post("x bad: v"),  # Sanic passes it; the proxy's own check refuses it
    _post("x-inject: a\nHost: evil"),  # a bare LF stays in the value
    _post("x-cr: a\rb"),
    _post("x-nul: a\0b"),
    _post("x-title: Caf\u00e9 \u2603"),
    _post("x-raw: \udcff\udcfe"),  # bytes that are not UTF-8
    _post("x-nbsp:\u00a0\u2003v"),  # Unicode whitespace is stripped too, as str.lstrip does
    _post("x-a: 1", line="POST /v1/messages HTTP/2.0"),
    _post("x-a: 1", line="POST /v1/messages  HTTP/1.1"),
    _post("x-a: 1", line="POST /caf\u00e9 HTTP/1.1"),
    _post("x-a: 1", line="POST HTTP/1.1"),
    _post("x-a: 1", line="post /v1/messages HTTP/1.1"),
    b"POST /v1/messages HTTP/1.1\nhost: x\r\n\r\n",  # a bare LF in the request line
    b"POST /v1/messages HTTP/1.1\r\nhost: x\r\r\n\r\n",
    b"POST /x HTTP/1.1\r\n" + b"x-big: " + b"a" * 300 + b"\r\n\r\n",  # over the head limit below
    b"POST /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",  # a target longer than Sanic's URL parser takes
]


class _Protocol:
    """What ``Http`` reads of its protocol."""

    def __init__(self, data: bytes, keep_alive: bool) -> None:
        self.recv_buffer = bytearray(data)
        config = Config()
        config.KEEP_ALIVE = keep_alive
        self.app = SimpleNamespace(config=config, dispatch=self._dispatch)
        self.request_max_size = 1 << 20
        self.request_class = Request
        self.transport = None
        self.state = {"requests_count": 0}

    async def _dispatch(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def receive_more(self) -> None:
        raise AssertionError("the whole head is in the buffer")

    async def send(self, data: bytes) -> None:
        raise AssertionError("nothing is sent while the head is parsed")


def _parse(cls: type, data: bytes, keep_alive: bool = True) -> tuple[Any, ...]:
    protocol = _Protocol(data, keep_alive)
    http = cls(protocol)
    http.init_for_request()
    try:
        asyncio.run(http.http1_request_header())
    except Exception as exc:  # the error is part of the outcome
        return type(exc), str(exc), http.keep_alive, http.head_only
    request = http.request
    return (
        request.method, request.path, request.query_string, list(request.headers.items()), request.head,
        request.version, http.keep_alive, http.head_only, http.upgrade_websocket, http.request_body,
        http.request_bytes, http.request_bytes_left, http.expecting_continue, bytes(protocol.recv_buffer),
        protocol.state["requests_count"], request.stream is http,
    )


@pytest.fixture(autouse=True)
def _head_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Http, "HEADER_MAX_SIZE", 256)


@pytest.mark.parametrize("data", HEADS, ids=range(len(HEADS)))
@pytest.mark.parametrize("keep_alive", [True, False], ids=["KEEP_ALIVE", "no KEEP_ALIVE"])
def test_the_parse_is_sanics(data: bytes, keep_alive: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if len(data) > 65536:  # the long target must reach the URL parser
        monkeypatch.setattr(Http, "HEADER_MAX_SIZE", 1 << 20)
    assert _parse(ClientHttp, data, keep_alive) == _parse(Http, data, keep_alive)


def _request(data: bytes) -> Request:
    protocol = _Protocol(data, True)
    http = ClientHttp(protocol)
    http.init_for_request()
    asyncio.run(http.http1_request_header())
    return http.request


def _refusal(request: Any) -> str | None:
    try:
        check_headers(request)
    except InvalidRequest as exc:
        return exc.message
    return None


@pytest.mark.parametrize("data", HEADS, ids=range(len(HEADS)))
def test_check_headers_says_the_same_from_the_parse_and_from_the_headers(data: bytes) -> None:
    try:
        request = _request(data)
    except Exception:  # a head refused by the parse (the test above)
        return
    assert list(header_fields(request)) == list(request.headers.items())
    plain = SimpleNamespace(stream=None, headers=request.headers)  # e.g. a request Sanic's ASGI path made
    assert _refusal(request) == _refusal(plain)
    assert list(header_fields(plain)) == list(request.headers.items())


@pytest.mark.parametrize(("line", "message"), [
    ("x bad: v", "request header name 'x bad' is not a valid HTTP token"),
    ("x-\u00e9: v", "request header name 'x-\u00e9' is not a valid HTTP token"),
    ("x-inject: a\nHost: evil", "request header 'x-inject' contains a line break or NUL"),
    ("x-cr: a\rb", "request header 'x-cr' contains a line break or NUL"),
    ("x-nul: a\0b", "request header 'x-nul' contains a line break or NUL"),
    (": v", "request header name '' is not a valid HTTP token"),
])
def test_check_headers_refuses_what_could_forge_headers_upstream(line: str, message: str) -> None:
    assert _refusal(_request(_post("host: x", line))) == message
    assert _refusal(_request(_post("host: x", "x-fine: Caf\u00e9 \u2603", "X-Upper: V"))) is None
