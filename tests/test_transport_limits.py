"""Upstream response heads are bounded, and statuses a proxy cannot relay are refused (issue 11).

A raw upstream on a real socket sends crafted heads; the app answers 502 in the client's
dialect. ``FastTransport`` stops parsing at ``limits.max_response_head_bytes`` and
``limits.max_response_headers`` and refuses 101, other 1xx but 100/103, and statuses
outside 100-599; the stock httpx transport gets the header-count bound as well.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import httpx
import pytest

from ccproxy_core.transport import FastTransport, ResponseHeadTooLarge
from tests.socket_upstream import SocketUpstream
from tests.servers import ProxyThread

BODY = b'{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}'
ANTHROPIC = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


def head(status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(BODY)
        + extra + b"\r\n" + BODY
    )


def many(n: int) -> bytes:
    return b"".join(b"x-h%d: v\r\n" % i for i in range(n))


class RawUpstream(SocketUpstream):
    """Answers every request with ``payload``; with ``hold`` it sends ``payload`` and then waits
    (connection open) until :attr:`release` is set, recording whether the proxy hung up first."""

    def __init__(self, payload: bytes, hold: bool = False) -> None:
        super().__init__()
        self.payload = payload
        self.hold = hold
        self.release = threading.Event()
        self.hung_up_early: list[bool] = []

    def stop(self) -> None:
        self.release.set()

    def serve(self, conn: socket.socket, number: int) -> None:
        if self.read_request(conn) is None:
            return
        try:
            conn.sendall(self.payload)
        except OSError:  # the proxy stopped reading at its limit and hung up while this was still sending
            if self.hold:
                self.hung_up_early.append(not self.release.is_set())
            return
        if self.hold:
            conn.settimeout(10)
            try:
                self.hung_up_early.append(conn.recv(1) == b"" and not self.release.is_set())
            except OSError:
                self.hung_up_early.append(not self.release.is_set())


def config(url: str, transport: str = "fast") -> dict[str, Any]:
    return {
        "providers": {
            "up": {"format": "anthropic", "base_url": url, "requires_key": False, "models": ["claude-*"],
                   "transport": transport},
            "oa": {"format": "openai", "base_url": url, "requires_key": False, "models": ["gpt-*"],
                   "transport": transport},
        },
        "retries": {"max_attempts": 1},
        "timeouts": {"connect": 2, "headers": 10, "idle": 10, "total": 20},
    }


def post(proxy: ProxyThread, dialect: str = "anthropic") -> httpx.Response:
    with httpx.Client(base_url=proxy.url, timeout=15) as client:
        if dialect == "anthropic":
            return client.post("/v1/messages", json=ANTHROPIC)
        return client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})


def test_60000_headers_fail_at_the_limit_without_waiting_for_the_rest() -> None:
    """The proxy answers 502 while the upstream is still holding the rest of its head."""
    first = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + many(60000)  # no end of head yet
    with RawUpstream(first, hold=True) as upstream, ProxyThread(config(upstream.url)) as proxy:
        r = post(proxy)
        assert r.status_code == 502 and r.json()["type"] == "error"
        with httpx.Client(base_url=proxy.url, timeout=5) as client:
            assert client.get("/health").status_code == 200
        upstream.release.set()
    assert upstream.hung_up_early == [True]


@pytest.mark.parametrize(
    "name, payload",
    [
        ("200 headers", head(extra=many(200))),
        ("1 MiB value", head(extra=b"x-big: " + b"a" * (1 << 20) + b"\r\n")),
        ("101", b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"),
        ("102", b"HTTP/1.1 102 Processing\r\n\r\n" + head()),
        ("600", head(b"600 Odd")),
        ("099", head(b"099 Odd")),
    ],
)
@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_bad_heads_are_502_in_dialect(name: str, payload: bytes, dialect: str) -> None:
    with RawUpstream(payload) as upstream, ProxyThread(config(upstream.url)) as proxy:
        r = post(proxy, dialect)
    assert r.status_code == 502, name
    if dialect == "anthropic":
        assert r.json()["type"] == "error"
    else:
        assert "message" in r.json()["error"]


@pytest.mark.parametrize("interim", [b"100 Continue", b"103 Early Hints\r\nlink: </style.css>; rel=preload"])
def test_interim_100_and_103_are_skipped(interim: bytes) -> None:
    with RawUpstream(b"HTTP/1.1 " + interim + b"\r\n\r\n" + head()) as upstream, ProxyThread(config(upstream.url)) as proxy:
        r = post(proxy)
    assert r.status_code == 200 and r.json()["id"] == "msg_1"


@pytest.mark.parametrize(
    "payload, match",
    [
        (head(extra=many(98)), None),  # 100 header lines: at the limit, fine
        (head(extra=many(99)), "limits.max_response_headers"),
        (head(extra=b"x-big: " + b"a" * 70000 + b"\r\n"), "limits.max_response_head_bytes"),
        (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n", "status 101"),
        (head(b"600 Odd"), "status 600"),
        (head(b"099 Odd"), "status 99"),
        (b"HTTP/1.1 102 Processing\r\n\r\n" + head(), "status 102"),
    ],
)
def test_fast_transport_refuses_heads_past_its_limits(payload: bytes, match: str | None) -> None:
    async def main() -> None:
        t = FastTransport(trust_env=False)
        try:
            request = httpx.Request("POST", upstream.url, content=b"{}")
            if match is None:
                r = await t.handle_async_request(request)
                assert r.status_code == 200 and len(r.headers.raw) == 100
                await r.aread()
            else:
                with pytest.raises(httpx.RemoteProtocolError, match=match) as info:
                    await t.handle_async_request(request)
                assert isinstance(info.value, ResponseHeadTooLarge) == ("limits." in match)
            assert t.pool_stats()["active"] == 0
        finally:
            await t.aclose()

    with RawUpstream(payload) as upstream:
        asyncio.run(asyncio.wait_for(main(), 10))


def test_head_limit_is_exact_and_counts_interim_heads() -> None:
    """A head of exactly the limit passes, one byte more fails; an interim head counts."""
    final = head(extra=b"x-pad: ")  # completed below to an exact size
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    base = len(interim) + len(final) - len(BODY) + 2  # + the pad's CRLF
    limit = 4096
    exact = interim + head(extra=b"x-pad: " + b"p" * (limit - base) + b"\r\n")
    assert len(exact) - len(BODY) == limit

    async def main(payload: bytes, ok: bool) -> None:
        t = FastTransport(trust_env=False, max_head_bytes=limit)
        try:
            request = httpx.Request("POST", upstream.url, content=b"{}")
            if ok:
                r = await t.handle_async_request(request)
                assert await r.aread() == BODY
            else:
                with pytest.raises(ResponseHeadTooLarge):
                    await t.handle_async_request(request)
        finally:
            await t.aclose()

    with RawUpstream(exact) as upstream:
        asyncio.run(asyncio.wait_for(main(exact, True), 10))
    longer = interim + head(extra=b"x-pad: " + b"p" * (limit - base + 1) + b"\r\n")
    with RawUpstream(longer) as upstream:
        asyncio.run(asyncio.wait_for(main(longer, False), 10))


def test_httpx_transport_bounds_the_header_count_too() -> None:
    with RawUpstream(head(extra=many(200))) as upstream, ProxyThread(config(upstream.url, "httpx")) as proxy:
        r = post(proxy)
    assert r.status_code == 502 and r.json()["type"] == "error"
