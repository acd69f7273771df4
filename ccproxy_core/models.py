"""Model discovery: ``GET /v1/models`` and ``GET /v1/models/{id}``.

Each provider contributes the upstream's own models (its model list, fetched with the provider's
key, kept ``model_list_ttl`` seconds, filtered by the provider's ``models`` globs) or, when it
cannot list (no list endpoint, an error, a timeout, an answer over the bounds below), the exact
names among its globs (a provider that lists adds those of its exact names the list lacks). Aliases come first, each with what is known of its target. The answer is
in Anthropic's shape when the request carries ``anthropic-version``, OpenAI's otherwise.

A date the upstream gave is passed on (converted between the two shapes); a model the gateway
cannot date (an exact name, an alias of one) says ``created: 0`` / ``created_at:
"1970-01-01T00:00:00Z"``: "unknown", never a made-up time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx

from .config import Config, ProviderConfig
from .context import RequestContext
from .dialects import MODELS_PATHS
from .headers import request_id
from .plugins import Plugins

log = logging.getLogger("ccproxy")

#: Bounds on what an upstream's model list may be: bytes read, entries kept, seconds waited.
MAX_LIST_BYTES = 1 << 20
MAX_LIST_MODELS = 1000
LIST_TIMEOUT = 10.0
#: After a failed fetch, the exact names stand in for this long before the next try.
RETRY_AFTER_FAILURE = 30.0
_EPOCH = "1970-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class Model:
    """One listed model."""

    id: str
    owned_by: str
    #: Unix time the upstream gave (0: unknown).
    created: int = 0
    display_name: str = ""

    def anthropic(self) -> dict[str, Any]:
        created_at = (
            datetime.fromtimestamp(self.created, timezone.utc).isoformat().replace("+00:00", "Z") if self.created else _EPOCH
        )
        return {"type": "model", "id": self.id, "display_name": self.display_name or self.id, "created_at": created_at}

    def openai(self) -> dict[str, Any]:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": self.owned_by}


def _created(entry: dict[str, Any]) -> int:
    created = entry.get("created")
    if isinstance(created, int) and not isinstance(created, bool) and created > 0:
        return created
    created_at = entry.get("created_at")
    if isinstance(created_at, str):
        try:
            return int(datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp())
        except ValueError:
            return 0
    return 0


def parse_list(provider: ProviderConfig, payload: Any) -> list[Model]:
    """The models of an upstream list (either shape) that ``provider`` serves, at most
    :data:`MAX_LIST_MODELS`."""
    data = payload.get("data") if isinstance(payload, dict) else None
    out: list[Model] = []
    for entry in data if isinstance(data, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        if not provider.serves(entry["id"]):
            continue
        name = entry.get("display_name")
        out.append(Model(entry["id"], provider.name, _created(entry), name if isinstance(name, str) else ""))
        if len(out) >= MAX_LIST_MODELS:
            break
    return out


def exact_names(provider: ProviderConfig) -> list[Model]:
    """The provider's model globs that are plain names."""
    return [Model(p, provider.name) for p in provider.models if not any(c in p for c in "*?[")]


class ModelCatalog:
    """The models each provider serves, cached per worker."""

    def __init__(self, config: Config, plugins: Plugins, clients: dict[str, httpx.AsyncClient]) -> None:
        self.config = config
        self.plugins = plugins
        self.clients = clients
        self._cache: dict[str, tuple[float, list[Model]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def models(self) -> list[Model]:
        """Aliases first, then each provider's models; an id appears once."""
        lists = await asyncio.gather(*(self._provider_models(p) for p in self.config.providers.values()))
        by_id: dict[str, Model] = {}
        for models in lists:
            for model in models:
                by_id.setdefault(model.id, model)
        aliases = {}
        for alias, target in self.config.models.items():
            known = by_id.get(target.model)
            aliases[alias] = Model(alias, target.provider or (known.owned_by if known else "ccproxy"),
                                   known.created if known else 0)
        return [*aliases.values(), *(m for m in by_id.values() if m.id not in aliases)]

    async def _provider_models(self, provider: ProviderConfig) -> list[Model]:
        cached = self._cache.get(provider.name)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        async with self._locks.setdefault(provider.name, asyncio.Lock()):
            cached = self._cache.get(provider.name)
            if cached is not None and cached[0] > time.monotonic():
                return cached[1]
            listed = await self._fetch(provider)
            ttl = self.config.model_list_ttl if listed is not None else min(RETRY_AFTER_FAILURE, self.config.model_list_ttl)
            models = [*(listed or []), *(m for m in exact_names(provider) if m.id not in {x.id for x in listed or []})]
            self._cache[provider.name] = (time.monotonic() + ttl, models)
            return models

    async def _fetch(self, provider: ProviderConfig) -> list[Model] | None:
        """The upstream's list (None when it cannot be had within the bounds)."""
        path = MODELS_PATHS.get(provider.format)
        if path is None:
            return None
        ctx = RequestContext(request_id=request_id(None), method="GET", route=path, client_dialect=provider.format,
                             config=self.config)
        ctx.provider, ctx.upstream_dialect = provider.name, provider.format
        headers = {"accept": "application/json", **provider.headers}
        try:
            await self.plugins.call("ccproxy_request_headers", ctx=ctx, headers=headers)
            client = self.clients[provider.name]
            async with asyncio.timeout(LIST_TIMEOUT):
                async with client.stream("GET", provider.base_url + path, headers=headers) as response:
                    if response.status_code != 200:
                        log.info("provider %r cannot list models (status %d): listing its exact names",
                                 provider.name, response.status_code)
                        return None
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_LIST_BYTES:
                            log.warning("provider %r: model list over %d bytes, ignored", provider.name, MAX_LIST_BYTES)
                            return None
            return parse_list(provider, json.loads(body))
        except (httpx.HTTPError, TimeoutError, ValueError, OSError) as exc:
            log.info("provider %r cannot list models (%s): listing its exact names", provider.name, type(exc).__name__)
            return None


def list_payload(models: list[Model], anthropic: bool) -> dict[str, Any]:
    """A model list in the client's shape (one page: ``has_more`` is false)."""
    if anthropic:
        data = [m.anthropic() for m in models]
        return {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}
    return {"object": "list", "data": [m.openai() for m in models]}
