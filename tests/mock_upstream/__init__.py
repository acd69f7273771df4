"""A mock of the Anthropic Messages, OpenAI Chat Completions and OpenAI Responses upstreams over a real socket, shared
by the tests and the benchmarks.

Hand-written HTTP/1.1 (an :class:`asyncio.Protocol` with ``httptools``, no framework) so that it can
misbehave exactly (split or coalesced writes, truncated chunked bodies, resets, garbage, stalls) and
stay cheap enough that a benchmark measures the proxy, not the mock.

* The path picks the dialect: ``POST .../v1/messages`` is Anthropic, ``POST .../chat/completions``
  is OpenAI, ``POST .../responses`` is the Responses API, ``POST .../v1/messages/count_tokens`` and
  ``POST .../responses/input_tokens`` count tokens, ``GET .../models`` lists models.
  Anything else is a 404 in the dialect guessed from the headers (``anthropic-version`` or
  ``x-api-key`` means Anthropic, otherwise OpenAI).
* ``"stream": true`` in the request JSON selects SSE (``transfer-encoding: chunked``), otherwise
  a JSON body with ``content-length``.
* ``x-mock-*`` request headers choose a scenario; see :class:`Scenario`. The benchmarks use
  ``x-mock-rate`` (events on a schedule) and ``x-mock-stamp`` (each text delta carries its send
  time) and ``x-mock-fixed-ids``.
* Request-id headers are derived from the request's method, path and body, so a request sent
  directly and through a proxy gets the same one; message ids and timestamps are random/now
  unless ``x-mock-fixed-ids: 1`` makes every body byte-stable.

Modules: ``scenario`` (the headers), ``content`` (what is said), ``dialect`` (what a dialect
provides) with one module per dialect (``anthropic_messages``, ``openai_chat``, ``openai_responses``), ``routes`` (path
-> dialect and handler), ``wire`` (bytes and faults), ``server`` (connections, the server),
``thread`` (the server in a thread, for synchronous tests), ``__main__`` (standalone: ``python -m tests.mock_upstream --port 9999``).
"""

from tests.mock_upstream.content import DEFAULT_TEXT
from tests.mock_upstream.request import RecordedRequest
from tests.mock_upstream.scenario import Scenario
from tests.mock_upstream.server import MockUpstream
from tests.mock_upstream.thread import MockUpstreamThread

__all__ = ["MockUpstream", "MockUpstreamThread", "RecordedRequest", "Scenario", "DEFAULT_TEXT", "stream_framing"]

#: Client dialect -> SSE events a stream carries besides its text deltas (``x-mock-content: text``,
#: no ``stream_options``): what a load client adds to ``x-mock-events`` to know how many events to expect.
stream_framing = {"anthropic": 6, "openai": 3, "responses": 8}
