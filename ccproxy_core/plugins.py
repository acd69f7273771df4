"""Finding, loading and calling plugins.

Plugins are modules (or objects) holding ``@hookimpl`` functions. Installed
packages declare them in the entry-point group ``ccproxy``; first-party plugins
come in the same way, through this project's own entry points.

:class:`Plugins` calls hooks itself instead of through ``pm.hook.NAME(...)``:
the implementations of each hook are looked up once, after loading, so a hook
nobody implements costs one empty-tuple check, and each implementation is
called on its own so one plugin's exception does not hide another's work.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pluggy

from . import hookspecs
from .config import Config
from .errors import ConfigError, PluginError, ProxyError

log = logging.getLogger("ccproxy")

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME

#: (plugin name, function, names of the arguments it accepts)
Impl = tuple[str, Callable[..., Any], tuple[str, ...]]


@dataclass(slots=True)
class PluginInfo:
    """What ``GET /plugins`` shows of one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    enabled: bool = True


class Plugins:
    """The plugins of one app, and the one place hooks are called from."""

    def __init__(self, config: Config, extra: Iterable[tuple[str, object]] = (), *, entry_points: bool = True) -> None:
        """Load plugins from entry points (honouring ``plugins.enabled``/``disabled``) and ``extra``.

        Raises:
            ConfigError: an unknown plugin name in the config, a plugin that fails to
                import, or a misspelt hook name in a plugin.
        """
        self.config = config
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        #: Exceptions raised by observer hooks, by (plugin, hook).
        self.errors: Counter[tuple[str, str]] = Counter()
        settings = config.plugins
        enabled = settings.get("enabled")
        disabled = set(settings.get("disabled", []))
        available: list[tuple[str, Callable[[], object], str | None, str | None]] = []
        if entry_points:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                dist = ep.dist
                available.append((ep.name, ep.load, dist.name if dist else None, dist.version if dist else None))
        for name, obj in extra:
            available.append((name, lambda obj=obj: obj, None, None))
        known = {name for name, *_ in available}
        for key in list(settings) + list(enabled or []) + list(disabled):
            if key not in ("enabled", "disabled") and key not in known:
                raise ConfigError(
                    f"{config.path or '<config>'}: plugins.{key}: no installed plugin is called {key!r} "
                    f"(installed: {', '.join(sorted(known)) or 'none'})"
                )
        for name, load, dist, version in available:
            info = PluginInfo(name, dist, version)
            self.info[name] = info
            if name in disabled or (enabled is not None and name not in enabled):
                info.enabled = False
                continue
            try:
                plugin = load()
            except Exception as exc:
                raise ConfigError(f"plugin {name!r} ({dist or 'built in'}) failed to import: {exc!r}") from exc
            self.pm.register(plugin, name=name)
        for name, info in self.info.items():
            plugin = self.pm.get_plugin(name)
            if plugin is not None:
                info.hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise ConfigError(f"plugin {exc.plugin_name!r}: {exc}") from None
        self._impls: dict[str, tuple[Impl, ...]] = {}
        for name in dir(hookspecs):
            if name.startswith("ccproxy_"):
                self._impls[name] = self._collect(name)

    def _collect(self, hook_name: str) -> tuple[Impl, ...]:
        caller = getattr(self.pm.hook, hook_name)
        impls = [i for i in caller.get_hookimpls() if not (i.hookwrapper or i.wrapper)]
        # pluggy calls the last registered (and tryfirst) implementations first.
        return tuple((i.plugin_name, i.function, tuple(i.argnames)) for i in reversed(impls))

    def implemented(self, hook_name: str) -> bool:
        """True when at least one loaded plugin implements ``hook_name``."""
        return bool(self._impls[hook_name])

    def impls(self, hook_name: str) -> tuple[Impl, ...]:
        return self._impls[hook_name]

    async def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call an observer hook: every implementation, errors logged and swallowed."""
        for plugin, func, argnames in self._impls[hook_name]:
            try:
                result = func(*[kwargs[a] for a in argnames])
                if inspect.isawaitable(result):
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
        for plugin, func, argnames in self._impls[hook_name]:
            result = await self._invoke(plugin, hook_name, func, argnames, kwargs)
            if result is not None:
                results.append(result)
        return results

    async def first(self, hook_name: str, **kwargs: Any) -> Any:
        """Call a ``firstresult`` hook: the first non-None result, or None."""
        for plugin, func, argnames in self._impls[hook_name]:
            result = await self._invoke(plugin, hook_name, func, argnames, kwargs)
            if result is not None:
                return result
        return None

    def first_sync(self, hook_name: str, **kwargs: Any) -> Any:
        """Like :meth:`first`, for start-up hooks called outside an event loop (no async implementations)."""
        for plugin, func, argnames in self._impls[hook_name]:
            result = func(*[kwargs[a] for a in argnames])
            if inspect.isawaitable(result):
                raise ConfigError(f"plugin {plugin!r}: {hook_name} must not be async")
            if result is not None:
                return result
        return None

    @staticmethod
    async def _invoke(plugin: str, hook_name: str, func: Callable[..., Any], argnames: tuple[str, ...], kwargs: dict) -> Any:
        try:
            result = func(*[kwargs[a] for a in argnames])
            if inspect.isawaitable(result):
                result = await result
            return result
        except (ProxyError, ConfigError):
            raise
        except Exception as exc:
            log.exception("plugin %r failed in %s", plugin, hook_name)
            raise PluginError(f"plugin {plugin!r} failed in {hook_name}") from exc
