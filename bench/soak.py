"""Soak: many concurrent streams through one proxy worker for a while; nothing may grow.

Starts the mock upstream (``python -m tests.mock_upstream``) and one proxy worker (``sanic
--single-process``) as subprocesses on 127.0.0.1, then keeps ``--streams`` streaming
requests in flight (each client of ``bench/loadgen.py`` loops on one keep-alive connection,
alternating the Anthropic and OpenAI routes) for ``--seconds``. Every response must be a 200
whose stream ends cleanly with all its events. Once a second it samples the worker's RSS, open file
descriptors and asyncio task count (from a probe route the soak app adds), and compares
the first 10 s with the last 10 s.

Run: ``make soak`` or ``.venv/bin/python bench/soak.py [--streams 500] [--seconds 60]``.
Prints a table and a JSON summary; exits 1 when there were errors or something grew.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402
from tests.mock_upstream import stream_framing  # noqa: E402  (loadgen puts the repository on sys.path)

PROBE = "/_soak/stats"

#: Each stream: this many text deltas, this many ms apart (about one second per stream).
EVENTS = 10
DELAY_MS = 100


# -- the soak app (imported by the proxy worker) ------------------------------------------------


def make_app() -> Any:
    """The service as ``sanic app.app`` builds it, plus a probe route for the soak's samples."""
    from sanic import response

    from ccproxy_core import create_app, hookimpl

    class Probe:
        @hookimpl
        def ccproxy_register_routes(self, app, config):
            @app.get(PROBE)
            async def stats(request):
                proxy = request.app.ctx.proxy
                pools = {}
                for name, transport in request.app.ctx.transports.items():
                    if hasattr(transport, "pool_stats"):
                        pools[name] = transport.pool_stats()
                return response.json({
                    "tasks": len(asyncio.all_tasks()),
                    "active_responses": len(proxy.handler.limiter.active),
                    "pools": pools,
                })

    return create_app(plugins=[("soak_probe", Probe())])


# -- samples of the worker process -------------------------------------------------------------


def rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- load ----------------------------------------------------------------------------------------


def requests(port: int) -> list[loadgen.Request]:
    """One streaming request per dialect: ``EVENTS`` text deltas, ``DELAY_MS`` apart."""
    target = loadgen.Target("proxy", "127.0.0.1", port)
    return [loadgen.build_request(target, dialect, stream=True, events=EVENTS + stream_framing[dialect],
                                  delay_ms=DELAY_MS) for dialect in ("anthropic", "openai")]


class Load:
    def __init__(self) -> None:
        self.completed = 0
        self.errors: dict[str, int] = {}
        self.stop = False

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def client_loop(port: int, index: int, load: Load) -> None:
    target = loadgen.Target("proxy", "127.0.0.1", port)
    reqs = requests(port)
    conn: loadgen.Conn | None = None
    n = index
    while not load.stop:
        if conn is None or conn.lost:
            try:
                conn = await loadgen.connect(target)
            except OSError as exc:
                load.error(f"connect: {type(exc).__name__}")
                await asyncio.sleep(0.5)
                continue
        req = reqs[n % 2]
        n += 1
        try:
            await asyncio.wait_for(conn.send(req, loadgen.Result()), 30)
        except (ConnectionError, asyncio.TimeoutError) as exc:
            load.error(f"request: {type(exc).__name__}: {exc}")
            if conn.transport is not None:
                conn.transport.abort()
            conn = None
            continue
        if conn.status != 200:
            load.error(f"status {conn.status}")
        elif conn.events != req.events:
            load.error("incomplete stream")
        else:
            load.completed += 1
    if conn is not None:
        conn.close()


async def probe(port: int) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {PROBE} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return json.loads(data.partition(b"\r\n\r\n")[2])


async def run_load(port: int, pid: int, streams: int, seconds: float) -> dict[str, Any]:
    load = Load()
    clients = []
    for i in range(streams):  # ramp up over ~1 s
        clients.append(asyncio.create_task(client_loop(port, i, load)))
        if i % 50 == 49:
            await asyncio.sleep(0.1)
    samples: list[dict[str, Any]] = []
    start = time.monotonic()
    last_completed = 0
    while time.monotonic() - start < seconds:
        await asyncio.sleep(1.0)
        stats = await probe(port)
        sample = {
            "t": round(time.monotonic() - start, 1),
            "rss_mib": round(rss_mib(pid), 1),
            "fds": open_fds(pid),
            "tasks": stats["tasks"],
            "in_flight": stats["active_responses"],
            "done_per_s": load.completed - last_completed,
            "errors": sum(load.errors.values()),
        }
        last_completed = load.completed
        samples.append(sample)
        print("  ".join(f"{k}={v}" for k, v in sample.items()), flush=True)
    load.stop = True
    await asyncio.wait(clients, timeout=35)
    await asyncio.sleep(1.0)
    after = await probe(port)
    return {"samples": samples, "completed": load.completed, "errors": load.errors, "after": after,
            "rss_after": round(rss_mib(pid), 1), "fds_after": open_fds(pid)}


# -- orchestration -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(port: int, path: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
                if sock.recv(12).startswith(b"HTTP/1.1"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


def summarize(result: dict[str, Any], streams: int, seconds: float) -> dict[str, Any]:
    samples = result["samples"]
    first = [s for s in samples if s["t"] <= 10]
    last = [s for s in samples if s["t"] > samples[-1]["t"] - 10]

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        return round(statistics.fmean(r[key] for r in rows), 1)

    summary: dict[str, Any] = {"streams": streams, "seconds": seconds, "completed": result["completed"],
                               "requests_per_s": round(result["completed"] / seconds, 1),
                               "errors": result["errors"]}
    for key in ("rss_mib", "fds", "tasks", "in_flight"):
        summary[key] = {"first_10s": mean(first, key), "last_10s": mean(last, key),
                        "max": max(s[key] for s in samples)}
    summary["after_load"] = {"tasks": result["after"]["tasks"], "in_flight": result["after"]["active_responses"],
                             "pools": result["after"]["pools"], "rss_mib": result["rss_after"],
                             "fds": result["fds_after"]}
    rss, fds, tasks = summary["rss_mib"], summary["fds"], summary["tasks"]
    summary["flat"] = {
        "rss": rss["last_10s"] <= rss["first_10s"] * 1.10 + 5,
        "fds": fds["last_10s"] <= fds["first_10s"] * 1.05 + 5,
        "tasks": tasks["last_10s"] <= tasks["first_10s"] * 1.05 + 5,
    }
    summary["ok"] = not result["errors"] and all(summary["flat"].values())
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--json", help="also write the summary to this file")
    args = parser.parse_args(argv)

    python = sys.executable
    proxy_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        mock = subprocess.Popen([python, "-m", "tests.mock_upstream", "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE)
        procs.append(mock)
        assert mock.stdout is not None
        mock_port = json.loads(mock.stdout.readline())["port"]
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
            fh.write(f"""
providers:
  anthropic: {{format: anthropic, base_url: "http://127.0.0.1:{mock_port}", api_key: soak-key, models: ["claude-*"]}}
  openai: {{format: openai, base_url: "http://127.0.0.1:{mock_port}/v1", api_key: soak-key, models: ["gpt-*"]}}
limits: {{max_concurrent_streams: {args.streams + 100}}}
""")
            config_path = fh.name
        env = {**os.environ, "CCPROXY_CONFIG": config_path, "PYTHONPATH": f"{BENCH}{os.pathsep}{ROOT}"}
        proxy = subprocess.Popen(
            [str(Path(python).parent / "sanic"), "soak:make_app", "--factory", "--single-process", "--no-motd",
             "--host", "127.0.0.1", "--port", str(proxy_port)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        procs.append(proxy)
        wait_http(proxy_port, "/health")
        print(f"soak: {args.streams} concurrent streams for {args.seconds:g}s through one worker "
              f"(pid {proxy.pid}); each stream {EVENTS} events {DELAY_MS} ms apart", flush=True)
        result = asyncio.run(run_load(proxy_port, proxy.pid, args.streams, args.seconds))
        summary = summarize(result, args.streams, args.seconds)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
