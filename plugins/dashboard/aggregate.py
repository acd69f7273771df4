"""What the dashboard shows, as one worker saw it: the one place its numbers are kept and read.

:class:`Aggregate` is the interface the page's data goes through: :meth:`Aggregate.started` and
:meth:`Aggregate.ended` take a request (from the plugin's ``ccproxy_stream_start`` and
``ccproxy_stream_end``), :meth:`Aggregate.snapshot` returns the JSON-ready numbers the page draws.
Everything it keeps is bounded: per-second series of :data:`SERIES` seconds, the last
:data:`WINDOW` durations for percentiles, the last ``recent`` requests, :data:`RECENT_FALLBACKS`
fallbacks, and at most :data:`MAX_LABELS` providers and key names (the rest fold into
:data:`OTHER`); model names fold as the metrics plugin folds them (:class:`ModelLabels`).

It keeps no key, prompt or completion: a request is reduced to names, numbers and its outcome.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

from ccproxy_core import COMPLETED, Config, RequestContext

from ..metrics import ModelLabels

#: Seconds of per-second request and error counts.
SERIES = 120
#: Durations and times to first byte kept for the percentiles.
WINDOW = 1000
#: Fallbacks kept for the page.
RECENT_FALLBACKS = 20
#: Distinct providers and key names with a row of their own.
MAX_LABELS = 100
#: Streams in flight listed one by one (all are counted).
MAX_IN_FLIGHT_LISTED = 50


def key_name(ctx: RequestContext) -> str | None:
    """The name of the client key a request presented (``ctx.client_key``, set by the auth plugin), never
    the key itself."""
    return ctx.client_key


def error_kind(ctx: RequestContext) -> str | None:
    """Why a request did not succeed (``ProxyError.error_kind``, ``http_<status>``, the outcome), or None."""
    if ctx.error is not None:  # an upstream failure's kind, else the client's error type (not_found_error, ...)
        return ctx.error.error_kind if ctx.error.error_kind != "other" else ctx.error.kind
    if ctx.status is not None and ctx.status >= 400:
        return f"http_{ctx.status}"
    if ctx.outcome != COMPLETED:
        return ctx.outcome or "unknown"
    if ctx.inband_error is not None:
        return "in_band"
    return None


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank; None when empty."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class Totals:
    """Requests, errors, tokens and cost under one label value."""

    __slots__ = ("requests", "errors", "input_tokens", "output_tokens", "cost")

    def __init__(self) -> None:
        self.requests = self.errors = self.input_tokens = self.output_tokens = 0
        self.cost = 0.0

    def add(self, ctx: RequestContext, failed: bool) -> None:
        self.requests += 1
        self.errors += failed
        if ctx.usage is not None:
            self.input_tokens += ctx.usage.input_tokens
            self.output_tokens += ctx.usage.output_tokens
        self.cost += ctx.cost or 0.0

    def as_dict(self, name: str) -> dict[str, Any]:
        return {"name": name, "requests": self.requests, "errors": self.errors, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cost": round(self.cost, 6)}


class Aggregate:
    """One worker's dashboard numbers (see the module docstring)."""

    def __init__(self, config: Config, recent: int = 100, clock: Any = time.time) -> None:
        self.clock = clock
        self.started_at = clock()
        self.model_label = ModelLabels(config)
        self.provider_label = ModelLabels(None, MAX_LABELS)
        self.key_label = ModelLabels(None, MAX_LABELS)
        #: Bumped by every change, so a reader can tell whether anything happened.
        self.version = 0
        self.seconds: deque[list[int]] = deque(maxlen=SERIES)  # [unix second, requests, errors]
        self.durations: deque[float] = deque(maxlen=WINDOW)
        self.ttfbs: deque[float] = deque(maxlen=WINDOW)
        self.errors: Counter[str] = Counter()
        self.by: dict[str, dict[str, Totals]] = {"model": {}, "provider": {}, "key": {}}
        self.total = Totals()
        self.in_flight: dict[str, dict[str, Any]] = {}
        self.fallbacks = 0
        self.retries = 0
        self.recent_fallbacks: deque[dict[str, Any]] = deque(maxlen=RECENT_FALLBACKS)
        self.recent: deque[dict[str, Any]] = deque(maxlen=recent)

    def started(self, ctx: RequestContext) -> None:
        """A streamed response's head is being written: it is in flight until :meth:`ended`."""
        self.in_flight[ctx.request_id] = {
            "started_at": ctx.started_at, "model": self.model_label(ctx.model or ""),
            "provider": self.provider_label(ctx.provider or ""), "key": self._key(ctx),
        }
        self.version += 1

    def ended(self, ctx: RequestContext) -> None:
        """A request is over (every request, once): count it."""
        self.in_flight.pop(ctx.request_id, None)
        self.version += 1
        kind = error_kind(ctx)
        failed = kind is not None
        second = int(self.clock())
        if not self.seconds or self.seconds[-1][0] != second:
            self.seconds.append([second, 0, 0])
        row = self.seconds[-1]
        row[1] += 1
        row[2] += failed
        if kind is not None:
            self.errors[kind] += 1
        if ctx.duration is not None:
            self.durations.append(ctx.duration)
        if ctx.t_first_byte is not None:
            self.ttfbs.append(ctx.t_first_byte)
        model = self.model_label(ctx.model or ctx.model_requested or "")
        provider = self.provider_label(ctx.provider or "")
        key = self._key(ctx)
        self.total.add(ctx, failed)
        for dimension, label in (("model", model), ("provider", provider), ("key", key)):
            if label:
                table = self.by[dimension]
                (table.get(label) or table.setdefault(label, Totals())).add(ctx, failed)
        self._attempts(ctx, model)
        usage = ctx.usage
        self.recent.append({
            "time": ctx.started_at, "key": key, "model": model, "provider": provider, "status": ctx.status,
            "outcome": ctx.outcome, "error": kind, "stream": ctx.stream,
            "input_tokens": usage.input_tokens if usage else None,
            "output_tokens": usage.output_tokens if usage else None,
            "cost": ctx.cost, "duration": ctx.duration, "attempts": len(ctx.attempts),
        })

    def _key(self, ctx: RequestContext) -> str | None:
        name = key_name(ctx)
        return self.key_label(name) if name else None

    def _attempts(self, ctx: RequestContext, model: str) -> None:
        attempts = ctx.attempts
        if len(attempts) < 2:
            return
        providers = [a.provider for a in attempts]
        self.retries += len(attempts) - len(set(providers))
        if len(set(providers)) > 1:
            self.fallbacks += 1
            first = attempts[0]
            self.recent_fallbacks.append({
                "time": ctx.started_at, "model": model, "from": self.provider_label(first.provider),
                "to": self.provider_label(attempts[-1].provider),
                "why": f"http_{first.status}" if first.error_kind == "status" else first.error_kind,
            })

    def snapshot(self) -> dict[str, Any]:
        """The numbers the page draws, as JSON-ready values."""
        now = self.clock()
        last = int(now)  # the current second, still counting
        counts = {row[0]: row for row in self.seconds}
        requests = [counts[s][1] if s in counts else 0 for s in range(last - SERIES + 1, last + 1)]
        errors = [counts[s][2] if s in counts else 0 for s in range(last - SERIES + 1, last + 1)]
        durations, ttfbs = sorted(self.durations), sorted(self.ttfbs)
        flights = sorted(self.in_flight.values(), key=lambda f: f["started_at"])
        return {
            "now": now,
            "uptime": now - self.started_at,
            "rps": sum(requests[-10:]) / 10,
            "series": {"requests": requests, "errors": errors},
            "totals": self.total.as_dict("all"),
            "errors": dict(self.errors.most_common()),
            "latency": {"p50": percentile(durations, 0.5), "p99": percentile(durations, 0.99)},
            "ttfb": {"p50": percentile(ttfbs, 0.5), "p99": percentile(ttfbs, 0.99)},
            "by": {dim: sorted((t.as_dict(n) for n, t in table.items()), key=lambda r: -r["requests"])
                   for dim, table in self.by.items()},
            "in_flight": {"count": len(flights), "streams": [
                {**f, "age": now - f["started_at"]} for f in flights[:MAX_IN_FLIGHT_LISTED]]},
            "fallbacks": {"count": self.fallbacks, "retries": self.retries, "recent": list(self.recent_fallbacks)},
            "recent": list(self.recent),
        }
