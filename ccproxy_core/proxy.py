"""From a client request to prepared upstream attempts: parsing, routing, body and headers.

Data walks one way: :meth:`Proxy.handle` routes the request and prepares its attempts (the
first now, each fallback only when the engine asks for the next one) and hands them to
:meth:`StreamingHandler.respond`; nothing comes back from the engine but the response.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from sanic import Request, response

from .config import Config, ProviderConfig
from .context import ANTHROPIC, COMPLETED, RequestContext
from .decoding import decodable_accept_encoding
from .counting import ESTIMATE_HEADER, EstimateTransport, estimate_responses_input_tokens, estimated
from .dialects import COUNT_FIELDS, COUNT_PATHS, UPSTREAM_PATHS
from .errors import InvalidRequest, NotFound, ProxyError
from .headers import REQUEST_ID_HEADER, request_headers, request_id
from .intake import parse_body, with_members
from .plugins import Plugins
from .request_head import check_headers, header_fields
from .streaming import DeferredResponse, StreamingHandler
from .upstream import HandlerConfig, UpstreamRequest, aim

log = logging.getLogger("ccproxy")

#: Claude Code's context-size marker on a model name (``claude-opus-4-8[1m]``): a client-side
#: suffix, not part of any upstream's model id.
_BRACKET_SUFFIX = re.compile(r"\[[^\[\]]*\]$")
#: Model names whose routes are kept (see ``Proxy._receive``); the cache starts again when full.
ROUTE_CACHE_MAX = 1024


def base_model(model: str) -> str:
    """``model`` without a trailing bracketed suffix (``claude-opus-4-8[1m]`` -> ``claude-opus-4-8``)."""
    return _BRACKET_SUFFIX.sub("", model) if model.endswith("]") else model


@dataclass(frozen=True, slots=True)
class Route:
    """Where one model name goes."""

    provider: ProviderConfig
    model: str


class Proxy:
    """Turns proxy-route requests into deferred upstream responses."""

    def __init__(
        self,
        config: Config,
        plugins: Plugins,
        clients: dict[str, httpx.AsyncClient],
        transports: dict[str, httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        """``transports``, when given, are called directly on the hot path; ``clients`` otherwise."""
        self.config = config
        self.plugins = plugins
        self.clients = clients
        self.transports = transports or {}
        self.handler = StreamingHandler(plugins, retries=config.retries, limits=config.limits)
        self._body_hooks = plugins.implemented("ccproxy_request_body")
        body_hooks = plugins.impls("ccproxy_request_body")

        def every_one(marker: str) -> bool:
            return self._body_hooks and all(getattr(func, marker, False) is True for _, func, _ in body_hooks)

        #: Every ``ccproxy_request_body`` is marked ``streamed_only``: an unstreamed attempt skips the hook.
        self._body_hooks_streamed_only = every_one("streamed_only")
        #: Every ``ccproxy_request_body`` is marked ``top_level_only``: their changes are spliced into the client's bytes.
        self._body_hooks_top_level = every_one("top_level_only")
        #: ``routes(model)`` by model name (the configuration does not change while the app runs).
        self._routes: dict[str, tuple[Route, ...]] = {}
        #: Something may read (and so decode) response bodies: offer upstreams only codings we decode.
        self._reads_bodies = bool(
            self.handler.plugin_adapters or self.handler.event_hooks or self.handler.body_hooks
        )
        #: Each provider's ``HandlerConfig`` (frozen: one per provider serves every attempt), and a count's.
        self._handler_configs = {
            name: HandlerConfig(self.handler.plugin_adapters, provider.supports_streaming)
            for name, provider in config.providers.items()
        }
        self._count_config = HandlerConfig(self.handler.plugin_adapters, supports_streaming=False)

    def context(self, request: Request, dialect: str) -> RequestContext:
        """A new context for ``request``; its id is seeded by the client's ``x-request-id`` when sane."""
        # By position: a call by keyword makes a dict and matches its keys against the 37 fields (~2.5k
        # instructions); ``config`` is the last field.
        ctx = RequestContext(request_id(request.headers.get("x-request-id")), request.method, request.path, dialect)
        ctx.config = self.config
        return ctx

    async def handle(self, request: Request, ctx: RequestContext) -> DeferredResponse:
        """Validate, route and prepare; the upstream is called when Sanic sends the result.

        Raises:
            ProxyError: bad input, an unknown model, or a plugin refusing the request.
        """
        routes = await self._receive(request, ctx)
        ctx.stream = ctx.body.get("stream") is True and not ctx.counting  # type: ignore[union-attr]
        if len(routes) == 1:  # no fallback: no generator to prepare them
            return self.handler.respond(ctx, await self._prepare(request, ctx, routes[0]))
        # The first route that can be prepared is the call; the others are its fallbacks, prepared
        # only if needed. Raises the first route's error when none can be prepared.
        attempts = self._attempts(request, ctx, routes)
        first = await anext(attempts)
        return self.handler.respond(ctx, first, attempts)

    async def input_tokens(self, request: Request, ctx: RequestContext) -> DeferredResponse | response.HTTPResponse:
        """``POST /v1/responses/input_tokens``: passed to the model's provider (and its fallbacks that have
        a count endpoint) when it has a count endpoint (a Responses one, or an Anthropic one through
        translation); otherwise estimated here, with no upstream call
        (:func:`~.counting.estimate_responses_input_tokens`), and the request ends as ``completed``."""
        routes = await self._receive(request, ctx)
        if routes[0].provider.format in COUNT_PATHS:
            attempts = self._attempts(request, ctx, [r for r in routes if r.provider.format in COUNT_PATHS])
            first = await anext(attempts)
            return self.handler.respond(ctx, first, attempts)
        assert ctx.body is not None
        aim(ctx, routes[0].provider.name, routes[0].model, routes[0].provider.format)
        ctx.outcome, ctx.status = COMPLETED, 200
        ctx.duration = ctx.elapsed()
        await self.plugins.notify("ccproxy_stream_end", ctx=ctx)
        count = await estimated(estimate_responses_input_tokens, ctx.body, len(request.body))
        return response.json({"object": "response.input_tokens", "input_tokens": count},
                             headers={ESTIMATE_HEADER: "estimate", REQUEST_ID_HEADER: ctx.request_id})

    async def _receive(self, request: Request, ctx: RequestContext) -> tuple[Route, ...]:
        """Parse the body, let plugins refuse it, and route its model."""
        check_headers(request)
        spans: dict[str, tuple[int, int]] = {}
        body = parse_body(request.body, self.config.limits.max_model_length, spans)
        request.ctx.body_spans = spans  # where each top-level value lies: an alias's model is set in place
        ctx.body = body
        ctx.model_requested = body["model"]
        # A token count (count_tokens, input_tokens): plugins that limit or bill see it as one.
        ctx.counting = ctx.route.rstrip("/").endswith(("/count_tokens", "/input_tokens"))
        pending = self.plugins.run("ccproxy_request_received", ctx=ctx, request=request)
        if pending is not None:
            await pending
        model = ctx.model_requested
        routes = self._routes.get(model)
        if routes is None:
            routes = self.routes(model)
            if len(self._routes) >= ROUTE_CACHE_MAX:  # the names are the clients': bounded
                self._routes.clear()
            self._routes[model] = routes
        return routes

    def routes(self, model: str) -> tuple[Route, ...]:
        """The routes to try for ``model``, in order: its own, then fallbacks.

        The model's own route (an alias's target, else the first provider whose globs
        match) comes first, followed by its provider's ``fallbacks`` (same model name);
        then each of the alias's ``fallbacks`` with its provider's ``fallbacks``.
        A trailing bracketed suffix (``claude-opus-4-8[1m]``, Claude Code's context marker) is
        dropped: aliases and globs see, and the upstream gets, the base name (an alias named with
        the suffix itself wins). A (provider, model) pair appears once. Upstream URLs come from the configuration
        only: the model name never reaches a URL.

        Raises:
            NotFound: no configured provider serves ``model``.
        """
        primary = self._route(model)
        out: list[Route] = []
        seen: set[tuple[str, str]] = set()
        alias = self.config.models.get(model) or self.config.models.get(base_model(model))
        candidates = [primary]
        if alias is not None:
            for fallback in alias.fallbacks:
                route = self._fallback_route(fallback.provider, fallback.model)
                if route is not None:
                    candidates.append(route)
        for route in candidates:
            for option in (route, *(
                Route(self.config.providers[name], route.model)
                for name in route.provider.fallbacks
                if name in self.config.providers
            )):
                key = (option.provider.name, option.model)
                if key not in seen:
                    seen.add(key)
                    out.append(option)
        return tuple(out)

    def _route(self, model: str) -> Route:
        alias = self.config.models.get(model) or self.config.models.get(base_model(model))
        if alias is not None:
            if alias.provider is not None:
                provider = self.config.providers.get(alias.provider)
                if provider is None:
                    why = self._why_skipped(alias.provider)
                    raise NotFound(f"model {model!r} maps to provider {alias.provider!r}, {why}")
                return Route(provider, alias.model)
            model_name = alias.model
        else:
            model_name = base_model(model)
        for provider in self.config.providers.values():
            if provider.serves(model_name):
                return Route(provider, model_name)
        for name, skipped in self.config.skipped.items():
            if skipped.provider.serves(model_name):
                raise NotFound(f"model {model!r} would be served by provider {name!r}, {self._why_skipped(name)}")
        raise NotFound(f"model {model!r} is not served by any configured provider")

    def _why_skipped(self, name: str) -> str:
        skipped = self.config.skipped.get(name)
        if skipped is None:
            return "which is not configured"
        return f"which is skipped because its api_key is empty: {skipped.hint()}"

    def _fallback_route(self, provider_name: str | None, model: str) -> Route | None:
        if provider_name is not None:
            provider = self.config.providers.get(provider_name)
            return Route(provider, model) if provider is not None else None
        for provider in self.config.providers.values():
            if provider.serves(model):
                return Route(provider, model)
        return None

    async def _attempts(
        self, request: Request, ctx: RequestContext, routes: Sequence[Route]
    ) -> AsyncIterator[UpstreamRequest]:
        """Prepare each route when it is needed; a route that cannot be prepared is skipped.

        When no route can be prepared, the first route's error is raised (e.g. a 400 for
        a dialect no plugin translates).
        """
        first_error: ProxyError | None = None
        yielded = False
        for route in routes:
            try:
                prepared = await self._prepare(request, ctx, route)
            except ProxyError as error:
                if len(routes) == 1:
                    raise
                log.warning(
                    "request %s: route %s (%s) skipped: %s", ctx.request_id, route.provider.name, route.model,
                    error.message,
                )
                first_error = first_error or error
                continue
            yielded = True
            yield prepared
        if not yielded and first_error is not None:
            raise first_error

    async def _prepare(self, request: Request, ctx: RequestContext, route: Route) -> UpstreamRequest:
        """Body, URL and headers for one attempt (runs lazily, when the attempt is made)."""
        provider = route.provider
        aim(ctx, provider.name, route.model, provider.format)  # what the request hooks below see
        if ctx.counting:
            return await self._prepare_count(request, ctx, route)
        handler_config = self._handler_configs[provider.name]
        # Per attempt (fallbacks may differ), before the request adapter and body hooks see it.
        ctx.upstream_stream = ctx.stream and self.handler.should_stream(ctx.body or {}, handler_config)
        body = await self._upstream_body(request, ctx)
        url = provider.base_url + UPSTREAM_PATHS[provider.format]
        if request.query_string and not ctx.translated:
            url += "?" + request.query_string
        headers = request_headers(header_fields(request))
        if self._reads_bodies and "accept-encoding" in headers:
            headers["accept-encoding"] = decodable_accept_encoding(headers["accept-encoding"])
        headers.update(provider.headers)
        headers.setdefault("content-type", "application/json")
        pending = self.plugins.run("ccproxy_request_headers", ctx=ctx, headers=headers)
        if pending is not None:
            await pending
        return UpstreamRequest(
            method="POST",
            url=url,
            headers=headers,
            body=body,
            handler_config=handler_config,
            client=self.clients[provider.name],
            transport=self.transports.get(provider.name),
            timeouts=self.config.timeouts_for(provider),
            provider=provider.name,
            model=route.model,
            upstream_dialect=provider.format,
        )

    async def _upstream_body(self, request: Request, ctx: RequestContext) -> bytes:
        """The client's bytes when nothing must change, or with only the model renamed (an alias: its value
        replaced where the parse found it, :func:`~.intake.with_members`); otherwise the adapted body
        re-serialised."""
        assert ctx.body is not None
        # A client's stream from a provider that cannot stream: ask for JSON (a response adapter
        # turns the answer into the client's stream).
        unstreamed = ctx.stream and not ctx.upstream_stream
        changed = ctx.translated or unstreamed  # re-serialised in any case
        hooks = self._body_hooks and (ctx.upstream_stream or not self._body_hooks_streamed_only)
        if changed or hooks:
            if ctx.translated:
                body = await self._translate(ctx)
            else:
                body = {**ctx.body, "model": ctx.model}
                if unstreamed:
                    body["stream"] = False
                    body.pop("stream_options", None)
            if hooks:
                results = await self.plugins.call("ccproxy_request_body", ctx=ctx, body=body)
                if not changed and results and any(r is True for r in results):
                    if self._body_hooks_top_level:
                        return _spliced(request.body, ctx.body, body, request.ctx.body_spans)
                    changed = True
            if changed:
                return json.dumps(body, ensure_ascii=False).encode()
        if ctx.model == ctx.model_requested:
            return request.body
        return with_members(request.body, {"model": ctx.model}, spans=request.ctx.body_spans)

    async def _translate(self, ctx: RequestContext) -> dict:
        """The body in the upstream's dialect, from ``ccproxy_request_adapter``.

        Raises:
            InvalidRequest: no plugin translates the client's dialect to the upstream's.
        """
        body = await self.plugins.first("ccproxy_request_adapter", ctx=ctx, body=ctx.body)
        if body is None:
            raise InvalidRequest(
                f"model {ctx.model_requested!r} is served by provider {ctx.provider!r}, which speaks the "
                f"{ctx.upstream_dialect} dialect, and no plugin translates {ctx.client_dialect} requests to it"
            )
        return body

    async def _prepare_count(self, request: Request, ctx: RequestContext, route: Route) -> UpstreamRequest:
        """A token count: to the upstream's count endpoint, or to the local estimate when its dialect
        has none (never to a completion endpoint: that would bill a generation).

        An upstream of the client's dialect gets the client's body (model renamed for an alias), query
        string and headers. The other dialect with a count endpoint gets the body translated by
        ``ccproxy_request_adapter``, cut to the fields its count endpoint accepts (``COUNT_FIELDS``), and
        no query string; the translator's response adapter maps the answer back. The estimate speaks
        Anthropic's count API and gets the client's body.
        """
        provider = route.provider
        path = COUNT_PATHS.get(provider.format)
        body = request.body
        if path is not None and ctx.translated:
            translated = await self._translate(ctx)
            fields = COUNT_FIELDS[provider.format]
            body = json.dumps({k: v for k, v in translated.items() if k in fields}, ensure_ascii=False).encode()
        elif ctx.model != ctx.model_requested:
            body = with_members(body, {"model": ctx.model}, spans=request.ctx.body_spans)
        headers = request_headers(header_fields(request))
        headers.update(provider.headers)
        headers.setdefault("content-type", "application/json")
        await self.plugins.call("ccproxy_request_headers", ctx=ctx, headers=headers)
        if path is None:
            # The estimate counts the body as the intake parsed it (see EstimateTransport).
            url, dialect = "http://ccproxy.estimate" + COUNT_PATHS[ANTHROPIC], ANTHROPIC
            transport = EstimateTransport(ctx.body)
        else:
            url = provider.base_url + path
            if request.query_string and not ctx.translated:
                url += "?" + request.query_string
            transport, dialect = self.transports.get(provider.name), provider.format
        return UpstreamRequest(
            method="POST",
            url=url,
            headers=headers,
            body=body,
            handler_config=self._count_config,
            client=self.clients[provider.name],
            transport=transport,
            timeouts=self.config.timeouts_for(provider),
            provider=provider.name,
            model=route.model,
            upstream_dialect=dialect,
        )


def _spliced(raw: bytes, original: dict[str, Any], body: dict[str, Any], spans: dict[str, tuple[int, int]]) -> bytes:
    """The client's bytes ``raw`` (parsed: ``original``, its values at ``spans``) with the top-level members that
    ``body`` replaced or added, from ``ccproxy_request_body`` implementations marked ``top_level_only`` (a member
    they left is the same object, or equal: the model); re-serialised when one was removed."""
    added = {k: v for k, v in body.items() if k not in original}
    if len(body) - len(added) < len(original):
        return json.dumps(body, ensure_ascii=False).encode()
    replaced = {k: v for k, v in body.items() if k in original and v is not original[k] and v != original[k]}
    return with_members(raw, replaced, added, spans)
