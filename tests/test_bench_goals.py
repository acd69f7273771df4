"""The benchmark's verdicts (bench/goals.py): pure functions of the figures, one line per goal."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import goals  # noqa: E402

PROXY = {
    "json_cpu_us": 212.0, "many_cpu_event_us": 15.0, "many_events": 1000, "many_expected": 1000,
    "ttfb_p50": 2.5, "slow_p99": 21.2, "slow_n": 600, "st_multi": 0.1, "many_lat_p99": 0.9, "many_rss_peak": 70.0,
    "route_anthropic_json_us": 200.0, "route_openai_json_us": 220.0, "route_responses_json_us": 230.0,
    "route_anthropic_event_us": 20.0, "route_openai_event_us": 20.0, "route_responses_event_us": 23.0,
}
FLOOR = {"json_cpu_us": 115.0, "many_cpu_event_us": 12.0}
DIRECT = {"ttfb_p50": 1.0, "slow_p99": 21.0, "st_multi": 0.0, "many_lat_p99": 0.5}
WORKERS = {"proxy 1w": {"rps": 1000.0, "p99": 30.0}, "proxy 2w": {"rps": 1850.0, "p99": 25.0},
           "floor 1w": {"rps": 8000.0, "p99": 5.0}, "floor 2w": {"rps": 12000.0, "p99": 4.0}}
FEATURES = {"rounds": 6, "limits memory_json": 12.5, "limits redis_json": 90.0, "dashboard_json": 1.0,
            "dashboard_event": 0.2, "otel_json": 300.0, "otel_event": 3.0}


def by_name(judged: list[goals.Goal]) -> dict[str, goals.Goal]:
    return {g.name: g for g in judged}


def test_each_goal_is_judged_as_a_ratio_or_a_difference() -> None:
    judged = by_name(goals.judge(PROXY, FLOOR, DIRECT, workers=WORKERS, features=FEATURES, startups=[0.3, 0.4, 0.5]))
    json = judged["proxy CPU per JSON request (32 clients)"]
    assert (json.status, json.measured) == ("PASS", "1.84x floor")
    assert goals.verdict(json) == "PASS  proxy CPU per JSON request (32 clients) 1.84x floor (target <= 2.0x): 212 us vs 115 us"
    assert judged["proxy CPU for 500 streams x 50 events/s"].status == "PASS"  # 1.25x, every event
    assert judged["added TTFB p50, 20 streams starting together"].status == "PASS"  # 1.5 ms
    assert judged["added p99, 1 request in flight, 20 ms upstream"].status == "PASS"  # 0.2 ms
    assert judged["--workers 2 req/s vs 1 worker (JSON, same clients, p99 no worse)"].measured == "1.85x"
    assert judged["Responses route CPU per JSON request vs the other routes"].status == "PASS"  # 1.095x
    assert judged["Responses route CPU per stream event vs the other routes"].status == "FAIL"  # 1.15x
    assert judged["limits on (memory backend) CPU per request over limits off"].status == "PASS"
    assert judged["otel on (every request sampled, OTLP/HTTP to a local sink), CPU per request"].status == "INFO"
    assert judged["start-up, spawn -> first proxied 200"].measured == "400 ms"


def test_the_json_goal_prefers_the_interleaved_ratio_to_the_columns() -> None:
    side = {**FEATURES, "floor_ratio_json": 2.1, "every product plugin json us": 420.0, "floor json us": 200.0}
    json = by_name(goals.judge(PROXY, FLOOR, DIRECT, features=side))["proxy CPU per JSON request (32 clients)"]
    assert (json.status, json.measured) == ("FAIL", "2.10x floor")
    assert json.detail == "420 us vs 200 us, median of 6 interleaved rounds; columns 212 us vs 115 us (1.84x)"


def test_a_lost_event_or_a_worse_p99_fails_whatever_the_ratio() -> None:
    lossy = {**PROXY, "many_events": 999}
    slower = {**WORKERS, "proxy 2w": {"rps": 1900.0, "p99": 31.0}}
    judged = by_name(goals.judge(lossy, FLOOR, DIRECT, workers=slower))
    assert judged["proxy CPU for 500 streams x 50 events/s"].status == "FAIL"
    assert judged["--workers 2 req/s vs 1 worker (JSON, same clients, p99 no worse)"].status == "FAIL"


def test_what_was_not_measured_says_so_instead_of_failing() -> None:
    judged = goals.judge(PROXY, {}, {})
    lines = [goals.verdict(g) for g in judged]
    assert len(lines) == len(judged) and all("\n" not in line for line in lines)
    missing = by_name(judged)
    assert missing["proxy CPU per JSON request (32 clients)"].status == goals.MISSING
    assert missing["limits on (memory backend) CPU per request over limits off"].status == goals.MISSING
    assert goals.ratio(1.0, 0.0) is None and goals.ratio(float("nan"), 1.0) is None


def test_latency_goals_subtract_the_direct_baseline_of_their_own_rounds() -> None:
    paired = {**PROXY, "ttfb_p50": 5.0, "ttfb_direct_p50": 3.5, "slow_p50": 21.5, "slow_p99": 22.4,
              "slow_direct_p50": 21.0, "slow_direct_p99": 22.2}
    floor = {**FLOOR, "ttfb_p50": 3.0, "ttfb_direct_p50": 3.4, "slow_p99": 21.5, "slow_direct_p99": 21.0}
    judged = by_name(goals.judge(paired, floor, DIRECT))  # the direct column's own figures are not used
    ttfb = judged["added TTFB p50, 20 streams starting together"]
    assert (ttfb.status, ttfb.measured) == ("PASS", "1.50 ms")
    assert ttfb.detail == "5.00 ms vs direct 3.50 ms; the floor adds -0.40 ms"
    slow = judged["added p99, 1 request in flight, 20 ms upstream"]
    assert (slow.status, slow.measured) == ("PASS", "0.20 ms")
    assert slow.detail == ("p99 22.40 ms vs direct 22.20 ms, 600 requests; added p50 0.50 ms; "
                           "the floor adds 0.50 ms at p99")


def test_workers_scaling_efficiency_says_what_two_free_cores_would_give() -> None:
    measured = {**WORKERS, "proxy 1w": {**WORKERS["proxy 1w"], "cpu_us": 400.0},
                "proxy 2w": {**WORKERS["proxy 2w"], "cpu_us": 440.0, "spread": "32/0, 18/14"},
                "floor 1w": {**WORKERS["floor 1w"], "cpu_us": 100.0}, "floor 2w": {**WORKERS["floor 2w"], "cpu_us": 105.0}}
    judged = by_name(goals.judge(PROXY, FLOOR, DIRECT, workers=measured))
    scaling = judged["--workers 2 scaling efficiency (CPU per request, all processes, 1w / 2w)"]
    assert (scaling.status, scaling.measured) == ("PASS", "0.91 (2 free cores: 1.82x)")
    assert scaling.detail == "400 us vs 440 us per request; floor 0.95 (1.90x)"
    ratio = judged["--workers 2 req/s vs 1 worker (JSON, same clients, p99 no worse)"]
    assert ratio.detail.endswith("; connections per worker 32/0, 18/14")
    slower = {**measured, "proxy 2w": {**measured["proxy 2w"], "cpu_us": 500.0}}
    assert by_name(goals.judge(PROXY, FLOOR, DIRECT, workers=slower))[scaling.name].status == "FAIL"  # 0.80


def test_workers_ceiling_is_what_two_shared_cores_allow() -> None:
    """One worker serves 1 s ÷ 257 µs; two cores shared with a load client and a mock that take 80 µs per
    request serve at most 2 s ÷ (257 + 80) µs: 2 × 257 ÷ 337 = 1.53× (the floor's: 2 × 92 ÷ 116 = 1.59×)."""
    measured = {"proxy 1w": {"rps": 3902.0, "p99": 12.6, "cpu_us": 257.0},
                "proxy 2w": {"rps": 5458.0, "p99": 13.7, "cpu_us": 286.0, "rest_us": 80.0},
                "floor 1w": {"rps": 10884.0, "p99": 5.7, "cpu_us": 92.0},
                "floor 2w": {"rps": 17422.0, "p99": 4.3, "cpu_us": 91.0, "rest_us": 24.0}}
    assert round(goals.ceiling(measured["proxy 1w"], measured["proxy 2w"]), 2) == 1.53
    assert goals.ceiling(measured["proxy 1w"], {"rps": 5458.0}) is None  # not measured: no ceiling
    assert goals.ceiling({"cpu_us": 128.5}, {"rest_us": 80.0}) < 1.25  # a server twice as cheap: a lower ceiling
    ratio = by_name(goals.judge(PROXY, FLOOR, DIRECT, workers=measured))[
        "--workers 2 req/s vs 1 worker (JSON, same clients, p99 no worse)"]
    assert ratio.status == "FAIL"
    assert ratio.detail.endswith("; this machine's ceiling 1.53x (floor's 1.59x): the load client and the mock "
                                 "take 80.0 us per request of the two cores")
