"""``FastTransport``: the transport itself, and one exchange (a request framed, written once, its head awaited).

* **One exchange.** A request's head is framed here and only here (:meth:`FastTransport._exchange`),
  as httpx frames a request: ``Host`` first unless given, ``Content-Length: 0`` after it for
  an empty POST/PUT/PATCH, the header lines as given, ``Content-Length`` last for a body
  without a framing header. Head and body go out in one write; then the response head is
  awaited and an ``httpx.Response`` returned whose body streams (:mod:`.response`).
* **Never sent twice silently.** Before a pooled connection carries a request it is
  checked: not closing, and its socket not readable (one ``poll(0)``, ~0.5 µs; an idle
  keep-alive socket that is readable holds the server's FIN or junk the loop has not
  delivered yet). A dead one is closed and the next one (or a new connection) is used:
  nothing was sent. A request is written again only when the write failed synchronously
  (the kernel refused it; caught for plain TCP, not under TLS). Once written, a failure
  before any response byte is an ``httpx.RemoteProtocolError`` ("Server disconnected
  without sending a response") or ``httpx.ReadError`` (reset), for the caller to retry
  by its own policy and report: an LLM request that reached the upstream is billed.

No content decoding happens here: ``content-encoding`` is left to httpx
(``Response.aiter_bytes``) or to the caller (``aiter_raw`` gives the bytes as sent).
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import Mapping
from typing import AsyncIterable, Final

import httpx

from .connection import _Connection
from .pool import ConnectionPool
from .response import _ResponseStream
from .tunnel import _Route, environment_proxy, make_route, open_tunnel

_ROUTE_CACHE_MAX: Final = 4096
_NO_TIMEOUTS: Final[dict[str, float | None]] = {}
_METHODS: Final = {
    m: m.encode("ascii") for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
}
_BODY_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})


class FastTransport(ConnectionPool, httpx.AsyncBaseTransport):
    """HTTP/1.1 transport on asyncio protocols and httptools, for ``httpx.AsyncClient``.

    Use as ``httpx.AsyncClient(transport=FastTransport())``, or call
    :meth:`handle_async_request` directly for a lower cost, or :meth:`send_parts` with the
    request's parts (no ``httpx.Request`` at all) for the lowest: it is the fast path the
    proxy's engine takes (:class:`~.fastpath.FastPath`). One instance belongs to one event
    loop. A subclass that overrides :meth:`handle_async_request` withdraws :meth:`send_parts`
    (it is set to None) unless it defines its own, so that its override sees every request.

    Args:
        verify: Verify TLS certificates (default). ``False`` disables verification
            (ignored when ``ssl_context`` is given).
        ssl_context: Context for ``https://`` origins; default
            ``httpx.create_ssl_context(verify)`` (certifi's CA bundle, as httpx's own
            transport uses) with ALPN ``http/1.1``. SNI is the URL host.
        max_connections: Bound on open connections (busy and idle), all origins.
        max_keepalive: Idle connections kept per origin; more are closed on release.
        keepalive_expiry: Seconds an idle connection may stay in the pool.
        trust_env: Read ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY``/``NO_PROXY`` (and
            their lowercase forms) once, at construction.
        proxy: An ``http://`` proxy for all origins (overrides the environment).
            ``http://`` targets are sent in absolute form, ``https://`` targets through
            a ``CONNECT`` tunnel. Credentials in the URL become ``Proxy-Authorization``.
        max_head_bytes: Largest response head (status line, headers, interim heads
            included); past it the response fails with :class:`ResponseHeadTooLarge`
            and no more of it is parsed.
        max_headers: Most header lines in a response head; the same error past it.
    """

    def __init__(
        self,
        *,
        verify: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 1000,
        max_keepalive: int = 100,
        keepalive_expiry: float = 15.0,
        trust_env: bool = True,
        proxy: str | None = None,
        max_head_bytes: int = 64 * 1024,
        max_headers: int = 100,
    ) -> None:
        super().__init__(max_connections, max_keepalive, keepalive_expiry)
        self._max_head_bytes = max_head_bytes
        self._max_headers = max_headers
        self._verify = verify
        self._ssl_context = ssl_context
        self._proxies: dict[str, str] = {}
        self._explicit_proxy = proxy
        if proxy is None and trust_env:
            self._proxies = urllib.request.getproxies_environment()
        self._routes: dict[tuple[bytes, bytes, int | None], _Route] = {}
        self._aims: dict[int, tuple[httpx.URL, _Route, bytes, bytes]] = {}  # see _aim

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "handle_async_request" in cls.__dict__ and "send_parts" not in cls.__dict__:
            cls.send_parts = None  # type: ignore[assignment]  # the override must see every request

    # -- public --------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return a response whose body has not been read yet.

        The headers go out as in ``request.headers``, framed as the module says (httpx's
        requests carry their framing headers already). Timeouts come from
        ``request.extensions["timeout"]`` (httpx's dict; missing keys mean none).

        Raises:
            httpx.UnsupportedProtocol: not ``http://``/``https://``, or an unusable proxy.
            httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError, httpx.PoolTimeout,
            httpx.WriteTimeout, httpx.WriteError, httpx.ReadTimeout, httpx.ReadError,
            httpx.RemoteProtocolError: as the names say; ``__cause__`` holds the
            low-level exception when there was one.
        """
        try:
            body: bytes | None = request.content
        except httpx.RequestNotRead:
            body = None
        raw = request.headers.raw
        return await self._exchange(
            request.method, request.url, b"\r\n".join(map(b": ".join, raw)),
            b"\n%b\n" % b"\n".join([name for name, _ in raw]).lower(), body,
            request.extensions.get("timeout") or _NO_TIMEOUTS, request,
        )

    async def send_parts(
        self,
        method: str,
        url: httpx.URL,
        headers: Mapping[str, str],
        body: bytes,
        timeouts: dict[str, float | None],
    ) -> httpx.Response:
        """Like :meth:`handle_async_request`, from the request's parts: no ``httpx.Request`` is built.

        The fast path (:class:`~.fastpath.FastPath`). ``headers`` go out in order, framed as
        httpx would frame ``httpx.Request(method, url, headers=headers, content=body)``; a
        value that is not ASCII goes as the UTF-8 bytes the client sent (httpx would refuse
        it). ``timeouts`` is httpx's timeout dict; ``"read"`` is read again before each body
        read, so the caller may change it once the head arrived. The response is an
        ordinary ``httpx.Response`` except that it has no ``request`` (nor have the
        exceptions raised). Cancelling the call or a body read leaks no connection.
        """
        text = "\r\n".join(map(": ".join, headers.items()))  # the lines, built and encoded at C speed
        names = "\n".join(headers)
        try:
            lines = text.encode("ascii")
        except UnicodeEncodeError:
            names.encode("ascii")  # a name must be ASCII (raises)
            lines = text.encode("utf-8", "surrogateescape")
        return await self._exchange(
            method.upper(), url, lines, f"\n{names}\n".lower().encode("ascii"), body, timeouts, None
        )

    async def _exchange(
        self,
        method: str,
        url: httpx.URL,
        lines: bytes,
        names: bytes,
        body: bytes | None,
        timeouts: dict[str, float | None],
        request: httpx.Request | None,
    ) -> httpx.Response:
        """Frame and write one request (``body`` None: ``request.stream`` follows), await its head.

        ``lines`` are the header lines as they go out, CRLF between them (b"" for none);
        ``names`` their names, lower-case, each between two LFs (what the framing checks read).
        """
        if self._closed:
            raise RuntimeError("FastTransport is closed.")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        aim = self._aims.get(id(url))
        if aim is None or aim[0] is not url:
            aim = self._aim(url, request)
        _, route, target, host = aim

        # Request head (+ body when it is bytes), in one join, framed as httpx frames a request.
        bmethod = _METHODS.get(method) or method.encode("ascii")
        framed = b"\ncontent-length\n" in names or b"\ntransfer-encoding\n" in names
        parts = [bmethod, b" ", target, b" HTTP/1.1\r\n"]
        if host and b"\nhost\n" not in names:
            parts.append(host)
        if not body and body is not None and not framed and bmethod in _BODY_METHODS:
            parts.append(b"Content-Length: 0\r\n")
        if lines:
            parts += (lines, b"\r\n")
        if body and not framed:
            parts += (b"Content-Length: ", str(len(body)).encode("ascii"), b"\r\n")
        if route.extra_head:
            parts.append(route.extra_head)
        parts.append(b"\r\n")
        if body:
            parts.append(body)
        data = b"".join(parts)
        no_body = method == "HEAD"

        # A request is sent again only when it provably never left: the pooled connection it
        # was written on refused the write at once (found dead before writing, _acquire skips).
        # Once written, a failure is the caller's to retry or report, never silently resent.
        for attempt in (0, 1):
            try:
                pooled = await self._acquire(route, timeouts.get("pool"))
            except httpx.TransportError as exc:
                exc.request = request
                raise
            if pooled is not None:
                conn = pooled
            else:
                try:
                    conn = await self._connect(route, timeouts.get("connect"))
                except BaseException as exc:
                    self._active -= 1
                    self._slot_freed()
                    if isinstance(exc, httpx.TransportError):
                        exc.request = request
                    raise
                self._busy.add(conn)
            try:
                conn.begin(no_body)
                transport = conn.transport
                assert transport is not None
                transport.write(data)
                if transport.is_closing():  # the write failed synchronously: nothing was sent
                    if attempt == 0 and conn.reused:
                        self._discard(conn)
                        continue
                    raise httpx.WriteError("The connection closed as the request was written.")
                if body is None:
                    assert request is not None
                    await self._send_stream(conn, request, timeouts.get("write"))
                elif conn._write_paused:
                    await conn.drain(timeouts.get("write"))
                await conn.wait_head(timeouts.get("read"))
            except httpx.TransportError as exc:
                self._discard(conn)
                exc.request = request
                raise
            except BaseException:
                self._discard(conn)
                raise
            break

        stream = _ResponseStream(conn, self, timeouts, request)
        if conn.complete and not conn.chunks and conn.error is None:
            stream._conn = None  # HEAD / 204 / 304 / empty body: done already
            self._release(conn)
        response = httpx.Response(
            conn.status,
            stream=stream,
            extensions={"http_version": conn.http_version, "reason_phrase": conn.reason},
            request=request,
        )
        # The parser's list is httpx's own layout already (name, lower-case name, value; httpx is pinned
        # below 0.29): taken as it is, without httpx's per-header normalising. The next head gets a new list.
        response.headers._list = conn.headers
        return response

    # -- request helpers -------------------------------------------------------------

    async def _send_stream(self, conn: _Connection, request: httpx.Request, timeout: float | None) -> None:
        """Write a streaming request body, chunk-encoded if the headers say so."""
        chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
        stream = request.stream
        if not isinstance(stream, AsyncIterable):
            raise httpx.UnsupportedProtocol("FastTransport needs an async request body stream.")
        transport = conn.transport
        assert transport is not None
        async for part in stream:
            if not part:
                continue
            if conn.error is not None or transport.is_closing():
                raise conn.error or httpx.WriteError("Connection closed while sending the body.")
            if chunked:
                transport.write(b"%x\r\n%b\r\n" % (len(part), part))
            else:
                transport.write(part)
            if conn._write_paused:
                await conn.drain(timeout)
        if chunked:
            transport.write(b"0\r\n\r\n")
        if conn._write_paused:
            await conn.drain(timeout)

    def _aim(self, url: httpx.URL, request: httpx.Request | None) -> tuple[httpx.URL, _Route, bytes, bytes]:
        """``url``, its origin's route (made on first use and cached), its request target and its ``Host``
        line (b"" without a host). Kept per URL object when there is no ``httpx.Request``: the fast path's
        caller passes the same object for the same URL (``upstream.parsed_url``), and httpx's URL
        properties cost a microsecond per request."""
        key = (url.raw_scheme, url.raw_host, url.port)
        route = self._routes.get(key)
        if route is None:
            route = make_route(url, self._tls_context, self._proxy_for(url.scheme, url.host), request)
            if len(self._routes) >= _ROUTE_CACHE_MAX:
                self._routes.clear()
            self._routes[key] = route
        target = url.raw_path if route.target_prefix is None else route.target_prefix + url.raw_path
        aim = (url, route, target, b"Host: " + url.netloc + b"\r\n" if url.host else b"")
        if request is None:
            if len(self._aims) >= _ROUTE_CACHE_MAX:
                self._aims.clear()
            self._aims[id(url)] = aim  # the URL is held here: its id is not reused while the entry lives
        return aim

    def _proxy_for(self, scheme: str, host: str) -> str | None:
        if self._explicit_proxy is not None:
            return self._explicit_proxy
        if not self._proxies:
            return None
        return environment_proxy(scheme, host, self._proxies)

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            ctx = httpx.create_ssl_context(verify=self._verify)  # certifi's store, as httpx's own transport
            ctx.set_alpn_protocols(["http/1.1"])
            self._ssl_context = ctx
        return self._ssl_context

    async def _connect(self, route: _Route, timeout: float | None) -> _Connection:
        """Open a new connection for ``route`` (TCP, proxy tunnel, TLS) within ``timeout``."""
        loop = self._loop
        assert loop is not None
        conn = _Connection(self, route.key, loop)
        try:
            async with asyncio.timeout(timeout):
                if route.tunnel is None:
                    await loop.create_connection(
                        lambda: conn, route.host, route.port, ssl=route.ssl, server_hostname=route.sni
                    )
                else:
                    await open_tunnel(loop, conn, route)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"Timed out connecting to {route.host}:{route.port}.") from exc
        except httpx.TransportError:
            raise
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"Cannot connect to {route.host}:{route.port}: {exc}") from exc
        return conn
