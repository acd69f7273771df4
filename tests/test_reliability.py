"""Reliability and security: client keys, fallbacks and retries, timeouts, limits, shutdown, no open proxy."""

from __future__ import annotations

import email.utils
import json
import math
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ccproxy_core import PluginSettings, hookimpl
from ccproxy_core.config import Config, build_config
from ccproxy_core.errors import ConfigError
from ccproxy_core.streaming import retry_after_seconds
from ccproxy_plugins import auth
from tests.mock_upstream import MockUpstreamThread
from tests.scripted_upstream import Answer, ScriptedUpstream
from tests.servers import ANTHROPIC_BODY, OPENAI_BODY, PATHS, ROOT, closed_port, provider_config

CLIENT_KEYS = ["ccp-client-KEY-one-1234567890", "ccp-client-KEY-two-0987654321"]
PROVIDER_KEYS = ["sk-ant-upstream-SECRET", "sk-openai-upstream-SECRET"]


class Recorder:
    """Records lifecycle events and attempts."""

    def __init__(self) -> None:
        self.attempts: list[Any] = []
        self.ends: list[Any] = []
        self.errors: list[Any] = []

    @hookimpl
    def ccproxy_upstream_attempt(self, ctx, attempt):
        self.attempts.append((attempt.provider, attempt.model, attempt.status, attempt.error, attempt.delay))

    @hookimpl
    def ccproxy_stream_error(self, ctx, error):
        self.errors.append(error)

    @hookimpl
    def ccproxy_stream_end(self, ctx):
        self.ends.append(ctx)

    def wait_end(self, n: int = 1, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ends) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.ends) >= n


def assert_dialect_error(dialect: str, r: httpx.Response, status: int, kind: str | None = None) -> dict:
    assert r.status_code == status, r.text
    data = r.json()
    if dialect == "anthropic":
        assert data["type"] == "error" and set(data["error"]) == {"type", "message"}
        if kind:
            assert data["error"]["type"] == kind
    else:
        assert set(data["error"]) >= {"message", "type", "code"}
        if kind:
            assert data["error"]["code"] == kind
    assert "Traceback" not in r.text
    return data


def stream_all(url: str, body: dict, headers: dict | None = None, path: str = "/v1/messages") -> tuple[int, bytes, bool]:
    """(status, raw bytes, ended broken)."""
    received = b""
    broken = False
    status = 0
    try:
        with httpx.stream("POST", url + path, json=body, headers=headers or {}, timeout=15) as r:
            status = r.status_code
            for chunk in r.iter_raw():
                received += chunk
    except httpx.RemoteProtocolError:
        broken = True
    return status, received, broken


# -- client keys ---------------------------------------------------------------------------------


@pytest.fixture
def keyed(make_proxy, mock):
    config = provider_config(mock.url, plugins={"auth": {"keys": [*CLIENT_KEYS, ""]}})
    return make_proxy(config)


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_missing_or_wrong_key_is_401_in_dialect(keyed, upstream, dialect):
    path, body = PATHS[dialect]
    for headers in ({}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"}, {"authorization": "Basic " + CLIENT_KEYS[0]},
                    {"x-api-key": ""}, {"x-api-key": CLIENT_KEYS[0][:-1]}, {"x-api-key": CLIENT_KEYS[0] + "x"}):
        r = httpx.post(keyed.url + path, json=body, headers=headers)
        assert_dialect_error(dialect, r, 401, "authentication_error")
        assert CLIENT_KEYS[0] not in r.text
    assert upstream.upstream.requests == []  # nothing reached the provider


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_valid_key_as_x_api_key_or_bearer(keyed, upstream, dialect):
    path, body = PATHS[dialect]
    body = {**body, "stream": False}
    for headers in ({"x-api-key": CLIENT_KEYS[0]}, {"authorization": f"Bearer {CLIENT_KEYS[1]}"},
                    {"Authorization": f"bearer {CLIENT_KEYS[0]}"}, {"x-api-key": "wrong", "authorization": f"Bearer {CLIENT_KEYS[1]}"}):
        r = httpx.post(keyed.url + path, json=body, headers=headers)
        assert r.status_code == 200, r.text
    for seen in upstream.upstream.requests:
        flat = json.dumps(seen.headers) + seen.body.decode()
        assert not any(key in flat for key in CLIENT_KEYS), "the client's key went upstream"
        assert (seen.header("x-api-key") or seen.header("authorization") or "").endswith("upstream-SECRET")


def test_other_routes_need_a_key_except_public_ones(keyed):
    r = httpx.get(keyed.url + "/v1/models")
    assert_dialect_error("openai", r, 401)
    assert httpx.get(keyed.url + "/v1/models", headers={"x-api-key": CLIENT_KEYS[1]}).status_code == 200
    assert httpx.get(keyed.url + "/health").status_code == 200
    assert httpx.get(keyed.url + "/plugins").status_code == 401


def test_keys_compared_in_constant_time_over_all_keys(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    keys = ("k1-aaaa", "k2-bbbbbbbbbbbb", "k3")
    headers = httpx.Headers({"x-api-key": "k1-aaaa"})

    class H:
        def getall(self, name, default):
            return headers.get_list(name) or default

    assert auth.authorized(keys, H())
    assert len(calls) == 3  # no early exit on the first match
    assert all(len(a) == len(b) == 32 for a, b in calls)  # digests: the key's length does not show


def test_no_keys_on_public_address_refuses_unless_insisted(caplog):
    class Info:
        def __init__(self, host):
            self.settings = {"host": host, "port": 8000, "unix": ""}

    class State:
        def __init__(self, host):
            self.server_info = [Info(host)]
            self.host = host

    class App:
        def __init__(self, host):
            self.state = State(host)

    def startup(app: App, config: Config) -> None:
        """The auth plugin's start-up for ``config``: its per-app part, made by ``ccproxy_configure``."""
        auth.ccproxy_configure(PluginSettings("auth", config.plugin_settings("auth"))).ccproxy_startup(app)

    config = build_config({"plugins": {"auth": {}}})
    caplog.set_level(logging.WARNING)
    startup(App("127.0.0.1"), config)
    assert "no proxy keys configured" in caplog.text
    with pytest.raises(ConfigError, match="no proxy keys configured"):
        startup(App("0.0.0.0"), config)
    assert "REFUSING TO START" in caplog.text
    insisted = build_config({"plugins": {"auth": {"allow_public_without_keys": True}}})
    startup(App("::"), insisted)
    assert "!!! NO PROXY KEYS" in caplog.text
    keyed = build_config({"plugins": {"auth": {"keys": ["k"]}}})
    startup(App("0.0.0.0"), keyed)  # keys configured: any address is fine
    assert auth.is_loopback("::1") and auth.is_loopback("localhost") and not auth.is_loopback("10.0.0.1")


def _write_config(tmp_path: Path, data: dict) -> str:
    import yaml

    path = tmp_path / "ccproxy.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_sanic_refuses_public_bind_without_keys(tmp_path, mock, sanic_port):
    """A real ``sanic app.app --host 0.0.0.0`` with no keys stops before it serves (Sanic binds first)."""
    config = provider_config(mock.url)
    path = _write_config(tmp_path, config)
    env = {**os.environ, "CCPROXY_CONFIG": path}
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/sanic"), "app.app", "--host", "0.0.0.0", "--port", str(sanic_port), "--single-process"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
    )
    output = proc.stdout + proc.stderr
    assert "REFUSING TO START" in output
    assert proc.returncode != 0 and "Worker ready" not in output


# -- secrets never leak --------------------------------------------------------------------------


def test_no_key_in_any_response_or_log(make_proxy, mock, caplog, capfd):
    """Run many paths (success, upstream errors, broken streams, timeouts, auth failures) and grep everything."""
    caplog.set_level(logging.DEBUG)
    config = provider_config(mock.url, plugins={"auth": {"keys": CLIENT_KEYS}})
    config["providers"]["dead"] = {"format": "openai", "base_url": f"http://127.0.0.1:{closed_port()}/v1",
                                   "api_key": "sk-dead-upstream-SECRET", "models": ["dead-*"]}
    config["timeouts"] = {"connect": 1, "headers": 0.3, "idle": 0.3, "total": 5}
    config["retries"] = {"max_attempts": 2, "backoff_base": 0.01, "backoff_max": 0.02}
    server = make_proxy(config)
    outputs: list[bytes] = []
    good = {"x-api-key": CLIENT_KEYS[0]}
    scenarios = [
        ({}, {}), (good, {}), (good, {"x-mock-status": "401"}), (good, {"x-mock-status": "500"}),
        (good, {"x-mock-drop-after": "2"}), (good, {"x-mock-garbage": "1"}), (good, {"x-mock-reset": "1"}),
        (good, {"x-mock-headers-delay": "900"}), (good, {"x-mock-stall-after": "1", "x-mock-stall": "900"}),
        (good, {"x-mock-truncate": "1"}), ({"x-api-key": "nope"}, {}),
    ]
    for dialect, (path, body) in PATHS.items():
        for creds, scenario in scenarios:
            for stream in (True, False):
                status, raw, _ = stream_all(server.url, {**body, "stream": stream}, {**creds, **scenario}, path)
                outputs.append(raw)
        r = httpx.post(server.url + "/v1/chat/completions", json={**OPENAI_BODY, "model": "dead-1"}, headers=good)
        outputs.append(r.content + str(r.headers).encode())
    for route in ("/v1/models", "/plugins", "/health"):
        r = httpx.get(server.url + route, headers=good)
        outputs.append(r.content + str(r.headers).encode())
    with httpx.Client() as client:
        r = client.post(server.url + "/v1/messages", json={**ANTHROPIC_BODY, "stream": False}, headers=good)
        outputs.append(r.content + json.dumps(dict(r.headers)).encode())
    out, err = capfd.readouterr()
    logs = "\n".join(
        record.getMessage() + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        for record in caplog.records
    )
    everything = b"\n".join(outputs).decode("utf-8", "replace") + logs + out + err
    assert len(caplog.records) > 20  # the logs were really captured
    for secret in [*PROVIDER_KEYS, "sk-dead-upstream-SECRET", *CLIENT_KEYS]:
        assert secret not in everything, secret
    assert "SECRET" not in everything


# -- fallbacks and retries -----------------------------------------------------------------------


def _fallback_config(mock_url: str, **extra: Any) -> dict:
    config = provider_config(mock_url)
    config["providers"]["bad"] = {"format": "anthropic", "base_url": mock_url, "api_key": "k-bad",
                                  "models": ["claude-bad-*"], "headers": {"x-mock-status": "503"}}
    config["providers"]["dead"] = {"format": "anthropic", "base_url": f"http://127.0.0.1:{closed_port()}",
                                   "api_key": "k-dead", "models": ["claude-dead-*"]}
    config["models"] = {
        "smart": {"model": "claude-bad-1", "provider": "bad",
                  "fallbacks": [{"provider": "dead", "model": "claude-dead-1"}, {"model": "claude-sonnet-4-5"}]},
        "cross": {"model": "claude-bad-1", "provider": "bad", "fallbacks": [{"provider": "openai", "model": "gpt-4o"}]},
    }
    config["retries"] = {"max_attempts": 3, "backoff_base": 0.01, "backoff_max": 0.05, "retry_after_cap": 1}
    config.update(extra)
    return config


def test_alias_fallbacks_in_order_and_every_attempt_visible(make_proxy, upstream, caplog):
    caplog.set_level(logging.INFO, logger="ccproxy")
    recorder = Recorder()
    server = make_proxy(_fallback_config(upstream.url), plugins=[("recorder", recorder)])
    r = httpx.post(server.url + "/v1/messages", json={**ANTHROPIC_BODY, "model": "smart", "stream": False}, timeout=10)
    assert r.status_code == 200
    assert [(p, s) for p, _, s, _, _ in recorder.attempts] == [("bad", 503), ("dead", None), ("anthropic", 200)]
    assert recorder.attempts[1][3]  # the connect error is recorded
    recorder.wait_end()
    ctx = recorder.ends[0]
    assert [a.provider for a in ctx.attempts] == ["bad", "dead", "anthropic"]
    assert ctx.provider == "anthropic" and ctx.outcome == "completed"
    assert "falling back to dead" in caplog.text and "falling back to anthropic" in caplog.text
    assert "attempt 3 at anthropic (claude-sonnet-4-5) answered 200" in caplog.text
    models = [req.json()["model"] for req in upstream.upstream.requests]
    assert models == ["claude-bad-1", "claude-sonnet-4-5"]  # the body names each route's model



def test_the_routes_not_taken_are_closed_when_one_answers(make_proxy, upstream, monkeypatch):
    """The generator preparing the fallbacks is closed as soon as the first route answers, by the
    scheduler: not later by the loop's async-generator finalizer (one more wake-up and a task)."""
    from ccproxy_core.proxy import Proxy

    closed: list[bool] = []
    at_end: list[list[bool]] = []
    prepare = Proxy._attempts

    async def attempts(self, request, ctx, routes):
        try:
            async for attempt in prepare(self, request, ctx, routes):
                yield attempt
        finally:
            closed.append(True)

    class AtEnd:
        @hookimpl
        def ccproxy_stream_end(self, ctx):
            at_end.append(list(closed))

    monkeypatch.setattr(Proxy, "_attempts", attempts)
    config = _fallback_config(upstream.url)
    config["models"]["fine"] = {"model": "claude-sonnet-4-5", "provider": "anthropic",
                                "fallbacks": [{"provider": "openai", "model": "gpt-4o"}]}
    server = make_proxy(config, plugins=[("at-end", AtEnd())])
    r = httpx.post(server.url + "/v1/messages", json={**ANTHROPIC_BODY, "model": "fine", "stream": False}, timeout=10)
    assert r.status_code == 200
    deadline = time.monotonic() + 5
    while not at_end and time.monotonic() < deadline:
        time.sleep(0.01)
    assert at_end == [[True]]  # closed before the request ended, its fallback never prepared

def test_provider_fallbacks_same_model(make_proxy, upstream):
    config = provider_config(upstream.url)
    config["providers"] = {
        "primary": {"format": "anthropic", "base_url": f"http://127.0.0.1:{closed_port()}", "api_key": "k",
                    "models": ["claude-*"], "fallbacks": ["backup"]},
        "backup": {"format": "anthropic", "base_url": upstream.url, "api_key": "k2", "models": ["nothing"]},
    }
    recorder = Recorder()
    server = make_proxy(config, plugins=[("recorder", recorder)])
    status, raw, broken = stream_all(server.url, ANTHROPIC_BODY)
    assert status == 200 and not broken and b"message_stop" in raw
    assert [a[0] for a in recorder.attempts] == ["primary", "backup"]
    assert upstream.upstream.requests[0].json()["model"] == "claude-sonnet-4-5"


def test_all_routes_fail_last_answer_passes_through(make_proxy, upstream):
    config = _fallback_config(upstream.url)
    config["models"]["smart"]["fallbacks"] = [{"provider": "dead", "model": "claude-dead-1"}]
    recorder = Recorder()
    server = make_proxy(config, plugins=[("recorder", recorder)])
    r = httpx.post(server.url + "/v1/messages", json={**ANTHROPIC_BODY, "model": "smart", "stream": False}, timeout=10)
    # bad (503, retry-after 7 > cap: not retried), dead (connect error, retried once): the 503 answer stands.
    assert r.status_code == 503
    assert r.headers["retry-after"] == "7"
    assert r.json()["type"] == "error"
    assert [a[0] for a in recorder.attempts] == ["bad", "dead", "dead"]
    assert upstream.wait_for(lambda m: m.open_connections <= 1 and m.active_streams == 0)


def test_untranslatable_fallback_is_skipped(make_proxy, upstream, caplog):
    caplog.set_level(logging.WARNING, logger="ccproxy")
    config = _fallback_config(upstream.url)
    config["plugins"] = {"disabled": ["translate"]} if _installed("translate") else {}
    config["models"]["cross"]["fallbacks"] = [{"provider": "openai", "model": "gpt-4o"},
                                              {"provider": "anthropic", "model": "claude-sonnet-4-5"}]
    server = make_proxy(config)
    r = httpx.post(server.url + "/v1/messages", json={**ANTHROPIC_BODY, "model": "cross", "stream": False}, timeout=10)
    assert r.status_code == 200
    assert "route openai (gpt-4o) skipped" in caplog.text


def _installed(name: str) -> bool:
    from importlib.metadata import entry_points

    from ccproxy_core.plugins import DEFAULT_PLUGINS

    first_party = {module.rpartition(".")[2] for module in DEFAULT_PLUGINS}
    return name in first_party or any(ep.name == name for ep in entry_points(group="ccproxy"))


def test_same_route_retries_with_backoff_until_max_attempts(make_proxy, upstream):
    config = provider_config(upstream.url)
    config["providers"]["anthropic"]["headers"] = {"x-mock-status": "500"}
    config["retries"] = {"max_attempts": 4, "backoff_base": 0.1, "backoff_max": 0.15}
    recorder = Recorder()
    server = make_proxy(config, plugins=[("recorder", recorder)])
    start = time.monotonic()
    r = httpx.post(server.url + "/v1/messages", json=ANTHROPIC_BODY, timeout=10)
    elapsed = time.monotonic() - start
    assert r.status_code == 500 and r.json()["type"] == "error"  # the last answer, in its own shape
    assert len(upstream.upstream.requests) == 4
    delays = [a[4] for a in recorder.attempts]
    assert delays[0] == 0
    # Each is the jittered backoff (50-100 % of 0.1, 0.2 capped at 0.15) less the time spent on the failed
    # answer before the wait began (microseconds; up to 20 ms allowed on a loaded machine).
    assert 0.03 <= delays[1] <= 0.1 and all(0.055 <= d <= 0.15 for d in delays[2:]), delays  # jittered, capped
    assert elapsed >= sum(delays)


def test_retry_after_honoured_then_success():
    # An HTTP date (1 s resolution) 4-5 s ahead: whenever the 503 is sent, it asks for a wait well over 1 s.
    when = math.ceil(time.time()) + 4
    script = [Answer(429, {"retry-after": "0.4"}, {"type": "error", "error": {"type": "rate_limit_error", "message": "x"}}),
              Answer(503, {"retry-after": email.utils.formatdate(when, usegmt=True)}),
              Answer(200)]
    with ScriptedUpstream(script) as up:
        from tests.servers import ProxyThread

        config = provider_config(up.url, retries={"max_attempts": 3, "retry_after_cap": 6, "backoff_base": 0.01})
        with ProxyThread(config) as server:
            r = httpx.post(server.url + "/v1/messages", json={**ANTHROPIC_BODY, "stream": False}, timeout=10)
        assert r.status_code == 200 and r.json()["id"] == "msg_scripted"
        gaps = [b - a for a, b in zip(up.arrivals, up.arrivals[1:])]
        assert 0.38 <= gaps[0] < 1.0, gaps  # retry-after: 0.4
        assert len(up.arrivals) == 3
        assert gaps[1] >= 1.0, gaps  # the HTTP date was parsed: not the 0.01 s backoff


def test_retry_after_above_cap_is_not_waited_for():
    with ScriptedUpstream([Answer(429, {"retry-after": "60", "x-ratelimit-remaining-requests": "0"})]) as up:
        from tests.servers import ProxyThread

        with ProxyThread(provider_config(up.url, retries={"max_attempts": 3, "retry_after_cap": 5})) as server:
            start = time.monotonic()
            r = httpx.post(server.url + "/v1/messages", json={**ANTHROPIC_BODY, "stream": False}, timeout=10)
            assert time.monotonic() - start < 1
        assert r.status_code == 429 and r.headers["retry-after"] == "60"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert len(up.arrivals) == 1


def test_retry_after_parsing():
    assert retry_after_seconds({"retry-after": "7"}) == 7
    assert retry_after_seconds({"retry-after": "1.5"}) == 1.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after_seconds({"retry-after": date}, now=1_000_000) == 30
    assert retry_after_seconds({"retry-after": date}, now=2_000_000) == 0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_never_retried_after_the_first_byte(make_proxy, upstream):
    config = provider_config(upstream.url, retries={"max_attempts": 5, "backoff_base": 0.01})
    config["models"] = {"smart": {"model": "claude-sonnet-4-5", "fallbacks": [{"provider": "anthropic", "model": "claude-haiku-4-5"}]}}
    server = make_proxy(config)
    status, raw, broken = stream_all(server.url, {**ANTHROPIC_BODY, "model": "smart"}, {"x-mock-drop-after": "3"})
    assert status == 200 and broken and b"event: error" in raw
    assert len(upstream.upstream.requests) == 1


def test_retries_stop_at_the_total_timeout(make_proxy, upstream):
    config = provider_config(upstream.url, retries={"max_attempts": 50, "backoff_base": 0.2, "backoff_max": 0.2})
    config["timeouts"] = {"connect": 1, "headers": 1, "idle": 1, "total": 1}
    config["providers"]["anthropic"]["headers"] = {"x-mock-status": "500"}
    server = make_proxy(config)
    r = httpx.post(server.url + "/v1/messages", json=ANTHROPIC_BODY, timeout=10)
    assert r.status_code in (500, 504)
    # Backoffs of 0.1-0.2 s leave room for at most ~10 attempts in the 1 s total; without the total
    # timeout all 50 would be made. (No wall-clock bound: on a loaded machine it measures the scheduler.)
    assert 1 <= len(upstream.upstream.requests) <= 10


class DirectRoute:
    """A plugin route ``POST /direct`` that calls the engine itself: ``call(proxy, request, ctx)`` returns
    the deferred response, which is kept in ``made``."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.made: list[Any] = []

    @hookimpl
    def ccproxy_register_routes(self, app):
        @app.post("/direct")
        async def direct(request):
            proxy = request.app.ctx.proxy
            deferred = self.call(proxy, request, proxy.context(request, "anthropic"))
            self.made.append(deferred)
            return deferred


def test_handler_made_client_survives_retries_and_is_closed(make_proxy, upstream):
    """``handle_streaming_request`` without a client: one is made, used for every retry, closed at the end."""
    from ccproxy_core.streaming import HandlerConfig

    closed: list[bool] = []

    class Transport(httpx.AsyncHTTPTransport):
        async def aclose(self) -> None:
            closed.append(True)
            await super().aclose()

    direct = DirectRoute(lambda proxy, request, ctx: proxy.handler.handle_streaming_request(
        "POST", request.headers["x-target"], {"x-mock-status": request.headers.get("x-status", "")},
        request.body, HandlerConfig(), ctx, client_config={"timeout": 5, "transport": Transport()},
    ))
    made = direct.made
    dead = f"http://127.0.0.1:{closed_port()}/v1/messages"
    recorder = Recorder()
    server = make_proxy(
        retries={"max_attempts": 3, "backoff_base": 0.01}, plugins=[("direct", direct), ("recorder", recorder)]
    )
    r = httpx.post(server.url + "/direct", json=ANTHROPIC_BODY, headers={"x-target": dead})
    assert_dialect_error("anthropic", r, 502)
    recorder.wait_end(1)
    assert len(closed) == 1 and made[0].ctx.outcome == "upstream_error" and len(made[0].ctx.attempts) == 3
    r = httpx.post(server.url + "/direct", json={**ANTHROPIC_BODY, "stream": False},
                   headers={"x-target": upstream.url + "/v1/messages", "x-status": "500"})
    assert r.status_code == 500 and r.json()["type"] == "error"
    assert len(upstream.upstream.requests) == 3
    recorder.wait_end(2)  # the end hooks run after the last byte went out
    assert len(closed) == 2  # one client per response, closed once, after all its retries
    assert made[1].ctx.outcome == "completed"  # the upstream's own 500, relayed in full


def test_direct_call_falls_back_to_the_attempts_it_was_given(make_proxy, upstream):
    """``handle_streaming_request(fallbacks=...)``: the engine takes further prepared attempts from any
    async iterable, only when the first fails, and the context names the attempt that answered."""
    from ccproxy_core.config import Timeouts
    from ccproxy_core.streaming import HandlerConfig, UpstreamRequest

    prepared: list[str] = []

    class Fallbacks:  # an async iterable, not an iterator: the engine asks for its iterator
        def __init__(self, client: httpx.AsyncClient) -> None:
            self.client = client

        async def __aiter__(self):
            prepared.append("backup")
            yield UpstreamRequest(
                "POST", upstream.url + "/v1/messages", {"content-type": "application/json"},
                json.dumps({**ANTHROPIC_BODY, "stream": False}).encode(), HandlerConfig(), self.client,
                Timeouts(), provider="backup", model="claude-backup", upstream_dialect="anthropic",
            )

    def call(proxy, request, ctx):
        ctx.provider, ctx.model = "first", "claude-first"
        client = proxy.clients["anthropic"]
        return proxy.handler.handle_streaming_request(
            "POST", request.headers["x-target"], {}, request.body, HandlerConfig(), ctx, client,
            fallbacks=Fallbacks(client),
        )

    direct = DirectRoute(call)
    made = direct.made
    recorder = Recorder()
    server = make_proxy(provider_config(upstream.url), plugins=[("direct", direct), ("recorder", recorder)])
    dead = f"http://127.0.0.1:{closed_port()}/v1/messages"
    r = httpx.post(server.url + "/direct", json={**ANTHROPIC_BODY, "stream": False}, headers={"x-target": dead})
    assert r.status_code == 200 and r.json()["type"] == "message"
    recorder.wait_end(1)
    ctx = made[0].ctx
    assert [(a.provider, a.model, a.error_kind) for a in ctx.attempts] == [
        ("first", "claude-first", "connect"), ("backup", "claude-backup", None),
    ]
    assert (ctx.provider, ctx.model, ctx.upstream_url) == ("backup", "claude-backup", upstream.url + "/v1/messages")
    assert prepared == ["backup"] and ctx.outcome == "completed"
    # The first attempt answers: the fallbacks are never prepared.
    r = httpx.post(server.url + "/direct", json={**ANTHROPIC_BODY, "stream": False},
                   headers={"x-target": upstream.url + "/v1/messages"})
    assert r.status_code == 200 and prepared == ["backup"]


# -- timeouts: each its own error, before and after the head --------------------------------------


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_connect_timeout_is_504(make_proxy, mock, dialect):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname())  # the accept queue is now full
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        config = provider_config(url, retries={"max_attempts": 1})
        config["providers"]["openai"]["base_url"] = url + "/v1"
        config["timeouts"] = {"connect": 0.3, "headers": 5, "idle": 5, "total": 10}
        server = make_proxy(config)
        path, body = PATHS[dialect]
        start = time.monotonic()
        r = httpx.post(server.url + path, json=body, timeout=10)
        assert 0.25 <= time.monotonic() - start < 2
        data = assert_dialect_error(dialect, r, 504)
        message = data["error"]["message"]
        assert "connecting" in message and "0.3s" in message
    finally:
        filler.close()
        listener.close()


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_headers_timeout_is_504(make_proxy, upstream, dialect):
    server = make_proxy(timeouts={"connect": 1, "headers": 0.3, "idle": 5, "total": 10}, retries={"max_attempts": 1})
    path, body = PATHS[dialect]
    start = time.monotonic()
    r = httpx.post(server.url + path, json=body, headers={"x-mock-headers-delay": "2000"}, timeout=10)
    assert 0.25 <= time.monotonic() - start < 1.5
    data = assert_dialect_error(dialect, r, 504)
    assert "response headers within 0.3s" in data["error"]["message"]


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_idle_timeout_after_head_is_error_event(make_proxy, upstream, dialect):
    server = make_proxy(timeouts={"connect": 1, "headers": 5, "idle": 0.3, "total": 10})
    path, body = PATHS[dialect]
    start = time.monotonic()
    status, raw, broken = stream_all(server.url, body, {"x-mock-stall-after": "2", "x-mock-stall": "3000"}, path)
    assert time.monotonic() - start < 1.5  # the idle gap, not the headers timeout, fired
    assert status == 200 and broken
    assert b"sent nothing for 0.3s" in raw
    assert (b"event: error" in raw) if dialect == "anthropic" else (b'data: {"error"' in raw and b"[DONE]" not in raw)
    assert upstream.wait_for(lambda m: m.active_streams == 0)


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_total_timeout_before_and_after_head(make_proxy, upstream, dialect):
    server = make_proxy(timeouts={"connect": 1, "headers": 5, "idle": 5, "total": 0.6}, retries={"max_attempts": 1})
    path, body = PATHS[dialect]
    # Before the head: the upstream takes longer than `total` to answer.
    start = time.monotonic()
    r = httpx.post(server.url + path, json=body, headers={"x-mock-headers-delay": "3000"}, timeout=10)
    assert 0.5 <= time.monotonic() - start < 1.5
    data = assert_dialect_error(dialect, r, 504)
    assert "longer than 0.6s" in data["error"]["message"]
    # After the head: a steady stream (no idle gap) that outlasts `total`.
    start = time.monotonic()
    status, raw, broken = stream_all(server.url, body, {"x-mock-delay": "100", "x-mock-events": "40"}, path)
    assert 0.5 <= time.monotonic() - start < 1.5
    assert status == 200 and broken and b"longer than 0.6s" in raw
    assert upstream.wait_for(lambda m: m.active_streams == 0)


# -- limits -------------------------------------------------------------------------------------


@pytest.fixture
def restore_header_limit():
    from sanic.http import Http

    saved = Http.HEADER_MAX_SIZE
    yield
    Http.HEADER_MAX_SIZE = saved


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_header_too_large_is_431_in_dialect(make_proxy, restore_header_limit, dialect):
    server = make_proxy(limits={"max_header_bytes": 2048})
    path, body = PATHS[dialect]
    r = httpx.post(server.url + path + "?beta=true", json=body, headers={"x-big": "a" * 3000})
    assert_dialect_error(dialect, r, 431, "request_too_large" if dialect == "openai" else "request_too_large")
    ok = httpx.post(server.url + path, json={**body, "stream": False}, headers={"x-small": "a" * 1000})
    assert ok.status_code == 200


def test_header_limit_validated():
    with pytest.raises(ConfigError, match="max_header_bytes"):
        build_config({"limits": {"max_header_bytes": 100_000}})


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_concurrent_streams_over_limit_is_503_with_retry_after(make_proxy, upstream, dialect):
    server = make_proxy(limits={"max_concurrent_streams": 2, "overload_retry_after": 3})
    path, body = PATHS[dialect]
    results: list[tuple[int, bytes, bool]] = []
    threads = [threading.Thread(target=lambda: results.append(
        stream_all(server.url, body, {"x-mock-delay": "100", "x-mock-events": "8"}, path))) for _ in range(2)]
    for t in threads:
        t.start()
    assert upstream.wait_for(lambda m: m.active_streams == 2)
    r = httpx.post(server.url + path, json=body)
    data = assert_dialect_error(dialect, r, 503)
    assert r.headers["retry-after"] == "3"
    assert (data["error"]["type"] == "overloaded_error") if dialect == "anthropic" else data["error"]["code"] == "overloaded_error"
    for t in threads:
        t.join(10)
    assert all(status == 200 and not broken for status, _, broken in results)
    assert httpx.post(server.url + path, json={**body, "stream": False}).status_code == 200


# -- no open proxy --------------------------------------------------------------------------------


@pytest.fixture
def evil():
    with MockUpstreamThread() as other:
        yield other


def _send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        if b"connection: close" not in data.lower():
            data = data.replace(b"\r\n", b"\r\nconnection: close\r\n", 1)
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (socket.timeout, ConnectionError):
            pass
        return out


def test_upstream_host_and_path_never_change(proxy, upstream, evil):
    evil_host = evil.url.split("//")[1]
    models = ["../../evil", f"http://{evil_host}/v1/messages", "claude-%2F..%2F", "claude-x\r\nHost: evil",
              f"claude-@{evil_host}", "claude-sonnet-4-5/../../x", "claude-sonnet-4-5?x=http://evil", "claude-#x"]
    for model in models:
        for path in ("/v1/messages", "/v1/chat/completions"):
            httpx.post(proxy.url + path, json={**ANTHROPIC_BODY, "model": model, "stream": False}, timeout=10)
    for path in ("/v1/../v1/messages", "/v1/messages/../../admin", "/v1%2Fmessages", "/v1/messages%2F..%2F..%2Fx",
                 "//evil/v1/messages", "/v1/messages/", "/v1//messages"):
        raw = json.dumps({**ANTHROPIC_BODY, "stream": False}).encode()
        reply = _send_raw(proxy.port, f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(raw)}\r\n\r\n".encode() + raw)
        assert reply.startswith(b"HTTP/1.1 ") and b"Traceback" not in reply
    raw = json.dumps({**ANTHROPIC_BODY, "stream": False}).encode()
    for target in (f"http://{evil_host}/v1/messages", f"http://{evil_host}/v1/messages?beta=true",
                   "http://127.0.0.1:1/v1/chat/completions"):
        _send_raw(proxy.port, f"POST {target} HTTP/1.1\r\nhost: {evil_host}\r\ncontent-length: {len(raw)}\r\n\r\n".encode() + raw)
    for value in ("a\nHost: evil", "a\rx", "a\n\nGET /evil HTTP/1.1"):
        head = f"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-inject: {value}\r\ncontent-length: {len(raw)}\r\n\r\n"
        reply = _send_raw(proxy.port, head.encode() + raw)
        assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
        assert b"line break" in reply
    for name in ("x-bad\nhost", "x bad"):
        head = f"POST /v1/messages HTTP/1.1\r\nhost: x\r\n{name}: v\r\ncontent-length: {len(raw)}\r\n\r\n"
        reply = _send_raw(proxy.port, head.encode() + raw)
        assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert evil.upstream.requests == []
    seen = upstream.upstream.requests
    assert seen, "the well-formed requests reached the configured upstream"
    port = upstream.url.rsplit(":", 1)[1]
    for request in seen:
        assert request.path in ("/v1/messages", "/v1/chat/completions"), request.path
        assert request.header("host") == f"127.0.0.1:{port}"
        assert request.query in ("", "beta=true")
        assert all("\n" not in v and "\r" not in v for _, v in request.headers)
        assert request.header("x-inject") is None


def test_non_ascii_header_values_are_forwarded_as_sent(proxy, upstream):
    raw = json.dumps({**ANTHROPIC_BODY, "stream": False}).encode()
    head = f"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-title: Caf\u00e9 \u2603\r\ncontent-length: {len(raw)}\r\n\r\n"
    reply = _send_raw(proxy.port, head.encode("utf-8") + raw)
    assert reply.startswith(b"HTTP/1.1 200")
    assert upstream.upstream.requests[-1].header("x-title").encode("latin-1") == "Caf\u00e9 \u2603".encode()


# -- graceful shutdown -----------------------------------------------------------------------------


@pytest.fixture
def own_mock():
    with MockUpstreamThread() as upstream:
        yield upstream


@pytest.mark.parametrize("mode", [["--single-process"], ["--workers", "2"]], ids=["single", "workers"])
def test_sigterm_drains_then_ends_streams_and_closes_upstreams(tmp_path, own_mock, sanic_port, mode):
    """A real ``sanic app.app`` process (one, or a main process and two workers): SIGTERM stops accepting,
    lets short streams finish, ends long ones with an error event after ``shutdown_grace``, exits 0 and
    leaves no upstream open."""
    mock = own_mock
    config = provider_config(mock.url, shutdown_grace=1.5)
    path = _write_config(tmp_path, config)
    port = sanic_port
    env = {**os.environ, "CCPROXY_CONFIG": path, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/sanic"), "app.app", "--host", "127.0.0.1", "--port", str(port), *mode],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
            time.sleep(0.1)
        results: dict[str, tuple[int, bytes, bool, float]] = {}

        def run(name: str, headers: dict, path: str = "/v1/messages", body: dict = ANTHROPIC_BODY) -> None:
            status, raw, broken = stream_all(url, body, headers, path)
            results[name] = (status, raw, broken, time.monotonic())

        threads = [
            threading.Thread(target=run, args=("short", {"x-mock-delay": "100", "x-mock-events": "6"})),
            threading.Thread(target=run, args=("long", {"x-mock-delay": "100", "x-mock-events": "200"})),
            threading.Thread(target=run, args=("long-openai", {"x-mock-delay": "100", "x-mock-events": "200"},
                                               "/v1/chat/completions", OPENAI_BODY)),
        ]
        for t in threads:
            t.start()
        assert mock.wait_for(lambda m: m.active_streams == 3, timeout=10)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.HTTPError):  # no longer accepting
            httpx.post(url + "/v1/messages", json=ANTHROPIC_BODY, timeout=2)
        for t in threads:
            t.join(15)
        proc.wait(15)
        status, raw, broken, _ = results["short"]
        assert status == 200 and not broken and b"event: message_stop" in raw and b"shutting down" not in raw
        for name in ("long", "long-openai"):
            status, raw, broken, ended = results[name]
            assert status == 200 and broken, name
            assert 1.3 <= ended - sent < 4, ended - sent
            assert b"shutting down" in raw
            assert b"overloaded_error" in raw
        assert mock.wait_for(lambda m: m.open_connections == 0 and m.active_streams == 0, timeout=5)
        assert mock.disconnects == 2
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        output = proc.stdout.read() if proc.stdout else ""
    # Each process logs the responses it ends; under --workers 2 the long streams may be on either worker.
    ended = re.findall(r"grace period of 1\.5s over, ending (\d+) response\(s\)", output)
    assert sum(map(int, ended)) == 2, output[-3000:]
