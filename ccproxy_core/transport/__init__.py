"""ccproxy's upstream HTTP/1.1 client: :class:`FastTransport`, behind httpx's transport interface.

Why: httpx's default transport (httpcore) spends 1.6-3 ms of CPU per proxied request
at 32 concurrent requests, mostly in its pool bookkeeping. ccproxy keeps httpx as its
client *API* (``httpx.Request``/``httpx.Response``, exception types, timeouts) and
swaps the wire layer for this package, which costs roughly a tenth of that.

Import from this package; its modules are private. One concern each:

* :mod:`.fast` — :class:`FastTransport` and one exchange: framing a request (the only
  place that does), writing it once, awaiting its head; never resending what left.
* :mod:`.pool` — idle connections per origin, the bound on connections, waiting for a slot.
* :mod:`.connection` — one connection: socket callbacks, waits, the body queue, flow control.
* :mod:`.head` — parsing a response head: its limits (:class:`ResponseHeadTooLarge`) and
  the statuses a proxy can relay.
* :mod:`.response` — the body stream of one response and the connection's return to the pool.
* :mod:`.tunnel` — routes: direct, an HTTP forward proxy or a ``CONNECT`` tunnel, and the
  environment's proxy settings (:func:`environment_proxy`).
* :mod:`.fastpath` — :class:`FastPath`, the capability any transport may offer the engine
  (``send_parts``), and :func:`fast_path`, the engine's look-up.

HTTP/2, HTTPS proxies (TLS to the proxy itself), SOCKS and upgrades are not supported.
"""

from .fast import FastTransport
from .fastpath import FastPath, SendParts, fast_path
from .head import ResponseHeadTooLarge
from .tunnel import environment_proxy

__all__ = ["FastPath", "FastTransport", "ResponseHeadTooLarge", "SendParts", "environment_proxy", "fast_path"]
