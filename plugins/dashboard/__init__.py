"""A live dashboard at ``GET /dashboard``: one page, served from this package, pushed over SSE.

Routes (``path`` is the setting, ``/dashboard`` by default):

* ``GET {path}``, ``GET {path}/dashboard.js``: the page and its script (``static/`` beside this
  module, ``__PATH__`` replaced by ``path`` and ``__KEYED__`` by whether the auth plugin has keys; no
  build step, no CDN). They hold no data, so they are public (the auth plugin's route flag
  ``ctx_ccproxy_access="public"``).
* ``GET {path}/events``: ``text/event-stream``, one ``data:`` line of JSON (the
  :meth:`Aggregate.snapshot`) whenever something changed, at most every ``interval`` seconds, and a
  comment every 15 s otherwise. It needs an admin key when keys are on (``ctx_ccproxy_access="admin"``:
  one of ``plugins.auth.admin_keys``); the page asks for it and sends it as ``Authorization: Bearer``.

Per request the work is ``ccproxy_stream_start`` (streams only) and ``ccproxy_stream_end``: a few dict
and deque updates (:mod:`.aggregate`). Disabled (``plugins: disabled: [dashboard]``) it registers
nothing and costs nothing.

Across workers and instances: with ``state.backend`` ``sqlite`` or ``redis`` each worker publishes its
numbers once per ``interval`` and every push merges all of them (:mod:`.shared`; the snapshot's
``shared`` says how many workers it holds). With ``memory`` (one worker) it shows its own, as
``shared: null``. When the state fails the push carries this worker's numbers and ``shared`` says the
shared view is unavailable (``{"error": ...}``). With the gateway's keys (``GatewayPlugin``, found on
``app.ctx.gateway``) each push also carries ``keys``: every key's requests, tokens and spend beside
its limits, as the usage route shows them.

Settings (``plugins: dashboard: {...}``):

* ``path``: where the page is (default ``/dashboard``).
* ``recent``: how many of the last requests the table keeps (default 100, at most 1000).
* ``interval``: the shortest time between two pushes, in seconds (default 1.0, 0.1 to 60).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccproxy_core import Config, PluginSettings, RequestContext, StateUnavailable, hookimpl

from ..auth import settings_of as auth_settings
from .aggregate import MAX_LABELS, Aggregate, view
from .shared import Shared

NAME = "dashboard"
STATIC = Path(__file__).resolve().parent / "static"
FILES = {"": ("index.html", "text/html; charset=utf-8"), "/dashboard.js": ("dashboard.js", "text/javascript")}
#: Seconds between keep-alive comments when nothing changed.
KEEPALIVE = 15.0


@dataclass
class DashboardSettings:
    """The ``plugins: dashboard:`` block (see the module docstring)."""

    path: str = "/dashboard"
    recent: int = 100
    interval: float = 1.0


@hookimpl
def ccproxy_configure(config: Config, settings: PluginSettings) -> DashboardPlugin:
    loaded: DashboardSettings = settings.load(DashboardSettings)
    if not loaded.path.startswith("/") or loaded.path == "/":
        raise settings.error("path", f"must start with '/' and name a path, got {loaded.path!r}")
    if not 1 <= loaded.recent <= 1000:
        raise settings.error("recent", f"must be 1..1000, got {loaded.recent}")
    if not 0.1 <= loaded.interval <= 60:
        raise settings.error("interval", f"must be 0.1..60 seconds, got {loaded.interval}")
    loaded.path = loaded.path.rstrip("/")
    return DashboardPlugin(config, loaded)


class DashboardPlugin:
    """The hooks of one app: its routes and its worker's :class:`Aggregate`."""

    def __init__(self, config: Config, settings: DashboardSettings) -> None:
        self.config = config
        self.settings = settings
        self.aggregate: Aggregate | None = None
        self.closing: asyncio.Event | None = None
        self.shared: Shared | None = None
        self.publisher: asyncio.Task[None] | None = None
        self.app: Any = None

    @hookimpl
    def ccproxy_register_routes(self, app: Any) -> None:
        from sanic import response

        path = self.settings.path
        auth = auth_settings(self.config)
        keyed = "true" if auth.keys or any(auth.admin_keys) else "false"  # the page asks for a key first
        for suffix, (filename, content_type) in FILES.items():
            body = (STATIC / filename).read_text().replace("__PATH__", path).replace("__KEYED__", keyed).encode()

            async def static(request: Any, body: bytes = body, content_type: str = content_type) -> Any:
                return response.raw(body, content_type=content_type, headers={"cache-control": "no-cache"})

            app.add_route(static, path + suffix, methods=["GET"], name=f"ccproxy_dashboard_{filename.replace('.', '_')}",
                          ctx_ccproxy_access="public")
        app.register_listener(self.stop_streams, "before_server_stop")
        app.add_route(self.events, path + "/events", methods=["GET"], name="ccproxy_dashboard_events",
                      ctx_ccproxy_access="admin")

    async def events(self, request: Any) -> Any:
        """The SSE stream of snapshots, until the client leaves or the worker stops."""
        from sanic import response

        aggregate, closing = self.aggregate, self.closing
        if aggregate is None or closing is None:
            return response.text("the dashboard is not available before start-up\n", status=503)
        stream = await request.respond(
            content_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
        seen: Any = None
        quiet = 0.0
        while not closing.is_set():
            snapshot, changes = await self.snapshot()
            if changes != seen:
                seen = changes
                await stream.send(f"data: {json.dumps(snapshot, separators=(',', ':'))}\n\n")
                quiet = 0.0
            elif quiet >= KEEPALIVE:
                await stream.send(": keep-alive\n\n")
                quiet = 0.0
            try:
                await asyncio.wait_for(closing.wait(), self.settings.interval)
            except asyncio.TimeoutError:
                quiet += self.settings.interval
        await stream.eof()

    async def snapshot(self) -> tuple[dict[str, Any], Any]:
        """What one push carries, and a value that differs whenever something the page shows changed."""
        aggregate = self.aggregate
        assert aggregate is not None
        now, recent = aggregate.clock(), self.settings.recent
        shared: dict[str, Any] | None = None
        parts = [aggregate.export()]
        if self.shared is not None:
            try:
                parts = await self.shared.gather()
                shared = {"workers": len(parts)}
            except StateUnavailable as exc:
                shared = {"error": f"the shared view is unavailable: {exc}"}
        keys = await self.key_usage()
        if isinstance(keys, str):
            shared, keys = {"error": keys}, []
        snapshot = {**view(parts, now, recent), "worker": os.getpid(), "shared": shared, "keys": keys}
        used = [[k[w]["used"] for w in ("requests", "tokens", "spend_usd")] for k in keys]  # not resets_in
        changes = ([p["version"] for p in parts], shared, used)
        return snapshot, changes

    async def key_usage(self) -> list[dict[str, Any]] | str:
        """Each gateway key's windows and limits (``GatewayPlugin.usage``), the first :data:`MAX_LABELS`;
        a message when the state cannot answer."""
        gateway = getattr(self.app.ctx, "gateway", None) if self.app is not None else None
        if gateway is None:
            return []
        try:
            return [await gateway.usage(name) for name in list(gateway.windows)[:MAX_LABELS]]
        except StateUnavailable as exc:
            return f"the shared view is unavailable: {exc}"

    @hookimpl
    def ccproxy_startup(self, app: Any) -> None:
        self.app = app
        self.aggregate = Aggregate(self.config, self.settings.recent)
        self.closing = asyncio.Event()
        if app.ctx.state.kind != "memory":
            self.shared = Shared(app.ctx.state, self.aggregate, self.settings.interval)
            self.publisher = asyncio.get_running_loop().create_task(self.publish(self.shared, self.closing))

    async def publish(self, shared: Shared, closing: asyncio.Event) -> None:
        """Publish this worker's numbers once per interval until the worker stops; failures wait for the next."""
        while not closing.is_set():
            try:
                await shared.publish()
            except StateUnavailable:
                pass  # logged by the backend; the next interval tries again
            try:
                await asyncio.wait_for(closing.wait(), self.settings.interval)
            except asyncio.TimeoutError:
                pass

    def stop_streams(self, app: Any) -> None:
        """The worker begins to stop: end the event streams now, so they do not hold up its shutdown."""
        if self.closing is not None:
            self.closing.set()

    @hookimpl
    async def ccproxy_shutdown(self) -> None:
        """The publisher ends before the core closes the state."""
        if self.closing is not None:
            self.closing.set()
        if self.publisher is not None:
            await asyncio.wait([self.publisher])  # ended, or cancelled by whoever stops the loop: never raises
            self.publisher = None

    @hookimpl
    def ccproxy_stream_start(self, ctx: RequestContext) -> None:
        if ctx.stream and self.aggregate is not None:
            self.aggregate.started(ctx)

    @hookimpl
    def ccproxy_stream_end(self, ctx: RequestContext) -> None:
        if self.aggregate is not None:
            self.aggregate.ended(ctx)
