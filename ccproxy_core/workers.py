"""A stop signal during start-up under ``--workers N``.

Sanic's main process waits for every worker to acknowledge its start (``WorkerManager.wait_for_ack``)
before it handles any message. A SIGTERM or SIGINT in that window (Sanic 25.12: the first seconds after
``sanic app.app --workers 2`` starts) terminates the workers, so they never acknowledge, and queues the stop
message, which the wait takes and puts back in a loop: the main process spins a CPU and never exits (a
rolling deploy that stops a pod while it starts waits for its SIGKILL). Here the wait also ends once a stop
was asked for; the main process then takes the stop message as it does after start-up, joins its workers and
exits.
"""

from __future__ import annotations

import logging
from typing import Any

from sanic import Sanic

__all__ = ["end_wait_on_stop"]

log = logging.getLogger("ccproxy")


def end_wait_on_stop(app: Sanic) -> None:
    """Register the ``main_process_ready`` listener that makes the start-up wait end on a stop signal."""
    app.register_listener(_patch_manager, "main_process_ready")


def _patch_manager(app: Sanic, _loop: Any = None) -> None:
    manager = app.manager  # set before main_process_ready runs
    acked = getattr(manager, "_all_workers_ack", None)
    if acked is None or not hasattr(manager, "_shutting_down"):  # another Sanic: leave its manager as it is
        log.debug("Sanic's worker manager has no _all_workers_ack/_shutting_down: a stop during start-up may hang")
        return
    manager._all_workers_ack = lambda: manager._shutting_down or acked()
