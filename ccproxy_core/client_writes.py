"""The client side of a write: the gate Sanic waits on, body chunks written in one call, events counted.

The relay (relay.py) decides what to write; this module holds how a write reaches the client's
connection once the head is out, and how the SSE events it carries are counted.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sanic.exceptions import RequestCancelled
from sanic.http import Http
from sanic.response import HTTPResponse

__all__ = ["ChunkFrames", "Open", "events_ended", "write_gate"]


def events_ended(tail: bytes, data: bytes) -> int:
    """The SSE events a write of ``data`` ends at a blank line, in any mix of line ends: each LF LF, LF CR or
    CR CR is a line's end followed by an empty line's. ``tail`` is the previous write's last bytes.

    Prefixing ``tail``'s last byte, too short to hold a whole match, counts an event that straddles two
    writes exactly once; without a ``\\r`` in ``data`` nor a ``\\n`` that may straddle, ``data`` alone
    counts the same, without a copy. (``bytes.find``, not ``in``: on Python 3.11 ``sub in data`` first tries
    ``sub`` as an int and builds a TypeError it drops, twice the cost of a search.)
    """
    if tail[-1:] == b"\n" and data[:1] == b"\n":
        count = (tail[-1:] + data).count(b"\n\n")
    else:
        count = data.count(b"\n\n")
    if data.find(b"\r") >= 0:  # a pair with a CR is in data, or straddles with its first byte in tail
        joined = tail[-1:] + data
        count += joined.count(b"\n\r") + joined.count(b"\r\r")
    return count


class Open:
    """A write gate that is always open (no Sanic protocol to ask, e.g. under ASGI)."""

    @staticmethod
    def is_set() -> bool:
        return True


def write_gate(request: Any) -> asyncio.Event | Open:
    """The event Sanic's ``send`` waits on before each write (cleared while the client's buffer is full)."""
    try:
        gate = request.protocol._can_write
    except AttributeError:
        return Open()
    return gate if isinstance(gate, asyncio.Event) else Open()


class ChunkFrames:
    """Writes a response's body chunks to the client as Sanic would, in one call instead of three coroutines.

    Sanic sends a chunk through ``response.send``, ``Http.http1_response_chunked`` (the frame) and
    ``HttpProtocol.send`` (wait for the write gate, ``RequestCancelled`` on a closing transport, the
    write, the protocol's idle clock); :meth:`write` does the same while the gate is open and the body
    not ended. Made only for Sanic's HTTP/1.1 chunked body when the protocol's ``send`` dispatches no
    signal (Sanic drops the dispatch when ``http.lifecycle.send`` has no handler).
    """

    __slots__ = ("http", "writer", "protocol", "gate")

    def __init__(self, http: Http, writer: Any, protocol: Any, gate: asyncio.Event) -> None:
        self.http = http
        self.writer = writer
        self.protocol = protocol
        self.gate = gate

    @classmethod
    def of(cls, response: HTTPResponse, gate: asyncio.Event | Open) -> ChunkFrames | None:
        """For ``response`` once its head is out, ``gate`` its :func:`write_gate`; None when its body is
        not Sanic's chunked one or there is no Sanic protocol's gate."""
        http = response.stream
        writer = getattr(http, "response_func", None)
        if getattr(writer, "__func__", None) is not Http.http1_response_chunked or not isinstance(gate, asyncio.Event):
            return None
        protocol = http.protocol  # type: ignore[union-attr]
        send = getattr(protocol, "send", None)
        if getattr(send, "__self__", None) is not protocol or "dispatch" in send.__code__.co_names:
            return None
        return cls(http, writer, protocol, gate)  # type: ignore[arg-type]

    def open(self) -> bool:
        """True while :meth:`put` may write: the client keeps up, the body goes on, the connection is open."""
        return self.http.response_func is self.writer and self.gate.is_set() and not self.protocol.transport.is_closing()

    def write(self, data: bytes) -> bool:
        """Write one non-empty chunk; False (nothing written) when the client's buffer is full or the body ended."""
        if self.http.response_func is not self.writer or not self.gate.is_set():
            return False
        if self.protocol.transport.is_closing():
            raise RequestCancelled
        self.put(data)
        return True

    def put(self, data: bytes) -> None:
        """Write one non-empty chunk, unchecked: only after :meth:`open` said True, with no wait since."""
        protocol = self.protocol
        protocol.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        protocol._time = time.monotonic()
