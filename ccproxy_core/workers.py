"""Sanic's worker manager under ``--workers N``: a stop during start-up, and workers that die.

**A stop during start-up.** Sanic's main process waits for every worker to acknowledge its start
(``WorkerManager.wait_for_ack``) before it handles any message. A SIGTERM or SIGINT in that window (Sanic
25.12: the first seconds after ``sanic app.app --workers 2`` starts) terminates the workers, so they never
acknowledge, and queues the stop message, which the wait takes and puts back in a loop: the main process
spins a CPU and never exits (a rolling deploy that stops a pod while it starts waits for its SIGKILL). Here
the wait also ends once a stop was asked for; the main process then takes the stop message as it does after
start-up, joins its workers and exits.

**A worker that dies** (killed, the OOM killer, a crash) is only marked failed by Sanic: the server goes on
with one worker fewer for ever. Here the main process's monitor step (every 0.1 s, in its main thread) logs
the death with its exit code and starts a new process in its place. Only a worker that was ready is replaced:
one that dies before (a replacement that cannot start, e.g. the config file was broken since) stops the
server with exit code 1, as a failed start does, since the same start would fail again; so a worker that
keeps dying is started at most once per start-up time. Not with ``--dev`` or ``--reload``, where a worker
that fails to start (a syntax error just saved) waits for Sanic's reloader.

**A stop signal in the middle of the main process's work.** Sanic's stop handler runs in the main thread
between two bytecodes, wherever it is. During the start of the workers, it missed the worker being started
(not alive yet), which then served on while the main process waited for it for ever; during a call to the
worker state's manager process (the start, the wait and the monitor step make several), its own calls mixed
up the replies and the main process exited 1 with a ``TypeError`` (3 of 70 stops
at start-up). The start, the wait's check and the monitor step now hold SIGINT and SIGTERM until they end
(:func:`_stop_signals_held`); the stop then sees, and ends, every worker they started.

**A worker stopped while it starts** got SIGINT from Sanic (``WorkerProcess.terminate``): one still starting
Python (importing the app, a few hundred ms) turned it into a ``KeyboardInterrupt`` traceback on stderr, or
``Fatal Python error: init_import_site``. Workers are stopped with SIGTERM instead, as Sanic's own restart
stops them: a serving worker handles both alike (``app.stop``), a starting one ends quietly.

**A worker whose event loop stops running** (a busy loop, a deadlock, a plugin blocking it, SIGSTOP) never
dies, and the kernel goes on handing it new connections, which hang. Each worker marks in shared memory when
its loop last ran (every ``worker_timeout`` / 10 seconds, at most every second); the monitor step kills
(SIGKILL) a worker whose mark is older than ``worker_timeout`` (config, default 30 s, 0: off), and replaces it
as any worker that died.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from sanic import Sanic
from sanic.exceptions import ServerKilled
from sanic.worker import process as sanic_process
from sanic.worker.constants import ProcessState

__all__ = ["manage_workers"]

log = logging.getLogger("ccproxy")

#: The states of a worker process the manager started and has not stopped.
_RUNNING = (ProcessState.STARTING, ProcessState.STARTED, ProcessState.ACKED)


def manage_workers(app: Sanic, timeout: float = 0.0) -> None:
    """Register the listeners that patch Sanic's worker manager and, when ``timeout`` (``worker_timeout``) is
    not 0, share the workers' loop marks (module docstring)."""
    app.ctx.worker_timeout = timeout
    app.register_listener(_share_marks, "main_process_start")
    app.register_listener(_patch_manager, "main_process_ready")
    app.register_listener(_mark, "after_server_start")


def _share_marks(app: Sanic, _loop: Any = None) -> None:
    """Main process: one ``time.monotonic()`` mark per worker, 0 until its loop runs (``app.shared_ctx``)."""
    if app.ctx.worker_timeout and app.state.workers > 1:
        from multiprocessing.sharedctypes import RawArray

        app.shared_ctx.ccproxy_loop_marks = RawArray("d", app.state.workers)


def _slot(name: str) -> int:
    """The mark of worker ``Sanic-Server-<n>-0``: ``n``."""
    try:
        return int(name.split("-")[2])
    except (IndexError, ValueError):
        return -1


async def _mark(app: Sanic) -> None:
    """Worker: mark that the loop runs, every ``worker_timeout`` / 10 seconds (at most every second)."""
    marks = getattr(app.shared_ctx, "ccproxy_loop_marks", None)
    slot = _slot(os.environ.get("SANIC_WORKER_NAME", ""))
    if marks is None or not 0 <= slot < len(marks):
        return
    every = min(1.0, app.ctx.worker_timeout / 10)
    loop = asyncio.get_running_loop()

    def mark() -> None:
        marks[slot] = time.monotonic()
        loop.call_later(every, mark)
    mark()


def _patch_manager(app: Sanic, _loop: Any = None) -> None:
    manager = app.manager  # set before main_process_ready runs
    acked = getattr(manager, "_all_workers_ack", None)
    sync = getattr(manager, "_sync_states", None)
    if acked is None or sync is None or not all(
            hasattr(manager, name) for name in ("_shutting_down", "worker_state", "transient_processes", "restart",
                                                "start")):
        log.debug("Sanic's worker manager is not the one ccproxy knows: a stop during start-up may hang, "
                  "and a worker that dies is not replaced")
        return
    start = manager.start

    def start_held() -> None:  # a stop during it: every worker alive once it ran, so the stop ends them all
        with _stop_signals_held():
            start()

    def all_acked_or_stopping() -> bool:
        if manager._shutting_down:
            return True
        with _stop_signals_held():
            return acked()

    manager.start = start_held
    manager._all_workers_ack = all_acked_or_stopping
    if getattr(sanic_process, "SIGINT", None) == signal.SIGINT:  # the signal WorkerProcess.terminate sends
        sanic_process.SIGINT = signal.SIGTERM  # type: ignore[attr-defined]
    if not app.state.auto_reload:  # --dev, --reload: the reloader starts workers again after each change
        manager._sync_states = Replacer(manager, sync, getattr(app.shared_ctx, "ccproxy_loop_marks", None),
                                        app.ctx.worker_timeout)


class Replacer:
    """Sanic's ``_sync_states`` (the monitor loop's step), then a new process for each server worker that
    died on its own after it was ready, and SIGKILL for one whose loop stopped running (module docstring),
    with the stop signals held meanwhile."""

    def __init__(self, manager: Any, sync: Callable[[], None], marks: Any = None, timeout: float = 0.0) -> None:
        self.manager = manager
        self.sync = sync
        #: Each worker's last loop mark (``time.monotonic()``, 0: none yet), by :func:`_slot`; None: no check.
        self.marks = marks if timeout else None
        self.timeout = timeout

    def __call__(self) -> None:
        manager = self.manager
        failed = None
        with _stop_signals_held():
            died = [(p, manager.worker_state.get(p.name) or {}) for p in manager.transient_processes
                    if p.state in _RUNNING and not p.is_alive()]  # the state as the worker left it
            self.sync()  # marks them FAILED or COMPLETED
            for process, state in died:
                if manager._shutting_down or not state.get("server"):
                    continue
                if state.get("state") != ProcessState.ACKED.name:
                    failed = process
                    break
                log.error("worker %s (pid %s) died (%s); starting a new one",
                          process.name, process.pid, _exit(process.exitcode))
                slot = _slot(process.name)
                if self.marks is not None and 0 <= slot < len(self.marks):
                    self.marks[slot] = 0.0  # until the new worker's loop runs
                manager.restart(process_names=[process.name])
                log.warning("worker %s started again (pid %s)", process.name, process.pid)
            if self.marks is not None and failed is None and not manager._shutting_down:
                self._kill_stuck()
        if failed is not None and not manager._shutting_down:  # (a stop held above has run: it stops alike)
            log.error("worker %s (pid %s) exited before it was ready (%s): stopping the server",
                      failed.name, failed.pid, _exit(failed.exitcode))
            manager.shutdown()  # the other workers stop as on SIGTERM, ending their responses
            manager.cleanup()
            raise ServerKilled  # Sanic's main process then exits with 1

    def _kill_stuck(self) -> None:
        """SIGKILL each ready worker whose loop has not marked for ``timeout`` seconds (the next step replaces it)."""
        now = time.monotonic()
        for process in self.manager.transient_processes:
            slot = _slot(process.name)
            if process.state is not ProcessState.ACKED or not 0 <= slot < len(self.marks):
                continue
            marked = self.marks[slot]
            if marked and now - marked > self.timeout and process.is_alive():
                log.error("worker %s (pid %s): its event loop has not run for %.1f s (worker_timeout): killing it",
                          process.name, process.pid, now - marked)
                self.marks[slot] = 0.0
                try:
                    os.kill(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@contextmanager
def _stop_signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends, then their handlers run (module docstring)."""
    held: list[tuple[int, Any]] = []
    handlers = {sig: signal.signal(sig, lambda signum, frame: held.append((signum, frame)))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for signum, frame in held:
            handler = handlers[signum]
            if callable(handler):
                handler(signum, frame)


def _exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
