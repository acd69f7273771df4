"""Interleaved A/B: proxy CPU per request (or stream) of several proxy set-ups, side by side.

    python bench/ab.py                                   # all plugins vs core only
    python bench/ab.py --variant all= --variant core=providers --variant +log=providers,access_log
    python bench/ab.py --variant base= --variant try=@/tmp/experiment.py --phase stream
    python bench/ab.py --variant off=%off --variant memory=%memory --variant redis=%redis://127.0.0.1:6379
    python bench/ab.py --routes --phase stream           # each route alone: CPU per event, per route
    python bench/ab.py --variant floor=!floor --variant fwd=!forwarder --variant core=providers --variant all=
    python bench/ab.py --cpu user --variant floor=!floor --variant all=   # user time only (or --cpu system)
    python bench/ab.py --alias --phase stream            # by the model's name and by an alias, per event
    python bench/ab.py --variant off= --variant on=+otel  # what tracing every request costs
    python bench/ab.py --phase ttfb --variant floor=!floor --variant fwd=!forwarder --variant all=

On a shared, noisy machine two runs minutes apart differ by more than most effects
worth measuring, so every set-up runs at once (each its own ``sanic app.app`` process on
CPU 0, idle while not loaded) and the load visits them in turn, ``--slice`` seconds
each, for ``--rounds`` rounds (``sidebyside.interleave``, as ``bench/run.py``'s workers and
features phases). The figure per set-up is the median over rounds of
proxy CPU / units done; the spread (min–max) shows how noisy the machine was.

A variant is ``NAME=SPEC``: SPEC is a comma-separated plugin allow-list (empty: every
installed plugin), optionally followed by ``@FILE`` — a Python file executed in the
proxy before the app is imported (``bench/profiled_proxy.py --patch``), to measure a
hot-path change without editing the project, and/or ``%GATEWAY``: the load client's keys as
client keys, plain (``off``) or with limits counted in a state backend (``memory``,
``sqlite:PATH``, ``redis://...``; see ``run.proxy_config``). A SPEC ending in ``+otel`` turns the otel plugin
on, exporting every request's spans to a sink (a floor on CPU 1, as the features phase's). ``NAME=!floor`` and ``NAME=!forwarder`` run
``bench/floor.py`` and ``bench/forwarder.py`` (a bare forwarder to the mock) in the proxy's place.

``--alias`` measures each dialect alone twice, naming the benchmark's model and an alias of the generated
configuration (``configs.ALIASES``), so that what an alias costs reads off side by side.

``--phase ttfb`` measures latency instead of CPU: the added TTFB p50 of each set-up, 20 streams starting
together (6 events at 1,000/s, as ``bench/run.py``'s phase), every set-up and the mock itself (direct) in
turn round by round; a figure per block of 10 rounds (``--rounds`` blocks), its set-up's p50 minus the
direct one of the same block.

``--routes`` measures each route of ``run.ROUTES`` alone for every variant (a unit per variant and route,
visited in the same interleaved rounds) and prints each route's ratio to the mean of the others, round by
round; with ``--phase stream`` the figure is per event.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import run  # noqa: E402
import sidebyside  # noqa: E402
from configs import ALIAS_OF  # noqa: E402
from loadgen import Target, build_request  # noqa: E402


async def amain(args: argparse.Namespace, children: run.Children, tmp: Path) -> None:
    up = children.spawn(run.MOCK_UPSTREAM,
                        cpu=run.CLIENT_CPU, log_path=tmp / "upstream.log", stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE)
    ports = json.loads(up.stdout.readline())
    variants = []
    sink = None
    for spec in args.variant or ["all plugins=", "core only=providers"]:
        name, _, rest = spec.partition("=")
        otel = rest.endswith("+otel")
        rest = rest.removesuffix("+otel")
        rest, _, gateway = rest.partition("%")
        plugins, _, patch = rest.partition("@")
        cfg = tmp / f"{len(variants)}.yaml"
        run.proxy_config(cfg, ports["port"], tls=False, transport=args.transport,
                         enabled_plugins=[p for p in plugins.split(",") if p] or None if plugins else None,
                         gateway=gateway or None, otel=otel)
        port = run.free_port()
        env = {"CCPROXY_CONFIG": str(cfg)}
        if otel:
            if sink is None:
                sink = run.otlp_sink(children, tmp)
            env |= sink
        sanic = str(Path(sys.executable).with_name("sanic"))
        if rest.startswith("!"):  # a measuring stick instead of the proxy
            app = {"!floor": "bench.floor:app", "!forwarder": "bench.forwarder:app"}[rest]
            argv = [sanic, app, "--single-process", "--host", "127.0.0.1", "--port", str(port)]
            env = {"FORWARDER_UPSTREAM": f"127.0.0.1:{ports['port']}"}
        elif patch:
            argv = [sys.executable, str(HERE / "profiled_proxy.py"), "--port", str(port), "--patch", patch]
        else:
            argv = [sanic, "app.app", "--single-process", "--host", "127.0.0.1", "--port", str(port)]
        v = run.Variant(name, Target(name, "127.0.0.1", port), "proxy", False, argv=argv, env=env)
        variants.append(v)
    bench = run.Bench(run.QUICK, children, tmp)
    procs = {}
    for v in variants:
        procs[v.name] = await bench.start(v)
    if args.phase == "ttfb":
        await ttfb(variants, Target("direct", "127.0.0.1", ports["port"]), args.rounds)
        return
    if args.routes or args.alias:  # each route (dialect) alone
        dialects = [(d,) for d in (run.ROUTES if args.routes else run.DIALECTS)]
    else:
        dialects = [run.DIALECTS]
    if args.phase == "stream":
        def reqs(t: Target, ds: tuple[str, ...], model: str | None) -> list[loadgen.Request]:
            return [build_request(t, d, stream=True, events=50, rate=500, model=model) for d in ds]
        conc, unit = args.concurrency or 16, "event" if args.routes or args.alias else "stream"
    else:
        size = 80_000 if args.phase == "big" else 0

        def reqs(t: Target, ds: tuple[str, ...], model: str | None) -> list[loadgen.Request]:
            return [build_request(t, d, body_bytes=size, model=model) for d in ds]
        conc, unit = args.concurrency or 32, "request"
    named = [(False, ""), (True, " by alias")] if args.alias else [(False, "")]
    units = [sidebyside.Unit(v.name + (f" {ds[0]}" if args.routes or args.alias else "") + label, v.target,
                             procs[v.name].pid, reqs(v.target, ds, ALIAS_OF[ds[0]] if alias else None), conc, unit)
             for v in variants for ds in dialects for alias, label in named]
    for u in units:  # warm-up
        await loadgen.closed_loop(u.target, u.requests, conc, 1.0)
    got = await sidebyside.interleave(units, args.rounds, args.slice, lambda pid: run.cpu_seconds(pid, args.cpu))
    per = {name: s.cpu_us for name, s in got.items()}
    sizes = {name: s.body_bytes for name, s in got.items()}  # body bytes per unit
    base = statistics.median(per[units[0].name])
    part = "" if args.cpu == "all" else f" ({args.cpu} time only)"
    print(f"proxy CPU{part} per {unit} ({args.phase}, {conc} clients, {args.rounds} rounds × {args.slice:g} s, "
          f"transport {args.transport}):")
    for u in units:
        name = u.name
        xs = per[name]
        med = statistics.median(xs)
        bad = f"   {got[name].errors} ERRORS" if got[name].errors else ""
        print(f"  {name:<28} {med:8.1f} µs   (min {min(xs):.1f}, max {max(xs):.1f})   {med - base:+8.1f} µs vs first{bad}")
    if args.routes:
        print_route_ratios(variants, per, sizes, unit, args.rounds)


async def ttfb(variants: list[run.Variant], direct: Target, blocks: int, clients: int = 20, rounds: int = 10) -> None:
    """Added TTFB p50 per set-up: ``blocks`` blocks of ``rounds`` rounds of ``clients`` streams starting together."""
    def reqs(t: Target) -> list[loadgen.Request]:
        return [build_request(t, d, stream=True, events=6, rate=1000) for d in run.DIALECTS]

    targets = [(v.target, reqs(v.target)) for v in variants] + [(direct, reqs(direct))]
    added: dict[str, list[float]] = {v.name: [] for v in variants}
    errors = 0
    for _ in range(blocks):
        got = await loadgen.together(targets, clients, rounds)
        base = statistics.median(got[-1].ttfb) / 1e6
        for v, r in zip(variants, got):
            added[v.name].append(statistics.median(r.ttfb) / 1e6 - base)
            errors += r.errors + r.incomplete_streams  # a stream missing events counts too
    print(f"added TTFB p50, {clients} streams starting together ({blocks} blocks × {rounds} rounds, "
          "each set-up minus direct in the same block):")
    for v in variants:
        xs = added[v.name]
        print(f"  {v.name:<28} {statistics.median(xs):+7.2f} ms   (min {min(xs):+.2f}, max {max(xs):+.2f})")
    if errors:
        print(f"  {errors} ERRORS (non-200, broken connections or streams missing events)")


def print_route_ratios(variants: list[run.Variant], per: dict[str, list[float]], sizes: dict[str, list[float]],
                       unit: str, rounds: int) -> None:
    """Each route against the mean of the other routes, per round: median ratio and its spread; and
    the same per KB of response body the client received (what a route costs per byte it carries)."""
    print(f"each route / mean of the other routes (median over rounds, min–max); body bytes per {unit}, "
          "µs per KB received:")
    for v in variants:
        kb = {route: [c / max(1.0, b) * 1000 for c, b in zip(per[f"{v.name} {route}"], sizes[f"{v.name} {route}"])]
              for route in run.ROUTES}
        for route in run.ROUTES:
            others = [r for r in run.ROUTES if r != route]
            ratios = [per[f"{v.name} {route}"][i] / statistics.fmean(per[f"{v.name} {o}"][i] for o in others)
                      for i in range(rounds)]
            kb_ratios = [kb[route][i] / statistics.fmean(kb[o][i] for o in others) for i in range(rounds)]
            print(f"  {v.name} {route:<12} {statistics.median(ratios):6.3f}   ({min(ratios):.3f}–{max(ratios):.3f})"
                  f"   {statistics.median(sizes[f'{v.name} {route}']):8.0f} B   {statistics.median(kb[route]):7.1f} µs/KB"
                  f"   per KB {statistics.median(kb_ratios):6.3f} ({min(kb_ratios):.3f}–{max(kb_ratios):.3f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append",
                        help="NAME=PLUGINS[@PATCHFILE][%%GATEWAY][+otel] (repeatable)")
    parser.add_argument("--phase", choices=["json", "big", "stream", "ttfb"], default="json")
    parser.add_argument("--transport", default="fast")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--slice", type=float, default=1.5)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--routes", action="store_true", help="measure each route of run.ROUTES alone")
    parser.add_argument("--alias", action="store_true",
                        help="each dialect alone, by its model's name and by an alias of the config (configs.ALIASES)")
    parser.add_argument("--cpu", choices=["all", "user", "system"], default="all",
                        help="the proxy's CPU counted: utime + stime (default), or one of them")
    args = parser.parse_args()
    if args.alias and args.routes:
        parser.error("--alias and --routes: one or the other")
    return run.drive(amain, args, "ccproxy-ab-", 600)


if __name__ == "__main__":
    sys.exit(main())
