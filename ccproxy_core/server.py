"""The Sanic application: routes, per-worker resources and the error boundary."""

from __future__ import annotations

import asyncio
import http.cookiejar
import itertools
import logging
import ssl
import time
from typing import Any, Iterable

import httpx
from sanic import Request, Sanic, response
from sanic.exceptions import SanicException
from sanic.handlers import ErrorHandler

from . import dialects
from .config import Config, Limits, ProviderConfig, load_config
from .context import ANTHROPIC, OPENAI, REJECTED, RESPONSES
from .errors import ConfigError, MethodNotAllowed, NotFound, Overloaded, PayloadTooLarge, ProxyError
from .intake import DeadlineProtocol, Intake
from .listen import use_per_worker_sockets
from .headers import REQUEST_ID_HEADER, request_id
from .plugins import Plugins
from .models import ModelCatalog, list_payload
from .proxy import Proxy
from .state import open_state
from .streaming import END_WRITE_TIMEOUT
from .transport import FastTransport, ResponseHeadTooLarge, environment_proxy
from .workers import manage_workers

log = logging.getLogger("ccproxy")
_app_numbers = itertools.count(1)

#: Client dialect of each proxy route.
PROXY_ROUTES = {"/v1/messages": ANTHROPIC, "/v1/messages/count_tokens": ANTHROPIC, "/v1/chat/completions": OPENAI,
                "/v1/responses": RESPONSES, "/v1/responses/input_tokens": RESPONSES}
#: The route that counts a Responses request's input tokens (``Proxy.input_tokens``).
INPUT_TOKENS_ROUTE = "/v1/responses/input_tokens"


def dialect_for_path(path: str) -> str:
    """The dialect errors on ``path`` are written in (OpenAI's unless the route is Anthropic's or Responses')."""
    path = path.rstrip("/")
    if path.endswith(("/messages", "/messages/count_tokens")):
        return ANTHROPIC
    if path.endswith("/responses") or path.endswith(INPUT_TOKENS_ROUTE):
        return RESPONSES
    return OPENAI


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
        if error.status >= 500 and not isinstance(error, Overloaded):  # Overloaded: a refusal, said where decided
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
    """An httpx client that never stores or sends cookies (a shared gateway must not mix users').

    ``trust_env=False``: the proxy environment is applied by the transport itself
    (:func:`default_transport`), since the core calls transports directly.
    """
    client = httpx.AsyncClient(transport=transport, timeout=None, follow_redirects=False, trust_env=False)
    client.cookies.jar.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return client


def tls_context(provider: ProviderConfig, config_path: str = "") -> ssl.SSLContext | None:
    """The TLS context for ``provider`` (None for a plain-HTTP provider without ``ca_file``).

    One store for both transports: certifi's bundle, as httpx builds it by default
    (``SSL_CERT_FILE``/``SSL_CERT_DIR`` override it), or ``ca_file`` instead when set;
    ``verify_tls: false`` turns verification off.

    Raises:
        ConfigError: ``ca_file`` is missing, unreadable or holds no PEM certificate.
    """
    if not provider.ca_file and not provider.base_url.startswith("https://"):
        return None
    if not provider.verify_tls:
        ctx = httpx.create_ssl_context(verify=False)
    elif provider.ca_file:
        try:
            ctx = ssl.create_default_context(cafile=provider.ca_file)
        except (OSError, ssl.SSLError) as exc:
            reason = "not a PEM file of CA certificates" if isinstance(exc, ssl.SSLError) else exc.strerror or str(exc)
            raise ConfigError(
                f"{config_path or '<config>'}: providers.{provider.name}.ca_file: cannot load {provider.ca_file!r}: {reason}"
            ) from None
    else:
        ctx = httpx.create_ssl_context(verify=True)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class _BoundedHTTPTransport(httpx.AsyncHTTPTransport):
    """httpx's stock transport plus ``limits.max_response_headers`` (h11 bounds the head's size itself)."""

    def __init__(self, *, max_headers: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_headers = max_headers

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:  # noqa: D102
        response = await super().handle_async_request(request)
        if len(response.headers.raw) > self._max_headers:
            await response.aclose()
            raise ResponseHeadTooLarge(
                f"the upstream's response has more than limits.max_response_headers ({self._max_headers}) header lines",
                request=request,
            )
        return response


def default_transport(
    provider: ProviderConfig, limits: Limits | None = None, ssl_context: ssl.SSLContext | None = None
) -> httpx.AsyncBaseTransport:
    """The transport used when no plugin supplies one: the project's own, or httpx's stock one.

    Both get the provider's pool settings, ``ssl_context`` (see :func:`tls_context`), the
    response-head limits and the proxy the environment names for ``base_url``.
    """
    limits = limits or Limits()
    if ssl_context is None:
        ssl_context = tls_context(provider)
    if provider.transport == "fast":
        return FastTransport(
            verify=provider.verify_tls,
            ssl_context=ssl_context,
            max_connections=provider.max_connections,
            max_keepalive=provider.max_keepalive,
            keepalive_expiry=provider.keepalive_expiry,
            max_head_bytes=limits.max_response_head_bytes,
            max_headers=limits.max_response_headers,
        )
    url = httpx.URL(provider.base_url)
    return _BoundedHTTPTransport(
        verify=ssl_context if ssl_context is not None else provider.verify_tls,
        limits=httpx.Limits(
            max_connections=provider.max_connections,
            max_keepalive_connections=provider.max_keepalive,
            keepalive_expiry=provider.keepalive_expiry,
        ),
        proxy=environment_proxy(url.scheme, url.host),
        trust_env=False,
        max_headers=limits.max_response_headers,
    )


class _App(Sanic):
    """Sanic serving with :class:`DeadlineProtocol` (deadlines on the request head and body) unless
    told otherwise: ``sanic app.app`` (any number of workers), ``app.run`` and ``create_server``
    all prepare the server through these two methods."""

    def prepare(self, *args: Any, protocol: Any = None, **kwargs: Any) -> None:
        super().prepare(*args, protocol=protocol or DeadlineProtocol, **kwargs)

    async def create_server(self, *args: Any, protocol: Any = None, **kwargs: Any) -> Any:
        return await super().create_server(*args, protocol=protocol or DeadlineProtocol, **kwargs)


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
    tls = {name: tls_context(provider, config.path) for name, provider in config.providers.items()}
    app = _App(name or ("ccproxy" if next(_app_numbers) == 1 else f"ccproxy_{time.monotonic_ns()}"))
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
    intake = app.ctx.intake = Intake(config, loaded)
    if config.per_worker_sockets:
        use_per_worker_sockets(app)
    manage_workers(app, config.worker_timeout)

    @app.before_server_start
    async def _open(app: Sanic) -> None:
        clients: dict[str, httpx.AsyncClient] = {}
        transports: dict[str, httpx.AsyncBaseTransport] = {}
        for provider in config.providers.values():
            transport = await loaded.first("ccproxy_upstream_transport", provider=provider) or default_transport(
                provider, config.limits, tls[provider.name])
            transports[provider.name] = transport
            clients[provider.name] = _no_cookies_client(transport)
        app.ctx.clients = clients
        app.ctx.transports = transports
        app.ctx.proxy = Proxy(config, loaded, clients, transports)
        app.ctx.catalog = ModelCatalog(config, loaded, clients)
        app.ctx.state = open_state(config.state)  # shared counters and values (ccproxy_core.state)
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
        state = getattr(app.ctx, "state", None)
        if state is not None:
            await state.close()
        for client in getattr(app.ctx, "clients", {}).values():
            await client.aclose()

    def proxy_route(method: str, dialect: str) -> Any:
        """The handler of a proxy route in ``dialect`` whose request ``Proxy.<method>`` serves."""

        async def proxy_route(request: Request) -> Any:
            proxy: Proxy = request.app.ctx.proxy
            ctx = proxy.context(request, dialect)  # the route's own (Sanic also routes "/v1/messages/" here)
            request.ctx.ccproxy = ctx
            try:
                await intake.receive(request, ctx)
                return await getattr(proxy, method)(request, ctx)
            except ProxyError as error:
                ctx.outcome, ctx.error, ctx.status = REJECTED, error, error.status
                ctx.duration = ctx.elapsed()
                await loaded.notify("ccproxy_stream_end", ctx=ctx)
                raise

        return proxy_route

    for path, dialect in PROXY_ROUTES.items():
        # stream=True: Sanic reads no body before the handler; the intake reads it after the head hooks.
        handler = proxy_route("input_tokens" if path == INPUT_TOKENS_ROUTE else "handle", dialect)
        app.add_route(handler, path, methods=["POST"], name=path.strip("/").replace("/", "_"), stream=True)

    def _model_error(request: Request, error: ProxyError) -> response.HTTPResponse:
        dialect = ANTHROPIC if "anthropic-version" in request.headers else OPENAI
        return response.raw(dialects.error_body(dialect, error), status=error.status,
                            headers={REQUEST_ID_HEADER: request_id(_client_request_id(request))},
                            content_type="application/json")

    @app.get("/v1/models")
    async def models(request: Request) -> response.HTTPResponse:
        listed = await app.ctx.catalog.models()
        return response.json(list_payload(listed, "anthropic-version" in request.headers))

    @app.get("/v1/models/<model_id:path>")
    async def model(request: Request, model_id: str) -> response.HTTPResponse:
        for entry in await app.ctx.catalog.models():
            if entry.id == model_id:
                return response.json(entry.anthropic() if "anthropic-version" in request.headers else entry.openai())
        return _model_error(request, NotFound(f"model {model_id!r} is not served here (GET /v1/models lists them)"))

    @app.get("/health")
    async def health(request: Request) -> response.HTTPResponse:
        return response.json({"status": "ok"})

    @app.get("/plugins")
    async def plugins_route(request: Request) -> response.HTTPResponse:
        return response.json(loaded.describe())

    loaded.call_sync("ccproxy_register_routes", app=app, config=config)
    return app
