"""A tiny upstream that answers each request from a script, for retry and fallback tests.

Each request pops the next scripted answer (status, headers, body); when the script is
empty the default answer (a 200 Anthropic message) is used. Every request is recorded
with its arrival time. One request per connection (``connection: close``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

OK_BODY = {
    "id": "msg_scripted",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "scripted ok"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 1, "output_tokens": 2},
}


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None

    def encode(self) -> bytes:
        body = json.dumps(self.body if self.body is not None else OK_BODY).encode()
        head = f"HTTP/1.1 {self.status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        head += "connection: close\r\n\r\n"
        return head.encode() + body


class ScriptedUpstream:
    """Serve on 127.0.0.1 from a background thread; ``script`` is consumed front to back."""

    def __init__(self, script: list[Answer] | None = None) -> None:
        self.script = list(script or [])
        self.arrivals: list[float] = []
        self.paths: list[str] = []
        #: Each request's head as received (request line and headers).
        self.heads: list[bytes] = []
        self.open = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="scripted-upstream")
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            self.arrivals.append(time.monotonic())
            self.paths.append(head.split(b" ", 2)[1].decode("latin-1"))
            self.heads.append(head)
            answer = self.script.pop(0) if self.script else Answer()
            writer.write(answer.encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.open -= 1

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
