"""The one exception tree of ccproxy.

Every failure the client can see is a :class:`ProxyError`. Low-level errors
(httpx, JSON, YAML) are mapped to these at a single boundary with
``raise ... from exc``; :mod:`ccproxy_core.dialects` renders them in the
client's own API error shape.

``kind`` is a dialect-neutral name; each dialect maps it to its error type.
"""

from __future__ import annotations


#: Why an upstream attempt failed (``Attempt.error_kind``, ``ProxyError.error_kind``): a small fixed set
#: that logs and metrics use as it is. Each names one failure; the message says the rest.
CONNECT = "connect"  #: refused, reset or unreachable before the request was sent
CONNECT_TIMEOUT = "connect_timeout"  #: no connection within ``timeouts.connect``
POOL_TIMEOUT = "pool_timeout"  #: no pooled connection became free within ``timeouts.connect``
WRITE_TIMEOUT = "write_timeout"  #: sending the request stalled past ``timeouts.connect``
HEADERS_TIMEOUT = "headers_timeout"  #: no response head within ``timeouts.headers``
IDLE_TIMEOUT = "idle_timeout"  #: the body stalled past ``timeouts.idle``
TOTAL_TIMEOUT = "total_timeout"  #: the whole exchange took longer than ``timeouts.total``
PROTOCOL = "protocol"  #: broken HTTP, or a connection closed before the response ended
STATUS = "status"  #: the upstream answered with an error status (``Attempt.status``)
UNSUPPORTED_PROTOCOL = "unsupported_protocol"  #: the configured URL cannot be used (not an outage)
OTHER = "other"  #: anything else (e.g. a plugin failing mid-response)
ERROR_KINDS = (
    CONNECT, CONNECT_TIMEOUT, POOL_TIMEOUT, WRITE_TIMEOUT, HEADERS_TIMEOUT, IDLE_TIMEOUT, TOTAL_TIMEOUT,
    PROTOCOL, STATUS, UNSUPPORTED_PROTOCOL, OTHER,
)


class ConfigError(Exception):
    """The configuration cannot be used; the message is one readable line."""


class ProxyError(Exception):
    """An error the client sees, with an HTTP status and a neutral kind."""

    status: int = 500
    #: The dialect-neutral error type the client sees (each dialect maps it to its own).
    kind: str = "api_error"
    #: For upstream failures, why the attempt failed: one of :data:`ERROR_KINDS`.
    error_kind: str = OTHER

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        error_kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind
        if error_kind is not None:
            self.error_kind = error_kind
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

    error_kind = CONNECT


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer or stalled past a configured timeout (504)."""

    status = 504
    kind = "timeout_error"


class UpstreamProtocolError(UpstreamError):
    """The upstream broke HTTP, or ended the body early (502)."""

    error_kind = PROTOCOL


class UpstreamConfigError(UpstreamError):
    """The provider's configured URL cannot be used (500): a configuration problem, not an outage.

    Never retried nor fallen back from: every further request would fail the same way.
    """

    status = 500
    error_kind = UNSUPPORTED_PROTOCOL


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
