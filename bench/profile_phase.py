"""Where the proxy's CPU goes: profile one benchmark phase (an investigation tool, not a test).

    python bench/profile_phase.py --phase json            # 32 clients, non-streaming
    python bench/profile_phase.py --phase stream          # 16 concurrent 50-event streams
    python bench/profile_phase.py --phase ttfb            # rounds of 20 streams starting together
    python bench/profile_phase.py --phase json --tool cprofile

Starts the mock upstream and the proxy exactly as ``bench/run.py`` does (CPU 0 for the
proxy, CPU 1 for the rest), warms up, then profiles only the measured phase:

* ``--tool py-spy`` (default when ``py-spy`` is on PATH or next to this Python; it is
  not a project dependency): samples the unmodified ``sanic app.app`` process from the
  outside (``py-spy record --pid``), so the proxy runs at full speed.
* ``--tool cprofile``: runs the proxy under ``bench/profiled_proxy.py`` (cProfile
  switched on and off by signals). Deterministic, but the profiler roughly doubles the
  cost of small calls: use it for call counts, py-spy for proportions.

Prints the top functions by own time and by inclusive time, and the phase's CPU per
request (or per stream) measured as in ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import run  # noqa: E402
from loadgen import Target, build_request  # noqa: E402


def _pyspy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def collapsed_report(path: Path, top: int) -> str:
    """Own and inclusive sample shares per function from py-spy's ``--format raw`` output."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        # "function (file:line)" -> "function (file)"; the line number would split one function.
        names = []
        for f in frames:
            name, _, where = f.partition(" (")
            where = where.rstrip(")").rsplit(":", 1)[0]
            short = where.split("site-packages/")[-1].replace(str(run.ROOT) + "/", "")
            names.append(f"{name} ({short})")
        if names:
            own[names[-1]] += n
        for name in set(names):
            incl[name] += n
    lines = [f"{total} samples", "", "own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive time:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in incl.most_common(top)]
    return "\n".join(lines)


async def warm_up(target: Target) -> None:
    await loadgen.closed_loop(target, [build_request(target, d) for d in run.DIALECTS], 32, 0.6)
    reqs = [build_request(target, d, stream=True, events=50, rate=500) for d in run.DIALECTS]
    await loadgen.closed_loop(target, reqs, 16, 0.6)


async def phase(args: argparse.Namespace, target: Target, pid: int) -> tuple[str, float, int]:
    """The measured phase; returns (unit, proxy CPU seconds, units done)."""
    c0 = run.cpu_seconds(pid)
    dialects = (args.route,) if args.route else run.DIALECTS
    if args.phase == "stream":
        reqs = [build_request(target, d, stream=True, events=50, rate=500) for d in dialects]
        r = await loadgen.closed_loop(target, reqs, args.concurrency or 16, args.seconds)
        unit, done = "stream", r.streams
    elif args.phase == "ttfb":  # as bench/run.py's TTFB phase, without the direct rounds between
        reqs = [build_request(target, d, stream=True, events=6, rate=1000) for d in dialects]
        rounds = max(1, int(args.seconds / 0.03))  # a round takes ~10 ms, then a 20 ms pause
        r = (await loadgen.together([(target, reqs)], args.concurrency or 20, rounds))[0]
        unit, done = "stream", r.streams
        print(f"TTFB p50 {run.pct(r.ttfb, 50) / 1e6:.2f} ms over {rounds} rounds")
    else:
        size = 80_000 if args.phase == "big" else 0
        reqs = [build_request(target, d, body_bytes=size) for d in dialects]
        r = await loadgen.closed_loop(target, reqs, args.concurrency or 32, args.seconds)
        unit, done = "request", r.requests
    return unit, run.cpu_seconds(pid) - c0, done


async def amain(args: argparse.Namespace, children: run.Children, tmp: Path) -> None:
    up = children.spawn(run.MOCK_UPSTREAM, cpu=run.CLIENT_CPU,
                        log_path=tmp / "upstream.log", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    ports = json.loads(up.stdout.readline())
    cfg = tmp / "proxy.yaml"
    run.proxy_config(cfg, ports["port"], tls=False, transport=args.transport,
                     enabled_plugins=args.plugins.split(",") if args.plugins is not None else None, otel=args.otel)
    port = run.free_port()
    target = Target("proxy", "127.0.0.1", port)
    env = {"CCPROXY_CONFIG": str(cfg)}
    if args.otel:  # its exports go to a floor on CPU 1, as in the benchmark's features phase
        env |= run.otlp_sink(children, tmp)
    prof_out = tmp / "proxy.prof"
    if args.tool == "cprofile":
        argv = [sys.executable, str(HERE / "profiled_proxy.py"), "--port", str(port), "--out", str(prof_out)]
    else:
        sanic = Path(sys.executable).with_name("sanic")
        argv = [str(sanic), "app.app", "--single-process", "--host", "127.0.0.1", "--port", str(port)]
    proc = children.spawn(argv, cpu=run.PROXY_CPU, log_path=tmp / "proxy.log", env=env)
    for _ in range(2000):
        try:
            if await loadgen.one_request(target, build_request(target, "anthropic")) == 200:
                break
        except OSError:
            await asyncio.sleep(0.01)
    else:
        raise RuntimeError("proxy did not start:\n" + run.log_tail(tmp / "proxy.log"))

    await warm_up(target)
    sampler = None
    raw = tmp / "pyspy.txt"
    if args.tool == "py-spy":
        sampler = subprocess.Popen(
            [_pyspy(), "record", "--pid", str(proc.pid), "--rate", "400", "--format", "raw", "--output", str(raw),
             "--duration", str(max(1, int(args.seconds) - 1))] + (["--native"] if args.native else ["--nonblocking"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        children.procs.append(sampler)
        await asyncio.sleep(0.3)  # attaching takes a moment
    elif args.tool == "cprofile":
        os.kill(proc.pid, signal.SIGUSR1)  # profiler on
    unit, cpu, done = await phase(args, target, proc.pid)
    if args.tool == "cprofile":
        os.kill(proc.pid, signal.SIGUSR2)  # profiler off, stats written
        await asyncio.sleep(0.5)
    how = {"py-spy": "py-spy attached", "cprofile": "cProfile inside: inflated", "none": "no profiler"}[args.tool]
    print(f"proxy CPU per {unit}: {cpu / max(1, done) * 1e6:,.0f} µs over {done:,} {unit}s ({how})")
    if sampler is not None:
        sampler.wait(args.seconds + 30)
        err = sampler.stderr.read().decode(errors="replace") if sampler.stderr else ""
        if sampler.returncode != 0 or not raw.exists():
            print("py-spy failed:", err[-2000:])
        else:
            print(collapsed_report(raw, args.top))
            if args.keep:
                shutil.copy(raw, args.keep)
    elif args.tool == "cprofile":
        children.stop(proc)
        stats = pstats.Stats(str(prof_out))
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        if args.keep:
            shutil.copy(prof_out, args.keep)


def main() -> int:
    parser = argparse.ArgumentParser(description="profile one phase of the proxy benchmark")
    parser.add_argument("--phase", choices=["json", "big", "stream", "ttfb"], default="json")
    parser.add_argument("--tool", choices=["py-spy", "cprofile"], default=None)
    parser.add_argument("--transport", default="fast", help="`transport:` for the providers (fast|httpx)")
    parser.add_argument("--plugins", default=None,
                        help="comma-separated allow-list of plugins (default: every installed one)")
    parser.add_argument("--otel", action="store_true", help="the otel plugin on, every request sampled")
    parser.add_argument("--native", action="store_true", help="py-spy: include C frames (uvloop, CPython)")
    parser.add_argument("--no-profile", action="store_true", help="measure CPU only, no profiler")
    parser.add_argument("--route", choices=run.ROUTES, default=None,
                        help="profile one route alone (default: Anthropic and Chat, half each)")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--keep", help="copy the raw profile here")
    args = parser.parse_args()
    if args.no_profile:
        args.tool = "none"
    if args.tool is None:
        args.tool = "py-spy" if _pyspy() else "cprofile"
    if args.tool == "py-spy" and not _pyspy():
        parser.error("py-spy is not installed (pip install py-spy), or use --tool cprofile")
    return run.drive(amain, args, "ccproxy-profile-", args.seconds + 120)


if __name__ == "__main__":
    sys.exit(main())
