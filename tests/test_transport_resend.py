"""A request that reached the upstream is never sent twice silently (issue 10).

Over real sockets, through the whole app: an upstream that reads a request on a reused
keep-alive connection and then closes costs one attempt (retried only as the ``retries``
policy says, visibly); a pooled connection the upstream closed while idle is found dead
before anything is written and the request goes out once, on a new connection.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
from typing import Any

import httpx
import pytest

from ccproxy_core import hookimpl
from ccproxy_core.transport import FastTransport
from tests.socket_upstream import SocketUpstream
from tests.servers import ProxyThread

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

LOOPS = ["asyncio"] + (["uvloop"] if uvloop is not None else [])

ANTHROPIC = {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
OK = b'{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}'
OK_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (len(OK), OK)


class KeepAliveUpstream(SocketUpstream):
    """A keep-alive HTTP/1.1 upstream in a thread, answering from a script of actions.

    Each request pops an action: ``"ok"`` (answer 200, keep the connection), ``"close"``
    (read the whole request, then close without a byte), ``"ok-then-close"`` (answer, then
    close the idle connection when :attr:`close_idle` is set). Every request is recorded as
    ``(connection number, body)``.
    """

    def __init__(self, script: list[str]) -> None:
        super().__init__()
        self.script = list(script)
        self.requests: list[tuple[int, bytes]] = []
        self.close_idle = threading.Event()

    def stop(self) -> None:
        self.close_idle.set()

    def serve(self, conn: socket.socket, number: int) -> None:
        buf = b""
        while (request := self.read_request(conn, buf)) is not None:
            _, body, buf = request
            self.requests.append((number, body))
            action = self.script.pop(0) if self.script else "ok"
            if action == "close":
                return
            conn.sendall(OK_RESPONSE)
            if action == "ok-then-close":
                self.close_idle.wait(10)
                return


class Attempts:
    """Records each request's ``ctx.attempts`` at its end."""

    def __init__(self) -> None:
        self.seen: list[list[Any]] = []
        self._ended = threading.Semaphore(0)

    @hookimpl
    def ccproxy_stream_end(self, ctx: Any) -> None:
        self.seen.append(list(ctx.attempts))
        self._ended.release()

    def of_request(self, n: int) -> list[Any]:
        """The attempts of the ``n``-th request (1-based), once its end hook ran (it runs after the reply)."""
        while len(self.seen) < n:
            assert self._ended.acquire(timeout=10)
        return self.seen[n - 1]


def app_config(url: str, transport: str, **extra: Any) -> dict[str, Any]:
    return {
        "providers": {
            "up": {"format": "anthropic", "base_url": url, "requires_key": False, "models": ["claude-*"],
                   "transport": transport},
        },
        "timeouts": {"connect": 2, "headers": 5, "idle": 5, "total": 20},
        **extra,
    }


@pytest.mark.parametrize("transport", ["fast", "httpx"])
def test_request_read_then_closed_on_reused_connection_is_sent_once(transport: str) -> None:
    attempts = Attempts()
    with KeepAliveUpstream(["ok", "close"]) as upstream, ProxyThread(
        app_config(upstream.url, transport, retries={"max_attempts": 1}), plugins=[("attempts", attempts)]
    ) as proxy:
        with httpx.Client(base_url=proxy.url, timeout=10) as client:
            assert client.post("/v1/messages", json=ANTHROPIC).status_code == 200
            r = client.post("/v1/messages", json={**ANTHROPIC, "max_tokens": 6})  # on the kept-alive connection
        assert r.status_code == 502
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "api_error"  # Anthropic's dialect
        bodies = [body for _, body in upstream.requests]
        assert [b'"max_tokens":6' in b for b in bodies] == [False, True]  # the second request: exactly once
        assert upstream.requests[1][0] == 1  # on the reused connection
        tried = attempts.of_request(2)
        assert len(tried) == 1 and tried[0].status is None and tried[0].error


def test_second_try_is_a_visible_attempt_under_the_default_retries() -> None:
    attempts = Attempts()
    with KeepAliveUpstream(["ok", "close", "ok"]) as upstream, ProxyThread(
        app_config(upstream.url, "fast", retries={"backoff_base": 0.01, "backoff_max": 0.01}),
        plugins=[("attempts", attempts)],
    ) as proxy:
        with httpx.Client(base_url=proxy.url, timeout=10) as client:
            assert client.post("/v1/messages", json=ANTHROPIC).status_code == 200
            r = client.post("/v1/messages", json={**ANTHROPIC, "max_tokens": 6})
        assert r.status_code == 200
        assert [number for number, _ in upstream.requests] == [1, 1, 2]  # sent, lost, retried on a new connection
        tried = attempts.of_request(2)
        assert len(tried) == 2 and tried[0].status is None and tried[0].error and tried[1].status == 200


def run(loop: str, coro: Any) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop if loop == "uvloop" else None) as runner:
        runner.run(asyncio.wait_for(coro, 10))


async def one_pooled_connection(url: str) -> tuple[FastTransport, Any]:
    """A transport whose pool holds one idle connection (after a request ``one``), and that connection."""
    t = FastTransport(trust_env=False)
    r = await t.handle_async_request(httpx.Request("POST", url, content=b"one"))
    await r.aread()
    (idle,) = [conn for dq in t._idle.values() for conn in dq]
    return t, idle


@pytest.mark.parametrize("loop", LOOPS)
def test_idle_connection_closed_by_upstream_is_detected_before_writing(loop: str) -> None:
    """The FIN is in the kernel but the loop has not delivered it: the readability poll sees it."""
    with KeepAliveUpstream(["ok-then-close", "ok"]) as upstream:

        async def main() -> None:
            t, idle = await one_pooled_connection(upstream.url)
            fd = idle.transport.get_extra_info("socket").fileno()
            upstream.close_idle.set()
            # Block (without yielding to the loop) until the upstream's FIN is readable.
            assert select.select([fd], [], [], 5)[0]
            assert t.pool_stats()["idle"] == 1  # the loop has not noticed yet
            r = await t.handle_async_request(httpx.Request("POST", upstream.url, content=b"two"))
            assert await r.aread() == OK
            await t.aclose()

        run(loop, main())
    assert upstream.requests == [(1, b"one"), (2, b"two")]


@pytest.mark.parametrize("loop", LOOPS)
def test_write_refused_at_once_on_a_pooled_connection_is_resent_on_a_new_one(loop: str) -> None:
    """A write that fails synchronously sent nothing: the one silent resend that is allowed."""
    with KeepAliveUpstream(["ok-then-close", "ok"]) as upstream:

        async def main() -> None:
            t, idle = await one_pooled_connection(upstream.url)
            # Our side can no longer send; the peer does not know, so nothing becomes readable.
            dup = socket.socket(fileno=os.dup(idle.transport.get_extra_info("socket").fileno()))
            dup.shutdown(socket.SHUT_WR)
            dup.close()  # the duplicate descriptor only; the connection stays open
            r = await t.handle_async_request(httpx.Request("POST", upstream.url, content=b"two"))
            assert await r.aread() == OK
            await t.aclose()

        run(loop, main())
    assert upstream.requests == [(1, b"one"), (2, b"two")]

