"""How a request reaches its origin: directly, through an HTTP forward proxy, or a ``CONNECT`` tunnel.

* **Routing.** ``(scheme, host, port)`` maps to a :class:`_Route` (direct, via an HTTP
  forward proxy, or through a ``CONNECT`` tunnel) that the transport caches, so the
  environment's ``HTTP(S)_PROXY``/``NO_PROXY`` (:func:`environment_proxy`) are consulted
  once per origin, not per request. ``http://`` targets go to a forward proxy in absolute
  form (connections shared by all origins behind it); ``https://`` targets through a
  tunnel, TLS inside it. Credentials in the proxy URL become ``Proxy-Authorization``.

HTTPS proxies (TLS to the proxy itself) and SOCKS are not supported.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import urllib.request
from typing import Any, Callable, Final

import httpx

_DEFAULT_PORTS: Final = {b"http": 80, b"https": 443}


def environment_proxy(scheme: str, host: str, proxies: dict[str, str] | None = None) -> str | None:
    """The proxy URL for ``scheme://host`` from ``HTTP(S)_PROXY``/``ALL_PROXY``/``NO_PROXY``, or None.

    ``proxies`` is ``urllib.request.getproxies_environment()`` (read now when not given).
    """
    if proxies is None:
        proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
        return None
    return proxy


class _Route:
    """How to reach one origin: pool key, socket address, TLS and proxy details."""

    __slots__ = ("key", "host", "port", "ssl", "sni", "target_prefix", "extra_head", "tunnel")

    def __init__(
        self,
        key: tuple[Any, ...],
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        sni: str | None,
        target_prefix: bytes | None = None,
        extra_head: bytes = b"",
        tunnel: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.key = key
        self.host = host  # where the socket connects (origin or proxy)
        self.port = port
        self.ssl = ssl_context
        self.sni = sni
        self.target_prefix = target_prefix  # b"http://netloc" for absolute-form, else None
        self.extra_head = extra_head  # header lines added for a forward proxy
        self.tunnel = tunnel  # (authority, auth header lines) for CONNECT


def make_route(
    url: httpx.URL, tls_context: Callable[[], ssl.SSLContext], proxy: str | None, request: httpx.Request | None
) -> _Route:
    """How to reach ``url``'s origin: directly, or through ``proxy`` (absolute-form or ``CONNECT``).

    ``tls_context`` is called for ``https://`` origins only.

    Raises:
        httpx.UnsupportedProtocol: not ``http://``/``https://``, or a proxy that is not ``http://``.
    """
    scheme = url.raw_scheme
    if scheme not in _DEFAULT_PORTS:
        raise httpx.UnsupportedProtocol(
            f"FastTransport supports http:// and https:// only, not {url.scheme!r}.", request=request
        )
    host = url.host
    port = url.port or _DEFAULT_PORTS[scheme]
    tls = tls_context() if scheme == b"https" else None
    if proxy is None:
        route = _Route((scheme, url.raw_host, port), host, port, tls, host if tls else None)
    else:
        purl = httpx.URL(proxy if "://" in proxy else "http://" + proxy)
        if purl.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"Only http:// proxies are supported, not {purl.scheme!r}.", request=request
            )
        auth = b""
        if purl.username or purl.password:
            token = base64.b64encode(f"{purl.username}:{purl.password}".encode()).decode("ascii")
            auth = f"Proxy-Authorization: Basic {token}\r\n".encode("ascii")
        phost, pport = purl.host, purl.port or 80
        if tls is None:  # absolute-form requests to a forward proxy, connections shared
            route = _Route(
                (b"forward", phost, pport, auth), phost, pport, None, None,
                target_prefix=scheme + b"://" + url.netloc, extra_head=auth,
            )
        else:
            authority = url.raw_host if b":" not in url.raw_host else b"[" + url.raw_host + b"]"
            authority += b":%d" % port
            route = _Route(
                (scheme, url.raw_host, port, phost, pport, auth), phost, pport, tls, host,
                tunnel=(authority, auth),
            )
    return route


class _TunnelProtocol(asyncio.Protocol):
    """Reads the proxy's answer to ``CONNECT`` (the head only) before TLS starts."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.head: asyncio.Future[bytes] = loop.create_future()
        self._buf = bytearray()

    def data_received(self, data: bytes) -> None:  # noqa: D102
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end >= 0 and not self.head.done():
            if end + 4 != len(self._buf):
                self.head.set_exception(httpx.ProxyError("Proxy sent data after its CONNECT response."))
            else:
                self.head.set_result(bytes(self._buf[:end]))
        elif len(self._buf) > 65536 and not self.head.done():
            self.head.set_exception(httpx.ProxyError("Proxy response head too large."))

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        if not self.head.done():
            err = httpx.ProxyError("Proxy closed the connection during CONNECT.")
            err.__cause__ = exc
            self.head.set_exception(err)


async def open_tunnel(loop: asyncio.AbstractEventLoop, conn: asyncio.Protocol, route: _Route) -> None:
    """Connect to the proxy, ask it for a ``CONNECT`` tunnel, then start TLS in it for ``conn``.

    Raises:
        httpx.ProxyError: the proxy refused or answered something else than a bare 2xx head.
        OSError, ssl.SSLError: the connection or the handshake failed (the caller maps them).
    """
    assert route.tunnel is not None
    authority, auth = route.tunnel
    tunnel = _TunnelProtocol(loop)
    transport, _ = await loop.create_connection(lambda: tunnel, route.host, route.port)
    try:
        transport.write(b"CONNECT %b HTTP/1.1\r\nHost: %b\r\n%b\r\n" % (authority, authority, auth))
        head = await tunnel.head
        status_line = head.split(b"\r\n", 1)[0]
        fields = status_line.split(b" ", 2)
        if len(fields) < 2 or not fields[0].startswith(b"HTTP/1.") or not fields[1].isdigit():
            raise httpx.ProxyError(f"Malformed proxy response to CONNECT: {status_line[:100]!r}")
        if not 200 <= int(fields[1]) < 300:
            raise httpx.ProxyError(f"Proxy refused CONNECT {authority.decode()}: {status_line.decode(errors='replace')}")
        tls = await loop.start_tls(transport, conn, route.ssl, server_hostname=route.sni)  # type: ignore[arg-type]
        if tls is None:  # pragma: no cover - closed during the handshake
            raise httpx.ConnectError("Connection closed during the TLS handshake.")
        conn.connection_made(tls)
    except BaseException:
        transport.abort()
        raise
