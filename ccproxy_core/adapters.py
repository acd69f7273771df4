"""Response adapters: the protocol a body rewriter follows and how one response's adapters are chosen.

A plugin's ``ccproxy_response_adapter`` returns a :class:`ResponseAdapter` (or None) once the
upstream's head has arrived; several are chained in plugin order. The relay feeds the
adapter decoded upstream bytes and writes whatever it returns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from .context import RequestContext
from .plugins import Plugins


class ResponseAdapter(Protocol):
    """Rewrites one response body; returned by ``ccproxy_response_adapter`` (see also ``settle`` below)."""

    def feed(self, data: bytes) -> bytes:
        """Take decoded upstream bytes (split anywhere); return bytes for the client (may be empty)."""

    def finish(self) -> bytes:
        """The upstream body ended cleanly; return what is left to write."""

    # Optional: ``async def settle(self) -> None``, awaited after ``finish`` and before its bytes are
    # written: work the response's last bytes must wait for (the translate plugin keeps a Responses
    # exchange there). A ProxyError it raises ends the response with that error in the client's dialect.


class AdapterChain:
    """Several adapters in a row: each one's output is the next one's input."""

    __slots__ = ("adapters",)

    def __init__(self, adapters: list[ResponseAdapter]) -> None:
        self.adapters = adapters

    def feed(self, data: bytes) -> bytes:
        for adapter in self.adapters:
            data = adapter.feed(data)
        return data

    def finish(self) -> bytes:
        data = b""
        for adapter in self.adapters:
            data = (adapter.feed(data) if data else b"") + adapter.finish()
        return data

    async def settle(self) -> None:
        for adapter in self.adapters:
            settle = getattr(adapter, "settle", None)
            if settle is not None:
                await settle()


#: Called once the upstream answered; returns the adapter for this response or None.
AdapterFactory = Callable[[RequestContext], Awaitable["ResponseAdapter | None"]]


def plugin_adapters(plugins: Plugins) -> AdapterFactory | None:
    """The factory that asks the plugins' ``ccproxy_response_adapter`` (chained); None when no plugin implements it."""
    if not plugins.implemented("ccproxy_response_adapter"):
        return None

    async def adapter(ctx: RequestContext) -> ResponseAdapter | None:
        adapters = await plugins.call("ccproxy_response_adapter", ctx=ctx)
        if len(adapters) > 1:
            return AdapterChain(adapters)
        return adapters[0] if adapters else None

    return adapter
