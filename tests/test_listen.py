"""``--workers N``: each worker listens on a socket of its own (``per_worker_sockets``), so new connections
spread over the workers. Real ``sanic app.app`` processes on real sockets."""

from __future__ import annotations

import json
import socket
import sys
import time

import pytest

from tests.gateway_helpers import _children, gateway_process, stop_process
from tests.servers import provider_config

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT groups are Linux's")

CONNECTIONS = 32


def listeners(port: int) -> int:
    """How many sockets listen on 127.0.0.1:``port`` (``/proc/net/tcp``, state 0A)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return sum(1 for line in table.readlines()[1:] if line.split()[1] == wanted and line.split()[3] == "0A")


def wait_for_workers(port: int, count: int) -> None:
    """Return once ``count`` distinct workers have answered ``/health/ready`` on new connections (20 s at most)."""
    seen: set[int] = set()
    deadline = time.monotonic() + 20
    while len(seen) < count:
        assert time.monotonic() < deadline, f"only workers {seen} answered"
        seen.update(pids_of_connections(port, 4))
        time.sleep(0.05)


def pids_of_connections(port: int, count: int) -> list[int]:
    """Open ``count`` connections at once, then ask each which worker serves it (``/health/ready``'s ``pid``)."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    try:
        for sock in socks:
            sock.sendall(b"GET /health/ready HTTP/1.1\r\nhost: x\r\n\r\n")
        pids = []
        for sock in socks:
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
            pids.append(json.loads(data.split(b"\r\n\r\n", 1)[1])["pid"])
        return pids
    finally:
        for sock in socks:
            sock.close()


def config(mock_url: str, **extra: object) -> dict:
    return {**provider_config(mock_url), "plugins": {"disabled": ["example"]}, **extra}


def test_each_worker_accepts_from_a_socket_of_its_own(tmp_path, mock, sanic_port):
    proc = gateway_process(tmp_path, "own", config(mock.url), sanic_port, workers=2)
    try:
        wait_for_workers(sanic_port, 2)
        assert listeners(sanic_port) == 2  # one per worker; the main process's placeholder never listens
        workers = {int(pid) for pid in _children(proc)}
        pids = pids_of_connections(sanic_port, CONNECTIONS)
        # Every connection was answered (none waits on the placeholder), by both workers: the kernel
        # hashes each one to a socket; Sanic's shared socket gave 32/0 in half of our trials.
        assert set(pids) <= workers and len(set(pids)) == 2
        assert min(pids.count(pid) for pid in set(pids)) >= 4, pids
    finally:
        err = stop_process(proc)
    assert "Traceback" not in err and listeners(sanic_port) == 0


def test_per_worker_sockets_false_keeps_sanics_shared_socket(tmp_path, mock, sanic_port):
    proc = gateway_process(tmp_path, "shared", config(mock.url, per_worker_sockets=False), sanic_port, workers=2)
    try:
        wait_for_workers(sanic_port, 2)
        assert listeners(sanic_port) == 1
    finally:
        stop_process(proc)


def test_one_worker_serves_sanics_own_socket(tmp_path, mock, sanic_port):
    proc = gateway_process(tmp_path, "single", config(mock.url), sanic_port, workers=1)
    try:
        assert listeners(sanic_port) == 1
        assert len(set(pids_of_connections(sanic_port, 4))) == 1
    finally:
        stop_process(proc)
