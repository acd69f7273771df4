"""The plugin contract: pluggy markers and hook specifications, nothing else.

Hooks are grouped by the phase of the service or of a request in which they run.
Every implementation may be a plain function or an ``async def`` (except the two
build-time hooks, ``ccproxy_configure`` and ``ccproxy_register_routes``); the core awaits
whatever is awaitable, one implementation after another, in pluggy's call order.
An implementation may accept any subset of a hook's arguments. ``@hookimpl(wrapper=True)``
wraps a hook whose implementations are all plain functions (pluggy's wrappers are
synchronous); a wrapper on a hook that has an ``async def`` implementation is refused.

Observer hooks (lifecycle events and header callbacks) are isolated: an exception
in one is logged once with the plugin's name and the request goes on. Hooks that
decide something (``firstresult``) or gate a request let a
:class:`ccproxy_core.ProxyError` through to the client in its own dialect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import httpx
    from sanic import Request, Sanic

    from .config import Config, ProviderConfig
    from .context import Attempt, RequestContext
    from .errors import ProxyError
    from .plugins import PluginSettings
    from .sse import SSEEvent
    from .streaming import ResponseAdapter

PROJECT_NAME = "ccproxy"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -- Service lifecycle (once per worker process) ---------------------------------


@hookspec
def ccproxy_configure(config: Config, settings: PluginSettings) -> object | None:
    """Read and check this plugin's own settings (its block under ``plugins:``).

    Runs once per app while it is built, before ``ccproxy_register_routes`` and
    before any worker starts, so a bad setting stops ``create_app``. Each
    implementation gets its own plugin's block as ``settings`` (empty when the
    config has none). Raise ``settings.error(key, message)`` (a
    :class:`ccproxy_core.ConfigError`) to refuse to start. Must be a plain function.

    Return an object to keep state per app: its ``ccproxy_*`` methods become more of
    this plugin's hook implementations, for this app only (two apps in one process
    never share it), from ``ccproxy_register_routes`` on.
    """


@hookspec
def ccproxy_register_routes(app: Sanic, config: Config) -> None:
    """Add routes to the Sanic app, e.g. ``/metrics``.

    Runs once per process while the app is built, before the server starts.
    Must be a plain function.
    """


@hookspec
def ccproxy_startup(app: Sanic, config: Config) -> None:
    """A worker is starting: open per-worker resources and store them on ``app.ctx``.

    Runs in the worker's event loop before it accepts requests. Raising
    :class:`ccproxy_core.ConfigError` stops start-up with that message.
    """


@hookspec
def ccproxy_shutdown(app: Sanic) -> None:
    """A worker has stopped serving: close what ``ccproxy_startup`` opened."""


@hookspec(firstresult=True)
def ccproxy_upstream_transport(provider: ProviderConfig) -> httpx.AsyncBaseTransport | None:
    """Return the httpx transport that carries requests to ``provider``, or None.

    Called once per provider per worker at start-up. The first non-None result
    wins; with none, the core's default transport is used.
    """


# -- Request phase (once per client request) -------------------------------------


@hookspec
def ccproxy_request_head(ctx: RequestContext, request: Request) -> None:
    """A request reached a proxy route; its head has arrived, its body has not been read.

    ``request.headers`` and ``ctx.request_id``, ``ctx.route``, ``ctx.client_dialect`` are
    there; ``ctx.body`` is None and ``request.body`` empty. Raise a
    :class:`ccproxy_core.ProxyError` (for example ``AuthenticationError``) to refuse the
    request before a byte of its body is read or held; any other exception is a plugin
    failure and refuses it with a 500 in the client's dialect.
    """


@hookspec
def ccproxy_request_received(ctx: RequestContext, request: Request) -> None:
    """A request reached a proxy route; ``ctx.body`` holds its parsed JSON body.

    Runs before routing. Raise a :class:`ccproxy_core.ProxyError` (for example
    ``AuthenticationError``) to refuse the request; any other exception is a
    plugin failure and refuses it with a 500 in the client's dialect.
    """


@hookspec(firstresult=True)
def ccproxy_request_adapter(ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any] | None:
    """Translate a request body from ``ctx.client_dialect`` to ``ctx.upstream_dialect``.

    Called only when the two differ. Return the body to send upstream; raise
    :class:`ccproxy_core.InvalidRequest` for what the upstream cannot express.
    The first non-None result wins; with none the request is refused with 400.
    """


@hookspec
def ccproxy_request_body(ctx: RequestContext, body: dict[str, Any]) -> bool | None:
    """Change the JSON body sent upstream; return True when you changed it.

    ``body`` is a shallow copy of what goes upstream (already translated when the
    dialects differ): replace top-level keys, do not mutate nested values in place.
    Only when some implementation returns True (or the body was translated) is the
    body re-serialised; otherwise the client's bytes are sent unchanged (an alias
    replaces the value of their top-level ``model``).

    An implementation that changes only attempts streamed from the upstream
    (``ctx.upstream_stream``) may say so with ``streamed_only = True`` on its
    function: when every implementation does, the other attempts skip the hook
    (and the copy of the body). One that only sets, adds or removes top-level keys,
    never changing a value in place, may say so with ``top_level_only = True``: when
    every implementation does, the members set or added are put into the client's
    bytes instead of re-serialising them (a removal still re-serialises).
    """


@hookspec
def ccproxy_request_headers(ctx: RequestContext, headers: dict[str, str]) -> None:
    """Change the headers sent upstream, in place (names are lower-case).

    ``headers`` already holds the client's end-to-end headers without its
    credentials. The first-party ``providers`` plugin adds the provider's key here.
    """


# -- Response phase (once per upstream answer) -----------------------------------


@hookspec
def ccproxy_upstream_attempt(ctx: RequestContext, attempt: Attempt) -> None:
    """One upstream attempt has its outcome: ``attempt.status`` or ``attempt.error``.

    An observer, called once per attempt (fallbacks and retries make more than one
    per request), before the core decides whether to retry, fall back or answer.
    ``attempt`` is the last item of ``ctx.attempts``; ``attempt.delay`` is the backoff
    waited before it. Attempts happen only before the first byte reaches the client.

    Example::

        @hookimpl
        def ccproxy_upstream_attempt(ctx, attempt):
            if attempt.error or (attempt.status or 0) >= 500:
                print(f"{ctx.request_id}: {attempt.provider} failed: {attempt.error or attempt.status}")
    """



@hookspec
def ccproxy_response_adapter(ctx: RequestContext) -> ResponseAdapter | None:
    """Return an adapter that rewrites this response's body, or None to pass it through.

    Called when the upstream's status and headers have arrived (``ctx.upstream_status``,
    ``ctx.response_headers``) and before anything is written to the client. The
    implementation may set ``ctx.status`` and edit ``ctx.response_headers``.
    Adapters returned by several plugins are chained in pluggy's call order (use
    ``tryfirst``/``trylast``): each one's output is the next one's input. Adapters get
    decoded bytes, so with any adapter the core drops ``content-encoding`` and
    ``content-length``.
    """


@hookspec
def ccproxy_upstream_headers(ctx: RequestContext, status: int, headers: dict[str, str]) -> None:
    """The header callback: the upstream answered with ``status`` and ``headers``.

    Runs once per response, after the adapter was chosen and before the first
    write. ``headers`` is the dict the client will get (lower-case names); change it
    in place. Set ``ctx.status`` to change the status the client gets.
    """


# -- Stream lifecycle events (observers) -----------------------------------------


@hookspec
def ccproxy_stream_start(ctx: RequestContext) -> None:
    """The response head is about to be written to the client."""


@hookspec
def ccproxy_stream_chunk(ctx: RequestContext, chunk: bytes) -> None:
    """``chunk`` is about to be written to the client.

    Only called when some plugin implements it: with no implementation the chunk
    path does not enter pluggy at all. Keep it cheap; it runs on every write.
    """


@hookspec
def ccproxy_stream_event(ctx: RequestContext, event: SSEEvent) -> None:
    """One server-sent event from the upstream, in ``ctx.upstream_dialect``.

    The core parses the upstream stream only when some plugin implements this
    hook. Events arrive whole, however the network split them.
    """


@hookspec
def ccproxy_response_body(ctx: RequestContext, body: bytes) -> None:
    """The whole decoded upstream body of a non-streaming response.

    Only collected when some plugin implements this hook.
    """


@hookspec
def ccproxy_stream_error(ctx: RequestContext, error: ProxyError) -> None:
    """The upstream failed (before or after the head was sent); ``ctx.outcome`` says which."""


@hookspec
def ccproxy_stream_end(ctx: RequestContext) -> None:
    """The request is over, streamed or not; exactly once per request.

    ``ctx.outcome`` is ``completed``, ``client_disconnected``, ``upstream_error``
    or ``rejected``; timings, byte and event counts are final.
    """
