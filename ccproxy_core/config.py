"""Loading and validating the deployment's YAML file.

``load_config(path)`` returns a :class:`Config` or raises :class:`ConfigError`
whose message is one line naming the file, the key path and the problem.
``${VAR}`` and ``${VAR:-default}`` are interpolated in every string value;
a ``${VAR}`` whose variable is unset is an error, ``${VAR:-}`` gives "".
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import logging
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from .errors import ConfigError

log = logging.getLogger("ccproxy")

DEFAULT_CONFIG = "config.yaml"
#: Field metadata of what validation fills in rather than the file (``field(metadata={INTERNAL: True})``).
INTERNAL = "ccproxy_internal"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


@dataclass(slots=True)
class Timeouts:
    """Seconds; each gives its own error in the client's dialect."""

    #: To open the TCP (and TLS) connection.
    connect: float = 10.0
    #: From sending the request to the upstream's status and headers.
    headers: float = 600.0
    #: Longest silence between two reads of the body.
    idle: float = 300.0
    #: The whole exchange, head and body.
    total: float = 3600.0


@dataclass(slots=True)
class ProviderConfig:
    """One upstream provider."""

    format: Literal["anthropic", "openai", "responses"]
    base_url: str
    name: str = field(default="", metadata={INTERNAL: True})
    api_key: str = ""
    #: Globs of model names this provider serves; the first provider that matches wins.
    models: list[str] = field(default_factory=list)
    #: Extra headers sent upstream with every request (after the client's).
    headers: dict[str, str] = field(default_factory=dict)
    #: False for providers that need no key (local servers, the demo).
    requires_key: bool = True
    supports_streaming: bool = True
    #: ``fast`` (the project's transport) or ``httpx`` (httpx's stock transport).
    transport: Literal["fast", "httpx"] = "fast"
    #: Verify the upstream's TLS certificate.
    verify_tls: bool = True
    timeouts: Timeouts | None = None
    #: Idle keep-alive connections kept per worker for this provider.
    max_keepalive: int = 100
    #: Open connections (busy and idle) per worker for this provider; more requests wait
    #: up to ``timeouts.connect`` for one (a pool timeout).
    max_connections: int = 1000
    #: Seconds an idle keep-alive connection stays in the pool (keep it below the upstream's own).
    keepalive_expiry: float = 15.0
    #: A PEM file of CA certificates trusted for this provider instead of the default store.
    ca_file: str = ""
    #: Providers tried next, with the same model name, when this one fails before answering
    #: (connect error, timeout, 429, 5xx). See ``retries`` and docs/reliability.md.
    fallbacks: list[str] = field(default_factory=list)

    def serves(self, model: str) -> bool:
        """True when ``model`` matches one of this provider's globs."""
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


@dataclass(slots=True)
class Fallback:
    """One more (provider, model) to try when the ones before it failed before answering."""

    model: str
    #: The provider; by default the first whose globs match ``model``.
    provider: str | None = None


@dataclass(slots=True)
class ModelAlias:
    """A model name clients use, mapped to a provider's model."""

    model: str
    #: The provider to use; by default the first whose globs match ``model``.
    provider: str | None = None
    #: Tried in order after the alias's own target (and its provider's ``fallbacks``).
    fallbacks: list[Fallback] = field(default_factory=list)


@dataclass(slots=True)
class Retries:
    """How failed upstream attempts are retried, always before the first byte reaches the client."""

    #: Upstream attempts per request, the first included, over the model's route and its
    #: fallbacks (each route is tried once even when there are more routes than this).
    max_attempts: int = 2
    #: Backoff before trying the same route again: ``backoff_base * 2**(n-1)`` seconds,
    #: at most ``backoff_max``, times a random factor in [0.5, 1) (jitter).
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    #: A ``retry-after`` up to this many seconds is waited for before retrying that route;
    #: a longer one means the route is not retried (its answer reaches the client if
    #: nothing else works).
    retry_after_cap: float = 5.0


#: Sanic's ceiling for the request head.
MAX_HEADER_CEILING = 16384


@dataclass(slots=True)
class Limits:
    #: Largest request body accepted, in bytes (413 beyond).
    max_body_bytes: int = 32 * 1024 * 1024
    #: Largest request head (request line and headers), in bytes (431 beyond); at most 16384.
    max_header_bytes: int = MAX_HEADER_CEILING
    #: Upstream exchanges in flight per worker (streamed or not); more get 503 ``overloaded``
    #: with ``retry-after``. 0 means no limit.
    max_concurrent_streams: int = 1000
    #: The ``retry-after`` (seconds) sent with that 503.
    overload_retry_after: int = 1
    #: Request bodies being received at once by one worker may hold this many bytes in all;
    #: a body that would pass it gets 503 ``overloaded`` with ``retry-after``.
    max_inflight_body_bytes: int = 256 * 1024 * 1024
    #: Seconds a client may take to send the whole request head (408 beyond).
    head_timeout: float = 30.0
    #: Seconds a client may take to send the whole request body (408 beyond).
    body_timeout: float = 120.0
    #: Seconds one write to the client may wait for it to read (a stalled reader is cut off).
    send_timeout: float = 60.0
    #: Longest ``model`` name accepted, in characters (400 beyond).
    max_model_length: int = 256
    #: Largest upstream response head (status line and headers), in bytes (502 beyond).
    max_response_head_bytes: int = 64 * 1024
    #: Most header lines in an upstream response head (502 beyond).
    max_response_headers: int = 100
    #: Largest upstream body held or decoded whole (a non-streamed answer), in bytes (502 beyond).
    max_response_body_bytes: int = 64 * 1024 * 1024
    #: Largest decoded/compressed size ratio of a compressed upstream body (502 beyond).
    max_decompression_ratio: int = 100
    #: Largest single server-sent event from the upstream, in bytes (an error event beyond).
    max_sse_event_bytes: int = 8 * 1024 * 1024


@dataclass(slots=True)
class StateSettings:
    """The top-level ``state:`` block: where counters that must hold across workers or instances live
    (see :mod:`ccproxy_core.state`)."""

    #: ``memory`` (one worker's own), ``sqlite`` (every worker on one machine) or ``redis`` (every instance).
    backend: Literal["memory", "sqlite", "redis"] = "memory"
    #: The SQLite file (``backend: sqlite``).
    path: str = ""
    #: ``redis://[:password@]host:port/db`` or ``rediss://`` (``backend: redis``).
    url: str = ""
    #: When the backend fails: ``closed`` refuses requests with 503, ``open`` lets them pass unlimited.
    on_error: Literal["closed", "open"] = "closed"
    #: Seconds one state operation may take before it counts as a failure.
    timeout: float = 0.5


@dataclass(slots=True)
class SkippedProvider:
    """A provider left out because its ``api_key`` is empty (kept to explain 404s)."""

    provider: ProviderConfig
    #: The environment variable(s) its ``api_key`` comes from (``${VAR}``), if any.
    variables: list[str] = field(default_factory=list)

    def hint(self) -> str:
        """What to do about it, e.g. ``set ANTHROPIC_API_KEY`` (never a key's value)."""
        if self.variables:
            return "set " + " or ".join(self.variables)
        return f"set providers.{self.provider.name}.api_key"


@dataclass(slots=True)
class Config:
    """The whole deployment."""

    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    models: dict[str, ModelAlias] = field(default_factory=dict)
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    retries: Retries = field(default_factory=Retries)
    state: StateSettings = field(default_factory=StateSettings)
    #: Seconds in-flight responses may run on after SIGTERM before they are ended with an error.
    shutdown_grace: float = 30.0
    #: Under ``--workers N`` on Linux, each worker listens on a socket of its own (``SO_REUSEPORT``).
    per_worker_sockets: bool = True
    #: Under ``--workers N``: seconds a worker's event loop may go without running before the main process
    #: kills the worker (which is then replaced); 0 turns the check off.
    worker_timeout: float = 30.0
    #: Seconds an upstream's model list (``GET /v1/models``) is kept before it is fetched again.
    model_list_ttl: float = 600.0
    #: ``disabled``/``enabled`` lists and per-plugin settings, by plugin name.
    plugins: dict[str, Any] = field(default_factory=dict)
    #: The file this came from ("" when built in code).
    path: str = field(default="", metadata={INTERNAL: True})
    #: Providers skipped for lack of a key, by name (filled by validation).
    skipped: dict[str, SkippedProvider] = field(default_factory=dict, metadata={INTERNAL: True})

    def plugin_settings(self, name: str) -> dict[str, Any]:
        """The settings block of plugin ``name`` (an empty dict when absent)."""
        value = self.plugins.get(name)
        return value if isinstance(value, dict) else {}

    def timeouts_for(self, provider: ProviderConfig) -> Timeouts:
        return provider.timeouts or self.timeouts


def interpolate(text: str, where: str) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` from the environment."""

    def sub(match: re.Match[str]) -> str:
        name, has_default, default = match.group(1), match.group(2), match.group(3)
        value = os.environ.get(name)
        if value is None or (has_default and value == ""):
            if has_default is None:
                raise ConfigError(f"{where}: environment variable {name} is not set (write ${{{name}:-}} to allow that)")
            return default or ""
        return value

    return _VAR.sub(sub, text)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def convert(value: Any, hint: Any, where: str, unknown: str = "unknown key (expected one of: {names})",
            missing: str = "required key is missing") -> Any:
    """Check ``value`` against the type ``hint`` and return it converted; the one settings converter.

    Types: ``str``, ``int``, ``float``, ``bool``, ``list[X]``, ``dict[str, X]``, ``X | None``,
    ``Literal[...]``, ``Any``, dataclasses (each field a key; a field without a default is
    required) and other classes (checked with ``isinstance``). Strings (from ``${VAR}``) become
    numbers or booleans when the type asks for one; numbers must not be negative. ``unknown``
    and ``missing`` are the messages for a key a dataclass does not have and for a required one
    that is absent (``{names}`` lists the dataclass's keys).

    Raises:
        ConfigError: ``WHERE: problem``, naming the key path of the bad value.
    """
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(value, option, where, unknown, missing)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin is list or hint is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        (item,) = typing.get_args(hint) or (Any,)
        return [convert(v, item, f"{where}[{i}]", unknown, missing) for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        _, item = typing.get_args(hint) or (str, Any)
        return {str(k): convert(v, item, f"{where}.{k}", unknown, missing) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, unknown, missing)
    if hint is bool:
        if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
            return _BOOLEANS[value.strip().lower()]
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_describe(value)}")
        return value
    if hint in (int, float):
        if isinstance(value, str):
            try:
                value = hint(value.strip())
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or (hint is int and isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: expected a {'whole number' if hint is int else 'number'}, got {_describe(value)}")
        if value < 0:
            raise ConfigError(f"{where}: must not be negative, got {value}")
        return hint(value)
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_describe(value)}")
        return value
    if isinstance(hint, type):
        if not isinstance(value, hint):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {_describe(value)}")
        return value
    raise TypeError(f"{where}: cannot check type {hint!r}")  # a bug in a schema, not in the file


_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def _interpolate_tree(value: Any, where: str) -> Any:
    if isinstance(value, str):
        return interpolate(value, where)
    if isinstance(value, dict):
        return {k: _interpolate_tree(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate_tree(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # ~40 µs a call: schemas are few, and fixed


def _build(cls: Any, data: Any, where: str, unknown: str, missing: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping, got {_describe(data)}")
    hints = _type_hints(cls)
    # Fields marked INTERNAL are filled by validation, not read from the file.
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.metadata.get(INTERNAL)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"{path}: {unknown.format(names=', '.join(fields) or 'none')}")
        kwargs[key] = convert(value, hints[key], path, unknown, missing)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where + '.' if where else ''}{name}: {missing}")
    return cls(**kwargs)


def build_config(data: Any, path: str = "") -> Config:
    """Validate an already-parsed YAML document."""
    try:
        config = convert(_interpolate_tree(data, ""), Config, "")
        _check(config, _key_variables(data))
    except ConfigError as exc:
        raise ConfigError(f"{path or '<config>'}: {exc}") from None
    config.path = path
    return config


def _key_variables(data: Any) -> dict[str, list[str]]:
    """The ``${VAR}`` names each provider's ``api_key`` is written with, by provider."""
    providers = data.get("providers") if isinstance(data, dict) else None
    found: dict[str, list[str]] = {}
    for name, raw in (providers or {}).items():
        key = raw.get("api_key") if isinstance(raw, dict) else None
        if isinstance(key, str):
            found[str(name)] = [m.group(1) for m in _VAR.finditer(key)]
    return found


def _check(config: Config, key_variables: dict[str, list[str]] | None = None) -> None:
    """Cross-field rules, and providers without a key skipped with a warning."""
    declared = set(config.providers)
    for name, provider in list(config.providers.items()):
        provider.name = name
        where = f"providers.{name}"
        if not re.match(r"^(https?|demo)://[^/\s?#]+", provider.base_url):
            raise ConfigError(f"{where}.base_url: expected an http(s):// URL, got {provider.base_url!r}")
        if "?" in provider.base_url or "#" in provider.base_url:
            raise ConfigError(f"{where}.base_url: must not contain a query or fragment")
        provider.base_url = provider.base_url.rstrip("/")
        if not provider.models:
            raise ConfigError(f"{where}.models: list at least one model glob")
        if provider.requires_key and not provider.api_key:
            skipped = SkippedProvider(provider, (key_variables or {}).get(name, []))
            log.warning("provider %r has no api_key; it is skipped (%s, or requires_key: false)", name, skipped.hint())
            config.skipped[name] = skipped
            del config.providers[name]
    settings = config.plugins
    for key in ("disabled", "enabled"):
        names = settings.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"plugins.{key}: expected a list of plugin names")

    def known(where: str, name: str, warn: bool = True) -> bool:
        """False (with a warning) for a provider skipped for lack of a key; an error for one not in the file."""
        if name in config.providers:
            return True
        if name not in declared:
            raise ConfigError(
                f"{where}: no provider is called {name!r} (providers: {', '.join(sorted(declared)) or 'none'})"
            )
        if warn:
            log.warning("%s: provider %r is skipped (no api_key: %s)", where, name, config.skipped[name].hint())
        return False

    for alias, target in config.models.items():
        if target.provider is not None:
            known(f"models.{alias}.provider", target.provider)  # skipped: requests get a 404 naming the key
        for i, fallback in enumerate(target.fallbacks):
            if fallback.provider is not None:
                known(f"models.{alias}.fallbacks[{i}].provider", fallback.provider)  # skipped: not used
    for name, provider in [*config.providers.items(), *((n, s.provider) for n, s in config.skipped.items())]:
        active = name in config.providers  # a skipped provider's names are checked, its warnings spared
        usable = []
        for other in provider.fallbacks:
            if other == name:
                raise ConfigError(f"providers.{name}.fallbacks: a provider cannot be its own fallback")
            if known(f"providers.{name}.fallbacks", other, warn=active):
                usable.append(other)
        provider.fallbacks = usable
    if config.retries.max_attempts < 1:
        raise ConfigError("retries.max_attempts: must be at least 1")
    if config.worker_timeout and config.worker_timeout < 1:
        raise ConfigError(f"worker_timeout: must be 0 (off) or at least 1 second, got {config.worker_timeout}")
    if config.retries.backoff_max < config.retries.backoff_base:
        raise ConfigError("retries.backoff_max: must not be less than retries.backoff_base")
    state = config.state
    if state.backend == "sqlite" and not state.path:
        raise ConfigError("state.path: backend sqlite needs the path of its database file")
    if state.backend == "redis" and not re.match(r"^(rediss?|unix)://", state.url):
        raise ConfigError("state.url: backend redis needs a redis://, rediss:// or unix:// URL")
    if state.timeout <= 0:
        raise ConfigError(f"state.timeout: must be a positive number of seconds, got {state.timeout}")
    if not 1024 <= config.limits.max_header_bytes <= MAX_HEADER_CEILING:
        raise ConfigError(
            f"limits.max_header_bytes: must be between 1024 and {MAX_HEADER_CEILING} (Sanic's ceiling), "
            f"got {config.limits.max_header_bytes}"
        )
    limits = config.limits
    for key, low, what in (
        ("head_timeout", 0.001, "a positive number of seconds"),
        ("body_timeout", 0.001, "a positive number of seconds"),
        ("max_model_length", 1, "at least 1"),
        ("max_response_head_bytes", 1024, "at least 1024"),
        ("max_response_headers", 1, "at least 1"),
    ):
        if getattr(limits, key) < low:
            raise ConfigError(f"limits.{key}: must be {what}, got {getattr(limits, key)}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing a mapping that repeats a key (SafeLoader keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys merged in with << may be overridden; keys written here may not repeat
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                continue  # an unhashable key: SafeLoader's own error follows
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first.start_mark.line + 1})", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _check_serves(config: Config) -> None:
    """A deployment file must leave at least one provider to serve requests."""
    if config.providers:
        return
    if config.skipped:
        hints = "; ".join(f"{name}: {s.hint()}" for name, s in config.skipped.items())
        raise ConfigError(
            f"providers: every provider is skipped because its api_key is empty ({hints}), "
            "so nothing can be served; set a key, or add a provider with requires_key: false"
        )
    raise ConfigError("providers: no provider is configured; list at least one (see docs/configuration.md)")


def load_config(path: str | None = None) -> Config:
    """Read ``path`` (default ``$CCPROXY_CONFIG`` or ``config.yaml``) into a :class:`Config`.

    Besides what :func:`build_config` checks, the file must not be empty, must not repeat a
    key in any mapping, and must leave at least one provider that is not skipped.
    """
    path = path or os.environ.get("CCPROXY_CONFIG") or DEFAULT_CONFIG
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (set CCPROXY_CONFIG to choose another)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty; it needs at least a providers: section (see docs/configuration.md)")
    config = build_config(data, path)
    try:
        _check_serves(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config
