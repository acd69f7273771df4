"""The floor: a Sanic app that answers the benchmark's requests itself, with no upstream call.

    sanic bench.floor:app --single-process --host 127.0.0.1 --port 8100    # from the repository root

It serves the proxy's routes (``/v1/messages``, ``/v1/chat/completions``, ``/v1/responses``) in the
proxy's process model (``bench/run.py`` starts it like the proxy: one process pinned to CPU 0, or
``--workers 2``) and answers what the mock upstream would (``tests/mock_upstream``'s own ``routes.route``,
``Scenario``, ``wire.sse`` and reply headers: the same bodies, provider headers and SSE events), so the
work left is Sanic's own: parse the request, write the response. A stream is ``request.respond()`` and
one ``response.send()`` per event on the ``x-mock-rate`` schedule; ``x-mock-delay`` and
``x-mock-headers-delay`` wait as the mock waits. Under ``x-mock-fixed-ids`` an answer depends on nothing
but the request's bytes, so (as the mock does for JSON) it is built and encoded once per distinct request
and sent again from memory: the floor pays for Sanic's work, not for making up the answer. The framing headers (``content-length``,
``transfer-encoding``, ``connection``, ``keep-alive``) are Sanic's; the Sanic settings are the proxy's.

Every goal of ``make bench`` is a ratio to this floor or to the direct column: the machine's speed of
the day cancels out.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sanic import Request, Sanic
from sanic.response import HTTPResponse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from ccproxy_core.listen import use_per_worker_sockets  # noqa: E402
from tests.mock_upstream.content import STAMP  # noqa: E402
from tests.mock_upstream.request import RecordedRequest  # noqa: E402
from tests.mock_upstream.routes import dialect_of, route  # noqa: E402
from tests.mock_upstream.scenario import Scenario  # noqa: E402
from tests.mock_upstream.wire import ReplyWriter, http_date, sse  # noqa: E402

ROUTES = ("/v1/messages", "/v1/chat/completions", "/v1/responses")
#: Framing and connection headers (Sanic writes its own) and ``date`` (fresh for each response).
_NOT_KEPT = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "date"})
_STAMP = STAMP.encode()
_CACHED_MAX = 64
_CACHED_EVENTS_MAX = 10_000
_now_ns = time.monotonic_ns  # the clock of the mock's stamps and of the load client

app = Sanic("ccproxy_floor")
# The proxy's settings (ccproxy_core.server.create_app), so that only the upstream call differs.
app.config.REQUEST_MAX_SIZE = 32 * 1024 * 1024
app.config.RESPONSE_TIMEOUT = 365 * 24 * 3600
app.config.KEEP_ALIVE_TIMEOUT = 75
app.config.NOISY_EXCEPTIONS = False
use_per_worker_sockets(app)  # the proxy's default under --workers N
#: (path, x-mock-* headers, body) -> the answer to a request with ``x-mock-fixed-ids`` (bounded).
_answers: dict[tuple[object, ...], _Answer] = {}


@dataclass(frozen=True)
class _Answer:
    """What to send: a JSON ``body``, or ``frames()``, the SSE events encoded (stamps still placeholders)."""

    sc: Scenario
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    frames: Callable[[], Iterable[bytes]] | None = None


def _prepare(request: Request, raw: list[tuple[str, str]], given: tuple[tuple[str, str], ...]) -> _Answer:
    """The mock's reply (``routes.route``), its headers but for ``date`` and the framing ones."""
    recorded = RecordedRequest(request.method, request.path, request.query_string, raw, request.body)
    try:
        sc = Scenario.parse(given)
    except ValueError as exc:
        sc = Scenario()
        reply = dialect_of(recorded)(recorded).error_reply(400, str(exc))
    else:
        reply = route(recorded, sc)
    writer = ReplyWriter(None, sc, keep_alive=True, head_only=False, gzip=False)  # type: ignore[arg-type]
    headers = [(k, v) for k, v in writer.headers(reply) if k not in _NOT_KEPT]
    if reply.events is None:
        return _Answer(sc, reply.status, headers, reply.body)
    events = reply.events
    if sc.fixed_ids and (sc.events or 0) <= _CACHED_EVENTS_MAX:
        frames = tuple(sse(event, "\n") for event in events())
        return _Answer(sc, reply.status, headers, frames=lambda: frames)
    return _Answer(sc, reply.status, headers, frames=lambda: (sse(event, "\n") for event in events()))


async def answer(request: Request) -> HTTPResponse | None:
    """The mock's reply to ``request``, written by Sanic."""
    raw = list(request.headers.items())
    given = Scenario.given(raw)
    key = (request.path, given, request.body)
    a = _answers.get(key)
    if a is None:
        a = _prepare(request, raw, given)
        if a.sc.fixed_ids and not a.sc.echo:  # depends on nothing but the request's bytes
            if len(_answers) >= _CACHED_MAX:
                _answers.clear()
            _answers[key] = a
    sc = a.sc
    headers = [("date", http_date()), *a.headers]
    if sc.headers_delay or (sc.delay and a.frames is None):
        await asyncio.sleep(sc.headers_delay + (sc.delay if a.frames is None else 0))
    if a.frames is None:
        return HTTPResponse(a.body, status=a.status, headers=headers, content_type="application/json")
    response = await request.respond(status=a.status, headers=headers, content_type="text/event-stream; charset=utf-8")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    delay, rate, stamp = sc.delay, sc.rate, sc.stamp
    for index, data in enumerate(a.frames()):
        if delay:
            await asyncio.sleep(delay)
        if rate is not None:
            wait = t0 + index / rate - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        if stamp:
            data = data.replace(_STAMP, b"@%020d" % _now_ns())
        await response.send(data)
    await response.eof()
    return None


async def traces(request: Request) -> HTTPResponse:
    """OTLP/HTTP: every export accepted (an empty ``ExportTraceServiceResponse`` is no bytes). The benchmark
    starts a floor on CPU 1 as the sink of its ``otel`` set-up."""
    return HTTPResponse(b"", content_type="application/x-protobuf")


for _path in ROUTES:
    app.add_route(answer, _path, methods=["POST"], name=_path.strip("/").replace("/", "_"))
app.add_route(traces, "/v1/traces", methods=["POST"], name="traces")
