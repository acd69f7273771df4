"""``previous_response_id`` for a Responses client whose upstream speaks another dialect: the gateway keeps
each exchange it translated and expands the chain into the next request's ``input``.

What is kept per response id: the conversation's items up to and including that response, as one list (the
expanded input of its request plus its output items), so a chain costs one look-up, not a walk. ``store:
false`` keeps nothing. ``instructions`` are not carried over (as the Responses API does not). Against a
``responses`` upstream none of this runs: ``previous_response_id`` is forwarded as sent.

:class:`ResponseStore` is the interface (the team gateway's state backend will implement it);
:class:`MemoryResponseStore` is the in-process default, bounded in entries, bytes and age.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from ccproxy_core import RESPONSES, InvalidRequest

from .base import PLUGIN_NAME, dumps, loads

Items = list[dict[str, Any]]

__all__ = ["ResponseStore", "MemoryResponseStore", "expand", "recorder"]


class ResponseStore(Protocol):
    """Where translated Responses exchanges are kept, by response id. Both calls are synchronous and cheap
    (they run on the event loop); a store may forget an entry at any time (it is then a 400 to the client)."""

    def get(self, response_id: str) -> Items | None:
        """The conversation's items up to and including ``response_id``'s output, or None."""

    def put(self, response_id: str, items: Items) -> None:
        """Keep ``items`` for ``response_id``."""


class MemoryResponseStore:
    """The in-process store: at most ``max_entries`` responses and ``max_bytes`` of their items as JSON,
    each for ``ttl`` seconds; the oldest go first. Per worker: a chain continued on another worker is
    not found (run one worker, or a shared backend, for stateful clients)."""

    def __init__(self, max_entries: int = 1000, max_bytes: int = 64 << 20, ttl: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries, self.max_bytes, self.ttl, self._clock = max_entries, max_bytes, ttl, clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # id -> (expiry, items as JSON)
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, response_id: str) -> Items | None:
        self._expire()
        entry = self._entries.get(response_id)
        return loads(entry[1]) if entry is not None else None

    def put(self, response_id: str, items: Items) -> None:
        data = dumps(items).encode()
        if len(data) > self.max_bytes:
            return
        self._drop(response_id)
        self._entries[response_id] = (self._clock() + self.ttl, data)
        self.bytes += len(data)
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        self._expire()

    def _drop(self, response_id: str) -> None:
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self.bytes -= len(entry[1])

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            oldest = next(iter(self._entries))
            if self._entries[oldest][0] > now:
                return
            self._drop(oldest)


def _input_items(body: dict[str, Any]) -> Items:
    value = body.get("input")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def expand(ctx: Any, body: dict[str, Any], store: ResponseStore | None) -> dict[str, Any]:
    """The body a translator reads: ``previous_response_id``'s items before this ``input``. Unless the
    client said ``store: false``, the expanded input is noted for :func:`recorder`.

    Raises:
        InvalidRequest: the id is not a string, or not (or no longer) kept here.
    """
    previous = body.get("previous_response_id")
    if previous is not None:
        if not isinstance(previous, str) or not previous:
            raise InvalidRequest("previous_response_id: expected a response id")
        items = store.get(previous) if store is not None else None
        if items is None:
            raise InvalidRequest(f"Previous response with id {previous!r} not found.")
        body = {key: value for key, value in body.items() if key != "previous_response_id"}
        body["input"] = items + _input_items(body)
    if store is not None and body.get("store") is not False:
        ctx.state.setdefault(PLUGIN_NAME, {})["conversation"] = _input_items(body)
    return body


def recorder(ctx: Any, store: ResponseStore | None) -> Callable[[dict[str, Any]], None] | None:
    """What keeps the final response object of this request (None when nothing is to be kept)."""
    if store is None or ctx.client_dialect != RESPONSES:
        return None
    items = ctx.state.get(PLUGIN_NAME, {}).get("conversation")
    if items is None:
        return None

    def keep(response: dict[str, Any]) -> None:
        output = response.get("output")
        if isinstance(response.get("id"), str) and isinstance(output, list) and response.get("status") != "failed":
            store.put(response["id"], items + [item for item in output if isinstance(item, dict)])

    return keep
