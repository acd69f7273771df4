"""Bounds on what an upstream's body controls (issue 11, upstream side), over real sockets.

A hostile upstream (a :class:`~tests.scripted_upstream.ScriptedUpstream` that plays raw
bytes) sends gzip bombs, huge bodies, huge or trickled events and odd statuses; a client
that stops reading is cut off after ``limits.send_timeout``. Memory is the test process's
peak RSS (the proxy runs in a thread of it), reset before each attack.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import logging
import re
import socket
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from ccproxy_core import hookimpl
from ccproxy_core.decoding import PIECE, RATIO_ALLOWANCE, BodyDecoder, decoder_for
from ccproxy_core.errors import SendTimeout, UpstreamProtocolError
from ccproxy_core.headers import response_headers
from ccproxy_core.sse import EventSizeLimit
from ccproxy_plugins.usage import UsageChunkRemover
from tests.mock_upstream import MockUpstreamThread
from tests.scripted_upstream import ScriptedUpstream
from tests.servers import ANTHROPIC_BODY, OPENAI_BODY, ProxyThread, provider_config

MiB = 1024 * 1024
Play = Callable[["Hostile", asyncio.StreamWriter], Awaitable[None]]


class Hostile(ScriptedUpstream):
    """Answers each request with the next ``play(upstream, writer)`` (the last one repeats).

    ``sent`` counts the body bytes written, ``cut`` the answers the proxy broke off.
    """

    def __init__(self, *plays: Play) -> None:
        super().__init__()
        self.plays = list(plays)
        self.sent = 0
        self.cut = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length:\s*(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            self.arrivals.append(time.monotonic())
            play = self.plays.pop(0) if len(self.plays) > 1 else self.plays[0]
            await play(self, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.cut += 1
        except asyncio.CancelledError:  # the test is over
            pass
        finally:
            writer.close()
            self.open -= 1

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:  # end the answers still being played, then the server
            assert self._server is not None
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def wait_for_cut(self, timeout: float = 10) -> bool:
        """Wait until the proxy broke off an answer (closed the connection while it was written)."""
        deadline = time.monotonic() + timeout
        while not self.cut:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    async def write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        self.sent += len(data)
        await writer.drain()


def raw(data: bytes) -> Play:
    async def play(up: Hostile, writer: asyncio.StreamWriter) -> None:
        await up.write(writer, data)

    return play


def answer(status: int, body: bytes, *, content_type: str = "application/json", encoding: str | None = None,
           length: int | None = None) -> Play:
    head = f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {len(body) if length is None else length}\r\n"
    if encoding:
        head += f"content-encoding: {encoding}\r\n"
    return raw(head.encode() + b"connection: close\r\n\r\n" + body)


def chunked(status: int, pieces: Callable[[], Any], *, content_type: str = "text/event-stream",
            encoding: str | None = None, pause: float = 0.0) -> Play:
    """A chunked body from ``pieces()`` (an iterable of bytes), with ``pause`` seconds between pieces."""
    head = f"HTTP/1.1 {status} OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n"
    if encoding:
        head += f"content-encoding: {encoding}\r\n"

    async def play(up: Hostile, writer: asyncio.StreamWriter) -> None:
        writer.write(head.encode() + b"connection: close\r\n\r\n")
        for piece in pieces():
            await up.write(writer, b"%x\r\n%s\r\n" % (len(piece), piece))
            if pause:
                await asyncio.sleep(pause)
        await up.write(writer, b"0\r\n\r\n")

    return play


def bomb(payload: bytes, repeat: int) -> bytes:
    """gzip of ``payload * repeat``, built without holding the whole thing."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = payload * max(1, MiB // len(payload))
    parts = [z.compress(block) for _ in range(repeat * len(payload) // len(block))]
    return b"".join(parts) + z.flush()


GZIP_BOMB = bomb(b"\0", 128 * MiB)  # ~127 KiB inflating to 128 MiB
PING = b'event: ping\ndata: {"type": "ping", "pad": "' + b"." * 1000 + b'"}\n\n'
SSE_BOMB = bomb(PING, 128 * MiB // len(PING))  # the same, as well-formed Anthropic events

MESSAGE_START = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
                 b'"role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,'
                 b'"usage":{"input_tokens":5,"output_tokens":1}}}\n\n')


def _hwm_kib() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))


def _rss_kib() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1))


def peak_growth_mib(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and how far the process's resident memory rose above where it started, in MiB."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:  # resets VmHWM to the current RSS
        fh.write("5")
    base = _rss_kib()
    result = fn()
    return result, (_hwm_kib() - base) / 1024


def fetch(url: str, path: str, body: dict[str, Any], timeout: float = 30) -> tuple[int, dict[str, str], bytearray, bool]:
    """(status, headers, raw body, broken end) of one request read to its end.

    The body grows in one ``bytearray``: ``bytes +=`` copied it on every read, so this client alone
    rose by twice a 12 MiB body (and more, by how fragmented the heap was), inside the process whose
    memory growth the tests bound for the proxy.
    """
    with httpx.Client(timeout=timeout) as client:
        with client.stream("POST", url + path, json=body) as response:
            data, broken = bytearray(), False
            try:
                for chunk in response.iter_raw():
                    data += chunk
            except httpx.RemoteProtocolError:
                broken = True
            return response.status_code, dict(response.headers), data, broken


def error_message(dialect: str, body: bytes) -> str:
    payload = json.loads(body)
    if dialect == "anthropic":
        assert payload["type"] == "error"
    return payload["error"]["message"]


def config(url: str, transport: str = "fast", **limits: Any) -> dict[str, Any]:
    cfg = provider_config(url, retries={"max_attempts": 1}, limits=limits)
    for provider in cfg["providers"].values():
        provider["transport"] = transport
    return cfg


ROUTES = {"anthropic": ("/v1/messages", ANTHROPIC_BODY), "openai": ("/v1/chat/completions", OPENAI_BODY)}


def claude_request(dialect: str, stream: bool) -> tuple[str, dict[str, Any]]:
    """A request from a ``dialect`` client for the Anthropic upstream (translated for OpenAI clients)."""
    path, body = ROUTES[dialect]
    return path, {**body, "model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream}


# -- decoded body limits ----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["fast", "httpx"])
def test_gzip_bomb_json_is_refused_with_little_memory(transport):
    """Translated (the adapter holds the body): 502 in the client's dialect; before the bound +500 MiB."""
    with Hostile(answer(200, GZIP_BOMB, encoding="gzip")) as up, ProxyThread(config(up.url, transport)) as proxy:
        path, body = claude_request("openai", stream=False)
        (status, _, content, _), growth = peak_growth_mib(lambda: fetch(proxy.url, path, body))
    assert status == 502
    assert "inflates more than 100 times" in error_message("openai", content)
    assert growth < 48, f"+{growth:.0f} MiB"


def test_gzip_bomb_json_same_dialect_is_cut():
    """Only observers read it: the decoded bytes were being relayed, so the end is visibly broken."""
    with Hostile(answer(200, GZIP_BOMB, encoding="gzip")) as up, ProxyThread(config(up.url)) as proxy:
        path, body = claude_request("anthropic", stream=False)
        (status, _, content, broken), growth = peak_growth_mib(lambda: fetch(proxy.url, path, body))
    assert (status, broken) == (200, True)
    assert len(content) < 16 * MiB
    assert growth < 48, f"+{growth:.0f} MiB"


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_gzip_bomb_stream_ends_with_error_event(dialect):
    with Hostile(answer(200, SSE_BOMB, content_type="text/event-stream", encoding="gzip")) as up, \
            ProxyThread(config(up.url)) as proxy:
        path, body = claude_request(dialect, stream=True)
        (status, _, content, broken), growth = peak_growth_mib(lambda: fetch(proxy.url, path, body))
    if dialect == "anthropic":  # the pings were being relayed: an error event, a broken end
        assert (status, broken) == (200, True)
        assert b"event: error\ndata: " in content and b"inflates more than 100 times" in content
    else:  # translation drops pings: nothing was written yet, so a plain 502
        assert status == 502 and "inflates more than 100 times" in error_message(dialect, content)
    assert growth < 48, f"+{growth:.0f} MiB"


def test_kept_retryable_answer_is_decoded_within_bounds():
    """A 503 kept while a fallback is tried used to be inflated whole by httpx (+128 MiB)."""
    plays = [answer(503, GZIP_BOMB, encoding="gzip"), answer(200, json.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1}}).encode())]
    with Hostile(*plays) as up:
        cfg = config(up.url)
        cfg["retries"] = {"max_attempts": 2, "backoff_base": 0.01, "backoff_max": 0.01}
        with ProxyThread(cfg) as proxy:
            path, body = claude_request("anthropic", stream=False)
            (status, _, content, _), growth = peak_growth_mib(lambda: fetch(proxy.url, path, body))
    assert status == 200 and json.loads(content)["content"][0]["text"] == "ok"
    assert growth < 24, f"+{growth:.0f} MiB"


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_huge_json_body_announced_is_refused_at_once(dialect):
    """300 MB announced by content-length: 502 before the body is read (before: held whole, 1.7 s stall)."""

    async def play(up: Hostile, writer: asyncio.StreamWriter) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 300000000\r\n\r\n"
        await up.write(writer, head)
        block = b" " * MiB
        for _ in range(300):
            await up.write(writer, block)

    with Hostile(play) as up, ProxyThread(config(up.url)) as proxy:
        path, body = claude_request(dialect, stream=False)
        started = time.monotonic()
        status, _, content, _ = fetch(proxy.url, path, body)
        took = time.monotonic() - started
        assert up.wait_for_cut()
    assert status == 502 and "larger than 67108864 bytes" in error_message(dialect, content)
    assert up.sent < 32 * MiB, up.sent  # the proxy stopped reading long before 300 MB
    assert took < 10


def test_chunked_body_past_the_limit_is_cut():
    """No content-length: counted as it comes (a small configured limit)."""
    pieces = lambda: (b'{"pad": "' if i == 0 else b"x" * 65536 for i in range(200))  # noqa: E731
    with Hostile(chunked(200, pieces, content_type="application/json")) as up, \
            ProxyThread(config(up.url, max_response_body_bytes=MiB)) as proxy:
        path, body = claude_request("openai", stream=False)  # translated: nothing written before the end
        status, _, content, _ = fetch(proxy.url, path, body)
        assert up.wait_for_cut()
    assert status == 502 and "larger than 1048576 bytes" in error_message("openai", content)
    assert up.sent < 8 * MiB


def test_gzip_json_is_still_translated():
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
               "content": [{"type": "text", "text": "hello " * 2000}], "stop_reason": "end_turn",
               "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 4}}
    with Hostile(answer(200, gzip.compress(json.dumps(message).encode()), encoding="gzip")) as up, \
            ProxyThread(config(up.url)) as proxy:
        path, body = claude_request("openai", stream=False)
        status, headers, content, broken = fetch(proxy.url, path, body)
    assert (status, broken) == (200, False) and "content-encoding" not in headers
    completion = json.loads(content)
    assert completion["choices"][0]["message"]["content"] == "hello " * 2000
    assert completion["usage"]["prompt_tokens"] == 3


def test_decoder_bounds_each_piece_and_the_ratio():
    decoder = decoder_for("gzip", 10_000)
    assert decoder is not None
    data = gzip.compress(b"a" * (3 * MiB))  # ~1,000 times smaller
    pieces = list(decoder.feed(data))
    assert b"".join(pieces) + decoder.flush() == b"a" * (3 * MiB) and max(map(len, pieces)) <= PIECE
    # deflate: zlib-wrapped and raw
    for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS):
        z = zlib.compressobj(6, zlib.DEFLATED, wbits)
        d = BodyDecoder("deflate", 100)
        assert b"".join(d.feed(z.compress(b"xyz" * 1000) + z.flush())) + d.flush() == b"xyz" * 1000
    # past ratio × compressed + allowance: refused
    with pytest.raises(UpstreamProtocolError, match="inflates"):
        for _ in decoder_for("gzip", 100).feed(GZIP_BOMB[:10_000]):  # type: ignore[union-attr]
            pass
    assert decoder_for("br", 100) is None and decoder_for("gzip, br", 100) is None
    assert RATIO_ALLOWANCE == MiB  # documented in docs/reliability.md


def test_undecodable_coding_passes_through_when_only_observers_read():
    """A coding the proxy cannot bound (here br) is relayed as sent, with its content-encoding."""
    opaque = b"\x8b\x01\x80not really brotli\x03"
    with Hostile(answer(200, opaque, encoding="br")) as up, ProxyThread(config(up.url)) as proxy:
        path, body = claude_request("anthropic", stream=False)
        status, headers, content, _ = fetch(proxy.url, path, body)
        path, body = claude_request("openai", stream=False)
        translated = fetch(proxy.url, path, body)
    assert (status, headers["content-encoding"], content) == (200, "br", opaque)
    assert translated[0] == 502 and "content-encoding" in error_message("openai", translated[2])


def _accept_encoding(head: bytes) -> str | None:
    found = re.search(rb"(?im)^accept-encoding:\s*(.*?)\r$", head)
    return found.group(1).decode() if found else None


@pytest.mark.parametrize(
    ("offered", "sent"),
    [("gzip, deflate, br, zstd", "gzip, deflate"), ("br;q=1.0, gzip;q=0.5", "gzip;q=0.5"), ("br", "identity")],
)
def test_upstreams_are_offered_only_codings_the_proxy_can_decode(offered, sent):
    """Claude Code offers br and zstd; an upstream answering in one would be a 502 once a plugin
    reads the body (the usage plugin does by default), so only what decoding.py bounds is offered."""
    with ScriptedUpstream() as up, ProxyThread(config(up.url)) as proxy:
        for dialect in ("anthropic", "openai"):  # same dialect and translated
            path, body = claude_request(dialect, stream=False)
            with httpx.Client(timeout=30) as client:
                response = client.post(proxy.url + path, json=body, headers={"accept-encoding": offered})
            assert response.status_code == 200
    assert [_accept_encoding(head) for head in up.heads] == [sent, sent]


def test_codings_pass_as_offered_when_nothing_reads_bodies():
    with ScriptedUpstream() as up, ProxyThread(config(up.url), entry_points=False) as proxy:
        path, body = claude_request("anthropic", stream=False)
        with httpx.Client(timeout=30) as client:
            assert client.post(proxy.url + path, json=body, headers={"accept-encoding": "br, zstd"}).status_code == 200
    assert _accept_encoding(up.heads[0]) == "br, zstd"


# -- SSE event limits --------------------------------------------------------------------------------


def _events(*events: bytes) -> Callable[[], Any]:
    return lambda: iter(events)


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
@pytest.mark.parametrize("shape", ["one-read", "trickled", "unterminated"])
def test_event_larger_than_the_limit_ends_the_stream(dialect, shape):
    delta = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
             b'"delta":{"type":"text_delta","text":"' + b"x" * 10000 + b'"}}\n\n')
    if shape == "one-read":
        pieces = _events(MESSAGE_START, delta)
    elif shape == "trickled":
        pieces = _events(MESSAGE_START, *(delta[i:i + 500] for i in range(0, len(delta), 500)))
    else:
        pieces = _events(MESSAGE_START, *([b"data: " + b"y" * 1000] * 20))
    with Hostile(chunked(200, pieces, pause=0.002)) as up, \
            ProxyThread(config(up.url, max_sse_event_bytes=4096)) as proxy:
        path, body = claude_request(dialect, stream=True)
        status, _, content, broken = fetch(proxy.url, path, body)
    assert b"x" * 10000 not in content
    if status == 502:  # message_start arrived in the same read as the big event: nothing was written yet
        assert "larger than 4096 bytes" in error_message(dialect, content)
        return
    assert (status, broken) == (200, True)
    marker = b"event: error\ndata: " if dialect == "anthropic" else b'data: {"error": '
    assert marker in content and b"larger than 4096 bytes" in content


def test_events_under_the_limit_pass():
    delta = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
             b'"delta":{"type":"text_delta","text":"' + b"x" * 3000 + b'"}}\n\n')
    stop = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    with Hostile(chunked(200, _events(MESSAGE_START, delta * 3, delta[:100], delta[100:], stop))) as up, \
            ProxyThread(config(up.url, max_sse_event_bytes=4096)) as proxy:
        status, _, content, broken = fetch(proxy.url, *claude_request("anthropic", stream=True))
    assert (status, broken) == (200, False) and content == MESSAGE_START + delta * 4 + stop


def test_event_size_limit_counts_across_reads_and_line_ends():
    for end in (b"\n", b"\r\n", b"\r"):
        event = b"data: " + b"z" * 90 + end + end  # just under 100 bytes with any line end
        stream = event * 50
        for size in (1, 3, 7, 64, len(stream)):
            limit = EventSizeLimit(100)
            for i in range(0, len(stream), size):
                limit.feed(stream[i:i + size])
            with pytest.raises(UpstreamProtocolError):
                over = EventSizeLimit(100)
                big = stream + b"data: " + b"z" * 200 + end + end
                for i in range(0, len(big), size):
                    over.feed(big[i:i + size])


class Counted(bytes):
    """Bytes whose concatenations count the bytes they copy (the work a quadratic buffer does)."""

    copied = 0

    def __add__(self, other: bytes) -> Counted:  # type: ignore[override]
        Counted.copied += len(self) + len(other)
        return Counted(bytes(self) + bytes(other))


def test_usage_filter_buffer_is_linear():
    """A long line trickled in small reads: each byte is copied a bounded number of times.

    Before: the held bytes were re-copied on every read (40 MiB + a 20 KB/s trickle held a core).
    """
    remover = UsageChunkRemover()
    Counted.copied = 0
    total = 0
    out = remover.feed(Counted(b'data: {"choices":[{"delta":{"content":"'))
    for _ in range(4000):
        piece = Counted(b"w" * 256)
        total += len(piece)
        out += remover.feed(piece)
    out += remover.feed(Counted(b'"}}],"usage":null}\n\n'))
    assert out.endswith(b'"}}]}\n\n') and out.count(b"w") == total
    assert Counted.copied <= 2 * total, Counted.copied


class Scanned(bytes):
    """Bytes whose ``find`` counts the bytes it searches."""

    scanned = 0

    def find(self, sub: bytes, start: int = 0, *args: Any) -> int:  # type: ignore[override]
        i = bytes.find(self, sub, start, *args)
        Scanned.scanned += (i + len(sub) if i >= 0 else len(self)) - start
        return i


def test_usage_filter_frame_split_is_linear():
    """Many small frames that look like the usage frame but are not: the read is searched once
    per separator kind (before: every separator kind from every frame to the end, quadratic)."""
    frame = b'data: {"choices":[],"x":1}\n\n'
    data = Scanned(frame * 20000)
    Scanned.scanned = 0
    assert UsageChunkRemover().feed(data) == data
    assert Scanned.scanned <= 3 * len(data), Scanned.scanned


# -- odd statuses --------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["fast", "httpx"])
@pytest.mark.parametrize("head", [
    b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
    b"HTTP/1.1 600 Odd\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
], ids=["101", "600"])
@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_odd_status_is_a_502_in_dialect(transport, head, dialect, caplog):
    async def play(up: Hostile, writer: asyncio.StreamWriter) -> None:
        await up.write(writer, head)
        if b" 101 " in head:
            await up.write(writer, b"\x81\x05hello")  # the upgraded protocol speaks (a websocket frame)
        await asyncio.sleep(30)  # and the connection stays open (ended when the test is over)

    with Hostile(play) as up, ProxyThread(config(up.url, transport)) as proxy:
        caplog.set_level(logging.WARNING)
        path, body = ROUTES[dialect]
        status, _, content, _ = fetch(proxy.url, path, {**body, "stream": False})
    assert status == 502
    assert error_message(dialect, content)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


# -- slow readers ------------------------------------------------------------------------------------


class Ends:
    @hookimpl
    def ccproxy_stream_end(self, ctx):
        self.seen.append((ctx.outcome, ctx.error))

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, Any]] = []


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_client_that_stops_reading_is_cut_after_send_timeout(dialect, caplog):
    ends = Ends()
    caplog.set_level(logging.WARNING, logger="ccproxy")
    with MockUpstreamThread() as mock, ProxyThread(
        provider_config(mock.url, retries={"max_attempts": 1}, limits={"send_timeout": 1},
                        timeouts={"connect": 2, "headers": 10, "idle": 3, "total": 30}),
        plugins=[("ends", ends)],
    ) as proxy:
        path, body = ROUTES[dialect]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", proxy.port))
        payload = json.dumps(body).encode()
        # ~48 MB of events, more than autotuned socket buffers hold (see test_faults.test_client_that_never_reads).
        # Timed from the request: the proxy's timer starts when a write first waits, which (on a
        # loaded machine) can be before this thread returns from its one read below.
        sent = time.monotonic()
        sock.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(payload)}\r\nx-mock-events: 400000\r\n\r\n".encode() + payload)
        assert sock.recv(100).startswith(b"HTTP/1.1 200")  # from here on the client reads nothing
        assert mock.wait_for(lambda m: m.active_streams == 0, timeout=8), "the upstream was not closed"
        took = time.monotonic() - sent
        sock.close()
        deadline = time.monotonic() + 5
        while not ends.seen and time.monotonic() < deadline:
            time.sleep(0.01)
    assert 1 <= took < 4, took
    assert len(ends.seen) == 1
    outcome, error = ends.seen[0]
    assert outcome == "client_disconnected" and isinstance(error, SendTimeout)
    assert "the client read nothing for 1s" in caplog.text


def test_reader_that_keeps_up_is_never_cut():
    """A slow but steady reader (4 KB buffer, small reads) gets the whole stream with a short send_timeout."""
    with MockUpstreamThread() as mock, ProxyThread(
        provider_config(mock.url, retries={"max_attempts": 1}, limits={"send_timeout": 1})
    ) as proxy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", proxy.port))
        payload = json.dumps(ANTHROPIC_BODY).encode()
        sock.sendall(f"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(payload)}\r\nx-mock-events: 300\r\nconnection: close\r\n\r\n".encode()
                     + payload)
        data = b""
        while chunk := sock.recv(512):
            data += chunk
            time.sleep(0.001)
        sock.close()
    assert data.count(b"content_block_delta") >= 300 and b"message_stop" in data


# -- header handling -------------------------------------------------------------------------------


class CountedStr(str):
    """A header value that counts how often it is formatted or concatenated."""

    used = 0

    def __format__(self, spec: str) -> str:
        CountedStr.used += 1
        return str.__format__(self, spec)

    def __add__(self, other: str) -> str:
        CountedStr.used += 1
        return str.__add__(self, other)


def test_repeated_headers_are_joined_once():
    """40,000 repeats of one name: each value is copied once, by one join (before: 40,000 re-copies, 2 s)."""
    CountedStr.used = 0
    pairs = [("X-Repeat", CountedStr(f"v{i}")) for i in range(40000)] + [("content-type", "application/json")]
    out = response_headers(pairs)
    assert CountedStr.used == 0
    assert out["x-repeat"] == ", ".join(f"v{i}" for i in range(40000))
    assert list(out) == ["x-repeat", "content-type"]


def test_header_filter_behaviour_is_unchanged():
    pairs = [("A", "1"), ("Connection", "x-drop, keep-alive"), ("X-Drop", "no"), ("a", "2"), ("Set-Cookie", "s"),
             ("Proxy-Thing", "p"), ("connection", "x-other"), ("X-Other", "o"), ("B", "3")]
    assert response_headers(pairs) == {"a": "1, 2", "b": "3"}


def test_client_that_stops_reading_a_json_answer_is_cut():
    """A 16 MiB JSON answer the client stops reading: whichever write waits (one of the body's,
    or the final chunk's), it is bounded by send_timeout, so the response and its upstream end."""
    ends = Ends()
    text = b"a" * (16 * MiB)
    body = (b'{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text",'
            b'"text":"' + text + b'"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}')
    pieces = lambda: (body[i:i + 65536] for i in range(0, len(body), 65536))  # noqa: E731
    with Hostile(chunked(200, pieces, content_type="application/json")) as up, ProxyThread(
        config(up.url, send_timeout=1), plugins=[("ends", ends)]
    ) as proxy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", proxy.port))
        payload = json.dumps({**ANTHROPIC_BODY, "stream": False}).encode()
        sock.sendall(f"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(payload)}\r\n\r\n".encode() + payload)
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 6
        while not ends.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        sock.close()
        assert up.wait_for_cut() or up.sent < len(body), "the upstream was not closed"
    assert len(ends.seen) == 1, "the response never ended"
    outcome, error = ends.seen[0]
    assert outcome == "client_disconnected" and isinstance(error, SendTimeout)
