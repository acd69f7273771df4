"""The otel plugin: spans exported over OTLP/HTTP to a receiver on a real socket, decoded from protobuf.

A streamed, a translated, a failed (retried) and a fallback request go through a proxy whose exporter
points (by the standard ``OTEL_*`` variables) at :class:`Receiver`; the spans it decoded are checked for
their kind, GenAI attributes, parent links, the incoming ``traceparent`` continued and forwarded upstream.
Then the standard variables the plugin leaves to the SDK: the sampler, the batch processor's bounded queue
and schedule (shutdown exports what is left).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags  # noqa: E402

from tests.servers import ANTHROPIC_BODY, OPENAI_BODY, ProxyThread, closed_port, provider_config  # noqa: E402

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


class Receiver:
    """An OTLP/HTTP trace receiver on 127.0.0.1: decodes each export, keeps its spans and resource."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.resources: list[Any] = []
        self.paths: list[str] = []
        #: Set on each export's arrival; an export is answered once ``gate`` is set (it is, unless cleared).
        self.posted = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.posted.set()
                receiver.gate.wait(10)
                export = ExportTraceServiceRequest.FromString(body)
                receiver.paths.append(self.path)
                for resource_spans in export.resource_spans:
                    receiver.resources.append(resource_spans.resource)
                    for scope in resource_spans.scope_spans:
                        receiver.spans.extend(scope.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def attrs(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        out[kv.key] = [v.string_value for v in value.array_value.values] if kind == "array_value" \
            else getattr(value, kind)
    return out


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    receiver = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.url + "/v1/traces")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "ccproxy-under-test")
    yield receiver
    receiver.server.shutdown()


def exporter_of(proxy: ProxyThread) -> Any:
    plugin = next(p for p in proxy.app.ctx.plugins.pm.get_plugins() if type(p).__name__ == "OtelPlugin")
    return plugin.export


@pytest.mark.parametrize("encoder", ["ccproxy", "sdk"])
def test_spans_for_streamed_translated_failed_and_fallback_requests(
    mock: Any, receiver: Receiver, encoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every kind of request's spans; once encoded by the plugin (``otlp``), once by the SDK's encoder (taken
    when the SDK's own exporter metrics are on)."""
    if encoder == "sdk":
        monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    config = provider_config(mock.url)
    config["providers"]["broken"] = {"format": "anthropic", "base_url": f"http://127.0.0.1:{closed_port()}",
                                     "api_key": "x", "models": ["fb-*"], "fallbacks": ["anthropic"]}
    config["retries"] = {"max_attempts": 2, "backoff_base": 0.01, "backoff_max": 0.02}
    config["plugins"] = {"otel": {"enabled": True}}
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    with ProxyThread(config) as proxy:
        assert (exporter_of(proxy).post is None) is (encoder == "sdk")

        def post(path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
            return httpx.post(proxy.url + path, json=body, headers=headers, timeout=10)

        assert post("/v1/messages", ANTHROPIC_BODY, traceparent=traceparent).status_code == 200
        forwarded = mock.requests[-1].header("traceparent")
        assert post("/v1/chat/completions", {**OPENAI_BODY, "model": "claude-sonnet-4-5"}).status_code == 200
        assert post("/v1/messages", {**ANTHROPIC_BODY, "stream": False}, **{"x-mock-status": "500"}).status_code == 500
        assert post("/v1/messages", {**ANTHROPIC_BODY, "model": "fb-model", "stream": False}).status_code == 200
    # Stopping the proxy shut the tracer provider down: everything is exported by now.
    assert set(receiver.paths) == {"/v1/traces"}
    service = {kv.key: kv.value.string_value for r in receiver.resources for kv in r.attributes}
    assert service["service.name"] == "ccproxy-under-test"

    servers = [s for s in receiver.spans if s.kind == s.SPAN_KIND_SERVER]
    clients = [s for s in receiver.spans if s.kind == s.SPAN_KIND_CLIENT]
    assert len(servers) == 4
    children = {s.span_id: [c for c in clients if c.parent_span_id == s.span_id] for s in servers}
    assert sum(len(c) for c in children.values()) == len(clients)  # every client span has its server span
    by_model = {attrs(s)["gen_ai.request.model"] + ("/openai" if attrs(s)["http.route"] != "/v1/messages" else "")
                + ("/500" if attrs(s).get("http.response.status_code") == 500 else ""): s for s in servers}

    # Streamed, with an incoming traceparent: continued, and forwarded upstream from the client span.
    streamed = by_model["claude-sonnet-4-5"]
    a = attrs(streamed)
    assert streamed.trace_id.hex() == TRACE_ID and streamed.parent_span_id.hex() == PARENT_ID
    assert streamed.name == "chat claude-sonnet-4-5"
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "anthropic"
    assert a["gen_ai.usage.input_tokens"] == 12 and a["gen_ai.usage.output_tokens"] == 5
    assert a["gen_ai.response.model"] and a["gen_ai.response.finish_reasons"] == ["end_turn"]
    assert a["ccproxy.outcome"] == "completed" and a["ccproxy.translated"] is False
    assert [e.name for e in streamed.events] == ["gen_ai.first_token"]
    assert streamed.start_time_unix_nano < streamed.events[0].time_unix_nano < streamed.end_time_unix_nano
    (client,) = children[streamed.span_id]
    assert client.trace_id.hex() == TRACE_ID
    assert forwarded == f"00-{TRACE_ID}-{client.span_id.hex()}-01"
    assert attrs(client)["gen_ai.usage.output_tokens"] == 5 and client.end_time_unix_nano <= streamed.end_time_unix_nano

    # Translated: an OpenAI client, an Anthropic upstream.
    translated = attrs(by_model["claude-sonnet-4-5/openai"])
    assert translated["ccproxy.translated"] is True and translated["gen_ai.provider.name"] == "anthropic"
    assert translated["gen_ai.response.finish_reasons"] == ["end_turn"]

    # Failed: 500 twice (a retry), both attempts' spans in error, the server span too.
    failed = by_model["claude-sonnet-4-5/500"]
    assert failed.status.code == failed.status.STATUS_CODE_ERROR
    assert attrs(failed)["error.type"] == "http_500"
    attempts = children[failed.span_id]
    assert len(attempts) == 2 and all(attrs(c)["error.type"] == "http_500" for c in attempts)
    assert all(c.status.code == c.status.STATUS_CODE_ERROR for c in attempts)

    # Fallback: the broken provider's connect error, then the answer from the fallback.
    fallback = by_model["fb-model"]
    assert fallback.status.code != fallback.status.STATUS_CODE_ERROR
    spans = sorted(children[fallback.span_id], key=lambda c: c.start_time_unix_nano)
    assert [attrs(c)["ccproxy.provider"] for c in spans] == ["broken", "anthropic"]
    assert attrs(spans[0])["error.type"] == "connect" and "http.response.status_code" not in attrs(spans[0])
    assert attrs(spans[1])["http.response.status_code"] == 200
    # A retry of a route adds a span; a trace never leaks into another one.
    assert {s.trace_id for s in receiver.spans} >= {bytes.fromhex(TRACE_ID)} and len({s.trace_id for s in servers}) == 4


def test_off_unless_configured(mock: Any) -> None:
    with ProxyThread(provider_config(mock.url)) as proxy:
        impls = {hook: {name for name, _, _ in proxy.app.ctx.plugins.impls(hook)}
                 for hook in ("ccproxy_request_head", "ccproxy_request_headers", "ccproxy_stream_end")}
    assert all("otel" not in names for names in impls.values())


def post(proxy: ProxyThread, body: dict[str, Any] = ANTHROPIC_BODY, **headers: str) -> httpx.Response:
    response = httpx.post(proxy.url + "/v1/messages", json=body, headers=headers, timeout=10)
    assert response.status_code == 200
    return response


def otel_config(mock: Any) -> dict[str, Any]:
    return {**provider_config(mock.url), "plugins": {"otel": {"enabled": True}}}


def test_stream_of_an_openai_upstream(mock: Any, receiver: Receiver) -> None:
    """The answer's model and finish reason, read from a Chat Completions stream as it passes."""
    with ProxyThread(otel_config(mock)) as proxy:
        response = httpx.post(proxy.url + "/v1/chat/completions", json=OPENAI_BODY, timeout=10)
        assert response.status_code == 200 and b"[DONE]" in response.content
    (server,) = [s for s in receiver.spans if s.kind == s.SPAN_KIND_SERVER]
    a = attrs(server)
    assert a["gen_ai.provider.name"] == "openai" and a["gen_ai.response.model"].startswith("gpt-4o")
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    (client,) = [s for s in receiver.spans if s.kind == s.SPAN_KIND_CLIENT]
    assert attrs(client)["gen_ai.response.finish_reasons"] == ["stop"]


def test_sampler_from_the_environment(mock: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """``parentbased_always_off``: a new trace is not recorded, yet its context goes upstream unsampled; a
    sampled incoming parent is followed, an unsampled one too; a malformed ``traceparent`` starts a new trace."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_off")
    state = "vendor=a1b2,other=x"
    with ProxyThread(otel_config(mock)) as proxy:
        post(proxy)
        root = mock.requests[-1].header("traceparent")
        post(proxy, traceparent="00-not-a-valid-traceparent-01")
        malformed = mock.requests[-1].header("traceparent")
        post(proxy, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-00")
        unsampled = mock.requests[-1].header("traceparent")
        post(proxy, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01", tracestate=state)
        sampled, sampled_state = mock.requests[-1].header("traceparent"), mock.requests[-1].header("tracestate")
    for header in (root, malformed):
        version, trace_id, span_id, flags = header.split("-")
        assert trace_id != TRACE_ID and len(trace_id) == 32 and int(flags, 16) & 1 == 0
    assert unsampled.startswith(f"00-{TRACE_ID}-") and unsampled.endswith("-00")
    assert sampled.startswith(f"00-{TRACE_ID}-") and sampled.endswith("-01") and sampled_state == state
    assert {s.trace_id.hex() for s in receiver.spans} == {TRACE_ID} and len(receiver.spans) == 2
    (server,) = [s for s in receiver.spans if s.kind == s.SPAN_KIND_SERVER]
    assert server.parent_span_id.hex() == PARENT_ID and server.trace_state == state
    assert server.flags & SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK  # its parent came from another process
    (client,) = [s for s in receiver.spans if s.kind == s.SPAN_KIND_CLIENT]
    assert sampled == f"00-{TRACE_ID}-{client.span_id.hex()}-01" and client.parent_span_id == server.span_id


def test_queue_is_bounded(mock: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
                          caplog: pytest.LogCaptureFixture) -> None:
    """``OTEL_BSP_MAX_QUEUE_SIZE``: while an export is stuck, ended spans wait in a queue of that size; the
    oldest are dropped (the SDK logs it), and the newest are exported once the receiver answers."""
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "2")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1")
    receiver.gate.clear()
    caplog.set_level(logging.WARNING, logger="opentelemetry.sdk._shared_internal")
    with ProxyThread(otel_config(mock)) as proxy:
        post(proxy)
        assert receiver.posted.wait(10)  # the first span's export, held by the receiver
        ids = [post(proxy).headers["x-ccproxy-request-id"] for _ in range(4)]  # 8 more spans: 6 dropped
        receiver.gate.set()
    assert "Queue full, dropping Span." in caplog.text
    assert len(receiver.paths) == 3 and len(receiver.spans) == 3
    kept = receiver.spans[1:]  # the last request's client span, then its server span
    assert [s.kind for s in kept] == [kept[0].SPAN_KIND_CLIENT, kept[0].SPAN_KIND_SERVER]
    assert attrs(kept[1])["ccproxy.request_id"] == ids[-1] and kept[0].parent_span_id == kept[1].span_id


def test_batches_wait_for_the_schedule_and_shutdown_flushes(mock: Any, receiver: Receiver,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``OTEL_BSP_SCHEDULE_DELAY`` and ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``: spans wait for a batch; stopping
    the proxy exports them all."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "6")
    with ProxyThread(otel_config(mock)) as proxy:
        post(proxy)
        post(proxy)
        time.sleep(0.3)
        assert receiver.spans == []  # 4 spans: fewer than a batch, the delay not over
        post(proxy)  # 6: a batch
        deadline = time.monotonic() + 10
        while len(receiver.spans) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(receiver.spans) == 6 and len(receiver.paths) == 1
        post(proxy, {**ANTHROPIC_BODY, "stream": False})
    assert len(receiver.spans) == 8 and len(receiver.paths) == 2
    assert len({s.trace_id for s in receiver.spans}) == 4


def test_sdk_disabled(mock: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """``OTEL_SDK_DISABLED=true``: no span, no context of the proxy's upstream (a client's passes through)."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    with ProxyThread(otel_config(mock)) as proxy:
        post(proxy)
        assert mock.requests[-1].header("traceparent") is None
        post(proxy, traceparent=traceparent)
        assert mock.requests[-1].header("traceparent") == traceparent
    assert receiver.spans == []


@pytest.mark.parametrize("encoder", ["ccproxy", "sdk"])
def test_a_name_that_is_not_unicode_does_not_lose_the_batch(
    mock: Any, receiver: Receiver, encoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone surrogate (a client's JSON escape) in the model's name: ``?`` in its place in the span, and the
    other spans of the batch are exported too (the SDK's encoder, given it, fails the whole batch)."""
    if encoder == "sdk":
        monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    with ProxyThread(otel_config(mock)) as proxy:
        post(proxy)
        response = httpx.post(proxy.url + "/v1/messages", content=b'{"model": "x\\ud800y", "messages": []}',
                              headers={"content-type": "application/json"}, timeout=10)
        assert response.status_code == 404
    servers = sorted((s for s in receiver.spans if s.kind == s.SPAN_KIND_SERVER), key=lambda s: s.name)
    assert [s.name for s in servers] == ["chat claude-sonnet-4-5", "chat x?y"]
    assert attrs(servers[1])["gen_ai.request.model"] == "x?y"


_plain = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(), st.binary(max_size=8),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
)
_values = st.recursive(_plain, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.tuples(inner), st.dictionaries(st.text(max_size=4), inner, max_size=3)
), max_leaves=6)
_attributes = st.dictionaries(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=10), _values,
                              max_size=6)


@settings(max_examples=150, deadline=None)
# Values equal as keys of a table, encoded differently: the server span's first, then the client span's.
@example(server={"x": 0.0, "t": (1,), "u": (1,)}, client={"x": -0.0, "t": (True,), "u": (1.0,)}, resource={},
         remote=False, state=None, error=None, first_token=None)
@given(server=_attributes, client=_attributes, resource=_attributes, remote=st.booleans(),
       state=st.sampled_from([None, "", "vendor=a1,b=2"]), error=st.sampled_from([None, (None,), ("boom é",)]),
       first_token=st.sampled_from([None, (0.25, 1_700_000_000_000_000_500)]))
def test_the_plugins_encoding_is_the_sdks_byte_for_byte(server: dict, client: dict, resource: dict, remote: bool,
                                                       state: str | None, error: Any, first_token: Any) -> None:
    """``otlp`` against the SDK's ``encode_spans`` of the same spans (made as the SDK path makes them): the
    same bytes, for any attributes the SDK can encode (an attribute it cannot is left out by both)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanContext, TraceFlags, TraceState

    from ccproxy_plugins import otel, otlp

    provider = TracerProvider(resource=Resource(resource))
    export = otel.Export(None, provider)
    trace_state = TraceState.from_header([state]) if state is not None else None
    ids = (int(TRACE_ID, 16), 1, trace_state)
    parent = SpanContext(ids[0], int(PARENT_ID, 16), remote, TraceFlags(1), trace_state) if remote else None
    spans = [otel.Span(ids, parent, "chat m", otel.SERVER, 0x1234, 1_700_000_000_000_000_000, server),
             otel.Span(ids, 0x1234, "chat é", otel.CLIENT, 0x5678, 1_700_000_000_000_000_001, client)]
    for span in spans:
        span.end, span.error = 1_700_000_000_000_009_000, error
    spans[0].first_token = first_token
    ours = otlp.export_request(otlp.attributes(provider.resource.attributes, otlp.RESOURCE_ATTRIBUTES),
                               export.scope_bytes, [export.encoded(span) for span in spans])
    sdk = encode_spans([export.readable(span, provider.resource) for span in spans])
    assert ours == sdk.SerializePartialToString()


def test_the_table_of_encoded_attributes_is_bounded() -> None:
    from ccproxy_plugins import otlp

    for i in range(otlp.KV_CACHE_MAX + 10):
        otlp.attributes({"gen_ai.request.model": f"model-{i}", "ccproxy.request_id": f"id-{i}"},
                        unique={"ccproxy.request_id"})
        assert len(otlp._kv_cache) <= otlp.KV_CACHE_MAX
    assert not any(key == "ccproxy.request_id" for key, _, _ in otlp._kv_cache)  # unique: never kept
