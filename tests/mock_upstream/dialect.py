"""What every dialect module provides (:class:`Dialect`), the reply it builds (:class:`Reply`), and
the error statuses the mock knows.

A dialect is one module with one :class:`Dialect` subclass: its headers, error body, JSON reply,
SSE events and models list. A new dialect is a new module plus its rows in ``routes.ROUTES``.
"""

from __future__ import annotations

import abc
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tests.mock_upstream.content import PLANS, Block

if TYPE_CHECKING:
    from tests.mock_upstream.request import RecordedRequest
    from tests.mock_upstream.scenario import Scenario

Event = tuple[str | None, Any]  # (SSE event name or None, data as JSON-able or a raw str)

RETRY_AFTER_STATUSES = frozenset({429, 503, 529})
FIXED_TIME = 1767225600  # 2026-01-01T00:00:00Z, the clock under x-mock-fixed-ids


@dataclass
class Reply:
    """What to send: a JSON body (``events is None``), or an SSE stream whose events ``events()``
    generates as they are sent (it may be called again, e.g. to count them)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    events: Callable[[], Iterator[Event]] | None = None


# Status -> (Anthropic type, OpenAI type, OpenAI code, message)
_ERRORS: dict[int, tuple[str, str, str | None, str]] = {
    400: ("invalid_request_error", "invalid_request_error", None, "Invalid request."),
    401: ("authentication_error", "invalid_request_error", "invalid_api_key", "Invalid API key."),
    403: ("permission_error", "invalid_request_error", None, "Your API key does not have permission."),
    404: ("not_found_error", "invalid_request_error", None, "Not found."),
    413: ("request_too_large", "invalid_request_error", None, "Request exceeds the maximum size."),
    429: ("rate_limit_error", "requests", "rate_limit_exceeded", "Rate limit exceeded, retry later."),
    500: ("api_error", "server_error", None, "Internal server error."),
    503: ("overloaded_error", "server_error", None, "The service is temporarily overloaded."),
    529: ("overloaded_error", "server_error", None, "Overloaded"),
}


def error_kind(status: int) -> tuple[str, str, str | None, str]:
    """(Anthropic type, OpenAI type, OpenAI code, default message) for ``status``."""
    if status in _ERRORS:
        return _ERRORS[status]
    if status >= 500:
        return ("api_error", "server_error", None, "Internal server error.")
    return ("invalid_request_error", "invalid_request_error", None, f"Request failed ({status}).")


def rate_limit_headers(families: Iterable[str], pattern: str, status: int,
                       limit: int, reset: str) -> list[tuple[str, str]]:
    """``pattern`` formatted with family and limit/remaining/reset, for each family."""
    remaining = 0 if status == 429 else limit - 1
    out = []
    for family in families:
        for kind, value in (("limit", limit), ("remaining", remaining), ("reset", reset)):
            out.append((pattern.format(family=family, kind=kind), str(value)))
    return out


def dumps(data: Any) -> bytes:
    """Compact JSON bytes, as the real APIs send."""
    return json.dumps(data, separators=(",", ":")).encode()


class Dialect(abc.ABC):
    """One provider's shapes, for one reply. Subclasses fill in headers, errors, JSON, streams."""

    def __init__(self, request: RecordedRequest | None = None, fixed_ids: bool = False):
        self.request, self.fixed_ids = request, fixed_ids

    def _token(self, nbytes: int) -> str:
        """A random hex id part (message ids), or zeros under ``x-mock-fixed-ids``."""
        return "0" * (2 * nbytes) if self.fixed_ids else secrets.token_hex(nbytes)

    def _request_token(self, nbytes: int) -> str:
        """A hex id part derived from the request's method, path and body (request-id headers):
        the same request sent directly and through a proxy gets the same id."""
        if self.fixed_ids or self.request is None:
            return self._token(nbytes)
        seed = f"{self.request.method} {self.request.path}\n".encode() + self.request.body
        return hashlib.blake2b(seed, digest_size=nbytes).hexdigest()

    def _now(self) -> int:
        """Seconds since the epoch, or a fixed instant under ``x-mock-fixed-ids``."""
        return FIXED_TIME if self.fixed_ids else int(time.time())

    def _reset_at(self) -> int:
        """When rate limits reset: the next minute boundary after the next (stable for a minute)."""
        return (self._now() // 60 + 2) * 60

    @abc.abstractmethod
    def headers(self, status: int) -> list[tuple[str, str]]:
        """Provider response headers for a reply with ``status``."""

    @abc.abstractmethod
    def error(self, status: int, message: str | None = None) -> dict[str, Any]:
        """The error body for ``status``."""

    @abc.abstractmethod
    def completion(self, body: dict[str, Any], blocks: list[Block], sc: Scenario) -> dict[str, Any]:
        """The non-streaming reply."""

    @abc.abstractmethod
    def stream(self, body: dict[str, Any], blocks: list[Block], sc: Scenario) -> Iterator[Event]:
        """The streaming reply's events, generated lazily, with the scenario's in-band error and
        unknown event."""

    @abc.abstractmethod
    def models(self) -> dict[str, Any]:
        """The models list."""

    def blocks(self, sc: Scenario) -> list[Block]:
        """The content plan for ``sc`` that this dialect can express."""
        return PLANS[sc.content](sc.events, sc.stamp)

    def error_reply(self, status: int, message: str | None = None) -> Reply:
        """A JSON error reply, with ``retry-after`` where the real APIs send it."""
        headers = self.headers(status)
        if status in RETRY_AFTER_STATUSES:
            headers.append(("retry-after", "7"))
        return Reply(status, headers, dumps(self.error(status, message)))
