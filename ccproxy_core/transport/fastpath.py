"""The fast path: a capability any transport may offer the proxy's engine, and how the engine finds it.

The engine sends each upstream request through its provider's transport (the one
``ccproxy_upstream_transport`` returned, or the default). A transport that defines
``send_parts`` (:class:`FastPath`) is called with the request's parts; any other gets an
``httpx.Request`` through httpx's ``handle_async_request``, which every transport has.
Setting ``send_parts = None`` in a class withdraws the capability, as ``__hash__ = None``
does for hashing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import httpx

#: ``send_parts(method, url, headers, body, timeouts)``, bound to its transport.
SendParts = Callable[[str, httpx.URL, Mapping[str, str], bytes, dict[str, float | None]], Awaitable[httpx.Response]]


class FastPath(Protocol):
    """A transport that can send a request from its parts, and survives cancellation.

    By defining ``send_parts`` a transport promises:

    * **The parts.** ``method`` (any case), ``url`` (parsed once per URL string by the
      engine), ``headers`` (names as spelled, in order; adding ``Host`` and
      ``Content-Length`` when they are not there is the transport's job, as httpx does for
      ``httpx.Request(method, url, headers=headers, content=body)``),
      ``body`` (the whole body) and ``timeouts`` (httpx's dict: ``connect``, ``read``,
      ``write``, ``pool``). The engine lowers ``timeouts["read"]`` to the idle gap once the
      head arrived: read it before each body read.
    * **The result.** An ``httpx.Response`` whose head has arrived and whose body streams
      (``aiter_raw``); ``response.request`` may be unset. Failures raise httpx's
      exceptions, as from ``handle_async_request``.
    * **Cancellation safety.** The call, each body read and ``response.aclose()`` may be
      cancelled at any await without leaving a connection checked out (cleanup that never
      awaits does this). The engine then calls them in the request's own task. For a
      transport without ``send_parts`` it runs the call and each body read in a task of
      their own, cancelled at most once, because httpcore's cleanup awaits: a second
      cancellation landing there leaked connections (docs/reliability.md).
    """

    async def send_parts(
        self,
        method: str,
        url: httpx.URL,
        headers: Mapping[str, str],
        body: bytes,
        timeouts: dict[str, float | None],
    ) -> httpx.Response:
        """Send one request built from these parts; return once its response head arrived."""
        ...


def fast_path(transport: object) -> SendParts | None:
    """``transport.send_parts`` when the transport offers the fast path, else None."""
    return getattr(transport, "send_parts", None)
