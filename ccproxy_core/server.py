"""The Sanic application: routes, per-worker resources and the error boundary."""

from __future__ import annotations

import asyncio
import http.cookiejar
import itertools
import logging
import time
from typing import Any, Iterable

import httpx
from sanic import Request, Sanic, response
from sanic.exceptions import SanicException
from sanic.handlers import ErrorHandler

from . import dialects
from .config import Config, ProviderConfig, load_config
from .context import ANTHROPIC, OPENAI, REJECTED
from .errors import MethodNotAllowed, NotFound, PayloadTooLarge, ProxyError
from .headers import REQUEST_ID_HEADER, request_id
from .plugins import Plugins
from .proxy import Proxy
from .streaming import END_WRITE_TIMEOUT
from .transport import FastTransport

log = logging.getLogger("ccproxy")
_app_numbers = itertools.count(1)

#: Client dialect of each proxy route.
PROXY_ROUTES = {"/v1/messages": ANTHROPIC, "/v1/chat/completions": OPENAI}


def dialect_for_path(path: str) -> str:
    """The dialect errors on ``path`` are written in (OpenAI's unless the route is Anthropic's)."""
    return ANTHROPIC if path.rstrip("/").endswith("/messages") else OPENAI


def _error_path(request: Request) -> str:
    """The path an error answers; for a head Sanic could not parse, read from the raw request line."""
    if request.method != "NONE":
        return request.path
    raw = getattr(getattr(request, "stream", None), "recv_buffer", b"") or b""
    line = bytes(raw[:2048]).split(b"\r\n", 1)[0].split(b" ")
    if len(line) >= 2:
        target = line[1].decode("latin-1").split("?", 1)[0]
        if "://" in target:  # absolute form
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        return target
    return request.path


class DialectErrorHandler(ErrorHandler):
    """The error boundary: every error leaves in the client's dialect, never with a traceback."""

    def default(self, request: Request, exception: Exception) -> response.HTTPResponse:
        error = to_proxy_error(exception)
        if error.status >= 500:
            log.error("unhandled error on %s %s", request.method, request.path, exc_info=exception)
        ctx = getattr(request.ctx, "ccproxy", None)
        headers = dict(error.headers)
        # Every error carries the gateway's id; before a request context exists (404, 405, 413,
        # a malformed head) one is made here, seeded by a sane client x-request-id as usual.
        headers[REQUEST_ID_HEADER] = ctx.request_id if ctx is not None else request_id(_client_request_id(request))
        return response.raw(
            dialects.error_body(dialect_for_path(_error_path(request)), error),
            status=error.status,
            headers=headers,
            content_type="application/json",
        )


def _client_request_id(request: Request) -> str | None:
    try:
        return request.headers.get("x-request-id")
    except Exception:  # a head Sanic could not parse
        return None


def to_proxy_error(exception: Exception) -> ProxyError:
    """Map any exception that reached the boundary to a :class:`ProxyError`."""
    if isinstance(exception, ProxyError):
        return exception
    if isinstance(exception, asyncio.CancelledError):  # sanic.exceptions.RequestCancelled: the client left
        return ProxyError("the client closed the connection", status=499, kind="invalid_request_error")
    if isinstance(exception, SanicException):
        status = exception.status_code
        if status == 404:
            return NotFound("no such route")
        if status == 405:
            return MethodNotAllowed("method not allowed on this route")
        if status == 413:
            if "header" in str(exception).lower():
                return ProxyError(
                    "the request headers are larger than the configured limit",
                    status=431,
                    kind="request_too_large",
                )
            return PayloadTooLarge("the request body is larger than the configured limit")
        if status < 500:
            return ProxyError(str(exception) or "bad request", status=status, kind="invalid_request_error")
    return ProxyError("internal error in the proxy", status=500)


def _no_cookies_client(transport: httpx.AsyncBaseTransport) -> httpx.AsyncClient:
    """An httpx client that never stores or sends cookies (a shared gateway must not mix users')."""
    client = httpx.AsyncClient(transport=transport, timeout=None, follow_redirects=False, trust_env=False)
    client.cookies.jar.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return client


def default_transport(provider: ProviderConfig) -> httpx.AsyncBaseTransport:
    """The transport used when no plugin supplies one: the project's own, or httpx's stock one."""
    if provider.transport == "fast":
        return FastTransport(verify=provider.verify_tls, max_keepalive=provider.max_keepalive)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=provider.max_keepalive)
    return httpx.AsyncHTTPTransport(verify=provider.verify_tls, limits=limits, trust_env=True)


def create_app(
    config: Config | str | None = None,
    *,
    plugins: Iterable[tuple[str, object]] = (),
    entry_points: bool = True,
    name: str | None = None,
) -> Sanic:
    """Build the service.

    Args:
        config: a :class:`Config`, a path to a YAML file, or None for
            ``$CCPROXY_CONFIG`` / ``config.yaml``.
        plugins: extra ``(name, plugin)`` pairs registered after the entry points.
        entry_points: load installed plugins (tests may turn this off).
        name: the Sanic app name (unique per process; generated when None).

    Raises:
        ConfigError: the configuration or a plugin cannot be used.
    """
    if not isinstance(config, Config):
        config = load_config(config)
    loaded = Plugins(config, plugins, entry_points=entry_points)
    app = Sanic(name or ("ccproxy" if next(_app_numbers) == 1 else f"ccproxy_{time.monotonic_ns()}"))
    app.error_handler = DialectErrorHandler()
    app.config.REQUEST_MAX_SIZE = config.limits.max_body_bytes
    # Process-wide in Sanic (and never above min(16384, REQUEST_MAX_SIZE)).
    app.config.REQUEST_MAX_HEADER_SIZE = config.limits.max_header_bytes
    # Sanic waits this long for connections after SIGTERM; our drain ends responses after shutdown_grace.
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = config.shutdown_grace + END_WRITE_TIMEOUT + 3
    app.config.RESPONSE_TIMEOUT = 365 * 24 * 3600  # the core's own timeouts govern upstream waits
    app.config.KEEP_ALIVE_TIMEOUT = 75
    app.config.NOISY_EXCEPTIONS = False
    app.ctx.config = config
    app.ctx.plugins = loaded
    app.ctx.started_at = time.time()

    @app.before_server_start
    async def _open(app: Sanic) -> None:
        clients: dict[str, httpx.AsyncClient] = {}
        transports: dict[str, httpx.AsyncBaseTransport] = {}
        for provider in config.providers.values():
            transport = await loaded.first("ccproxy_upstream_transport", provider=provider) or default_transport(provider)
            transports[provider.name] = transport
            clients[provider.name] = _no_cookies_client(transport)
        app.ctx.clients = clients
        app.ctx.transports = transports
        app.ctx.proxy = Proxy(config, loaded, clients, transports)
        await loaded.call("ccproxy_startup", app=app, config=config)

    @app.before_server_stop
    async def _drain(app: Sanic) -> None:
        # Runs before Sanic closes the listener; the drain goes on while Sanic waits for
        # connections (GRACEFUL_SHUTDOWN_TIMEOUT), so new connections are no longer accepted.
        proxy = getattr(app.ctx, "proxy", None)
        if proxy is not None:
            app.ctx.drain = asyncio.get_running_loop().create_task(proxy.handler.drain(config.shutdown_grace))

    @app.after_server_stop
    async def _close(app: Sanic) -> None:
        drain = getattr(app.ctx, "drain", None)
        if drain is not None and not drain.done():
            try:
                await asyncio.wait_for(drain, END_WRITE_TIMEOUT + 1)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        await loaded.notify("ccproxy_shutdown", app=app)
        for client in getattr(app.ctx, "clients", {}).values():
            await client.aclose()

    async def proxy_route(request: Request) -> Any:
        proxy: Proxy = request.app.ctx.proxy
        # Sanic also routes "/v1/messages/" here.
        ctx = proxy.context(request, PROXY_ROUTES.get(request.path.rstrip("/")) or dialect_for_path(request.path))
        request.ctx.ccproxy = ctx
        try:
            return await proxy.handle(request, ctx)
        except ProxyError as error:
            ctx.outcome, ctx.error, ctx.status = REJECTED, error, error.status
            ctx.duration = ctx.elapsed()
            await loaded.notify("ccproxy_stream_end", ctx=ctx)
            raise

    for path in PROXY_ROUTES:
        app.add_route(proxy_route, path, methods=["POST"], name=path.strip("/").replace("/", "_"))

    @app.get("/v1/models")
    async def models(request: Request) -> response.HTTPResponse:
        return response.json(models_payload(config))

    @app.get("/health")
    async def health(request: Request) -> response.HTTPResponse:
        return response.json({"status": "ok"})

    @app.get("/plugins")
    async def plugins_route(request: Request) -> response.HTTPResponse:
        return response.json(loaded.describe())

    loaded.call_sync("ccproxy_register_routes", app=app, config=config)
    return app


def models_payload(config: Config) -> dict[str, Any]:
    """The configured models in a shape both SDKs' model lists accept."""
    names: dict[str, str] = {}
    for alias, target in config.models.items():
        names.setdefault(alias, target.provider or "")
    for provider in config.providers.values():
        for pattern in provider.models:
            if not any(c in pattern for c in "*?["):
                names.setdefault(pattern, provider.name)
    created = 1_700_000_000
    data = [
        {
            "id": model,
            "object": "model",
            "type": "model",
            "display_name": model,
            "created": created,
            "created_at": "2023-11-14T22:13:20Z",
            "owned_by": owner or "ccproxy",
        }
        for model, owner in names.items()
    ]
    return {
        "object": "list",
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
