"""Finding, loading, configuring and calling plugins.

Plugins are modules (or objects) holding ``ccproxy_*`` hook functions. Installed
packages declare them in the entry-point group ``ccproxy``; first-party plugins
come in the same way, through this project's own entry points. Everything that
can be wrong with a plugin (an unknown name in the config, an import error, a
misspelt hook, an argument the hook does not pass, a bad setting) is found while
the app is built and raised as a one-line :class:`ConfigError` naming the plugin.

:class:`Plugins` calls hooks itself instead of through ``pm.hook.NAME(...)``:
the implementations of each hook are looked up once, after loading, so a hook
nobody implements costs one empty-tuple check, and each implementation is
called on its own so one plugin's exception does not hide another's work (and
``ccproxy_configure`` can hand each plugin its own settings).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import types
import typing
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, TypeVar

import pluggy

from . import hookspecs
from .config import Config
from .errors import ConfigError, PluginError, ProxyError

log = logging.getLogger("ccproxy")

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
HOOK_PREFIX = hookspecs.PROJECT_NAME + "_"

#: Hooks called while the app is built, outside any event loop: plain functions only.
BUILD_TIME_HOOKS = frozenset({"ccproxy_configure", "ccproxy_register_routes"})

#: (plugin name, function, names of the arguments it accepts)
Impl = tuple[str, Callable[..., Any], tuple[str, ...]]

T = TypeVar("T")


# -- settings ------------------------------------------------------------------------------


class PluginSettings(Mapping[str, Any]):
    """One plugin's own block under ``plugins:`` in the config, as ``ccproxy_configure`` gets it.

    A read-only mapping of the YAML values (``${VAR}`` already replaced from the
    environment), plus :meth:`load` to check them against a dataclass and
    :meth:`error` to refuse one of them. Every error is one line that names the
    config file, the plugin and the key, e.g.
    ``config.yaml: plugins.example.threshold: expected a whole number, got str 'many'``.
    """

    __slots__ = ("name", "source", "_data")

    def __init__(self, name: str, data: Mapping[str, Any] | None = None, source: str = "") -> None:
        #: The plugin's name (its entry-point name, the key under ``plugins:``).
        self.name = name
        #: The config file the settings came from (``<config>`` when built in code).
        self.source = source or "<config>"
        self._data = dict(data or {})

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"PluginSettings({self.name!r}, {sorted(self._data)})"

    def where(self, key: str | None = None) -> str:
        """The key path of ``key`` in the config: ``plugins.NAME.KEY``."""
        return f"plugins.{self.name}" + (f".{key}" if key else "")

    def error(self, key: str | None, message: str) -> ConfigError:
        """A :class:`ConfigError` about setting ``key`` (or the whole block when None), to raise."""
        return ConfigError(f"{self.source}: {self.where(key)}: {message}")

    def load(self, schema: type[T]) -> T:
        """Check the settings against the dataclass ``schema`` and return an instance of it.

        Each field is a setting; a field without a default is required. Values are
        converted to the field's type (``str``, ``int``, ``float``, ``bool``,
        ``list[X]``, ``dict[str, X]``, ``X | None``, ``Literal[...]``, ``Any``, nested
        dataclasses); strings from ``${VAR}`` become numbers or booleans when the
        field asks for one.

        Raises:
            ConfigError: an unknown key, a missing required key or a value of the
                wrong type, naming the key.
        """
        if not dataclasses.is_dataclass(schema):
            raise TypeError(f"PluginSettings.load() takes a dataclass, not {schema!r}")
        return _build(schema, self._data, self, prefix="")


def _build(schema: Any, data: Mapping[str, Any], settings: PluginSettings, prefix: str) -> Any:
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise settings.error(
                prefix + str(key), f"unknown setting (plugin {settings.name!r} takes: {', '.join(fields) or 'none'})"
            )
        kwargs[key] = _convert(value, hints[key], settings, prefix + key)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise settings.error(prefix + name, "required setting is missing")
    return schema(**kwargs)


def _describe(value: Any) -> str:
    return type(value).__name__ if isinstance(value, (dict, list)) else f"{type(value).__name__} {value!r}"


def _convert(value: Any, hint: Any, settings: PluginSettings, key: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        first: ConfigError | None = None
        for option in options:
            if option is not type(None):
                try:
                    return _convert(value, option, settings, key)
                except ConfigError as exc:
                    first = first or exc
        assert first is not None
        raise first
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise settings.error(key, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin is list or hint is list:
        if not isinstance(value, list):
            raise settings.error(key, f"expected a list, got {_describe(value)}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_convert(v, item, settings, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise settings.error(key, f"expected a mapping, got {_describe(value)}")
        _, item = typing.get_args(hint) or (str, Any)
        return {str(k): _convert(v, item, settings, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise settings.error(key, f"expected a mapping, got {_describe(value)}")
        return _build(hint, value, settings, prefix=key + ".")
    if hint is bool:
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.strip().lower() in ("true", "yes", "on", "1")
        if not isinstance(value, bool):
            raise settings.error(key, f"expected true or false, got {_describe(value)}")
        return value
    if hint in (int, float):
        if isinstance(value, str):
            try:
                value = hint(value.strip())
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or (hint is int and isinstance(value, float) and not value.is_integer()):
            raise settings.error(key, f"expected a {'whole number' if hint is int else 'number'}, got {_describe(value)}")
        return hint(value)
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise settings.error(key, f"expected a string, got {_describe(value)}")
        return value
    if isinstance(hint, type):
        if not isinstance(value, hint):
            raise settings.error(key, f"expected {hint.__name__}, got {_describe(value)}")
        return value
    raise TypeError(f"{settings.where(key)}: PluginSettings.load() cannot check type {hint!r}")


# -- loading -----------------------------------------------------------------------------


@dataclass(slots=True)
class PluginInfo:
    """What ``GET /plugins`` shows of one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    enabled: bool = True


def _default_impl_opts() -> dict[str, Any]:
    def probe() -> None: ...

    hookspecs.hookimpl(probe)
    return dict(getattr(probe, HOOK_PREFIX + "impl"))


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager, where every ``ccproxy_*`` function is a hook implementation.

    As in pytest, ``@hookimpl`` is only needed for options (``tryfirst``,
    ``trylast``, ``specname``, ``optionalhook``): a hook function that forgot the
    decorator is not silently ignored, and a misspelt ``ccproxy_`` name is an
    unknown hook, reported at start-up.
    """

    _defaults = _default_impl_opts()

    def parse_hookimpl_opts(self, plugin: object, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is not None or not name.startswith(HOOK_PREFIX):
            return opts
        try:
            attr = inspect.getattr_static(plugin, name)
        except AttributeError:
            return None
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        if not inspect.isfunction(attr):
            return None  # e.g. a module named ccproxy_something imported by the plugin
        return dict(self._defaults)


def _argnames(func: Callable[..., Any]) -> tuple[str, ...]:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return ()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in params if p.kind in kinds and p.default is p.empty)


def _takes_keywords(func: Callable[..., Any], argnames: tuple[str, ...]) -> bool:
    """True when ``func(**kwargs)`` works for ``kwargs`` holding exactly ``argnames``."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return all(
        name in params and params[name].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        for name in argnames
    )


class Plugins:
    """The plugins of one app, and the one place hooks are called from."""

    def __init__(self, config: Config, extra: Iterable[tuple[str, object]] = (), *, entry_points: bool = True) -> None:
        """Load plugins from entry points (honouring ``plugins.enabled``/``disabled``) and ``extra``,
        check them, and call ``ccproxy_configure`` with each plugin's settings.

        A plugin in ``extra`` replaces an installed one of the same name.

        Raises:
            ConfigError: an unknown plugin name in the config, two installed plugins
                with one name, a plugin that fails to import, a misspelt hook name, a hook
                argument the hook does not pass, an ``async`` implementation of a
                build-time hook, or a setting a plugin refuses.
        """
        self.config = config
        self.source = config.path or "<config>"
        self.pm = _PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        #: Exceptions raised by observer hooks, by (plugin, hook).
        self.errors: Counter[tuple[str, str]] = Counter()
        settings = config.plugins
        enabled = settings.get("enabled")
        disabled = set(settings.get("disabled", []))
        available: list[tuple[str, Callable[[], object], str | None, str | None]] = []
        if entry_points:
            import importlib.metadata

            # A stable order: this project's own plugins first, then the others by name.
            eps = sorted(
                importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
                key=lambda ep: (ep.dist is None or ep.dist.name != hookspecs.PROJECT_NAME, ep.name),
            )
            for ep in eps:
                dist = ep.dist
                available.append((ep.name, ep.load, dist.name if dist else None, dist.version if dist else None))
        seen: dict[str, str | None] = {}
        for name, _, dist, _ in available:
            if name in seen:
                raise ConfigError(
                    f"two installed plugins are called {name!r} ({seen[name]} and {dist}); uninstall one of them"
                )
            seen[name] = dist
        extra_names: set[str] = set()
        for name, obj in extra:
            if name in extra_names:
                raise ConfigError(f"two plugins passed to create_app are called {name!r}")
            extra_names.add(name)
            # A plugin passed in code replaces an installed one of the same name (e.g. a test double).
            available = [a for a in available if a[0] != name]
            available.append((name, lambda obj=obj: obj, None, None))
            seen[name] = None
        for key in list(settings) + list(enabled or []) + list(disabled):
            if key not in ("enabled", "disabled") and key not in seen:
                raise ConfigError(
                    f"{self.source}: plugins.{key}: no installed plugin is called {key!r} "
                    f"(installed: {', '.join(sorted(seen)) or 'none'})"
                )
            if key in seen and settings.get(key) is not None and not isinstance(settings.get(key), dict):
                raise ConfigError(f"{self.source}: plugins.{key}: expected a mapping of settings for plugin {key!r}")
        for name, load, dist, version in available:
            info = PluginInfo(name, dist, version)
            self.info[name] = info
            if name in disabled or (enabled is not None and name not in enabled):
                info.enabled = False
                continue
            try:
                plugin = load()
            except Exception as exc:
                raise ConfigError(f"plugin {name!r} ({dist or 'registered in code'}) failed to import: {exc!r}") from exc
            self._register(name, plugin)
        self._check_hooks()
        for name, info in self.info.items():
            plugin = self.pm.get_plugin(name)
            if plugin is not None:
                info.hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [] if h.has_spec())
        self._impls: dict[str, tuple[Impl, ...]] = {}
        for name in dir(hookspecs):
            if name.startswith(HOOK_PREFIX):
                self._impls[name] = self._collect(name)
        #: Per hook, what the request-time callers iterate: (plugin, function, argument names,
        #: whether the function can take the caller's keyword arguments as they are).
        self._calls: dict[str, tuple[tuple[str, Callable[..., Any], tuple[str, ...], bool], ...]] = {
            name: tuple((plugin, func, argnames, _takes_keywords(func, argnames)) for plugin, func, argnames in impls)
            for name, impls in self._impls.items()
        }
        self._configure()

    # -- loading and checking ---------------------------------------------------------------

    def _label(self, name: str) -> str:
        info = self.info.get(name)
        dist = info.distribution if info else None
        return f"plugin {name!r}" + (f" ({dist})" if dist else "")

    def _register(self, name: str, plugin: object) -> None:
        for attr in dir(plugin):
            opts = self.pm.parse_hookimpl_opts(plugin, attr) if attr.startswith(HOOK_PREFIX) else None
            if opts is None:
                continue
            hook = opts.get("specname") or attr
            spec = getattr(hookspecs, hook, None)
            if spec is None:
                continue  # unknown hooks are reported by _check_hooks, with a suggestion
            func = getattr(plugin, attr)
            allowed = _argnames(spec)
            extra = [a for a in _argnames(func) if a not in allowed]
            if extra:
                raise ConfigError(
                    f"{self._label(name)}: {attr}() takes {', '.join(extra)}, which {hook} does not pass "
                    f"(it passes: {', '.join(allowed)})"
                )
            if opts.get("wrapper") or opts.get("hookwrapper"):
                raise ConfigError(
                    f"{self._label(name)}: {attr} is a wrapper; ccproxy calls each implementation itself, "
                    "so wrappers are not supported (order implementations with tryfirst/trylast)"
                )
            if hook in BUILD_TIME_HOOKS and (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)):
                raise ConfigError(
                    f"{self._label(name)}: {hook} must be a plain function, not async "
                    "(it runs while the app is built, before any event loop)"
                )
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise ConfigError(f"{self._label(name)}: {' '.join(str(exc).split())}") from None
        except ValueError as exc:  # the same object registered twice under two names
            raise ConfigError(f"{self._label(name)}: {' '.join(str(exc).split())}") from None

    def _check_hooks(self) -> None:
        """pluggy's ``check_pending``, with a message naming the plugin and the hook."""
        known = [n for n in dir(hookspecs) if n.startswith(HOOK_PREFIX)]
        for hook_name in list(self.pm.hook.__dict__):
            if hook_name.startswith("_"):
                continue
            caller = getattr(self.pm.hook, hook_name)
            if caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                import difflib

                close = difflib.get_close_matches(hook_name, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (hooks: {', '.join(known)})"
                raise ConfigError(f"{self._label(impl.plugin_name)}: unknown hook {hook_name!r}{hint}")

    def _collect(self, hook_name: str) -> tuple[Impl, ...]:
        caller = getattr(self.pm.hook, hook_name)
        impls = caller.get_hookimpls()
        # pluggy calls the last registered (and tryfirst) implementations first.
        return tuple((i.plugin_name, i.function, tuple(i.argnames)) for i in reversed(impls))

    def settings(self, name: str) -> PluginSettings:
        """Plugin ``name``'s own settings block (empty when the config has none)."""
        return PluginSettings(name, self.config.plugin_settings(name), self.source)

    def _configure(self) -> None:
        """Call each ``ccproxy_configure`` implementation with its own plugin's settings."""
        for plugin, func, argnames in self._impls["ccproxy_configure"]:
            settings = self.settings(plugin)
            kwargs = {"config": self.config, "settings": settings}
            try:
                func(*[kwargs[a] for a in argnames])
            except ConfigError as exc:
                message = str(exc)
                if not message.startswith(f"{self.source}: "):
                    message = f"{self.source}: {settings.where()}: {message}"
                raise ConfigError(message) from exc
            except Exception as exc:
                raise ConfigError(
                    f"{self.source}: {settings.where()}: {self._label(plugin)} failed in ccproxy_configure: {exc!r}"
                ) from exc

    # -- introspection ------------------------------------------------------------------------

    def implemented(self, hook_name: str) -> bool:
        """True when at least one loaded plugin implements ``hook_name``."""
        return bool(self._impls[hook_name])

    def impls(self, hook_name: str) -> tuple[Impl, ...]:
        return self._impls[hook_name]

    def describe(self) -> list[dict[str, Any]]:
        """What ``GET /plugins`` shows: every installed plugin, enabled or not."""
        errors: dict[str, dict[str, int]] = {}
        for (plugin, hook), count in self.errors.items():
            errors.setdefault(plugin, {})[hook] = count
        return [
            {
                "name": info.name,
                "distribution": info.distribution,
                "version": info.version,
                "enabled": info.enabled,
                "hooks": info.hooks,
                "errors": errors.get(info.name, {}),
            }
            for info in self.info.values()
        ]

    def blame(self, exc: BaseException) -> str | None:
        """The plugin whose code raised ``exc`` (innermost frame first), or None."""
        modules: list[tuple[str, str]] = []
        for name, plugin in self.pm.list_name_plugin():
            module = plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__module__
            modules.append((module, name))
        frames = []
        tb = exc.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame.f_globals.get("__name__", ""))
            tb = tb.tb_next
        for module in reversed(frames):
            for prefix, name in modules:
                if module == prefix or module.startswith(prefix + "."):
                    return name
        return None

    def failed_mid_response(self, exc: Exception, ctx: Any) -> PluginError:
        """Log an exception raised while the body was relayed (a response adapter, after the
        head went out) and return the :class:`PluginError` the client is told about."""
        plugin = self.blame(exc)
        who = f"plugin {plugin!r}" if plugin else "the proxy"
        log.error("request %s: %s failed while rewriting the response", ctx.request_id, who, exc_info=exc)
        error = PluginError(f"{who} failed while rewriting the response ({type(exc).__name__})")
        error.__cause__ = exc
        return error

    # -- calling ------------------------------------------------------------------------------

    async def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call an observer hook: every implementation in order, each awaited; errors logged and swallowed."""
        for plugin, func, argnames, keywords in self._calls[hook_name]:
            try:
                # An implementation taking every argument passed gets them as they are (no list built).
                if keywords and len(argnames) == len(kwargs):
                    result = func(**kwargs)
                else:
                    result = func(*[kwargs[a] for a in argnames])
                # Observers mostly return None: skip isawaitable's ABC check (~0.3 µs) for them.
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception:
                self.observer_failed(plugin, hook_name)

    def observer_failed(self, plugin: str, hook_name: str) -> None:
        """Record an observer's exception; the traceback is logged the first time only."""
        key = (plugin, hook_name)
        self.errors[key] += 1
        if self.errors[key] == 1:
            log.exception("plugin %r failed in %s; the request goes on (further failures are counted)", plugin, hook_name)

    async def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a hook whose failures matter: every implementation, non-None results in order.

        A :class:`ProxyError` or :class:`ConfigError` passes through; any other exception becomes a
        :class:`PluginError` that names the plugin.
        """
        results = []
        for plugin, func, argnames, keywords in self._calls[hook_name]:
            result = await self._invoke(plugin, hook_name, func, argnames, kwargs, keywords)
            if result is not None:
                results.append(result)
        return results

    async def first(self, hook_name: str, **kwargs: Any) -> Any:
        """Call a ``firstresult`` hook: the first non-None result (awaited), or None."""
        for plugin, func, argnames, keywords in self._calls[hook_name]:
            result = await self._invoke(plugin, hook_name, func, argnames, kwargs, keywords)
            if result is not None:
                return result
        return None

    def call_sync(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a build-time hook (outside an event loop): non-None results in order.

        Raises:
            ConfigError: an implementation failed; the message names the plugin and the hook.
        """
        results = []
        for plugin, func, argnames in self._impls[hook_name]:
            try:
                result = func(*[kwargs[a] for a in argnames])
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(f"{self._label(plugin)} failed in {hook_name}: {exc!r}") from exc
            if result is not None:
                results.append(result)
        return results

    @staticmethod
    async def _invoke(
        plugin: str, hook_name: str, func: Callable[..., Any], argnames: tuple[str, ...], kwargs: dict,
        keywords: bool = False,
    ) -> Any:
        try:
            if keywords and len(argnames) == len(kwargs):
                result = func(**kwargs)
            else:
                result = func(*[kwargs[a] for a in argnames])
            if result is not None and inspect.isawaitable(result):
                result = await result
            return result
        except (ProxyError, ConfigError):
            raise
        except Exception as exc:
            log.exception("plugin %r failed in %s", plugin, hook_name)
            raise PluginError(f"plugin {plugin!r} failed in {hook_name}") from exc
