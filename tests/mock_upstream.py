"""A mock of the Anthropic Messages and OpenAI Chat Completions upstreams over a real socket.

Hand-written HTTP/1.1 on raw :mod:`asyncio` streams (no framework) so that it can misbehave
exactly: split or coalesced writes, truncated chunked bodies, resets, garbage, stalls.

* The path picks the dialect: ``POST .../v1/messages`` is Anthropic, ``POST .../chat/completions``
  is OpenAI, ``POST .../v1/messages/count_tokens`` counts tokens, ``GET .../models`` lists models.
  Anything else is a 404 in the dialect guessed from the headers (``anthropic-version`` or
  ``x-api-key`` means Anthropic, otherwise OpenAI).
* ``"stream": true`` in the request JSON selects SSE (``transfer-encoding: chunked``), otherwise
  a JSON body with ``content-length``.
* ``x-mock-*`` request headers choose a scenario; see :class:`Scenario`.
* Request-id headers are derived from the request's method, path and body, so a request sent
  directly and through a proxy gets the same one; message ids and timestamps are random/now
  unless ``x-mock-fixed-ids: 1`` makes every body byte-stable.

Standalone: ``python -m tests.mock_upstream --port 9999`` or ``python tests/mock_upstream.py``.

Only the standard library is used, so the module also runs outside the project's venv.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import email.utils
import gzip
import hashlib
import http
import itertools
import json
import secrets
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NoReturn
from urllib.parse import urlsplit

__all__ = ["MockUpstream", "MockUpstreamThread", "RecordedRequest", "Scenario", "DEFAULT_TEXT"]

#: The reply text when no scenario asks for something else.
DEFAULT_TEXT = "Hello from the mock upstream."
INPUT_TOKENS = 12
CACHE_READ_TOKENS = 3
CACHE_CREATION_TOKENS = 0
MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "gpt-4o", "gpt-4o-mini")

_READ_SIZE = 65536
_MAX_HEAD = 65536
_SPLIT_SIZES = (1, 4, 7, 2, 5, 3, 6)  # byte counts cycled through by x-mock-split
_SPLIT_PAUSE = 0.001  # seconds between split pieces, so that they land in separate reads
_GARBAGE = b"\x00\x01\xffSSH-2.0-not-http \x80\x81\x82 garbage garbage\r\n\r\n"
_RETRY_AFTER_STATUSES = frozenset({429, 503, 529})
_ORG_ID = "3f1c2b7a-4d5e-4f60-8a9b-0c1d2e3f4a5b"


# --------------------------------------------------------------------------- scenario


def _ms(value: str) -> float:
    """Milliseconds as seconds; must be >= 0."""
    number = float(value)
    if number < 0:
        raise ValueError("must be >= 0")
    return number / 1000


def _count(value: str) -> int:
    """A count >= 0."""
    number = int(value)
    if number < 0:
        raise ValueError("must be >= 0")
    return number


def _positive(value: str) -> int:
    """A count >= 1."""
    number = int(value)
    if number < 1:
        raise ValueError("must be >= 1")
    return number


def _flag(value: str) -> bool:
    """``1``/``true``/``yes``/``on`` is on, ``0``/``false``/``no``/``off``/empty is off."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("must be a flag (1/0)")


def _status(value: str) -> int:
    """An HTTP status code 100..599."""
    number = int(value)
    if not 100 <= number <= 599:
        raise ValueError("must be 100..599")
    return number


CONTENTS = ("text", "tools", "parallel_tools", "thinking")


def _content(value: str) -> str:
    """One of :data:`CONTENTS`."""
    lowered = value.strip().lower()
    if lowered not in CONTENTS:
        raise ValueError(f"must be one of {', '.join(CONTENTS)}")
    return lowered


def _opt(header: str, parse: Callable[[str], Any], default: Any) -> Any:
    """A :class:`Scenario` field read from request header ``header`` by ``parse``."""
    return field(default=default, metadata={"header": header, "parse": parse})


@dataclass(frozen=True)
class Scenario:
    """How to answer one request, from its ``x-mock-*`` headers. Durations are in seconds here
    (milliseconds on the wire); ``None`` means off. An unparsable value gets a 400 naming it.

    "Events" are SSE events including ``message_start``/``ping``/``[DONE]``. For JSON replies
    ``delay`` is slept once before the head, and ``drop_after``/``truncate`` send the head with
    half the promised body, then FIN. ``coalesce`` ignores ``split``, ``stall_after``,
    ``drop_after`` and ``truncate``. A ``status`` below 400 only replaces the status code.
    Each :class:`MockUpstream` counter says how the response ended.
    """

    delay: float = _opt("x-mock-delay", _ms, 0.0)  # before the first event and between events
    events: int | None = _opt("x-mock-events", _positive, None)  # number of text deltas
    content: str = _opt("x-mock-content", _content, "text")
    split: bool = _opt("x-mock-split", _flag, False)  # every event in 1-7 byte writes
    coalesce: bool = _opt("x-mock-coalesce", _flag, False)  # head + all events in one write
    crlf: bool = _opt("x-mock-crlf", _flag, False)  # SSE lines end in \r\n
    status: int | None = _opt("x-mock-status", _status, None)  # >= 400: dialect error body
    headers_delay: float = _opt("x-mock-headers-delay", _ms, 0.0)  # before the status line
    drop_after: int | None = _opt("x-mock-drop-after", _count, None)  # FIN after N events
    reset: bool = _opt("x-mock-reset", _flag, False)  # RST before any response byte
    garbage: bool = _opt("x-mock-garbage", _flag, False)  # non-HTTP bytes, then FIN
    truncate: bool = _opt("x-mock-truncate", _flag, False)  # chunk promises more than sent
    stall_after: int | None = _opt("x-mock-stall-after", _count, None)  # pause after N events
    stall: float = _opt("x-mock-stall", _ms, 5.0)  # ... for this long, then continue
    inband_error: bool = _opt("x-mock-inband-error", _flag, False)  # error event after a delta
    gzip: bool = _opt("x-mock-gzip", _flag, False)  # gzip if the client accepts it
    echo: bool = _opt("x-mock-echo", _flag, False)  # answer with the request as JSON
    unknown_event: bool = _opt("x-mock-unknown-event", _flag, False)  # Anthropic future_event
    fixed_ids: bool = _opt("x-mock-fixed-ids", _flag, False)  # ids, timestamps: byte-stable bodies
    interleave: bool = _opt("x-mock-interleave", _flag, False)  # OpenAI: parallel tool calls' pieces alternate

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, str]]) -> Scenario:
        """The scenario the headers ask for (last occurrence wins).

        Raises:
            ValueError: a header value does not parse; the message names the header.
        """
        given = {name.lower(): value for name, value in headers}
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            header = f.metadata["header"]
            if header in given:
                try:
                    kwargs[f.name] = f.metadata["parse"](given[header])
                except ValueError as exc:
                    raise ValueError(f"{header}: {given[header]!r} {exc}") from None
        return cls(**kwargs)


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class RecordedRequest:
    """One request as it arrived. ``headers`` keep order and original case; ``body`` is
    de-chunked."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    http_version: str = "HTTP/1.1"
    connection_id: int = 0  # which TCP connection (1, 2, ...) carried it

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` (case-insensitive), or None."""
        lowered = name.lower()
        found = None
        for key, value in self.headers:
            if key.lower() == lowered:
                found = value
        return found

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @property
    def keep_alive(self) -> bool:
        """Whether the client lets the connection stay open after the response."""
        tokens = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        if self.http_version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    @property
    def accepts_gzip(self) -> bool:
        """Whether ``accept-encoding`` allows gzip with q > 0."""
        for part in (self.header("accept-encoding") or "").split(","):
            coding, _, params = part.partition(";")
            if coding.strip().lower() in ("gzip", "x-gzip", "*"):
                q = 1.0
                for param in params.split(";"):
                    key, _, value = param.partition("=")
                    if key.strip().lower() == "q":
                        try:
                            q = float(value)
                        except ValueError:
                            q = 0.0
                return q > 0
        return False


class _BadRequest(Exception):
    """The bytes received are not an HTTP/1.x request we understand."""


class _PeerGone(Exception):
    """The client closed or reset the connection while we were answering."""


class _Aborted(Exception):
    """The scenario cut the response short on purpose (reset, garbage, drop, truncate)."""


class _Connection:
    """One TCP connection: buffered request reading, and writes that notice a departed peer.

    While a response is being written, a watcher task keeps reading so that a FIN or RST from
    the client is seen at once, even during a delay or stall; bytes it reads (a pipelined next
    request) stay buffered for the next :meth:`read_request`.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn_id: int):
        self.reader = reader
        self.writer = writer
        self.id = conn_id
        self.eof = False
        self._buf = bytearray()
        self._gone = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    # -- reading

    async def _fill(self) -> None:
        try:
            data = await self.reader.read(_READ_SIZE)
        except OSError:
            data = b""
        if data:
            self._buf += data
        else:
            self.eof = True
            self._gone.set()

    async def _read_until(self, sep: bytes, limit: int = _MAX_HEAD) -> bytes:
        start = 0
        while (index := self._buf.find(sep, start)) < 0:
            if len(self._buf) > limit:
                raise _BadRequest("request head too large")
            if self.eof:
                raise _PeerGone
            start = max(0, len(self._buf) - len(sep) + 1)
            await self._fill()
        out = bytes(self._buf[:index])
        del self._buf[: index + len(sep)]
        return out

    async def _read_exact(self, size: int) -> bytes:
        while len(self._buf) < size:
            if self.eof:
                raise _PeerGone
            await self._fill()
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out

    async def read_request(self) -> RecordedRequest | None:
        """The next request, or None if the client closed the connection between requests.

        Raises:
            _BadRequest: malformed request.
            _PeerGone: the client left in the middle of a request.
        """
        while not self._buf.lstrip(b"\r\n"):
            if self.eof:
                return None
            await self._fill()
        del self._buf[: len(self._buf) - len(self._buf.lstrip(b"\r\n"))]
        lines = (await self._read_until(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise _BadRequest(f"bad request line {lines[0]!r}") from None
        if not version.startswith("HTTP/1."):
            raise _BadRequest(f"unsupported version {version!r}")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise _BadRequest(f"bad header line {line!r}")
            headers.append((name, value.strip(" \t")))
        if target.startswith(("http://", "https://")):  # absolute-form, as sent to proxies
            parts = urlsplit(target)
            path, query = parts.path or "/", parts.query
        else:
            path, _, query = target.partition("?")
        partial = RecordedRequest(method, path, query, headers, b"", version, self.id)
        if (partial.header("expect") or "").lower() == "100-continue":
            await self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return RecordedRequest(method, path, query, headers, await self._read_body(partial),
                               version, self.id)

    async def _read_body(self, request: RecordedRequest) -> bytes:
        codings = (request.header("transfer-encoding") or "").lower()
        if codings:
            if codings.split(",")[-1].strip() != "chunked":
                raise _BadRequest(f"unsupported transfer-encoding {codings!r}")
            return await self._read_chunked()
        length = request.header("content-length")
        if length is None:
            return b""
        if not length.strip().isdigit():
            raise _BadRequest(f"bad content-length {length!r}")
        return await self._read_exact(int(length))

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_line = await self._read_until(b"\r\n")
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _BadRequest(f"bad chunk size {size_line!r}") from None
            if size == 0:
                while await self._read_until(b"\r\n"):  # trailers up to the blank line
                    pass
                return bytes(body)
            body += await self._read_exact(size)
            if await self._read_exact(2) != b"\r\n":
                raise _BadRequest("chunk not followed by CRLF")

    # -- writing

    def watch(self) -> None:
        """Start noticing a client that leaves; call before answering."""
        if not self.eof and self._watcher is None:
            self._watcher = asyncio.create_task(self._watch())

    async def unwatch(self) -> None:
        """Stop the watcher started by :meth:`watch` and wait for it."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _watch(self) -> None:
        while not self.eof:
            await self._fill()

    async def write(self, data: bytes) -> None:
        """One ``write`` plus ``drain``. Raises :class:`_PeerGone` if the client left."""
        if self._gone.is_set():
            raise _PeerGone
        try:
            self.writer.write(data)
            await self.writer.drain()
        except OSError as exc:
            raise _PeerGone from exc

    async def sleep(self, seconds: float) -> None:
        """Sleep, but raise :class:`_PeerGone` as soon as the client leaves."""
        if self._gone.is_set():
            raise _PeerGone
        if seconds > 0:
            try:
                await asyncio.wait_for(self._gone.wait(), seconds)
            except TimeoutError:
                return
            raise _PeerGone

    def close(self) -> None:
        """Close after flushing what was written (FIN)."""
        self.writer.close()

    def reset(self) -> None:
        """Close with an RST: SO_LINGER 0, then abort."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


# --------------------------------------------------------------------------- content


@dataclass(frozen=True)
class _Text:
    pieces: tuple[str, ...]


@dataclass(frozen=True)
class _Thinking:
    pieces: tuple[str, ...]
    signature: str


@dataclass(frozen=True)
class _Tool:
    suffix: str  # the dialect adds its id prefix (toolu_ / call_)
    name: str
    arguments: str  # the JSON text of the arguments
    pieces: tuple[str, ...]  # ``arguments`` cut into streaming fragments


_Block = _Text | _Thinking | _Tool


def _group(items: Sequence[str], n: int) -> tuple[str, ...]:
    """``items`` joined into ``n`` contiguous, nearly equal, non-empty groups."""
    n = min(n, len(items))
    bounds = [round(i * len(items) / n) for i in range(n + 1)]
    return tuple("".join(items[a:b]) for a, b in itertools.pairwise(bounds))


def _words(text: str, n: int) -> tuple[str, ...]:
    """``text`` as ``n`` deltas; with more deltas than words the words are repeated."""
    words = text.split(" ")
    words = [words[i % len(words)] for i in range(max(n, len(words)))]
    return _group([w if i == 0 else " " + w for i, w in enumerate(words)], n)


def _tool(suffix: str, name: str, arguments: dict[str, Any]) -> _Tool:
    text = json.dumps(arguments)
    return _Tool(suffix, name, text, tuple(text[i : i + 9] for i in range(0, len(text), 9)))


_WEATHER_SF = ("01A09q90qw90lq917835lq9", "get_weather", {"location": "San Francisco, CA", "unit": "celsius"})
_WEATHER_TOKYO = ("01B77e21rt45kx553390wz2", "get_weather", {"location": "Tokyo, Japan", "unit": "celsius"})
_THOUGHT = "The user said hello. A short, friendly greeting is the right answer here."
_SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds2b7m5iS3fDjKdE6HrQqAKF9H2TMAn"

_CONTENT_PLANS: dict[str, Callable[[int | None], list[_Block]]] = {
    "text": lambda n: [_Text(_words(DEFAULT_TEXT, n or 5))],
    "tools": lambda n: [_tool(*_WEATHER_SF)],
    "parallel_tools": lambda n: [_tool(*_WEATHER_SF), _tool(*_WEATHER_TOKYO)],
    "thinking": lambda n: [_Thinking(_words(_THOUGHT, 3), _SIGNATURE), _Text(_words(DEFAULT_TEXT, n or 5))],
}


def _output_tokens(blocks: Sequence[_Block]) -> int:
    """The mock's token count: one per streamed content piece."""
    return sum(len(b.pieces) for b in blocks)


def _model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    return model if isinstance(model, str) and model else "mock-model"


_Event = tuple[str | None, Any]  # (SSE event name or None, data as JSON-able or a raw str)


@dataclass
class _Reply:
    """What to send: a JSON body (``events is None``) or an SSE stream of ``events``."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    events: list[_Event] | None = None


def _rate_limit_headers(families: Iterable[str], pattern: str, status: int,
                        limit: int, reset: str) -> list[tuple[str, str]]:
    """``pattern`` formatted with family and limit/remaining/reset, for each family."""
    remaining = 0 if status == 429 else limit - 1
    out = []
    for family in families:
        for kind, value in (("limit", limit), ("remaining", remaining), ("reset", reset)):
            out.append((pattern.format(family=family, kind=kind), str(value)))
    return out


# Status -> (Anthropic type, OpenAI type, OpenAI code, message)
_ERRORS: dict[int, tuple[str, str, str | None, str]] = {
    400: ("invalid_request_error", "invalid_request_error", None, "Invalid request."),
    401: ("authentication_error", "invalid_request_error", "invalid_api_key", "Invalid API key."),
    403: ("permission_error", "invalid_request_error", None, "Your API key does not have permission."),
    404: ("not_found_error", "invalid_request_error", None, "Not found."),
    413: ("request_too_large", "invalid_request_error", None, "Request exceeds the maximum size."),
    429: ("rate_limit_error", "requests", "rate_limit_exceeded", "Rate limit exceeded, retry later."),
    500: ("api_error", "server_error", None, "Internal server error."),
    503: ("overloaded_error", "server_error", None, "The service is temporarily overloaded."),
    529: ("overloaded_error", "server_error", None, "Overloaded"),
}


def _error_kind(status: int) -> tuple[str, str, str | None, str]:
    if status in _ERRORS:
        return _ERRORS[status]
    if status >= 500:
        return ("api_error", "server_error", None, "Internal server error.")
    return ("invalid_request_error", "invalid_request_error", None, f"Request failed ({status}).")


_FIXED_TIME = 1767225600  # 2026-01-01T00:00:00Z, the clock under x-mock-fixed-ids


class _Dialect(abc.ABC):
    """One provider's shapes, for one reply. Subclasses fill in headers, errors, JSON, streams."""

    def __init__(self, request: RecordedRequest | None = None, fixed_ids: bool = False):
        self.request, self.fixed_ids = request, fixed_ids

    def _token(self, nbytes: int) -> str:
        """A random hex id part (message ids), or zeros under ``x-mock-fixed-ids``."""
        return "0" * (2 * nbytes) if self.fixed_ids else secrets.token_hex(nbytes)

    def _request_token(self, nbytes: int) -> str:
        """A hex id part derived from the request's method, path and body (request-id headers):
        the same request sent directly and through a proxy gets the same id."""
        if self.fixed_ids or self.request is None:
            return self._token(nbytes)
        seed = f"{self.request.method} {self.request.path}\n".encode() + self.request.body
        return hashlib.blake2b(seed, digest_size=nbytes).hexdigest()

    def _now(self) -> int:
        """Seconds since the epoch, or a fixed instant under ``x-mock-fixed-ids``."""
        return _FIXED_TIME if self.fixed_ids else int(time.time())

    def _reset_at(self) -> int:
        """When rate limits reset: the next minute boundary after the next (stable for a minute)."""
        return (self._now() // 60 + 2) * 60

    @abc.abstractmethod
    def headers(self, status: int) -> list[tuple[str, str]]:
        """Provider response headers for a reply with ``status``."""

    @abc.abstractmethod
    def error(self, status: int, message: str | None = None) -> dict[str, Any]:
        """The error body for ``status``."""

    @abc.abstractmethod
    def completion(self, body: dict[str, Any], blocks: list[_Block]) -> dict[str, Any]:
        """The non-streaming reply."""

    @abc.abstractmethod
    def stream(self, body: dict[str, Any], blocks: list[_Block], sc: Scenario) -> list[_Event]:
        """The streaming reply's events, with the scenario's in-band error and unknown event."""

    @abc.abstractmethod
    def models(self) -> dict[str, Any]:
        """The models list."""

    def blocks(self, sc: Scenario) -> list[_Block]:
        """The content plan for ``sc`` that this dialect can express."""
        return _CONTENT_PLANS[sc.content](sc.events)

    def error_reply(self, status: int, message: str | None = None) -> _Reply:
        """A JSON error reply, with ``retry-after`` where the real APIs send it."""
        headers = self.headers(status)
        if status in _RETRY_AFTER_STATUSES:
            headers.append(("retry-after", "7"))
        return _Reply(status, headers, _dumps(self.error(status, message)))


class _Anthropic(_Dialect):
    """Anthropic Messages: `request-id`, `anthropic-ratelimit-*`, typed SSE events."""

    def headers(self, status: int) -> list[tuple[str, str]]:
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._reset_at()))
        return [
            ("request-id", f"req_{self._request_token(12)}"),
            ("anthropic-organization-id", _ORG_ID),
            *_rate_limit_headers(("requests",), "anthropic-ratelimit-{family}-{kind}", status, 4000, reset),
            *_rate_limit_headers(("tokens", "input-tokens", "output-tokens"),
                                 "anthropic-ratelimit-{family}-{kind}", status, 400000, reset),
            ("anthropic-ratelimit-unified-status", "rejected" if status == 429 else "allowed"),
            ("anthropic-ratelimit-unified-reset", str(self._reset_at())),
        ]

    def error(self, status: int, message: str | None = None) -> dict[str, Any]:
        kind, _, _, default = _error_kind(status)
        return {"type": "error", "error": {"type": kind, "message": message or default}}

    @staticmethod
    def _usage(output_tokens: int) -> dict[str, Any]:
        return {"input_tokens": INPUT_TOKENS, "cache_creation_input_tokens": CACHE_CREATION_TOKENS,
                "cache_read_input_tokens": CACHE_READ_TOKENS, "output_tokens": output_tokens}

    @staticmethod
    def _stop_reason(blocks: Sequence[_Block]) -> str:
        return "tool_use" if any(isinstance(b, _Tool) for b in blocks) else "end_turn"

    @staticmethod
    def _block(block: _Block, *, empty: bool) -> dict[str, Any]:
        """The whole block, or the empty one that ``content_block_start`` carries."""
        match block:
            case _Text(pieces):
                return {"type": "text", "text": "" if empty else "".join(pieces)}
            case _Thinking(pieces, signature):
                return {"type": "thinking", "thinking": "" if empty else "".join(pieces),
                        "signature": "" if empty else signature}
            case _Tool(suffix, name, arguments, _):
                return {"type": "tool_use", "id": f"toolu_{suffix}", "name": name,
                        "input": {} if empty else json.loads(arguments)}
        raise TypeError(block)

    @staticmethod
    def _deltas(block: _Block) -> list[dict[str, Any]]:
        match block:
            case _Text(pieces):
                return [{"type": "text_delta", "text": p} for p in pieces]
            case _Thinking(pieces, signature):
                return [*({"type": "thinking_delta", "thinking": p} for p in pieces),
                        {"type": "signature_delta", "signature": signature}]
            case _Tool(_, _, _, pieces):  # the real API starts with an empty fragment
                return [{"type": "input_json_delta", "partial_json": p} for p in ("", *pieces)]
        raise TypeError(block)

    def completion(self, body: dict[str, Any], blocks: list[_Block]) -> dict[str, Any]:
        return {
            "id": f"msg_{self._token(12)}", "type": "message", "role": "assistant",
            "model": _model_of(body), "content": [self._block(b, empty=False) for b in blocks],
            "stop_reason": self._stop_reason(blocks), "stop_sequence": None,
            "usage": self._usage(_output_tokens(blocks)),
        }

    def stream(self, body: dict[str, Any], blocks: list[_Block], sc: Scenario) -> list[_Event]:
        message = {**self.completion(body, blocks), "content": [], "stop_reason": None,
                   "usage": self._usage(1)}
        events: list[_Event] = [("message_start", {"type": "message_start", "message": message}),
                                ("ping", {"type": "ping"})]
        if sc.unknown_event:
            events.append(("future_event", {"type": "future_event",
                                            "detail": {"note": "an event type clients do not know yet"}}))
        first_delta = None
        for index, block in enumerate(blocks):
            events.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": self._block(block, empty=True)}))
            for delta in self._deltas(block):
                events.append(("content_block_delta",
                               {"type": "content_block_delta", "index": index, "delta": delta}))
                first_delta = first_delta or len(events)
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        if sc.inband_error:
            return [*events[:first_delta], ("error", {"type": "error", "error": {
                "type": "overloaded_error", "message": "Overloaded"}})]
        return [*events,
                ("message_delta", {"type": "message_delta",
                                   "delta": {"stop_reason": self._stop_reason(blocks), "stop_sequence": None},
                                   "usage": {"output_tokens": _output_tokens(blocks)}}),
                ("message_stop", {"type": "message_stop"})]

    def models(self) -> dict[str, Any]:
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-09-29T00:00:00Z"}
                for m in MODELS]
        return {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]}


class _OpenAI(_Dialect):
    """OpenAI Chat Completions: `x-request-id`, `x-ratelimit-*`, `data:` chunks and `[DONE]`."""

    def headers(self, status: int) -> list[tuple[str, str]]:
        return [
            ("x-request-id", f"req_{self._request_token(16)}"),
            ("openai-organization", "mock-org"),
            ("openai-processing-ms", "42"),
            ("openai-version", "2020-10-01"),
            *_rate_limit_headers(("requests",), "x-ratelimit-{kind}-{family}", status, 10000, "6ms"),
            *_rate_limit_headers(("tokens",), "x-ratelimit-{kind}-{family}", status, 30000000, "0s"),
        ]

    def error(self, status: int, message: str | None = None) -> dict[str, Any]:
        _, kind, code, default = _error_kind(status)
        return {"error": {"message": message or default, "type": kind, "param": None, "code": code}}

    def blocks(self, sc: Scenario) -> list[_Block]:
        return [b for b in super().blocks(sc) if not isinstance(b, _Thinking)]

    @staticmethod
    def _usage(blocks: Sequence[_Block]) -> dict[str, Any]:
        output = _output_tokens(blocks)
        return {"prompt_tokens": INPUT_TOKENS, "completion_tokens": output,
                "total_tokens": INPUT_TOKENS + output,
                "prompt_tokens_details": {"cached_tokens": CACHE_READ_TOKENS, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0,
                                              "rejected_prediction_tokens": 0}}

    @staticmethod
    def _finish_reason(blocks: Sequence[_Block]) -> str:
        return "tool_calls" if any(isinstance(b, _Tool) for b in blocks) else "stop"

    @staticmethod
    def _tool_call(tool: _Tool) -> dict[str, Any]:
        return {"id": f"call_{tool.suffix}", "type": "function",
                "function": {"name": tool.name, "arguments": tool.arguments}}

    def _envelope(self, body: dict[str, Any], obj: str) -> dict[str, Any]:
        return {"id": f"chatcmpl-{self._token(12)}", "object": obj, "created": self._now(),
                "model": _model_of(body), "service_tier": "default", "system_fingerprint": "fp_mock0001"}

    def completion(self, body: dict[str, Any], blocks: list[_Block]) -> dict[str, Any]:
        text = "".join("".join(b.pieces) for b in blocks if isinstance(b, _Text))
        tools = [self._tool_call(b) for b in blocks if isinstance(b, _Tool)]
        message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None,
                                   "annotations": []}
        if tools:
            message["tool_calls"] = tools
        return {**self._envelope(body, "chat.completion"),
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": self._finish_reason(blocks)}],
                "usage": self._usage(blocks)}

    def stream(self, body: dict[str, Any], blocks: list[_Block], sc: Scenario) -> list[_Event]:
        envelope = self._envelope(body, "chat.completion.chunk")
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True

        def chunk(delta: dict[str, Any], finish: str | None = None) -> _Event:
            data = {**envelope, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish}]}
            if include_usage:
                data["usage"] = None
            return (None, data)

        has_text = any(isinstance(b, _Text) for b in blocks)
        events = [chunk({"role": "assistant", "content": "" if has_text else None, "refusal": None})]
        tool_index = 0
        calls: list[list[_Event]] = []  # per tool call, its fragments
        for block in blocks:
            if isinstance(block, _Text):
                events += [chunk({"content": p}) for p in block.pieces]
            elif isinstance(block, _Tool):
                first = {"index": tool_index, **self._tool_call(block)}
                first["function"] = {**first["function"], "arguments": ""}
                calls.append([chunk({"tool_calls": [first]})])
                calls[-1] += [chunk({"tool_calls": [{"index": tool_index, "function": {"arguments": p}}]})
                              for p in block.pieces]
                tool_index += 1
        if sc.interleave:  # the first fragment of every call, then the second of each, ... (valid OpenAI)
            events += [c[i] for i in range(max(map(len, calls), default=0)) for c in calls if i < len(c)]
        else:
            events += [fragment for call in calls for fragment in call]
        if sc.inband_error:
            return [*events[:2], (None, self.error(500, "The server had an error while processing "
                                                        "your request. Sorry about that!"))]
        events.append(chunk({}, self._finish_reason(blocks)))
        if include_usage:
            events.append((None, {**envelope, "choices": [], "usage": self._usage(blocks)}))
        return [*events, (None, "[DONE]")]

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 1727740800,
                                            "owned_by": "mock"} for m in MODELS]}


def _dialect_of(request: RecordedRequest) -> type[_Dialect]:
    """The dialect a request without a dialect-specific path is answered in."""
    if request.header("anthropic-version") is not None or request.header("x-api-key") is not None:
        return _Anthropic
    return _OpenAI


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _request_json(dialect: _Dialect, request: RecordedRequest) -> dict[str, Any] | _Reply:
    """The request body as a JSON object, or a 400 reply saying why not."""
    try:
        body = request.json()
    except ValueError:
        return dialect.error_reply(400, "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return dialect.error_reply(400, "The request body must be a JSON object.")
    return body


def _generate(dialect: _Dialect, request: RecordedRequest, sc: Scenario) -> _Reply:
    """A completion in ``dialect``: JSON or a stream, as the body's ``stream`` asks."""
    body = _request_json(dialect, request)
    if isinstance(body, _Reply):
        return body
    blocks = dialect.blocks(sc)
    headers = dialect.headers(200)
    if body.get("stream") is True:
        return _Reply(200, [*headers, ("cache-control", "no-cache")],
                      events=dialect.stream(body, blocks, sc))
    return _Reply(200, headers, _dumps(dialect.completion(body, blocks)))


def _count_tokens(dialect: _Dialect, request: RecordedRequest, sc: Scenario) -> _Reply:
    body = _request_json(dialect, request)
    if isinstance(body, _Reply):
        return body
    return _Reply(200, dialect.headers(200), _dumps({"input_tokens": INPUT_TOKENS}))


def _models(dialect: _Dialect, request: RecordedRequest, sc: Scenario) -> _Reply:
    return _Reply(200, dialect.headers(200), _dumps(dialect.models()))


_Handler = Callable[[_Dialect, RecordedRequest, Scenario], _Reply]

# (method, path suffix, dialect or None to guess it from the headers, handler); first match wins.
_ROUTES: tuple[tuple[str, str, type[_Dialect] | None, _Handler], ...] = (
    ("POST", "/v1/messages/count_tokens", _Anthropic, _count_tokens),
    ("POST", "/v1/messages", _Anthropic, _generate),
    ("POST", "/chat/completions", _OpenAI, _generate),
    ("GET", "/models", None, _models),
)


def _route(request: RecordedRequest, sc: Scenario) -> _Reply:
    """The reply for ``request`` under ``sc`` (echo and status overrides included)."""
    if sc.echo:
        return _Reply(200, [], _dumps({
            "method": request.method, "path": request.path, "query": request.query,
            "headers": [list(h) for h in request.headers],
            "body": request.body.decode("utf-8", "replace")}))
    for method, suffix, dialect_type, handler in _ROUTES:
        if request.path.rstrip("/").endswith(suffix):
            dialect = (dialect_type or _dialect_of(request))(request, sc.fixed_ids)
            if request.method != method and (method, request.method) != ("GET", "HEAD"):
                return dialect.error_reply(405, f"Method {request.method} not allowed.")
            if sc.status is not None and sc.status >= 400:
                return dialect.error_reply(sc.status)
            reply = handler(dialect, request, sc)
            if sc.status is not None:
                reply.status = sc.status
            return reply
    dialect = _dialect_of(request)(request, sc.fixed_ids)
    return dialect.error_reply(404, f"Invalid URL ({request.method} {request.path})")


# --------------------------------------------------------------------------- wire


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return {529: "Site Overloaded"}.get(status, "Unknown")


def _head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _sse(event: _Event, eol: str) -> bytes:
    """One SSE event: optional ``event:`` line, one ``data:`` line, blank line."""
    name, data = event
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    lines = ([f"event: {name}"] if name else []) + [f"data: {text}"]
    return (eol.join(lines) + eol + eol).encode()


def _chunk(data: bytes) -> bytes:
    """``data`` as one HTTP chunk; empty data gives no bytes (an empty chunk would end the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


def _pieces(data: bytes) -> list[bytes]:
    """``data`` cut into 1-7 byte pieces."""
    out, pos, sizes = [], 0, itertools.cycle(_SPLIT_SIZES)
    while pos < len(data):
        size = next(sizes)
        out.append(data[pos : pos + size])
        pos += size
    return out


class _ReplyWriter:
    """Writes one :class:`_Reply` to a connection, applying the scenario's transport faults."""

    def __init__(self, conn: _Connection, sc: Scenario, *, keep_alive: bool, head_only: bool,
                 gzip: bool):
        self.conn, self.sc = conn, sc
        self.keep_alive, self.head_only, self.gzip = keep_alive, head_only, gzip

    async def send(self, reply: _Reply) -> None:
        """Raises :class:`_PeerGone` or :class:`_Aborted` when the response did not complete."""
        if self.sc.reset:
            self.conn.reset()
            raise _Aborted
        await self.conn.sleep(self.sc.headers_delay)
        if self.sc.garbage:
            await self.conn.write(_GARBAGE)
            self._abort()
        headers = [("date", email.utils.formatdate(usegmt=True)), ("server", "mock-upstream"),
                   *reply.headers, ("set-cookie", "__cf_bm=mock; path=/; HttpOnly; Secure; SameSite=None"),
                   ("connection", "keep-alive" if self.keep_alive else "close")]
        if self.keep_alive:
            headers.append(("keep-alive", "timeout=5"))
        if self.gzip:
            headers.append(("content-encoding", "gzip"))
        if reply.events is None:
            await self._send_json(reply.status, headers, reply.body)
        else:
            await self._send_stream(reply.status, headers, reply.events)

    def _abort(self) -> NoReturn:
        """End the response early on purpose: FIN, then :class:`_Aborted`."""
        self.conn.close()
        raise _Aborted

    async def _emit(self, data: bytes) -> None:
        """Write ``data`` whole, or in 1-7 byte pieces with pauses under ``x-mock-split``."""
        if not self.sc.split:
            await self.conn.write(data)
            return
        for index, piece in enumerate(_pieces(data)):
            if index:
                await asyncio.sleep(_SPLIT_PAUSE)
            await self.conn.write(piece)

    async def _send_json(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        if self.gzip:
            body = gzip.compress(body, mtime=0)
        head = _head(status, [*headers, ("content-type", "application/json"),
                              ("content-length", str(len(body)))])
        await self.conn.sleep(self.sc.delay)
        if self.head_only:
            await self.conn.write(head)
        elif self.sc.truncate or self.sc.drop_after is not None:
            await self.conn.write(head + body[: len(body) // 2])
            self._abort()
        else:
            await self.conn.write(head)
            await self._emit(body)

    async def _send_stream(self, status: int, headers: list[tuple[str, str]],
                           events: list[_Event]) -> None:
        sc = self.sc
        eol = "\r\n" if sc.crlf else "\n"
        # Encoded as they are sent: the head goes out before a long body is built (as a real upstream's
        # does), so building 100,000 events on a loaded machine cannot hold the head back.
        frames = (_sse(event, eol) for event in events)
        compressor = zlib.compressobj(wbits=31) if self.gzip else None

        def encode(frame: bytes) -> bytes:
            if compressor is None:
                return frame
            return compressor.compress(frame) + compressor.flush(zlib.Z_SYNC_FLUSH)

        def tail() -> bytes:
            return (_chunk(compressor.flush()) if compressor else b"") + b"0\r\n\r\n"

        head = _head(status, [*headers, ("content-type", "text/event-stream; charset=utf-8"),
                              ("transfer-encoding", "chunked")])
        if self.head_only:
            await self.conn.write(head)
            return
        if sc.coalesce:
            await self.conn.sleep(sc.delay)
            await self.conn.write(head + b"".join(_chunk(encode(f)) for f in frames) + tail())
            return
        await self.conn.write(head)
        for index, frame in enumerate(frames):
            if index == sc.stall_after:
                await self.conn.sleep(sc.stall)
            await self.conn.sleep(sc.delay)
            if index == sc.drop_after:
                self._abort()
            data = encode(frame)
            if sc.truncate and index == len(events) // 2:
                await self._emit(b"%x\r\n" % len(data) + data[: len(data) // 2])
                self._abort()
            await self._emit(_chunk(data))
        await self.conn.write(tail())


# --------------------------------------------------------------------------- server


class MockUpstream:
    """The mock server on the running event loop.

    Counters (plain ints, safe to read from another thread):
        open_connections: TCP connections open now.
        connections_accepted: TCP connections accepted in total.
        active_streams: responses being written now (JSON or SSE).
        completed: responses written to the end.
        disconnects: responses cut short because the client closed or reset the connection.
        aborted: responses cut short on purpose by a fault scenario.
    ``requests`` holds every request received; ``errors`` every unexpected exception (a bug in
    the mock; tests should assert it stays empty).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host, self.port = host, port
        self.requests: list[RecordedRequest] = []
        self.errors: list[BaseException] = []
        self.open_connections = 0
        self.connections_accepted = 0
        self.active_streams = 0
        self.reset_stats()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def reset_stats(self) -> None:
        """Forget recorded requests and zero the cumulative counters (not the live gauges, and
        not ``errors``)."""
        self.requests.clear()
        self.disconnects = 0
        self.completed = 0
        self.aborted = 0

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, valid after :meth:`start`."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen; with port 0 the chosen port is in :attr:`port` and :attr:`url`."""
        self._closing = False
        self._server = await asyncio.start_server(self._on_connect, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, cancel every connection and wait until all of them are gone."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        await asyncio.sleep(0)  # let just-accepted connections register their tasks
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def wait_for(self, predicate: Callable[[MockUpstream], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate(self)`` until true (returns True) or ``timeout`` seconds (False)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections_accepted += 1
        self.open_connections += 1
        conn = _Connection(reader, writer, self.connections_accepted)
        try:
            while await self._serve_one(conn):
                pass
        except Exception as exc:  # a bug in the mock: keep it for the tests to see
            self.errors.append(exc)
        finally:
            await conn.unwatch()
            conn.close()
            self.open_connections -= 1
            self._tasks.discard(task)

    async def _serve_one(self, conn: _Connection) -> bool:
        """Read and answer one request; True if the connection may carry another."""
        try:
            request = await conn.read_request()
        except _PeerGone:
            return False
        except _BadRequest as exc:
            body = _dumps(_OpenAI().error(400, str(exc)))
            head = _head(400, [("content-type", "application/json"), ("content-length", str(len(body))),
                               ("connection", "close")])
            try:
                await conn.write(head + body)
            except _PeerGone:
                pass
            return False
        if request is None:
            return False
        self.requests.append(request)
        try:
            sc = Scenario.from_headers(request.headers)
        except ValueError as exc:
            sc = Scenario()
            reply = _dialect_of(request)(request).error_reply(400, str(exc))
        else:
            reply = _route(request, sc)
        keep_alive = request.keep_alive
        writer = _ReplyWriter(conn, sc, keep_alive=keep_alive, head_only=request.method == "HEAD",
                              gzip=sc.gzip and request.accepts_gzip)
        self.active_streams += 1
        conn.watch()
        try:
            await writer.send(reply)
        except _PeerGone:
            self.disconnects += 1
            return False
        except _Aborted:
            self.aborted += 1
            return False
        finally:
            self.active_streams -= 1
            await conn.unwatch()
        self.completed += 1
        return keep_alive and not conn.eof


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


def main(argv: Sequence[str] | None = None) -> None:
    """Run the mock until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (for benchmarks)")
    args = parser.parse_args(argv)

    async def serve() -> None:
        upstream = MockUpstream(args.host, args.port)
        await upstream.start()
        print(f"mock upstream listening on {upstream.url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await upstream.stop()

    try:
        if args.uvloop:
            import uvloop

            uvloop.run(serve())
        else:
            asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
