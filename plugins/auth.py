"""Client keys: only callers that present one of the proxy's own keys may use it.

Settings (``plugins: auth:`` in the config)::

    plugins:
      auth:
        keys: ["${CCPROXY_KEY_1}", "${CCPROXY_KEY_2:-}"]   # empty values are ignored
        admin_keys: ["${CCPROXY_ADMIN_KEY:-}"]              # for admin routes (the dashboard's data)
        allow_public_without_keys: false
        public_paths: ["/health"]

* A client presents its key as ``x-api-key: KEY`` or ``Authorization: Bearer KEY`` (what
  the Anthropic and OpenAI SDKs send). Missing or wrong: ``401`` in the client's dialect.
* Keys are compared in constant time: SHA-256 of the presented value against each
  key's, with :func:`hmac.compare_digest`, over every key, so neither which key
  matched nor a key's length shows in the timing.
* The client's key is never forwarded upstream (the core strips every credential
  header and adds the provider's) and never logged.
* Proxy routes are checked in ``ccproxy_request_head``, on the headers, before the body is
  read; every other route (``/v1/models``, ``/plugins``, plugin routes such as ``/metrics``)
  by a request middleware, except ``public_paths`` (and paths under them).
* A route may say who may call it with Sanic's route context, ``ctx_ccproxy_access=...`` in
  ``app.add_route``: ``"public"`` (no key, like ``public_paths``) or ``"admin"`` (one of
  ``admin_keys``, never a client key; with keys on and no admin key configured the route answers
  403). Admin keys open admin routes only. With no key of either kind, admin routes are open like
  the rest (loopback only, see below).
* The middleware sets ``request.ctx.ccproxy_authenticated`` (True or False) on every request
  it sees, public paths included, so that a public route can show more to a caller with a
  key (``/health/ready`` does). It is not set when no key is configured.
* With no key configured anyone who can reach the port can spend the providers' keys,
  so the proxy must then listen on loopback only: at start-up a non-loopback address
  stops the worker, unless ``allow_public_without_keys: true``, which logs a loud
  warning instead. Either way the missing keys are logged at WARNING.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sanic import Request, Sanic

from ccproxy_core import AuthenticationError, Config, ConfigError, PermissionDenied, PluginSettings, hookimpl

log = logging.getLogger("ccproxy.auth")

#: This plugin's name under ``plugins:`` (its entry-point name).
NAME = "auth"
#: Routes checked by ``ccproxy_request_head`` (the middleware leaves them alone).
PROXY_PATHS = frozenset({"/v1/messages", "/v1/chat/completions"})


@dataclass
class AuthSettings:
    """The ``plugins: auth:`` block."""

    #: Proxy keys clients may present; empty strings (unset ``${VAR:-}``) are ignored.
    keys: list[str] = field(default_factory=list)
    #: Keys for admin routes (``ctx_ccproxy_access="admin"``); empty strings are ignored.
    admin_keys: list[str] = field(default_factory=list)
    #: With no keys, start even when listening on a non-loopback address (logged loudly).
    allow_public_without_keys: bool = False
    #: Paths (and paths under them) served without a key.
    public_paths: list[str] = field(default_factory=lambda: ["/health"])


def settings_of(config: Config | None) -> AuthSettings:
    """This plugin's settings from ``config`` (checked by ``ccproxy_configure`` at build time)."""
    if config is None:
        return AuthSettings()
    loaded = PluginSettings(NAME, config.plugin_settings(NAME), config.path).load(AuthSettings)
    loaded.keys = [k for k in loaded.keys if k]
    return loaded


@lru_cache(maxsize=64)
def _digests(keys: tuple[str, ...]) -> tuple[bytes, ...]:
    return tuple(hashlib.sha256(k.encode()).digest() for k in keys)


def presented_keys(headers: Any) -> list[str]:
    """The credentials a request carries: ``x-api-key`` values and ``Authorization: Bearer`` tokens."""
    found: list[str] = []
    for value in headers.getall("x-api-key", []):
        found.append(value.strip())
    for value in headers.getall("authorization", []):
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            found.append(token.strip())
    return [k for k in found if k]


def authorized(keys: tuple[str, ...], headers: Any) -> bool:
    """True when some presented credential equals some key, compared in constant time."""
    digests = _digests(keys)
    ok = False
    for value in presented_keys(headers):
        candidate = hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()
        for digest in digests:
            ok |= hmac.compare_digest(candidate, digest)
    return ok


def check(keys: tuple[str, ...], headers: Any) -> None:
    """Raise :class:`AuthenticationError` unless ``headers`` carry one of ``keys``."""
    if not keys or authorized(keys, headers):
        return
    if presented_keys(headers):
        raise AuthenticationError("invalid proxy key (send one of this proxy's keys as x-api-key or Bearer token)")
    raise AuthenticationError("missing proxy key: send it as the x-api-key header or as Authorization: Bearer")


# -- hooks -------------------------------------------------------------------------------


@hookimpl
def ccproxy_configure(settings: PluginSettings) -> AuthPlugin:
    loaded: AuthSettings = settings.load(AuthSettings)
    for i, path in enumerate(loaded.public_paths):
        if not path.startswith("/"):
            raise settings.error(f"public_paths[{i}]", f"expected a path starting with '/', got {path!r}")
    keys = tuple(k for k in loaded.keys if k)
    if loaded.keys and not keys:
        log.warning("plugins.auth.keys: every key is empty (unset environment variables?); no key is required")
    return AuthPlugin(keys, loaded, tuple(k for k in loaded.admin_keys if k))


class AuthPlugin:
    """The hooks of one app, holding its keys."""

    def __init__(self, keys: tuple[str, ...], settings: AuthSettings, admin_keys: tuple[str, ...] = ()) -> None:
        self.keys = keys
        self.settings = settings
        self.admin_keys = admin_keys

    @hookimpl
    def ccproxy_register_routes(self, app: Sanic) -> None:
        keys, admin_keys = self.keys, self.admin_keys
        if not keys and not admin_keys:
            return
        public = tuple(p.rstrip("/") or "/" for p in self.settings.public_paths)

        async def require_key(request: Request) -> None:
            path = request.path
            if path in PROXY_PATHS or request.method == "NONE":  # proxy routes: the hook; NONE: unparsable head
                return
            access = getattr(request.route.ctx, "ccproxy_access", None) if request.route is not None else None
            if access == "admin":
                if not admin_keys:
                    raise PermissionDenied("no admin key is configured (plugins.auth.admin_keys)")
                check(admin_keys, request.headers)
                request.ctx.ccproxy_authenticated = True
                return
            if not keys:  # admin keys alone: only admin routes are guarded
                return
            if access == "public" or any(path == p or path.startswith(p + "/") for p in public):
                request.ctx.ccproxy_authenticated = authorized(keys, request.headers)
                return
            check(keys, request.headers)
            request.ctx.ccproxy_authenticated = True

        app.register_middleware(require_key, "request")

    @hookimpl
    def ccproxy_request_head(self, request: Request) -> None:
        check(self.keys, request.headers)

    @hookimpl
    def ccproxy_startup(self, app: Sanic) -> None:
        if self.keys:
            log.info("auth: %d proxy key(s) configured; every proxy request must present one", len(self.keys))
            return
        addresses = bound_addresses(app)
        public = [a for a in addresses if not is_loopback(a)]
        if public and not self.settings.allow_public_without_keys:
            log.critical(
                "REFUSING TO START: no proxy keys are configured (plugins.auth.keys) and the proxy listens on %s, "
                "reachable from other machines: anyone could spend the providers' keys. Configure keys, listen on "
                "127.0.0.1, or set plugins.auth.allow_public_without_keys: true.",
                ", ".join(public),
            )
            raise ConfigError(
                f"plugins.auth: no proxy keys configured and listening on {', '.join(public)}; "
                "set plugins.auth.keys, listen on 127.0.0.1, or set allow_public_without_keys: true"
            )
        if public:
            log.warning(
                "!!! NO PROXY KEYS: listening on %s without client authentication "
                "(allow_public_without_keys: true). Anyone who can reach this port can spend the providers' keys. !!!",
                ", ".join(public),
            )
        elif not addresses:
            log.warning(
                "no proxy keys configured (plugins.auth.keys) and the listening address is unknown; "
                "make sure only this machine can reach it"
            )
        else:
            log.warning(
                "no proxy keys configured (plugins.auth.keys): any local process can use the proxy (listening on %s only)",
                ", ".join(addresses),
            )


# -- addresses ---------------------------------------------------------------------------


def bound_addresses(app: Sanic) -> list[str]:
    """The addresses this worker serves on, from Sanic's server info (empty when unknown)."""
    found: list[str] = []
    for info in getattr(app.state, "server_info", None) or []:
        settings = getattr(info, "settings", {}) or {}
        sock = settings.get("sock")
        if settings.get("unix"):
            found.append("unix:" + str(settings["unix"]))
        elif isinstance(sock, socket.socket):
            try:
                name = sock.getsockname()
            except OSError:
                continue
            found.append(name if isinstance(name, str) else str(name[0]))
        elif settings.get("host") is not None:
            found.append(str(settings["host"]))
    if not found and getattr(app.state, "host", ""):
        found.append(app.state.host)
    return found


def is_loopback(address: str) -> bool:
    """True for a loopback IP, ``localhost`` or a unix socket."""
    if address.startswith("unix:") or address.startswith("/") or address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False
