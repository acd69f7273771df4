"""Adds the provider's credentials to upstream requests, the way each provider expects them."""

from __future__ import annotations

from dataclasses import dataclass

from ccproxy_core import ANTHROPIC, PluginSettings, RequestContext, hookimpl

#: Sent when the client named no version (curl users); a client's own value is never changed.
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"


@dataclass(slots=True)
class _NoSettings:
    """This plugin takes no settings: any key under ``plugins: providers:`` is refused."""


@hookimpl
def ccproxy_configure(settings: PluginSettings) -> None:
    settings.load(_NoSettings)


@hookimpl
def ccproxy_request_headers(ctx: RequestContext, headers: dict[str, str]) -> None:
    provider = ctx.config.providers[ctx.provider] if ctx.config and ctx.provider else None
    if provider is None:
        return
    if provider.format == ANTHROPIC:
        headers.setdefault("anthropic-version", DEFAULT_ANTHROPIC_VERSION)
        if provider.api_key:
            headers["x-api-key"] = provider.api_key
    elif provider.api_key:
        headers["authorization"] = f"Bearer {provider.api_key}"
