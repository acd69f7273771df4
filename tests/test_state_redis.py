"""The redis state backend's pipe against a real server: many takes in flight, the URL forms it
connects with, a Redis restarted or stalled mid-run, NOSCRIPT, a cancelled take, replies in pieces."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import ssl
import subprocess
import time

import pytest
import redis.asyncio

from ccproxy_core import Check, Window
from ccproxy_core.config import StateSettings
from ccproxy_core.state import StateUnavailable, open_state
from ccproxy_core.state.redis import MAX_BUFFERED, Pipe, pack, parse
from tests.gateway_helpers import RedisServer
from tests.servers import reserved_port


def window(name: str, period: float = 60) -> Window:
    return Window(f"t:{name}:{time.monotonic_ns()}", period)


@pytest.fixture
def own_redis():
    """``own_redis(*options)``: a server of the test's own (to stop, stall or start with ``options``)."""
    with contextlib.ExitStack() as stack:
        def start(*options: str) -> RedisServer:
            server = RedisServer(stack.enter_context(reserved_port()), *options).start()
            stack.callback(server.stop)
            return server

        yield start


def run(url: str, test, **settings) -> None:
    """``await test(state)`` with a redis backend on ``url`` (and ``settings``), closed after."""
    async def main():
        state = open_state(StateSettings(backend="redis", url=url, **settings))
        try:
            await test(state)
        finally:
            await state.close()

    asyncio.run(main())


def test_many_takes_in_flight_get_exactly_the_limit_in_order(redis_server):
    """500 takes at once on one pipe, a limit of 300: the first 300 in order pass, the rest are refused."""
    async def test(state):
        requests = window("flight")
        verdicts = await asyncio.gather(*(state.take([Check(requests, 300, 1)]) for _ in range(500)))
        assert [v.refused for v in verdicts] == [None] * 300 + [0] * 200
        assert all(55 < v.retry_after <= 60 for v in verdicts[300:])
        assert (await state.read([requests]))[0][0] == 300

    run(redis_server.url, test)


def test_a_cancelled_take_leaves_the_next_replies_in_order(redis_server):
    async def test(state):
        a, b = window("a"), window("b")
        await state.take([Check(a, None, 1)])  # connected
        cancelled = asyncio.ensure_future(state.take([Check(a, 1, 1)]))
        await asyncio.sleep(0)  # queued on the pipe
        cancelled.cancel()
        assert (await state.take([Check(b, 1, 1)])).refused is None  # b's own reply, not a's
        assert (await state.take([Check(b, 1, 1)])).refused == 0

    run(redis_server.url, test)


def test_noscript_after_a_script_flush_runs_the_script_whole(redis_server):
    async def test(state):
        requests = window("noscript")
        assert (await state.take([Check(requests, 2, 1)])).refused is None
        async with redis.asyncio.Redis.from_url(redis_server.url) as other:
            await other.script_flush()
        assert (await state.take([Check(requests, 2, 1)])).refused is None  # counted once
        assert (await state.take([Check(requests, 2, 1)])).refused == 0

    run(redis_server.url, test)


@pytest.mark.parametrize("options, url", [
    (("--requirepass", "s3cret"), "redis://:s3cret@127.0.0.1:{port}/3"),
    (("--user", "alice", "on", ">pw", "~*", "+@all", "--user", "default", "off"), "redis://alice:pw@127.0.0.1:{port}/2"),
    (("--unixsocket", "{tmp}/redis.sock"), "unix://{tmp}/redis.sock?db=1"),
])
def test_urls_with_password_acl_user_db_and_unix_socket(tmp_path, own_redis, options, url):
    server = own_redis(*(o.format(tmp=tmp_path) for o in options))
    url = url.format(port=server.port, tmp=tmp_path)

    async def test(state):
        requests = window("url")
        assert (await state.take([Check(requests, 5, 1)])).refused is None
        async with redis.asyncio.Redis.from_url(url) as other:
            assert await other.get("ccproxy:" + requests.name) == b"1"  # in the URL's db

    run(url, test)


def test_a_tls_url(redis_server, tmp_path):
    """``rediss://`` through a TLS front (the test server has no TLS of its own) to the plain server."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is not installed (needed to make a test certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=ccproxy-test",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    async def front(client_reader, client_writer):
        reader, writer = await asyncio.open_connection("127.0.0.1", redis_server.port)

        async def copy(source, sink):
            while data := await source.read(65536):
                sink.write(data)
            sink.close()

        await asyncio.gather(copy(client_reader, writer), copy(reader, client_writer), return_exceptions=True)

    async def main():
        server = await asyncio.start_server(front, "127.0.0.1", 0, ssl=tls)
        state = open_state(StateSettings(
            backend="redis", url=f"rediss://127.0.0.1:{server.sockets[0].getsockname()[1]}/4?ssl_ca_certs={cert}"))
        requests = window("tls")
        try:
            verdicts = await asyncio.gather(*(state.take([Check(requests, 20, 1)]) for _ in range(30)))
            assert [v.refused for v in verdicts] == [None] * 20 + [0] * 10
            async with redis.asyncio.Redis.from_url(redis_server.url.replace("/0", "/4")) as other:
                assert await other.get("ccproxy:" + requests.name) == b"20"
        finally:
            await state.close()
            server.close()

    asyncio.run(main())


def test_a_wrong_password_is_unavailable_without_the_secret(own_redis):
    server = own_redis("--requirepass", "right")

    async def test(state):
        with pytest.raises(StateUnavailable) as caught:
            await state.take([Check(window("auth"), None, 1)])
        assert "s3cret" not in str(caught.value)

    run(f"redis://:wrong-s3cret@127.0.0.1:{server.port}/0", test)


def test_redis_restarted_mid_run_recovers_and_sends_what_was_pending(own_redis):
    server = own_redis()

    async def test(state):
        requests, tokens = window("restart"), window("tokens")
        assert (await state.take([Check(requests, None, 1)])).refused is None  # connected
        takes = [asyncio.ensure_future(state.take([Check(requests, None, 1)])) for _ in range(50)]
        await asyncio.sleep(0)
        server.stop()  # with takes in flight (or not yet answered)
        results = await asyncio.gather(*takes, return_exceptions=True)
        assert all(isinstance(r, StateUnavailable) or r.refused is None for r in results), results
        await state.add([(tokens, 7)])
        with pytest.raises(StateUnavailable):
            await state.take([Check(requests, None, 1)])
        assert state._pending  # the tokens kept
        server.start()  # empty: no script cached, so NOSCRIPT then the whole script
        verdicts = await asyncio.gather(*(state.take([Check(requests, 10, 1)]) for _ in range(12)))
        assert [v.refused for v in verdicts] == [None] * 10 + [0, 0]
        assert not state._pending
        assert (await state.read([tokens]))[0][0] == 7

    run(server.url, test, timeout=0.5)


def test_a_stalled_redis_fails_within_the_timeout_then_recovers(own_redis):
    server = own_redis()

    async def test(state):
        requests = window("stall")
        assert (await state.take([Check(requests, None, 1)])).refused is None
        server.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            results = await asyncio.gather(*(state.take([Check(requests, None, 1)]) for _ in range(20)),
                                           return_exceptions=True)
            assert all(isinstance(r, StateUnavailable) for r in results), results
            assert "Timeout" in str(results[0])
            assert 0.25 < time.monotonic() - started < 5
        finally:
            server.proc.send_signal(signal.SIGCONT)
        assert (await state.take([Check(requests, None, 1)])).refused is None  # a new connection

    run(server.url, test, timeout=0.3)


def test_pack_and_parse():
    assert pack("EVALSHA", b"ab", 2, 0.5) == b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n2\r\n$3\r\n0.5\r\n"
    replies = b"*2\r\n:1\r\n:-5\r\n:0\r\n-NOSCRIPT No matching script\r\n$3\r\nabc\r\n$-1\r\n+OK\r\n_\r\n"
    found, pos = [], 0
    while (reply := parse(replies, pos)) is not None:
        found.append(reply[0])
        pos = reply[1]
    assert pos == len(replies)
    assert found[:3] == [[1, -5], 0, found[2]] and str(found[2]).startswith("NOSCRIPT")
    assert found[3:] == [b"abc", None, b"OK", None]
    for cut in range(len(replies) - 1):  # a reply cut anywhere is incomplete, never wrong
        part, pos, got = replies[:cut], 0, []
        while (reply := parse(part, pos)) is not None:
            got.append(reply[0])
            pos = reply[1]
        assert [str(g) if isinstance(g, Exception) else g for g in got] == \
            [str(f) if isinstance(f, Exception) else f for f in found[:len(got)]]


def test_a_reply_over_the_bound_fails_the_pipe_without_holding_it():
    """A server that answers with more than MAX_BUFFERED bytes of one unfinished reply: the command fails
    and the pipe lets go of what it read (a real socket; the server is ours, not Redis)."""
    from redis.exceptions import InvalidResponse

    async def main():
        async def flood(reader, writer):
            await reader.read(100)
            writer.write(b"$%d\r\n" % (4 * MAX_BUFFERED) + b"x" * (MAX_BUFFERED + 65536))
            await writer.drain()
            await reader.read(100)  # until the pipe closes

        server = await asyncio.start_server(flood, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pipe = Pipe(await asyncio.open_connection("127.0.0.1", port), timeout=10)
        with pytest.raises(InvalidResponse, match="over"):
            await pipe.send(pack("PING"))
        assert pipe.buffer == b"" and pipe.transport.is_closing()
        with pytest.raises(InvalidResponse):  # a failed pipe is not used again
            await pipe.send(pack("PING"))
        server.close()
        await server.wait_closed()

    asyncio.run(main())
