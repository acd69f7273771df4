"""Readiness at ``GET /health/ready``; ``GET /health`` (the core's) only says the process is alive.

``/health/ready`` answers 503 with ``"status": "starting"`` until the worker has finished start-up
(configuration loaded, every plugin's ``ccproxy_startup`` done, the server accepting requests), 200
with ``"status": "ready"`` from then on, and 503 with ``"status": "stopping"`` once the worker
begins to shut down, so a load balancer stops sending it new requests. It also shows each
provider's last upstream result as this worker saw it (from ``ctx.attempts`` at the end of each
request): status, time, error. Upstream failures do not make the worker unready (the proxy still
answers, with the upstream's error); they are there to be read.

With several workers each one answers for itself (``pid`` says which).

The path is public (under the ``auth`` plugin's ``/health``), so when proxy keys are configured
only a caller that presents one gets those details; anyone else gets the status code and
``{"status": ...}`` alone. Without keys everyone gets the details (the proxy is then reachable
from this machine only, see the ``auth`` plugin).

Settings (``plugins: health: {...}``):

* ``path``: the route (default ``/health/ready``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from ccproxy_core import UPSTREAM_ERROR, Config, PluginSettings, RequestContext, hookimpl

NAME = "health"

#: Statuses that say the provider itself is in trouble (not the client's request).
_UNHEALTHY_STATUS = frozenset({408, 429, 500, 502, 503, 504, 529})


class Health:
    """One worker's readiness and each provider's last result."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.phase = "starting"
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.plugins: Any = None
        #: Each provider's last attempt: (status, error, seconds since the epoch, elapsed, model, request id),
        #: kept by the plugin's ``ccproxy_stream_end``; :meth:`payload` shows it.
        self.last: dict[str, tuple[Any, ...]] = {}

    def result(self, provider: str) -> dict[str, Any] | None:
        """``provider``'s last result as ``/health/ready`` shows it, or None."""
        found = self.last.get(provider)
        if found is None:
            return None
        status, error, at, elapsed, model, request_id = found
        return {
            "ok": error is None and status is not None and status not in _UNHEALTHY_STATUS,
            "status": status,
            "error": error,
            "at": round(at, 3),
            "elapsed_ms": round(elapsed * 1000, 1) if elapsed is not None else None,
            "model": model,
            "request_id": request_id,
        }

    def payload(self) -> dict[str, Any]:
        plugins = self.plugins
        info = getattr(plugins, "info", {}) if plugins is not None else {}
        errors = getattr(plugins, "errors", {}) if plugins is not None else {}
        return {
            "status": self.phase,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 3),
            "ready_at": self.ready_at,
            "config": {
                "loaded": True,
                "path": self.config.path or None,
                "providers": len(self.config.providers),
                "models": len(self.config.models),
            },
            "plugins": {
                "started": self.phase != "starting",
                "enabled": sorted(name for name, i in info.items() if i.enabled),
                "disabled": sorted(name for name, i in info.items() if not i.enabled),
                "errors": {f"{plugin}.{hook}": count for (plugin, hook), count in sorted(errors.items())},
            },
            "providers": {
                name: {"format": provider.format, "last": self.result(name)}
                for name, provider in self.config.providers.items()
            },
        }


@dataclass(slots=True)
class HealthSettings:
    """The ``plugins: health:`` block."""

    path: str = "/health/ready"


@hookimpl
def ccproxy_configure(config: Config, settings: PluginSettings) -> HealthPlugin:
    """Check ``plugins: health:`` while the app is built; the app's readiness lives in what it returns."""
    loaded = settings.load(HealthSettings)
    if not loaded.path.startswith("/"):
        raise settings.error("path", f"must start with '/', got {loaded.path!r}")
    return HealthPlugin(Health(config), loaded.path)


class HealthPlugin:
    """The hooks of one app: its route, its listeners and the :class:`Health` they keep."""

    def __init__(self, health: Health, path: str) -> None:
        self.health = health
        self.path = path

    @hookimpl
    def ccproxy_register_routes(self, app: Any) -> None:
        from sanic import response

        health = self.health
        health.plugins = getattr(app.ctx, "plugins", None)

        def after_server_start(app: Any) -> None:
            # Listeners run after every before_server_start one, i.e. after all ccproxy_startup hooks.
            health.phase = "ready"
            health.ready_at = round(time.time(), 3)

        def before_server_stop(app: Any) -> None:
            health.phase = "stopping"

        app.register_listener(after_server_start, "after_server_start")
        app.register_listener(before_server_stop, "before_server_stop")

        async def ready_route(request: Any) -> Any:
            status = 200 if health.phase == "ready" else 503
            # Set by the auth plugin's middleware when keys are configured; absent without keys.
            if getattr(request.ctx, "ccproxy_authenticated", True):
                return response.json(health.payload(), status=status)
            return response.json({"status": health.phase}, status=status)

        app.add_route(ready_route, self.path, methods=["GET"], name="ccproxy_health_ready")

    @hookimpl
    def ccproxy_stream_end(self, ctx: RequestContext) -> None:
        """Each attempt's result becomes its provider's last one."""
        attempts = ctx.attempts
        if not attempts:
            return
        last, final = self.health.last, attempts[-1]
        for attempt in attempts:
            error = attempt.error
            if attempt is final and error is None and ctx.outcome == UPSTREAM_ERROR and ctx.error is not None:
                error = ctx.error.message  # failed after its head was relayed
            elapsed = attempt.elapsed
            at = ctx.started_at + (elapsed if elapsed is not None else ctx.elapsed())
            last[attempt.provider] = (attempt.status, error, at, elapsed, attempt.model, ctx.request_id)
