"""A blocking-socket HTTP/1.1 upstream in threads, for tests that script the wire byte by byte.

Subclasses implement :meth:`SocketUpstream.serve` for one accepted connection and use
:meth:`SocketUpstream.read_request` to take one request off it.
"""

from __future__ import annotations

import socket
import threading
from typing import Any


class SocketUpstream:
    """Accepts on 127.0.0.1 (a thread per connection) while used as a context manager."""

    def __init__(self) -> None:
        #: Connections accepted so far.
        self.accepted = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Any:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._sock.close()

    def stop(self) -> None:
        """Release whatever the connections wait for (called on exit, before the socket closes)."""

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn, self.accepted), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        try:
            self.serve(conn, number)
        except OSError:
            pass
        finally:
            conn.close()

    def serve(self, conn: socket.socket, number: int) -> None:
        """Handle connection ``number`` (1-based); it is closed afterwards."""
        raise NotImplementedError

    @staticmethod
    def read_request(conn: socket.socket, buf: bytes = b"") -> tuple[bytes, bytes, bytes] | None:
        """``(head, body, rest)`` of the next request (``rest``: bytes read past it), or None at EOF."""
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                return None
            buf += data
        head, _, buf = buf.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
            0,
        )
        while len(buf) < length:
            data = conn.recv(65536)
            if not data:
                return None
            buf += data
        return head, buf[:length], buf[length:]
