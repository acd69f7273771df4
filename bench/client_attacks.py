"""The client-side attacks of issue 11, against a real ``sanic app.app`` process: status, memory, time.

Usage::

    .venv/bin/python bench/client_attacks.py [--workers 2] [--only NAME ...]

Starts the mock upstream in this process and ``sanic app.app`` (every installed first-party
plugin, two proxy keys, ``limits.head_timeout``/``body_timeout`` of 3 s so the drip attacks end
quickly) in a child process, then runs each attack from 127.0.0.1 and prints one line per
figure. Memory is the server process's ``VmRSS``/``VmHWM`` (peak) from ``/proc`` (with several
workers, the largest worker's). Traffic is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.mock_upstream import MockUpstreamThread  # noqa: E402

KEY = "ccp-bench-KEY-0123456789abcdef"
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
DEADLINE = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_of(reply: bytes) -> str:
    match = re.match(rb"HTTP/1\.1 (\d{3})", reply)
    return match.group(1).decode() if match else ("closed" if not reply else repr(reply[:40]))


def recv_until_closed(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, socket.timeout):
        data += b"<still open>"
    except ConnectionError:
        pass
    return data


class Server:
    def __init__(self, mock_url: str, workers: int, tmp: str) -> None:
        config = {
            "providers": {
                "anthropic": {"format": "anthropic", "base_url": mock_url, "api_key": "sk-ant-x", "models": ["claude-*"]},
                "openai": {"format": "openai", "base_url": mock_url + "/v1", "api_key": "sk-oa-x", "models": ["gpt-*"]},
            },
            "limits": {"head_timeout": DEADLINE, "body_timeout": DEADLINE},
            "plugins": {"auth": {"keys": [KEY]},
                        "metrics": {"multiprocess_dir": os.path.join(tmp, "metrics")},
                        "access_log": {"path": os.path.join(tmp, "access.log"), "stderr": False}},
        }
        path = os.path.join(tmp, "config.yaml")
        with open(path, "w") as fh:
            yaml.safe_dump(config, fh)
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CCPROXY_CONFIG": path, "PYTHONUNBUFFERED": "1"}
        mode = ["--single-process"] if workers == 1 else ["--workers", str(workers)]
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/sanic"), "app.app", "--host", "127.0.0.1", "--port", str(self.port), *mode],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "server.err"), "w"),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.1)
        time.sleep(0.5 * workers)

    def pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        children = [int(p) for p in out]
        return children or [self.proc.pid]

    def memory(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MiB of the largest worker."""
        best = (0.0, 0.0)
        for pid in self.pids():
            fields = {}
            try:
                for line in open(f"/proc/{pid}/status"):
                    name, _, value = line.partition(":")
                    fields[name] = value
            except OSError:
                continue
            rss = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
            hwm = int(fields.get("VmHWM", "0 kB").split()[0]) / 1024
            best = max(best, (rss, hwm))
        return best

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def raw(self, data: bytes, timeout: float = 10) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port)) as sock:
            sock.sendall(data)
            return recv_until_closed(sock, timeout)


def post_head(path: str, length: int | None, key: bool = False, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\n"
    if length is not None:
        head += f"content-length: {length}\r\n"
    if key:
        head += f"x-api-key: {KEY}\r\n"
    return (head + extra + "\r\n").encode()


def attack_keyless_malformed(server: Server) -> None:
    body = b"{not json"
    reply = server.raw(post_head("/v1/messages", len(body)) + body)
    print(f"keyless malformed body: {status_of(reply)}")


def attack_keyless_big(server: Server, n: int = 10, size: int = 24 * 1024 * 1024) -> None:
    rss0, _ = server.memory()
    payload = b'{"model": "claude-sonnet-4-5", "x": "' + b"a" * (size - 60) + b'"}'
    payload = payload.ljust(size, b" ")
    statuses: list[str] = []

    def one() -> None:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.settimeout(60)
            try:
                sock.sendall(post_head("/v1/messages", len(payload)) + payload)
            except OSError:
                pass
            statuses.append(status_of(recv_first(sock)))

    started = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - started
    rss1, hwm = server.memory()
    print(f"keyless {n} x {size >> 20} MiB: statuses {sorted(set(statuses))} x{len(statuses)}; worker RSS "
          f"{rss0:.0f} MiB idle -> peak {hwm:.0f} MiB, {rss1:.0f} MiB after; {elapsed:.1f} s")


def recv_first(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def attack_drip(server: Server, where: str, seconds: float = 2 * DEADLINE + 2) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(0.5)
    started = time.monotonic()
    if where == "head":
        data = post_head("/v1/messages", 50, key=True)[:-2]  # the head never ends
        first, rest = data[:40], data[40:]
    else:
        first, rest = post_head("/v1/messages", 10_000, key=True), b"x" * 10_000
    sock.sendall(first)
    reply = b""
    for byte in rest:
        if time.monotonic() - started > seconds:
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        try:
            chunk = sock.recv(65536)
            reply += chunk
            if not chunk or reply:
                break
        except (TimeoutError, socket.timeout):
            pass
        except OSError:
            break
    ended = time.monotonic() - started
    sock.close()
    print(f"drip into the {where} (a byte every 0.5 s): {status_of(reply) if reply else 'no answer, still open'} "
          f"after {ended:.1f} s")


def attack_drip_many(server: Server, n: int = 260, hold: float = DEADLINE - 1) -> None:
    socks = []
    for i in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.sendall(post_head("/v1/messages", 10_000, key=True) if i % 2 else b"POST /v1/messages HTTP/1.1\r\n")
            socks.append(s)
        except OSError:
            break
    time.sleep(hold)
    started = time.monotonic()
    try:
        r = httpx.post(server.url + "/v1/messages", json=BODY, headers={"x-api-key": KEY}, timeout=10)
        result = str(r.status_code)
    except httpx.HTTPError as exc:
        result = type(exc).__name__
    took = time.monotonic() - started
    for s in socks:
        s.close()
    print(f"{len(socks)} drip connections open: a normal request -> {result} in {took * 1000:.0f} ms")


def attack_long_model(server: Server, n: int = 10, size: int = 5 * 1024 * 1024) -> None:
    rss0, _ = server.memory()
    model = "claude-" + "x" * (size - 7)
    statuses = []
    for _ in range(n):
        r = httpx.post(server.url + "/v1/messages", json={**BODY, "model": model}, headers={"x-api-key": KEY},
                       timeout=60)
        statuses.append(r.status_code)
    time.sleep(0.5)
    metrics = httpx.get(server.url + "/metrics", headers={"x-api-key": KEY}, timeout=60).content
    files = sum(p.stat().st_size for p in Path(server.tmp, "metrics").glob("*.db"))
    log = Path(server.tmp, "access.log")
    longest = max((len(line) for line in log.read_bytes().splitlines()), default=0) if log.exists() else 0
    rss1, hwm = server.memory()
    print(f"{n} requests with a {size >> 20} MiB model: statuses {sorted(set(statuses))}; /metrics "
          f"{len(metrics) / 2**20:.1f} MiB; metric files {files / 2**20:.1f} MiB; longest access-log line "
          f"{longest / 2**20:.2f} MiB; RSS {rss0:.0f} -> {rss1:.0f} MiB (peak {hwm:.0f})")


def attack_many_models(server: Server, n: int = 500) -> None:
    with httpx.Client(headers={"x-api-key": KEY}, timeout=10) as client:
        for i in range(n):
            client.post(server.url + "/v1/messages", json={**BODY, "model": f"claude-made-up-{i}"})
        text = client.get(server.url + "/metrics").text
    series = [line for line in text.splitlines() if line.startswith("ccproxy_requests_total{")]
    models = {re.search(r'model="([^"]*)"', line).group(1) for line in series}
    print(f"{n} distinct made-up model names: {len(series)} ccproxy_requests_total series, {len(models)} model values")


def attack_deep_json(server: Server, depth: int = 100_000) -> None:
    body = b"[" * depth + b"]" * depth
    started = time.monotonic()
    reply = server.raw(post_head("/v1/messages", len(body)) + body)
    took = time.monotonic() - started
    print(f"keyless {depth:,}-level JSON: {status_of(reply)} in {took * 1000:.0f} ms"
          + (" (traceback in the server log)" if "RecursionError" in Path(server.tmp, "server.err").read_text() else ""))
    body = json.dumps({**BODY, "messages": [{"role": "user", "content": "x"}]}).encode()
    body = b'{"messages": ' + b"[" * depth + b"]" * depth + b', "model": "claude-sonnet-4-5"}'
    reply = server.raw(post_head("/v1/messages", len(body), key=True) + body)
    print(f"keyed body with a {depth:,}-level value: {status_of(reply)}")


def attack_duplicate_keys(server: Server) -> None:
    body = b'{"model": "claude-opus-4-1", "model": "claude-haiku-4-5", "max_tokens": 5, "messages": []}'
    reply = server.raw(post_head("/v1/messages", len(body), key=True) + body)
    answer = reply.split(b"\r\n\r\n", 1)[-1][:160]
    print(f"duplicate model keys: {status_of(reply)} {answer!r}")


def attack_health(server: Server) -> None:
    r = httpx.get(server.url + "/health/ready", timeout=5)
    print(f"keyless GET /health/ready: {r.status_code}, {len(r.content)} bytes, keys {sorted(r.json())}")


ATTACKS = {
    "malformed": attack_keyless_malformed,
    "big": attack_keyless_big,
    "drip-head": lambda s: attack_drip(s, "head"),
    "drip-body": lambda s: attack_drip(s, "body"),
    "drip-many": attack_drip_many,
    "long-model": attack_long_model,
    "many-models": attack_many_models,
    "deep": attack_deep_json,
    "duplicate": attack_duplicate_keys,
    "health": attack_health,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--only", nargs="*", choices=sorted(ATTACKS))
    args = parser.parse_args()
    with MockUpstreamThread() as mock, tempfile.TemporaryDirectory(prefix="ccproxy-attacks-") as tmp:
        server = Server(mock.url, args.workers, tmp)
        try:
            rss, _ = server.memory()
            print(f"server up, {args.workers} worker(s), idle RSS {rss:.0f} MiB")
            for name in args.only or ATTACKS:
                ATTACKS[name](server)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
