"""Prometheus metrics at ``GET /metrics``, from the public hooks only.

Per request the work is one ``ccproxy_stream_end`` call (plus ``ccproxy_stream_start`` for the
active-streams gauge): one look-up of the request's (route, provider, model, status, outcome), which
finds the series it adds plain numbers to and their label values (:meth:`Totals.record`), read by
prometheus-client only when ``/metrics`` is scraped.
Nothing runs per chunk.

Several workers (``sanic app.app --workers N``): every worker writes its numbers into
prometheus-client's multiprocess files and ``/metrics`` adds up all of them, so whichever worker
answers the scrape reports the totals. The plugin sets this up itself: in Sanic's main process, before
the workers start, it creates a directory and exports ``PROMETHEUS_MULTIPROC_DIR`` (which the workers
inherit), and removes it when the main process stops. A request still only adds to plain numbers
(:class:`Totals`); :class:`Files` copies what changed into the worker's files at most
:data:`WRITE_DELAY` seconds later, before this worker answers a scrape, and when it stops. So a scrape
shows another worker's requests up to :data:`WRITE_DELAY` late, and a worker that is killed (never
stopped) loses at most its last :data:`WRITE_DELAY` of counts. A worker that stops marks its live
gauges dead (``mark_process_dead``); a scrape also drops the live gauges of workers that died without
stopping. If ``PROMETHEUS_MULTIPROC_DIR`` is already set it is used as it is (and never deleted).

Label values come from bounded sets: configured model names keep their own ``model`` value, at
most :data:`MAX_MODEL_LABELS` other names per worker get one, and the rest are counted as
:data:`OTHER` (model names come from clients; the core refuses names over
``limits.max_model_length``).

Settings (``plugins: metrics: {...}``):

* ``path``: the route (default ``/metrics``).
* ``multiprocess_dir``: the directory for the per-worker files when running several workers
  (default: a new temporary directory); its ``*.db`` files are removed at start-up.
* ``duration_buckets`` / ``ttfb_buckets``: histogram bucket bounds in seconds.
"""

from __future__ import annotations

import asyncio
import bisect
import glob
import itertools
import logging
import math
import operator
import os
import re
import shutil
import tempfile
import time
from collections import Counter as CountOf
from dataclasses import dataclass
from typing import Any, Callable

from ccproxy_core import UPSTREAM_ERROR, Config, PluginSettings, RequestContext, hookimpl

NAME = "metrics"
ENV = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger("ccproxy.metrics")

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TTFB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

#: (label value of ``direction``, attribute of ``ctx.usage``)
DIRECTIONS = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cache_read", "cache_read_input_tokens"),
    ("cache_creation", "cache_creation_input_tokens"),
)
#: A ``Usage``'s four counts, in :data:`DIRECTIONS` order, in one call.
TOKEN_COUNTS = operator.attrgetter(*(attr for _, attr in DIRECTIONS))

#: The label value that stands for models beyond :data:`MAX_MODEL_LABELS` (and label sets beyond
#: :data:`MAX_SERIES`).
OTHER = "_other"
#: Distinct model names that are not configured names which one worker gives a label value of their
#: own (model names come from clients, and a glob such as ``claude-*`` admits any of them);
#: later ones are counted as :data:`OTHER`.
MAX_MODEL_LABELS = 100
#: Distinct label sets kept per metric; beyond it the model label becomes :data:`OTHER`.
MAX_SERIES = 2000
#: Several workers: the most seconds between a worker's first change and its write to its files.
WRITE_DELAY = 0.1


@dataclass(slots=True)
class MetricsSettings:
    """The ``plugins: metrics:`` block (see the module docstring)."""

    path: str = "/metrics"
    multiprocess_dir: str | None = None
    duration_buckets: list[float] | None = None
    ttfb_buckets: list[float] | None = None


class Settings:
    """The checked settings, buckets sorted and defaulted."""

    def __init__(self, settings: PluginSettings) -> None:
        loaded = settings.load(MetricsSettings)
        if not loaded.path.startswith("/"):
            raise settings.error("path", f"must start with '/', got {loaded.path!r}")
        self.path = loaded.path
        self.multiprocess_dir = loaded.multiprocess_dir
        self.duration_buckets = _buckets(settings, "duration_buckets", loaded.duration_buckets, DURATION_BUCKETS)
        self.ttfb_buckets = _buckets(settings, "ttfb_buckets", loaded.ttfb_buckets, TTFB_BUCKETS)


def _buckets(
    settings: PluginSettings, key: str, value: list[float] | None, default: tuple[float, ...]
) -> tuple[float, ...]:
    if value is None:
        return default
    if not value or not all(v > 0 for v in value):
        raise settings.error(key, "expected a list of positive numbers (seconds)")
    return tuple(sorted(value))


def configured_models(config: Config) -> frozenset[str]:
    """The model names the configuration spells out: aliases, their targets and fallbacks, and the
    providers' model names that are not globs."""
    names = set()
    for alias, target in config.models.items():
        names.update((alias, target.model), (f.model for f in target.fallbacks))
    for provider in config.providers.values():
        names.update(m for m in provider.models if not any(c in m for c in "*?["))
    return frozenset(names)


class ModelLabels(dict[str, str]):
    """The ``model`` label value of a model name, by subscript (``labels[name]``) or call: a configured
    name as it is, the first :data:`MAX_MODEL_LABELS` other names this worker sees as they are, then
    :data:`OTHER`. Without a config (``None``) no name is known in advance: a bound on any label's values.

    A name that has its own label is a key of this dict (a C-level look-up per request); the others
    are never stored, so it holds at most the configured names and ``limit`` more."""

    def __init__(self, config: Config | None, limit: int = MAX_MODEL_LABELS) -> None:
        known = configured_models(config) if config is not None else ()
        super().__init__((name, name) for name in known)
        self.room = limit

    def __missing__(self, model: str) -> str:
        if self.room > 0:
            self.room -= 1
            self[model] = model
            return model
        return OTHER

    __call__ = dict.__getitem__


def labels_of(ctx: RequestContext, model_label: ModelLabels) -> tuple[str, str]:
    """The ``provider`` and ``model`` label values of a request."""
    return ctx.provider or "", model_label[ctx.model] if ctx.model else ""


#: Every metric: (name, help, type, label names); histograms take their buckets from the settings.
FAMILIES = (
    ("ccproxy_requests", "Client requests on the proxy routes, counted when they end.", "counter",
     ("route", "provider", "model", "status", "outcome")),
    ("ccproxy_request_duration_seconds",
     "From the request's arrival to its end (last byte sent, failure or disconnect).", "histogram",
     ("route", "provider", "model")),
    ("ccproxy_time_to_first_byte_seconds", "From the request's arrival to the first byte written to the client.",
     "histogram", ("route", "provider", "model")),
    ("ccproxy_active_streams", "Streamed responses being relayed now (summed over live workers).", "gauge", ()),
    ("ccproxy_tokens", "Tokens reported by the upstream, by direction (input, output, cache_read, cache_creation).",
     "counter", ("direction", "provider", "model")),
    ("ccproxy_cost_usd", "Cost in US dollars from the usage plugin's price table.", "counter", ("provider", "model")),
    ("ccproxy_key_requests", "Client requests on the proxy routes by client key name (plugins.auth.keys) and status.",
     "counter", ("key", "status")),
    ("ccproxy_key_tokens", "Tokens reported by the upstream (input, cached input and output) by client key name.",
     "counter", ("key",)),
    ("ccproxy_key_cost_usd", "Cost in US dollars by client key name.", "counter", ("key",)),
    ("ccproxy_upstream_errors",
     "Upstream failures by kind: http_<status>, connect, connect_timeout, pool_timeout, write_timeout, "
     "headers_timeout, total_timeout, protocol, unsupported_protocol, other (before the response head), "
     "stream_<kind> (after it), in_band (an error event inside a stream).", "counter", ("provider", "kind")),
    ("ccproxy_plugin_errors", "Exceptions raised by plugins in observer hooks (the request went on).", "counter",
     ("plugin", "hook")),
)


#: The series of a :attr:`Totals.rows` entry after ``ccproxy_requests``: (metric, its labels from
#: ``(route, provider, model)``, the model label's index).
_ROW_SERIES: tuple[tuple[str, Callable[[str, str, str], tuple[str, ...]], int], ...] = (
    ("ccproxy_request_duration_seconds", lambda route, provider, model: (route, provider, model), 2),
    ("ccproxy_time_to_first_byte_seconds", lambda route, provider, model: (route, provider, model), 2),
    ("ccproxy_cost_usd", lambda route, provider, model: (provider, model), 1),
    *(("ccproxy_tokens", lambda route, provider, model, d=direction: (d, provider, model), 2)  # type: ignore[misc]
      for direction, _ in DIRECTIONS),
)


def _folded(table: dict[tuple[str, ...], Any], labels: tuple[str, ...], model_index: int | None) -> tuple[str, ...]:
    """``labels`` for a new series of ``table``: past :data:`MAX_SERIES`, the model label becomes :data:`OTHER`."""
    if model_index is not None and len(table) >= MAX_SERIES:
        return (*labels[:model_index], OTHER, *labels[model_index + 1 :])
    return labels


class Totals:
    """One process's numbers in plain dicts, read by prometheus-client only at a scrape (:meth:`collect`).

    A counter's series is ``[value, created]``; a histogram's ``[count per bucket..., sum, created]``
    (per bucket, not cumulative; the last bucket is ``+Inf``), as prometheus-client's own metrics
    keep them, so the text is the same.
    """

    def __init__(self, settings: Settings) -> None:
        from prometheus_client import CollectorRegistry

        self.bounds = {  # +Inf is the last bucket anyway
            "ccproxy_request_duration_seconds": tuple(b for b in settings.duration_buckets if b != math.inf),
            "ccproxy_time_to_first_byte_seconds": tuple(b for b in settings.ttfb_buckets if b != math.inf),
        }
        self.duration_bounds = self.bounds["ccproxy_request_duration_seconds"]
        self.ttfb_bounds = self.bounds["ccproxy_time_to_first_byte_seconds"]
        self.tables: dict[str, dict[tuple[str, ...], list[float]]] = {name: {} for name, *_ in FAMILIES}
        #: (route, provider, model, status, outcome) as a request has them -> the series it adds to
        #: (:meth:`_rows`); at most :data:`MAX_SERIES` entries.
        self.rows: dict[tuple[Any, ...], list[Any]] = {}
        self.active = 0
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def series(self, name: str, labels: tuple[str, ...], model_index: int | None = None) -> list[float]:
        """``name``'s series for ``labels`` (made at its first use), folded past :data:`MAX_SERIES`."""
        table = self.tables[name]
        series = table.get(labels)
        if series is None:
            labels = _folded(table, labels, model_index)
            series = table.get(labels)
            if series is None:
                bounds = self.bounds.get(name)
                series = table[labels] = [0.0] * (len(bounds) + 2 if bounds is not None else 1) + [time.time()]
        return series

    def count(self, name: str, labels: tuple[str, ...], amount: float = 1.0, model_index: int | None = None) -> None:
        self.series(name, labels, model_index)[0] += amount

    def observe(self, name: str, labels: tuple[str, ...], value: float, model_index: int | None = None) -> None:
        series = self.series(name, labels, model_index)
        series[bisect.bisect_left(self.bounds[name], value)] += 1.0  # the first bound >= value, as prometheus-client
        series[-2] += value

    def record(self, ctx: RequestContext, model_label: ModelLabels) -> None:
        """What every request adds (its count, duration, time to first byte, cost and tokens), through
        the series its (route, provider, model, status, outcome) found before: one look-up per request
        instead of one per metric, and none for the labels (a name's label never changes: :class:`ModelLabels`)."""
        key = (ctx.route, ctx.provider, ctx.model, ctx.status, ctx.outcome)
        rows = self.rows.get(key) or self._rows(key, *labels_of(ctx, model_label))
        rows[0][0] += 1.0  # a float, as the series holds: Python adds two floats in line, a float and an int not
        value = ctx.duration
        if value is not None:
            series = rows[1] or self._bind(rows, 1)
            series[bisect.bisect_left(self.duration_bounds, value)] += 1.0
            series[-2] += value
        value = ctx.t_first_byte
        if value is not None:
            series = rows[2] or self._bind(rows, 2)
            series[bisect.bisect_left(self.ttfb_bounds, value)] += 1.0
            series[-2] += value
        cost = ctx.cost
        if cost:
            (rows[3] or self._bind(rows, 3))[0] += cost
        usage = ctx.usage
        if usage is not None:
            for i, tokens in enumerate(TOKEN_COUNTS(usage), 4):  # rows[4:8]: _ROW_SERIES's tokens, in DIRECTIONS order
                if tokens:
                    (rows[i] or self._bind(rows, i))[0] += tokens

    def _rows(self, key: tuple[Any, ...], provider: str, model: str) -> list[Any]:
        """A :attr:`rows` entry: the ``ccproxy_requests`` series of ``key``, None for each series of
        :data:`_ROW_SERIES` until the first request adds to it, and the (route, provider, model) labels
        (``provider`` and ``model``: :func:`labels_of` the request)."""
        if len(self.rows) >= MAX_SERIES:  # a cache: its series stay in the tables
            self.rows.clear()
        route, _, _, status, outcome = key
        requests = self.series("ccproxy_requests", (route, provider, model, str(status or ""), outcome or ""), 2)
        rows = self.rows[key] = [requests, *[None] * len(_ROW_SERIES), (route, provider, model)]
        return rows

    def _bind(self, rows: list[Any], i: int) -> list[float]:
        route, provider, model = rows[-1]
        name, labels, model_index = _ROW_SERIES[i - 1]
        rows[i] = series = self.series(name, labels(route, provider, model), model_index)
        return series

    def add_active(self, delta: int) -> None:
        self.active += delta

    def collect(self) -> Any:
        """The metric families, in :data:`FAMILIES` order (prometheus-client's collector interface)."""
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        from prometheus_client.samples import Sample
        from prometheus_client.utils import floatToGoString

        created = _created_series()
        for name, doc, kind, labelnames in FAMILIES:
            table = self.tables[name]
            if kind == "gauge":
                yield GaugeMetricFamily(name, doc, value=float(self.active))
            elif kind == "counter":
                family = CounterMetricFamily(name, doc, labels=labelnames)
                for labels, (value, since) in list(table.items()):
                    family.add_metric(labels, value, created=since if created else None)
                yield family
            else:
                family = HistogramMetricFamily(name, doc, labels=labelnames)
                les = [floatToGoString(b) for b in self.bounds[name]] + ["+Inf"]
                for labels, series in list(table.items()):
                    counts = itertools.accumulate(series[:-2])
                    family.add_metric(labels, list(zip(les, counts)), series[-2])
                    if created:
                        family.samples.append(Sample(name + "_created", dict(zip(labelnames, labels)), series[-1]))
                yield family


def _created_series() -> bool:
    """Whether prometheus-client writes ``_created`` series (``PROMETHEUS_DISABLE_CREATED_SERIES``)."""
    from prometheus_client import metrics

    return getattr(metrics, "_use_created", True)


class Files:
    """One worker's :class:`Totals` in prometheus-client's multiprocess files under ``path``
    (``counter_PID.db``, ``histogram_PID.db``, ``gauge_livesum_PID.db``), with the keys and values its
    own metric objects would write, so that its ``MultiProcessCollector`` adds up every worker's.

    :meth:`write` copies the values that changed since its last call. A file left by an earlier
    process with the same pid keeps its counts: they are the base this worker's are added to.
    """

    def __init__(self, path: str, totals: Totals) -> None:
        from prometheus_client.mmap_dict import MmapedDict

        pid = os.getpid()
        self.totals = totals
        self.files = {kind: MmapedDict(os.path.join(path, f"{prefix}_{pid}.db"))
                      for kind, prefix in (("counter", "counter"), ("histogram", "histogram"),
                                           ("gauge", "gauge_livesum"))}
        #: metric -> labels -> (its values' keys, the file's values under them before this worker,
        #: a copy of the series as last written).
        self.written: dict[str, dict[tuple[str, ...], tuple[list[str], list[float], list[float]]]] = {
            name: {} for name, *_ in FAMILIES}

    def write(self) -> None:
        totals = self.totals
        for name, doc, kind, labelnames in FAMILIES:
            file, written = self.files[kind], self.written[name]
            table = {(): [float(totals.active), 0.0]} if kind == "gauge" else totals.tables[name]
            for labels, series in table.items():
                entry = written.get(labels)
                if entry is None:
                    keys = _file_keys(name, doc, kind, labelnames, labels, totals.bounds.get(name, ()))
                    entry = written[labels] = (keys, [file.read_value(key)[0] for key in keys], [math.nan] * len(series))
                elif entry[2] == series:  # unchanged: one comparison in C
                    continue
                keys, base, last = entry
                for i, key in enumerate(keys):  # the series' values; its last item (created) is not written
                    if series[i] != last[i]:
                        file.write_value(key, base[i] + series[i], 0.0)
                last[:] = series

    def close(self) -> None:
        for file in self.files.values():
            file.close()


def _file_keys(name: str, doc: str, kind: str, labelnames: tuple[str, ...], labels: tuple[str, ...],
               bounds: tuple[float, ...]) -> list[str]:
    """The file keys of one series' values, in :class:`Totals`' order: a counter's ``_total``; a
    histogram's buckets (``le`` last ``+Inf``), then its ``_sum``; the gauge's value."""
    from prometheus_client.mmap_dict import mmap_key
    from prometheus_client.utils import floatToGoString

    if kind == "counter":
        return [mmap_key(name, name + "_total", labelnames, labels, doc)]
    if kind == "gauge":
        return [mmap_key(name, name, labelnames, labels, doc)]
    bucket_names = (*labelnames, "le")
    return [*(mmap_key(name, name + "_bucket", bucket_names, (*labels, le), doc)
              for le in [*map(floatToGoString, bounds), "+Inf"]),
            mmap_key(name, name + "_sum", labelnames, labels, doc)]


class Metrics:
    """One worker's metrics: what a request adds (:meth:`record`) and the scrape's text (:meth:`exposition`).

    A request adds to :class:`Totals`. With several workers (``multiprocess_dir``) :class:`Files` also
    copies them to this worker's files: call :meth:`changed` after adding, :meth:`close` at the end.
    """

    def __init__(self, settings: Settings, plugins: Any, multiprocess_dir: str | None, config: Config) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.store = Totals(settings)
        self.files = Files(multiprocess_dir, self.store) if multiprocess_dir is not None else None
        #: A write of :attr:`files` is scheduled (set while there are no files: nothing to schedule).
        self.pending = self.files is None
        self._timer: asyncio.TimerHandle | None = None
        #: Seconds from a change to the write: :data:`WRITE_DELAY`, or 50 times the last write's
        #: duration when that is longer (writing many series takes at most ~2 % of the worker's time).
        self.delay = WRITE_DELAY
        self.failing = False
        #: The core's count of observer failures by (plugin, hook) (``plugins.errors``), if any.
        self.plugin_errors: CountOf[tuple[str, str]] | None = getattr(plugins, "errors", None)
        self.model_label = ModelLabels(config)
        self._plugin_errors_seen: CountOf[tuple[str, str]] = CountOf()
        self._plugin_errors_total = 0

    def sync_plugin_errors(self) -> None:
        """Copy new counts from the core's ``plugins.errors`` Counter into the metric."""
        errors = self.plugin_errors
        if not errors:
            return
        total = errors.total()
        if total == self._plugin_errors_total:
            return
        for key, count in list(errors.items()):
            delta = count - self._plugin_errors_seen[key]
            if delta > 0:
                self.store.count("ccproxy_plugin_errors", key, delta)
                self._plugin_errors_seen[key] = count
        self._plugin_errors_total = total

    def record(self, ctx: RequestContext) -> None:
        self.store.record(ctx, self.model_label)
        count = self.store.count
        key = ctx.client_key
        if key is not None:  # names come from the config: a bounded set
            usage, cost = ctx.usage, ctx.cost
            count("ccproxy_key_requests", (key, str(ctx.status or "")))
            if usage is not None:
                count("ccproxy_key_tokens", (key,), usage.input_tokens + usage.cache_read_input_tokens
                      + usage.cache_creation_input_tokens + usage.output_tokens)
            if cost:
                count("ccproxy_key_cost_usd", (key,), cost)
        attempts = ctx.attempts
        # Only a failed attempt counts: the usual request (one attempt, no error) skips the look.
        if attempts and (len(attempts) > 1 or attempts[0].error_kind is not None or ctx.outcome == UPSTREAM_ERROR):
            self._count_upstream_errors(ctx)
        if ctx.inband_error is not None:
            count("ccproxy_upstream_errors", (ctx.provider or "", "in_band"))
        if self.plugin_errors:  # (sync_plugin_errors returns at once without any)
            self.sync_plugin_errors()

    def changed(self) -> None:
        """Several workers: write the files :attr:`delay` after the first change since the last write."""
        if not self.pending:
            self.pending = True
            self._timer = asyncio.get_running_loop().call_later(self.delay, self.write)

    def write(self) -> None:
        """Several workers: copy what changed to this worker's files now. A failure (the directory's disk
        full, say) is logged once until a write works again; the numbers stay in memory meanwhile."""
        if self.files is not None:
            self.pending = False
            started = time.perf_counter()
            try:
                self.files.write()
            except (OSError, ValueError) as exc:  # ValueError: mmap's, when the file cannot grow
                if not self.failing:
                    log.warning("metrics: writing this worker's counts to %s failed (%s); scrapes show them "
                                "late until a write works", self.multiprocess_dir, exc)
                self.failing = True
                return
            self.failing = False
            self.delay = max(WRITE_DELAY, 50 * (time.perf_counter() - started))

    def close(self) -> None:
        """Several workers: the last write; the live gauge is then marked dead (``mark_process_dead``)."""
        if self.files is None:
            return
        from prometheus_client.multiprocess import mark_process_dead

        if self._timer is not None:
            self._timer.cancel()
        self.sync_plugin_errors()
        self.write()
        self.files.close()
        self.files, self.pending = None, True
        mark_process_dead(os.getpid(), self.multiprocess_dir)

    def _count_upstream_errors(self, ctx: RequestContext) -> None:
        """One count per failed attempt, by its typed ``error_kind`` (the label values are a fixed set)."""
        last = len(ctx.attempts) - 1
        for i, attempt in enumerate(ctx.attempts):
            if attempt.error_kind == "status":  # an error status (one of ERROR_KINDS)
                kind = f"http_{attempt.status}"
            elif attempt.error_kind is not None:
                kind = attempt.error_kind
            elif i == last and ctx.outcome == UPSTREAM_ERROR and ctx.error is not None:
                # Ended by the core while this attempt ran: after its head was relayed (a truncated
                # response: stream_<kind>) or before it answered (the total timeout).
                kind = ctx.error.error_kind
                if attempt.status is not None:
                    kind = "stream_" + kind
            else:
                continue
            self.store.count("ccproxy_upstream_errors", (attempt.provider, kind))

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape body and its content type."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder

        self.sync_plugin_errors()
        encoder, content_type = choose_encoder(accept or "")
        if self.files is None:
            return encoder(self.store.registry), content_type
        from prometheus_client.multiprocess import MultiProcessCollector

        self.write()  # this worker's numbers as they are now; the others' at most WRITE_DELAY old
        _drop_dead_workers(self.multiprocess_dir)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        return encoder(registry), content_type


_LIVE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db$")


def _drop_dead_workers(path: str | None) -> None:
    """Forget the live gauges of workers that died without stopping (killed, crashed)."""
    if not path:
        return
    from prometheus_client.multiprocess import mark_process_dead

    dead = set()
    for name in os.listdir(path):
        match = _LIVE_FILE.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or pid in dead:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.add(pid)
        except PermissionError:
            pass
    for pid in dead:
        mark_process_dead(pid, path)


@hookimpl
def ccproxy_configure(config: Config, settings: PluginSettings) -> MetricsPlugin:
    """Check ``plugins: metrics:`` while the app is built; the app's metrics live in what it returns."""
    return MetricsPlugin(config, Settings(settings))


class MetricsPlugin:
    """The hooks of one app: its route, and its worker's :class:`Metrics` from start-up to shutdown."""

    def __init__(self, config: Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.metrics: Metrics | None = None
        #: What the main process created for several workers: ``env`` (the variable's value), ``tmp``.
        self.owned: dict[str, str] = {}

    @hookimpl
    def ccproxy_register_routes(self, app: Any) -> None:
        from sanic import response

        app.register_listener(self.main_process_start, "main_process_start")
        app.register_listener(self.main_process_stop, "main_process_stop")

        async def metrics_route(request: Any) -> Any:
            if self.metrics is None:  # not started yet
                return response.text("metrics are not available before start-up\n", status=503)
            body, content_type = self.metrics.exposition(request.headers.get("accept"))
            return response.raw(body, content_type=content_type)

        app.add_route(metrics_route, self.settings.path, methods=["GET"], name="ccproxy_metrics")

    def main_process_start(self, app: Any) -> None:
        """In Sanic's main process, before workers start: a shared directory for several workers."""
        if os.environ.get(ENV) or app.state.workers <= 1:
            return
        if self.settings.multiprocess_dir:
            path = str(self.settings.multiprocess_dir)
            os.makedirs(path, exist_ok=True)
            for stale in glob.glob(os.path.join(path, "*.db")):
                os.remove(stale)
        else:
            path = tempfile.mkdtemp(prefix="ccproxy-metrics-")
            self.owned["tmp"] = path
        os.environ[ENV] = path  # inherited by the workers Sanic starts next
        self.owned["env"] = path

    def main_process_stop(self, app: Any) -> None:
        if self.owned.get("env") and os.environ.get(ENV) == self.owned["env"]:
            del os.environ[ENV]
        if self.owned.get("tmp"):
            shutil.rmtree(self.owned["tmp"], ignore_errors=True)

    @hookimpl
    def ccproxy_startup(self, app: Any) -> None:
        path = os.environ.get(ENV)
        if path:
            os.makedirs(path, exist_ok=True)  # prometheus-client writes there from the first metric on
        self.metrics = Metrics(self.settings, app.ctx.plugins, path or None, self.config)

    @hookimpl
    def ccproxy_shutdown(self) -> None:
        metrics, self.metrics = self.metrics, None
        if metrics is not None:
            metrics.close()

    @hookimpl
    def ccproxy_stream_start(self, ctx: RequestContext) -> None:
        metrics = self.metrics
        if ctx.stream and metrics is not None:
            metrics.store.add_active(1)
            ctx.state["metrics"] = "active"
            if not metrics.pending:
                metrics.changed()

    @hookimpl
    def ccproxy_stream_end(self, ctx: RequestContext) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        if ctx.stream and ctx.state.pop("metrics", None) == "active":  # only streams are marked
            metrics.store.add_active(-1)
        metrics.record(ctx)
        if not metrics.pending:
            metrics.changed()
