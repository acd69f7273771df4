"""Parsing one response head: the httptools callbacks, the head's limits, the statuses a proxy can relay.

* **Bounded heads.** At most ``max_head_bytes`` (interim heads included) are fed to the
  parser before the head completes, and ``on_header`` stops the parser at the
  ``max_headers``-th + 1 line: :class:`ResponseHeadTooLarge` (a ``RemoteProtocolError``
  naming the limit). ``100`` and ``103`` are skipped as interim; ``101``, other ``1xx``
  and statuses outside 100-599 are a ``RemoteProtocolError``: a proxy cannot relay them.
* **Body pieces.** ``on_body`` appends to a plain list that the connection joins into one
  chunk per network read (:mod:`.connection`).

:class:`_ResponseHead` is a mixin of :class:`~.connection._Connection`, whose state it reads
and writes; it owns nothing else.
"""

from __future__ import annotations

from typing import Any, Callable, Final

import httptools
import httpx

_HTTP11: Final = b"HTTP/1.1"
_HTTP10: Final = b"HTTP/1.0"


class ResponseHeadTooLarge(httpx.RemoteProtocolError):
    """The upstream's response head passed a limit (bytes or header lines); the message names it."""


class _ResponseHead:
    """The parser side of a connection: feeding it within the head's limits, and its callbacks."""

    __slots__ = ()

    # State of the connection (see _Connection.__init__); declared here for readers.
    _parser: Any
    _head_room: int
    _max_headers: int
    _no_body: bool
    _stale_parser: bool
    _close_delimited: bool
    _informational: bool
    _wake: bool
    _parts: list[bytes]
    _pool: Any
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes, bytes]]
    http_version: bytes
    head_done: bool
    complete: bool
    keep_alive: bool
    error: httpx.TransportError | None
    _fail: Callable[[httpx.TransportError, BaseException | None], None]  # fail the response, abort the socket

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._fail(httpx.RemoteProtocolError("Unexpected protocol upgrade in the response."), exc)
        except httptools.HttpParserError as exc:
            ours = exc.__context__
            if self.complete:
                self.keep_alive = False  # trailing bytes after a complete message
            elif isinstance(ours, httpx.RemoteProtocolError):
                self._fail(ours, None)  # a callback refused the head (a limit, a status)
            else:
                self._fail(httpx.RemoteProtocolError(f"Malformed HTTP response: {exc}"), exc)

    def _feed_past_limit(self, data: bytes) -> None:
        """Feed only what the head limit allows: a head still incomplete after it is too large."""
        room = self._head_room
        self._head_room = 0
        self._feed(data[:room])
        if self.error is None:
            if self.head_done:
                self._feed(data[room:])
            else:
                limit = self._pool._max_head_bytes
                self._fail(ResponseHeadTooLarge(
                    f"the upstream's response head is larger than limits.max_response_head_bytes ({limit} bytes)"
                ), None)

    # -- httptools callbacks -------------------------------------------------------

    def on_message_begin(self) -> None:  # noqa: D102
        if self.complete:
            # A second message in the same read: nothing was asked for it. Raising stops
            # the parser; data_received then marks the connection as not reusable.
            raise httpx.RemoteProtocolError("Unsolicited response data.")

    def on_status(self, status: bytes) -> None:  # noqa: D102
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:  # noqa: D102
        headers = self.headers
        if len(headers) >= self._max_headers:  # raising stops the parser at once
            raise ResponseHeadTooLarge(
                f"the upstream's response has more than limits.max_response_headers ({self._max_headers}) header lines"
            )
        headers.append((name, name.lower(), value))  # httpx.Headers' own layout: the response takes the list

    def on_headers_complete(self) -> None:  # noqa: D102
        parser = self._parser
        status = parser.get_status_code()
        if not 200 <= status <= 599:
            if status == 100 or status == 103:  # 100 Continue, 103 Early Hints: interim, skipped
                self._informational = True
                self.headers = []
                self.reason = b""
                return
            raise httpx.RemoteProtocolError(f"the upstream answered with status {status}, which cannot be relayed")
        self.status = status
        self.keep_alive = keep_alive = parser.should_keep_alive()
        self.http_version = _HTTP11 if parser.get_http_version() == "1.1" else _HTTP10
        self.head_done = True
        self._wake = True
        if self._no_body:
            # HEAD: no body follows whatever the headers say; the parser would wait for
            # one, so it is replaced before the next request on this connection.
            self.complete = True
            self._stale_parser = True
        elif not keep_alive and status != 204 and status != 304:
            for _, lower, _ in self.headers:
                if lower == b"content-length" or lower == b"transfer-encoding":
                    break
            else:
                self._close_delimited = True

    def on_body(self, body: bytes) -> None:  # noqa: D102
        if self.complete:  # bytes after a HEAD response: not a clean connection
            self.keep_alive = False
            return
        self._parts.append(body)

    def on_message_complete(self) -> None:  # noqa: D102
        if self._informational:
            self._informational = False
            return
        if not self.complete:
            self.complete = True
            self._wake = True
