"""``previous_response_id`` for a Responses client whose upstream speaks another dialect: the gateway keeps
each exchange it translated and expands the chain into the next request's ``input``.

What is kept per response id: the conversation's items up to and including that response, as one value (the
expanded input of its request plus its output items, as JSON), so a chain costs one look-up, not a walk.
``store: false`` keeps nothing. ``instructions`` are not carried over (as the Responses API does not). Against
a ``responses`` upstream none of this runs: ``previous_response_id`` is forwarded as sent.

Where: the shared state (``app.ctx.state``, key ``resp:<id>``) when ``state.backend`` is ``sqlite`` or
``redis``, so a chain continues on another worker or instance; with the ``memory`` backend a
:class:`MemoryValues` per worker, bounded in entries and bytes. Every value lives ``store_ttl`` seconds; one
over ``store_max_value_bytes`` is not kept, a short marker is, so its follow-up gets a 400 that says why.

Costs: a request without ``previous_response_id`` reads nothing; a translated Responses exchange that is kept
writes once, before the client gets its last event (:class:`Keeping`), so a follow-up sent at once finds it.
The state failing (:class:`ccproxy_core.StateUnavailable`): a follow-up gets 503 (its chain cannot be read,
whatever ``state.on_error`` says); a write with ``on_error: closed`` ends the response with a 503 error in
the client's dialect, with ``open`` the exchange is not kept and a warning is logged.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ccproxy_core import RESPONSES, InvalidRequest, Overloaded, StateUnavailable

from .base import PLUGIN_NAME, ResponseAdapter, dumps, loads

Items = list[dict[str, Any]]

__all__ = ["ResponseStore", "MemoryValues", "Keeping", "expand", "keeping"]

log = logging.getLogger("ccproxy.translate")

#: Kept instead of a value over the bound: the follow-up's 400 says why (a value is a JSON list, never this).
_TOO_LARGE = b"!too-large:"


class MemoryValues:
    """One worker's values: at most ``max_entries`` and ``max_bytes`` in all, each until it expires; the
    oldest go first. (``state.backend: memory`` keeps values by age only, so this bounds them.)"""

    def __init__(self, max_entries: int, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries, self.max_bytes, self._clock = max_entries, max_bytes, clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # key -> (expiry, value)
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        self._expire()
        entry = self._entries.get(key)
        return entry[1] if entry is not None else None

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        self._drop(key)
        self._entries[key] = (self._clock() + ttl, value)
        self.bytes += len(value)
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        self._expire()

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= len(entry[1])

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            oldest = next(iter(self._entries))
            if self._entries[oldest][0] > now:
                return
            self._drop(oldest)


class ResponseStore:
    """Translated Responses exchanges by response id, in ``values`` (the state backend or
    :class:`MemoryValues`: async ``get(key)`` and ``put(key, value, ttl)``)."""

    def __init__(self, values: Any, *, max_value_bytes: int, ttl: float, fail_open: bool = False) -> None:
        self.values, self.max_value_bytes, self.ttl, self.fail_open = values, max_value_bytes, ttl, fail_open

    async def get(self, response_id: str) -> Items:
        """The conversation's items up to and including ``response_id``'s output.

        Raises:
            InvalidRequest: not (or no longer) kept, or too large to keep.
            Overloaded: the state is unavailable.
        """
        try:
            value = await self.values.get("resp:" + response_id)
        except StateUnavailable:
            raise Overloaded("the gateway's shared state is unavailable; previous_response_id cannot be read",
                             headers={"retry-after": "1"}) from None
        if value is None:
            raise InvalidRequest(f"Previous response with id {response_id!r} not found.")
        if value.startswith(_TOO_LARGE):
            raise InvalidRequest(f"Previous response with id {response_id!r} was not kept: its conversation "
                                 f"({value[len(_TOO_LARGE):].decode()} bytes) is over the gateway's "
                                 f"plugins.translate.store_max_value_bytes ({self.max_value_bytes}); "
                                 "send the whole input instead.")
        return loads(value)

    async def put(self, response_id: str, items: Items) -> None:
        """Keep ``items`` (a marker instead when they are over the bound).

        Raises:
            Overloaded: the state is unavailable and ``state.on_error`` is ``closed``.
        """
        value = dumps(items).encode()
        if len(value) > self.max_value_bytes:
            value = _TOO_LARGE + str(len(value)).encode()
        try:
            await self.values.put("resp:" + response_id, value, self.ttl)
        except StateUnavailable:
            if not self.fail_open:
                raise Overloaded("the gateway's shared state is unavailable; this response could not be kept "
                                 "for previous_response_id", headers={"retry-after": "1"}) from None
            log.warning("response %s not kept for previous_response_id: the shared state is unavailable "
                        "(state.on_error: open)", response_id)


def _input_items(body: dict[str, Any]) -> Items:
    value = body.get("input")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def previous_id(body: dict[str, Any]) -> str | None:
    """The body's ``previous_response_id`` (None when absent).

    Raises:
        InvalidRequest: it is not a non-empty string.
    """
    previous = body.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise InvalidRequest("previous_response_id: expected a response id")
    return previous


def expand(ctx: Any, body: dict[str, Any], items: Items | None, store: ResponseStore | None) -> dict[str, Any]:
    """The body a translator reads: ``items`` (what the store holds for ``previous_response_id``) before
    this ``input``. Unless the client said ``store: false``, the expanded input is noted for :func:`keeping`."""
    if items is not None:
        body = {key: value for key, value in body.items() if key != "previous_response_id"}
        body["input"] = items + _input_items(body)
    if store is not None and body.get("store") is not False:
        ctx.state.setdefault(PLUGIN_NAME, {})["conversation"] = _input_items(body)
    return body


class Keeping:
    """Wraps the adapter of a translated Responses answer that is to be kept: once the final response object
    is known (:meth:`keep`, given to the translator), what the adapter returns is held; the core awaits
    :meth:`settle` (the write) before it sends the held bytes, the response's last."""

    __slots__ = ("adapter", "store", "items", "response", "_held")

    def __init__(self, store: ResponseStore, items: Items) -> None:
        self.store, self.items = store, items
        self.adapter: ResponseAdapter | None = None
        self.response: dict[str, Any] | None = None
        self._held: list[bytes] = []

    def keep(self, response: dict[str, Any]) -> None:
        output = response.get("output")
        if isinstance(response.get("id"), str) and isinstance(output, list) and response.get("status") != "failed":
            self.response = response

    def feed(self, data: bytes) -> bytes:
        out = self.adapter.feed(data)  # type: ignore[union-attr]
        if self.response is None:
            return out
        self._held.append(out)
        return b""

    def finish(self) -> bytes:
        out = self.adapter.finish()  # type: ignore[union-attr]
        if self.response is None:
            return out
        held, self._held = self._held, []
        return b"".join(held) + out

    async def settle(self) -> None:
        """Keep the exchange (see :meth:`ResponseStore.put`)."""
        response, self.response = self.response, None
        if response is not None:
            output = [item for item in response["output"] if isinstance(item, dict)]
            await self.store.put(response["id"], self.items + output)


def keeping(ctx: Any, store: ResponseStore | None) -> Keeping | None:
    """What keeps this request's final response object (None when nothing is to be kept)."""
    if store is None or ctx.client_dialect != RESPONSES:
        return None
    items = ctx.state.get(PLUGIN_NAME, {}).get("conversation")
    return Keeping(store, items) if items is not None else None
