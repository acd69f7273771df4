"""The benchmark's goals (issues 7 and 17) and their one-line verdicts: pure functions of the measured figures.

Every CPU goal is a ratio to the floor (``bench/floor.py``: Sanic answering the same requests itself) and every
latency goal a difference to the direct column, both from the same run, so that the machine's speed of the day
cancels out. :func:`judge` turns the figures into :class:`Goal` rows; :func:`verdict` makes each one line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PASS, FAIL, INFO, MISSING = "PASS", "FAIL", "INFO", "----"


@dataclass(frozen=True)
class Goal:
    """One goal: ``status`` is PASS/FAIL, INFO (a cost shown, no target) or ``----`` (not measured)."""

    name: str
    measured: str
    target: str
    status: str
    detail: str = ""


#: Latency figures whose direct baseline was measured in the same phase, taking turns (``bench/loadgen.py``'s
#: ``together`` and ``in_turns``): figure -> its paired direct figure, preferred to the direct column's.
PAIRED = {"ttfb_p50": "ttfb_direct_p50", "slow_p50": "slow_direct_p50", "slow_p99": "slow_direct_p99"}


def added(m: Mapping[str, Any], direct: Mapping[str, Any], key: str) -> float | None:
    """``m[key]`` minus its direct baseline: the one measured in the same rounds when there is one, else
    the direct column's; None when either is missing."""
    if PAIRED.get(key) in m:
        return _diff(m.get(key), m.get(PAIRED[key]))
    return _diff(m.get(key), direct.get(key))


def verdict(goal: Goal) -> str:
    """``PASS  name measured (target ...): detail``, one line."""
    target = f" (target {goal.target})" if goal.target else ""
    detail = f": {goal.detail}" if goal.detail else ""
    return f"{goal.status:<5} {goal.name} {goal.measured}{target}{detail}"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def ratio(a: Any, b: Any) -> float | None:
    """``a / b``, or None when either is missing, not finite, or ``b`` is not positive."""
    a, b = _num(a), _num(b)
    return a / b if a is not None and b is not None and b > 0 else None


def _check(name: str, value: float | None, ok: bool, measured: str, target: str, detail: str = "") -> Goal:
    if value is None:
        return Goal(name, "not measured", target, MISSING, detail)
    return Goal(name, measured, target, PASS if ok else FAIL, detail)


def _us(value: Any) -> str:
    v = _num(value)
    return "—" if v is None else f"{v:,.0f} us" if abs(v) >= 100 else f"{v:.1f} us"


def judge(proxy: Mapping[str, Any], floor: Mapping[str, Any], direct: Mapping[str, Any], *,
          workers: Mapping[str, Mapping[str, float]] | None = None,
          features: Mapping[str, Any] | None = None, startups: list[float] | None = None,
          streams: int = 500, rate: float = 50, ttfb_clients: int = 20) -> list[Goal]:
    """The goals, judged on one proxy column's metrics against the floor's and the direct column's
    (``bench/run.py``'s metric names: CPU in µs, latencies in ms).

    ``workers``: set-up name -> {"rps", "p99"} of the workers phase (``proxy 1w``, ``proxy 2w``);
    ``features``: the features phase's figures (``sidebyside.features``): its paired differences, and its
    per-round proxy ÷ floor ratio, on which the JSON goal is judged when present (the columns are measured
    one after the other, so the machine's other load can fall on one and not the other).
    """
    goals: list[Goal] = []
    f = features or {}
    column = ratio(proxy.get("json_cpu_us"), floor.get("json_cpu_us"))
    columns = f"{_us(proxy.get('json_cpu_us'))} vs {_us(floor.get('json_cpu_us'))}"
    r = _num(f.get("floor_ratio_json"))
    if r is None:  # no features phase: the columns, measured one after the other
        r, detail = column, columns
    else:
        detail = (f"{_us(f.get('every product plugin json us'))} vs {_us(f.get('floor json us'))}, median of "
                  f"{f.get('rounds', 0)} interleaved rounds; columns {columns}"
                  + (f" ({column:.2f}x)" if column else ""))
    goals.append(_check("proxy CPU per JSON request (32 clients)", r, r is not None and r <= 2.0,
                        f"{r:.2f}x floor" if r else "", "<= 2.0x", detail))
    r = ratio(proxy.get("many_cpu_event_us"), floor.get("many_cpu_event_us"))
    lost = (proxy.get("many_expected") or 0) - (proxy.get("many_events") or 0)
    delivered = f"{proxy.get('many_events', 0):,} / {proxy.get('many_expected', 0):,} events"
    goals.append(_check(f"proxy CPU for {streams} streams x {rate:g} events/s", r,
                        r is not None and r <= 1.5 and lost == 0 and (proxy.get("many_expected") or 0) > 0,
                        f"{r:.2f}x floor" if r else "", "<= 1.5x, every event delivered",
                        f"{_us(proxy.get('many_cpu_event_us'))} vs {_us(floor.get('many_cpu_event_us'))} per event, "
                        f"{delivered}; reads with >1 event {_pct(proxy.get('many_multi'))} vs floor "
                        f"{_pct(floor.get('many_multi'))}" if r else delivered))
    goals += _latency_goals(proxy, floor, direct, ttfb_clients)
    goals += _workers_goals(workers or {})
    for kind, key, unit in (("JSON request", "json", "request"), ("stream event", "event", "event")):
        mine = proxy.get(f"route_responses_{key}_us")
        others = [proxy.get(f"route_{route}_{key}_us") for route in ("anthropic", "openai")]
        mean = sum(others) / 2 if all(_num(o) is not None for o in others) else None
        r = ratio(mine, mean)
        goals.append(_check(f"Responses route CPU per {kind} vs the other routes", r, r is not None and r <= 1.10,
                            f"{r:.2f}x" if r else "", "<= 1.10x",
                            f"{_us(mine)} vs {_us(others[0])} / {_us(others[1])} per {unit}"))
    goals += _feature_goals(f)
    goals += _issue7_goals(proxy, direct, startups or [], streams)
    return goals


def _diff(a: Any, b: Any) -> float | None:
    a, b = _num(a), _num(b)
    return None if a is None or b is None else a - b


def _pct(value: Any) -> str:
    v = _num(value)
    return "—" if v is None else f"{v:.1f} %"


def _ms(ms: Any) -> str:
    v = _num(ms)
    return "—" if v is None else f"{v:.2f} ms"


def _latency_goals(proxy: Mapping[str, Any], floor: Mapping[str, Any], direct: Mapping[str, Any],
                   ttfb_clients: int) -> list[Goal]:
    """Added TTFB and added p99 at one request in flight, each against the direct baseline of its own
    rounds; the floor's figure beside it (what Sanic answering by itself adds on this machine)."""
    base = proxy.get(PAIRED["ttfb_p50"], direct.get("ttfb_p50"))
    ttfb = added(proxy, direct, "ttfb_p50")
    floor_ttfb = added(floor, direct, "ttfb_p50")
    slow = added(proxy, direct, "slow_p99")
    floor_slow = added(floor, direct, "slow_p99")
    slow_p50 = added(proxy, direct, "slow_p50")
    return [
        _check(f"added TTFB p50, {ttfb_clients} streams starting together", ttfb, ttfb is not None and ttfb <= 2,
               _ms(ttfb), "<= 2 ms", f"{_ms(proxy.get('ttfb_p50'))} vs direct {_ms(base)}"
               + (f"; the floor adds {_ms(floor_ttfb)}" if floor_ttfb is not None else "")),
        _check("added p99, 1 request in flight, 20 ms upstream", slow, slow is not None and slow <= 0.3,
               _ms(slow), "<= 0.3 ms",
               f"p99 {_ms(proxy.get('slow_p99'))} vs direct {_ms(proxy.get(PAIRED['slow_p99'], direct.get('slow_p99')))}, "
               f"{proxy.get('slow_n', 0)} requests; added p50 {_ms(slow_p50)}"
               + (f"; the floor adds {_ms(floor_slow)} at p99" if floor_slow is not None else "")),
    ]


def ceiling(one: Mapping[str, Any], two: Mapping[str, Any]) -> float | None:
    """The most two workers' req/s can be over one worker's on 2 cores shared with the load client and the
    mock, for a server whose CPU per request ``p`` does not grow with a second worker: one worker on a core
    of its own serves 1 s ÷ ``p``; two cores serve 2 s ÷ (``p`` + the client's and mock's CPU per request
    ``m``, measured at two workers). So 2p ÷ (p + m): the cheaper the server, the lower its ceiling."""
    p, m = _num(one.get("cpu_us")), _num(two.get("rest_us"))
    return None if not p or m is None else 2 * p / (p + m)


def _workers_goals(workers: Mapping[str, Mapping[str, Any]]) -> list[Goal]:
    """Req/s of ``--workers 2`` over one worker as measured here, and the scaling efficiency (CPU per
    request, every process, of one worker ÷ of two): on 2 cores the load client and the mock take CPU
    from the second worker, so req/s cannot show what two free cores would give; 2 × the efficiency can."""
    one, two = workers.get("proxy 1w", {}), workers.get("proxy 2w", {})
    f1, f2 = workers.get("floor 1w", {}), workers.get("floor 2w", {})
    r = ratio(two.get("rps"), one.get("rps"))
    floor = ratio(f2.get("rps"), f1.get("rps"))
    same_bound = (_num(two.get("p99")) or math.inf) <= (_num(one.get("p99")) or 0)
    spread = two.get("spread")
    detail = (f"{two.get('rps', 0):,.0f} vs {one.get('rps', 0):,.0f} req/s, p99 {_ms(two.get('p99'))} vs "
              f"{_ms(one.get('p99'))}" + (f"; floor 2w/1w {floor:.2f}x" if floor else "")
              + (f"; connections per worker {spread}" if spread else "") if r else "")
    top, floor_top = ceiling(one, two), ceiling(f1, f2)
    if r and top:
        detail += (f"; this machine's ceiling {top:.2f}x" + (f" (floor's {floor_top:.2f}x)" if floor_top else "")
                   + f": the load client and the mock take {_us(two.get('rest_us'))} per request of the two cores")
    e = ratio(one.get("cpu_us"), two.get("cpu_us"))
    fe = ratio(f1.get("cpu_us"), f2.get("cpu_us"))
    return [
        _check("--workers 2 req/s vs 1 worker (JSON, same clients, p99 no worse)", r,
               r is not None and r >= 1.8 and same_bound, f"{r:.2f}x" if r else "", ">= 1.8x", detail),
        _check("--workers 2 scaling efficiency (CPU per request, all processes, 1w / 2w)", e,
               e is not None and e >= 0.9, f"{e:.2f} (2 free cores: {2 * e:.2f}x)" if e else "", ">= 0.90 (1.8x)",
               f"{_us(one.get('cpu_us'))} vs {_us(two.get('cpu_us'))} per request"
               + (f"; floor {fe:.2f} ({2 * fe:.2f}x)" if fe else "") if e else ""),
    ]


def _feature_goals(f: Mapping[str, Any]) -> list[Goal]:
    """Each feature's cost from the features phase: ``<name>_json``/``<name>_event`` = median added µs."""
    out = []
    mem = _num(f.get("limits memory_json"))
    out.append(_check("limits on (memory backend) CPU per request over limits off", mem,
                      mem is not None and mem <= 30, f"{mem:+.1f} us" if mem is not None else "", "<= +30 us",
                      f"median of {f.get('rounds', 0)} paired rounds"))
    for key, name in (("limits redis", "limits on (Redis backend) CPU per request over limits off"),
                      ("dashboard", "dashboard on vs disabled, CPU per request"),
                      ("otel", "otel on (every request sampled, OTLP/HTTP to a local sink), CPU per request")):
        cost = _num(f.get(f"{key}_json"))
        event = _num(f.get(f"{key}_event"))
        per_event = f", {event:+.2f} us per stream event" if event is not None else ""
        out.append(Goal(name, f"{cost:+.1f} us" if cost is not None else "not measured", "",
                        INFO if cost is not None else MISSING, f"cost shown, no target{per_event}"))
    return out


def _issue7_goals(m: Mapping[str, Any], direct: Mapping[str, Any], startups: list[float], streams: int) -> list[Goal]:
    multi, base = _num(m.get("st_multi")), _num(direct.get("st_multi"))
    added = _diff(m.get("many_lat_p99"), direct.get("many_lat_p99"))
    rss = _num(m.get("many_rss_peak"))
    startup = sorted(startups)[len(startups) // 2] if startups else None
    return [
        _check("no coalescing: reads with >1 event, proxy vs direct", multi if base is not None else None,
               multi is not None and base is not None and multi <= base + 0.5,
               f"{multi:.2f} %" if multi is not None else "", "<= direct + 0.5 points",
               f"direct {base:.2f} %" if base is not None else ""),
        _check(f"added p99 event latency, {streams} streams", added, added is not None and added <= 5,
               _ms(added), "<= 5 ms"),
        _check(f"proxy RSS peak, {streams} streams", rss, rss is not None and rss <= 80,
               f"{rss:.1f} MB" if rss is not None else "", "<= 80 MB"),
        _check("start-up, spawn -> first proxied 200", startup, startup is not None and startup <= 1.0,
               f"{startup * 1e3:.0f} ms" if startup is not None else "", "<= 1 s",
               f"median of {len(startups)} spawns"),
    ]
