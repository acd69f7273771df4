"""The client's request head: Sanic's parse with less work per header line, and the proxy's own check.

:class:`ClientHttp` is Sanic's HTTP/1.1 connection (``sanic.http.Http``) with one method replaced,
``http1_request_header``; :class:`~.intake.DeadlineProtocol` serves with it. Every check Sanic makes
stays, in the same order and with the same error: the head's size (431), the request line and its
protocol, a field line without a colon, more than one ``Content-Length``/``Transfer-Encoding``
(request smuggling), a valid length, ``Expect`` (417), an ASCII target. The request is the one Sanic
makes: ``request.headers`` holds the same fields (names lower-case, values left-stripped, in order);
``tests/test_request_head.py`` holds the two parsers to that, head by head.

What is cheaper: the fields are split by list comprehensions instead of a loop that tests each line,
the framing and ``connection`` headers are found in the list of names, the fields' multidict is
built once instead of twice, and its look-ups skip ``Header.__getattr__``. The connection keeps the
fields, their names and lines for the proxy route: :func:`header_fields` (the headers sent upstream
are filtered from them) and :func:`check_headers` read them instead of the multidict's views.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from multidict import CIMultiDict
from sanic.exceptions import BadRequest, ExpectationFailed, PayloadTooLarge
from sanic.http import Http

from .errors import InvalidRequest

#: The multidict's own method, called past ``sanic.compat.Header.__getattr__`` (which makes each
#: attribute look-up on a request's headers a Python call).
_getone = CIMultiDict.getone


class ClientHttp(Http):
    """Sanic's HTTP/1.1 connection with a leaner request-head parse (see the module's docstring).

    While a request is handled (``request.stream`` is this connection) :attr:`fields` are its
    header fields as in ``request.headers``, :attr:`names` their names and :attr:`lines` the head's
    field lines as received (CRLF-split).
    """

    __slots__ = ("fields", "names", "lines")
    # Sanic's TouchUp rebuilds the method at start-up without the signal dispatches no handler listens to.
    __touchup__ = ("http1_request_header",)

    async def http1_request_header(self) -> None:
        """Receive and parse the request head into ``self.request`` (``Http.http1_request_header``'s contract)."""
        buf = self.recv_buffer
        pos = 0
        while True:
            pos = buf.find(b"\r\n\r\n", pos)
            if pos != -1:
                break
            pos = max(0, len(buf) - 3)
            if pos >= self.HEADER_MAX_SIZE:
                break
            await self._receive_more()
        if pos >= self.HEADER_MAX_SIZE:
            raise PayloadTooLarge("Request header exceeds the size limit")

        head = bytes(buf[:pos])
        try:
            reqline, _, block = head.decode(errors="surrogateescape").partition("\r\n")
            method, self.url, protocol = reqline.split(" ")
            await self.dispatch("http.lifecycle.read_head", inline=True, context={"head": head})
            if protocol == "HTTP/1.1":
                self.keep_alive = True
            elif protocol == "HTTP/1.0":
                self.keep_alive = False
            else:
                raise ValueError(protocol)
            self.head_only = method.upper() == "HEAD"
            lines = block.split("\r\n") if block else []
            # Sanic's fields: a line without a colon raises; names lower-case, values left-stripped.
            fields = [(name.lower(), value.lstrip()) for name, value in [line.split(":", 1) for line in lines]]
            names = [name for name, _ in fields]
            framing = names.count("content-length") + names.count("transfer-encoding")
            if framing > 1:
                raise ValueError("Duplicate Content-Length or Transfer-Encoding")
            if "connection" in names:  # the last one decides
                self.keep_alive = fields[len(names) - 1 - names[::-1].index("connection")][1].lower() == "keep-alive"
        except Exception:
            raise BadRequest("Bad Request")

        if not self.protocol.app.config["KEEP_ALIVE"]:
            self.keep_alive = False
        self.upgrade_websocket = "upgrade" in names and fields[names.index("upgrade")][1].lower() == "websocket"
        try:
            url_bytes = self.url.encode("ASCII")
        except UnicodeEncodeError:
            raise BadRequest("URL may only contain US-ASCII characters.")

        request = self.protocol.request_class(  # its multidict is made from the fields
            url_bytes=url_bytes,
            headers=fields,
            head=head,
            version=protocol[5:],
            method=method,
            transport=self.protocol.transport,
            app=self.protocol.app,
        )
        self.protocol.request_class._current.set(request)
        await self.dispatch("http.lifecycle.request", inline=True, context={"request": request})

        self.request_bytes_left = self.request_bytes = 0
        if framing:
            headers = request.headers
            expect = _getone(headers, "expect", None)
            if expect is not None:
                if expect.lower() == "100-continue":
                    self.expecting_continue = True
                else:
                    raise ExpectationFailed(f"Unknown Expect: {expect}")
            if _getone(headers, "transfer-encoding", None) == "chunked":
                self.request_body = "chunked"
                pos -= 2  # one CRLF stays in the buffer
            else:
                self.request_body = True
                try:
                    self.request_bytes_left = self.request_bytes = self._safe_int(headers["content-length"])
                except Exception:
                    raise BadRequest("Bad content-length")

        del buf[: pos + 4]  # the head and its trailing CRLF
        self.fields, self.names, self.lines = fields, names, lines
        self.request, request.stream = request, self
        self.protocol.state["requests_count"] += 1

    # In test mode TouchUp starts again from the method kept under this name: ours, not the inherited Http's.
    _http1_request_header = http1_request_header


def header_fields(request: Any) -> Iterable[tuple[str, str]]:
    """The request's header fields, names lower-case, in order (from the parse when it kept them)."""
    stream = request.stream
    return stream.fields if isinstance(stream, ClientHttp) else request.headers.items()


#: Characters a request header must not carry upstream (header injection), and a name's alphabet.
_UNSAFE_VALUE = re.compile(r"[\r\n\x00]")
_TOKEN = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _tokens(text: str) -> bool:
    """True when ``text`` holds token characters only (a quarter of a regular expression's work)."""
    return text.isascii() and not text.encode("ascii").translate(None, _TOKEN)


def check_headers(request: Any) -> None:
    """Refuse header names that are not HTTP tokens and values holding CR, LF or NUL.

    Such headers would be forwarded upstream as they came and could forge headers or
    requests there (Sanic splits the head on CRLF only, so a bare LF reaches us).

    Raises:
        InvalidRequest: naming the header.
    """
    stream = request.stream
    if isinstance(stream, ClientHttp):  # what the parse kept: the names, and the lines the values come from
        names, text = stream.names, "".join(stream.lines)
    else:
        names, text = list(request.headers.keys()), "".join(request.headers.values())
    if "\n" in text or "\r" in text or "\0" in text or "" in names or not _tokens("".join(names)):
        for name, value in request.headers.items():
            if not name or not _tokens(name):
                raise InvalidRequest(f"request header name {name[:64]!r} is not a valid HTTP token")
            if _UNSAFE_VALUE.search(value):
                raise InvalidRequest(f"request header {name[:64]!r} contains a line break or NUL")
