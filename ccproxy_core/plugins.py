"""Finding, loading, configuring and calling plugins.

First-party plugins are the modules in :data:`DEFAULT_PLUGINS`, registered from code as
datasette registers its default plugins, so a checkout that was never pip-installed has
them too. Third-party plugins come through pluggy's ``load_setuptools_entrypoints`` from
the entry-point group ``ccproxy``; the config's ``disabled:`` (and ``enabled:``) lists
become pluggy's ``set_blocked``. Everything that can be wrong with a plugin (an unknown
name in the config, an import error, a misspelt hook, an argument the hook does not pass,
a bad setting) is found while the app is built and raised as a one-line
:class:`ConfigError` naming the plugin.

Hooks are called through pluggy; how, and what each implementation's adapter adds, is
:mod:`ccproxy_core.hookcalls` (the other half of :class:`Plugins`).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import inspect
import logging
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Callable, Iterable, TypeVar

import pluggy

from . import hookspecs
from .config import Config, convert
from .errors import ConfigError, PluginError
from .hookcalls import BUILD_TIME_HOOKS, HOOK_PREFIX, OBSERVER_HOOKS, HookCalls

__all__ = ["BUILD_TIME_HOOKS", "DEFAULT_PLUGINS", "OBSERVER_HOOKS", "PluginInfo", "PluginSettings", "Plugins"]

log = logging.getLogger("ccproxy")

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME

#: This project's own plugins, registered in this order before any installed one (pluggy calls
#: the last registered first). The plugin's name is the module's last component.
DEFAULT_PLUGINS = (
    "ccproxy_plugins.access_log",
    "ccproxy_plugins.auth",
    "ccproxy_plugins.dashboard",
    "ccproxy_plugins.demo",
    "ccproxy_plugins.health",
    "ccproxy_plugins.metrics",
    "ccproxy_plugins.otel",
    "ccproxy_plugins.providers",
    "ccproxy_plugins.translate",
    "ccproxy_plugins.usage",
)

#: (plugin name, function, names of the arguments it accepts)
Impl = tuple[str, Callable[..., Any], tuple[str, ...]]

T = TypeVar("T")


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
        #: The plugin's name (the key under ``plugins:``).
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
        converted as the config's own keys are (:func:`ccproxy_core.config.convert`:
        ``str``, ``int``, ``float``, ``bool``, ``list[X]``, ``dict[str, X]``, ``X | None``,
        ``Literal[...]``, ``Any``, nested dataclasses; numbers must not be negative);
        strings from ``${VAR}`` become numbers or booleans when the field asks for one.

        Raises:
            ConfigError: an unknown key, a missing required key or a value of the
                wrong type, naming the key.
        """
        if not dataclasses.is_dataclass(schema):
            raise TypeError(f"PluginSettings.load() takes a dataclass, not {schema!r}")
        unknown = f"unknown setting (plugin {self.name!r} takes: {{names}})"
        try:
            return convert(self._data, schema, self.where(), unknown, "required setting is missing")
        except ConfigError as exc:
            raise ConfigError(f"{self.source}: {exc}") from None


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

    As in pytest, ``@hookimpl`` is only needed for options (``tryfirst``, ``trylast``,
    ``wrapper``, ``specname``, ``optionalhook``): a hook function that forgot the decorator
    is not silently ignored, and a misspelt ``ccproxy_`` name is an unknown hook, reported
    at start-up. ``register`` (also what ``load_setuptools_entrypoints`` calls) first runs
    ``check``, which turns what pluggy would refuse into ccproxy's one-line errors.
    """

    _defaults = _default_impl_opts()

    def __init__(self, check: Callable[[str, object], None]) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self._check = check

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

    def register(self, plugin: object, name: str | None = None) -> str | None:
        if name is not None and self.is_blocked(name):
            return None
        self._check(name or "", plugin)
        try:
            return super().register(plugin, name)
        except (pluggy.PluginValidationError, ValueError) as exc:  # ValueError: one object, two names
            raise ConfigError(f"plugin {name!r}: {' '.join(str(exc).split())}") from None


def _argnames(func: Callable[..., Any]) -> tuple[str, ...]:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return ()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in params if p.kind in kinds and p.default is p.empty)


@cache
def _distribution(package: str) -> tuple[str | None, str | None]:
    """(name, version) of the installed distribution holding top-level ``package``, or (None, None)."""
    for dist in importlib.metadata.distributions():
        if package in (dist.read_text("top_level.txt") or "").split():
            return dist.metadata["Name"], dist.version
    return None, None


def _entry_points() -> dict[str, tuple[str | None, str | None]]:
    """Installed plugins: entry-point name -> (distribution, version), as pluggy will find them.

    Raises:
        ConfigError: two distributions install a plugin of one name.
    """
    found: dict[str, tuple[str | None, str | None]] = {}
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP:
                continue
            name = dist.metadata["Name"] if dist.metadata else None
            if ep.name in found and found[ep.name][0] != name:
                raise ConfigError(
                    f"two installed plugins are called {ep.name!r} ({found[ep.name][0]} and {name}); "
                    "uninstall one of them"
                )
            found.setdefault(ep.name, (name, dist.version))
    return found


class Plugins(HookCalls):
    """The plugins of one app, and the one place hooks are called from."""

    def __init__(self, config: Config, extra: Iterable[tuple[str, object]] = (), *, entry_points: bool = True) -> None:
        """Register :data:`DEFAULT_PLUGINS`, the installed plugins and ``extra``, honouring
        ``plugins.enabled``/``disabled``; check them; call ``ccproxy_configure``.

        A plugin in ``extra`` replaces a default or installed one of the same name, and is
        registered last. ``entry_points=False`` registers ``extra`` only (tests).

        Raises:
            ConfigError: an unknown plugin name in the config, two installed plugins
                with one name, a plugin that fails to import, a misspelt hook name, a hook
                argument the hook does not pass, an ``async`` implementation of a
                build-time hook, or a setting a plugin refuses.
        """
        super().__init__()
        self.config = config
        self.source = config.path or "<config>"
        self.pm = _PluginManager(self._check_plugin)
        self.info: dict[str, PluginInfo] = {}
        extra = list(extra)
        available: dict[str, tuple[str | None, str | None]] = {}  # name -> (distribution, version)
        defaults = {}
        if entry_points:
            for module in DEFAULT_PLUGINS:
                defaults[module.rpartition(".")[2]] = module
                available[module.rpartition(".")[2]] = _distribution(module.partition(".")[0])
            for name, dist in _entry_points().items():
                if name in defaults and dist[0] != available[name][0]:
                    raise ConfigError(f"two installed plugins are called {name!r} ({available[name][0] or 'first-party'}"
                                      f" and {dist[0]}); uninstall one of them")
                available.setdefault(name, dist)
        extra_names: set[str] = set()
        for name, _ in extra:
            if name in extra_names:
                raise ConfigError(f"two plugins passed to create_app are called {name!r}")
            extra_names.add(name)
            available[name] = (None, None)  # replaces a default or installed plugin (e.g. a test double)
        self._block(available)
        for name, (dist, version) in available.items():
            self.info[name] = PluginInfo(name, dist, version, enabled=not self.pm.is_blocked(name))
        for name, module in defaults.items():
            if name not in extra_names and not self.pm.is_blocked(name):
                self.pm.register(self._import(name, module), name=name)
        for name in sorted(set(available) - set(defaults) - extra_names):
            try:  # one by one: a stable order, and an import error names its plugin
                self.pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(f"plugin {name!r} ({available[name][0] or 'registered in code'}) "
                                  f"failed to import: {exc!r}") from exc
        for name, plugin in extra:
            self.pm.register(plugin, name=name)
        self._check_hooks()
        self._prepare()
        self._configure()
        self._list_hooks()

    # -- loading and checking ---------------------------------------------------------------

    def _block(self, available: Mapping[str, Any]) -> None:
        """pluggy's ``set_blocked`` for the config's ``disabled`` list and what ``enabled`` leaves out."""
        settings = self.config.plugins
        enabled, disabled = settings.get("enabled"), settings.get("disabled", [])
        for key in [*settings, *(enabled or []), *disabled]:
            if key not in ("enabled", "disabled") and key not in available:
                raise ConfigError(
                    f"{self.source}: plugins.{key}: no installed plugin is called {key!r} "
                    f"(installed: {', '.join(sorted(available)) or 'none'})"
                )
            if key in available and settings.get(key) is not None and not isinstance(settings.get(key), dict):
                raise ConfigError(f"{self.source}: plugins.{key}: expected a mapping of settings for plugin {key!r}")
        for name in available:
            if name in disabled or (enabled is not None and name not in enabled):
                self.pm.set_blocked(name)

    def _import(self, name: str, module: str) -> object:
        try:
            return importlib.import_module(module)
        except Exception as exc:
            raise ConfigError(f"{self._label(name)} failed to import: {exc!r}") from exc

    def _label(self, name: str) -> str:
        """``plugin 'NAME' (distribution)`` for messages; a per-app object is named by its plugin."""
        owner = self._owners.get(name, name)
        info = self.info.get(owner)
        return f"plugin {owner!r}" + (f" ({info.distribution})" if info and info.distribution else "")

    def _check_plugin(self, name: str, plugin: object) -> None:
        """What ``_PluginManager.register`` checks before pluggy does, with errors naming the plugin."""
        label = self._label(name)
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
                    f"{label}: {attr}() takes {', '.join(extra)}, which {hook} does not pass "
                    f"(it passes: {', '.join(allowed)})"
                )
            if hook in BUILD_TIME_HOOKS and (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)):
                raise ConfigError(
                    f"{label}: {hook} must be a plain function, not async "
                    "(it runs while the app is built, before any event loop)"
                )

    def _check_hooks(self) -> None:
        """pluggy's ``check_pending``, with a message naming the plugin and the hook."""
        known = [n for n in dir(hookspecs) if n.startswith(HOOK_PREFIX)]
        for hook_name, caller in vars(self.pm.hook).items():
            if hook_name.startswith("_") or caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if not impl.optionalhook:
                    close = difflib.get_close_matches(hook_name, known, n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else f" (hooks: {', '.join(known)})"
                    raise ConfigError(f"{self._label(impl.plugin_name)}: unknown hook {hook_name!r}{hint}")

    def _list_hooks(self) -> None:
        """Each plugin's hooks for ``GET /plugins``, its per-app object's included."""
        for name, info in self.info.items():
            hooks: set[str] = set()
            for registered in [name, *(n for n, owner in self._owners.items() if owner == name)]:
                plugin = self.pm.get_plugin(registered)
                if plugin is not None:
                    hooks.update(h.name for h in self.pm.get_hookcallers(plugin) or [] if h.has_spec())
            info.hooks = sorted(hooks)

    def settings(self, name: str) -> PluginSettings:
        """Plugin ``name``'s own settings block (empty when the config has none)."""
        return PluginSettings(name, self.config.plugin_settings(name), self.source)

    def _configure(self) -> None:
        """Call ``ccproxy_configure`` (each plugin gets its own settings), then take in the per-app
        objects it returned."""
        self.pm.hook.ccproxy_configure(config=self.config, settings=None)
        if self._owners:
            self._check_hooks()
            self._prepare()

    # -- introspection ------------------------------------------------------------------------

    def implemented(self, hook_name: str) -> bool:
        """True when at least one loaded plugin implements ``hook_name``."""
        return self._callers[hook_name] is not None

    def impls(self, hook_name: str) -> tuple[Impl, ...]:
        """The implementations of ``hook_name`` in call order: (plugin, function, argument names)."""
        impls = reversed(getattr(self.pm.hook, hook_name).get_hookimpls())
        return tuple((i.plugin_name, self._originals.get(i, i.function), tuple(i.argnames)) for i in impls)

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
            modules.append((module, self._owners.get(name, name)))
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
