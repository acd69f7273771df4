"""Bounds on what a client controls (issue 11): the key before the body, in-flight body memory,
deadlines for the head and the body, model names and metric labels, deep and duplicate JSON,
and what ``/health/ready`` shows. Real sockets throughout; memory and ``--workers`` in a real
``sanic app.app`` process."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ccproxy_core import PermissionDenied, hookimpl
from ccproxy_core.config import build_config
from ccproxy_core import intake
from ccproxy_core.intake import parse_body, with_members, with_model
from ccproxy_core.errors import InvalidRequest
from ccproxy_plugins.metrics import MAX_MODEL_LABELS, OTHER, ModelLabels
from tests.servers import ANTHROPIC_BODY, PATHS, ROOT, provider_config

KEY = "ccp-client-KEY-bounds-1234567890"
DIALECTS = ["anthropic", "openai"]


def assert_dialect_error(dialect: str, raw: bytes, status: int, needle: str = "") -> dict:
    """``raw`` (a whole HTTP/1.1 response) is ``status`` with an error body in ``dialect``'s shape."""
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), raw[:300]
    data = json.loads(body)
    if dialect == "anthropic":
        assert data["type"] == "error" and set(data["error"]) == {"type", "message"}, data
    else:
        assert set(data["error"]) >= {"message", "type", "code"} and "type" not in data, data
    assert needle in data["error"]["message"], data
    return data


def head(path: str, length: int | None = None, key: bool = False, extra: str = "", close: bool = True) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: x", "content-type: application/json"]
    if length is not None:
        lines.append(f"content-length: {length}")
    if key:
        lines.append(f"x-api-key: {KEY}")
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def read_response(sock: socket.socket, timeout: float = 10, data: bytes = b"") -> bytes:
    """One whole response (``content-length`` framed, ``data`` its start if already read), or what
    came before the peer closed."""
    sock.settimeout(timeout)
    while True:
        end = data.find(b"\r\n\r\n")
        if end != -1:
            match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", data[:end])
            if match and len(data) >= end + 4 + int(match.group(1)):
                return data
        try:
            chunk = sock.recv(65536)
        except ConnectionError:
            return data
        if not chunk:
            return data
        data += chunk


def exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_response(sock, timeout)


class Recorder:
    def __init__(self) -> None:
        self.ends: list[Any] = []

    @hookimpl
    def ccproxy_stream_end(self, ctx):
        self.ends.append(ctx)

    def wait(self, n: int = 1, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ends) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.ends) >= n


def keyed_config(mock_url: str, **limits: Any) -> dict[str, Any]:
    config = provider_config(mock_url, plugins={"auth": {"keys": [KEY]}})
    if limits:
        config["limits"] = limits
    return config


# -- the key before the body ---------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_keyless_request_is_401_whatever_its_body(make_proxy, upstream, dialect):
    server = make_proxy(keyed_config(upstream.url))
    path, _ = PATHS[dialect]
    for body in (b"{not json", b"[" * 100_000 + b"]" * 100_000, b'{"model": "' + b"x" * 5000 + b'"}', b""):
        reply = exchange(server.port, head(path, len(body)) + body)
        assert_dialect_error(dialect, reply, 401, "missing proxy key")
    # A body larger than max_body_bytes: 401 too, decided before anything is read (not 413).
    reply = exchange(server.port, head(path, 10**9))
    assert_dialect_error(dialect, reply, 401)
    assert upstream.upstream.requests == []


def test_ccproxy_request_head_refuses_before_the_body_is_read(make_proxy, upstream):
    seen: list[Any] = []

    class Gate:
        @hookimpl
        def ccproxy_request_head(self, ctx, request):
            seen.append((ctx.body, request.body, ctx.client_dialect))
            if request.headers.get("user-agent", "").startswith("bad-bot/"):
                raise PermissionDenied("this client is not allowed")

    recorder = Recorder()
    server = make_proxy(plugins=[("gate", Gate()), ("recorder", recorder)])
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        # Only the head of a 1 MB body: the answer comes without the body.
        sock.sendall(head("/v1/chat/completions", 1_000_000, extra="user-agent: bad-bot/1\r\n"))
        assert_dialect_error("openai", read_response(sock), 403, "not allowed")
    assert seen == [(None, b"", "openai")]
    recorder.wait()
    assert recorder.ends[0].outcome == "rejected" and recorder.ends[0].status == 403
    raw = json.dumps({**ANTHROPIC_BODY, "stream": False}).encode()
    reply = exchange(server.port, head("/v1/messages", len(raw), extra="user-agent: good/1\r\n") + raw)
    assert reply.startswith(b"HTTP/1.1 200 ")


def _server_process(tmp_path: Path, config: dict[str, Any], workers: int) -> tuple[subprocess.Popen, int]:
    path = tmp_path / "ccproxy.yaml"
    path.write_text(yaml.safe_dump(config))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CCPROXY_CONFIG": str(path)}
    mode = ["--single-process"] if workers == 1 else ["--workers", str(workers)]
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/sanic"), "app.app", "--host", "127.0.0.1", "--port", str(port), *mode],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while len(_workers(proc)) < workers or not _answers(port):
        assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
        time.sleep(0.1)
    return proc, port


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _workers(proc: subprocess.Popen) -> list[int]:
    """The processes serving requests: Sanic's worker children, or the process itself."""
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in out] or [proc.pid]


def _memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def test_keyless_24_mib_bodies_leave_the_worker_near_idle(tmp_path, mock):
    """10 keyless connections each sending 24 MiB: a 401 each and the worker's peak RSS stays
    near idle (it grew by ~600 MiB when the body was read and parsed before the key check)."""
    config = keyed_config(mock.url)
    config["plugins"]["disabled"] = ["example"]
    proc, port = _server_process(tmp_path, config, workers=1)
    try:
        (pid,) = _workers(proc)
        idle_rss, idle_peak = _memory_mib(pid)
        size = 24 * 1024 * 1024
        payload = (b'{"model": "claude-sonnet-4-5", "x": "' + b"a" * size)[:size - 2] + b'"}'
        replies: list[bytes] = []

        def one() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                sock.sendall(head("/v1/messages", len(payload)) + payload)
                replies.append(read_response(sock, 60))

        threads = [threading.Thread(target=one) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        rss, peak = _memory_mib(pid)
        assert len(replies) == 10
        for reply in replies:
            assert_dialect_error("anthropic", reply, 401)
        assert peak - max(idle_peak, idle_rss) < 24, (idle_rss, idle_peak, rss, peak)
    finally:
        proc.terminate()
        proc.wait(20)


# -- body size and in-flight body memory -----------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_in_flight_bodies_are_bounded_per_worker(make_proxy, upstream, dialect):
    server = make_proxy(keyed_config(upstream.url, max_inflight_body_bytes=100_000, max_body_bytes=90_000))
    path, body = PATHS[dialect]
    raw = json.dumps({**body, "stream": False, "pad": "x" * 60_000}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as first:
        first.sendall(head(path, len(raw), key=True) + raw[:1000])  # holds ~62 kB of the budget
        time.sleep(0.3)
        reply = exchange(server.port, head(path, 50_000, key=True))  # would pass 100,000: refused unread
        data = assert_dialect_error(dialect, reply, 503, "max_inflight_body_bytes")
        assert re.search(rb"(?i)\r\nretry-after: 1\r\n", reply)
        assert data["error"]["type" if dialect == "anthropic" else "code"] == "overloaded_error"
        # Chunked bodies are counted as they arrive.
        chunked = head(path, key=True, extra="transfer-encoding: chunked\r\n")
        piece = b"x" * 20_000
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as second:
            second.sendall(chunked)
            for _ in range(3):
                second.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            assert_dialect_error(dialect, read_response(second), 503, "max_inflight_body_bytes")
        first.sendall(raw[1000:])
        assert read_response(first).startswith(b"HTTP/1.1 200 ")
    assert server.app.ctx.intake.inflight == 0
    # The whole budget is free again; max_body_bytes still gives 413, by content-length or as chunks arrive.
    assert exchange(server.port, head(path, len(raw), key=True) + raw).startswith(b"HTTP/1.1 200 ")
    assert_dialect_error(dialect, exchange(server.port, head(path, 90_001, key=True)), 413, "max_body_bytes")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(chunked)
        for _ in range(5):
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        assert_dialect_error(dialect, read_response(sock), 413, "max_body_bytes")
    assert server.app.ctx.intake.inflight == 0


# -- deadlines -----------------------------------------------------------------------------------------


def drip(sock: socket.socket, data: bytes, every: float, until: float) -> bytes:
    """Send ``data`` a byte every ``every`` seconds until an answer or a close, or ``until`` seconds."""
    start = time.monotonic()
    sock.settimeout(every)
    for i in range(len(data)):
        if time.monotonic() - start > until:
            break
        try:
            sock.sendall(data[i : i + 1])
        except OSError:
            return b""
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, socket.timeout):
            continue
        except ConnectionError:
            return b""
        return read_response(sock, 5, chunk) if chunk else b""
    return b"<no answer>"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_head_dripped_byte_by_byte_gets_408_at_its_deadline(make_proxy, upstream, dialect):
    server = make_proxy(keyed_config(upstream.url, head_timeout=1.0))
    path, _ = PATHS[dialect]
    data = head(path, 10, key=True) + b"x" * 10
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(data[:40])  # the request line and a little more
        start = time.monotonic()
        reply = drip(sock, data[40:], every=0.2, until=5)
        took = time.monotonic() - start
    assert_dialect_error(dialect, reply, 408, "limits.head_timeout")
    assert took > 0.8, took  # not before the deadline; an idle timer would never answer within `until`


def test_head_without_its_request_line_is_closed_at_its_deadline(make_proxy, upstream):
    server = make_proxy(keyed_config(upstream.url, head_timeout=1.0))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        start = time.monotonic()
        reply = drip(sock, b"POST /v1/messages HTTP/1.1", every=0.2, until=5)
        took = time.monotonic() - start
    assert reply == b"" and took > 0.8, (reply, took)  # an idle timer would give "<no answer>"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_body_dripped_byte_by_byte_gets_408_in_dialect_at_its_deadline(make_proxy, upstream, dialect):
    recorder = Recorder()
    config = keyed_config(upstream.url, body_timeout=1.0)
    server = make_proxy(config, plugins=[("recorder", recorder)])
    path, body = PATHS[dialect]
    raw = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head(path, len(raw), key=True))
        start = time.monotonic()
        reply = drip(sock, raw, every=0.2, until=5)
        took = time.monotonic() - start
        assert sock.recv(1) == b""  # and the connection is closed
    assert_dialect_error(dialect, reply, 408, "limits.body_timeout")
    assert took > 0.8, took  # not before the deadline; an idle timer would never answer within `until`
    recorder.wait()
    assert recorder.ends[0].outcome == "rejected" and recorder.ends[0].status == 408
    assert server.app.ctx.intake.inflight == 0
    assert upstream.upstream.requests == []


def test_body_of_other_routes_and_the_rest_of_a_refused_body_have_the_deadline_too(make_proxy, upstream):
    class Echo:
        @hookimpl
        def ccproxy_register_routes(self, app):
            @app.post("/echo")  # Sanic reads the body before the handler
            async def echo(request):
                from sanic import response

                return response.raw(request.body)

    server = make_proxy(keyed_config(upstream.url, body_timeout=1.0), plugins=[("echo", Echo())])
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"POST /echo HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\ncontent-length: 50\r\n\r\n".encode())
        start = time.monotonic()
        assert_dialect_error("openai", drip(sock, b"x" * 50, every=0.2, until=5), 408, "limits.body_timeout")
        assert time.monotonic() - start > 0.8
    # Answered before its body (a GET route; a request without a key): the rest is read and
    # dropped until the body's deadline, then the connection is cut.
    for data in (b"GET /health HTTP/1.1\r\nhost: x\r\ncontent-length: 50\r\n\r\n", head("/v1/messages", 50, close=False)):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(data)
            start = time.monotonic()
            assert re.match(rb"HTTP/1.1 (200|401) ", read_response(sock))
            assert drip(sock, b"x" * 50, every=0.2, until=5) == b""
            assert time.monotonic() - start > 0.8


def test_drip_connections_do_not_hold_up_a_normal_request(make_proxy, upstream):
    server = make_proxy(keyed_config(upstream.url, head_timeout=2.0, body_timeout=2.0))
    held = []
    try:
        for i in range(50):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(head("/v1/messages", 1000, key=True) if i % 2 else b"POST /v1/messages HTTP/1.1\r\nhost")
            held.append(sock)
        time.sleep(0.5)
        # Served while they are held (no wall-clock bound: on a loaded machine "promptly" is not ours
        # to promise; what the drips must not do is take the worker's connections or requests).
        r = httpx.post(server.url + "/v1/messages", json={**ANTHROPIC_BODY, "stream": False},
                       headers={"x-api-key": KEY}, timeout=10)
        assert r.status_code == 200
        # And each of them is ended at its deadline: a 408 where the path is known, else a close.
        time.sleep(2.5)
        answers = [read_response(sock, 5) for sock in held]
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers[1::2]), answers[1][:200]
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers[0::2]), answers[0][:200]
    finally:
        for sock in held:
            sock.close()


def test_keep_alive_stays_an_idle_timer_between_requests(mock, upstream):
    from tests.servers import ProxyThread

    server = ProxyThread(keyed_config(upstream.url, head_timeout=5.0))
    server.app.config.KEEP_ALIVE_TIMEOUT = 2
    with server:
        raw = json.dumps({**ANTHROPIC_BODY, "stream": False}).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            # Requests 0.6 s apart for 3 s, longer than the keep-alive timeout: the timer restarts
            # (a deadline from the connection's start would cut it).
            for _ in range(5):
                sock.sendall(head("/v1/messages", len(raw), key=True, close=False) + raw)
                assert read_response(sock).startswith(b"HTTP/1.1 200 ")
                time.sleep(0.6)
            start = time.monotonic()
            sock.settimeout(10)
            assert sock.recv(1) == b""  # then closed once idle for the keep-alive timeout
            assert time.monotonic() - start > 0.5


def test_deadlines_hold_under_sanic_with_workers(tmp_path, mock):
    """``sanic app.app --workers 2``: each worker serves with the deadline protocol."""
    config = keyed_config(mock.url, head_timeout=1.0, body_timeout=1.0)
    config["plugins"]["disabled"] = ["example"]
    proc, port = _server_process(tmp_path, config, workers=2)
    try:
        for _ in range(4):  # connections spread over both workers
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n")
                start = time.monotonic()
                reply = drip(sock, b"x-slow: " + b"y" * 40, every=0.2, until=5)
                assert_dialect_error("anthropic", reply, 408, "limits.head_timeout")
                assert time.monotonic() - start > 0.8
    finally:
        proc.terminate()
        proc.wait(20)


# -- model names and metric labels -----------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_model_longer_than_max_model_length_is_400_and_never_logged(make_proxy, upstream, dialect, caplog):
    server = make_proxy(keyed_config(upstream.url))
    path, body = PATHS[dialect]
    prefix = "claude-" if dialect == "anthropic" else "gpt-"
    model = prefix + "x" * 5 * 1024
    caplog.set_level(logging.INFO, logger="ccproxy")
    raw = json.dumps({**body, "model": model}).encode()
    reply = exchange(server.port, head(path, len(raw), key=True) + raw)
    assert_dialect_error(dialect, reply, 400, "limits.max_model_length")
    assert b"xxxxxxxxxx" not in reply
    ok = prefix + "y" * (256 - len(prefix))
    raw = json.dumps({**body, "model": ok, "stream": False}).encode()
    assert exchange(server.port, head(path, len(raw), key=True) + raw).startswith(b"HTTP/1.1 200 ")
    time.sleep(0.3)
    assert "xxxxxxxxxx" not in caplog.text
    assert upstream.upstream.requests[-1].json()["model"] == ok and len(upstream.upstream.requests) == 1


def test_made_up_model_names_fold_into_a_bounded_set_of_metric_labels(make_proxy, upstream):
    config = keyed_config(upstream.url)
    config["models"] = {"smart": {"model": "claude-opus-4-1"}}
    server = make_proxy(config)
    body = {**ANTHROPIC_BODY, "stream": False}
    with httpx.Client(base_url=server.url, headers={"x-api-key": KEY}, timeout=10) as client:
        for i in range(MAX_MODEL_LABELS + 400):
            assert client.post("/v1/messages", json={**body, "model": f"claude-made-up-{i}"}).status_code == 200
        # An alias's target keeps its label; a name only a glob admits is one more of the rest.
        for model in ("smart", "claude-sonnet-4-5"):
            assert client.post("/v1/messages", json={**body, "model": model}).status_code == 200
        text = client.get("/metrics").text
    values = {m for m in re.findall(r'^ccproxy_requests_total\{[^}]*model="([^"]*)"', text, re.M)}
    made_up = {v for v in values if v.startswith("claude-made-up-")}
    assert len(made_up) == MAX_MODEL_LABELS
    assert {OTHER, "claude-opus-4-1"} <= values and "claude-sonnet-4-5" not in values
    other = re.search(r'^ccproxy_requests_total\{[^}]*model="_other"[^}]*\} (\S+)', text, re.M)
    assert float(other.group(1)) == 401


def test_model_labels_keep_configured_names_and_fold_the_rest():
    config = build_config({
        "providers": {"p": {"format": "openai", "base_url": "http://x", "api_key": "k",
                            "models": ["gpt-4o", "gpt-*"], "fallbacks": []}},
        "models": {"fast": {"model": "gpt-4o-mini", "fallbacks": [{"model": "gpt-3.5"}]}},
    })
    labels = ModelLabels(config, limit=2)
    assert [labels(m) for m in ("gpt-a", "gpt-b", "gpt-c", "gpt-a")] == ["gpt-a", "gpt-b", OTHER, "gpt-a"]
    assert [labels(m) for m in ("gpt-4o", "fast", "gpt-4o-mini", "gpt-3.5")] == ["gpt-4o", "fast", "gpt-4o-mini", "gpt-3.5"]


# -- deep and duplicate JSON ----------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_deeply_nested_json_is_400_in_dialect(make_proxy, upstream, dialect, caplog):
    server = make_proxy(keyed_config(upstream.url))
    path, _ = PATHS[dialect]
    for raw in (b"[" * 100_000 + b"]" * 100_000,
                b'{"model": "claude-x", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                b'{"model": "claude-x", "metadata": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001):
        reply = exchange(server.port, head(path, len(raw), key=True) + raw)
        assert_dialect_error(dialect, reply, 400, "nested too deeply")
    assert "RecursionError" not in caplog.text and "Traceback" not in caplog.text
    assert upstream.upstream.requests == []


@pytest.mark.parametrize("dialect", DIALECTS)
def test_duplicate_top_level_keys_are_400_naming_the_key(make_proxy, upstream, dialect):
    server = make_proxy(keyed_config(upstream.url))
    path, _ = PATHS[dialect]
    raw = b'{"model": "claude-opus-4-1", "max_tokens": 5, "messages": [], "model": "claude-haiku-4-5"}'
    reply = exchange(server.port, head(path, len(raw), key=True) + raw)
    assert_dialect_error(dialect, reply, 400, "gives the key 'model' more than once")
    assert upstream.upstream.requests == []


def test_parse_body_top_level_walk_agrees_with_json_loads():
    cases = [b'{"model": "m"}', b' {"model":"m" , "a" : [1, {"b": {}}], "c": null}\n', b'{"model": "m", "\\u0061": 1}',
             b'{"model": "m", "x": NaN}', b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}']
    for raw in cases:
        assert parse_body(raw, 256) == json.loads(raw)
    for raw, needle in [(b'{"model": "m",}', "property name"), (b'{"model" "m"}', "':' delimiter"),
                        (b'{"model": "m" "a": 1}', "',' delimiter"), (b'{"model": "m"} x', "Extra data"),
                        (b'{"model": "m"', "',' delimiter"), (b'{"model": }', "Expecting value"), (b"{", "property name"),
                        (b'{"a": 1, "a": 2}', "'a' more than once"), (b'{"model": "m", "a\\u0061": 1, "aa": 2}', "'aa'"),
                        (b"[]", "JSON object"), (b"\xef\xbb\xbf{}", "BOM")]:
        with pytest.raises(InvalidRequest, match=re.escape(needle)):
            parse_body(raw, 256)
    # Nested duplicates are left to the upstream (checking them would cost ~30 % of the parse).
    assert parse_body(b'{"model": "m", "metadata": {"a": 1, "a": 2}}', 256)["metadata"] == {"a": 2}


@pytest.mark.parametrize("raw", [
    b'{"model":"m"}',
    b' {\n  "stream" : true,\n  "model" : "m" ,\n  "x": [1, {"model": "n"}]\n}\n',
    '{"system": "caf\u00e9 \u2014 \\"model\\": \\"m\\"", "model":"m\\u0031", "n": 1.50}'.encode(),
    b'{"metadata": {"model": "nested"}, "messages": [], "model": "m"}',
])
def test_with_model_replaces_only_the_top_level_models_value(raw):
    text = raw.decode()
    for new in ("claude-sonnet-4-5", 'odd "name" \u00e9'):
        out = with_model(raw, new)
        assert json.loads(out) == {**json.loads(raw), "model": new}
        # Every byte around the value is the client's.
        prefix, _, rest = out.decode().partition(json.dumps(new, ensure_ascii=False))
        assert text.startswith(prefix) and text.endswith(rest) and len(prefix) + len(rest) < len(text)


OPENAI_SDK_SHAPE = ('{"messages": [{"role": "system", "content": "caf\u00e9 \\"model\\": 1"}, {"role": "user", "content": '
                    '[{"type": "text", "text": "\u2014"}]}], "model": "fast", "stream": true, '
                    '"tools": [{"type": "function", "function": {"name": "t", "parameters": {"properties": {"model": {}}}}}]}').encode()


@pytest.mark.parametrize("raw", [
    b'{"model":"m"}',
    b' {\n  "stream" : true,\n  "model" : "m" ,\n  "x": [1, {"model": "n"}]\n}\n',
    '{"system": "caf\u00e9 \u2014 \\"model\\": \\"m\\"", "model":"m\\u0031", "n": 1.50}'.encode(),
    OPENAI_SDK_SHAPE,
])
def test_with_members_at_the_parses_places_walks_nothing(raw, monkeypatch):
    """Given where ``parse_body`` found each top-level value, ``with_members`` replaces them there, without
    walking the body again (the OpenAI SDK sends ``model`` after the whole conversation); the bytes are those
    of the walk, non-ASCII text before the value included."""
    spans: dict = {}
    parse_body(raw, 256, spans)
    assert set(spans) == set(json.loads(raw))
    added = {"stream_options": {"include_usage": True}}
    want = [with_model(raw, "gpt-4.1"), with_members(raw, {"model": "gpt-4.1"}, added)]
    monkeypatch.setattr(intake, "_members", None)  # a walk would fail
    assert [with_members(raw, {"model": "gpt-4.1"}, spans=spans),
            with_members(raw, {"model": "gpt-4.1"}, added, spans)] == want
    assert json.loads(want[1]) == {**added, **json.loads(raw), "model": "gpt-4.1"}
    with pytest.raises(TypeError):  # a member not among the places: the walk (here, none to call)
        with_members(raw, {"model": "x", "n2": 1}, spans=spans)


def test_parse_body_keeps_no_places_from_a_walk_that_failed():
    spans: dict = {}
    with pytest.raises(InvalidRequest):
        parse_body(b'{"model": "m", "a": 1} x', 256, spans)
    assert spans == {}


# -- /health/ready ---------------------------------------------------------------------------------------


def test_health_ready_details_need_a_key_when_keys_are_configured(make_proxy, upstream):
    server = make_proxy(keyed_config(upstream.url))
    r = httpx.get(server.url + "/health/ready")
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    for headers in ({"x-api-key": "wrong"}, {"authorization": "Bearer wrong"}):
        assert httpx.get(server.url + "/health/ready", headers=headers).json() == {"status": "ready"}
    details = httpx.get(server.url + "/health/ready", headers={"x-api-key": KEY}).json()
    assert details["status"] == "ready" and set(details) >= {"pid", "config", "plugins", "providers"}
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


def test_health_ready_shows_details_without_keys(make_proxy, upstream):
    server = make_proxy()
    details = httpx.get(server.url + "/health/ready").json()
    assert details["status"] == "ready" and "providers" in details


def test_body_nested_as_deep_as_the_parser_goes_is_served_and_logged(make_proxy, upstream, caplog):
    """Depth the parser accepts (900) passes through aliases, translation and the access log's bodies."""
    config = keyed_config(upstream.url)
    config["models"] = {"smart": {"model": "claude-sonnet-4-5"}}
    config["plugins"]["access_log"] = {"log_bodies": True}
    server = make_proxy(config)
    caplog.set_level(logging.INFO)
    for model, path in (("smart", "/v1/messages"), ("claude-sonnet-4-5", "/v1/chat/completions")):
        raw = (b'{"model": "%s", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "metadata": '
               % model.encode() + b"[" * 900 + b"]" * 900 + b"}")
        assert exchange(server.port, head(path, len(raw), key=True) + raw).startswith(b"HTTP/1.1 200 ")
    time.sleep(0.3)
    assert caplog.text.count("nested too deeply to log") == 2 and "RecursionError" not in caplog.text
