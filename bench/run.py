"""ccproxy's benchmark (issues 7 and 17): one command, side by side, bounded in time.

    python bench/run.py            # full run, about 7-8 minutes
    python bench/run.py --quick    # about 2.5 minutes

What runs, all on 127.0.0.1:

* The project's mock upstream (``python -m tests.mock_upstream``, the one the tests use):
  every dialect, JSON and SSE, its own process pinned to CPU 1, plain HTTP and TLS (a
  self-signed certificate made here with the ``openssl`` CLI).
* The floor (``bench/floor.py``): Sanic answering the same requests itself, with the mock's own
  bytes and schedule and no upstream call, started like the proxy. Every CPU goal is a ratio to it.
* The proxy: ``sanic app.app --single-process`` pinned to CPU 0, with a generated config
  whose providers point at the mock upstream (routing globs, provider headers, the
  bundled plugin set loaded from entry points). When the config accepts
  ``transport: fast|httpx`` it runs once with each.
* The load client (``bench/loadgen.py``), in this process, pinned to CPU 1 too.
* Baselines: the client straight to the upstream ("direct"), and nginx as a reverse
  proxy when ``nginx`` is installed.
* After the columns, two phases of set-ups started once and loaded in interleaved rounds
  (``bench/sidebyside.py``): one worker beside ``--workers 2`` (proxy and floor), and the
  features' costs (dashboard, otel, limits with the memory and the Redis backend).

Proxy CPU is ``utime + stime`` from ``/proc/PID/stat`` before and after each phase;
RSS is ``VmRSS`` from ``/proc/PID/status``. "Added" figures are the proxy's minus
the direct baseline's, from the same run. The Markdown report goes to stdout and to
``bench/results/latest.md``, then one verdict line per goal (``bench/goals.py``); progress
goes to stderr. Every subprocess dies with this one (SIGKILL on parent death, and a clean
stop on exit or Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# What the side tools (ab.py, soak.py, profile_phase.py, client_attacks.py) use is importable from here too.
import goals  # noqa: E402
import loadgen  # noqa: E402
import sidebyside  # noqa: E402
from configs import (FLOOR_APP, make_certificate, nginx_config, otlp_env, probe, proxy_config,  # noqa: E402,F401
                     server_argv)
from loadgen import DIALECTS, ROUTES, Request, Target, build_request  # noqa: E402
from procs import (CLIENT_CPU, PINNED, PROXY_CPU, ROOT, Children, Meter, cpu_seconds, free_port,  # noqa: E402,F401
                   log, log_tail, pct, pin, status_kb)
from report import render  # noqa: E402

#: The mock upstream, as a process of its own (run from the repository root): prints its ports as JSON.
MOCK_UPSTREAM = [sys.executable, "-m", "tests.mock_upstream", "--port", "0", "--cpu", str(CLIENT_CPU), "--watch-stdin"]
#: The routes take turns this many times in the per-route phase (a run of the shared machine's load hits each alike).
ROUTE_ROUNDS = 4


@dataclass(frozen=True)
class Plan:
    """Durations and sizes of the phases."""

    json_seconds: float
    json1_seconds: float
    big_seconds: float
    stream_seconds: float
    ttfb_rounds: int
    many_seconds: float
    extra_startups: int
    warmup_seconds: float = 0.6
    json_concurrency: int = 32
    big_body_bytes: int = 80_000
    stream_concurrency: int = 16
    stream_events: int = 50
    stream_rate: float = 500.0
    ttfb_clients: int = 20
    ttfb_events: int = 6
    ttfb_rate: float = 1000.0
    many_streams: int = 500
    many_rate: float = 50.0
    many_ramp: float = 1.0
    route_seconds: float = 2.0
    #: One request in flight against an upstream that answers each JSON request ``slow_delay_ms`` late.
    slow_requests: int = 600
    slow_delay_ms: float = 20.0
    #: The 20 ms phase's requests go in this many slices, taking turns with the direct baseline.
    slow_blocks: int = 10
    #: The workers and features phases: set-ups started once, interleaved rounds of ``*_seconds`` slices.
    workers_rounds: int = 4
    workers_seconds: float = 1.5
    features_rounds: int = 6
    features_seconds: float = 1.0


FULL = Plan(json_seconds=5, json1_seconds=2, big_seconds=3, stream_seconds=5, ttfb_rounds=20, many_seconds=8, extra_startups=3)
QUICK = Plan(json_seconds=2, json1_seconds=1, big_seconds=1.5, stream_seconds=2, ttfb_rounds=6, many_seconds=3, extra_startups=0,
             route_seconds=1.2, slow_requests=300, workers_rounds=3, workers_seconds=1.0, features_rounds=3,
             features_seconds=0.5)


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Variant:
    """One column of the report."""

    name: str
    target: Target
    kind: str  # "direct", "floor", "proxy", "nginx"
    tls: bool
    transport: str | None = None
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    #: The CPU its server is pinned to (None: not pinned, as with ``--workers 2``).
    cpu: int | None = PROXY_CPU
    note: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Bench:
    def __init__(self, plan: Plan, children: Children, tmp: Path) -> None:
        self.plan = plan
        self.children = children
        self.tmp = tmp
        self.startups: list[float] = []
        #: The proxy transport whose plain column gets the 20 ms upstream phase (the judged one).
        self.slow_transport: str | None = None
        #: The direct column's target per TLS mode: the latency phases take turns with it (paired baselines).
        self.direct: dict[bool, Target] = {}

    async def routes_alone(self, t: Target, pid: int, m: dict[str, Any]) -> None:
        """Proxy CPU per JSON request and per stream event of each route alone; the routes take turns
        (``ROUTE_ROUNDS`` rounds, the order reversed every other round) so the machine's other load
        falls on each alike."""
        p = self.plan
        cpu = {(route, kind): 0.0 for route in ROUTES for kind in ("json", "event")}
        done = dict.fromkeys(cpu, 0)
        for i in range(ROUTE_ROUNDS):
            for route in ROUTES if i % 2 == 0 else ROUTES[::-1]:
                meter = Meter(pid)
                r = await loadgen.closed_loop(t, [build_request(t, route)], p.json_concurrency,
                                              p.route_seconds / ROUTE_ROUNDS)
                cpu[route, "json"] += meter.stop().cpu
                done[route, "json"] += r.requests
                meter = Meter(pid)
                r = await loadgen.closed_loop(
                    t, [build_request(t, route, stream=True, events=p.stream_events, rate=p.stream_rate)],
                    p.stream_concurrency, p.route_seconds / ROUTE_ROUNDS)
                cpu[route, "event"] += meter.stop().cpu
                done[route, "event"] += r.events
                m["errors"] += r.errors
        for (route, kind), seconds in cpu.items():
            m[f"route_{route}_{kind}_us"] = seconds / max(1, done[route, kind]) * 1e6

    def requests(self, target: Target, **kw: Any) -> list[Request]:
        return [build_request(target, d, **kw) for d in DIALECTS]

    async def start(self, v: Variant) -> subprocess.Popen[bytes]:
        """Spawn the variant's server; record spawn → first 200 on a proxied request."""
        log_path = self.tmp / f"{v.name.replace(' ', '-')}.log"
        req = build_request(v.target, "anthropic")
        t0 = time.perf_counter()
        proc = self.children.spawn(v.argv, cpu=v.cpu, log_path=log_path, env=v.env)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{v.name} exited with {proc.returncode}:\n{log_tail(log_path)}")
            try:
                status = await loadgen.one_request(v.target, req, timeout=10)
                if status == 200:
                    elapsed = time.perf_counter() - t0
                    break
                raise RuntimeError(f"{v.name}: first request answered {status}:\n{log_tail(log_path)}")
            except OSError:
                pass
            if time.perf_counter() - t0 > 30:
                raise RuntimeError(f"{v.name} did not answer within 30 s:\n{log_tail(log_path)}")
            await asyncio.sleep(0.005)
        v.metrics.setdefault("startup", []).append(elapsed)
        return proc

    async def run_variant(self, v: Variant) -> None:
        p, m, t = self.plan, v.metrics, v.target
        proc = None
        pid = None
        if v.kind != "direct":
            for _ in range(self.plan.extra_startups if v.kind == "proxy" else 0):
                extra = await self.start(v)
                self.children.stop(extra)
            proc = await self.start(v)
            pid = proc.pid
            if v.kind == "proxy":
                self.startups += v.metrics["startup"]

        try:
            # Warm-up: imports done lazily, pools filled, code paths hot.
            await loadgen.closed_loop(t, self.requests(t), p.json_concurrency, p.warmup_seconds)
            await loadgen.closed_loop(t, self.requests(t, stream=True, events=10, rate=2000), 8, p.warmup_seconds / 2)
            if pid:
                m["rss_warm"] = status_kb(pid, "VmRSS") / 1024

            log(f"{v.name}: JSON, 1 client")
            r = await loadgen.closed_loop(t, self.requests(t), 1, p.json1_seconds)
            m["json1_p50"], m["json1_p99"] = pct(r.latencies, 50) / 1e6, pct(r.latencies, 99) / 1e6
            m["errors"] = r.errors

            direct = self.direct.get(v.tls) if v.kind != "direct" else None
            if not v.tls and direct and (v.kind != "proxy" or v.transport == self.slow_transport):
                log(f"{v.name}: JSON, 1 in flight, the upstream answering {p.slow_delay_ms:g} ms late, "
                    f"{p.slow_requests} requests, taking turns with direct")
                meter = Meter(pid)
                r, d = await loadgen.in_turns(
                    [(x, [build_request(x, dialect, delay_ms=p.slow_delay_ms) for dialect in DIALECTS])
                     for x in (t, direct)], p.slow_requests * (p.slow_delay_ms + 1) / 1e3, p.slow_blocks)
                m["slow_p50"], m["slow_p99"] = pct(r.latencies, 50) / 1e6, pct(r.latencies, 99) / 1e6
                m["slow_direct_p50"], m["slow_direct_p99"] = pct(d.latencies, 50) / 1e6, pct(d.latencies, 99) / 1e6
                m["slow_n"] = r.requests
                m["others_slow"] = meter.stop().others
                m["errors"] += r.errors

            log(f"{v.name}: JSON, {p.json_concurrency} clients")
            meter = Meter(pid)
            r = await loadgen.closed_loop(t, self.requests(t), p.json_concurrency, p.json_seconds)
            meter.stop()
            m["json_rps"] = r.requests / r.wall
            m["json_cpu_us"] = meter.cpu / max(1, r.requests) * 1e6
            m["others_json"] = meter.others
            m["json_p50"], m["json_p99"] = pct(r.latencies, 50) / 1e6, pct(r.latencies, 99) / 1e6
            m["errors"] += r.errors
            m["statuses"] = r.statuses

            log(f"{v.name}: JSON with {p.big_body_bytes // 1000} KB bodies, {p.json_concurrency} clients")
            meter = Meter(pid)
            r = await loadgen.closed_loop(t, self.requests(t, body_bytes=p.big_body_bytes), p.json_concurrency, p.big_seconds)
            meter.stop()
            m["big_rps"] = r.requests / r.wall
            m["big_cpu_us"] = meter.cpu / max(1, r.requests) * 1e6
            m["big_p50"] = pct(r.latencies, 50) / 1e6
            m["errors"] += r.errors

            log(f"{v.name}: {p.stream_concurrency} concurrent {p.stream_events}-event streams at {p.stream_rate:g} events/s")
            meter = Meter(pid)
            r = await loadgen.closed_loop(
                t, self.requests(t, stream=True, events=p.stream_events, rate=p.stream_rate),
                p.stream_concurrency, p.stream_seconds,
            )
            meter.stop()
            m["others_stream"] = meter.others
            m["st_streams"], m["st_incomplete"] = r.streams, r.incomplete_streams
            m["st_cpu_stream_ms"] = meter.cpu / max(1, r.streams) * 1e3
            m["st_cpu_event_us"] = meter.cpu / max(1, r.events) * 1e6
            m["st_lat_p50"], m["st_lat_p99"] = pct(r.event_latencies, 50) / 1e6, pct(r.event_latencies, 99) / 1e6
            m["st_gap_p50"], m["st_gap_p99"] = pct(r.gaps, 50) / 1e6, pct(r.gaps, 99) / 1e6
            m["st_multi"] = r.multi_event_reads / max(1, r.event_reads) * 100
            m["st_events"], m["st_expected"] = r.events, r.expected_events
            m["st_ttfb_p50"] = pct(r.ttfb, 50) / 1e6
            m["errors"] += r.errors

            log(f"{v.name}: {p.ttfb_clients} streams starting together, {p.ttfb_rounds} rounds"
                + (", taking turns with direct" if direct else ""))
            meter = Meter(pid)
            got = await loadgen.together(
                [(x, self.requests(x, stream=True, events=p.ttfb_events, rate=p.ttfb_rate)) for x in (t, direct) if x],
                p.ttfb_clients, p.ttfb_rounds,
            )
            m["others_ttfb"] = meter.stop().others
            r = got[0]
            m["ttfb_p50"], m["ttfb_p99"] = pct(r.ttfb, 50) / 1e6, pct(r.ttfb, 99) / 1e6
            if direct:
                m["ttfb_direct_p50"] = pct(got[1].ttfb, 50) / 1e6
            m["errors"] += r.errors

            if v.kind in ("proxy", "floor"):
                log(f"{v.name}: each route alone, interleaved ({ROUTE_ROUNDS} rounds): JSON, {p.json_concurrency} "
                    f"clients; {p.stream_concurrency} concurrent {p.stream_events}-event streams")
                await self.routes_alone(t, pid, m)

            events = int(p.many_rate * p.many_seconds)
            log(f"{v.name}: {p.many_streams} concurrent streams x {p.many_rate:g} events/s x {p.many_seconds:g} s")
            rss_peak = [0]

            async def sample_rss() -> None:
                while True:
                    rss_peak[0] = max(rss_peak[0], status_kb(pid, "VmRSS"))
                    await asyncio.sleep(0.1)

            sampler = asyncio.ensure_future(sample_rss()) if pid else None
            meter = Meter(pid)
            r = await loadgen.many_streams(
                t, self.requests(t, stream=True, events=events, rate=p.many_rate), p.many_streams,
                p.many_ramp, timeout=p.many_ramp + p.many_seconds + 15,
            )
            meter.stop()
            m["others_many"] = meter.others
            if sampler is not None:
                sampler.cancel()
                m["many_rss_peak"] = rss_peak[0] / 1024
                m["rss_hwm"] = status_kb(pid, "VmHWM") / 1024
            m["many_events"], m["many_expected"] = r.events, r.expected_events
            m["many_incomplete"] = r.incomplete_streams
            m["many_lat_p50"] = pct(r.event_latencies, 50) / 1e6
            m["many_lat_p99"] = pct(r.event_latencies, 99) / 1e6
            m["many_lat_max"] = pct(r.event_latencies, 100) / 1e6
            m["many_multi"] = r.multi_event_reads / max(1, r.event_reads) * 100
            m["many_gap_p99"] = pct(r.gaps, 99) / 1e6
            m["many_cpu_pct"] = meter.cpu / r.wall * 100
            m["many_cpu_event_us"] = meter.cpu / max(1, r.events) * 1e6
            m["errors"] += r.errors
        finally:
            if proc is not None:
                self.children.stop(proc)


# -- main ----------------------------------------------------------------------------------------


async def side_by_side(bench: Bench, p: Plan, upstream_port: int, transport: str | None, tmp: Path,
                       mock_pid: int | None = None) -> dict[str, Any]:
    """The workers and features phases (``bench/sidebyside.py``): set-ups started once, interleaved rounds.
    ``mock_pid``: the mock upstream's process, whose CPU the workers phase counts beside the servers'."""
    def floor(name: str, cpu: int | None = PROXY_CPU, workers: int = 1) -> Variant:
        port = free_port()
        return Variant(name, Target(name, "127.0.0.1", port), "floor", False, cpu=cpu,
                       argv=server_argv(FLOOR_APP, port, workers))

    def proxy(name: str, cpu: int | None = PROXY_CPU, workers: int = 1, **kwargs: Any) -> Variant:
        port = free_port()
        cfg = tmp / f"side-{name.replace(' ', '-')}.yaml"
        proxy_config(cfg, upstream_port, tls=False, transport=transport, **kwargs)
        return Variant(name, Target(name, "127.0.0.1", port), "proxy", False, transport, cpu=cpu,
                       argv=server_argv("app.app", port, workers), env={"CCPROXY_CONFIG": str(cfg)})

    def scaled(kind: str, workers: int) -> Variant:
        return (proxy if kind == "proxy" else floor)(f"{kind} {workers}w", PROXY_CPU if workers == 1 else None, workers)

    out: dict[str, Any] = {}
    for phase, run_phase in (
        ("workers", lambda: sidebyside.workers(bench, scaled, p.workers_rounds, p.workers_seconds, mock_pid)),
        ("features", lambda: sidebyside.features(bench, lambda name, kw: proxy(name, **kw), floor("floor"),
                                                  floor("otlp sink", CLIENT_CPU), tmp, p.features_rounds,
                                                  p.features_seconds)),
    ):
        log(f"=== {phase} phase: set-ups side by side, interleaved rounds")
        try:
            out[phase] = await run_phase()
        except Exception as exc:  # one broken phase must not lose the columns
            out[f"{phase}_error"] = f"{type(exc).__name__}: {exc}"
            log(f"{phase} phase failed: {out[f'{phase}_error']}")
    return out


async def amain(args: argparse.Namespace, children: Children, tmp: Path) -> tuple[str, list[goals.Goal]]:
    plan = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    certs = None if args.no_tls else make_certificate(tmp)
    upstream_argv = [*MOCK_UPSTREAM, "--max-seconds", str(args.time_limit + 60)]
    if certs:
        upstream_argv += ["--cert", str(certs[0]), "--key", str(certs[1])]
    up = children.spawn(upstream_argv, cpu=CLIENT_CPU, log_path=tmp / "upstream.log", stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE)
    line = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, up.stdout.readline), 20)
    if not line:
        raise RuntimeError("mock upstream did not start:\n" + log_tail(tmp / "upstream.log"))
    ports = json.loads(line)
    log(f"mock upstream: {ports}")


    # Does the config take `transport:`, and what does each value give?
    transports: list[str | None] = [None]
    probes: dict[str, Any] = {}
    notes: dict[str | None, str] = {}
    found: list[str | None] = []
    for choice in ("fast", "httpx"):
        cfg = tmp / f"probe-{choice}.yaml"
        proxy_config(cfg, ports["port"], tls=False, transport=choice)
        result = probe(cfg, tmp / f"probe-{choice}.log")
        if not result.get("ok"):
            log(f"config with `transport: {choice}` rejected: {result.get('error')}")
            continue
        probes.setdefault("plugins", result.get("plugins"))
        classes = sorted(set((result.get("transports") or {}).get(p, "unknown") for p in ("anthropic", "openai")))
        notes[choice] = f"`transport: {choice}` → {', '.join(c.rsplit('.', 1)[-1] for c in classes) or 'unknown'}"
        found.append(choice)
    if found:
        transports = found
    else:
        cfg = tmp / "probe-default.yaml"
        proxy_config(cfg, ports["port"], tls=False, transport=None)
        result = probe(cfg, tmp / "probe-default.log")
        probes.setdefault("plugins", result.get("plugins"))
        notes[None] = "no `transport` key in this version's config"
    if args.no_httpx:
        transports = [t for t in transports if t != "httpx"] or transports
    log(f"proxy variants: {transports}; plugins: {probes.get('plugins')}")

    variants: list[Variant] = []
    tls_modes = [False] + ([True] if certs else [])
    nginx = shutil.which("nginx")
    for tls in tls_modes:
        up_port = ports["tls_port"] if tls else ports["port"]
        suffix = " (TLS)" if tls else ""
        client_ssl = None
        if tls:
            import ssl

            client_ssl = ssl.create_default_context()
            client_ssl.check_hostname = False
            client_ssl.verify_mode = ssl.CERT_NONE
        variants.append(Variant("direct" + suffix, Target("direct", "127.0.0.1", up_port, ssl=client_ssl), "direct", tls,
                                note="client → mock upstream" + (", TLS" if tls else "") if tls else ""))
        if not tls:
            port = free_port()
            variants.append(Variant("floor", Target("floor", "127.0.0.1", port), "floor", False,
                                    argv=server_argv(FLOOR_APP, port),
                                    note="`bench/floor.py`: Sanic answering the same requests itself, no upstream call"))
        for choice in transports:
            if args.quick and choice == "httpx":
                continue  # keeps --quick under 3 minutes
            port = free_port()
            cfg = tmp / f"proxy-{choice}-{'tls' if tls else 'plain'}.yaml"
            proxy_config(cfg, up_port, tls=tls, transport=choice)
            name = f"proxy {choice}{suffix}" if choice else f"proxy{suffix}"
            variants.append(Variant(
                name, Target("proxy", "127.0.0.1", port), "proxy", tls, choice,
                argv=server_argv("app.app", port), env={"CCPROXY_CONFIG": str(cfg)},
                note=(notes.get(choice, "") + ("; upstream over TLS, `verify_tls: false`" if tls else ""))
                if not tls or choice == transports[0] else "",
            ))
        if args.core_only and not tls:
            port = free_port()
            cfg = tmp / "proxy-core-only.yaml"
            proxy_config(cfg, up_port, tls=False, transport=transports[0], enabled_plugins=["providers"])
            variants.append(Variant(
                f"proxy {transports[0] or ''} core only".replace("  ", " "), Target("proxy", "127.0.0.1", port),
                "proxy", False, transports[0],
                argv=server_argv("app.app", port), env={"CCPROXY_CONFIG": str(cfg)},
                note="`plugins: enabled: [providers]`: only the plugin that adds provider credentials",
            ))
        if nginx and not args.no_nginx and not (tls and args.quick):
            port = free_port()
            conf = nginx_config(tmp, port, up_port, tls)
            variants.append(Variant("nginx" + suffix, Target("nginx", "127.0.0.1", port), "nginx", tls,
                                    argv=[nginx, "-e", "stderr", "-p", str(tmp), "-c", str(conf)],
                                    note="nginx reverse proxy, 1 worker, `proxy_buffering off`"))
    if not nginx:
        log("nginx not installed: no nginx column")

    bench = Bench(plan, children, tmp)
    bench.slow_transport = transports[0]
    bench.direct = {v.tls: v.target for v in variants if v.kind == "direct"}
    for v in variants:
        log(f"=== {v.name}")
        try:
            await bench.run_variant(v)
        except Exception as exc:  # one broken column must not lose the others
            v.error = f"{type(exc).__name__}: {exc}"
            log(f"{v.name} failed: {v.error}")
    side: dict[str, Any] = {}
    if not args.columns_only:
        side = await side_by_side(bench, plan, ports["port"], transports[0], tmp, up.pid)
    children.stop(up)
    report, judged = render(variants, plan, "quick" if args.quick else "full", probes, bench.startups,
                            time.perf_counter() - t_start, side)
    if not any(v.kind == "direct" for v in variants if not v.error):
        report += "\n(no direct baseline: 'added' figures unavailable)\n"
    return report, judged


async def guarded(coro: Any, limit: float, signals: tuple[int, ...]) -> Any:
    """Run ``coro`` for at most ``limit`` seconds; a signal cancels it (KeyboardInterrupt out).

    Inside the loop a Python signal handler must not raise: uvloop may report the
    exception and carry on. The loop's own handlers cancel the task instead.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    got: list[int] = []

    def on_signal(signum: int) -> None:
        got.append(signum)
        if task is not None:
            task.cancel()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)

    def quiet_when_interrupted(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not got:  # after a signal, cancelled helpers have nothing worth printing
            loop.default_exception_handler(context)

    loop.set_exception_handler(quiet_when_interrupted)
    try:
        return await asyncio.wait_for(coro, limit)
    except asyncio.CancelledError:
        if got:
            raise KeyboardInterrupt(f"signal {got[0]}") from None
        raise
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def otlp_sink(children: Children, tmp: Path) -> dict[str, str]:
    """Start a floor on the client CPU to take the otel plugin's OTLP/HTTP exports (its ``/v1/traces`` answers
    200, as in the features phase); return the proxy's environment that sends them there."""
    port = free_port()
    children.spawn(server_argv(FLOOR_APP, port, 1), cpu=CLIENT_CPU, log_path=tmp / "sink.log")
    return otlp_env(port)


def drive(amain: Any, args: Any, prefix: str, timeout: float) -> int:
    """Run ``amain(args, children, tmp)`` on uvloop (when installed) for a side tool, then clean up.

    Pins this process to the client CPU; subprocesses and the temporary directory
    go whatever happens. Returns the exit status (130 on Ctrl-C).
    """
    pin(CLIENT_CPU)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    children = Children()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        asyncio.run(asyncio.wait_for(amain(args, children, tmp), timeout))
    except KeyboardInterrupt:
        return 130
    finally:
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ccproxy benchmark (issues 7 and 17)")
    parser.add_argument("--quick", action="store_true",
                        help="short run, about 2.5 minutes (no httpx column, no nginx column over TLS)")
    parser.add_argument("--no-tls", action="store_true", help="skip the TLS-to-upstream columns")
    parser.add_argument("--no-httpx", action="store_true", help="skip the `transport: httpx` columns")
    parser.add_argument("--core-only", action="store_true",
                        help="add a column with only the `providers` plugin loaded (the cost of the others)")
    parser.add_argument("--no-nginx", action="store_true", help="skip nginx even when installed")
    parser.add_argument("--columns-only", action="store_true",
                        help="skip the side-by-side phases (--workers 2, features' costs) after the columns")
    parser.add_argument("--out", default=str(HERE / "results" / "latest.md"), help="where the Markdown goes too")
    parser.add_argument("--time-limit", type=float, default=None, help="hard stop, seconds (default 300 quick / 720 full)")
    args = parser.parse_args(argv)
    args.time_limit = args.time_limit or (300.0 if args.quick else 720.0)

    PINNED["ok"] = pin(CLIENT_CPU)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    def on_signal(signum: int, _frame: Any) -> None:  # while the event loop is not running
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Ctrl-C must still clean up.
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in signals:
        signal.signal(sig, on_signal)

    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    children = Children()
    tmp = Path(tempfile.mkdtemp(prefix="ccproxy-bench-"))
    try:
        report, judged = asyncio.run(guarded(amain(args, children, tmp), args.time_limit, signals))
    except KeyboardInterrupt:
        log("interrupted; stopping subprocesses")
        return 130
    except asyncio.TimeoutError:
        log(f"time limit of {args.time_limit:g} s reached; stopping (logs in {tmp})")
        return 3
    finally:
        children.stop_all()
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    log(f"written to {out}")
    shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(goals.verdict(g) for g in judged))  # the last lines: one verdict per goal
    return 0


if __name__ == "__main__":
    sys.exit(main())
