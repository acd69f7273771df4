"""ccproxy's first-party dialect translation plugin: Anthropic Messages, OpenAI Chat
Completions and the OpenAI Responses API, each to each.

It implements only public hooks, so a third party can replace it: unregister
``translate`` and register another plugin on the same hooks. Settings live under
``plugins: translate:`` (see :class:`Settings` and docs/translation.md). The adapter hooks are
methods of the per-app :class:`Translate`, which holds the app's store of translated Responses
exchanges (``previous_response_id``, :mod:`.resp_store`) and passes it to :func:`request_adapter`
and :func:`response_adapter`.
"""

from __future__ import annotations

import logging
from typing import Any

from ccproxy_core import ANTHROPIC, OPENAI, RESPONSES, InvalidRequest, PluginSettings, hookimpl

from ..usage import settings_for as usage_settings
from . import mappings
from .adapters import (
    ErrorResponseAdapter,
    JSONResponseAdapter,
    ModelRenameJSONAdapter,
    ModelRenameStreamAdapter,
    choose_adapter,
)
from .base import PLUGIN_NAME, ResponseAdapter, Settings
from .headers import add_client_headers
from .requests import anthropic_to_openai, openai_to_anthropic
from .resp_requests import responses_to_anthropic, responses_to_openai
from .resp_store import MemoryValues, ResponseStore, expand, keeping, previous_id
from .resp_upstream import anthropic_to_responses, openai_to_responses
from .streams import AnthropicToOpenAIStream, OpenAIToAnthropicStream
from .synthesize import StreamSynthesizer, stream_adapter

__all__ = [
    "AnthropicToOpenAIStream",
    "OpenAIToAnthropicStream",
    "JSONResponseAdapter",
    "ErrorResponseAdapter",
    "ModelRenameJSONAdapter",
    "ModelRenameStreamAdapter",
    "ResponseAdapter",
    "Settings",
    "StreamSynthesizer",
    "anthropic_to_openai",
    "openai_to_anthropic",
]

log = logging.getLogger("ccproxy.translate")

#: (client dialect, upstream dialect) -> request converter.
_CONVERTERS = {
    (OPENAI, ANTHROPIC): openai_to_anthropic,
    (ANTHROPIC, OPENAI): anthropic_to_openai,
    (RESPONSES, ANTHROPIC): responses_to_anthropic,
    (RESPONSES, OPENAI): responses_to_openai,
    (ANTHROPIC, RESPONSES): anthropic_to_responses,
    (OPENAI, RESPONSES): openai_to_responses,
}
#: Request headers only the named dialect's upstreams understand (both OpenAI dialects share theirs).
_ONLY_FOR = {ANTHROPIC: mappings.ANTHROPIC_ONLY_REQUEST_HEADERS, OPENAI: mappings.OPENAI_ONLY_REQUEST_HEADERS,
             RESPONSES: mappings.OPENAI_ONLY_REQUEST_HEADERS}


@hookimpl
def ccproxy_configure(settings: PluginSettings) -> Translate:
    """Check ``plugins: translate:`` so a bad setting stops start-up (ConfigError); the app's hooks."""
    return Translate(Settings.load(settings))


class Translate:
    """The adapter hooks, for one app: they share its :class:`ResponseStore` (opened in ``ccproxy_startup``
    on the app's state backend, see :mod:`.resp_store`). ``trylast``: a per-app object is registered after
    every plugin, and other plugins' adapters keep coming first, as when these hooks were the module's
    (another plugin's request adapter wins; response adapters chain in that order)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: ResponseStore | None = None

    @hookimpl
    def ccproxy_startup(self, app: Any) -> None:
        s, state = self.settings, app.ctx.state
        values = MemoryValues(s.store_max_entries, s.store_max_bytes) if state.kind == "memory" else state
        self.store = ResponseStore(values, max_value_bytes=s.store_max_value_bytes, ttl=s.store_ttl,
                                   fail_open=app.ctx.config.state.on_error == "open")

    @hookimpl(trylast=True)
    def ccproxy_request_adapter(self, ctx: Any, body: dict[str, Any]) -> Any:
        if ctx.upstream_dialect == ctx.client_dialect:  # the usual request: nothing to convert
            return None
        if ctx.client_dialect == RESPONSES and self.store is not None and (ctx.client_dialect, ctx.upstream_dialect) \
                in _CONVERTERS and previous_id(body) is not None:
            return self._expanded(ctx, body)  # a coroutine: the core awaits it
        return request_adapter(ctx, body, self.store)

    async def _expanded(self, ctx: Any, body: dict[str, Any]) -> dict[str, Any] | None:
        items = await self.store.get(body["previous_response_id"])  # type: ignore[union-attr]
        return request_adapter(ctx, body, self.store, items)

    @hookimpl(trylast=True)
    def ccproxy_response_adapter(self, ctx: Any) -> ResponseAdapter | None:
        return None if _passes_through(ctx) else response_adapter(ctx, self.store)


def request_adapter(ctx: Any, body: dict[str, Any], store: ResponseStore | None = None,
                    items: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """Convert the body between dialects; None when there is nothing to translate.

    A Responses client's ``previous_response_id`` is expanded with ``items``, what ``store`` keeps for it
    (:func:`.resp_store.expand`; without ``items`` it is refused as not found).

    The upstream is asked to stream when ``ctx.upstream_stream`` (the client asked and the
    provider streams); an OpenAI upstream is then asked for the usage chunk unless
    ``plugins.usage.request_stream_usage`` is false.

    Top-level fields the upstream has no use for are listed in
    ``ctx.state["translate"]["ignored_fields"]``.
    """
    convert = _CONVERTERS.get((ctx.client_dialect, ctx.upstream_dialect))
    if convert is None:
        return None
    if ctx.client_dialect == RESPONSES:
        if items is None and previous_id(body) is not None:
            raise InvalidRequest(f"Previous response with id {body['previous_response_id']!r} not found.")
        body = expand(ctx, body, items, store)
    ignored: list[str] = []
    options: dict[str, Any] = {"stream": ctx.upstream_stream}
    if ctx.upstream_stream and ctx.upstream_dialect == OPENAI:
        options["stream_usage"] = usage_settings(ctx.config).request_stream_usage
    out = convert(body, model=ctx.model, settings=Settings.of(ctx), ignored=ignored, **options)
    if ignored:
        ctx.state.setdefault(PLUGIN_NAME, {})["ignored_fields"] = ignored
        log.debug("request %s: ignored fields %s", ctx.request_id, ", ".join(ignored))
    return out


@hookimpl
def ccproxy_request_headers(ctx: Any, headers: dict[str, str]) -> None:
    """Translated requests: drop the client dialect's API headers the upstream does not
    speak, and give an Anthropic upstream the ``anthropic-version`` it requires."""
    if ctx.upstream_dialect is None or ctx.upstream_dialect == ctx.client_dialect:  # ctx.translated, without a call
        return
    client, upstream = _ONLY_FOR[ctx.client_dialect], _ONLY_FOR[ctx.upstream_dialect]
    if client is not upstream:
        for name in client:
            headers.pop(name, None)
    if ctx.upstream_dialect == ANTHROPIC:
        headers.setdefault("anthropic-version", mappings.ANTHROPIC_VERSION)


def response_adapter(ctx: Any, store: ResponseStore | None = None) -> ResponseAdapter | None:
    """The adapter for a stream made from a JSON answer (``supports_streaming: false``), for a
    translated response or for an aliased model; else None. A translated Responses answer is kept in
    ``store`` when its request was (:class:`.resp_store.Keeping` wraps its adapter)."""
    if _passes_through(ctx):
        return None
    settings = Settings.of(ctx)
    kept = keeping(ctx, store)
    keep = kept.keep if kept is not None else None
    adapter = stream_adapter(ctx, settings, keep) or choose_adapter(ctx, settings, keep)
    if kept is None or adapter is None:
        return adapter
    kept.adapter = adapter
    return kept


def _passes_through(ctx: Any) -> bool:
    """True when :func:`response_adapter` has nothing to do, found without building anything: one
    dialect, no model name to give back (or an error status) and no stream to make of a JSON answer."""
    requested = ctx.model_requested
    return (
        (ctx.upstream_dialect is None or ctx.upstream_dialect == ctx.client_dialect)
        and (not requested or not ctx.model or requested == ctx.model or (ctx.upstream_status or 200) >= 400)
        and (not ctx.stream or ctx.upstream_stream)
    )


@hookimpl
def ccproxy_upstream_headers(ctx: Any, headers: dict[str, str]) -> None:
    """Translated responses also get the rate-limit headers in the client's naming (both
    OpenAI dialects name them alike)."""
    upstream = ctx.upstream_dialect
    # ctx.translated, without a call: every untranslated request passes here.
    if upstream is not None and upstream != ctx.client_dialect and ANTHROPIC in (ctx.client_dialect, upstream):
        add_client_headers(upstream, headers)
