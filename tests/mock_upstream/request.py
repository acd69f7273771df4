"""A request as it arrived (:class:`RecordedRequest`), and the ways an exchange ends early."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RecordedRequest:
    """One request as it arrived. ``headers`` keep order and original case; ``body`` is
    de-chunked."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    http_version: str = "HTTP/1.1"
    connection_id: int = 0  # which TCP connection (1, 2, ...) carried it

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` (case-insensitive), or None."""
        return self._by_name.get(name.lower())

    @functools.cached_property
    def _by_name(self) -> dict[str, str]:
        return {key.lower(): value for key, value in self.headers}

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @property
    def keep_alive(self) -> bool:
        """Whether the client lets the connection stay open after the response."""
        tokens = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        if self.http_version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    @property
    def accepts_gzip(self) -> bool:
        """Whether ``accept-encoding`` allows gzip with q > 0."""
        for part in (self.header("accept-encoding") or "").split(","):
            coding, _, params = part.partition(";")
            if coding.strip().lower() in ("gzip", "x-gzip", "*"):
                q = 1.0
                for param in params.split(";"):
                    key, _, value = param.partition("=")
                    if key.strip().lower() == "q":
                        try:
                            q = float(value)
                        except ValueError:
                            q = 0.0
                return q > 0
        return False


class BadRequest(Exception):
    """The bytes received are not an HTTP/1.x request we understand."""


class PeerGone(Exception):
    """The client closed or reset the connection while we were answering."""


class Aborted(Exception):
    """The scenario cut the response short on purpose (reset, garbage, drop, truncate)."""
