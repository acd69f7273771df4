"""ccproxy: a streaming LLM gateway for the Anthropic and OpenAI dialects, extended with pluggy."""

from .config import Config, ProviderConfig, Timeouts, load_config
from .context import ANTHROPIC, OPENAI, Attempt, RequestContext
from .errors import (
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
    SendTimeout,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from .hookspecs import hookimpl, hookspec
from .plugins import PluginSettings

__all__ = [
    "ANTHROPIC",
    "OPENAI",
    "Attempt",
    "AuthenticationError",
    "Config",
    "ConfigError",
    "InvalidRequest",
    "MethodNotAllowed",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PermissionDenied",
    "PluginError",
    "PluginSettings",
    "ProviderConfig",
    "ProxyError",
    "RateLimited",
    "SendTimeout",
    "RequestContext",
    "Timeouts",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "create_app",
    "hookimpl",
    "hookspec",
    "load_config",
]


def __getattr__(name: str):
    # The server pulls in Sanic; plugins that only need the markers should not pay for it.
    if name == "create_app":
        from .server import create_app

        return create_app
    raise AttributeError(name)
