"""The one exception tree of ccproxy.

Every failure the client can see is a :class:`ProxyError`. Low-level errors
(httpx, JSON, YAML) are mapped to these at a single boundary with
``raise ... from exc``; :mod:`ccproxy_core.dialects` renders them in the
client's own API error shape.

``kind`` is a dialect-neutral name; each dialect maps it to its error type.
"""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration cannot be used; the message is one readable line."""


class ProxyError(Exception):
    """An error the client sees, with an HTTP status and a neutral kind."""

    status: int = 500
    kind: str = "api_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind
        #: Extra response headers, e.g. ``retry-after``.
        self.headers: dict[str, str] = headers or {}


class InvalidRequest(ProxyError):
    """The request is malformed or cannot be expressed upstream (400)."""

    status = 400
    kind = "invalid_request_error"


class AuthenticationError(ProxyError):
    """Missing or wrong proxy key (401)."""

    status = 401
    kind = "authentication_error"


class PermissionDenied(ProxyError):
    """The caller may not use this (403)."""

    status = 403
    kind = "permission_error"


class NotFound(ProxyError):
    """No such model or route (404)."""

    status = 404
    kind = "not_found_error"


class MethodNotAllowed(ProxyError):
    """Wrong HTTP method for the route (405)."""

    status = 405
    kind = "invalid_request_error"


class RequestTimeout(ProxyError):
    """The client did not send the request head or body within its deadline (408)."""

    status = 408
    kind = "invalid_request_error"


class PayloadTooLarge(ProxyError):
    """The request body exceeds the configured limit (413)."""

    status = 413
    kind = "request_too_large"


class RateLimited(ProxyError):
    """Too many requests (429)."""

    status = 429
    kind = "rate_limit_error"


class Overloaded(ProxyError):
    """The proxy is at its concurrency limit or shutting down (503)."""

    status = 503
    kind = "overloaded_error"


class UpstreamError(ProxyError):
    """The upstream could not be used (502 unless a subclass says otherwise)."""

    status = 502
    kind = "api_error"


class UpstreamConnectError(UpstreamError):
    """The upstream refused or dropped the connection before answering (502)."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer or stalled past a configured timeout (504)."""

    status = 504
    kind = "timeout_error"


class UpstreamProtocolError(UpstreamError):
    """The upstream broke HTTP, or ended the body early (502)."""


class PluginError(ProxyError):
    """A plugin failed where its result was needed (500)."""

    status = 500
    kind = "api_error"


class SendTimeout(ProxyError):
    """The client did not read the response for ``limits.send_timeout`` seconds; its connection was cut.

    Recorded as ``ctx.error`` (outcome ``client_disconnected``); the client never sees it.
    """

    status = 408
    kind = "timeout_error"
