"""``--workers N``: each worker listens on a socket of its own (``per_worker_sockets``), so new connections
spread over the workers. Real ``sanic app.app`` processes on real sockets."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time

import pytest

from tests.gateway_helpers import _children, gateway_process, stop_process
from tests.servers import provider_config

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT groups are Linux's")

CONNECTIONS = 32


def listeners(port: int) -> int:
    """How many sockets listen on 127.0.0.1:``port``."""
    return len(listening_inodes(port))


def listening_inodes(port: int) -> set[int]:
    """The inodes of the sockets listening on 127.0.0.1:``port`` (``/proc/net/tcp``, state 0A)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return {int(row[9]) for row in rows if row[1] == wanted and row[3] == "0A"}


def polled_inodes(pid: str) -> set[int]:
    """The inodes of every file ``pid``'s epoll instances watch (``ino:`` of each ``tfd:`` line in fdinfo)."""
    found: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # the process ended meanwhile
        return found
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                found.update(int(m, 16) for m in re.findall(r"^tfd:.*\bino:([0-9a-f]+)", info.read(), re.M))
        except OSError:  # the fd closed meanwhile
            continue
    return found


def wait_for_workers(proc, port: int, count: int) -> dict[str, set[int]]:
    """Return, once ``count`` workers (children of ``proc``) each poll a socket listening on ``port``, the
    listening inodes each polls (20 s at most). Read from ``/proc``, so it does not depend on which worker
    the kernel hands a new connection to (with one shared socket, one worker may take them all)."""
    deadline = time.monotonic() + 20
    while True:
        listening = listening_inodes(port)
        polled = {pid: polled_inodes(pid) & listening for pid in _children(proc)}
        accepting = {pid: inodes for pid, inodes in polled.items() if inodes}
        if len(accepting) >= count:
            return accepting
        assert time.monotonic() < deadline, f"only workers {sorted(accepting)} of {sorted(polled)} accept"
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
        accepting = wait_for_workers(proc, sanic_port, 2)
        assert listeners(sanic_port) == 2  # one per worker; the main process's placeholder never listens
        assert len(set.union(*accepting.values())) == 2  # each worker polls a socket of its own
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
        accepting = wait_for_workers(proc, sanic_port, 2)
        assert listeners(sanic_port) == 1
        assert len(set.union(*accepting.values())) == 1  # both workers poll the one socket
        workers = {int(pid) for pid in _children(proc)}
        assert set(pids_of_connections(sanic_port, 4)) <= workers
    finally:
        stop_process(proc)


def test_one_worker_serves_sanics_own_socket(tmp_path, mock, sanic_port):
    proc = gateway_process(tmp_path, "single", config(mock.url), sanic_port, workers=1)
    try:
        assert listeners(sanic_port) == 1
        assert len(set(pids_of_connections(sanic_port, 4))) == 1
    finally:
        stop_process(proc)
