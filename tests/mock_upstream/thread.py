"""The mock upstream on an event loop of its own, in a daemon thread, for synchronous tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from tests.mock_upstream.server import MockUpstream


def _delegate(name: str) -> property:
    """A read-only property that reads ``self.upstream.<name>``."""
    return property(lambda self: getattr(self.upstream, name), doc=f"``upstream.{name}``")


class MockUpstreamThread:
    """A :class:`MockUpstream` on its own event loop in a daemon thread, for synchronous tests.

    Usable as a context manager. Counters and ``requests`` are readable from the calling thread
    (directly or through ``.upstream``).
    """

    requests = _delegate("requests")
    errors = _delegate("errors")
    open_connections = _delegate("open_connections")
    connections_accepted = _delegate("connections_accepted")
    active_streams = _delegate("active_streams")
    disconnects = _delegate("disconnects")
    completed = _delegate("completed")
    aborted = _delegate("aborted")

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.upstream = MockUpstream(host, port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, valid after :meth:`start`."""
        return self.upstream.url

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        assert self._loop is not None, "not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> MockUpstreamThread:
        """Start the thread and its loop, and listen; returns self."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mock-upstream", daemon=True)
        self._thread.start()
        self._call(self.upstream.start())
        return self

    def stop(self) -> None:
        """Stop the server (cancelling all connections), then the loop and the thread."""
        if self._loop is None or self._thread is None:
            return
        try:
            self._call(self.upstream.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            self._loop = self._thread = None

    def reset_stats(self) -> None:
        """See :meth:`MockUpstream.reset_stats`."""
        self.upstream.reset_stats()

    def wait_for(self, predicate: Callable[[MockUpstream], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate(self.upstream)`` until true (True) or ``timeout`` seconds (False)."""
        deadline = time.monotonic() + timeout
        while not predicate(self.upstream):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def __enter__(self) -> MockUpstreamThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
