"""Client keys: only callers that present one of the proxy's own keys may use it.

Settings (``plugins: auth:`` in the config)::

    plugins:
      auth:
        keys:
          - "${CCPROXY_KEY_1}"                     # a plain key (named key-0 after its position)
          - name: alice                            # a team member's key with limits (plugins/gateway.py)
            key: "${ALICE_KEY}"
            rpm: 60                                # requests per minute
            tpm: 200000                            # tokens per minute (input + output)
            budget_usd: 50                         # US dollars per budget_period
            budget_period: 30d                     # Ns, Nm, Nh or Nd; default 30d
            models: ["claude-*", "gpt-4o*"]        # globs of the model names the client may ask for
        admin_keys: ["${CCPROXY_ADMIN_KEY:-}"]     # for admin routes: the dashboard, per-key usage
        allow_public_without_keys: false
        public_paths: ["/health"]

* A client presents its key as ``x-api-key: KEY`` or ``Authorization: Bearer KEY`` (what
  the Anthropic and OpenAI SDKs send). Missing or wrong: ``401`` in the client's dialect.
* Keys are compared in constant time: SHA-256 of the presented value against each
  key's, with :func:`hmac.compare_digest`, over every key, so neither which key
  matched nor a key's length shows in the timing.
* The client's key is never forwarded upstream (the core strips every credential
  header and adds the provider's) and never logged; its name is ``ctx.client_key``, which
  the access log and the metrics show.
* Proxy routes are checked in ``ccproxy_request_head``, on the headers, before the body is
  read; every other route (``/v1/models``, ``/plugins``, plugin routes such as ``/metrics``)
  by a request middleware, except ``public_paths`` (and paths under them).
* A route may say who may call it with Sanic's route context, ``ctx_ccproxy_access=...`` in
  ``app.add_route``: ``"public"`` (no key, like ``public_paths``) or ``"admin"`` (one of
  ``admin_keys``, never a client key; with keys on and no admin key configured the route answers
  403). Admin keys open admin routes only (the dashboard, ``GET /v1/ccproxy/keys/{name}/usage``).
  With no key of either kind, admin routes are open like the rest (loopback only, see below).
* With a key given as a mapping or with ``admin_keys``, the gateway (``plugins/gateway.py``)
  counts every key's requests, tokens and spend in the shared state and enforces limits.
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
import re
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sanic import Request, Sanic

from ccproxy_core import AuthenticationError, Config, ConfigError, PermissionDenied, PluginSettings, RequestContext, hookimpl

log = logging.getLogger("ccproxy.auth")

#: This plugin's name under ``plugins:`` (its entry-point name).
NAME = "auth"
#: Routes checked by ``ccproxy_request_head`` (the middleware leaves them alone).
PROXY_PATHS = frozenset({"/v1/messages", "/v1/chat/completions"})
#: Routes under this prefix check admin keys themselves (the middleware leaves them alone).
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_PERIOD = re.compile(r"^(\d+)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass
class KeySetting:
    """One item of ``keys`` written as a mapping."""

    key: str
    #: Shown in the access log, the metrics and the usage route; default ``key-N`` (its position).
    name: str = ""
    #: Requests per minute (429 with ``retry-after`` beyond).
    rpm: int | None = None
    #: Tokens per minute, input (cached included) + output, counted after each request.
    tpm: int | None = None
    #: US dollars per ``budget_period``, priced by the ``usage`` plugin's table (429 ``budget_exceeded``).
    budget_usd: float | None = None
    #: ``Ns``, ``Nm``, ``Nh`` or ``Nd``.
    budget_period: str = "30d"
    #: Globs of the model names this key may ask for (403 otherwise); None: any.
    models: list[str] | None = None


@dataclass(frozen=True)
class ClientKey:
    """A configured key, checked: its name, limits (None: none) and budget period in seconds."""

    name: str
    key: str = field(repr=False)
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period: str = "30d"
    budget_seconds: float = 30 * 86400
    models: tuple[str, ...] | None = None


@dataclass
class AuthSettings:
    """The ``plugins: auth:`` block."""

    #: Proxy keys clients may present, plain or with limits; empty keys (unset ``${VAR:-}``) are ignored.
    keys: list[KeySetting | str] = field(default_factory=list)
    #: Keys for admin routes (``ctx_ccproxy_access="admin"``: the dashboard, per-key usage), never
    #: the proxy routes; empty strings are ignored.
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
    loaded.keys = [k for k in loaded.keys if (k.key if isinstance(k, KeySetting) else k)]
    return loaded


def client_keys(settings: PluginSettings, loaded: AuthSettings) -> list[ClientKey]:
    """The configured keys, checked (names unique and usable in a URL, keys unique), empty ones left out."""
    found: list[ClientKey] = []
    names: set[str] = set()
    values: set[str] = set()
    for i, item in enumerate(loaded.keys):
        where = f"keys[{i}]"
        if isinstance(item, str):
            item = KeySetting(key=item)
        if not item.key:
            continue
        name = item.name or f"key-{i}"
        if not _NAME.match(name):
            raise settings.error(f"{where}.name", f"use 1-64 letters, digits, '.', '_' or '-', got {name!r}")
        if name in names:
            raise settings.error(f"{where}.name", f"two keys are called {name!r}")
        if item.key in values:
            raise settings.error(f"{where}.key", "the same key is listed twice")
        period = _PERIOD.match(item.budget_period)
        if period is None or int(period.group(1)) == 0:
            raise settings.error(f"{where}.budget_period", f"expected Ns, Nm, Nh or Nd (e.g. 30d), got {item.budget_period!r}")
        names.add(name)
        values.add(item.key)
        found.append(ClientKey(
            name, item.key, item.rpm, item.tpm, item.budget_usd, item.budget_period,
            int(period.group(1)) * _SECONDS[period.group(2)],
            tuple(item.models) if item.models is not None else None,
        ))
    return found


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


def matching(keys: tuple[str, ...], headers: Any) -> int | None:
    """The index of the key some presented credential equals, compared in constant time over every key."""
    digests = _digests(keys)
    found = -1
    for value in presented_keys(headers):
        candidate = hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()
        for i, digest in enumerate(digests):
            if hmac.compare_digest(candidate, digest):
                found = i
    return None if found < 0 else found


def authorized(keys: tuple[str, ...], headers: Any) -> bool:
    """True when some presented credential equals some key, compared in constant time."""
    return matching(keys, headers) is not None


def check(keys: tuple[str, ...], headers: Any) -> int | None:
    """The index of the key ``headers`` carry; raise :class:`AuthenticationError` when none (None: no keys)."""
    if not keys:
        return None
    found = matching(keys, headers)
    if found is not None:
        return found
    if presented_keys(headers):
        raise AuthenticationError("invalid proxy key (send one of this proxy's keys as x-api-key or Bearer token)")
    raise AuthenticationError("missing proxy key: send it as the x-api-key header or as Authorization: Bearer")


# -- hooks -------------------------------------------------------------------------------


@hookimpl
def ccproxy_configure(settings: PluginSettings) -> AppAuth:
    loaded: AuthSettings = settings.load(AuthSettings)
    for i, path in enumerate(loaded.public_paths):
        if not path.startswith("/"):
            raise settings.error(f"public_paths[{i}]", f"expected a path starting with '/', got {path!r}")
    found = client_keys(settings, loaded)
    if loaded.keys and not found:
        log.warning("plugins.auth.keys: every key is empty (unset environment variables?); no key is required")
    admin = tuple(k for k in loaded.admin_keys if k)
    if found and (admin or any(isinstance(k, KeySetting) for k in loaded.keys)):
        from .gateway import GatewayPlugin

        return GatewayPlugin(found, loaded, admin)
    return AuthPlugin(found, loaded, admin) if found else AppAuth(found, loaded, admin)


class AppAuth:
    """The hooks of one app, holding its keys: the middleware, the start-up check. Without client keys
    proxy requests are not checked, and no ``ccproxy_request_head`` is called for them
    (:class:`AuthPlugin` has it)."""

    def __init__(self, keys: list[ClientKey], settings: AuthSettings, admin_keys: tuple[str, ...] = ()) -> None:
        self.client_keys = keys
        self.keys = tuple(k.key for k in keys)
        self.names = tuple(k.name for k in keys)
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


class AuthPlugin(AppAuth):
    """:class:`AppAuth` with client keys: every proxy request presents one, checked on its head."""

    @hookimpl
    def ccproxy_request_head(self, ctx: RequestContext, request: Request) -> None:
        found = check(self.keys, request.headers)
        if found is not None:
            ctx.client_key = self.names[found]


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
