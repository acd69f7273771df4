"""Fault injection over real sockets: a misbehaving upstream, misbehaving clients, and 1,000 random disconnects.

After every scenario the suite checks that nothing leaked:

* upstream connections: the mock has no response in progress, the proxy's pools have no
  checked-out connection, and the mock's open connections are only the pool's idle ones;
* tasks: ``asyncio.all_tasks()`` on the proxy's loop is back to its idle count;
* lifecycle: every request that reached ``ccproxy_request_received`` got exactly one
  ``ccproxy_stream_end`` (and at most one ``ccproxy_stream_start``);
* the client saw the right status, or an error in its own dialect.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from ccproxy_core import hookimpl
from tests.mock_upstream import MockUpstreamThread
from tests.servers import ProxyThread, provider_config, read_all

ANTHROPIC_BODY = {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
                  "messages": [{"role": "user", "content": "Hello"}]}
OPENAI_BODY = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Hello"}]}
DIALECTS = {"anthropic": ("/v1/messages", ANTHROPIC_BODY), "openai": ("/v1/chat/completions", OPENAI_BODY)}
TIMEOUTS = {"connect": 1, "headers": 0.4, "idle": 0.4, "total": 20}
RANDOM_DISCONNECTS = 1000


class Lifecycle:
    """Counts lifecycle events per request id (hooks run on the proxy's loop thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: Counter[str] = Counter()
        self.starts: Counter[str] = Counter()
        self.ends: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()

    @hookimpl
    def ccproxy_request_received(self, ctx):
        with self.lock:
            self.received[ctx.request_id] += 1

    @hookimpl
    def ccproxy_stream_start(self, ctx):
        with self.lock:
            self.starts[ctx.request_id] += 1

    @hookimpl
    def ccproxy_stream_end(self, ctx):
        with self.lock:
            self.ends[ctx.request_id] += 1
            self.outcomes[ctx.outcome] += 1

    def problems(self) -> list[str]:
        with self.lock:
            out = [f"{rid}: {n} ends" for rid, n in self.ends.items() if n != 1]
            out += [f"{rid}: received but no end" for rid in self.received if self.ends[rid] == 0]
            out += [f"{rid}: {n} starts" for rid, n in self.starts.items() if n > 1]
            return out

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.starts.clear()
            self.ends.clear()
            self.outcomes.clear()


@pytest.fixture(scope="module")
def lifecycle() -> Lifecycle:
    return Lifecycle()


@pytest.fixture(scope="module", params=["fast", "httpx"])
def server(request, mock, lifecycle):
    """The proxy on each upstream transport: the project's own, and httpx's stock one."""
    config = provider_config(mock.url, timeouts=TIMEOUTS, retries={"max_attempts": 1})
    for provider in config["providers"].values():
        provider["transport"] = request.param
    with ProxyThread(config, plugins=[("lifecycle", lifecycle)]) as proxy:
        proxy.baseline_tasks = _idle_tasks(proxy)
        yield proxy


def _idle_tasks(proxy: ProxyThread) -> int:
    time.sleep(0.2)

    async def count() -> int:
        return len(asyncio.all_tasks())

    return proxy.run(count)


def pool_counts(proxy: ProxyThread) -> tuple[int, int]:
    """(checked-out, idle) upstream connections over all providers' pools."""

    async def stats() -> tuple[int, int]:
        active = idle = 0
        for transport in proxy.app.ctx.transports.values():
            if hasattr(transport, "pool_stats"):
                s = transport.pool_stats()
                active, idle = active + s["active"], idle + s["idle"]
            else:  # httpx's stock transport
                for conn in transport._pool.connections:
                    if conn.is_idle():
                        idle += 1
                    else:
                        active += 1
        return active, idle

    return proxy.run(stats)


def leaks(proxy: ProxyThread, mock, lifecycle: Lifecycle, timeout: float = 8) -> dict[str, Any]:
    """Wait until everything settled; return what did not (empty dict: no leak)."""

    async def tasks() -> int:
        return len(asyncio.all_tasks())

    deadline = time.monotonic() + timeout
    while True:
        active, idle = pool_counts(proxy)
        state = {
            "mock_active_streams": mock.active_streams,
            "pool_checked_out": active,
            "mock_connections_beyond_idle_pool": max(0, mock.open_connections - idle),
            "extra_tasks": max(0, proxy.run(tasks) - proxy.baseline_tasks),
            "lifecycle": lifecycle.problems(),
        }
        found = {k: v for k, v in state.items() if v}
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# -- clients ---------------------------------------------------------------------------------------


def request_bytes(path: str, body: dict, headers: dict[str, str]) -> bytes:
    raw = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {len(raw)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"connection: close\r\n\r\n" + raw


def connect(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def close(sock: socket.socket, *, reset: bool) -> None:
    if reset:  # RST instead of FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                break
            if size == 0:
                return status, headers, out
            out, rest = out + rest[:size], rest[size + 2:]
        headers["x-test-broken"] = "1"
        return status, headers, out
    return status, headers, body


def check_error_shape(dialect: str, body: bytes) -> None:
    data = json.loads(body)
    if dialect == "anthropic":
        assert data["type"] == "error" and {"type", "message"} <= set(data["error"])
    else:
        assert {"message", "type"} <= set(data["error"])


# -- upstream faults ---------------------------------------------------------------------------------

#: name -> (mock headers, expected: "ok" | status before the head | "event" (error event after a 200))
UPSTREAM_FAULTS = {
    "normal": ({"x-mock-events": "5"}, "ok"),
    "split": ({"x-mock-split": "1"}, "ok"),
    "drop-early": ({"x-mock-drop-after": "1"}, "event"),
    "drop-late": ({"x-mock-drop-after": "6"}, "event"),
    "reset-before-head": ({"x-mock-reset": "1"}, 502),
    "slow-head": ({"x-mock-headers-delay": "1500"}, 504),
    "stall-mid-stream": ({"x-mock-stall-after": "2", "x-mock-stall": "1500"}, "event"),
    "garbage": ({"x-mock-garbage": "1"}, 502),
    "truncated-chunk": ({"x-mock-truncate": "1"}, "event"),
    "status-500": ({"x-mock-status": "500"}, 500),
    "status-529": ({"x-mock-status": "529"}, 529),
}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("dialect", list(DIALECTS))
@pytest.mark.parametrize("fault", list(UPSTREAM_FAULTS))
def test_upstream_fault(server, mock, lifecycle, fault, dialect, stream):
    headers, expected = UPSTREAM_FAULTS[fault]
    if fault == "stall-mid-stream" and not stream:
        expected = "ok"  # the mock stalls between events only
    path, body = DIALECTS[dialect]
    sock = connect(server.port)
    sock.sendall(request_bytes(path, {**body, "stream": stream}, headers))
    status, response_headers, content = parse(read_all(sock))
    sock.close()
    if expected == "ok":
        assert status == 200 and "x-test-broken" not in response_headers
    elif expected == "event":
        if stream:
            assert status == 200 and "x-test-broken" in response_headers
            marker = b"event: error\ndata: " if dialect == "anthropic" else b'data: {"error": '
            assert marker in content
        else:  # a JSON body cut short: the client sees a broken end (no error event in JSON)
            assert status == 200 and ("x-test-broken" in response_headers
                                      or len(content) < int(response_headers.get("content-length", 10**9)))
    else:
        assert status == expected
        if expected in (502, 504):
            check_error_shape(dialect, content)
    found = leaks(server, mock, lifecycle)
    assert not found, found


# -- client misbehaviour -----------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", list(DIALECTS))
@pytest.mark.parametrize("when", ["before-head", "after-head", "mid-stream", "while-sending-body"])
@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_client_disconnects(server, mock, lifecycle, dialect, when, reset):
    path, body = DIALECTS[dialect]
    scenario = {"before-head": {"x-mock-headers-delay": "300"},
                "after-head": {"x-mock-delay": "200", "x-mock-events": "5"},
                "mid-stream": {"x-mock-delay": "50", "x-mock-events": "50"},
                "while-sending-body": {}}[when]
    data = request_bytes(path, body, scenario)
    sock = connect(server.port)
    if when == "while-sending-body":
        sock.sendall(data[: len(data) - 10])
        time.sleep(0.05)
    else:
        sock.sendall(data)
        if when == "before-head":
            time.sleep(0.1)
        elif when == "after-head":
            sock.recv(200)
        else:
            received = 0
            while received < 1500:
                received += len(sock.recv(4096))
    close(sock, reset=reset)
    found = leaks(server, mock, lifecycle)
    assert not found, found
    assert mock.wait_for(lambda m: m.active_streams == 0)


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_slow_reader_gets_everything(server, mock, lifecycle, dialect):
    path, body = DIALECTS[dialect]
    sock = connect(server.port, rcvbuf=4096)
    sock.sendall(request_bytes(path, body, {"x-mock-events": "300"}))
    data = b""
    while True:
        chunk = sock.recv(512)
        if not chunk:
            break
        data += chunk
        time.sleep(0.001)
    sock.close()
    status, headers, content = parse(data)
    assert status == 200 and "x-test-broken" not in headers
    assert content.count(b"content_block_delta" if dialect == "anthropic" else b'"content":') >= 300
    found = leaks(server, mock, lifecycle)
    assert not found, found


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_client_that_never_reads(dialect):
    """The proxy's writes back up; the upstream is throttled, then closed when the client leaves."""
    lifecycle = Lifecycle()
    with MockUpstreamThread() as mock, ProxyThread(
        provider_config(mock.url, timeouts={**TIMEOUTS, "headers": 5}, retries={"max_attempts": 1}),
        plugins=[("lifecycle", lifecycle)],
    ) as proxy:
        proxy.baseline_tasks = _idle_tasks(proxy)
        path, body = DIALECTS[dialect]
        sock = connect(proxy.port, rcvbuf=2048)
        # ~48 MB of events: more than the kernel's socket buffers on both legs can hold once TCP
        # autotuning grew them (net.ipv4.tcp_rmem's maximum is 32 MB on these machines; with 12 MB the
        # mock could finish into the proxy's receive buffer on a loaded machine).
        sock.sendall(request_bytes(path, body, {"x-mock-events": "400000"}))
        assert mock.wait_for(lambda m: m.active_streams == 1)
        time.sleep(1.5)
        assert mock.active_streams == 1  # held open by back-pressure, not buffered to the end
        close(sock, reset=True)
        found = leaks(proxy, mock, lifecycle)
        assert not found, found
        assert lifecycle.outcomes == {"client_disconnected": 1}


# -- 1,000 random disconnects -------------------------------------------------------------------------


def _one_random_client(port: int, seed: int) -> str:
    rnd = random.Random(seed)
    dialect = rnd.choice(list(DIALECTS))
    path, body = DIALECTS[dialect]
    upstream = rnd.choice([
        {"x-mock-delay": str(rnd.randint(0, 20)), "x-mock-events": str(rnd.randint(1, 30))},
        {"x-mock-headers-delay": str(rnd.randint(0, 100))},
        {"x-mock-drop-after": str(rnd.randint(0, 8))},
        {"x-mock-stall-after": str(rnd.randint(0, 5)), "x-mock-stall": str(rnd.randint(0, 200))},
        {"x-mock-split": "1"},
        {"x-mock-truncate": "1"},
        {"x-mock-reset": "1"},
        {},
    ])
    data = request_bytes(path, {**body, "stream": rnd.random() < 0.85}, upstream)
    sock = connect(port)
    try:
        mode = rnd.random()
        if mode < 0.08:  # leaves while sending the request
            sock.sendall(data[: rnd.randint(1, len(data) - 1)])
            return "mid-request"
        sock.sendall(data)
        if mode < 0.4:  # leaves after a random time
            time.sleep(rnd.random() * 0.15)
            return "after-time"
        budget = rnd.randint(0, 3000)  # leaves after a random number of bytes
        received = 0
        while received <= budget:
            chunk = sock.recv(rnd.choice([1, 17, 512, 4096]))
            if not chunk:
                return "complete"
            received += len(chunk)
        return "after-bytes"
    except (ConnectionError, socket.timeout):
        return "error"
    finally:
        close(sock, reset=rnd.random() < 0.5)


def test_1000_random_disconnects(server, mock, lifecycle, capsys):
    lifecycle.reset()
    mock.reset_stats()
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=48) as pool:
        kinds = Counter(pool.map(lambda seed: _one_random_client(server.port, seed), range(RANDOM_DISCONNECTS)))
    found = leaks(server, mock, lifecycle, timeout=15)
    elapsed = time.monotonic() - start
    with capsys.disabled():
        transport = next(iter(server.app.ctx.config.providers.values())).transport
        print(f"\n[faults] {transport} transport: {RANDOM_DISCONNECTS} random disconnects in {elapsed:.1f}s: {dict(kinds)}; "
              f"handled {sum(lifecycle.ends.values())} requests, outcomes {dict(lifecycle.outcomes)}; "
              f"leaks: {found or 0}")
    assert not found, found
    assert sum(kinds.values()) == RANDOM_DISCONNECTS
    assert elapsed < 60
    assert mock.errors == []
