"""Shared pieces: the adapter protocol, the plugin's settings and JSON helpers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, runtime_checkable

from ccproxy_core import PluginSettings

__all__ = [
    "ResponseAdapter",
    "Settings",
    "dumps",
    "loads",
    "SSE_CONTENT_TYPE",
    "JSON_CONTENT_TYPE",
]

SSE_CONTENT_TYPE: Final = "text/event-stream; charset=utf-8"
JSON_CONTENT_TYPE: Final = "application/json"
PLUGIN_NAME: Final = "translate"


@runtime_checkable
class ResponseAdapter(Protocol):
    """What the core calls on an adapter returned by ``ccproxy_response_adapter``
    (structurally the same as ``ccproxy_core.ResponseAdapter``, without
    importing the server side).

    ``feed`` gets the decoded upstream body in pieces split anywhere and returns the
    bytes to send to the client now (``b""`` for none yet). ``finish`` is called once
    when the upstream body ended cleanly and returns the rest. Either may raise a
    :class:`ccproxy_core.ProxyError` (``UpstreamProtocolError``): the core then ends
    the response visibly broken, with an error event in the client's dialect.
    """

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Settings:
    """The plugin's settings (``plugins: translate:`` in the YAML config).

    Attributes:
        thinking: how Anthropic thinking reaches OpenAI clients: ``reasoning_content``
            (``delta.reasoning_content`` / ``message.reasoning_content``) or ``drop``.
        default_max_tokens: ``max_tokens`` sent to Anthropic upstreams when an OpenAI
            client gave no ``max_completion_tokens``/``max_tokens`` (Anthropic requires it).
        reasoning_effort: whether Anthropic ``thinking``/``output_config.effort`` become
            OpenAI ``reasoning_effort`` (turn off for OpenAI models that reject it).
        max_tokens_field: the field that carries Anthropic ``max_tokens`` to OpenAI
            upstreams (``max_tokens`` for older OpenAI-compatible servers).
        store_max_value_bytes, store_ttl: the bounds of each translated Responses exchange kept for
            ``previous_response_id`` (its conversation as JSON; seconds it is kept), on every state backend.
        store_max_entries, store_max_bytes: with ``state.backend: memory``, what one worker keeps
            in all (responses, bytes); the oldest go first.
    """

    thinking: Literal["reasoning_content", "drop"] = "reasoning_content"
    default_max_tokens: int = 8192
    reasoning_effort: bool = True
    max_tokens_field: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    store_max_entries: int = 1000
    store_max_bytes: int = 64 << 20
    store_max_value_bytes: int = 16 << 20
    store_ttl: float = 3600.0

    @classmethod
    def load(cls, settings: PluginSettings) -> Settings:
        """Check a ``PluginSettings`` block; raise :class:`ConfigError` naming the bad key."""
        loaded = settings.load(cls) if settings else DEFAULT_SETTINGS
        for key in ("default_max_tokens", "store_max_entries", "store_max_bytes", "store_max_value_bytes",
                    "store_ttl"):
            if getattr(loaded, key) <= 0:
                raise settings.error(key, f"expected a positive number, got {getattr(loaded, key)}")
        return loaded

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> Settings:
        """Check a raw settings mapping (as ``config.plugin_settings("translate")`` returns it)."""
        return cls.load(PluginSettings(PLUGIN_NAME, raw))

    @classmethod
    def of(cls, ctx: Any) -> Settings:
        """The settings for a request: ``ctx.config.plugin_settings("translate")``, or defaults."""
        getter = getattr(getattr(ctx, "config", None), "plugin_settings", None)
        raw = getter(PLUGIN_NAME) if getter is not None else None
        if not raw:
            return DEFAULT_SETTINGS
        cached = _CACHE.get(id(raw))
        if cached is not None and cached[0] is raw:
            return cached[1]
        settings = cls.from_mapping(raw)
        if len(_CACHE) >= 8:  # configs are few; a reload makes a new dict
            _CACHE.clear()
        _CACHE[id(raw)] = (raw, settings)
        return settings


DEFAULT_SETTINGS: Final = Settings()
# id(settings mapping) -> (the mapping, parsed settings); the mapping is kept alive so its id stays unique.
_CACHE: dict[int, tuple[Mapping[str, Any], Settings]] = {}

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def dumps(obj: Any) -> str:
    """Compact JSON with non-ASCII kept, as the providers send it."""
    return _encoder.encode(obj)


def loads(data: str | bytes) -> Any:
    """Parse JSON (``json.loads``)."""
    return json.loads(data)
