"""Bytes on the wire: the response head, SSE and chunk framing, and :class:`ReplyWriter`, which
writes one :class:`~tests.mock_upstream.dialect.Reply` with the scenario's transport faults."""

from __future__ import annotations

import email.utils
import gzip
import http
import itertools
import json
import time
import zlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NoReturn

from tests.mock_upstream.content import STAMP
from tests.mock_upstream.dialect import Event, Reply
from tests.mock_upstream.request import Aborted
from tests.mock_upstream.scenario import Scenario

if TYPE_CHECKING:
    from tests.mock_upstream.server import Connection

_SPLIT_SIZES = (1, 4, 7, 2, 5, 3, 6)  # byte counts cycled through by x-mock-split
_SPLIT_PAUSE = 0.001  # seconds between split pieces, so that they land in separate reads
_GARBAGE = b"\x00\x01\xffSSH-2.0-not-http \x80\x81\x82 garbage garbage\r\n\r\n"
_STAMP = STAMP.encode()
_SET_COOKIE = ("set-cookie", "__cf_bm=mock; path=/; HttpOnly; Secure; SameSite=None")
_now_ns = time.monotonic_ns


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return {529: "Site Overloaded"}.get(status, "Unknown")


def head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    """The status line and header lines, ending in the blank line."""
    lines = [f"HTTP/1.1 {status} {_reason(status)}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_date_cache: tuple[int, str] = (0, "")


def http_date() -> str:
    """The ``date`` header, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


class Canned:
    """A whole response, sent again as it is but for its ``date`` header."""

    __slots__ = ("date", "data", "keep_alive")

    def __init__(self, data: bytes, keep_alive: bool):
        self.date, self.data, self.keep_alive = http_date(), data, keep_alive

    def now(self) -> bytes:
        """The response with today's date."""
        date = http_date()
        if date != self.date:
            self.data = self.data.replace(f"date: {self.date}".encode(), f"date: {date}".encode(), 1)
            self.date = date
        return self.data


def sse(event: Event, eol: str) -> bytes:
    """One SSE event: optional ``event:`` line, one ``data:`` line, blank line."""
    name, data = event
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    if name:
        return f"event: {name}{eol}data: {text}{eol}{eol}".encode()
    return f"data: {text}{eol}{eol}".encode()


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP chunk; empty data gives no bytes (an empty chunk would end the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


def _pieces(data: bytes) -> list[bytes]:
    """``data`` cut into 1-7 byte pieces."""
    out, pos, sizes = [], 0, itertools.cycle(_SPLIT_SIZES)
    while pos < len(data):
        size = next(sizes)
        out.append(data[pos : pos + size])
        pos += size
    return out


class ReplyWriter:
    """Writes one :class:`Reply` to a connection, applying the scenario's transport faults."""

    def __init__(self, conn: Connection, sc: Scenario, *, keep_alive: bool, head_only: bool, gzip: bool):
        self.conn, self.sc = conn, sc
        self.keep_alive, self.head_only, self.gzip = keep_alive, head_only, gzip

    def headers(self, reply: Reply) -> list[tuple[str, str]]:
        """The response's header lines but for its framing (``content-type``, ``content-length`` or
        ``transfer-encoding``): the provider's, ``date``, ``server``, ``set-cookie``, the connection's."""
        headers = [("date", http_date()), ("server", "mock-upstream"), *reply.headers, _SET_COOKIE,
                   ("connection", "keep-alive" if self.keep_alive else "close")]
        if self.keep_alive:
            headers.append(("keep-alive", "timeout=5"))
        if self.gzip:
            headers.append(("content-encoding", "gzip"))
        return headers

    def json_bytes(self, reply: Reply) -> bytes:
        """The whole response to a JSON reply without faults, to write at once."""
        head_bytes = head(reply.status, [*self.headers(reply), ("content-type", "application/json"),
                                         ("content-length", str(len(reply.body)))])
        return head_bytes if self.head_only else head_bytes + reply.body

    async def send(self, reply: Reply) -> None:
        """Raises :class:`PeerGone` or :class:`Aborted` when the response did not complete."""
        if self.sc.reset:
            self.conn.reset()
            raise Aborted
        await self.conn.sleep(self.sc.headers_delay)
        if self.sc.garbage:
            await self.conn.write(_GARBAGE)
            self._abort()
        if reply.events is None:
            await self._send_json(reply)
        else:
            await self._send_stream(reply)

    def _abort(self) -> NoReturn:
        """End the response early on purpose: FIN, then :class:`Aborted`."""
        self.conn.close()
        raise Aborted

    async def _emit(self, data: bytes) -> None:
        """Write ``data`` whole, or in 1-7 byte pieces with pauses under ``x-mock-split``."""
        if not self.sc.split:
            await self.conn.write(data)
            return
        for index, piece in enumerate(_pieces(data)):
            if index:
                await self.conn.sleep(_SPLIT_PAUSE)
            await self.conn.write(piece)

    async def _send_json(self, reply: Reply) -> None:
        body = gzip.compress(reply.body, mtime=0) if self.gzip else reply.body
        head_bytes = head(reply.status, [*self.headers(reply), ("content-type", "application/json"),
                                         ("content-length", str(len(body)))])
        await self.conn.sleep(self.sc.delay)
        if self.head_only:
            await self.conn.write(head_bytes)
        elif self.sc.truncate or self.sc.drop_after is not None:
            await self.conn.write(head_bytes + body[: len(body) // 2])
            self._abort()
        else:
            await self.conn.write(head_bytes)
            await self._emit(body)

    def _encoder(self) -> tuple[Callable[[Event], bytes], Callable[[], bytes]]:
        """(encode one event, the body's last bytes): SSE framing, the send-time stamp taken as the event
        is encoded (so encode right before writing), gzip; each event one chunk."""
        eol = "\r\n" if self.sc.crlf else "\n"
        stamp = self.sc.stamp
        compressor = zlib.compressobj(wbits=31) if self.gzip else None

        def encode(event: Event) -> bytes:
            frame = sse(event, eol)
            if stamp:
                frame = frame.replace(_STAMP, b"@%020d" % _now_ns())
            if compressor is not None:
                frame = compressor.compress(frame) + compressor.flush(zlib.Z_SYNC_FLUSH)
            return frame

        def tail() -> bytes:
            return (chunk(compressor.flush()) if compressor else b"") + b"0\r\n\r\n"

        return encode, tail

    async def _send_stream(self, reply: Reply) -> None:
        sc, conn = self.sc, self.conn
        assert reply.events is not None
        head_bytes = head(reply.status, [*self.headers(reply), ("content-type", "text/event-stream; charset=utf-8"),
                                         ("transfer-encoding", "chunked")])
        if self.head_only:
            await conn.write(head_bytes)
            return
        encode, tail = self._encoder()
        if sc.coalesce:
            await conn.sleep(sc.delay)
            await conn.write(head_bytes + b"".join(chunk(encode(e)) for e in reply.events()) + tail())
            return
        # The events are generated as they are sent: the head goes out before a long body is built (as a
        # real upstream's does), so 100,000 events on a loaded machine cannot hold the head back.
        half = sum(1 for _ in reply.events()) // 2 if sc.truncate else -1
        await conn.write(head_bytes)
        t0 = conn.time()
        delay, rate, split = sc.delay, sc.rate, sc.split
        for index, event in enumerate(reply.events()):
            if index == sc.stall_after:
                await conn.sleep(sc.stall)
            if delay:
                await conn.sleep(delay)
            if rate is not None:
                await conn.sleep_until(t0 + index / rate)
            if index == sc.drop_after:
                self._abort()
            data = encode(event)
            if index == half:
                await self._emit(b"%x\r\n" % len(data) + data[: len(data) // 2])
                self._abort()
            if split:
                await self._emit(chunk(data))
            elif conn.send(chunk(data)):  # the hot path: no coroutine per event unless the client lags
                await conn.drain()
        await conn.write(tail())
