"""``sanic app.app --workers N`` stopped while it starts, workers that die, and workers whose loop stops
(``ccproxy_core.workers``). Real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import yaml

from tests.gateway_helpers import ROOT, _children
from tests.servers import provider_config, reserved_port
from tests.test_listen import listeners, pids_of_connections, wait_for_workers

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


@contextmanager
def server(tmp_path, port: int, **config: object) -> Iterator[subprocess.Popen]:
    """``sanic app.app --workers 2`` in a session of its own, serving ``tmp_path/config.yaml`` (``config`` added
    to the providers'); stderr piped. Its process group is killed if it still runs when the block ends."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**provider_config("http://127.0.0.1:9"), **config}))
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/sanic"), "app.app", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        cwd=ROOT, env={**os.environ, "CCPROXY_CONFIG": str(path)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def assert_gone(children: list[str], group: int | None = None) -> None:
    """``children`` and every process of the process ``group`` end (10 s at most)."""
    deadline = time.monotonic() + 10  # the state manager and the resource tracker end as their pipes close
    while left := [pid for pid in children if alive(pid)] + (in_group(group) if group else []):
        assert time.monotonic() < deadline, f"left behind: {left}"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_while_the_workers_start_ends_the_server(tmp_path, sig):
    """Sanic 25.12's main process, stopped before every worker acknowledged its start, spun a CPU and never
    exited; it now exits 0 at once, and its workers with it, quietly: a worker still starting Python used to
    print a KeyboardInterrupt traceback (Sanic stopped it with SIGINT)."""
    with reserved_port() as port, server(tmp_path, port) as proc:
        deadline = time.monotonic() + 30
        while len(spawned(proc)) < 3:  # the state manager and two workers: Sanic waits for their acks
            assert time.monotonic() < deadline and proc.poll() is None, "the workers did not start"
            time.sleep(0.01)
        assert listeners(port) == 0  # no worker serves yet: the stop lands in the wait for their acks
        children = _children(proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    assert_gone(children)


def replaced(proc: subprocess.Popen, port: int, before: dict[str, set[int]], dead: str) -> dict[str, set[int]]:
    """The workers once ``dead`` (one of ``before``) has a successor: two listen again, each on a socket of its own."""
    deadline = time.monotonic() + 30
    while True:
        workers = wait_for_workers(proc, port, 2)
        if dead not in workers and len(workers) == 2 and set(workers) - set(before):
            assert len(set.union(*workers.values())) == 2
            return workers
        assert time.monotonic() < deadline and proc.poll() is None, "the dead worker was not replaced"
        time.sleep(0.05)


def test_a_worker_that_dies_is_replaced(tmp_path):
    """A SIGKILLed worker gets a new process with a socket of its own, and so does that one; a stop right
    after a death ends the server, the new worker included."""
    with reserved_port() as port, server(tmp_path, port) as proc:
        workers = wait_for_workers(proc, port, 2)
        os.kill(int(min(workers)), signal.SIGKILL)
        after = replaced(proc, port, workers, min(workers))
        (new,) = set(after) - set(workers)
        assert set(map(str, pids_of_connections(port, 32))) == set(after)  # both serve (2**-31: all on one)
        os.kill(int(new), signal.SIGKILL)
        (newer,) = set(replaced(proc, port, after, new)) - set(after)
        children = _children(proc)
        os.kill(int(newer), signal.SIGKILL)
        time.sleep(0.1)  # about when the monitor starts a new one: the stop lands before, during or after
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err[-3000:]
    died = err.count("died (signal SIGKILL)")  # the last death only if the monitor saw it before the stop
    assert died in (2, 3) and err.count("started again") == died, err[-3000:]
    assert_gone(children, proc.pid)


def test_a_worker_whose_loop_stops_is_killed_and_replaced(tmp_path):
    """A worker stopped (SIGSTOP: its event loop never runs again, as in a busy loop) is killed once its loop
    has not run for worker_timeout seconds, and replaced; the other worker is left alone."""
    with reserved_port() as port, server(tmp_path, port, worker_timeout=2) as proc:
        workers = wait_for_workers(proc, port, 2)
        stuck, other = sorted(workers)
        time.sleep(0.5)  # both have marked their loops
        os.kill(int(stuck), signal.SIGSTOP)
        after = replaced(proc, port, workers, stuck)
        assert other in after
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err[-3000:]
    assert err.count("its event loop has not run for") == 1 and f"(pid {stuck})" in err, err[-3000:]
    assert "died (signal SIGKILL); starting a new one" in err, err[-3000:]


def test_a_worker_that_cannot_start_again_stops_the_server(tmp_path):
    """The config file broken since the start: a dead worker's replacement fails before it is ready, so the
    server stops (the other worker as on SIGTERM) and exits 1, as a failed start does."""
    with reserved_port() as port, server(tmp_path, port) as proc:
        workers = wait_for_workers(proc, port, 2)
        children = _children(proc)
        (tmp_path / "config.yaml").write_text("providers: [not, a, mapping]\n")
        os.kill(int(min(workers)), signal.SIGKILL)
        _, err = proc.communicate(timeout=40)
    assert proc.returncode == 1, err[-3000:]
    assert "exited before it was ready" in err and "stopping the server" in err, err[-3000:]
    assert_gone(children)


def stat(pid: str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command (state, ppid, pgrp, ...); None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as found:
            return found.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def in_group(pgid: int) -> list[str]:
    """The live processes of process group ``pgid``."""
    return [pid for pid in os.listdir("/proc") if (fields := stat(pid)) and fields[0] != "Z" and fields[2] == str(pgid)]


def alive(pid: str) -> bool:
    fields = stat(pid)
    return fields is not None and fields[0] != "Z"


def test_a_stop_during_the_monitor_step_waits_for_its_end():
    """A stop signal that lands while the monitor step talks to Sanic's worker state (here: while it starts a
    new worker) runs its handler once the step is done, so the handler's own calls on that connection never
    interleave with the step's, and it sees (and stops) the new worker. Sanic's manager stood in for, to
    place a real SIGTERM exactly there."""
    from sanic.worker.constants import ProcessState

    from ccproxy_core.workers import Replacer

    events = []

    class Process:
        name, pid, exitcode, state = "Sanic-Server-0-0", 41, -9, ProcessState.ACKED

        def is_alive(self) -> bool:
            return False

    class Manager:
        _shutting_down = False
        transient_processes = [Process()]
        worker_state = {Process.name: {"server": True, "state": "ACKED"}}

        def restart(self, process_names: list[str]) -> None:
            events.append(f"restart {process_names}")
            os.kill(os.getpid(), signal.SIGTERM)
            events.append("restarted")

    def sync() -> None:
        events.append("sync")

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: events.append("stop"))
    try:
        Replacer(Manager(), sync)()
        events.append("step done")
        assert signal.getsignal(signal.SIGTERM) is not None and events == [
            "sync", "restart ['Sanic-Server-0-0']", "restarted", "stop", "step done"]
    finally:
        signal.signal(signal.SIGTERM, previous)
