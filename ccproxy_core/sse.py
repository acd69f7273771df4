"""An incremental server-sent events (SSE) parser and encoder.

The parser follows the event-stream interpretation of the WHATWG HTML spec
(section 9.2.6) with one documented difference at end of stream (see
:meth:`SSEParser.flush`):

* lines end in ``\\n``, ``\\r\\n`` or ``\\r``; a ``\\r`` that ends one read and a
  ``\\n`` that starts the next are one line end;
* a blank line dispatches the event being built; an event is dispatched only if it
  had at least one ``data`` line (``data:`` with an empty value counts);
* lines starting with ``:`` are comments and ignored;
* ``field:value`` lines: one space after the colon is stripped; a line without a
  colon is a field with an empty value; unknown fields are ignored;
* several ``data`` lines are joined with ``\\n``;
* ``id`` values containing NUL are ignored, ``retry`` values that are not ASCII
  digits are ignored; a leading UTF-8 BOM is skipped;
* bytes are decoded as UTF-8 (invalid sequences become U+FFFD) only once a line is
  complete, so a multi-byte character split across reads is decoded whole.

It works on whole reads with ``bytes.find``/``str.split``; the common case (reads
that hold whole ``\\n``-terminated events) never copies bytes more than once.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UpstreamProtocolError

__all__ = ["EventSizeLimit", "SSEEvent", "SSEParser", "encode_event"]

_BOM = "\ufeff"
_BOM_BYTES = _BOM.encode()


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event.

    ``event`` is None when the event had no (or an empty) ``event`` field, i.e. the
    default type ``message``. ``id`` is the value of this event's own ``id`` line
    (None if it had none); ``retry`` the last valid ``retry`` value within it.
    """

    event: str | None
    data: str
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Turns bytes split anywhere into whole :class:`SSEEvent` objects.

    Call :meth:`feed` with each read and :meth:`flush` once at end of stream.
    Memory held between calls is one incomplete line plus the fields of one
    incomplete event.
    """

    __slots__ = ("_tail", "_skip_lf", "_started", "_event", "_data", "_id", "_retry", "_idle")

    def __init__(self) -> None:
        self._tail: list[bytes] = []  # pieces of an incomplete line (never holding \r or \n)
        self._skip_lf = False  # the previous read ended in \r: a leading \n is part of that line end
        self._started = False  # a BOM is only skipped at the very start
        self._event: str | None = None
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None
        #: No line or event is left half read: nothing was fed yet, or the last read ended with a blank line.
        self._idle = True

    def passes(self, data: bytes) -> bool:
        """True when ``data`` is whole events (it ends with a blank line and holds no carriage return), the
        parser holds nothing and ``data`` does not open the stream with a byte-order mark: ``data`` may then be
        handled without :meth:`feed`, and the parser is left as it would be after it. An adapter that reads
        only some events uses it to skip the parse of the others."""
        if not (self._idle and data.endswith(b"\n\n") and data.find(b"\r") < 0):
            return False
        if not self._started:
            if data.startswith(_BOM_BYTES):
                return False
            self._started = True
        return True

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Parse one read; return the events it completed (often none, often several)."""
        if not data:
            return []
        self._idle = data.endswith(b"\n\n")
        if self._skip_lf:
            self._skip_lf = False
            if data[0] == 0x0A:  # b"\n"
                data = data[1:]
                if not data:
                    return []
        # bytes.find, not `in`: on Python 3.11 `sub in data` first builds (and drops) a TypeError.
        if data.find(b"\n") < 0 and data.find(b"\r") < 0:  # no line ends: keep it, copy nothing
            self._tail.append(data)
            return []
        if self._tail:
            self._tail.append(data)
            buf = b"".join(self._tail)
        else:
            buf = data
        if buf.find(b"\r") >= 0:
            if buf[-1] == 0x0D:  # b"\r": may be the first half of \r\n
                self._skip_lf = True
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = buf.rfind(b"\n")
        self._tail = [buf[end + 1 :]] if end + 1 < len(buf) else []
        return self._lines(buf[: end + 1].decode("utf-8", "replace").split("\n"))

    def flush(self) -> list[SSEEvent]:
        """End of stream: parse what is left and return the final events.

        Difference from the spec, on purpose: an event whose terminating blank line
        never came (the stream ended right after its last line, or inside its last
        line) is still dispatched if it has data; one without data is discarded.
        Upstreams that close right after ``data: [DONE]`` would otherwise lose it.
        The parser is reset and can be reused.
        """
        tail, self._tail, self._skip_lf = b"".join(self._tail), [], False
        events = self._lines([tail.decode("utf-8", "replace"), ""]) if tail else []
        if self._data:
            events.append(SSEEvent(self._event, "\n".join(self._data), self._id, self._retry))
        self._event, self._data, self._id, self._retry = None, [], None, None
        self._started, self._idle = False, True
        return events

    def _lines(self, lines: list[str]) -> list[SSEEvent]:
        """Process complete lines; ``lines`` ends with the empty string after the last \\n."""
        lines.pop()
        if not self._started:
            self._started = True
            if lines and lines[0].startswith(_BOM):
                lines[0] = lines[0][1:]
        events: list[SSEEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(SSEEvent(self._event, "\n".join(data), self._id, self._retry))
                    data = self._data = []
                self._event, self._id, self._retry = None, None, None
                continue
            if line.startswith("data:"):  # the hot path: most lines are data lines
                data.append(line[6:] if line.startswith("data: ") else line[5:])
                continue
            colon = line.find(":")
            if colon == 0:
                continue  # comment
            if colon < 0:
                field, value = line, ""
            else:
                field = line[:colon]
                value = line[colon + 2 :] if line.startswith(" ", colon + 1) else line[colon + 1 :]
            if field == "event":
                self._event = value or None
            elif field == "data":
                data.append(value)  # "data" without a colon: an empty data line
            elif field == "id":
                if "\0" not in value:
                    self._id = value
            elif field == "retry":
                if value.isascii() and value.isdigit():
                    self._retry = int(value)
        return events


#: Two line ends in a row (a blank line) in raw bytes: every pair of ``\n``, ``\r\n``, ``\r`` holds one.
_BLANK = (b"\n\n", b"\n\r", b"\r\r")
#: A read ending in one of these ends with a blank line (``\n\r`` may be the start of a ``\r\n`` line end).
_ENDS = (b"\n\n", b"\n\r\n", b"\n\r", b"\r\r")


class EventSizeLimit:
    """Bounds the size of one event in a byte stream split anywhere, without buffering it.

    :meth:`feed` sees every read (before any parser) and counts the bytes since the
    last blank line; an event longer than ``max_bytes`` (line ends included, a line
    end or two of slack) raises. Work per read: a search from its end for the last
    blank line, which in the usual read (whole events) is found at once.
    """

    __slots__ = ("max_bytes", "_size", "_last")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._size = 0  # bytes of the event being read so far
        self._last = b""  # the previous read's last byte (a blank line may straddle two reads)

    def feed(self, data: bytes) -> None:
        """Count one read.

        Raises:
            UpstreamProtocolError: an event is longer than ``max_bytes``.
        """
        size = self._size + len(data)
        if data.endswith(_ENDS):  # the usual read: whole events
            if size > self.max_bytes and self._largest(data) > self.max_bytes:
                self._too_large()
            self._size, self._last = 0, b"\n"
            return
        if not data:
            return
        if data.find(b"\r") >= 0:
            i = max(data.rfind(b"\n\r"), data.rfind(b"\r\r"), data.rfind(b"\n\n"))
        else:
            i = data.rfind(b"\n\n")
        start = i + 2 if i >= 0 else 1 if self._last + data[:1] in _BLANK else 0
        if start:  # events ended in this read; the one being read starts at `start`
            if self._size + start > self.max_bytes and self._largest(data[:start]) > self.max_bytes:
                self._too_large()
            size = len(data) - start
        self._size, self._last = size, data[-1:]
        if size > self.max_bytes:
            self._too_large()

    def _largest(self, ended: bytes) -> int:
        """The longest event ended in ``ended`` (the first one continues the bytes counted before)."""
        ended = self._last + ended
        if ended.find(b"\r") >= 0:
            ended = ended.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        sizes = [len(event) for event in ended.split(b"\n\n")]
        sizes[0] += self._size
        return max(sizes)

    def _too_large(self) -> None:
        raise UpstreamProtocolError(f"the upstream sent a server-sent event larger than {self.max_bytes} bytes")


def encode_event(
    data: str,
    event: str | None = None,
    *,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Serialize one event: ``event:`` line if given, one ``data:`` line per line of
    ``data`` (any of ``\\r\\n``, ``\\r``, ``\\n`` splits), then a blank line.

    ``SSEParser`` turns the result back into an equal ``SSEEvent``.
    """
    if "\n" in data or "\r" in data:
        body = "".join(
            f"data: {line}\n" for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        )
    else:
        body = f"data: {data}\n"
    head = ""
    if event:
        head = f"event: {event}\n"
    if id is not None:
        head += f"id: {id}\n"
    if retry is not None:
        head += f"retry: {retry}\n"
    return (head + body + "\n").encode()
