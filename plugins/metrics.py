"""Prometheus metrics at ``GET /metrics``, from the public hooks only.

Per request the work is one ``ccproxy_stream_end`` call (plus ``ccproxy_stream_start`` for the
active-streams gauge): a few dict look-ups of pre-bound label children and their ``inc``/``observe``.
Nothing runs per chunk.

Several workers (``sanic app.app --workers N``): every worker counts into prometheus-client's
multiprocess files and ``/metrics`` adds up all of them, so whichever worker answers the scrape
reports the totals. The plugin sets this up itself: in Sanic's main process, before the workers
start, it creates a directory and exports ``PROMETHEUS_MULTIPROC_DIR`` (which the workers inherit),
and removes it when the main process stops. A worker that stops marks its live gauges dead
(``mark_process_dead``); a scrape also drops the live gauges of workers that died without stopping.
If ``PROMETHEUS_MULTIPROC_DIR`` is already set it is used as it is (and never deleted).

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

import glob
import os
import re
import shutil
import tempfile
from collections import Counter as CountOf
from dataclasses import dataclass
from typing import Any

from ccproxy_core import UPSTREAM_ERROR, Config, PluginSettings, RequestContext, hookimpl

NAME = "metrics"
ENV = "PROMETHEUS_MULTIPROC_DIR"

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TTFB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

#: (label value of ``direction``, attribute of ``ctx.usage``)
DIRECTIONS = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cache_read", "cache_read_input_tokens"),
    ("cache_creation", "cache_creation_input_tokens"),
)

#: The label value that stands for models beyond :data:`MAX_MODEL_LABELS` (and label sets beyond
#: :data:`MAX_SERIES`).
OTHER = "_other"
#: Distinct model names that are not configured names which one worker gives a label value of their
#: own (model names come from clients, and a glob such as ``claude-*`` admits any of them);
#: later ones are counted as :data:`OTHER`.
MAX_MODEL_LABELS = 100
#: Distinct label sets kept per metric; beyond it the model label becomes :data:`OTHER`.
MAX_SERIES = 2000


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


class ModelLabels:
    """The ``model`` label value of a model name: a configured name as it is, the first
    :data:`MAX_MODEL_LABELS` other names this worker sees as they are, then :data:`OTHER`.
    Without a config (``None``) no name is known in advance: a bound on any label's values."""

    def __init__(self, config: Config | None, limit: int = MAX_MODEL_LABELS) -> None:
        self.known = configured_models(config) if config is not None else frozenset()
        self.seen: set[str] = set()
        self.limit = limit

    def __call__(self, model: str) -> str:
        if model in self.known or model in self.seen:
            return model
        if len(self.seen) < self.limit:
            self.seen.add(model)
            return model
        return OTHER


class Metrics:
    """The metric objects of one worker and their cached label children."""

    def __init__(self, settings: Settings, plugins: Any, multiprocess_dir: str | None, config: Config) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir is not None and not getattr(values.ValueClass, "_multiprocess", False):
            # prometheus-client picks its value class at import; a worker forked (not spawned) after
            # the directory was set up imported it before. Values created from here on use the files.
            values.ValueClass = values.MultiProcessValue()
        # Single process: a registry of our own (several apps may live in one test process).
        # Multiprocess: values live in the files; each scrape collects them into a fresh registry.
        self.registry = None if multiprocess_dir is not None else CollectorRegistry()
        reg = self.registry
        self.plugins = plugins
        self.model_label = ModelLabels(config)
        self.requests = Counter(
            "ccproxy_requests",
            "Client requests on the proxy routes, counted when they end.",
            ["route", "provider", "model", "status", "outcome"],
            registry=reg,
        )
        self.duration = Histogram(
            "ccproxy_request_duration_seconds",
            "From the request's arrival to its end (last byte sent, failure or disconnect).",
            ["route", "provider", "model"],
            buckets=settings.duration_buckets,
            registry=reg,
        )
        self.ttfb = Histogram(
            "ccproxy_time_to_first_byte_seconds",
            "From the request's arrival to the first byte written to the client.",
            ["route", "provider", "model"],
            buckets=settings.ttfb_buckets,
            registry=reg,
        )
        self.active = Gauge(
            "ccproxy_active_streams",
            "Streamed responses being relayed now (summed over live workers).",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.tokens = Counter(
            "ccproxy_tokens",
            "Tokens reported by the upstream, by direction (input, output, cache_read, cache_creation).",
            ["direction", "provider", "model"],
            registry=reg,
        )
        self.cost = Counter(
            "ccproxy_cost_usd",
            "Cost in US dollars from the usage plugin's price table.",
            ["provider", "model"],
            registry=reg,
        )
        self.key_requests = Counter(
            "ccproxy_key_requests",
            "Client requests on the proxy routes by client key name (plugins.auth.keys) and status.",
            ["key", "status"],
            registry=reg,
        )
        self.key_tokens = Counter(
            "ccproxy_key_tokens",
            "Tokens reported by the upstream (input, cached input and output) by client key name.",
            ["key"],
            registry=reg,
        )
        self.key_cost = Counter(
            "ccproxy_key_cost_usd",
            "Cost in US dollars by client key name.",
            ["key"],
            registry=reg,
        )
        self.upstream_errors = Counter(
            "ccproxy_upstream_errors",
            "Upstream failures by kind: http_<status>, connect, connect_timeout, pool_timeout, write_timeout, "
            "headers_timeout, total_timeout, protocol, unsupported_protocol, other (before the response head), "
            "stream_<kind> (after it), in_band (an error event inside a stream).",
            ["provider", "kind"],
            registry=reg,
        )
        self.plugin_errors = Counter(
            "ccproxy_plugin_errors",
            "Exceptions raised by plugins in observer hooks (the request went on).",
            ["plugin", "hook"],
            registry=reg,
        )
        # Materialise the unlabelled series and a zero for each metric family so a fresh worker shows them.
        self.active.set(0)
        self._children: dict[int, dict[tuple[str, ...], Any]] = {}
        self._plugin_errors_seen: CountOf[tuple[str, str]] = CountOf()
        self._plugin_errors_total = 0

    def child(self, metric: Any, labels: tuple[str, ...], model_index: int | None = None) -> Any:
        """The label child of ``metric`` for ``labels``, bound once and cached."""
        cache = self._children.get(id(metric))
        if cache is None:
            cache = self._children[id(metric)] = {}
        found = cache.get(labels)
        if found is not None:
            return found
        if model_index is not None and len(cache) >= MAX_SERIES:
            labels = (*labels[:model_index], OTHER, *labels[model_index + 1 :])
            found = cache.get(labels)
            if found is not None:
                return found
        found = cache[labels] = metric.labels(*labels)
        return found

    def sync_plugin_errors(self) -> None:
        """Copy new counts from the core's ``plugins.errors`` Counter into the metric."""
        errors = getattr(self.plugins, "errors", None)
        if not errors:
            return
        total = errors.total()
        if total == self._plugin_errors_total:
            return
        for key, count in list(errors.items()):
            delta = count - self._plugin_errors_seen[key]
            if delta > 0:
                self.child(self.plugin_errors, key).inc(delta)
                self._plugin_errors_seen[key] = count
        self._plugin_errors_total = total

    def record(self, ctx: RequestContext) -> None:
        provider = ctx.provider or ""
        model = self.model_label(ctx.model) if ctx.model else ""
        route = ctx.route
        self.child(self.requests, (route, provider, model, str(ctx.status or ""), ctx.outcome or ""), 2).inc()
        series = (route, provider, model)
        if ctx.duration is not None:
            self.child(self.duration, series, 2).observe(ctx.duration)
        if ctx.t_first_byte is not None:
            self.child(self.ttfb, series, 2).observe(ctx.t_first_byte)
        usage = ctx.usage
        if usage is not None:
            for direction, key in DIRECTIONS:
                count = getattr(usage, key)
                if count:
                    self.child(self.tokens, (direction, provider, model), 2).inc(count)
        cost = ctx.cost
        if cost:
            self.child(self.cost, (provider, model), 1).inc(cost)
        key = ctx.client_key
        if key is not None:  # names come from the config: a bounded set
            self.child(self.key_requests, (key, str(ctx.status or ""))).inc()
            if usage is not None:
                self.child(self.key_tokens, (key,)).inc(
                    usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
                    + usage.output_tokens)
            if cost:
                self.child(self.key_cost, (key,)).inc(cost)
        if ctx.attempts:
            self._count_upstream_errors(ctx)
        if ctx.inband_error is not None:
            self.child(self.upstream_errors, (provider, "in_band")).inc()
        self.sync_plugin_errors()

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
            self.child(self.upstream_errors, (attempt.provider, kind)).inc()

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape body and its content type."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder

        self.sync_plugin_errors()
        encoder, content_type = choose_encoder(accept or "")
        if self.registry is not None:
            return encoder(self.registry), content_type
        from prometheus_client.multiprocess import MultiProcessCollector

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
        if metrics is not None and metrics.multiprocess_dir:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(os.getpid(), metrics.multiprocess_dir)

    @hookimpl
    def ccproxy_stream_start(self, ctx: RequestContext) -> None:
        if ctx.stream and self.metrics is not None:
            self.metrics.active.inc()
            ctx.state["metrics"] = "active"

    @hookimpl
    def ccproxy_stream_end(self, ctx: RequestContext) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        if ctx.state.pop("metrics", None) == "active":
            metrics.active.dec()
        metrics.record(ctx)
