"""What the dashboard shows: the one place its numbers are kept, merged and read.

:class:`Aggregate` is the interface the page's data goes through: :meth:`Aggregate.started` and
:meth:`Aggregate.ended` take a request (from the plugin's ``ccproxy_stream_start`` and
``ccproxy_stream_end``); :meth:`Aggregate.export` returns one worker's counters as JSON-ready
parts, and :func:`view` merges the parts of any number of workers into the numbers the page draws
(:meth:`Aggregate.snapshot` is this worker's alone). Every part adds up across workers: counts,
per-second rows, and durations and times to first byte as fixed-bucket histograms (:data:`BOUNDS`),
so percentiles of the whole gateway are exact to a bucket.
Everything kept is bounded: per-second series of :data:`SERIES` seconds, two histograms of
``len(BOUNDS) + 1`` buckets, the last ``recent`` requests, :data:`RECENT_FALLBACKS`
fallbacks, and at most :data:`MAX_LABELS` providers and key names (the rest fold into
:data:`OTHER`); model names fold as the metrics plugin folds them (:class:`ModelLabels`).
A request adds to one row per (model, provider, key name) it names (at most :data:`MAX_CACHED`),
which :meth:`Aggregate.export` first adds to the totals and the per-label rows: one row per
request instead of four.

It keeps no key, prompt or completion: a request is reduced to names, numbers and its outcome.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from typing import Any

from ccproxy_core import COMPLETED, Config, RequestContext

from ..metrics import OTHER, ModelLabels

#: Seconds of per-second request and error counts.
SERIES = 120
#: Upper bounds (seconds) of the duration and time-to-first-byte buckets: 1 ms to ~12 min, each ×√2.
BOUNDS = tuple(0.001 * 2 ** (k / 2) for k in range(40))
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


def percentile(buckets: list[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram over :data:`BOUNDS`, nearest rank, as its bucket's upper
    bound (the last bound for the overflow bucket); None when empty."""
    total = sum(buckets)
    if not total:
        return None
    rank = min(total - 1, int(q * total))
    for i, n in enumerate(buckets):
        rank -= n
        if rank < 0:
            return BOUNDS[min(i, len(BOUNDS) - 1)]
    return BOUNDS[-1]  # pragma: no cover (the ranks add up)


#: A row of counts under one label value: ``[requests, errors, input_tokens, output_tokens, cost]``.
FIELDS = ("requests", "errors", "input_tokens", "output_tokens", "cost")
#: Rows the label cache (:attr:`Aggregate.pending`) holds before it starts over.
MAX_CACHED = 1000
#: What the table of the last requests shows of each.
RECENT_FIELDS = ("time", "key", "model", "provider", "status", "outcome", "error", "stream", "input_tokens",
                 "output_tokens", "cost", "duration", "attempts")


def as_row(name: str, values: list[Any]) -> dict[str, Any]:
    row = {"name": name, **dict(zip(FIELDS, values))}
    row["cost"] = round(row["cost"], 6)
    return row


def summed(rows: list[list[Any]]) -> list[Any]:
    return [sum(column) for column in zip(*rows)] if rows else [0, 0, 0, 0, 0.0]


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
        self.durations = [0] * (len(BOUNDS) + 1)  # a histogram over BOUNDS
        self.ttfbs = [0] * (len(BOUNDS) + 1)
        self.errors: Counter[str] = Counter()
        self.by: dict[str, dict[str, list[Any]]] = {"model": {}, "provider": {}, "key": {}}
        self.total = [0, 0, 0, 0, 0.0]
        #: (model, provider, key name) as a request has them -> their labels and a row of what requests
        #: with them added since :meth:`_flush` moved it into ``total`` and ``by``; at most
        #: :data:`MAX_CACHED` entries.
        self.pending: dict[tuple[Any, ...], tuple[str, str, str | None, list[Any]]] = {}
        self.in_flight: dict[str, dict[str, Any]] = {}
        self.fallbacks = 0
        self.retries = 0
        self.recent_fallbacks: deque[dict[str, Any]] = deque(maxlen=RECENT_FALLBACKS)
        self.recent: deque[tuple[Any, ...]] = deque(maxlen=recent)  # rows of RECENT_FIELDS

    def started(self, ctx: RequestContext) -> None:
        """A streamed response's head is being written: it is in flight until :meth:`ended`."""
        self.in_flight[ctx.request_id] = {
            "started_at": ctx.started_at, "model": self.model_label[ctx.model or ""],
            "provider": self.provider_label[ctx.provider or ""], "key": self._key(ctx),
        }
        self.version += 1

    def ended(self, ctx: RequestContext) -> None:
        """A request is over (every request, once): count it."""
        if self.in_flight:  # mostly empty (streams only)
            self.in_flight.pop(ctx.request_id, None)
        self.version += 1
        kind = error_kind(ctx)
        failed = kind is not None
        second, seconds = int(self.clock()), self.seconds
        if not seconds or seconds[-1][0] != second:
            seconds.append([second, 0, 0])
        row = seconds[-1]
        row[1] += 1
        row[2] += failed
        if kind is not None:
            self.errors[kind] += 1
        if ctx.duration is not None:
            self.durations[bisect.bisect_left(BOUNDS, ctx.duration)] += 1
        if ctx.t_first_byte is not None:
            self.ttfbs[bisect.bisect_left(BOUNDS, ctx.t_first_byte)] += 1
        names = (ctx.model or ctx.model_requested or "", ctx.provider or "", ctx.client_key)
        model, provider, key, row = self.pending.get(names) or self._pending(names)
        usage = ctx.usage
        row[0] += 1
        row[1] += failed
        if usage is not None:
            row[2] += usage.input_tokens
            row[3] += usage.output_tokens
        if ctx.cost:
            row[4] += ctx.cost
        if len(ctx.attempts) > 1:
            self._attempts(ctx, model)
        # A row of RECENT_FIELDS; export() makes it a dict (the page reads the last few once a second).
        self.recent.append((
            ctx.started_at, key, model, provider, ctx.status, ctx.outcome, kind, ctx.stream,
            usage.input_tokens if usage else None, usage.output_tokens if usage else None,
            ctx.cost, ctx.duration, len(ctx.attempts),
        ))

    def _key(self, ctx: RequestContext) -> str | None:
        name = key_name(ctx)
        return self.key_label[name] if name else None

    def _pending(self, names: tuple[Any, ...]) -> tuple[str, str, str | None, list[Any]]:
        """The labels of ``names`` (model, provider, key name) and a new row for them."""
        if len(self.pending) >= MAX_CACHED:
            self._flush()
            self.pending.clear()
        model, provider, key = self.model_label[names[0]], self.provider_label[names[1]], names[2]
        found = self.pending[names] = (model, provider, self.key_label[key] if key else None, [0, 0, 0, 0, 0.0])
        return found

    def _flush(self) -> None:
        """Add the pending rows to ``total`` and ``by`` (a label's row is made when its first request is
        added) and start them over."""
        tables = (self.by["model"], self.by["provider"], self.by["key"])
        for *labels, row in self.pending.values():
            if not row[0]:
                continue
            rows = [self.total] + [t.get(label) or t.setdefault(label, [0, 0, 0, 0, 0.0])
                                   for t, label in zip(tables, labels) if label]
            for into in rows:
                for i, value in enumerate(row):
                    into[i] += value
            row[:] = (0, 0, 0, 0, 0.0)

    def _attempts(self, ctx: RequestContext, model: str) -> None:
        """Retries and fallbacks of a request with more than one attempt."""
        attempts = ctx.attempts
        providers = [a.provider for a in attempts]
        self.retries += len(attempts) - len(set(providers))
        if len(set(providers)) > 1:
            self.fallbacks += 1
            first = attempts[0]
            self.recent_fallbacks.append({
                "time": ctx.started_at, "model": model, "from": self.provider_label[first.provider],
                "to": self.provider_label[attempts[-1].provider],
                "why": f"http_{first.status}" if first.error_kind == "status" else first.error_kind,
            })

    def export(self) -> dict[str, Any]:
        """This worker's counters as JSON-ready parts that :func:`view` can merge with other workers'."""
        self._flush()
        flights = sorted(self.in_flight.values(), key=lambda f: f["started_at"])
        return {
            "version": self.version, "started_at": self.started_at, "seconds": [list(r) for r in self.seconds],
            "durations": list(self.durations), "ttfbs": list(self.ttfbs), "errors": dict(self.errors),
            "total": list(self.total),
            "by": {dim: {n: list(t) for n, t in table.items()} for dim, table in self.by.items()},
            "in_flight": len(flights), "streams": flights[:MAX_IN_FLIGHT_LISTED],
            "fallbacks": self.fallbacks, "retries": self.retries, "recent_fallbacks": list(self.recent_fallbacks),
            "recent": [dict(zip(RECENT_FIELDS, row)) for row in self.recent],
        }

    def snapshot(self) -> dict[str, Any]:
        """This worker's numbers, as the page draws them."""
        return view([self.export()], self.clock(), self.recent.maxlen or 0)


def view(parts: list[dict[str, Any]], now: float, recent: int) -> dict[str, Any]:
    """The numbers the page draws, as JSON-ready values, for the workers whose :meth:`Aggregate.export`
    ``parts`` are given (at least one); ``recent`` requests are kept, the newest."""
    last = int(now)  # the current second, still counting
    counts: Counter[int] = Counter()
    failures: Counter[int] = Counter()
    for part in parts:
        for second, n, failed in part["seconds"]:
            counts[second] += n
            failures[second] += failed
    span = range(last - SERIES + 1, last + 1)
    requests, errors = [counts[s] for s in span], [failures[s] for s in span]
    durations = [sum(c) for c in zip(*(p["durations"] for p in parts))]
    ttfbs = [sum(c) for c in zip(*(p["ttfbs"] for p in parts))]
    kinds: Counter[str] = Counter()
    for part in parts:
        kinds.update(part["errors"])
    flights = sorted((f for p in parts for f in p["streams"]), key=lambda f: f["started_at"])
    started_at = min(p["started_at"] for p in parts)
    return {
        "now": now,
        "uptime": now - started_at,
        "rps": sum(requests[-10:]) / 10,
        "series": {"requests": requests, "errors": errors},
        "totals": as_row("all", summed([p["total"] for p in parts])),
        "errors": dict(kinds.most_common()),
        "latency": {"p50": percentile(durations, 0.5), "p99": percentile(durations, 0.99)},
        "ttfb": {"p50": percentile(ttfbs, 0.5), "p99": percentile(ttfbs, 0.99)},
        "by": {dim: _rows([p["by"][dim] for p in parts]) for dim in ("model", "provider", "key")},
        "in_flight": {"count": sum(p["in_flight"] for p in parts), "streams": [
            {**f, "age": now - f["started_at"]} for f in flights[:MAX_IN_FLIGHT_LISTED]]},
        "fallbacks": {"count": sum(p["fallbacks"] for p in parts), "retries": sum(p["retries"] for p in parts),
                      "recent": sorted((f for p in parts for f in p["recent_fallbacks"]),
                                       key=lambda f: f["time"])[-RECENT_FALLBACKS:]},
        "recent": sorted((r for p in parts for r in p["recent"]), key=lambda r: r["time"])[-recent:] if recent else [],
    }


def _rows(tables: list[dict[str, list[Any]]]) -> list[dict[str, Any]]:
    """The per-label rows of several workers summed, most requests first; beyond :data:`MAX_LABELS`
    (workers may each know other names) the rest fold into :data:`OTHER`."""
    merged: dict[str, list[list[Any]]] = {}
    for table in tables:
        for name, values in table.items():
            merged.setdefault(name, []).append(values)
    rows = sorted(((n, summed(v)) for n, v in merged.items()), key=lambda r: -r[1][0])
    if len(rows) > MAX_LABELS + 1:
        rows = [r for r in rows[:MAX_LABELS] if r[0] != OTHER] + [
            (OTHER, summed([v for n, v in rows if n == OTHER] + [v for n, v in rows[MAX_LABELS:] if n != OTHER]))]
    return [as_row(n, v) for n, v in rows]
