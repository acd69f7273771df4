"""OpenTelemetry traces of each request, in the GenAI semantic conventions, exported over OTLP/HTTP.

Off unless configured (``plugins: otel: {enabled: true}``); then it needs the ``otel`` extra
(``pip install 'ccproxy-core[otel]'``: the official SDK and its OTLP/HTTP exporter). Disabled it
registers no hook and costs nothing.

Per request:

* one ``SERVER`` span, from the request's arrival to its end, continuing the trace of an incoming
  ``traceparent`` (W3C Trace Context); an event ``gen_ai.first_token`` when the first byte reached the
  client (for a stream, the first event);
* one ``CLIENT`` span per upstream attempt, its child, so retries and fallbacks show; the answering
  attempt's span lasts until the body is relayed. The route's first attempt's context goes upstream as
  ``traceparent`` (headers are prepared once per route, so a retry of the same route carries it too).

Attributes: ``gen_ai.operation.name`` (``chat``), ``gen_ai.provider.name`` (``anthropic``/``openai``, the
upstream's dialect), ``gen_ai.request.model``, ``gen_ai.response.model`` and
``gen_ai.response.finish_reasons`` (read from the answer), ``gen_ai.usage.input_tokens``/``output_tokens``,
``http.response.status_code``, ``error.type``; and ``ccproxy.provider`` (the configured name),
``ccproxy.outcome``, ``ccproxy.translated``, ``ccproxy.request_id``. Never a prompt, a completion or a key.

Cost: the request path only keeps plain values (:class:`Span`, a slots object per span: ids, times, a dict of
attributes); the SDK's span objects, with their attribute checks and locks, are never made there. The SDK
still decides what it does well: the sampler (``OTEL_TRACES_SAMPLER(_ARG)``, asked once per trace: a client
span follows its server span, as every standard sampler decides), the resource, the ids, the batch
processor (``OTEL_BSP_*``: its queue is bounded, beyond it the oldest span is dropped and logged) and the OTLP
exporter (``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT``, ``_HEADERS``, ``_TIMEOUT``, ``_COMPRESSION``). Each
ended span goes to the batch processor as it is; its thread writes a batch's OTLP bytes (:mod:`.otlp`,
without the SDK's protobuf objects) and the exporter's HTTP client posts them (:class:`Export`).
``OTEL_SERVICE_NAME`` (default ``ccproxy``) and ``OTEL_RESOURCE_ATTRIBUTES`` name the resource. One provider per worker, flushed when it stops. The answer's
model and finish reasons come from a response adapter that parses only the reads that can carry them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from . import otlp
from .dashboard.aggregate import error_kind
from ccproxy_core import (
    ANTHROPIC,
    COMPLETED,
    DECODABLE_CODINGS,
    OPENAI,
    Attempt,
    PluginSettings,
    RequestContext,
    SSEParser,
    hookimpl,
)

NAME = "otel"
OPERATION = "chat"
#: OTLP's span kinds, as the SDK's ``SpanKind`` values (the SDK is imported only when enabled).
SERVER, CLIENT = 1, 2
SAMPLED, RANDOM = 0x01, 0x02  # W3C trace flags: sampled, the trace id is random

log = logging.getLogger("ccproxy")


@dataclass
class OtelSettings:
    """The ``plugins: otel:`` block."""

    #: Emit traces (the exporter is configured by the standard ``OTEL_*`` variables).
    enabled: bool = False


@hookimpl
def ccproxy_configure(settings: PluginSettings) -> OtelPlugin | None:
    if not settings.load(OtelSettings).enabled:
        return None
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        raise settings.error("enabled", "needs the otel extra: pip install 'ccproxy-core[otel]'") from None
    return OtelPlugin()


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


#: Attributes whose every value is new: not kept in ``otlp``'s table of encoded attributes.
_UNIQUE = frozenset({"ccproxy.request_id"})

#: What ``BatchSpanProcessor.on_end`` reads of a span, ``span.context.trace_flags.sampled``: only sampled spans
#: are recorded.
_SAMPLED_CONTEXT = SimpleNamespace(trace_flags=SimpleNamespace(sampled=True))


class Span:
    """One span's data as plain values, handed to the batch processor when it ended; the export thread makes
    the SDK's ``ReadableSpan`` of it (:meth:`Export.readable`)."""

    __slots__ = ("ids", "parent", "name", "kind", "span_id", "start", "end", "attributes", "error", "first_token")
    context = _SAMPLED_CONTEXT

    def __init__(self, ids: tuple[int, int, Any], parent: Any, name: str, kind: int, span_id: int, start: int,
                 attributes: dict[str, Any]) -> None:
        self.ids = ids  # its trace's (trace id, W3C flags, tracestate)
        #: The parent: the incoming traceparent's SpanContext (or None) for the server span, the server
        #: span's id for a client span.
        self.parent = parent
        self.name = name
        self.kind = kind
        self.span_id = span_id
        self.start = start
        self.end = 0
        self.attributes = attributes
        #: None, or the ERROR status's description (None when there is none).
        self.error: tuple[str | None] | None = None
        #: (time to first token in seconds, its time in ns) for the server span's event.
        self.first_token: tuple[float, int] | None = None


class Trace:
    """One request's trace (``ctx.state["otel"]``): its ids and the spans not ended yet."""

    __slots__ = ("ids", "server", "prepared", "answer", "response_model", "finish_reasons")

    def __init__(self, ids: tuple[int, int, Any]) -> None:
        #: (trace id, W3C trace flags, the incoming tracestate or None); flags without "sampled": nothing is
        #: recorded, the ids still go upstream.
        self.ids = ids
        #: The server span (None when not sampled).
        self.server: Span | None = None
        #: The client span started when a route was prepared and not yet attempted: (span, provider).
        self.prepared: tuple[Span, str] | None = None
        #: The span of the attempt whose answer is being relayed.
        self.answer: Span | None = None
        self.response_model: str | None = None
        self.finish_reasons: list[str] = []


class OtelPlugin:
    """The hooks of one app; its worker's tracer provider, sampler and batch processor from start-up to shutdown."""

    def __init__(self) -> None:
        self.provider: Any = None
        self.processor: Any = None
        self.export: Export | None = None

    @hookimpl
    def ccproxy_startup(self) -> None:
        from opentelemetry.context import Context
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import NoOpTracer, SpanKind, get_current_span
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "ccproxy"}))
        provider = TracerProvider(resource=resource)  # the sampler and the ids from OTEL_TRACES_SAMPLER(_ARG)
        if isinstance(provider.get_tracer(NAME), NoOpTracer):  # OTEL_SDK_DISABLED
            return
        self.export = Export(OTLPSpanExporter(), provider)
        self.processor = BatchSpanProcessor(self.export)
        provider.add_span_processor(self.processor)  # provider.shutdown flushes it
        self.provider = provider
        self.sampler = provider.sampler
        self.ids = provider.id_generator
        self.random = RANDOM if self.ids.is_trace_id_random() else 0
        self.propagator = TraceContextTextMapPropagator()
        self.root = Context()
        self.server_kind = SpanKind.SERVER
        self.current_span = get_current_span

    @hookimpl
    async def ccproxy_shutdown(self) -> None:
        provider, self.provider = self.provider, None
        if provider is not None:
            await asyncio.to_thread(provider.shutdown)  # exports what is left; blocking, so off the loop

    def _trace(self, ctx: RequestContext, request: Any = None) -> Trace:
        """The request's trace, begun (and its sampling decided) on first use."""
        trace = ctx.state.get(NAME)
        if trace is not None:
            return trace
        context, parent = self.root, None
        if request is not None and request.headers.get("traceparent"):  # a malformed one is ignored
            context = self.propagator.extract(request.headers)
            parent = self.current_span(context).get_span_context()
            if not parent.is_valid:
                context, parent = self.root, None
        if parent is None:
            trace_id, random = self.ids.generate_trace_id(), self.random
        else:
            trace_id, random = parent.trace_id, parent.trace_flags & RANDOM
        decision = self.sampler.should_sample(context, trace_id, OPERATION, self.server_kind)
        sampled = decision.decision.is_sampled()
        trace = ctx.state[NAME] = Trace((trace_id, random | (SAMPLED if sampled else 0), decision.trace_state))
        if sampled:
            trace.server = Span(trace.ids, parent, OPERATION, SERVER, self.ids.generate_span_id(),
                                _ns(ctx.started_at), dict(decision.attributes))
        return trace

    @hookimpl
    def ccproxy_request_head(self, ctx: RequestContext, request: Any) -> None:
        if self.provider is not None:
            self._trace(ctx, request)

    @hookimpl
    def ccproxy_request_headers(self, ctx: RequestContext, headers: dict[str, str]) -> None:
        """A route is prepared: its first attempt's span starts, and its context goes upstream."""
        if self.provider is None:
            return
        trace = self._trace(ctx)
        if trace.prepared is not None:  # prepared, never sent
            self._end(trace, trace.prepared[0])
        span = self._client_span(ctx, trace, ctx.provider or "", ctx.model or "", time.time_ns())
        trace.prepared = (span, ctx.provider or "")
        trace_id, flags, state = trace.ids
        headers["traceparent"] = f"00-{trace_id:032x}-{span.span_id:016x}-{flags:02x}"
        if state:
            headers["tracestate"] = state.to_header()

    def _client_span(self, ctx: RequestContext, trace: Trace, provider: str, model: str, start: int) -> Span:
        parent = trace.server.span_id if trace.server is not None else 0
        return Span(trace.ids, parent, f"{OPERATION} {model}", CLIENT, self.ids.generate_span_id(), start,
                    {"gen_ai.operation.name": OPERATION, "gen_ai.request.model": model,
                     "gen_ai.provider.name": ctx.upstream_dialect or "", "ccproxy.provider": provider})

    def _end(self, trace: Trace, span: Span, end: int | None = None) -> None:
        """``span`` ended: to the batch processor (nothing when its trace is not sampled)."""
        if trace.server is not None:
            span.end = end if end is not None else time.time_ns()
            self.processor.on_end(span)

    @hookimpl
    def ccproxy_upstream_attempt(self, ctx: RequestContext, attempt: Attempt) -> None:
        if self.provider is None:
            return
        trace = self._trace(ctx)
        if trace.prepared is not None and trace.prepared[1] == attempt.provider:
            span, trace.prepared = trace.prepared[0], None
        else:  # a retry of a route whose headers (and span) were prepared before
            before = ctx.attempts[-2].elapsed or 0.0 if len(ctx.attempts) > 1 else 0.0
            span = self._client_span(ctx, trace, attempt.provider, attempt.model,
                                     _ns(ctx.started_at + before + attempt.delay))
        if attempt.status is not None:
            span.attributes["http.response.status_code"] = attempt.status
        if attempt.error_kind is None:
            trace.answer = span
            return
        kind = f"http_{attempt.status}" if attempt.error_kind == "status" else attempt.error_kind
        span.attributes["error.type"] = kind
        span.error = (attempt.error,)
        self._end(trace, span, _ns(ctx.started_at + attempt.elapsed) if attempt.elapsed is not None else None)

    @hookimpl(tryfirst=True)
    def ccproxy_response_adapter(self, ctx: RequestContext) -> AnthropicReader | None:
        """An upstream stream (Anthropic's or Chat Completions'): a reader of its model and finish reasons,
        first in the chain so it sees the upstream's bytes. Undecodable bodies are passed unread."""
        trace = ctx.state.get(NAME)
        headers = ctx.response_headers
        if trace is None or trace.server is None or "text/event-stream" not in headers.get("content-type", ""):
            return None
        encoding = headers.get("content-encoding")
        if encoding is not None and encoding.strip().lower() not in DECODABLE_CODINGS:
            return None
        if ctx.upstream_dialect == ANTHROPIC:
            return AnthropicReader(trace)
        return ChatReader(trace) if ctx.upstream_dialect == OPENAI else None

    @hookimpl
    def ccproxy_response_body(self, ctx: RequestContext, body: bytes) -> None:
        trace = ctx.state.get(NAME)
        if trace is None or trace.server is None or b'"model"' not in body:
            return
        payload = _loads(body)
        if ctx.upstream_dialect == ANTHROPIC:
            trace.response_model = payload.get("model")
            if payload.get("stop_reason"):
                trace.finish_reasons.append(payload["stop_reason"])
        else:
            _openai(trace, payload)

    @hookimpl
    def ccproxy_stream_end(self, ctx: RequestContext) -> None:
        if self.provider is None:
            return
        trace = self._trace(ctx)
        if trace.prepared is not None:
            self._end(trace, trace.prepared[0])
        server = trace.server
        if server is None:  # not sampled (OTEL_TRACES_SAMPLER): nothing to describe
            return
        model = ctx.model_requested or ""
        server.name = f"{OPERATION} {model}" if model else OPERATION
        gen_ai: dict[str, Any] = {"gen_ai.operation.name": OPERATION, "gen_ai.request.model": model}
        if ctx.upstream_dialect:
            gen_ai["gen_ai.provider.name"] = ctx.upstream_dialect
        if trace.response_model:
            gen_ai["gen_ai.response.model"] = trace.response_model
        if trace.finish_reasons:
            gen_ai["gen_ai.response.finish_reasons"] = tuple(trace.finish_reasons)
        if ctx.usage is not None:
            gen_ai["gen_ai.usage.input_tokens"] = ctx.usage.input_tokens
            gen_ai["gen_ai.usage.output_tokens"] = ctx.usage.output_tokens
        attributes = server.attributes
        attributes.update(gen_ai)
        attributes.update({"ccproxy.request_id": ctx.request_id, "ccproxy.outcome": ctx.outcome or "",
                           "ccproxy.translated": ctx.translated, "http.route": ctx.route})
        if ctx.provider:
            attributes["ccproxy.provider"] = ctx.provider
        if ctx.status is not None:
            attributes["http.response.status_code"] = ctx.status
        failed = ctx.outcome != COMPLETED or (ctx.status or 0) >= 500
        if ctx.error is not None or failed:
            attributes["error.type"] = error_kind(ctx) or "unknown"
        end = _ns(ctx.started_at + ctx.duration if ctx.duration is not None else time.time())
        answer = trace.answer
        if answer is not None:
            answer.attributes.update(gen_ai)
            if ctx.outcome != COMPLETED:
                answer.error = (ctx.error.message if ctx.error else ctx.outcome,)
            self._end(trace, answer, end)
        if ctx.t_first_byte is not None:
            server.first_token = (ctx.t_first_byte, _ns(ctx.started_at + ctx.t_first_byte))
        if failed:
            server.error = (ctx.error.message if ctx.error else ctx.outcome,)
        self._end(trace, server, end)


class Export:
    """The exporter the batch processor calls in its thread: a batch of :class:`Span` encoded by
    :mod:`.otlp` and posted by the OTLP exporter's HTTP client (its endpoint, headers, compression, TLS,
    timeout and retries).

    That client is the exporter's private ``_client`` (SDK 1.4x). An SDK without it, or with its own
    exporter metrics on (``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED``), gets the SDK's ``ReadableSpan``
    objects and its whole ``export`` instead.
    """

    def __init__(self, exporter: Any, provider: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.sdk.trace.export import SpanExportResult
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.exporter = exporter
        self.provider = provider
        self.scope = InstrumentationScope("ccproxy")
        self.sdk = trace
        self.event, self.readable_span = Event, ReadableSpan
        self.unset = trace.Status(trace.StatusCode.UNSET)
        self.results = SpanExportResult
        post = getattr(getattr(exporter, "_client", None), "export", None)
        metrics = os.environ.get("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "").strip().lower() == "true"
        #: The exporter's HTTP client's ``export(bytes)``, or None: the SDK encodes (see the class).
        self.post = post if callable(post) and not metrics else None
        self.max_size: int = getattr(exporter, "_max_request_size", 0) or 0
        self.scope_bytes = otlp.scope(self.scope.name, self.scope.version)
        self.resource: tuple[Any, bytes] | None = None  # the last resource and its encoded attributes
        self.closed = False

    def export(self, batch: Sequence[Span]) -> Any:
        resource = self.provider.resource  # read now: the SDK updates it in a forked child
        if self.post is None:
            return self.exporter.export([self.readable(span, resource) for span in batch])
        if self.closed:
            return self.results.FAILURE
        if self.resource is None or self.resource[0] is not resource:
            self.resource = (resource, otlp.attributes(resource.attributes, otlp.RESOURCE_ATTRIBUTES))
        data = otlp.export_request(self.resource[1], self.scope_bytes, [self.encoded(span) for span in batch])
        if 0 < self.max_size < len(data):
            log.warning("otel: a batch of %d spans (%d bytes) is over the exporter's max_request_size; dropped",
                        len(batch), len(data))
            return self.results.FAILURE
        return self.results.SUCCESS if self.post(data).success else self.results.FAILURE

    @staticmethod
    def encoded(span: Span) -> bytes:
        trace_id, _, state = span.ids
        if span.kind == SERVER:  # its parent: the incoming traceparent's SpanContext, or None
            parent_id, remote = (span.parent.span_id, span.parent.is_remote) if span.parent else (0, False)
        else:
            parent_id, remote = span.parent, False
        events = () if span.first_token is None else (
            ("gen_ai.first_token", span.first_token[1], {"gen_ai.server.time_to_first_token": span.first_token[0]}),)
        trace_state = ",".join(f"{k}={v}" for k, v in state.items()) if state else ""
        return otlp.span(trace_id, span.span_id, trace_state, parent_id, remote, span.name, span.kind + 1,
                         span.start, span.end, span.attributes, events, span.error, _UNIQUE)

    def readable(self, span: Span, resource: Any) -> Any:
        sdk = self.sdk
        trace_id, flags, state = span.ids
        flags = sdk.TraceFlags(flags)
        context = sdk.SpanContext(trace_id, span.span_id, False, flags, state)
        parent = span.parent if span.kind == SERVER else sdk.SpanContext(trace_id, span.parent, False, flags, state)
        events = () if span.first_token is None else (self.event(
            "gen_ai.first_token", {"gen_ai.server.time_to_first_token": span.first_token[0]}, span.first_token[1]),)
        status = self.unset if span.error is None else sdk.Status(sdk.StatusCode.ERROR, _unicode(span.error[0]))
        attributes = {k: _unicode(v) if isinstance(v, str) else v for k, v in span.attributes.items()}
        return self.readable_span(
            _unicode(span.name), context, parent, resource, attributes, events, (), sdk.SpanKind(span.kind),
            status=status, start_time=span.start, end_time=span.end, instrumentation_scope=self.scope,
        )

    def shutdown(self) -> None:
        self.closed = True
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class AnthropicReader:
    """A response adapter that reads the answer's model and stop reason from an Anthropic stream as it passes,
    unchanged: a read goes to the SSE parser only if it may hold ``message_start`` or ``message_delta`` (or ends
    mid-event, or follows a read that did)."""

    __slots__ = ("trace", "parser")

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.parser = SSEParser()

    def feed(self, data: bytes) -> bytes:
        if not (self.parser.passes(data) and self.unread(data)):
            self.read(self.parser.feed(data))
        return data

    def finish(self) -> bytes:
        self.read(self.parser.flush())
        return b""

    def unread(self, data: bytes) -> bool:
        # (find, not in: see the usage plugin's _UNREAD)
        return data.find(b"message_start") < 0 and data.find(b"message_delta") < 0

    def read(self, events: list[Any]) -> None:
        trace = self.trace
        for event in events:
            if event.event == "message_start":
                trace.response_model = _loads(_loads(event.data).get("message")).get("model")
            elif event.event == "message_delta":
                reason = _loads(_loads(event.data).get("delta")).get("stop_reason")
                if reason:
                    trace.finish_reasons.append(reason)


class ChatReader(AnthropicReader):
    """The same for a Chat Completions stream: events are read until one names the model, then only those
    with a finish reason that is not null."""

    __slots__ = ()

    def unread(self, data: bytes) -> bool:
        return self.trace.response_model is not None and (
            data.count(b'"finish_reason"') == data.count(b'"finish_reason":null'))

    def read(self, events: list[Any]) -> None:
        trace = self.trace
        for event in events:
            data = event.data
            if trace.response_model is None or ('"finish_reason"' in data and '"finish_reason":null' not in data):
                _openai(trace, _loads(data))


def _unicode(text: str | None) -> str | None:
    """``text`` with ``?`` for what UTF-8 cannot encode (a lone surrogate, from a client's JSON escape): the
    SDK's encoder would fail the whole batch on it (``otlp`` does the same replacement)."""
    return text if text is None or text.isascii() else text.encode("utf-8", "replace").decode()


def _openai(trace: Trace, payload: dict[str, Any]) -> None:
    trace.response_model = trace.response_model or payload.get("model")
    for choice in payload.get("choices") or ():
        if isinstance(choice, dict) and choice.get("finish_reason"):
            trace.finish_reasons.append(choice["finish_reason"])


def _loads(data: Any) -> dict[str, Any]:
    """``data`` (JSON text, or a value already decoded) as a dict; ``{}`` when it is not one."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError:
            return {}
    return data if isinstance(data, dict) else {}
