"""Observability plugins (access_log, metrics, usage, health) over real sockets against the mock upstream.

Every request here is a real HTTP request to a proxy on 127.0.0.1; the access log is read back
from the file the plugin appends to, the metrics from ``GET /metrics``.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ccproxy_core import hookimpl
from ccproxy_core.config import Config, ProviderConfig
from tests.servers import ANTHROPIC_BODY, FIXED, OPENAI_BODY, ROOT, provider_config

SECRETS = ("sk-ant-upstream-SECRET", "sk-openai-upstream-SECRET")
CLIENT_KEY = "sk-proxy-client-SECRET-0001"

# The mock's numbers: 12 input tokens (OpenAI: prompt_tokens 12 of which 3 cached), 3 cache reads,
# one output token per streamed piece (5 by default, 1 in Anthropic's message_start).
ANTHROPIC_USAGE = {
    "input_tokens": 12, "output_tokens": 5, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 0
}
OPENAI_USAGE = {"input_tokens": 9, "output_tokens": 5, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 0}
# Default list prices (USD per million): claude-sonnet-4* 3/15/0.3/3.75, gpt-4o* 2.5/10/1.25.
ANTHROPIC_COST = (12 * 3.0 + 5 * 15.0 + 3 * 0.3) / 1e6
OPENAI_COST = (9 * 2.5 + 5 * 10.0 + 3 * 1.25) / 1e6


# -- helpers -------------------------------------------------------------------------------


def _has_field(cls: type, name: str) -> bool:
    return any(f.name == name for f in dataclasses.fields(cls))


def make_config(mock_url: str, log_path: Path | None, *, access: dict | None = None, **plugins: Any) -> dict[str, Any]:
    """The test config with the access log written to ``log_path`` and no retries (one attempt each)."""
    config = provider_config(mock_url)
    if _has_field(Config, "retries"):
        config["retries"] = {"max_attempts": 1}
    settings: dict[str, Any] = dict(plugins)
    if log_path is not None:
        settings["access_log"] = {"path": str(log_path), **(access or {})}
    config["plugins"] = settings
    return config


def log_lines(path: Path, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The access log's lines once there are at least ``count`` (it is written when a request ends)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} access log lines, found {len(lines)}")
        time.sleep(0.01)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(url + "/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def raw_request(port: int, path: str, body: dict, headers: dict[str, str]) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    head = f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    head += f"content-length: {len(data)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode() + data)
    return sock


def recv_until(sock: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    got = b""
    while marker not in got:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def frames(content: bytes) -> list[str]:
    return [f for f in content.decode().replace("\r\n", "\n").split("\n\n") if f.strip()]


# -- access log + usage + cost: every field ----------------------------------------------------


CASES = [
    ("/v1/messages", ANTHROPIC_BODY, True, "anthropic", ANTHROPIC_USAGE, ANTHROPIC_COST),
    ("/v1/messages", ANTHROPIC_BODY, False, "anthropic", ANTHROPIC_USAGE, ANTHROPIC_COST),
    ("/v1/chat/completions", OPENAI_BODY, True, "openai", OPENAI_USAGE, OPENAI_COST),
    ("/v1/chat/completions", OPENAI_BODY, False, "openai", OPENAI_USAGE, OPENAI_COST),
]


def test_access_log_fields_usage_and_cost_both_dialects_streamed_and_not(make_proxy, mock, tmp_path):
    log = tmp_path / "access.log"
    server = make_proxy(make_config(mock.url, log))
    responses = []
    for i, (path, body, stream, dialect, _, _) in enumerate(CASES):
        started = time.time()
        r = httpx.post(
            server.url + path, json={**body, "stream": stream}, headers={"x-request-id": f"obs-{i}"}, timeout=10
        )
        assert r.status_code == 200 and r.headers["x-ccproxy-request-id"] == f"obs-{i}"
        responses.append((r, started))
    lines = log_lines(log, len(CASES))
    assert len(lines) == len(CASES)
    for line, (r, started), (path, body, stream, dialect, usage, cost) in zip(lines, responses, CASES):
        assert line["request_id"] == r.headers["x-ccproxy-request-id"]
        assert line["upstream_request_id"].startswith("req_")
        assert line["pid"] == os.getpid()
        assert abs(datetime.fromisoformat(line["time"].replace("Z", "+00:00")).timestamp() - started) < 2
        assert (line["method"], line["route"], line["client_dialect"]) == ("POST", path, dialect)
        assert (line["provider"], line["upstream_dialect"]) == (dialect, dialect)
        assert line["model_requested"] == line["model"] == body["model"]
        assert line["stream"] is stream
        assert line["status"] == line["upstream_status"] == 200
        assert line["outcome"] == "completed"
        assert 0 < line["t_upstream_headers_ms"] <= line["t_first_byte_ms"] <= line["duration_ms"] < 5000
        assert line["bytes_sent"] == len(r.content)
        assert line["events_sent"] == (r.content.count(b"\n\n") if stream else 0)
        assert line["usage"] == usage
        assert line["usage_partial"] is False
        assert line["cost_usd"] == pytest.approx(cost)
        (attempt,) = line["attempts"]
        assert attempt == {**attempt, "provider": dialect, "model": body["model"], "status": 200, "error": None}
        assert 0 < attempt["elapsed_ms"] <= line["t_upstream_headers_ms"]
        assert line["fallback"] is False
        assert line["error"] is None and line["error_kind"] is None
        assert "request_body" not in line and "response_body" not in line
    # The streamed OpenAI client did not ask for usage: it was asked upstream, and hidden again.
    openai_stream = responses[2][0]
    assert b'"usage"' not in openai_stream.content


def test_alias_price_table_override_and_unpriced_model(make_proxy, mock, tmp_path):
    log = tmp_path / "access.log"
    config = make_config(
        mock.url, log,
        usage={"prices": {"claude-haiku-*": {"input": 2, "output": 4, "cache_read": 1}}, "default_prices": False},
    )
    config["models"] = {"team-fast": {"model": "claude-haiku-4-5"}}
    server = make_proxy(config)
    for model in ("team-fast", "claude-sonnet-4-5"):
        assert httpx.post(server.url + "/v1/messages", json={**ANTHROPIC_BODY, "model": model}).status_code == 200
    alias, unpriced = log_lines(log, 2)
    assert (alias["model_requested"], alias["model"]) == ("team-fast", "claude-haiku-4-5")
    # Your prices: input 2, output 4, cache_read 1; an unpriced cache_creation costs what input does.
    assert alias["cost_usd"] == pytest.approx((12 * 2 + 5 * 4 + 3 * 1) / 1e6)
    assert unpriced["usage"] == ANTHROPIC_USAGE and unpriced["cost_usd"] is None


@pytest.mark.parametrize("mode", [{}, {"x-mock-split": "1"}, {"x-mock-crlf": "1"}])
def test_openai_stream_usage_asked_upstream_client_gets_its_own_bytes(make_proxy, upstream, tmp_path, mode):
    log = tmp_path / "access.log"
    server = make_proxy(make_config(upstream.url, log))
    headers = {**FIXED, **mode}
    direct = httpx.post(upstream.url + "/v1/chat/completions", json=OPENAI_BODY, headers=headers, timeout=10)
    proxied = httpx.post(server.url + "/v1/chat/completions", json=OPENAI_BODY, headers=headers, timeout=10)
    sent = upstream.requests[-1].json()
    assert sent["stream_options"] == {"include_usage": True}  # asked upstream, in the client's own bytes...
    assert upstream.requests[-1].body == b'{"stream_options":{"include_usage": true},' + proxied.request.content[1:]
    assert proxied.content == direct.content  # ...and the client sees exactly what it asked for
    assert log_lines(log, 1)[0]["usage"] == OPENAI_USAGE
    # A client that asks for usage gets the usage chunk, and its body goes upstream untouched.
    asked = {**OPENAI_BODY, "stream_options": {"include_usage": True}}
    raw = json.dumps(asked).encode()
    proxied = httpx.post(
        server.url + "/v1/chat/completions", content=raw, headers={**headers, "content-type": "application/json"}
    )
    assert upstream.requests[-1].body == raw
    direct = httpx.post(upstream.url + "/v1/chat/completions", json=asked, headers=headers, timeout=10)
    assert proxied.content == direct.content
    usage_chunks = [f for f in frames(proxied.content) if '"choices":[]' in f]
    assert len(usage_chunks) == 1
    assert log_lines(log, 2)[1]["usage"] == OPENAI_USAGE


# -- disconnects and upstream failures -----------------------------------------------------------


@pytest.mark.parametrize("path,body,first", [
    ("/v1/messages", ANTHROPIC_BODY, b"message_start"),
    ("/v1/chat/completions", OPENAI_BODY, b"data:"),
])
def test_client_disconnect_logged_with_partial_usage(make_proxy, mock, tmp_path, path, body, first):
    log = tmp_path / "access.log"
    server = make_proxy(make_config(mock.url, log))
    slow = {"x-mock-delay": "100", "x-mock-events": "50", "x-request-id": "gone-1"}
    sock = raw_request(server.port, path, body, slow)
    assert first in recv_until(sock, first)
    sock.close()
    (line,) = log_lines(log, 1)
    assert line["request_id"] == "gone-1"
    assert line["outcome"] == "client_disconnected"
    assert line["status"] == 200 and line["t_first_byte_ms"] is not None
    assert line["duration_ms"] < 3000  # noticed at once, not after the 5 s the stream would take
    assert line["usage_partial"] is True
    if path == "/v1/messages":  # what message_start said is kept, not dropped
        assert line["usage"] == {**ANTHROPIC_USAGE, "output_tokens": 1}
        assert line["cost_usd"] == pytest.approx((12 * 3.0 + 1 * 15.0 + 3 * 0.3) / 1e6)
    else:  # OpenAI reports usage only at the end
        assert line["usage"] is None and line["cost_usd"] is None
    samples = scrape(server.url)
    assert metric(samples, "ccproxy_requests_total", outcome="client_disconnected") == 1
    assert metric(samples, "ccproxy_active_streams") == 0


def test_upstream_errors_logged_and_counted_by_kind(make_proxy, mock, tmp_path):
    log = tmp_path / "access.log"
    server = make_proxy(make_config(mock.url, log))
    url = server.url
    r = httpx.post(url + "/v1/messages", json={**ANTHROPIC_BODY, "stream": False}, headers={"x-mock-status": "500"})
    assert r.status_code == 500
    r = httpx.post(url + "/v1/chat/completions", json=OPENAI_BODY, headers={"x-mock-status": "429"})
    assert r.status_code == 429
    with pytest.raises(httpx.RemoteProtocolError):  # truncated after 3 events: visibly broken
        with httpx.stream("POST", url + "/v1/messages", json=ANTHROPIC_BODY, headers={"x-mock-drop-after": "3"}) as r:
            for _ in r.iter_raw():
                pass
    health = httpx.get(url + "/health/ready").json()["providers"]
    assert health["anthropic"]["last"]["ok"] is False and health["anthropic"]["last"]["error"]  # the drop
    assert health["openai"]["last"]["status"] == 429 and health["openai"]["last"]["ok"] is False
    assert httpx.post(url + "/v1/messages", json={**ANTHROPIC_BODY, "model": "nope"}).status_code == 404
    for path, body in (("/v1/messages", ANTHROPIC_BODY), ("/v1/chat/completions", OPENAI_BODY)):
        r = httpx.post(url + path, json=body, headers={"x-mock-inband-error": "1"})  # an error event after a 200
        assert r.status_code == 200 and b"error" in r.content
    relayed_500, relayed_429, dropped, rejected, inband_anthropic, inband_openai = log_lines(log, 6)

    assert relayed_500["status"] == 500 and relayed_500["outcome"] == "completed"
    assert relayed_500["error"] and relayed_500["error_kind"] == "api_error"
    assert relayed_500["attempts"][0]["status"] == 500 and relayed_500["usage"] is None
    assert relayed_429["status"] == 429 and relayed_429["stream"] is True
    assert relayed_429["error"] and relayed_429["provider"] == "openai"

    assert dropped["outcome"] == "upstream_error" and dropped["status"] == 200
    assert "closed" in dropped["error"] or "protocol" in dropped["error"]
    assert dropped["usage_partial"] is True and dropped["usage"]["input_tokens"] == 12
    assert dropped["events_sent"] >= 3

    assert rejected["outcome"] == "rejected" and rejected["status"] == 404
    assert rejected["provider"] is None and rejected["attempts"] == []
    assert "nope" in rejected["error"] and rejected["error_kind"] == "not_found_error"

    for line in (inband_anthropic, inband_openai):
        assert line["outcome"] == "completed" and line["error_kind"] == "in_band" and line["error"]
    assert inband_anthropic["usage"]["input_tokens"] == 12 and inband_anthropic["usage_partial"] is True

    samples = scrape(url)
    assert metric(samples, "ccproxy_upstream_errors_total", provider="anthropic", kind="in_band") == 1
    assert metric(samples, "ccproxy_upstream_errors_total", provider="openai", kind="in_band") == 1
    assert metric(samples, "ccproxy_upstream_errors_total", provider="anthropic", kind="http_500") == 1
    assert metric(samples, "ccproxy_upstream_errors_total", provider="openai", kind="http_429") == 1
    assert metric(samples, "ccproxy_upstream_errors_total", provider="anthropic", kind="stream_protocol") == 1
    assert metric(samples, "ccproxy_requests_total", status="404", outcome="rejected", provider="") == 1
    assert metric(samples, "ccproxy_requests_total", status="200", outcome="upstream_error") == 1
    assert metric(samples, "ccproxy_requests_total", status="429", outcome="completed", provider="openai") == 1



@pytest.mark.skipif(not _has_field(ProviderConfig, "fallbacks"), reason="provider fallbacks not in this build")
def test_fallback_attempts_logged_counted_and_in_health(make_proxy, mock, tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()  # nothing listens there: connection refused
    log = tmp_path / "access.log"
    config = make_config(mock.url, log)
    config["providers"] = {
        "dead": {"format": "anthropic", "base_url": dead_url, "api_key": "sk-ant-dead-SECRET-1",
                 "models": ["claude-*"], "fallbacks": ["anthropic"]},
        **config["providers"],
    }
    server = make_proxy(config)
    r = httpx.post(server.url + "/v1/messages", json=ANTHROPIC_BODY, timeout=10)
    assert r.status_code == 200
    (line,) = log_lines(log, 1)
    assert line["fallback"] is True and line["provider"] == "anthropic" and line["outcome"] == "completed"
    first, second = line["attempts"]
    assert first["provider"] == "dead" and first["status"] is None and "connect" in first["error"]
    assert second == {**second, "provider": "anthropic", "status": 200, "error": None}
    assert line["usage"] == ANTHROPIC_USAGE
    samples = scrape(server.url)
    assert metric(samples, "ccproxy_upstream_errors_total", provider="dead", kind="connect") == 1
    assert metric(samples, "ccproxy_requests_total", provider="anthropic", outcome="completed") == 1
    providers = httpx.get(server.url + "/health/ready").json()["providers"]
    assert providers["dead"]["last"]["ok"] is False and "connect" in providers["dead"]["last"]["error"]
    assert providers["anthropic"]["last"]["ok"] is True and providers["anthropic"]["last"]["status"] == 200


# -- metrics ---------------------------------------------------------------------------------------


class Boom:
    """A plugin that fails in two observer hooks: the requests go on and the failures are counted."""

    @hookimpl
    def ccproxy_upstream_headers(self, ctx, status, headers):
        raise RuntimeError("boom in headers")

    @hookimpl
    def ccproxy_stream_end(self, ctx):
        raise RuntimeError("boom at end")


def test_metrics_counts_histograms_tokens_cost_and_plugin_errors(make_proxy, mock, tmp_path):
    server = make_proxy(make_config(mock.url, None), plugins=[("boom", Boom())])
    for _ in range(3):
        assert httpx.post(server.url + "/v1/messages", json=ANTHROPIC_BODY).status_code == 200
    for _ in range(2):
        assert httpx.post(server.url + "/v1/chat/completions", json={**OPENAI_BODY, "stream": False}).status_code == 200
    # A stream in flight shows in the gauge.
    sock = raw_request(server.port, "/v1/messages", ANTHROPIC_BODY, {"x-mock-delay": "150", "x-mock-events": "3"})
    recv_until(sock, b"message_start")
    assert metric(scrape(server.url), "ccproxy_active_streams") == 1
    recv_until(sock, b"\r\n0\r\n\r\n")  # the whole response, to its last chunk
    sock.close()

    anthropic = {"route": "/v1/messages", "provider": "anthropic", "model": "claude-sonnet-4-5"}
    openai = {"route": "/v1/chat/completions", "provider": "openai", "model": "gpt-4o"}
    # The request is counted when it ends, just after its last byte went out.
    deadline = time.monotonic() + 5
    while metric(samples := scrape(server.url), "ccproxy_active_streams") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert metric(samples, "ccproxy_requests_total", **anthropic, status="200", outcome="completed") == 4
    assert metric(samples, "ccproxy_requests_total", **openai, status="200", outcome="completed") == 2
    assert metric(samples, "ccproxy_request_duration_seconds_count", **anthropic) == 4
    assert metric(samples, "ccproxy_request_duration_seconds_bucket", **anthropic, le="+Inf") == 4
    assert metric(samples, "ccproxy_request_duration_seconds_sum", **anthropic) >= 0.3  # the slow one
    assert metric(samples, "ccproxy_time_to_first_byte_seconds_count", **openai) == 2
    assert metric(samples, "ccproxy_active_streams") == 0
    a, o = {"provider": "anthropic", "model": "claude-sonnet-4-5"}, {"provider": "openai", "model": "gpt-4o"}
    assert metric(samples, "ccproxy_tokens_total", direction="input", **a) == 4 * 12
    assert metric(samples, "ccproxy_tokens_total", direction="output", **a) == 3 * 5 + 3
    assert metric(samples, "ccproxy_tokens_total", direction="cache_read", **a) == 4 * 3
    assert metric(samples, "ccproxy_tokens_total", direction="cache_creation", **a) == 0
    assert metric(samples, "ccproxy_tokens_total", direction="input", **o) == 2 * 9
    assert metric(samples, "ccproxy_tokens_total", direction="output", **o) == 2 * 5
    assert metric(samples, "ccproxy_tokens_total", direction="cache_read", **o) == 2 * 3
    assert metric(samples, "ccproxy_cost_usd_total", **o) == pytest.approx(2 * OPENAI_COST)
    slow_cost = (12 * 3 + 3 * 15 + 3 * 0.3) / 1e6  # 3 output tokens
    assert metric(samples, "ccproxy_cost_usd_total", **a) == pytest.approx(3 * ANTHROPIC_COST + slow_cost)
    # Plugin failures: counted per (plugin, hook), as the core's counter says.
    errors = server.app.ctx.plugins.errors
    assert errors[("boom", "ccproxy_stream_end")] == 6 and errors[("boom", "ccproxy_upstream_headers")] == 6
    assert metric(samples, "ccproxy_plugin_errors_total", plugin="boom", hook="ccproxy_stream_end") == 6
    assert metric(samples, "ccproxy_plugin_errors_total", plugin="boom", hook="ccproxy_upstream_headers") == 6
    assert metric(samples, "ccproxy_plugin_errors_total", plugin="metrics") == 0


def _record_plain(store, ctx, provider: str, model: str) -> None:
    """What a request adds, metric by metric through ``count``/``observe``: the reference for ``Totals.record``."""
    from ccproxy_plugins.metrics import DIRECTIONS

    route = ctx.route
    store.count("ccproxy_requests", (route, provider, model, str(ctx.status or ""), ctx.outcome or ""), 1, 2)
    series = (route, provider, model)
    if ctx.duration is not None:
        store.observe("ccproxy_request_duration_seconds", series, ctx.duration, 2)
    if ctx.t_first_byte is not None:
        store.observe("ccproxy_time_to_first_byte_seconds", series, ctx.t_first_byte, 2)
    if ctx.cost:
        store.count("ccproxy_cost_usd", (provider, model), ctx.cost, 1)
    if ctx.usage is not None:
        for direction, key in DIRECTIONS:
            if getattr(ctx.usage, key):
                store.count("ccproxy_tokens", (direction, provider, model), getattr(ctx.usage, key), 2)


def _random_requests(n: int, seed: int):
    """``n`` varied requests: statuses, outcomes, usage, costs, durations on and between bucket bounds,
    and (after the first 100) more model names than the label bounds keep."""
    import random

    from ccproxy_core import COMPLETED, UPSTREAM_ERROR, RequestContext, Usage
    from ccproxy_plugins.metrics import MAX_SERIES

    rng = random.Random(seed)
    for i in range(n):
        usage = Usage(*(rng.choice((0, 0, 1, 7, 100)) for _ in range(4))) if rng.random() < 0.7 else None
        model = f"m{rng.randrange(MAX_SERIES + 100)}" if i > 100 else rng.choice(("m", None, ""))
        yield RequestContext(f"r{i}", "POST", rng.choice(("/v1/messages", "/v1/chat/completions")), "anthropic",
                             provider=rng.choice(("p", "q", None)), model=model,
                             status=rng.choice((200, 429, None)), outcome=rng.choice((COMPLETED, UPSTREAM_ERROR, None)),
                             duration=rng.choice((None, 0.0, 0.05, 0.07, 1.0, 700.0, rng.random() * 20)),
                             t_first_byte=rng.choice((None, 0.01, 0.011, rng.random() * 2)), usage=usage,
                             cost=rng.choice((None, 0.0, 0.5, rng.random())))


def test_metrics_cached_series_count_what_the_plain_path_counts():
    """``Totals.record`` (series and labels found once per (route, provider, model, status, outcome))
    adds what the plain path adds through ``count``/``observe`` with the labels of ``labels_of``,
    folding past the model labels' limit and MAX_SERIES included."""
    from ccproxy_core import PluginSettings
    from ccproxy_plugins.metrics import MAX_SERIES, OTHER, ModelLabels, Settings, Totals, labels_of

    settings = Settings(PluginSettings("metrics", {}))
    cached, plain = Totals(settings), Totals(settings)
    cached_labels, plain_labels = ModelLabels(None, MAX_SERIES), ModelLabels(None, MAX_SERIES)
    for ctx in _random_requests(3 * MAX_SERIES, 17):
        cached.record(ctx, cached_labels)
        _record_plain(plain, ctx, *labels_of(ctx, plain_labels))

    def counts(totals: Totals) -> dict[str, dict[tuple[str, ...], list[float]]]:
        return {name: {labels: series[:-1] for labels, series in table.items()} for name, table in totals.tables.items()}
    assert counts(cached) == counts(plain)
    assert cached_labels == plain_labels
    requests = cached.tables["ccproxy_requests"]
    assert len(requests) >= MAX_SERIES and any(labels[2] == OTHER for labels in requests)  # folded past the bounds



def test_metrics_worker_files_hold_what_one_worker_reports(tmp_path):
    """Several workers: ``Files`` writes a worker's ``Totals`` so that prometheus-client's own
    ``MultiProcessCollector`` reports exactly what one worker reports from them (``_created`` aside),
    histograms, the model label folded past its bound and the active-streams gauge included; a later write carries only what
    changed, and counts left in the files by an earlier process with the same pid are kept."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    from ccproxy_core import PluginSettings
    from ccproxy_plugins.metrics import OTHER, Files, ModelLabels, Settings, Totals

    def samples(text: bytes) -> dict:
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text.decode())
                for sample in family.samples if not sample.name.endswith("_created")}

    def from_files() -> dict:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(tmp_path))
        return samples(generate_latest(registry))

    settings = Settings(PluginSettings("metrics", {"duration_buckets": [0.05, 1, 30]}))
    labels = ModelLabels(None, 40)
    requests = list(_random_requests(600, 5))
    earlier = Totals(settings)  # a process with this pid before (its files were left behind)
    for ctx in requests[:50]:
        earlier.record(ctx, ModelLabels(None, 40))
    earlier_files = Files(str(tmp_path), earlier)
    earlier_files.write()
    earlier_files.close()
    left = from_files()

    totals = Totals(settings)
    files = Files(str(tmp_path), totals)
    for ctx in requests[:300]:
        totals.record(ctx, labels)
    totals.add_active(3)
    files.write()
    mine = samples(generate_latest(totals.registry))
    assert len(mine) > 1000 and any(("model", OTHER) in key[1] for key in mine)
    assert from_files() == {key: mine.get(key, 0.0) + left.get(key, 0.0) for key in mine.keys() | left.keys()}

    written = []
    files.files["counter"].write_value = lambda *args, real=files.files["counter"].write_value: (
        written.append(args[0]), real(*args))
    files.write()
    assert written == []  # nothing changed
    for ctx in requests[300:]:
        totals.record(ctx, labels)
    totals.add_active(-2)
    files.write()
    assert 0 < len(written) < sum(map(len, files.written.values())) / 2
    mine = samples(generate_latest(totals.registry))
    assert mine[("ccproxy_active_streams", ())] == 1
    assert from_files() == {key: mine.get(key, 0.0) + left.get(key, 0.0) for key in mine.keys() | left.keys()}


def test_metrics_worker_writes_wait_longer_when_writing_is_slow(tmp_path, monkeypatch, caplog):
    """A worker's writes take at most ~2 % of its time: the next one waits 50 times the last one's
    duration when that is longer than WRITE_DELAY (many series), and WRITE_DELAY again after a fast one.
    A write that fails (a full disk) is logged once, not per attempt, and the next change tries again."""
    import asyncio
    import types

    from ccproxy_core import PluginSettings
    from ccproxy_plugins import metrics as module

    metrics = module.Metrics(module.Settings(PluginSettings("metrics", {})), None, str(tmp_path), None)
    clock = iter([10.0, 10.02, 20.0, 20.0001])  # a write of 20 ms, then one of 0.1 ms
    monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    metrics.write()
    assert metrics.delay == pytest.approx(1.0)

    async def change() -> float:
        metrics.changed()
        when = metrics._timer.when() - asyncio.get_running_loop().time()
        metrics._timer.cancel()
        return when
    assert asyncio.run(change()) > 0.9
    metrics.write()
    assert metrics.delay == module.WRITE_DELAY
    monkeypatch.undo()

    def full() -> None:
        raise OSError(28, "No space left on device")
    real, metrics.files.write = metrics.files.write, full
    with caplog.at_level(logging.WARNING, "ccproxy.metrics"):
        metrics.write()
        metrics.write()  # logged once until a write works
        assert caplog.text.count("No space left on device") == 1 and not metrics.pending
        metrics.files.write = real
        metrics.write()
        assert not metrics.failing
    metrics.close()
    assert metrics.files is None and not list(tmp_path.glob("gauge_live*"))  # the live gauge marked dead


# -- secrets ---------------------------------------------------------------------------------------


def test_secrets_never_logged_even_with_bodies(make_proxy, mock, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    log = tmp_path / "access.log"
    config = make_config(mock.url, log, access={"log_bodies": True, "redact": ["client-opaque-token-42"]})
    server = make_proxy(config)
    client = {"x-api-key": CLIENT_KEY, "authorization": f"Bearer {CLIENT_KEY}"}
    text = f"marker-1 {SECRETS[0]} {SECRETS[1]} {CLIENT_KEY} client-opaque-token-42"
    body = {**ANTHROPIC_BODY, "stream": False, "messages": [{"role": "user", "content": text}],
            "metadata": {"user_id": "u1", "api_key": "plain-value-in-a-key-field"}}
    # The echo answer holds the request as the upstream saw it: the provider's key in its headers.
    r = httpx.post(server.url + "/v1/messages", json=body, headers={**client, "x-mock-echo": "1"})
    assert r.status_code == 200 and SECRETS[0] in r.text
    openai_body = {**OPENAI_BODY, "messages": body["messages"]}
    r = httpx.post(server.url + "/v1/chat/completions", json=openai_body, headers=client)
    assert r.status_code == 200
    r = httpx.post(server.url + "/v1/messages", json=body, headers={**client, "x-mock-status": "401"})
    assert r.status_code == 401
    lines = log_lines(log, 3)
    written = log.read_text()
    assert "marker-1" in written and "[REDACTED]" in written  # bodies were logged, keys were not
    assert lines[0]["request_body"]["metadata"] == {"user_id": "u1", "api_key": "[REDACTED]"}
    assert lines[0]["response_body"]["path"] == "/v1/messages"  # the echo, redacted
    for haystack in (written, caplog.text):
        for secret in (*SECRETS, CLIENT_KEY, "client-opaque-token-42"):
            assert secret not in haystack
    assert caplog.text.count('"request_id"') >= 3  # the lines also went to the ccproxy.access logger


def test_access_lines_skip_logging_only_when_nothing_else_listens(monkeypatch):
    """Logging not configured: the plugin's own stderr handler gets each line, without a LogRecord.
    Once anything else listens (a handler up the tree, a filter), the line goes through logging."""
    import io

    from ccproxy_core import RequestContext
    from ccproxy_core.config import build_config
    from ccproxy_core.plugins import PluginSettings
    from ccproxy_plugins import access_log

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    root, access = logging.getLogger(), logging.getLogger("ccproxy.access")
    monkeypatch.setattr(root, "handlers", [])  # pytest's own capture handlers
    monkeypatch.setattr(access, "handlers", [])
    monkeypatch.setattr(access, "filters", [])
    config = build_config(provider_config("http://127.0.0.1:9"), "test-config")
    log = access_log.ccproxy_configure(config, PluginSettings("access_log", {}, "test-config"))
    log.ccproxy_startup()
    records: list[logging.LogRecord] = []
    make_record = logging.Logger.makeRecord
    monkeypatch.setattr(logging.Logger, "makeRecord", lambda *a, **k: records.append(r := make_record(*a, **k)) or r)
    ctx = RequestContext("req-1", "POST", "/v1/messages", "anthropic", outcome="completed", status=200)

    log.ccproxy_stream_end(ctx)  # outside a running loop: written at once
    assert [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()] == ["req-1"]
    assert records == []

    heard: list[str] = []
    listener = logging.Handler()
    listener.emit = lambda record: heard.append(record.getMessage())  # type: ignore[method-assign]
    monkeypatch.setattr(root, "handlers", [listener])
    log.ccproxy_stream_end(ctx)
    assert len(heard) == 1 and len(records) == 1 and len(stream.getvalue().splitlines()) == 2
    monkeypatch.setattr(root, "handlers", [])
    access.addFilter(lambda record: False)  # a filter drops the line, as logging does
    log.ccproxy_stream_end(ctx)
    assert len(stream.getvalue().splitlines()) == 2 and len(records) == 2



def test_access_log_redacts_every_configured_proxy_key():
    """The auth plugin's keys are secrets of the log whatever their form: plain, a mapping with limits, admin."""
    from ccproxy_core.config import build_config
    from ccproxy_core.plugins import PluginSettings
    from ccproxy_plugins import access_log

    raw = provider_config("http://127.0.0.1:9")
    raw["plugins"] = {"auth": {"keys": ["plain-proxy-key-1", {"name": "team", "key": "mapped-proxy-key-2", "rpm": 5}],
                               "admin_keys": ["admin-proxy-key-3"]}}
    config = build_config(raw, "test-config")
    log = access_log.ccproxy_configure(config, PluginSettings("access_log", {}, "test-config"))
    text = "plain-proxy-key-1 / mapped-proxy-key-2 / admin-proxy-key-3"
    assert log.lines.redactor.value(text) == "[REDACTED] / [REDACTED] / [REDACTED]"


def test_access_lines_are_made_when_their_batch_is_written(monkeypatch, tmp_path):
    """Inside a running loop a line is kept as fields and made (redacted JSON) when its batch is
    written: at the end of the loop iteration, or at once when MAX_PENDING lines wait."""
    import asyncio
    import io

    from ccproxy_core import RequestContext
    from ccproxy_core.config import build_config
    from ccproxy_core.plugins import PluginSettings
    from ccproxy_plugins import access_log

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.setattr(logging.getLogger("ccproxy.access"), "handlers", [])
    monkeypatch.setattr(access_log, "MAX_PENDING", 5)
    secret = SECRETS[0]  # the configured provider key
    path = tmp_path / "access.log"
    config = build_config(provider_config("http://127.0.0.1:9"), "test-config")
    log = access_log.ccproxy_configure(config, PluginSettings("access_log", {"path": str(path)}, "test-config"))
    log.ccproxy_startup()

    async def requests_end(count: int) -> list[str]:
        for i in range(count):
            ctx = RequestContext(f"req-{i}", "POST", "/v1/messages", "anthropic", outcome="completed", status=200)
            ctx.model = f"model {secret}"  # a free-text field holding a secret (no key-like shape)
            log.ccproxy_stream_end(ctx)
        return stream.getvalue().splitlines()

    assert asyncio.run(requests_end(3)) == []  # nothing written within the iteration that ended them
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == ["req-0", "req-1", "req-2"]
    assert secret not in stream.getvalue() and json.loads(lines[0])["model"] == "model [REDACTED]"
    assert path.read_text().splitlines() == lines  # the file gets the same lines, made once

    stream.truncate(0)
    stream.seek(0)
    assert len(asyncio.run(requests_end(6))) == 5  # the fifth waiting line wrote the batch at once
    log.ccproxy_shutdown()  # the sixth waited for the next write (FLUSH_INTERVAL after the last)
    assert [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()][-2:] == ["req-4", "req-5"]

# -- switching off, health -----------------------------------------------------------------------


def test_plugins_switch_off_in_yaml(make_proxy, upstream, tmp_path):
    log = tmp_path / "access.log"
    config = make_config(upstream.url, log)
    config["plugins"]["disabled"] = ["metrics", "usage", "health"]
    server = make_proxy(config)
    raw = json.dumps(OPENAI_BODY).encode()
    r = httpx.post(server.url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert upstream.requests[-1].body == raw  # no include_usage asked for without the usage plugin
    assert httpx.get(server.url + "/metrics").status_code == 404
    assert httpx.get(server.url + "/health/ready").status_code == 404
    assert httpx.get(server.url + "/health").status_code == 200
    (line,) = log_lines(log, 1)
    assert line["usage"] is None and line["cost_usd"] is None and line["outcome"] == "completed"
    enabled = {p["name"]: p["enabled"] for p in httpx.get(server.url + "/plugins").json()}
    assert enabled["metrics"] is enabled["usage"] is enabled["health"] is False and enabled["access_log"] is True


class ReadinessProbe:
    """Asks ``/health/ready`` over the socket while start-up is still running."""

    port = 0
    seen: list[Any]

    @hookimpl
    async def ccproxy_startup(self, app, config):
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{self.port}/health/ready", timeout=3)
            self.seen = [r.status_code, r.json()["status"]]


def test_health_ready_503_until_started_then_provider_results(mock, tmp_path):
    from tests.servers import ProxyThread

    probe = ReadinessProbe()
    server = ProxyThread(make_config(mock.url, None), plugins=[("probe", probe)])
    probe.port = server.port
    with server:
        assert probe.seen == [503, "starting"]
        r = httpx.get(server.url + "/health/ready")
        assert r.status_code == 200
        ready = r.json()
        assert ready["status"] == "ready" and ready["pid"] == os.getpid()
        assert ready["config"]["loaded"] is True and ready["plugins"]["started"] is True
        assert {"access_log", "metrics", "usage", "health", "probe"} <= set(ready["plugins"]["enabled"])
        assert ready["providers"] == {"anthropic": {"format": "anthropic", "last": None},
                                      "openai": {"format": "openai", "last": None}}
        before = time.time()
        httpx.post(server.url + "/v1/messages", json=ANTHROPIC_BODY, headers={"x-request-id": "h-1"})
        httpx.post(server.url + "/v1/chat/completions", json=OPENAI_BODY, headers={"x-mock-status": "503"})
        providers = httpx.get(server.url + "/health/ready").json()["providers"]
        last = providers["anthropic"]["last"]
        assert last["ok"] is True and last["status"] == 200 and last["error"] is None
        assert last["request_id"] == "h-1" and before - 1 < last["at"] <= time.time()
        assert last["elapsed_ms"] >= 0 and last["model"] == "claude-sonnet-4-5"
        assert providers["openai"]["last"]["ok"] is False and providers["openai"]["last"]["status"] == 503
        assert "sk-" not in httpx.get(server.url + "/health/ready").text


# -- several workers ---------------------------------------------------------------------------------


def test_metrics_add_up_across_worker_processes(mock, tmp_path, sanic_port):
    """``sanic app.app --workers 3``: whichever worker answers /metrics reports all workers' requests."""
    log = tmp_path / "access.log"
    config = make_config(mock.url, log)
    (tmp_path / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    port = sanic_port
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")}
    env["CCPROXY_CONFIG"] = str(tmp_path / "config.yaml")
    pattern = os.path.join(tempfile.gettempdir(), "ccproxy-metrics-*")
    before = set(glob.glob(pattern))
    output = open(tmp_path / "server.out", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sanic", "app:app", "--host", "127.0.0.1", "--port", str(port), "--workers", "3",
         "--no-motd", "--no-access-logs"],
        cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
    )
    try:
        # All three workers up, not just the one that answers first: a SIGINT while a worker still
        # boots leaves Sanic's main process hung or failing (a Sanic limit), and on a loaded machine
        # the last worker can still be booting when the requests below are done.
        deadline = time.monotonic() + 30
        while True:
            try:
                booted = (tmp_path / "server.out").read_text().count("Worker ready") == 3
                if booted and httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.out").read_text()
            time.sleep(0.05)
        created = set(glob.glob(pattern)) - before
        assert created, "the main process set up a multiprocess directory"
        n = 30

        def send(i: int) -> int:
            # A new connection each time and several at once (slow streams): the workers share them.
            path, body = ("/v1/messages", ANTHROPIC_BODY) if i % 2 else ("/v1/chat/completions", OPENAI_BODY)
            with httpx.Client() as client:
                return client.post(url + path, json={**body, "stream": i % 3 != 0}, headers={"x-mock-delay": "20"},
                                   timeout=10).status_code

        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(send, range(n))) == [200] * n
        lines = log_lines(log, n)
        assert len({line["pid"] for line in lines}) >= 2, "the requests were served by several workers"
        # Each worker saw only some of them; any worker's answer must hold them all, once each worker
        # wrote its files (at most WRITE_DELAY after its last request; bounded here for a loaded machine).
        deadline = time.monotonic() + 10
        while metric(scrape(url), "ccproxy_requests_total") != n:
            assert time.monotonic() < deadline, "the workers' counts never added up"
            time.sleep(0.05)
        for _ in range(6):
            samples = scrape(url)  # a new connection: any worker may answer
            assert metric(samples, "ccproxy_requests_total") == n
            assert metric(samples, "ccproxy_requests_total", outcome="completed", status="200") == n
            assert metric(samples, "ccproxy_request_duration_seconds_count") == n
            assert metric(samples, "ccproxy_tokens_total", direction="cache_read") == 3 * n
            assert metric(samples, "ccproxy_active_streams") == 0
    finally:
        proc.send_signal(2)  # SIGINT: Sanic's graceful stop
        try:
            proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
            output.close()
    assert proc.returncode == 0, (tmp_path / "server.out").read_text()
    assert not any(os.path.exists(d) for d in created), "the multiprocess directory is removed at stop"
    assert not any(s in (tmp_path / "server.out").read_text() for s in SECRETS)


# -- translated requests: usage from the upstream's dialect ---------------------------------------------


def _translate_plugin() -> list[tuple[str, object]]:
    from importlib.metadata import entry_points

    if any(ep.name == "translate" for ep in entry_points(group="ccproxy")):
        return []
    translate = pytest.importorskip("ccproxy_plugins.translate")
    return [("translate", translate)]


@pytest.mark.parametrize("stream", [True, False])
def test_usage_of_translated_requests_comes_from_the_upstream(make_proxy, mock, tmp_path, stream):
    log = tmp_path / "access.log"
    server = make_proxy(make_config(mock.url, log), plugins=_translate_plugin())
    r = httpx.post(
        server.url + "/v1/chat/completions", json={**OPENAI_BODY, "model": "claude-sonnet-4-5", "stream": stream}
    )
    assert r.status_code == 200
    r = httpx.post(server.url + "/v1/messages", json={**ANTHROPIC_BODY, "model": "gpt-4o", "stream": stream})
    assert r.status_code == 200
    to_anthropic, to_openai = log_lines(log, 2)
    assert (to_anthropic["client_dialect"], to_anthropic["upstream_dialect"]) == ("openai", "anthropic")
    assert to_anthropic["usage"] == ANTHROPIC_USAGE and to_anthropic["cost_usd"] == pytest.approx(ANTHROPIC_COST)
    assert (to_openai["client_dialect"], to_openai["upstream_dialect"]) == ("anthropic", "openai")
    assert to_openai["usage"] == OPENAI_USAGE and to_openai["cost_usd"] == pytest.approx(OPENAI_COST)


@pytest.mark.parametrize("plugin,settings,where", [
    ("usage", {"prices": {"gpt-*": {"input": "cheap", "output": 1}}}, "plugins.usage.prices.gpt-*.input"),
    ("usage", {"price": {}}, "plugins.usage.price"),
    ("access_log", {"log_bodies": "sometimes"}, "plugins.access_log.log_bodies"),
    ("metrics", {"path": "metrics"}, "plugins.metrics.path"),
    ("health", {"colour": "green"}, "plugins.health.colour"),
])
def test_bad_settings_stop_start_up_with_one_line(mock, plugin, settings, where):
    from ccproxy_core import ConfigError
    from tests.servers import ProxyThread

    config = make_config(mock.url, None, **{plugin: settings})
    with pytest.raises(ConfigError, match=where.replace("*", r"\*")) as caught:
        server = ProxyThread(config)  # route-adding plugins check their settings while the app is built
        server.start()  # the others at start-up
        server.stop()
    assert "\n" not in str(caught.value)
