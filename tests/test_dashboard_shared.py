"""The dashboard across workers and instances (plugins/dashboard/shared.py): sqlite with two workers, two
instances on one real Redis-protocol server, the state failing, and per-key budget use. Real processes,
real sockets, the event stream read incrementally."""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import httpx

from tests.gateway_helpers import RedisServer, gateway_process, send_concurrently, stop_process
from tests.servers import ANTHROPIC_BODY, ProxyThread, reserved_port
from tests.test_gateway import ADMIN, ALICE, gateway_config

AUTH = {"authorization": f"Bearer {ADMIN}"}
JSON_BODY = {**ANTHROPIC_BODY, "stream": False}


def first_push(url: str, wanted: Callable[[dict[str, Any]], bool], within: float = 10.0) -> dict[str, Any]:
    """The first snapshot on ``url``'s event stream that ``wanted`` accepts, read as it arrives; fails
    after ``within`` seconds with the last one seen."""
    last: dict[str, Any] = {}
    deadline = time.monotonic() + within
    with httpx.stream("GET", url + "/dashboard/events", headers=AUTH, timeout=within) as events:
        assert events.status_code == 200
        for line in events.iter_lines():
            if line.startswith("data: "):
                last = json.loads(line[6:])
                if wanted(last):
                    return last
            assert time.monotonic() < deadline, f"no matching push within {within}s; last: {last}"
    raise AssertionError(f"the stream ended; last: {last}")


def test_sqlite_two_workers_show_in_one_workers_feed(tmp_path, upstream):
    """Requests served by both workers of one instance all show in the snapshot either worker pushes."""
    config = gateway_config(upstream.url, {"budget_usd": 5, "rpm": 100},
                            state={"backend": "sqlite", "path": str(tmp_path / "state.db")})
    config["plugins"]["disabled"] = ["example"]
    config["plugins"]["dashboard"] = {"interval": 0.2}
    config["plugins"]["access_log"] = {"path": str(tmp_path / "access.jsonl")}
    with reserved_port() as port:
        proc = gateway_process(tmp_path, "sqlite", config, port, workers=2)
        try:
            url = f"http://127.0.0.1:{port}"
            replies = send_concurrently([url] * 20, ALICE, stagger=0.03, headers={"x-mock-headers-delay": "1500"})
            assert [r.status_code for r in replies] == [200] * 20
            snap = first_push(url, lambda s: s["totals"]["requests"] == 20 and s["shared"].get("workers") == 2)
        finally:
            err = stop_process(proc)
    assert len(snap["recent"]) == 20 and snap["by"]["key"][0] == {**snap["by"]["key"][0], "name": "alice",
                                                                    "requests": 20}
    assert snap["latency"]["p50"] >= 1.4  # the histograms summed: every request waited 1.5 s
    alice = next(k for k in snap["keys"] if k["name"] == "alice")
    assert alice["requests"] == {**alice["requests"], "used": 20, "limit": 100}
    assert alice["spend_usd"]["limit"] == 5 and alice["backend"] == "sqlite"
    assert "Traceback" not in err
    pids = {json.loads(line)["pid"] for line in (tmp_path / "access.jsonl").read_text().splitlines()}
    assert len(pids) == 2, "both workers served"


def test_two_instances_on_one_redis_show_the_whole_gateway(tmp_path, upstream, redis_server):
    name = f"alice-{time.monotonic_ns()}"
    config = gateway_config(upstream.url, {"name": name}, state={"backend": "redis", "url": redis_server.url})
    config["plugins"]["disabled"] = ["example"]
    config["plugins"]["dashboard"] = {"interval": 0.2}
    with reserved_port() as port_a, reserved_port() as port_b:
        a = gateway_process(tmp_path, "a", config, port_a)
        b = gateway_process(tmp_path, "b", config, port_b)
        try:
            url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
            replies = send_concurrently([url_a] * 3 + [url_b] * 5, ALICE)
            assert [r.status_code for r in replies] == [200] * 8
            # Instance A's feed holds B's requests too (the Redis server is shared by the module: count by key).
            snap = first_push(url_a, lambda s: any(r["name"] == name and r["requests"] == 8 for r in s["by"]["key"]))
            assert snap["shared"]["workers"] >= 2
            assert [k["requests"]["used"] for k in snap["keys"] if k["name"] == name] == [8]
            assert len([r for r in snap["recent"] if r["key"] == name]) == 8
        finally:
            errors = stop_process(a) + stop_process(b)
    assert "Traceback" not in errors


def test_state_down_shows_this_workers_numbers_and_says_so(tmp_path, upstream):
    """Redis stopped: the page still gets this worker's numbers, promptly, with the reason; no traceback."""
    with reserved_port() as port:
        redis = RedisServer(port).start()
        config = gateway_config(upstream.url, state={"backend": "redis", "url": redis.url, "timeout": 0.5})
        config["plugins"]["dashboard"] = {"interval": 0.2}
        try:
            with ProxyThread(config) as server:
                assert httpx.post(server.url + "/v1/messages", json=JSON_BODY, headers={"x-api-key": ALICE}).status_code == 200
                first_push(server.url, lambda s: s["shared"] == {"workers": 1} and s["totals"]["requests"] == 1)
                redis.stop()
                started = time.monotonic()
                snap = first_push(server.url, lambda s: "error" in (s["shared"] or {}))
                assert time.monotonic() - started < 5
                assert snap["totals"]["requests"] == 1 and "unavailable" in snap["shared"]["error"]
                assert snap["keys"] == []
        finally:
            redis.stop()


def test_memory_backend_shows_this_worker_as_before(upstream):
    """``state.backend: memory``: no publishing, ``shared`` is null, the numbers are this worker's."""
    config = gateway_config(upstream.url, {"budget_usd": 2})
    with ProxyThread(config) as server:
        assert server.app.ctx.state.kind == "memory"
        assert httpx.post(server.url + "/v1/messages", json=JSON_BODY, headers={"x-api-key": ALICE}).status_code == 200
        snap = first_push(server.url, lambda s: s["totals"]["requests"] == 1)
        plugin = next(p for p in server.app.ctx.plugins.pm.get_plugins() if type(p).__name__ == "DashboardPlugin")
        assert snap["shared"] is None and plugin.shared is None and plugin.publisher is None
        alice = next(k for k in snap["keys"] if k["name"] == "alice")
        assert alice["requests"]["used"] == 1 and alice["spend_usd"]["limit"] == 2


def test_publishing_is_once_per_interval_never_per_request(tmp_path, upstream):
    """sqlite, ``interval: 60``: twenty requests write nothing to the state beyond the start-up publication
    (one value and the roster) and the gateway's own counts."""
    config = gateway_config(upstream.url, state={"backend": "sqlite", "path": str(tmp_path / "state.db")})
    config["plugins"]["dashboard"] = {"interval": 60}
    with ProxyThread(config) as server:
        plugin = next(p for p in server.app.ctx.plugins.pm.get_plugins() if type(p).__name__ == "DashboardPlugin")
        deadline = time.monotonic() + 5
        while not plugin.shared.listed:  # the start-up publication (the publisher's first step)
            assert time.monotonic() < deadline
            time.sleep(0.01)
        state = server.app.ctx.state
        puts: list[str] = []
        real = state.put

        async def put(key: str, value: bytes, ttl: float) -> None:
            puts.append(key)
            await real(key, value, ttl)

        state.put = put
        for _ in range(20):
            assert httpx.post(server.url + "/v1/messages", json=JSON_BODY, headers={"x-api-key": ALICE}).status_code == 200
        assert puts == []  # the next publication is 60 s away
        snap = first_push(server.url, lambda s: s["totals"]["requests"] == 20)
        assert snap["shared"] == {"workers": 1} and puts == []  # a push reads, it does not write
    # The test server cancels every task when it stops, the publisher too: the shutdown still closes the rest.
    assert server.app.ctx.clients and all(c.is_closed for c in server.app.ctx.clients.values())


def test_gather_sums_workers_and_skips_what_it_cannot_read():
    """Two workers' parts through one backend sum in :func:`view`; a roster or a part that is not ours
    (garbage, another layout mid-upgrade) is left out, never an exception."""
    import asyncio

    from ccproxy_core import COMPLETED, RequestContext, Usage, build_config
    from ccproxy_core.state.memory import MemoryState
    from ccproxy_plugins.dashboard.aggregate import Aggregate, view
    from ccproxy_plugins.dashboard.shared import ROSTER, Shared
    from tests.servers import provider_config

    config = build_config(provider_config("http://127.0.0.1:9"), "test")

    async def main() -> None:
        state = MemoryState()
        a, b = Shared(state, Aggregate(config), 1.0), Shared(state, Aggregate(config), 1.0)
        for i, shared in enumerate((a, b, b)):
            shared.aggregate.ended(RequestContext(f"r{i}", "POST", "/v1/messages", "anthropic", model="claude-x",
                                                  provider="anthropic", status=200, outcome=COMPLETED, duration=0.3,
                                                  usage=Usage(input_tokens=1, output_tokens=2)))
        await a.publish()
        await b.publish()
        snap = view(await a.gather(), 0.0, 10)
        assert snap["totals"]["requests"] == 3 and snap["totals"]["output_tokens"] == 6
        assert len(snap["recent"]) == 3 and snap["latency"]["p50"] is not None
        await state.put(f"dashboard:worker:{b.id}", b'{"format": 0}', 10)
        assert len(await a.gather()) == 1
        await state.put(ROSTER, b"not json", 10)
        assert len(await a.gather()) == 1

    asyncio.run(main())
