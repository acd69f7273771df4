"""The Markdown report: one column per variant, the ratio rows, the side-by-side tables and the goals."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import goals
import sidebyside
from loadgen import ROUTES
from procs import CLIENT_CPU, PINNED, PROXY_CPU

if TYPE_CHECKING:
    from run import Plan, Variant


#: How busy the proxy's CPU was with other processes, per phase (``procs.Meter.others``), in the report's order.
BUSY = ("others_json", "others_stream", "others_ttfb", "others_many", "others_slow")


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if value != value:  # nan
            return "—"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def machine() -> list[str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import uvloop  # noqa: F401

        loop_name = "uvloop " + uvloop.__version__
    except ImportError:
        loop_name = "asyncio"
    return [
        f"- CPU: {model}, `nproc` = {os.cpu_count()}; "
        + (f"proxy pinned to CPU {PROXY_CPU}, load client and mock upstream to CPU {CLIENT_CPU}"
           if PINNED["ok"] else "**not pinned** (fewer than 2 CPUs available): every process shares the CPU"),
        f"- Python {platform.python_version()} ({platform.python_implementation()}), {loop_name}, Linux {platform.release()}",
    ]


def render(variants: list[Variant], plan: Plan, mode: str, probes: dict[str, Any], startups: list[float],
           seconds: float, side: dict[str, Any]) -> tuple[str, list[goals.Goal]]:
    """The Markdown report, and the goals judged on the first plain proxy column."""
    p = plan
    done = [v for v in variants if v.metrics and not v.error]
    base = {tls: next((v for v in done if v.kind == "direct" and v.tls == tls), None) for tls in (False, True)}
    floor = next((v for v in done if v.kind == "floor"), None)

    def to_floor(v: Variant, key: str) -> str:
        """This column's figure ÷ the floor's (proxies and nginx)."""
        if v.kind in ("direct", "floor") or floor is None:
            return "—"
        r = goals.ratio(v.metrics.get(key), floor.metrics.get(key))
        return f"{r:.2f}×" if r is not None else "—"

    def added(v: Variant, key: str) -> float | None:
        """Against the direct baseline of the same rounds when there is one (``goals.PAIRED``), else the column."""
        b = base[v.tls]
        if v.kind == "direct" or (b is None and goals.PAIRED.get(key) not in v.metrics):
            return None
        return goals.added(v.metrics, b.metrics if b else {}, key)

    def cell(v: Variant, key: str, digits: int = 2) -> str:
        return fmt(v.metrics.get(key), digits)

    def events_cell(v: Variant, got: str, want: str) -> str:
        if got not in v.metrics:
            return "—"
        return f"{v.metrics[got]:,} / {v.metrics[want]:,}"

    rows: list[tuple[str, Any]] = [
        ("start-up: spawn → first proxied 200 (ms)",
         lambda v: fmt(statistics.median(v.metrics["startup"]) * 1e3, 0) if v.metrics.get("startup") else "—"),
        ("RSS after warm-up (MB)", lambda v: cell(v, "rss_warm", 1)),
        ("JSON, 1 client: latency p50 / p99 (ms)", lambda v: f"{cell(v, 'json1_p50')} / {cell(v, 'json1_p99')}"),
        ("JSON, 1 client: added p50 (ms)", lambda v: fmt(added(v, "json1_p50"))),
        (f"JSON, 1 in flight, upstream {p.slow_delay_ms:g} ms late: p50 / p99 (ms)",
         lambda v: f"{cell(v, 'slow_p50')} / {cell(v, 'slow_p99')} ({v.metrics['slow_n']:,} req.)"
         if "slow_n" in v.metrics else "—"),
        ("… direct in the same rounds: p50 / p99 (ms)",
         lambda v: f"{cell(v, 'slow_direct_p50')} / {cell(v, 'slow_direct_p99')}" if "slow_direct_p99" in v.metrics
         else "—"),
        ("… added p50 / **added p99 (ms)**", lambda v: f"{fmt(added(v, 'slow_p50'))} / {fmt(added(v, 'slow_p99'))}"
         if "slow_p99" in v.metrics else "—"),
        (f"JSON, {p.json_concurrency} clients: requests/s", lambda v: cell(v, "json_rps")),
        (f"JSON, {p.json_concurrency} clients: **proxy CPU per request (µs)**", lambda v: cell(v, "json_cpu_us", 0)),
        ("… **÷ floor**", lambda v: to_floor(v, "json_cpu_us")),
        (f"JSON, {p.json_concurrency} clients: latency p50 / p99 (ms)", lambda v: f"{cell(v, 'json_p50')} / {cell(v, 'json_p99')}"),
        (f"JSON {p.big_body_bytes // 1000} KB bodies, {p.json_concurrency} clients: requests/s",
         lambda v: cell(v, "big_rps")),
        (f"JSON {p.big_body_bytes // 1000} KB bodies: proxy CPU per request (µs)", lambda v: cell(v, "big_cpu_us", 0)),
        ("… ÷ floor", lambda v: to_floor(v, "big_cpu_us")),
        (f"{p.stream_events}-event streams ({p.stream_concurrency} concurrent, {p.stream_rate:g} ev/s): streams done",
         lambda v: f"{v.metrics['st_streams'] - v.metrics['st_incomplete']:,} / {v.metrics['st_streams']:,}"
         if "st_streams" in v.metrics else "—"),
        ("… **proxy CPU per stream (ms)** / per event (µs)",
         lambda v: f"{cell(v, 'st_cpu_stream_ms')} / {cell(v, 'st_cpu_event_us', 1)}"),
        ("… per event ÷ floor", lambda v: to_floor(v, "st_cpu_event_us")),
        ("… event latency p50 / p99 (ms)", lambda v: f"{cell(v, 'st_lat_p50')} / {cell(v, 'st_lat_p99')}"),
        ("… added event latency p99 (ms)", lambda v: fmt(added(v, "st_lat_p99"))),
        (f"… inter-arrival gap p50 / p99 (ms; sent every {1000 / p.stream_rate:g} ms)",
         lambda v: f"{cell(v, 'st_gap_p50')} / {cell(v, 'st_gap_p99')}"),
        ("… reads carrying >1 event (%)", lambda v: cell(v, "st_multi")),
        (f"TTFB, {p.ttfb_clients} streams starting together: p50 / p99 (ms)",
         lambda v: f"{cell(v, 'ttfb_p50')} / {cell(v, 'ttfb_p99')}"),
        ("… direct in the same rounds: p50 (ms)", lambda v: cell(v, "ttfb_direct_p50")),
        ("… **added TTFB p50 (ms)**", lambda v: fmt(added(v, "ttfb_p50"))),
        (f"{p.many_streams} streams × {p.many_rate:g} ev/s × {p.many_seconds:g} s: events delivered",
         lambda v: events_cell(v, "many_events", "many_expected")),
        ("… event latency p50 / p99 / max (ms)",
         lambda v: f"{cell(v, 'many_lat_p50')} / {cell(v, 'many_lat_p99')} / {cell(v, 'many_lat_max')}"),
        ("… **added event latency p99 (ms)**", lambda v: fmt(added(v, "many_lat_p99"))),
        ("… reads carrying >1 event (%)", lambda v: cell(v, "many_multi")),
        ("… proxy CPU (% of one core) / per event (µs)",
         lambda v: f"{cell(v, 'many_cpu_pct', 0)} / {cell(v, 'many_cpu_event_us', 1)}"),
        ("… **per event ÷ floor**", lambda v: to_floor(v, "many_cpu_event_us")),
        ("… **proxy RSS peak (MB)**", lambda v: cell(v, "many_rss_peak", 1)),
        *((f"route {route} alone: proxy CPU per JSON request (µs) / per stream event (µs)",
           lambda v, route=route: f"{cell(v, f'route_{route}_json_us', 0)} / {cell(v, f'route_{route}_event_us', 1)}")
          for route in ROUTES),
        *((f"… route {route} ÷ floor's, per JSON request / per event",
           lambda v, route=route: f"{to_floor(v, f'route_{route}_json_us')} / {to_floor(v, f'route_{route}_event_us')}")
          for route in ROUTES),
        ("errors (non-200, broken connections)", lambda v: cell(v, "errors")),
        (f"CPU {PROXY_CPU} busy with other processes: JSON / streams / TTFB / {p.many_streams} streams / "
         f"{p.slow_delay_ms:g} ms upstream (%)", lambda v: " / ".join(cell(v, k, 0) for k in BUSY)),
    ]
    out = [f"# ccproxy benchmark ({mode} run, {time.strftime('%Y-%m-%d %H:%M %Z')}, {seconds:.0f} s)", ""]
    out += machine()
    out.append("")
    for v in variants:
        if v.note or v.error:
            out.append(f"- **{v.name}**: {v.note}{' — FAILED: ' + v.error.splitlines()[0] if v.error else ''}")
    if probes.get("plugins"):
        out.append(f"- plugins loaded (entry points): {', '.join(probes['plugins'])}")
    out.append("")
    header = "| | " + " | ".join(v.name for v in done) + " |"
    out += [header, "|---" * (len(done) + 1) + "|"]
    for label, fn in rows:
        cells = []
        for v in done:
            try:
                cells.append(fn(v))
            except (KeyError, TypeError, ValueError):
                cells.append("—")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("")
    out += sidebyside.tables(side)
    # Goals, judged on the first proxy column (the configured default transport, plain HTTP upstream).
    proxy = next((v for v in done if v.kind == "proxy" and not v.tls), None)
    judged: list[goals.Goal] = []
    if proxy is not None:
        m = proxy.metrics
        judged = goals.judge(m, floor.metrics if floor else {}, base[False].metrics if base[False] else {},
                             workers=side.get("workers"), features=side.get("features"), startups=startups,
                             streams=p.many_streams, rate=p.many_rate, ttfb_clients=p.ttfb_clients)
        out += [f"Goals, judged on **{proxy.name}** (CPU against the floor, latency against the direct column, "
                "the rest side by side):", "", "| verdict | goal | measured | target | detail |", "|---|---|---|---|---|"]
        for g in judged:
            out.append(f"| {g.status} | {g.name} | {g.measured} | {g.target or '—'} | {g.detail} |")
        out.append("")
        busy = [(k, m[k]) for k in BUSY if isinstance(m.get(k), float) and m[k] == m[k]]
        worst = max(busy, key=lambda kv: kv[1]) if busy else None
        if worst is not None and worst[1] > 10:
            out += [
                f"⚠ CPU {PROXY_CPU} was up to {worst[1]:.0f} % busy with other processes (or stolen by the "
                "hypervisor) while the proxy was measured: its latency and throughput figures are inflated by "
                "waiting for the CPU; CPU-per-request figures much less so. Re-run on a quiet machine to judge "
                "the latency goals.",
                "",
            ]
    out += [
        "Notes: CPU is the proxy process's utime+stime (/proc/PID/stat, 10 ms ticks) over the phase divided by "
        "requests, streams or events; 'added' = this column minus the direct column of the same run (plain or TLS), "
        "except in the TTFB and 20 ms phases, which take turns with the direct baseline round by round and subtract "
        "that. Requests alternate Anthropic (`/v1/messages?beta=true`) and OpenAI (`/v1/chat/completions`). "
        f"'CPU {PROXY_CPU} busy with other processes' is /proc/stat's user+nice+system+steal for that CPU minus the "
        "proxy's own CPU, over the phase. "
        f"The load client and the mock upstream share CPU {CLIENT_CPU}, so the direct column is bounded by them.",
        "",
    ]
    return "\n".join(out), judged
