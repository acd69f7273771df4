"""``sanic app.app --workers N`` stopped while it starts (``ccproxy_core.workers``). Real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.gateway_helpers import ROOT, _children
from tests.servers import provider_config, reserved_port
from tests.test_listen import listeners

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def spawned(proc: subprocess.Popen) -> list[str]:
    """The children of ``proc`` that multiprocessing spawned (Sanic's state manager and its workers)."""
    found = []
    for child in _children(proc):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as cmdline:
                if b"spawn_main" in cmdline.read():
                    found.append(child)
        except OSError:
            continue
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_while_the_workers_start_ends_the_server(tmp_path, sig):
    """Sanic 25.12's main process, stopped before every worker acknowledged its start, spun a CPU and never
    exited; it now exits 0 at once, and its workers with it."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(provider_config("http://127.0.0.1:9")))
    with reserved_port() as port:
        proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/sanic"), "app.app", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
            cwd=ROOT, env={**os.environ, "CCPROXY_CONFIG": str(path)},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while len(spawned(proc)) < 3:  # the state manager and two workers: Sanic waits for their acks
                assert time.monotonic() < deadline and proc.poll() is None, "the workers did not start"
                time.sleep(0.01)
            assert listeners(port) == 0  # no worker serves yet: the stop lands in the wait for their acks
            children = _children(proc)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    deadline = time.monotonic() + 10  # the state manager and the resource tracker end as their pipes close
    while left := [pid for pid in children if alive(pid)]:
        assert time.monotonic() < deadline, f"left behind: {left}"
        time.sleep(0.05)


def alive(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
