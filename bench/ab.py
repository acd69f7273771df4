"""Interleaved A/B: proxy CPU per request (or stream) of several proxy set-ups, side by side.

    python bench/ab.py                                   # all plugins vs core only
    python bench/ab.py --variant all= --variant core=providers --variant +log=providers,access_log
    python bench/ab.py --variant base= --variant try=@/tmp/experiment.py --phase stream
    python bench/ab.py --variant off=%off --variant memory=%memory --variant redis=%redis://127.0.0.1:6379

On a shared, noisy machine two runs minutes apart differ by more than most effects
worth measuring, so every set-up runs at once (each its own ``sanic app.app`` process on
CPU 0, idle while not loaded) and the load visits them in turn, ``--slice`` seconds
each, for ``--rounds`` rounds. The figure per set-up is the median over rounds of
proxy CPU / units done; the spread (min–max) shows how noisy the machine was.

A variant is ``NAME=SPEC``: SPEC is a comma-separated plugin allow-list (empty: every
installed plugin), optionally followed by ``@FILE`` — a Python file executed in the
proxy before the app is imported (``bench/profiled_proxy.py --patch``), to measure a
hot-path change without editing the project, and/or ``%GATEWAY``: the load client's keys as
client keys, plain (``off``) or with limits counted in a state backend (``memory``,
``sqlite:PATH``, ``redis://...``; see ``run.proxy_config``).
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
from loadgen import Target, build_request  # noqa: E402


async def amain(args: argparse.Namespace, children: run.Children, tmp: Path) -> None:
    up = children.spawn(run.MOCK_UPSTREAM,
                        cpu=run.CLIENT_CPU, log_path=tmp / "upstream.log", stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE)
    ports = json.loads(up.stdout.readline())
    variants = []
    for spec in args.variant or ["all plugins=", "core only=providers"]:
        name, _, rest = spec.partition("=")
        rest, _, gateway = rest.partition("%")
        plugins, _, patch = rest.partition("@")
        cfg = tmp / f"{len(variants)}.yaml"
        run.proxy_config(cfg, ports["port"], tls=False, transport=args.transport,
                         enabled_plugins=[p for p in plugins.split(",") if p] or None if plugins else None,
                         gateway=gateway or None)
        port = run.free_port()
        if patch:
            argv = [sys.executable, str(HERE / "profiled_proxy.py"), "--port", str(port), "--patch", patch]
        else:
            sanic = Path(sys.executable).with_name("sanic")
            argv = [str(sanic), "app.app", "--single-process", "--host", "127.0.0.1", "--port", str(port)]
        v = run.Variant(name, Target(name, "127.0.0.1", port), "proxy", False, argv=argv,
                        env={"CCPROXY_CONFIG": str(cfg)})
        variants.append(v)
    bench = run.Bench(run.QUICK, children, tmp)
    procs = {}
    for v in variants:
        procs[v.name] = await bench.start(v)
    if args.phase == "stream":
        def reqs(t: Target) -> list[loadgen.Request]:
            return [build_request(t, d, stream=True, events=50, rate=500) for d in run.DIALECTS]
        conc, unit = args.concurrency or 16, "stream"
    else:
        size = 80_000 if args.phase == "big" else 0

        def reqs(t: Target) -> list[loadgen.Request]:
            return [build_request(t, d, body_bytes=size) for d in run.DIALECTS]
        conc, unit = args.concurrency or 32, "request"
    for v in variants:  # warm-up
        await loadgen.closed_loop(v.target, reqs(v.target), conc, 1.0)
    per: dict[str, list[float]] = {v.name: [] for v in variants}
    errors: dict[str, int] = {v.name: 0 for v in variants}
    for i in range(args.rounds):
        order = variants if i % 2 == 0 else list(reversed(variants))
        for v in order:
            pid = procs[v.name].pid
            c0 = run.cpu_seconds(pid)
            r = await loadgen.closed_loop(v.target, reqs(v.target), conc, args.slice)
            done = r.streams if unit == "stream" else r.requests
            errors[v.name] += r.errors + r.incomplete_streams
            per[v.name].append((run.cpu_seconds(pid) - c0) / max(1, done) * 1e6)
    base = statistics.median(per[variants[0].name])
    print(f"proxy CPU per {unit} ({args.phase}, {conc} clients, {args.rounds} rounds × {args.slice:g} s, "
          f"transport {args.transport}):")
    for v in variants:
        xs = per[v.name]
        med = statistics.median(xs)
        bad = f"   {errors[v.name]} ERRORS" if errors[v.name] else ""
        print(f"  {v.name:<28} {med:8.1f} µs   (min {min(xs):.1f}, max {max(xs):.1f})   {med - base:+8.1f} µs vs first{bad}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", help="NAME=PLUGINS[@PATCHFILE][%%GATEWAY] (repeatable)")
    parser.add_argument("--phase", choices=["json", "big", "stream"], default="json")
    parser.add_argument("--transport", default="fast")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--slice", type=float, default=1.5)
    parser.add_argument("--concurrency", type=int, default=None)
    args = parser.parse_args()
    return run.drive(amain, args, "ccproxy-ab-", 600)


if __name__ == "__main__":
    sys.exit(main())
