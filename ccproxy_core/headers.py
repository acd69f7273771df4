"""Which headers cross the proxy, in each direction.

End-to-end headers are forwarded both ways. Hop-by-hop headers (and any named
in ``connection``), ``host``, ``set-cookie`` and every form of the client's
credentials stop here. Names are lower-case; repeated headers are joined with
", " as RFC 9110 allows for every header that reaches this code.
"""

from __future__ import annotations

import re
from typing import Iterable

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "trailers",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
    }
)

#: Client credentials: never forwarded upstream (the provider's key is added instead).
CLIENT_CREDENTIALS = frozenset({"authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie"})

#: Recomputed or meaningless on the other side.
_REQUEST_DROP = HOP_BY_HOP | CLIENT_CREDENTIALS | {"host", "content-length", "expect"}
_RESPONSE_DROP = HOP_BY_HOP | {"set-cookie"}
#: Dropped as well when the proxy re-encodes the body.
BODY_FRAMING = ("content-length", "content-encoding")

STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}

_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,200}$")


def _filter(pairs: Iterable[tuple[str, str]], drop: frozenset[str] | set[str]) -> dict[str, str]:
    """One pass: keep what is not in ``drop`` (nor ``proxy-*``), joining repeats; then remove the
    headers that ``connection`` names (it is hop-by-hop itself, so it is always in ``drop``).

    Linear in the input: repeated values are collected and joined once per name.
    """
    out: dict[str, str] = {}
    repeated: dict[str, list[str]] = {}
    connection: list[str] = []
    for name, value in pairs:
        name = name.lower()
        if name in drop or name.startswith("proxy-"):
            if name == "connection":
                connection.append(value)
            continue
        if name in out:
            values = repeated.get(name)
            if values is None:
                repeated[name] = [out[name], value]
            else:
                values.append(value)
        else:
            out[name] = value
    if repeated:
        for name, values in repeated.items():
            out[name] = ", ".join(values)
    if connection:
        for token in ",".join(connection).split(","):
            out.pop(token.strip().lower(), None)
    return out


def request_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The client's end-to-end headers that may go upstream."""
    return _filter(pairs, _REQUEST_DROP)


def response_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The upstream's end-to-end headers that may go to the client."""
    return _filter(pairs, _RESPONSE_DROP)


def valid_request_id(value: str | None) -> bool:
    """True for a client-sent request id we can log and echo safely."""
    return bool(value) and _REQUEST_ID.match(value) is not None  # type: ignore[arg-type]
