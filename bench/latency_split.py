"""Where the added time of one request in flight goes: stamps inside the proxy beside the load client's own.

    python bench/latency_split.py                      # every product plugin, upstream 20 ms late
    python bench/latency_split.py --delay 0 --plugins providers --gap 2
    python bench/latency_split.py --proxy-cpu 1        # everything on CPU 1
    python bench/latency_split.py --burst 20           # rounds of 20 streams starting together

The proxy runs through ``bench/profiled_proxy.py --patch bench/experiments/stamps.py``, which records the
time and the thread's CPU time when a request arrives, when the upstream is written, when its answer
arrives and when the relay writes to the client. The load client sends one request at a time, taking
turns in blocks with the same requests straight to the mock; each segment's p50 is printed, the
upstream's part minus the direct request's. With ``--burst N``, rounds of N streams start together
instead (the TTFB phase's requests, taking turns with the mock round by round), and each round's
timeline is printed: when every request had been sent upstream, when the first answer was read, how
many requests were read and sent after it, how many heads went out before the last request was sent,
when the median head went out, and the CPU per request taken in and per head relayed. Prints the
split; see docs/performance.md ("Latency on this machine") for what it showed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402
import run  # noqa: E402
from loadgen import DIALECTS, Result, Target, build_request  # noqa: E402

Stamp = tuple[str, int, int, str]

SEGMENTS = (
    ("client's write -> the proxy reads it", None, "client_in"),
    ("inbound: -> the upstream write", "client_in", "upstream_out"),
    ("the upstream's part, minus direct", "upstream_out", "upstream_in"),
    ("return path: -> the client write", "upstream_in", "client_out"),
    ("the client write -> the client's read", "client_out", None),
)


async def exchange(target: Target, requests: list[loadgen.Request], n: int, gap: float) -> list[tuple[int, int]]:
    """``n`` requests one at a time on one connection: (sent, answer read) in monotonic ns each."""
    conn = await loadgen.connect(target)
    try:
        await conn.send(requests[0], Result())  # a new connection's first request is not the steady state
        out = []
        for i in range(n):
            await asyncio.wait_for(conn.send(requests[i % len(requests)], Result()), 30)
            out.append((conn.t_sent, loadgen._now()))
            if gap:
                await asyncio.sleep(gap / 1e3)
        return out
    finally:
        conn.close()


async def amain(args: argparse.Namespace, children: run.Children, tmp: Path) -> None:
    run.pin(args.client_cpu)
    mock = list(run.MOCK_UPSTREAM)
    mock[mock.index("--cpu") + 1] = str(args.mock_cpu)
    up = children.spawn(mock, cpu=args.mock_cpu, log_path=tmp / "upstream.log", stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE)
    ports = json.loads(up.stdout.readline())
    cfg, stamps, port = tmp / "proxy.yaml", tmp / "stamps.txt", run.free_port()
    run.proxy_config(cfg, ports["port"], tls=False, transport="fast",
                     enabled_plugins=args.plugins.split(",") if args.plugins else None)
    argv = [sys.executable, str(HERE / "profiled_proxy.py"), "--port", str(port), "--patch",
            str(HERE / "experiments" / "stamps.py")]
    v = run.Variant("proxy", Target("proxy", "127.0.0.1", port), "proxy", False, cpu=args.proxy_cpu, argv=argv,
                    env={"CCPROXY_CONFIG": str(cfg), "CCPROXY_STAMPS": str(stamps)})
    bench = run.Bench(run.QUICK, children, tmp)
    proc = await bench.start(v)
    direct = Target("direct", "127.0.0.1", ports["port"])
    await loadgen.closed_loop(v.target, bench.requests(v.target), 8, 1.0)  # warm-up
    if args.burst:
        await burst(args, v.target, direct, lambda: children.stop(proc), stamps)
        return
    times: dict[str, list[tuple[int, int]]] = {"proxy": [], "direct": []}
    for i in range(2 * args.blocks):
        t = (v.target, direct)[i % 2]
        reqs = [build_request(t, d, delay_ms=args.delay) for d in DIALECTS]
        times["proxy" if t is v.target else "direct"] += await exchange(t, reqs, args.requests // args.blocks,
                                                                        args.gap)
    children.stop(proc)  # writes the stamps
    marks = read_stamps(stamps)
    direct_p50 = statistics.median(done - sent for sent, done in times["direct"])
    rows: dict[str, list[float]] = {name: [] for name, _, _ in SEGMENTS}
    rows |= {"added in all": [], "CPU inbound": [], "CPU return path": [], "CPU after the write, before the next": []}
    j = 0
    for sent, done in times["proxy"]:
        while j < len(marks) and marks[j][1] < sent:
            j += 1
        mine = {}
        for kind, at, cpu, _ in marks[j:]:
            if at > done and kind == "client_in":
                mine["next"] = (at, cpu)
                break
            mine.setdefault(kind, (at, cpu))  # the first of each kind (a body may take more reads/writes)
        if not all(k in mine for k in ("client_in", "upstream_out", "upstream_in", "client_out")):
            continue
        at = {k: a for k, (a, _) in mine.items()} | {None: None}
        for name, start, end in SEGMENTS:
            rows[name].append(((at[end] if end else done) - (at[start] if start else sent)) / 1e3)
        rows["the upstream's part, minus direct"][-1] -= direct_p50 / 1e3
        rows["added in all"].append((done - sent - direct_p50) / 1e3)
        rows["CPU inbound"].append((mine["upstream_out"][1] - mine["client_in"][1]) / 1e3)
        rows["CPU return path"].append((mine["client_out"][1] - mine["upstream_in"][1]) / 1e3)
        if "next" in mine:
            rows["CPU after the write, before the next"].append((mine["next"][1] - mine["client_out"][1]) / 1e3)
    if not rows["added in all"]:
        raise SystemExit("no proxied request has all four stamps: check bench/experiments/stamps.py against the core")
    print(f"one request in flight, upstream {args.delay:g} ms late, plugins {args.plugins or 'every product plugin'}, "
          f"proxy on CPU {args.proxy_cpu}, mock on CPU {args.mock_cpu}, client on CPU {args.client_cpu}, "
          f"gap {args.gap:g} ms; direct p50 {direct_p50 / 1e6:.3f} ms; p50 / p90 in µs over "
          f"{len(rows['added in all'])} requests:")
    print_p50_p90(rows, 40, 0)


async def burst(args: argparse.Namespace, proxy: Target, direct: Target, stop: Callable[[], object],
                stamps: Path) -> None:
    """``args.burst`` streams starting together, ``args.rounds`` rounds taking turns with direct: each round's
    timeline."""
    n = args.burst
    got = await loadgen.together([(t, [build_request(t, d, stream=True, events=6, rate=1000) for d in DIALECTS])
                                  for t in (proxy, direct)], n, args.rounds)
    stop()  # writes the stamps
    rounds: list[list[Stamp]] = []
    current: list[Stamp] = []
    for mark in read_stamps(stamps):  # a round: stamps no more than 3 ms apart (rounds are 20 ms apart at least)
        if current and mark[1] - current[-1][1] > 3_000_000:
            rounds.append(current)
            current = []
        current.append(mark)
    rounds.append(current)
    rows: dict[str, list[float]] = {name: [] for name in (
        "every request sent upstream (ms)", "the first answer read (ms)", "requests read after the first answer",
        "requests sent upstream after the first answer", "heads out before the last request was sent",
        "the median head out (ms)", "CPU per request taken in (µs)", "CPU per head relayed, to the median head (µs)")}
    for marks in rounds:
        sent = [m for m in marks if m[0] == "upstream_out"]
        if len(sent) != n:  # the warm-up round, or a round split by a gap
            continue
        start = next(m for m in marks if m[0] == "client_in")
        heads = firsts(marks, "client_out")  # (time, CPU) of each relay's first write
        if len(heads) < n:
            continue
        last, median = sent[-1], sorted(heads.values())[n // 2 - 1]
        early = sum(at < last[1] for at, _ in heads.values())
        answers = [m for m in marks if m[0] == "upstream_in"]
        rows["every request sent upstream (ms)"].append((last[1] - start[1]) / 1e6)
        rows["the first answer read (ms)"].append((answers[0][1] - start[1]) / 1e6)
        reads = firsts(marks, "client_in")
        rows["requests read after the first answer"].append(sum(at > answers[0][1] for at, _ in reads.values()))
        rows["requests sent upstream after the first answer"].append(sum(m[1] > answers[0][1] for m in sent))
        rows["heads out before the last request was sent"].append(early)
        rows["the median head out (ms)"].append((median[0] - start[1]) / 1e6)
        rows["CPU per request taken in (µs)"].append((last[2] - start[2]) / 1e3 / n)
        relayed = sum(at <= median[0] for at, _ in heads.values()) - early
        if median[0] > last[1] and relayed:
            rows["CPU per head relayed, to the median head (µs)"].append((median[1] - last[2]) / 1e3 / relayed)
    if not rows["every request sent upstream (ms)"]:
        raise SystemExit("no round has every stamp: check bench/experiments/stamps.py against the core")
    ttfb = [statistics.median(r.ttfb) / 1e6 for r in got]
    print(f"{n} streams starting together, {len(rows['every request sent upstream (ms)'])} rounds, plugins "
          f"{args.plugins or 'every product plugin'}; TTFB p50 {ttfb[0]:.2f} ms, direct {ttfb[1]:.2f} ms "
          f"(added {ttfb[0] - ttfb[1]:+.2f} ms); from the round's first request byte at the proxy, p50 / p90:")
    print_p50_p90(rows, 46, 2)


def read_stamps(path: Path) -> list[Stamp]:
    """The stamps ``bench/experiments/stamps.py`` wrote, in order: (kind, time ns, thread CPU ns, object id)."""
    lines = (line.split() for line in path.read_text().splitlines())
    return [(kind, int(at), int(cpu), key) for kind, at, cpu, key in lines]


def firsts(marks: list[Stamp], kind: str) -> dict[str, tuple[int, int]]:
    """By object, the (time, CPU) of its first stamp of ``kind`` in ``marks``."""
    out: dict[str, tuple[int, int]] = {}
    for k, at, cpu, key in marks:
        if k == kind:
            out.setdefault(key, (at, cpu))
    return out


def print_p50_p90(rows: dict[str, list[float]], width: int, digits: int) -> None:
    """One line per row that has figures: its name, p50 and p90."""
    for name, xs in rows.items():
        if xs:
            xs.sort()
            print(f"  {name:{width}} {xs[len(xs) // 2]:8.{digits}f} {xs[int(len(xs) * 0.9)]:8.{digits}f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=20.0, help="the upstream answers this late (ms)")
    parser.add_argument("--requests", type=int, default=150, help="proxied requests (and as many direct)")
    parser.add_argument("--blocks", type=int, default=3, help="blocks taking turns with direct")
    parser.add_argument("--gap", type=float, default=0.0, help="pause between requests (ms)")
    parser.add_argument("--burst", type=int, default=0, help="N streams starting together, in rounds (0: off)")
    parser.add_argument("--rounds", type=int, default=40, help="--burst: rounds (and as many direct)")
    parser.add_argument("--plugins", default="", help="a plugin allow-list, e.g. providers (default: every one)")
    parser.add_argument("--proxy-cpu", type=int, default=run.PROXY_CPU)
    parser.add_argument("--mock-cpu", type=int, default=run.CLIENT_CPU)
    parser.add_argument("--client-cpu", type=int, default=run.CLIENT_CPU)
    return run.drive(amain, parser.parse_args(), "ccproxy-latency-", 600)


if __name__ == "__main__":
    sys.exit(main())
