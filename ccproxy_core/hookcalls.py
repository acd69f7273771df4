"""Calling hooks: through pluggy, with what pluggy has no notion of.

Every hook is called through pluggy's hook execution, ``pm._hookexec(name, impls, kwargs,
firstresult)``: what ``pm.hook.NAME(**kwargs)`` runs after checking the caller's arguments, with
each hook's implementations looked up once (:meth:`HookCalls._prepare`) rather than copied per
call. pluggy's ordering, argument selection, wrappers, tracing and call monitoring all apply.
One shortcut, for cost (docs/architecture.md has the figures): when a hook has no wrapper and
nothing traces or monitors the plugin manager, the implementations are called directly, in
pluggy's order with pluggy's arguments, each with what its adapter would add done in line, which is
what ``_multicall`` calling the adapters would do at several times the cost (per chunk, per event
and for the dozen calls of every request this matters). Each implementation sits behind an
adapter, installed as its ``HookImpl.function``, that adds:

* observer isolation: in an observer hook (:data:`OBSERVER_HOOKS`) an exception is logged once,
  counted by (plugin, hook) and the next implementation runs; in the other hooks a
  :class:`ProxyError` or :class:`ConfigError` goes through and anything else becomes a
  :class:`PluginError` (a :class:`ConfigError` in a build-time hook) that names the plugin;
* async implementations: pluggy's call loop is synchronous and cannot await one implementation
  before calling the next, so for a hook that has an ``async def`` implementation every
  implementation's adapter is a coroutine function; pluggy calls them in its order and the caller
  here awaits each in turn, so bodies still run one after another. pluggy's wrappers are
  synchronous too: one on such a hook is refused;
* ``ccproxy_configure``: each plugin's own settings, and the per-app object it may return.

The core's hot path calls hooks with :meth:`HookCalls.run`, a plain method: no coroutine unless an
implementation returned an awaitable. :meth:`~HookCalls.notify`, :meth:`~HookCalls.call` and
:meth:`~HookCalls.first` are coroutines for the calls that need one or need the results.

A hook nobody implements is never called (``_callers[name]`` is None): the guard costs a dict
look-up, a call through pluggy about 1 µs. Every plugin is registered while the app is built
(loading, then the per-app objects ``ccproxy_configure`` returns); :meth:`HookCalls._prepare` runs
after each step.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Awaitable, Iterator
from typing import Any, Callable

import pluggy
from pluggy._callers import _multicall

from . import hookspecs
from .errors import ConfigError, PluginError, ProxyError

log = logging.getLogger("ccproxy")

HOOK_PREFIX = hookspecs.PROJECT_NAME + "_"
#: Hooks called while the app is built, outside any event loop: plain functions only.
BUILD_TIME_HOOKS = frozenset({"ccproxy_configure", "ccproxy_register_routes"})
#: Hooks whose implementations cannot touch the request: an exception is logged and counted.
OBSERVER_HOOKS = frozenset({
    "ccproxy_shutdown", "ccproxy_upstream_attempt", "ccproxy_upstream_headers", "ccproxy_stream_start",
    "ccproxy_stream_chunk", "ccproxy_stream_event", "ccproxy_response_body", "ccproxy_stream_error",
    "ccproxy_stream_end",
})


class HookCalls:
    """The hook-calling half of :class:`ccproxy_core.plugins.Plugins`.

    The subclass provides ``pm`` (the plugin manager), ``source`` (the config's path),
    ``_label(name)``, ``blame(exc)`` and ``settings(name)``, and calls :meth:`_prepare` after
    registering plugins.
    """

    pm: Any
    source: str

    def __init__(self) -> None:
        #: Exceptions raised by observer hooks, by (plugin, hook).
        self.errors: Counter[tuple[str, str]] = Counter()
        #: Per-app objects returned by ``ccproxy_configure``: registered name -> owning plugin.
        self._owners: dict[str, str] = {}
        #: The implementation each adapter stands for.
        self._originals: dict[pluggy.HookImpl, Callable[..., Any]] = {}
        #: Per hook: None (no implementation), or (its implementations in pluggy's registration
        #: order, whether one of them is async, and for the shortcut, when it applies, each
        #: implementation as :func:`_run` calls it, in call order).
        self._callers: dict[str, tuple[tuple[pluggy.HookImpl, ...], bool, tuple[Direct, ...] | None] | None] = {}

    def _prepare(self) -> None:
        """Put every implementation behind its adapter and note, per hook, how to call it."""
        for name in dir(hookspecs):
            if not name.startswith(HOOK_PREFIX):
                continue
            caller = getattr(self.pm.hook, name)
            impls = caller.get_hookimpls()
            plain = [i for i in impls if not (i.wrapper or i.hookwrapper)]
            for impl in plain:
                self._originals.setdefault(impl, impl.function)
            is_async = any(inspect.iscoroutinefunction(self._originals[i]) for i in plain)
            if is_async and len(plain) < len(impls):
                wrapper = next(i for i in impls if i.wrapper or i.hookwrapper)
                coroutine = next(i for i in plain if inspect.iscoroutinefunction(self._originals[i]))
                raise ConfigError(
                    f"plugin {wrapper.plugin_name!r}: {name} is a wrapper, but plugin {coroutine.plugin_name!r} "
                    "implements it with async def; pluggy runs wrappers synchronously, so they can wrap only "
                    "hooks whose implementations are plain functions"
                )
            failures = {impl: self._failure_handler(self._owners.get(impl.plugin_name, impl.plugin_name), name)
                        for impl in plain}
            for impl in plain:
                impl.function = self._adapter(name, impl, is_async, failures[impl])  # type: ignore[misc]
            plain_only = len(plain) == len(impls) and not any(i.kwargnames for i in impls)
            direct = tuple(
                (self._originals[i], len(i.argnames), tuple(i.argnames), failures[i]) for i in reversed(impls)
            ) if plain_only and name not in BUILD_TIME_HOOKS else None
            self._callers[name] = (tuple(impls), is_async, direct) if impls else None

    def _adapter(self, hook: str, impl: pluggy.HookImpl, is_async: bool,
                 failed: Callable[[Exception], Any]) -> Callable[..., Any]:
        """``impl``'s function as pluggy calls it: its failures handled as ``hook`` requires, a
        coroutine when the hook has async implementations, its own settings for ``ccproxy_configure``."""
        func = self._originals[impl]
        if hook == "ccproxy_configure":
            return self._configure_adapter(self._owners.get(impl.plugin_name, impl.plugin_name), impl, func)
        if is_async:

            async def run_async(*args: Any, **kwargs: Any) -> Any:
                try:
                    result = func(*args, **kwargs)
                    # Observers mostly return None: skip isawaitable's ABC check (~0.3 µs) for them.
                    if result is not None and inspect.isawaitable(result):
                        result = await result
                    return result
                except Exception as exc:
                    return failed(exc)

            return run_async

        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                return failed(exc)

        return run

    def _failure_handler(self, plugin: str, hook: str) -> Callable[[Exception], Any]:
        """What an exception raised by ``plugin`` in ``hook`` becomes."""
        if hook in OBSERVER_HOOKS:
            return lambda exc: self.observer_failed(plugin, hook)
        label = self._label(plugin)

        def failed(exc: Exception) -> Any:
            if isinstance(exc, (ProxyError, ConfigError)):
                raise exc
            if hook in BUILD_TIME_HOOKS:
                raise ConfigError(f"{label} failed in {hook}: {exc!r}") from exc
            log.error("plugin %r failed in %s", plugin, hook, exc_info=exc)
            raise PluginError(f"plugin {plugin!r} failed in {hook}") from exc

        return failed

    def _configure_adapter(self, plugin: str, impl: pluggy.HookImpl, func: Callable[..., Any]) -> Callable[..., Any]:
        """``ccproxy_configure`` gets the plugin's own settings; an object it returns is registered as
        more of the plugin's hook implementations, for this app only."""
        settings = self.settings(plugin)
        at = impl.argnames.index("settings") if "settings" in impl.argnames else -1

        def configure(*args: Any, **kwargs: Any) -> None:
            args = tuple(settings if i == at else a for i, a in enumerate(args))
            try:
                instance = func(*args, **kwargs)
            except ConfigError as exc:
                message = str(exc)
                if not message.startswith(f"{self.source}: "):
                    message = f"{self.source}: {settings.where()}: {message}"
                raise ConfigError(message) from exc
            except Exception as exc:
                raise ConfigError(
                    f"{self.source}: {settings.where()}: {self._label(plugin)} failed in ccproxy_configure: {exc!r}"
                ) from exc
            if instance is not None:
                name = f"{plugin}.app"
                self._owners[name] = plugin
                self.pm.register(instance, name=name)

        return configure

    def run(self, hook_name: str, /, **kwargs: Any) -> Awaitable[None] | None:
        """Call a hook whose results are not needed (an observer hook as :meth:`notify` does, another as
        :meth:`call` does) as far as it goes without waiting: None when that was the whole call, else
        the rest of the call, which the caller awaits at once.

        The hot path's way to call a hook: when every implementation is a plain function that returns
        no awaitable, no coroutine is made.
        """
        entry = self._callers[hook_name]
        if entry is None:
            return None
        direct = entry[2]
        if direct is None or self.pm._inner_hookexec is not _multicall:
            return self._through_pluggy(hook_name, entry, kwargs, None, False)
        return _run(iter(direct), kwargs, None, False, entry[1])

    async def notify(self, hook_name: str, /, **kwargs: Any) -> None:
        """Call an observer hook: every implementation in order, each awaited; errors logged and counted."""
        rest = self._start(hook_name, kwargs, None)
        if rest is not None:
            await rest

    async def call(self, hook_name: str, /, **kwargs: Any) -> list[Any]:
        """Call a hook whose failures matter: every implementation, non-None results in order.

        A :class:`ProxyError` or :class:`ConfigError` passes through; any other exception becomes a
        :class:`PluginError` that names the plugin.
        """
        results: list[Any] = []
        rest = self._start(hook_name, kwargs, results)
        if rest is not None:
            await rest
        return results

    async def first(self, hook_name: str, /, **kwargs: Any) -> Any:
        """Call a ``firstresult`` hook: the first non-None result (awaited), or None."""
        results: list[Any] = []
        rest = self._start(hook_name, kwargs, results, first=True)
        if rest is not None:
            await rest
        return results[0] if results else None

    def _start(self, hook_name: str, kwargs: dict[str, Any], results: list[Any] | None,
               first: bool = False) -> Awaitable[None] | None:
        """The one way every hook call goes: the shortcut (:func:`_run`) when it applies, else through
        pluggy. Non-None results go to ``results`` (None: dropped); with ``first``, only the first."""
        entry = self._callers[hook_name]
        if entry is None:
            return None
        direct = entry[2]
        if direct is not None and self.pm._inner_hookexec is _multicall:  # the shortcut
            return _run(iter(direct), kwargs, results, first, entry[1])
        return self._through_pluggy(hook_name, entry, kwargs, results, first)

    async def _through_pluggy(self, hook_name: str, entry: tuple[tuple[pluggy.HookImpl, ...], bool, Any],
                              kwargs: dict[str, Any], results: list[Any] | None, first: bool) -> None:
        """A hook call through ``pm._hookexec`` and the adapters (wrappers, tracing, monitoring). What
        reaches here from an observer hook is logged and counted; from another, a :class:`ProxyError`
        or :class:`ConfigError` passes through and anything else becomes a :class:`PluginError`."""
        impls, is_async = entry[0], entry[1]
        try:
            if not first:
                returned = self.pm._hookexec(hook_name, impls, kwargs, False)
                values = await _await_each(returned, is_async) if returned else []
                if results is not None:
                    results.extend(values)
                return
            if is_async:
                # Not as firstresult: pluggy would stop at the first coroutine, a non-None value even
                # when it will return None.
                result = await _await_each(self.pm._hookexec(hook_name, impls, kwargs, False), True, first=True)
            else:
                result = self.pm._hookexec(hook_name, impls, kwargs, True)
                if result is not None and inspect.isawaitable(result):
                    result = await result
            if result is not None and results is not None:
                results.append(result)
        except Exception as exc:  # a wrapper, or an awaitable a plain function returned
            if hook_name in OBSERVER_HOOKS:
                self.observer_failed(self.blame(exc) or "?", hook_name)
            elif isinstance(exc, (ProxyError, ConfigError)):
                raise
            else:
                raise self._plugin_error(exc, hook_name) from exc

    def observer_failed(self, plugin: str, hook_name: str) -> None:
        """Record an observer's exception; the traceback is logged the first time only."""
        key = (plugin, hook_name)
        self.errors[key] += 1
        if self.errors[key] == 1:
            log.exception("plugin %r failed in %s; the request goes on (further failures are counted)", plugin, hook_name)

    def call_sync(self, hook_name: str, /, **kwargs: Any) -> list[Any]:
        """Call a build-time hook (outside an event loop): non-None results in order.

        Raises:
            ConfigError: an implementation failed; the message names the plugin and the hook.
        """
        if self._callers[hook_name] is None:
            return []
        try:
            return getattr(self.pm.hook, hook_name)(**kwargs)
        except ConfigError:
            raise
        except Exception as exc:  # a wrapper
            raise ConfigError(f"plugin {self.blame(exc)!r} failed in {hook_name}: {exc!r}") from exc

    def _plugin_error(self, exc: Exception, hook_name: str) -> PluginError:
        plugin = self.blame(exc)
        log.error("plugin %r failed in %s", plugin, hook_name, exc_info=exc)
        return PluginError(f"plugin {plugin!r} failed in {hook_name}")


#: One implementation as the shortcut calls it: (its function, how many arguments it takes, their
#: names in its order, what an exception it raises becomes).
Direct = tuple[Callable[..., Any], int, tuple[str, ...], Callable[[Exception], Any]]


def _run(impls: Iterator[Direct], kwargs: dict[str, Any], results: list[Any] | None, first: bool,
         is_async: bool) -> Awaitable[None] | None:
    """The shortcut: call ``impls`` in order, as pluggy would (each with the arguments it names, by
    position), each failure handled as its adapter would; non-None results go to ``results`` (None:
    dropped). Returns None when all ran; when one returns an awaitable, what awaits it and runs the rest.

    ``first`` (a ``firstresult`` hook) stops at the first non-None result; as pluggy's firstresult, a
    hook with no async implementation (not ``is_async``) stops at the first implementation that returned
    something, whatever that awaits to.
    """
    for function, arity, names, failed in impls:
        try:
            # By position, as _multicall passes them (by keyword costs more, through *args too).
            if arity == 1:
                result = function(kwargs[names[0]])
            elif arity == 2:
                result = function(kwargs[names[0]], kwargs[names[1]])
            else:
                result = function(*map(kwargs.__getitem__, names))
        except Exception as exc:
            result = failed(exc)  # raises, unless the hook is an observer
        if result is not None:
            # Observers mostly return None: isawaitable's ABC check (~0.3 µs) only for a result.
            if inspect.isawaitable(result):
                return _rest(result, failed, impls, kwargs, results, first, is_async)
            if results is not None:
                results.append(result)
                if first:
                    return None
    return None


async def _rest(pending: Awaitable[Any], failed: Callable[[Exception], Any], impls: Iterator[Direct],
                kwargs: dict[str, Any], results: list[Any] | None, first: bool, is_async: bool) -> None:
    """:func:`_run` from an implementation that returned ``pending``: awaited before the next one runs."""
    try:
        result = await pending
    except Exception as exc:
        result = failed(exc)
    if result is not None and results is not None:
        results.append(result)
        if first:
            return
    elif first and not is_async:
        return
    rest = _run(impls, kwargs, results, first, is_async)
    if rest is not None:
        await rest


async def _await_each(results: list[Any], is_async: bool, first: bool = False) -> Any:
    """Await ``results`` in order (the coroutines of a hook with async implementations, or what plain
    functions returned); the non-None values, or with ``first`` the first of them. Coroutines left
    when one raises (or with ``first``, after the result) are closed, never left unawaited."""
    values = []
    pending = iter(results)
    try:
        for result in pending:
            if is_async or inspect.isawaitable(result):
                result = await result
            if result is not None:
                if first:
                    return result
                values.append(result)
    finally:
        for rest in pending:
            if inspect.iscoroutine(rest):
                rest.close()
    return None if first else values
