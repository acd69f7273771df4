"""Run the proxy on a real socket in a background thread, for tests that read the wire."""

from __future__ import annotations

import asyncio
import importlib.metadata
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sanic import Sanic

from ccproxy_core import create_app
from ccproxy_core.config import build_config

Sanic.test_mode = True

ROOT = Path(__file__).resolve().parent.parent
#: The distribution this repository builds (pyproject.toml); installed plugins of any other are third-party.
DISTRIBUTION = "ccproxy-core"
ANTHROPIC_BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "stream": True,
    "messages": [{"role": "user", "content": "Hello"}],
}
OPENAI_BODY: dict[str, Any] = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "Hello"}]}
#: Client dialect -> (route, a streaming request body for it).
PATHS = {"anthropic": ("/v1/messages", ANTHROPIC_BODY), "openai": ("/v1/chat/completions", OPENAI_BODY)}
#: Makes the mock's ids and clock fixed, so proxied and direct bytes compare equal.
FIXED = {"x-mock-fixed-ids": "1"}


def read_all(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes (or resets) the connection."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionError:
            break
        if not chunk:
            break
        data += chunk
    return data


@contextmanager
def reserved_port() -> Iterator[int]:
    """A TCP port nobody else can take until the block ends, for a server started in a subprocess.

    A port found free and closed again (``bind(0)``, ``close``) is free only for that instant:
    the kernel hands the same ephemeral range to every ``bind(0)`` and outgoing connection on
    the machine, so under load another process can hold it by the time the subprocess binds it.
    This socket keeps the port bound (on every address, not listening) with ``SO_REUSEADDR``:
    other binds and outgoing connections fail to get it, while a server that also sets
    ``SO_REUSEADDR`` (Sanic does) binds and listens on it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("0.0.0.0", 0))
        yield sock.getsockname()[1]
    finally:
        sock.close()


_CLOSED: list[socket.socket] = []


def closed_port() -> int:
    """A TCP port on which nothing listens and nothing will, until the test process ends.

    The same race as :func:`reserved_port`'s: a port found free and closed again can be taken by
    another process (a server, or an outgoing connection's ephemeral port) before the test
    connects to it. This one stays bound (on every address, not listening, without
    ``SO_REUSEADDR``), so nothing else can bind it, and a connection to it is refused.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("0.0.0.0", 0))
    _CLOSED.append(sock)
    return sock.getsockname()[1]


class ProxyThread:
    """A ccproxy app served on 127.0.0.1 from its own thread and event loop.

    ``run(coro_fn)`` executes a coroutine function on the server's loop (to
    inspect state there). Use as a context manager.
    """

    def __init__(self, config: dict[str, Any], plugins: list[tuple[str, object]] = (), entry_points: bool = True):
        config = only_first_party_plugins(config) if entry_points else config
        self.app = create_app(build_config(config, "test-config"), plugins=plugins, entry_points=entry_points)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._main, name="ccproxy-test-server", daemon=True)
        self._server: Any = None

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self._server = self.loop.run_until_complete(
                self.app.create_server(sock=self._sock, return_asyncio_server=True, access_log=False)
            )
            self.loop.run_until_complete(self._server.startup())
            self.loop.run_until_complete(self._server.before_start())
            self.loop.run_until_complete(self._server.after_start())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._shutdown())
        self.loop.close()

    async def _shutdown(self) -> None:
        await self._server.before_stop()
        self._server.close()
        await self._server.wait_closed()
        tasks = [t for t in asyncio.all_tasks(self.loop) if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:  # a cancelled task may need more than one step to finish (a connection awaiting its handler)
            await asyncio.wait(tasks, timeout=5)
        await self._server.after_stop()

    def start(self) -> ProxyThread:
        self._thread.start()
        self._ready.wait(15)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(15)

    def run(self, fn: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 10) -> Any:
        """Run ``fn()`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(timeout)

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def only_first_party_plugins(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every installed third-party plugin disabled unless the config names it.

    The test venv holds ``examples/ccproxy-example-plugin`` (and a developer's venv may
    hold any ``ccproxy-*`` package); tests see only this project's own plugins unless
    they ask for another one by name (settings under ``plugins:`` or an ``enabled`` list).
    """
    settings = dict(config.get("plugins") or {})
    if "enabled" in settings:
        return config
    others = [
        ep.name
        for ep in importlib.metadata.entry_points(group="ccproxy")
        if ep.dist is not None and ep.dist.name != DISTRIBUTION and ep.name not in settings
    ]
    if not others:
        return config
    settings["disabled"] = [*settings.get("disabled", []), *others]
    return {**config, "plugins": settings}


def provider_config(mock_url: str, **overrides: Any) -> dict[str, Any]:
    """A config with an Anthropic and an OpenAI provider, both pointing at the mock."""
    config: dict[str, Any] = {
        "providers": {
            "anthropic": {
                "format": "anthropic",
                "base_url": mock_url,
                "api_key": "sk-ant-upstream-SECRET",
                "models": ["claude-*"],
            },
            "openai": {
                "format": "openai",
                "base_url": mock_url + "/v1",
                "api_key": "sk-openai-upstream-SECRET",
                "models": ["gpt-*"],
            },
        },
        "timeouts": {"connect": 2, "headers": 3, "idle": 3, "total": 30},
    }
    for key, value in overrides.items():
        config[key] = value
    return config
