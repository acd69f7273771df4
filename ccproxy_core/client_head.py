"""The client's response head as the proxy writes it: :class:`ClientHead`.

Sanic's own ``HTTPResponse`` copies the headers into a multidict and sanitises every name and
value on the way out, about a fifth of a small proxied request's CPU; the relay's headers are a
plain dict already (lower-case names, filtered), so this response keeps them as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sanic.helpers import has_message_body
from sanic.http import Http
from sanic.response import HTTPResponse

__all__ = ["ClientHead"]

#: What Sanic's header sanitising removes (``HEADER_TRANSLATION_TABLE``): CR, LF and NUL.
_STRIP_UNSAFE = str.maketrans("", "", "\r\n\x00")


def _unsafe(text: str) -> bool:
    """True when ``text`` holds CR, LF or NUL (three memchr scans: a regex class takes 25x as long)."""
    return "\r" in text or "\n" in text or "\x00" in text


class ClientHead(HTTPResponse):
    """The client's response, from a status, a header dict and a content type; written by Sanic as any other.

    The headers are copied into a plain dict with lower-case names (the caller's dict is not
    touched). On the wire, names and values lose CR, LF and NUL as Sanic's sanitising removes
    them, but the work is done only when one scan of them all finds such a character. Under Sanic's
    HTTP/1 writer the lines go as one pair (see :attr:`processed_headers`): one encode in all.
    """

    __slots__ = ()

    def __init__(self, status: int, headers: Mapping[str, str], content_type: str) -> None:
        self.asgi = False
        self.body = None
        self.content_type = content_type
        self.stream = None
        self.status = status
        names = "".join(headers)
        if names.lower() == names:  # the relay's dict: lower-case already, copied at C speed (islower(): 10x slower)
            self.headers = dict(headers)  # type: ignore[assignment]
        else:
            self.headers = {name.lower(): value for name, value in headers.items()}  # type: ignore[assignment]
        self._cookies = None

    @property
    def processed_headers(self) -> list[tuple[bytes, bytes]]:  # type: ignore[override]
        headers: dict[str, Any] = self.headers  # type: ignore[assignment]
        if has_message_body(self.status):
            headers.setdefault("content-type", self.content_type)
        length = headers.get("content-length")
        if length.__class__ is int:  # Sanic sets it for a body written with the head
            headers["content-length"] = str(length)
        try:
            unsafe = _unsafe("".join(headers) + "".join(headers.values()))  # one scan for all
        except TypeError:  # a value that is not a str (a plugin's): written as text
            for name, value in headers.items():
                if value.__class__ is not str:
                    headers[name] = f"{value}"
            unsafe = _unsafe("".join(headers) + "".join(headers.values()))
        if unsafe:
            strip = _STRIP_UNSAFE
            return [(n.translate(strip).encode("ascii"), v.translate(strip).encode("utf-8", "surrogateescape"))
                    for n, v in headers.items()]
        if headers and getattr(type(self.stream), "http1_response_header", None) is Http.http1_response_header:
            # Sanic's HTTP/1 writer (Http's, or a subclass's that keeps it: the proxy's ClientHttp) makes each pair
            # ``name: value\r\n``: one pair holding every line after the first name's ": " gives the same bytes
            # in one join and one encode instead of a format per header.
            lines = "\r\n".join(map(": ".join, headers.items()))
            if lines.isascii():
                first, _, rest = lines.partition(": ")
                return [(first.encode(), rest.encode())]  # ASCII: the UTF-8 codec is the fastest path
        return [(name.encode("ascii"), value.encode("utf-8", "surrogateescape")) for name, value in headers.items()]
