"""ccproxy: a streaming LLM gateway for the Anthropic and OpenAI dialects, extended with pluggy.

The public API is what ``__all__`` lists, importable from ``ccproxy_core`` itself: the hook
markers, the request context and its constants, the one exception tree, plugin settings, the
typed configuration, the SSE parser and event, the error shapes of each dialect, :func:`with_model`, and
:func:`create_app`. Every submodule (``ccproxy_core.streaming``, ``ccproxy_core.config``, ...) is
internal and may change without notice: plugins, first-party ones included, import only from
here (``tests/test_packaging.py`` holds ``plugins/``, ``examples/`` and the docs' examples to it).

``import ccproxy_core`` stays cheap (no Sanic, no httpx): :func:`create_app`,
:class:`ResponseAdapter`, :func:`with_model` and the transport names load on first use.
"""

from .config import Config, Limits, ProviderConfig, Timeouts, build_config, load_config
from .context import (
    ANTHROPIC,
    CLIENT_DISCONNECTED,
    COMPLETED,
    OPENAI,
    REJECTED,
    RESPONSES,
    UPSTREAM_ERROR,
    Attempt,
    RequestContext,
    Usage,
)
from .decoding import DECODABLE_CODINGS
from .dialects import error_body, error_event
from .errors import (
    ERROR_KINDS,
    AuthenticationError,
    ConfigError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    PluginError,
    ProxyError,
    RateLimited,
    RequestTimeout,
    SendTimeout,
    UpstreamConfigError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from .hookspecs import hookimpl, hookspec
from .plugins import PluginSettings
from .sse import SSEEvent, SSEParser, encode_event
from .state import Check, StateBackend, StateUnavailable, Verdict, Window

__all__ = [
    # hooks and settings
    "hookimpl",
    "hookspec",
    "PluginSettings",
    # the request
    "RequestContext",
    "Usage",
    "Attempt",
    "ANTHROPIC",
    "OPENAI",
    "RESPONSES",
    "COMPLETED",
    "CLIENT_DISCONNECTED",
    "UPSTREAM_ERROR",
    "REJECTED",
    # responses and streams
    "ResponseAdapter",
    "DECODABLE_CODINGS",
    "SSEEvent",
    "SSEParser",
    "encode_event",
    "estimate_input_tokens",
    "with_model",
    "error_body",
    "error_event",
    # errors (ProxyError's kinds; ERROR_KINDS are the values of Attempt.error_kind)
    "ERROR_KINDS",
    "ConfigError",
    "ProxyError",
    "AuthenticationError",
    "InvalidRequest",
    "MethodNotAllowed",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PermissionDenied",
    "PluginError",
    "RateLimited",
    "RequestTimeout",
    "SendTimeout",
    "UpstreamConfigError",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    # shared state (app.ctx.state; the top-level state: block)
    "StateBackend",
    "StateUnavailable",
    "Check",
    "Verdict",
    "Window",
    # configuration and the app
    "Config",
    "Limits",
    "ProviderConfig",
    "Timeouts",
    "build_config",
    "load_config",
    "create_app",
    # transports (the ccproxy_upstream_transport hook)
    "FastPath",
    "FastTransport",
]


# Names whose modules pull in Sanic or httpx: loaded on first use, so plugins that only need the
# markers do not pay for them.
_LAZY = {
    "create_app": ".server",
    "ResponseAdapter": ".adapters",
    "FastTransport": ".transport",
    "FastPath": ".transport",
    "estimate_input_tokens": ".counting",
    "with_model": ".intake",
}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'ccproxy_core' has no attribute {name!r}")
