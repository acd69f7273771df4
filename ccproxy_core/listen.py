"""One listening socket per worker under ``--workers N`` (Linux ``SO_REUSEPORT``), so the kernel spreads
new connections over the workers.

Sanic binds one socket in its main process and every worker accepts from it. A worker woken by a new
connection accepts every pending one at once, so a burst of new connections lands on one worker while
the others idle (32 of 32 in half of our trials). Here the main process binds a placeholder that reserves
the address in a ``SO_REUSEPORT`` group but never listens; each worker, before Sanic starts serving,
puts a listening socket of its own in the same group in the placeholder's place (``dup2`` onto the
descriptor Sanic is about to serve). Linux then hashes each new connection to one worker's socket.

A worker that stops takes the connections still queued on its own socket with it (a reset, unless
``net.ipv4.tcp_migrate_req`` is on); Sanic's shared socket does not have that cost. ``per_worker_sockets:
false`` keeps Sanic's shared socket.
"""

from __future__ import annotations

import os
import socket
import sys
from ipaddress import ip_address
from typing import Any

from sanic import Sanic

__all__ = ["use_per_worker_sockets"]


def available() -> bool:
    """True where the kernel spreads connections over a ``SO_REUSEPORT`` group (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def use_per_worker_sockets(app: Sanic) -> None:
    """Register the two listeners: the placeholder in the main process, the swap in each worker."""
    if not available():
        return
    app.register_listener(_reserve, "main_process_start")
    app.register_listener(_swap, "before_server_start")


def _group_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def _reserve(app: Sanic, _loop: Any = None) -> None:
    """Main process: for each TCP address Sanic would bind, a bound, never-listening placeholder."""
    if app.state.workers < 2:
        return
    for info in app.state.server_info:
        settings = info.settings
        if settings.get("sock") is not None or settings.get("unix") or settings.get("version") == 3:
            continue
        host, port = settings["host"], settings["port"]
        try:  # the family as Sanic's bind_socket picks it: an IP address's own, else IPv4
            family = socket.AF_INET6 if ip_address(host).version == 6 else socket.AF_INET
        except ValueError:
            family = socket.AF_INET
        sock = _group_socket(family)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        settings["sock"] = sock  # Sanic's configure_socket uses it as it is
        settings["host"] = settings["port"] = None


def _swap(app: Sanic, _loop: Any = None) -> None:
    """Worker: replace each placeholder (bound, ``SO_REUSEPORT``, not listening) by a socket of our own."""
    for info in app.state.server_info:
        sock = info.settings.get("sock")
        if not _is_placeholder(sock):
            continue
        own = _group_socket(sock.family)
        try:
            own.bind(sock.getsockname())
            own.listen(info.settings.get("backlog") or 100)
            os.dup2(own.fileno(), sock.fileno(), inheritable=False)
        finally:
            own.close()


def _is_placeholder(sock: Any) -> bool:
    if not isinstance(sock, socket.socket) or sock.type != socket.SOCK_STREAM or sock.family == socket.AF_UNIX:
        return False
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)) and not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        return False
