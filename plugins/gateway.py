"""The team gateway: each client key's limits, budget, model allow-list and usage, in the shared state.

Part of the ``auth`` plugin: its ``ccproxy_configure`` returns a :class:`GatewayPlugin` (these hooks
as well as the key check) when some key is written as a mapping or ``admin_keys`` is set; with plain
keys only, nothing here runs. Settings are ``auth``'s (see ``plugins/auth.py``); the counts live
in the backend of the top-level ``state:`` block (``app.ctx.state``, :mod:`ccproxy_core.state`).

Per key, three windows (``Window`` names ``key:NAME:requests``, ``key:NAME:tokens``, ``key:NAME:spend``):
requests and tokens over 60 seconds, spend (USD) over ``budget_period``; each opens at its first
count. Every request of every key is counted, limited or not, so the usage route (and the dashboard)
sees everyone.

* Before any upstream call (``ccproxy_request_received``, after the body is parsed): a model outside
  ``models`` → 403; then one atomic ``take``: the request is counted when the requests window is
  below ``rpm`` and the tokens and spend windows below ``tpm`` and ``budget_usd``, else 429 with
  ``retry-after`` (the seconds until the refusing window ends), ``budget_exceeded`` for the budget.
  A refused request never reaches the upstream.
* After the request (``ccproxy_stream_end``, after the ``usage`` plugin priced it): its tokens
  (input, cached input and output) and ``ctx.cost`` are added.
* The state failing: ``state.on_error: closed`` → 503 ``overloaded`` with ``retry-after: 1``;
  ``open`` → the request passes uncounted. The backend logs the outage's start and end once each.
* ``GET /v1/ccproxy/keys/{name}/usage`` with an admin key (``x-api-key`` or Bearer): the three
  windows as ``{"used", "limit", "window_seconds", "resets_in"}`` (:meth:`GatewayPlugin.usage`,
  which the dashboard calls directly, finding this object on ``app.ctx.gateway``).
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

from sanic import Request, Sanic, response

from ccproxy_core import (
    Check,
    NotFound,
    Overloaded,
    PermissionDenied,
    ProxyError,
    RateLimited,
    RequestContext,
    StateBackend,
    StateUnavailable,
    Window,
    hookimpl,
)

from .auth import AuthPlugin, AuthSettings, ClientKey

MINUTE = 60.0
BUDGET_EXCEEDED = "budget_exceeded"


class KeyWindows:
    """The three windows of one key and their limits."""

    __slots__ = ("key", "requests", "tokens", "spend", "models", "checks", "_checked")

    def __init__(self, key: ClientKey) -> None:
        self.key = key
        self.requests = Window(f"key:{key.name}:requests", MINUTE)
        self.tokens = Window(f"key:{key.name}:tokens", MINUTE)
        self.spend = Window(f"key:{key.name}:spend", key.budget_seconds)
        self.models = key.models
        # The request is always counted; tokens and spend are only read, and only when limited.
        wanted = [(self.requests, key.rpm, 1), (self.tokens, key.tpm, 0), (self.spend, key.budget_usd, 0)]
        self._checked = [i for i, (_, limit, amount) in enumerate(wanted) if limit is not None or amount]
        self.checks = [Check(*wanted[i]) for i in self._checked]

    def refusal(self, index: int, retry_after: float) -> ProxyError:
        """The error for ``self.checks[index]`` refusing, its window ending in ``retry_after`` seconds."""
        key = self.key
        seconds = str(max(1, math.ceil(retry_after)))
        headers = {"retry-after": seconds}
        index = self._checked[index]
        if index == 0:
            return RateLimited(f"rate limit: key {key.name!r} may make {key.rpm} requests per minute; "
                               f"retry in {seconds}s", headers=headers)
        if index == 1:
            return RateLimited(f"rate limit: key {key.name!r} may use {key.tpm} tokens per minute; "
                               f"retry in {seconds}s", headers=headers)
        return ProxyError(f"{BUDGET_EXCEEDED}: key {key.name!r} has spent its ${key.budget_usd:g} budget for "
                          f"{key.budget_period}; it renews in {seconds}s", status=429, kind=BUDGET_EXCEEDED,
                          headers=headers)


class GatewayPlugin(AuthPlugin):
    """The auth plugin's hooks plus limits, budgets and usage (see the module docstring)."""

    def __init__(self, keys: list[ClientKey], settings: AuthSettings, admin_keys: tuple[str, ...]) -> None:
        super().__init__(keys, settings, admin_keys)
        self.windows = {k.name: KeyWindows(k) for k in keys}
        self.state: StateBackend | None = None
        self.fail_open = False

    @hookimpl
    def ccproxy_startup(self, app: Sanic) -> None:
        super().ccproxy_startup(app)
        self.state = app.ctx.state
        app.ctx.gateway = self  # the dashboard reads each key's usage through it
        self.fail_open = app.ctx.config.state.on_error == "open"

    @hookimpl
    async def ccproxy_request_received(self, ctx: RequestContext) -> None:
        found = self.windows.get(ctx.client_key or "")
        if found is None or self.state is None:
            return
        model = ctx.model_requested or ""
        if found.models is not None and not any(fnmatch.fnmatchcase(model, glob) for glob in found.models):
            raise PermissionDenied(f"key {found.key.name!r} may not use model {model!r}")
        try:
            verdict = await self.state.take(found.checks)
        except StateUnavailable:
            if self.fail_open:
                return
            raise Overloaded("the gateway's shared state is unavailable; limits cannot be checked",
                             headers={"retry-after": "1"}) from None
        if verdict.refused is not None:
            raise found.refusal(verdict.refused, verdict.retry_after)

    @hookimpl
    def ccproxy_stream_end(self, ctx: RequestContext) -> None:
        # A plain call (add_now: no backend's add waits): an async end hook would make the core end
        # every request in a shielded task of its own (~26k instructions per request).
        found = self.windows.get(ctx.client_key or "")
        usage = ctx.usage
        if found is None or self.state is None or usage is None:
            return
        tokens = (usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
                  + usage.output_tokens)
        try:
            self.state.add_now([(found.tokens, tokens), (found.spend, ctx.cost or 0.0)])
        except StateUnavailable:
            pass  # logged by the backend; these tokens go uncounted

    async def usage(self, name: str) -> dict[str, Any]:
        """Key ``name``'s current windows (raises :class:`NotFound` for an unknown name,
        ``StateUnavailable`` when the state cannot answer)."""
        found = self.windows.get(name)
        if found is None or self.state is None:
            raise NotFound(f"no key is called {name!r}")
        key = found.key
        windows = (("requests", found.requests, key.rpm), ("tokens", found.tokens, key.tpm),
                   ("spend_usd", found.spend, key.budget_usd))
        values = await self.state.read([w for _, w, _ in windows])
        report: dict[str, Any] = {"name": name, "backend": self.state.kind}
        for (label, window, limit), (used, left) in zip(windows, values):
            report[label] = {
                "used": round(used, 10) if label == "spend_usd" else int(used),
                "limit": limit,
                "window_seconds": window.period,
                "resets_in": round(left, 3),
            }
        return report

    @hookimpl
    def ccproxy_register_routes(self, app: Sanic) -> None:
        super().ccproxy_register_routes(app)

        async def key_usage(request: Request, name: str) -> response.HTTPResponse:
            # An admin route: the auth middleware has checked the admin key (403 when none is configured).
            try:
                return response.json(await self.usage(name))
            except StateUnavailable:
                raise Overloaded("the gateway's shared state is unavailable", headers={"retry-after": "1"}) from None

        app.add_route(key_usage, "/v1/ccproxy/keys/<name:str>/usage", methods=["GET"], name="ccproxy_key_usage",
                      ctx_ccproxy_access="admin")
