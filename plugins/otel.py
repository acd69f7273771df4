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

Export: the SDK's ``BatchSpanProcessor`` and ``OTLPSpanExporter`` in a thread of their own, so every
standard variable applies: ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT``, ``_HEADERS``, ``_TIMEOUT``,
``_COMPRESSION``, ``OTEL_SERVICE_NAME`` (default ``ccproxy``), ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER(_ARG)``, ``OTEL_BSP_*``. One provider per worker, flushed when it stops.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from .dashboard.aggregate import error_kind
from ccproxy_core import ANTHROPIC, COMPLETED, Attempt, PluginSettings, RequestContext, SSEEvent, hookimpl

NAME = "otel"
OPERATION = "chat"


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


class Trace:
    """One request's spans (``ctx.state["otel"]``)."""

    __slots__ = ("server", "prepared", "answer", "response_model", "finish_reasons")

    def __init__(self, server: Any) -> None:
        self.server = server
        #: The client span started when a route was prepared and not yet attempted: (span, provider).
        self.prepared: tuple[Any, str] | None = None
        #: The span of the attempt whose answer is being relayed.
        self.answer: Any = None
        self.response_model: str | None = None
        self.finish_reasons: list[str] = []


class OtelPlugin:
    """The hooks of one app; its worker's tracer from start-up to shutdown."""

    def __init__(self) -> None:
        self.provider: Any = None
        self.tracer: Any = None

    @hookimpl
    def ccproxy_startup(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "ccproxy"}))
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self.provider.get_tracer("ccproxy")
        self.propagator = TraceContextTextMapPropagator()

    @hookimpl
    async def ccproxy_shutdown(self) -> None:
        provider, self.provider = self.provider, None
        if provider is not None:
            await asyncio.to_thread(provider.shutdown)  # exports what is left; blocking, so off the loop

    def _trace(self, ctx: RequestContext, request: Any = None) -> Trace:
        trace = ctx.state.get(NAME)
        if trace is None:
            from opentelemetry.trace import SpanKind

            parent = self.propagator.extract(request.headers) if request is not None else None
            span = self.tracer.start_span(OPERATION, context=parent, kind=SpanKind.SERVER,
                                          start_time=_ns(ctx.started_at))
            trace = ctx.state[NAME] = Trace(span)
        return trace

    @hookimpl
    def ccproxy_request_head(self, ctx: RequestContext, request: Any) -> None:
        if self.tracer is not None:
            self._trace(ctx, request)

    @hookimpl
    def ccproxy_request_headers(self, ctx: RequestContext, headers: dict[str, str]) -> None:
        """A route is prepared: its first attempt's span starts, and its context goes upstream."""
        if self.tracer is None:
            return
        from opentelemetry.trace import set_span_in_context

        trace = self._trace(ctx)
        if trace.prepared is not None:  # prepared, never sent
            trace.prepared[0].end()
        span = self._client_span(ctx, trace, ctx.provider or "", ctx.model or "", None)
        trace.prepared = (span, ctx.provider or "")
        self.propagator.inject(headers, context=set_span_in_context(span))

    def _client_span(self, ctx: RequestContext, trace: Trace, provider: str, model: str, start: int | None) -> Any:
        from opentelemetry.trace import SpanKind, set_span_in_context

        return self.tracer.start_span(
            f"{OPERATION} {model}", context=set_span_in_context(trace.server), kind=SpanKind.CLIENT, start_time=start,
            attributes={"gen_ai.operation.name": OPERATION, "gen_ai.request.model": model,
                        "gen_ai.provider.name": ctx.upstream_dialect or "", "ccproxy.provider": provider},
        )

    @hookimpl
    def ccproxy_upstream_attempt(self, ctx: RequestContext, attempt: Attempt) -> None:
        if self.tracer is None:
            return
        from opentelemetry.trace import StatusCode

        trace = self._trace(ctx)
        if trace.prepared is not None and trace.prepared[1] == attempt.provider:
            span, trace.prepared = trace.prepared[0], None
        else:  # a retry of a route whose headers (and span) were prepared before
            before = ctx.attempts[-2].elapsed or 0.0 if len(ctx.attempts) > 1 else 0.0
            span = self._client_span(ctx, trace, attempt.provider, attempt.model,
                                     _ns(ctx.started_at + before + attempt.delay))
        if attempt.status is not None:
            span.set_attribute("http.response.status_code", attempt.status)
        if attempt.error_kind is None:
            trace.answer = span
            return
        kind = f"http_{attempt.status}" if attempt.error_kind == "status" else attempt.error_kind
        span.set_attribute("error.type", kind)
        span.set_status(StatusCode.ERROR, attempt.error)
        span.end(end_time=_ns(ctx.started_at + attempt.elapsed) if attempt.elapsed is not None else None)

    @hookimpl
    def ccproxy_stream_event(self, ctx: RequestContext, event: SSEEvent) -> None:
        """The answer's model and finish reasons, from the few events that carry them."""
        trace = ctx.state.get(NAME)
        if trace is None:
            return
        data = event.data
        if ctx.upstream_dialect == ANTHROPIC:
            if event.event == "message_start":
                trace.response_model = _loads(_loads(data).get("message")).get("model")
            elif event.event == "message_delta":
                reason = _loads(_loads(data).get("delta")).get("stop_reason")
                if reason:
                    trace.finish_reasons.append(reason)
        elif trace.response_model is None or ('"finish_reason"' in data and '"finish_reason":null' not in data):
            self._openai(trace, _loads(data))

    @hookimpl
    def ccproxy_response_body(self, ctx: RequestContext, body: bytes) -> None:
        trace = ctx.state.get(NAME)
        if trace is None or b'"model"' not in body:
            return
        payload = _loads(body)
        if ctx.upstream_dialect == ANTHROPIC:
            trace.response_model = payload.get("model")
            if payload.get("stop_reason"):
                trace.finish_reasons.append(payload["stop_reason"])
        else:
            self._openai(trace, payload)

    @staticmethod
    def _openai(trace: Trace, payload: dict[str, Any]) -> None:
        trace.response_model = trace.response_model or payload.get("model")
        for choice in payload.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                trace.finish_reasons.append(choice["finish_reason"])

    @hookimpl
    def ccproxy_stream_end(self, ctx: RequestContext) -> None:
        if self.tracer is None:
            return
        from opentelemetry.trace import StatusCode

        trace = self._trace(ctx)
        if trace.prepared is not None:
            trace.prepared[0].end()
        server = trace.server
        if not server.is_recording():  # not sampled (OTEL_TRACES_SAMPLER): nothing to describe
            return
        model = ctx.model_requested or ""
        server.update_name(f"{OPERATION} {model}" if model else OPERATION)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": OPERATION, "gen_ai.request.model": model,
            "ccproxy.request_id": ctx.request_id, "ccproxy.outcome": ctx.outcome or "",
            "ccproxy.translated": ctx.translated, "http.route": ctx.route,
        }
        if ctx.upstream_dialect:
            attributes["gen_ai.provider.name"] = ctx.upstream_dialect
        if ctx.provider:
            attributes["ccproxy.provider"] = ctx.provider
        if ctx.status is not None:
            attributes["http.response.status_code"] = ctx.status
        if trace.response_model:
            attributes["gen_ai.response.model"] = trace.response_model
        if trace.finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = trace.finish_reasons
        if ctx.usage is not None:
            attributes["gen_ai.usage.input_tokens"] = ctx.usage.input_tokens
            attributes["gen_ai.usage.output_tokens"] = ctx.usage.output_tokens
        failed = ctx.outcome != COMPLETED or (ctx.status or 0) >= 500
        if ctx.error is not None or failed:
            attributes["error.type"] = error_kind(ctx) or "unknown"
        server.set_attributes(attributes)
        end = _ns(ctx.started_at + ctx.duration if ctx.duration is not None else time.time())
        if trace.answer is not None:
            trace.answer.set_attributes({k: v for k, v in attributes.items() if k.startswith("gen_ai.")})
            if ctx.outcome != COMPLETED:
                trace.answer.set_status(StatusCode.ERROR, ctx.error.message if ctx.error else ctx.outcome)
            trace.answer.end(end_time=end)
        if ctx.t_first_byte is not None:
            server.add_event("gen_ai.first_token", {"gen_ai.server.time_to_first_token": ctx.t_first_byte},
                             timestamp=_ns(ctx.started_at + ctx.t_first_byte))
        if failed:
            server.set_status(StatusCode.ERROR, ctx.error.message if ctx.error else ctx.outcome)
        server.end(end_time=end)


def _loads(data: Any) -> dict[str, Any]:
    """``data`` (JSON text, or a value already decoded) as a dict; ``{}`` when it is not one."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError:
            return {}
    return data if isinstance(data, dict) else {}
