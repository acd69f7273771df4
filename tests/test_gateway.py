"""The team gateway (plugins/gateway.py, ccproxy_core/state/): client keys with limits, budgets and
allow-lists, counted exactly under concurrency in each state backend; the usage route; Redis shared by
two gateway processes, stopped and restarted mid-test. Real sockets, a real Redis-protocol server."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time

import httpx
import pytest

from ccproxy_core import Check, ConfigError, Window, build_config, create_app
from ccproxy_core.config import StateSettings
from ccproxy_core.state import open_state
from tests.gateway_helpers import RedisServer, gateway_process, send_concurrently, stop_process
from tests.servers import (
    ANTHROPIC_BODY, OPENAI_BODY, ROOT, ProxyThread, only_first_party_plugins, provider_config, reserved_port,
)

ALICE, BOB, ADMIN = "sk-alice-SECRET", "sk-bob-SECRET", "sk-admin-SECRET"
SLOW = {"x-mock-headers-delay": "300"}  # keeps every request of a burst in flight at once
JSON_ANTHROPIC = {**ANTHROPIC_BODY, "stream": False}
JSON_OPENAI = {**OPENAI_BODY, "stream": False}


def gateway_config(mock_url: str, alice: dict | None = None, state: dict | None = None, **auth: object) -> dict:
    config = provider_config(mock_url)
    config["plugins"] = {"auth": {
        "keys": [{"name": "alice", "key": ALICE, **(alice or {})}, {"name": "bob", "key": BOB}],
        "admin_keys": [ADMIN],
        **auth,
    }}
    if state:
        config["state"] = state
    return config


def statuses(replies: list[httpx.Response]) -> list[int]:
    return sorted(r.status_code for r in replies)


# -- the state interface, the same in every backend ---------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request, tmp_path):
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        settings = StateSettings(backend="redis", url=server.url)
    else:
        settings = StateSettings(backend=request.param, path=str(tmp_path / "state.db"))
    return settings


def test_state_interface_take_add_read_get_put(backend):
    async def main():
        state = open_state(backend)
        suffix = str(time.monotonic_ns())
        requests, spend = Window("t:req:" + suffix, 60), Window("t:spend:" + suffix, 3600)
        try:
            checks = [Check(requests, 2, 1), Check(spend, 1.0, 0)]
            assert (await state.take(checks)).refused is None
            assert (await state.take(checks)).refused is None
            verdict = await state.take(checks)
            assert verdict.refused == 0 and 55 < verdict.retry_after <= 60
            await state.add([(spend, 0.75)])
            assert state.add_now([(spend, 0.5)]) is None  # a plain call, the same count
            (used, left), (spent, spend_left) = await state.read([requests, spend])
            assert (used, spent) == (2, 1.25) and 55 < left <= 60 and 3590 < spend_left <= 3600
            verdict = await state.take([Check(Window("t:other:" + suffix, 60), None, 1), Check(spend, 1.0, 0)])
            assert verdict.refused == 1  # over budget: nothing counted, not even the first check's amount
            assert await state.read([Window("t:other:" + suffix, 60)]) == [(0.0, 0.0)]
            await state.put("t:value:" + suffix, b"stored", 30)
            assert await state.get("t:value:" + suffix) == b"stored"
            assert await state.get("t:missing:" + suffix) is None
        finally:
            await state.close()

    asyncio.run(main())


def test_a_window_starts_again_after_its_period(backend):
    async def main():
        state = open_state(backend)
        window = Window(f"t:short:{time.monotonic_ns()}", 0.3)
        try:
            assert (await state.take([Check(window, 1, 1)])).refused is None
            assert (await state.take([Check(window, 1, 1)])).refused == 0
            await asyncio.sleep(0.4)
            assert (await state.take([Check(window, 1, 1)])).refused is None
        finally:
            await state.close()

    asyncio.run(main())


_HAMMER = """
import asyncio, sys, time
from ccproxy_core import Check, Window
from ccproxy_core.config import StateSettings
from ccproxy_core.state import open_state

async def main():
    state = open_state(StateSettings(backend=sys.argv[1], path=sys.argv[2], url=sys.argv[2]))
    checks = [Check(Window(sys.argv[3], 60), 60, 1)]
    await state.take([Check(Window(sys.argv[3] + ":warm", 60), None, 1)])  # connected before the start
    while time.time() < float(sys.argv[4]):
        await asyncio.sleep(0.001)
    verdicts = await asyncio.gather(*(state.take(checks) for _ in range(50)))
    print(sum(v.refused is None for v in verdicts))
    await state.close()

asyncio.run(main())
"""


def test_two_processes_taking_at_once_get_exactly_the_limit(backend):
    """Two processes, 50 takes each starting at the same instant, a limit of 60: 60 admitted in all."""
    target = backend.path if backend.backend == "sqlite" else backend.url
    if backend.backend == "memory":
        pytest.skip("memory is one worker's own")
    name, start = f"t:hammer:{time.monotonic_ns()}", time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", _HAMMER, backend.backend, target, name, str(start)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    admitted = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(admitted) == 60, admitted
    assert all(a > 0 for a in admitted), admitted


def test_sqlite_workers_opening_a_new_file_together_all_connect(tmp_path):
    """Two workers that open a new state file at the same instant both start: sqlite answered one of the
    two switches to WAL "database is locked" at once, without waiting (about one time in ten)."""
    import threading

    for i in range(100):
        path, barrier, failures = str(tmp_path / f"{i}.db"), threading.Barrier(2), []

        def open_and_take() -> None:
            state = open_state(StateSettings(backend="sqlite", path=path))
            barrier.wait()
            try:
                asyncio.run(state.take([Check(Window("t:open", 60), None, 1)]))
            except Exception as exc:  # noqa: BLE001 - the failure is what the test reports
                failures.append(exc)
            finally:
                asyncio.run(state.close())

        threads = [threading.Thread(target=open_and_take) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not failures, (i, failures)


def test_redis_adds_ride_with_the_next_take_or_go_alone_soon(redis_server):
    """``add`` costs no round trip of its own: its amounts go with the next ``take``, or on their own
    within FLUSH_AFTER when no request comes; another instance sees them either way."""
    async def main():
        settings = StateSettings(backend="redis", url=redis_server.url)
        a, b = open_state(settings), open_state(settings)
        suffix = time.monotonic_ns()
        tokens, requests = Window(f"t:tokens:{suffix}", 60), Window(f"t:requests:{suffix}", 60)
        try:
            await a.add([(tokens, 7)])
            await a.add([(tokens, 5)])
            assert await b.read([tokens]) == [(0.0, 0.0)]  # not sent yet
            await asyncio.sleep(0.3)
            assert (await b.read([tokens]))[0][0] == 12  # sent on its own
            await a.add([(tokens, 3)])
            assert (await a.take([Check(requests, None, 1)])).refused is None  # carries the add
            assert a._pending == {}
            assert (await b.read([tokens]))[0][0] == 15
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


# -- settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("auth, message", [
    ({"keys": [{"name": "a", "key": "k1"}, {"name": "a", "key": "k2"}]}, "keys[1].name: two keys are called 'a'"),
    ({"keys": [{"name": "a b", "key": "k1"}]}, "keys[0].name: use 1-64 letters"),
    ({"keys": [{"key": "k1", "budget_period": "monthly"}]}, "keys[0].budget_period: expected Ns, Nm, Nh or Nd"),
    ({"keys": ["k1", {"key": "k1"}]}, "keys[1].key: the same key is listed twice"),
    ({"keys": [{"key": "k1", "rpm": -1}]}, "keys[0].rpm: must not be negative"),
    ({"keys": [{"name": "a"}]}, "keys[0].key: required setting is missing"),
])
def test_bad_key_settings_stop_start_up(auth, message):
    config = build_config(only_first_party_plugins({"plugins": {"auth": auth}}))
    with pytest.raises(ConfigError, match="plugins.auth." + message.replace("[", r"\[").replace("]", r"\]")):
        create_app(config)


@pytest.mark.parametrize("state, message", [
    ({"backend": "sqlite"}, "state.path: backend sqlite needs"),
    ({"backend": "redis", "url": "http://x"}, "state.url: backend redis needs"),
    ({"backend": "postgres"}, "state.backend: expected one of memory, sqlite, redis"),
    ({"on_error": "maybe"}, "state.on_error: expected one of closed, open"),
])
def test_bad_state_settings_stop_start_up(state, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"state": state})


# -- limits, budgets, allow-lists (the memory default) --------------------------------------------


def test_memory_rpm_lets_exactly_n_through_under_concurrency(make_proxy, upstream):
    """rpm 20, 40 requests in flight at once: exactly 20 reach the upstream, 20 get 429 with retry-after."""
    server = make_proxy(gateway_config(upstream.url, {"rpm": 20}))
    replies = send_concurrently([server.url] * 40, ALICE, headers=SLOW)
    assert statuses(replies) == [200] * 20 + [429] * 20
    assert len(upstream.requests) == 20
    refused = [r for r in replies if r.status_code == 429]
    assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in refused)
    assert refused[0].json()["error"]["type"] == "rate_limit_error"
    assert "20 requests per minute" in refused[0].json()["error"]["message"]
    # bob has no limit, and his own windows
    assert statuses(send_concurrently([server.url] * 5, BOB)) == [200] * 5


def test_rate_limit_answers_in_the_openai_dialect(make_proxy, upstream):
    server = make_proxy(gateway_config(upstream.url, {"rpm": 1}))
    assert httpx.post(server.url + "/v1/chat/completions", json=JSON_OPENAI, headers={"x-api-key": ALICE}).status_code == 200
    reply = httpx.post(server.url + "/v1/chat/completions", json=JSON_OPENAI, headers={"authorization": "Bearer " + ALICE})
    assert reply.status_code == 429 and reply.headers["retry-after"]
    assert reply.json()["error"]["type"] == "rate_limit_error"


def test_model_outside_the_allow_list_is_403_in_dialect_and_never_sent(make_proxy, upstream):
    server = make_proxy(gateway_config(upstream.url, {"models": ["claude-*"], "rpm": 1}))
    reply = httpx.post(server.url + "/v1/chat/completions", json=JSON_OPENAI, headers={"x-api-key": ALICE})
    assert reply.status_code == 403
    assert reply.json()["error"]["type"] == "permission_error"
    assert "may not use model 'gpt-4o'" in reply.json()["error"]["message"]
    reply = httpx.post(server.url + "/v1/messages", json={**JSON_ANTHROPIC, "model": "gpt-4o"}, headers={"x-api-key": ALICE})
    assert reply.status_code == 403 and reply.json()["error"]["type"] == "permission_error"
    assert upstream.requests == []
    # a refused model did not use the one request a minute
    assert httpx.post(server.url + "/v1/messages", json=JSON_ANTHROPIC, headers={"x-api-key": ALICE}).status_code == 200


def test_tpm_counts_input_and_output_after_each_request(make_proxy, upstream):
    server = make_proxy(gateway_config(upstream.url, {"tpm": 10}))
    first = httpx.post(server.url + "/v1/messages", json=JSON_ANTHROPIC, headers={"x-api-key": ALICE})
    assert first.status_code == 200
    usage = first.json()["usage"]
    tokens = sum(usage[k] for k in ("input_tokens", "output_tokens", "cache_read_input_tokens",
                                    "cache_creation_input_tokens"))
    assert tokens >= 10
    reply = httpx.post(server.url + "/v1/messages", json=JSON_ANTHROPIC, headers={"x-api-key": ALICE})
    assert reply.status_code == 429 and "10 tokens per minute" in reply.json()["error"]["message"]
    assert len(upstream.requests) == 1
    report = httpx.get(server.url + "/v1/ccproxy/keys/alice/usage", headers={"x-api-key": ADMIN}).json()
    assert report["tokens"]["used"] == tokens and report["tokens"]["limit"] == 10
    assert report["requests"]["used"] == 1  # the refused request was not counted


@pytest.mark.parametrize("state", ["memory", "sqlite"])
def test_streamed_requests_are_counted_too(make_proxy, upstream, tmp_path, state):
    """Tokens and spend are added at the end of each request with the backend's ``add_now``."""
    server = make_proxy(gateway_config(upstream.url, {"tpm": 1000},
                                       state={"backend": state, "path": str(tmp_path / "state.db")}))
    # A plain end hook: the end of a request is no shielded task of its own (an async one would be).
    assert not server.app.ctx.proxy.handler.stream_end_suspends
    for path, body in (("/v1/messages", ANTHROPIC_BODY), ("/v1/chat/completions", OPENAI_BODY)):
        with httpx.stream("POST", server.url + path, json=body, headers={"x-api-key": ALICE}) as reply:
            assert reply.status_code == 200 and b"".join(reply.iter_raw())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the tokens are added when each request has ended
        report = httpx.get(server.url + "/v1/ccproxy/keys/alice/usage", headers={"x-api-key": ADMIN}).json()
        if report["tokens"]["used"] and report["spend_usd"]["used"] and report["requests"]["used"] == 2:
            break
        time.sleep(0.05)
    assert report["requests"]["used"] == 2 and report["tokens"]["used"] > 20 and report["spend_usd"]["used"] > 0


def test_budget_exceeded_is_429_naming_it_in_both_dialects(make_proxy, upstream):
    server = make_proxy(gateway_config(upstream.url, {"budget_usd": 0.000001, "budget_period": "1d"}))
    assert httpx.post(server.url + "/v1/messages", json=JSON_ANTHROPIC, headers={"x-api-key": ALICE}).status_code == 200
    reply = httpx.post(server.url + "/v1/messages", json=JSON_ANTHROPIC, headers={"x-api-key": ALICE})
    assert reply.status_code == 429
    assert reply.json()["error"]["type"] == "rate_limit_error"
    assert reply.json()["error"]["message"].startswith("budget_exceeded: key 'alice'")
    assert 86000 < int(reply.headers["retry-after"]) <= 86400
    reply = httpx.post(server.url + "/v1/chat/completions", json=JSON_OPENAI, headers={"x-api-key": ALICE})
    assert reply.status_code == 429 and reply.json()["error"]["code"] == "budget_exceeded"
    assert len(upstream.requests) == 1
    report = httpx.get(server.url + "/v1/ccproxy/keys/alice/usage", headers={"x-api-key": ADMIN}).json()
    assert report["spend_usd"]["used"] > 0.000001 and report["spend_usd"]["window_seconds"] == 86400


def test_usage_route_needs_an_admin_key(make_proxy, upstream):
    server = make_proxy(gateway_config(upstream.url, {"rpm": 5}))
    httpx.post(server.url + "/v1/messages", json=JSON_ANTHROPIC, headers={"x-api-key": BOB})
    url = server.url + "/v1/ccproxy/keys/bob/usage"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"x-api-key": BOB}).status_code == 401  # a client key is not an admin key
    report = httpx.get(url, headers={"authorization": "Bearer " + ADMIN}).json()
    assert report["name"] == "bob" and report["backend"] == "memory"
    assert report["requests"] == {"used": 1, "limit": None, "window_seconds": 60.0,
                                  "resets_in": report["requests"]["resets_in"]}
    assert report["tokens"]["used"] > 0 and report["spend_usd"]["used"] > 0
    assert httpx.get(server.url + "/v1/ccproxy/keys/nobody/usage", headers={"x-api-key": ADMIN}).status_code == 404
    # an admin key is not a client key
    assert httpx.post(server.url + "/v1/messages", json=JSON_ANTHROPIC, headers={"x-api-key": ADMIN}).status_code == 401


def test_key_names_not_keys_in_the_access_log_and_metrics(make_proxy, upstream, caplog):
    server = make_proxy(gateway_config(upstream.url, {"rpm": 1}))
    with caplog.at_level(logging.INFO, logger="ccproxy.access"):
        httpx.post(server.url + "/v1/messages", json=JSON_ANTHROPIC, headers={"x-api-key": ALICE})
        httpx.post(server.url + "/v1/messages", json=JSON_ANTHROPIC, headers={"x-api-key": ALICE})
        deadline = time.monotonic() + 5
        while len([r for r in caplog.records if r.name == "ccproxy.access"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "ccproxy.access"]
    assert [(line["key"], line["status"]) for line in lines] == [("alice", 200), ("alice", 429)]
    assert ALICE not in caplog.text
    metrics = httpx.get(server.url + "/metrics", headers={"x-api-key": BOB}).text
    assert 'ccproxy_key_requests_total{key="alice",status="200"} 1.0' in metrics
    assert 'ccproxy_key_requests_total{key="alice",status="429"} 1.0' in metrics
    assert 'ccproxy_key_tokens_total{key="alice"}' in metrics and ALICE not in metrics


def test_plain_keys_only_count_nothing(make_proxy, upstream):
    """Plain string keys and no admin keys: the key check alone, as before (no state operation)."""
    config = provider_config(upstream.url)
    config["plugins"] = {"auth": {"keys": [ALICE]}}
    server = make_proxy(config)
    calls = []

    async def spy():
        state = server.app.ctx.state
        real = state.take
        state.take = lambda *a: calls.append(a) or real(*a)

    server.run(spy)
    assert httpx.post(server.url + "/v1/messages", json=JSON_ANTHROPIC, headers={"x-api-key": ALICE}).status_code == 200
    assert calls == []


# -- sqlite: every worker on one machine ------------------------------------------------------------


def test_sqlite_with_two_workers_lets_exactly_n_through(tmp_path, upstream):
    config = gateway_config(upstream.url, {"rpm": 20}, state={"backend": "sqlite", "path": str(tmp_path / "state.db")})
    config["plugins"]["disabled"] = ["example"]
    config["plugins"]["access_log"] = {"path": str(tmp_path / "access.jsonl")}
    with reserved_port() as port:
        proc = gateway_process(tmp_path, "sqlite", config, port, workers=2)
        try:
            # One connection each, started 30 ms apart and all still in flight when the last starts,
            # so both workers' accept loops get some.
            replies = send_concurrently([f"http://127.0.0.1:{port}"] * 40, ALICE, stagger=0.03,
                                        headers={"x-mock-headers-delay": "1500"})
            assert statuses(replies) == [200] * 20 + [429] * 20
            assert len(upstream.requests) == 20
            report = httpx.get(f"http://127.0.0.1:{port}/v1/ccproxy/keys/alice/usage", headers={"x-api-key": ADMIN})
            assert report.json()["requests"]["used"] == 20 and report.json()["backend"] == "sqlite"
        finally:
            err = stop_process(proc)
    lines = (tmp_path / "access.jsonl").read_text().splitlines()
    pids = {json.loads(line)["pid"] for line in lines}
    assert len(pids) == 2, "both workers served (the count held across them)"
    assert "Traceback" not in err


# -- redis: every instance ---------------------------------------------------------------------------


def test_two_instances_share_one_redis_exactly(tmp_path, upstream, redis_server):
    """Two gateway processes, one Redis, rpm 20: 40 requests spread over both, exactly 20 pass."""
    config = gateway_config(upstream.url, {"name": f"alice-{time.monotonic_ns()}", "rpm": 20},
                            state={"backend": "redis", "url": redis_server.url})
    config["plugins"]["disabled"] = ["example"]
    name = config["plugins"]["auth"]["keys"][0]["name"]
    with reserved_port() as port_a, reserved_port() as port_b:
        a = gateway_process(tmp_path, "a", config, port_a)
        b = gateway_process(tmp_path, "b", config, port_b)
        try:
            urls = [f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"] * 20
            replies = send_concurrently(urls, ALICE, headers=SLOW)
            assert statuses(replies) == [200] * 20 + [429] * 20
            assert len(upstream.requests) == 20
            assert {r.status_code for r in replies[0::2]} and {r.status_code for r in replies[1::2]}
            for port in (port_a, port_b):
                report = httpx.get(f"http://127.0.0.1:{port}/v1/ccproxy/keys/{name}/usage",
                                   headers={"x-api-key": ADMIN}).json()
                assert report["requests"]["used"] == 20 and report["backend"] == "redis"
        finally:
            errors = stop_process(a) + stop_process(b)
    assert "Traceback" not in errors


def test_two_instances_through_a_redis_restart(tmp_path, upstream):
    """Two gateway processes, one Redis stopped mid-test: both answer 503 in dialect at once and log
    one line each, no traceback; Redis back, both count again without a restart."""
    with reserved_port() as redis_port, reserved_port() as port_a, reserved_port() as port_b:
        redis = RedisServer(redis_port).start()
        config = gateway_config(upstream.url, {"rpm": 3}, state={"backend": "redis", "url": redis.url})
        config["plugins"]["disabled"] = ["example"]
        a = gateway_process(tmp_path, "a", config, port_a)
        b = gateway_process(tmp_path, "b", config, port_b)
        urls = [f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"]
        try:
            assert statuses(send_concurrently(urls * 2, ALICE)) == [200] * 3 + [429]
            redis.stop()
            started = time.monotonic()
            down = send_concurrently(urls * 2, ALICE)
            assert time.monotonic() - started < 5
            assert [r.status_code for r in down] == [503] * 4
            assert all(r.json()["error"]["type"] == "overloaded_error" for r in down)
            redis.start()  # empty: the windows start again
            assert statuses(send_concurrently(urls * 2, ALICE)) == [200] * 3 + [429]
        finally:
            logs = [stop_process(a), stop_process(b)]
            redis.stop()
    for log in logs:
        assert "Traceback" not in log and "SECRET" not in log
        lines = [line for line in log.splitlines() if "state: redis" in line]
        assert len(lines) == 2, log  # the outage's start and its end
        assert "unavailable" in lines[0] and "on_error: closed" in lines[0] and "is back" in lines[1]


@pytest.mark.parametrize("on_error", ["closed", "open"])
def test_redis_stopped_and_restarted_mid_test(upstream, on_error, caplog):
    """closed: 503 in dialect while Redis is down, one log line, no traceback, no hang; open: requests
    pass with one warning. Either way the gateway counts again by itself once Redis is back."""
    with reserved_port() as port:
        redis = RedisServer(port).start()
        config = gateway_config(upstream.url, {"rpm": 100}, state={"backend": "redis", "url": redis.url,
                                                                    "on_error": on_error})
        try:
            with ProxyThread(config) as server, caplog.at_level(logging.INFO, logger="ccproxy"):
                post = lambda path, body: httpx.post(server.url + path, json=body, headers={"x-api-key": ALICE}, timeout=10)
                assert post("/v1/messages", JSON_ANTHROPIC).status_code == 200
                redis.stop()
                started = time.monotonic()
                down = [post("/v1/messages", JSON_ANTHROPIC), post("/v1/chat/completions", JSON_OPENAI),
                        post("/v1/messages", JSON_ANTHROPIC)]
                assert time.monotonic() - started < 5  # no hang
                if on_error == "closed":
                    assert [r.status_code for r in down] == [503] * 3
                    assert down[0].json()["error"]["type"] == "overloaded_error"  # Anthropic's shape
                    assert down[1].json()["error"]["type"] == "server_error"  # OpenAI's shape
                    assert down[0].headers["retry-after"] == "1"
                    assert len(upstream.requests) == 1
                else:
                    assert [r.status_code for r in down] == [200] * 3
                state_lines = [r for r in caplog.records if r.name == "ccproxy.state"]
                assert len(state_lines) == 1 and "unavailable" in state_lines[0].getMessage()
                assert state_lines[0].levelno == (logging.ERROR if on_error == "closed" else logging.WARNING)
                assert f"on_error: {on_error}" in state_lines[0].getMessage()
                assert not any(r.exc_info for r in caplog.records)
                assert "SECRET" not in caplog.text
                redis.start()
                assert post("/v1/messages", JSON_ANTHROPIC).status_code == 200
                report = httpx.get(server.url + "/v1/ccproxy/keys/alice/usage", headers={"x-api-key": ADMIN}).json()
                assert report["requests"]["used"] == 1  # a fresh Redis: counting went on from there
                assert "is back" in [r for r in caplog.records if r.name == "ccproxy.state"][-1].getMessage()
        finally:
            redis.stop()
