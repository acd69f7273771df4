"""Stream translators: event state machines on :class:`ccproxy_core.SSEParser`.

Each translator is a :class:`~ccproxy_plugins.translate.base.ResponseAdapter`: ``feed`` takes
upstream bytes split anywhere and returns client bytes for every event completed so
far; ``finish`` ends the stream. After an error frame or the final event, further
input is ignored.

Errors the upstream reports in the stream become the client's in-band error frame.
Failures of the stream itself raise :class:`UpstreamProtocolError`, which the core
turns into an error event in the client's dialect and a visibly broken connection:
an event that is not JSON, tool-call arguments that go on after a complete JSON object, and
a body that ends before the stream's proper end (``finish`` on a stream without
``message_delta``/``message_stop``, or without a finish reason/``[DONE]``). Client
bytes translated from the same read as the failure are not sent.
"""

from __future__ import annotations

import re
import time
from typing import Any, NoReturn

from ccproxy_core import (
    ANTHROPIC,
    OPENAI,
    Limits,
    ProxyError,
    SSEEvent,
    SSEParser,
    UpstreamProtocolError,
    error_event,
)

from . import mappings as m
from .base import dumps, loads
from .errors import stream_error
from .responses import (
    anthropic_id,
    anthropic_usage_to_openai,
    new_tool_id,
    openai_id,
    openai_usage_to_anthropic,
    stop_reason,
)

__all__ = ["AnthropicToOpenAIStream", "OpenAIToAnthropicStream"]

_DONE = b"data: [DONE]\n\n"
_LIMIT = Limits().max_response_body_bytes


class _StreamTranslator:
    """Parsing, the done flag and the feed/finish protocol; subclasses handle events."""

    __slots__ = ("_parser", "_done", "complete")

    upstream_dialect = ""
    client_dialect = ""

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._done = False
        #: True once the upstream stream reached its proper end.
        self.complete = False

    def feed(self, data: bytes) -> bytes:
        """Translate the events completed by ``data``."""
        if self._done:
            return b""
        out: list[bytes] = []
        for event in self._parser.feed(data):
            self._on_event(event, out)
            if self._done:
                break
        return b"".join(out)

    def finish(self) -> bytes:
        """The upstream body ended: translate what is left and close the stream."""
        if self._done:
            return b""
        out: list[bytes] = []
        for event in self._parser.flush():
            self._on_event(event, out)
            if self._done:
                return b"".join(out)
        self._on_end(out)
        return b"".join(out)

    def _error(self, error: ProxyError, out: list[bytes]) -> None:
        out.append(error_event(self.client_dialect, error))
        self._done = True

    def _truncated(self) -> NoReturn:
        self._done = True
        raise UpstreamProtocolError(f"the upstream's {self.upstream_dialect} stream ended before it was complete")

    def _malformed(self, what: str) -> NoReturn:
        self._done = True
        raise UpstreamProtocolError(f"the upstream's {self.upstream_dialect} stream {what}")

    def _on_event(self, event: SSEEvent, out: list[bytes]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _on_end(self, out: list[bytes]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class AnthropicToOpenAIStream(_StreamTranslator):
    """Anthropic Messages events -> OpenAI ``chat.completion.chunk`` frames.

    Text deltas become ``delta.content``; each ``tool_use`` block becomes a tool call
    numbered 0, 1, … (not by block index) whose ``id``/``type``/``function.name`` come
    in its first fragment and ``input_json_delta`` pieces as ``function.arguments``;
    thinking becomes ``delta.reasoning_content`` unless dropped by settings; pings,
    signatures, citations and unknown events are dropped. ``message_stop`` gives the
    finish-reason chunk, the usage chunk if the client asked
    ``stream_options.include_usage``, and ``data: [DONE]``. ``event: error`` gives an
    OpenAI error frame and ends the stream.
    """

    __slots__ = (
        "_model",
        "_include_usage",
        "_thinking",
        "_created",
        "_id",
        "_prefix",
        "_tools",
        "_tool_has_args",
        "_usage",
        "_stop",
    )

    upstream_dialect = ANTHROPIC
    client_dialect = OPENAI

    def __init__(
        self, *, model: str | None, include_usage: bool, thinking: bool, created: int | None = None
    ) -> None:
        super().__init__()
        self._model = model
        self._include_usage = include_usage
        self._thinking = thinking
        self._created = int(time.time()) if created is None else created
        self._id: str | None = None
        self._prefix = ""  # '{"id":…,"choices":[{"index":0,"delta":' — shared by every chunk
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool-call index
        self._tool_has_args: list[bool] = []
        self._usage: dict[str, Any] = {}
        self._stop: str | None = None

    def _head(self) -> str:
        return dumps(
            {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model}
        )[:-1]

    def _start(self, message_id: str | None, out: list[bytes]) -> None:
        self._id = openai_id(message_id)
        self._prefix = self._head() + ',"choices":[{"index":0,"delta":'
        self._delta({"role": "assistant", "content": ""}, out)

    def _delta(self, delta: dict[str, Any], out: list[bytes], finish: str | None = None) -> None:
        if not self._prefix:
            self._start(None, out)
        reason = "null" if finish is None else f'"{finish}"'
        out.append(f'data: {self._prefix}{dumps(delta)},"logprobs":null,"finish_reason":{reason}}}]}}\n\n'.encode())

    def _tool_delta(self, tool: int, fragment: dict[str, Any], out: list[bytes]) -> None:
        self._delta({"tool_calls": [{"index": tool, **fragment}]}, out)

    def _on_event(self, event: SSEEvent, out: list[bytes]) -> None:
        name = event.event
        if name == "ping" or (name is not None and name not in _ANTHROPIC_EVENTS):
            return  # pings and unknown event types have no OpenAI form
        try:
            payload = loads(event.data)
        except ValueError:
            self._malformed(f"has an event {name or 'message'!r} that is not JSON")
        if not isinstance(payload, dict):
            return
        kind = name or payload.get("type")
        if kind == "content_block_delta":
            self._on_block_delta(payload, out)
        elif kind == "content_block_start":
            self._on_block_start(payload, out)
        elif kind == "content_block_stop":
            tool = self._tools.get(payload.get("index", -1))
            if tool is not None and not self._tool_has_args[tool]:
                self._tool_delta(tool, {"function": {"arguments": "{}"}}, out)  # a call without input
        elif kind == "message_start":
            self._start(anthropic_message_start(payload, self._usage), out)
        elif kind == "message_delta":
            self._stop = anthropic_message_delta(payload, self._usage) or self._stop or "end_turn"
        elif kind == "message_stop":
            self._end(out)
        elif kind == "error":
            self._error(stream_error(ANTHROPIC, payload), out)

    def _on_block_start(self, payload: dict[str, Any], out: list[bytes]) -> None:
        block = payload.get("content_block") or {}
        kind = block.get("type")
        if kind == "tool_use":
            tool = len(self._tool_has_args)
            self._tools[payload.get("index", -1)] = tool
            initial = block.get("input")
            arguments = dumps(initial) if initial else ""
            self._tool_has_args.append(bool(arguments))
            function = {"name": block.get("name"), "arguments": arguments}
            self._tool_delta(tool, {"id": block.get("id"), "type": "function", "function": function}, out)
        elif kind == "text" and block.get("text"):
            self._delta({"content": block["text"]}, out)
        elif kind == "thinking" and self._thinking and block.get("thinking"):
            self._delta({"reasoning_content": block["thinking"]}, out)

    def _on_block_delta(self, payload: dict[str, Any], out: list[bytes]) -> None:
        delta = payload.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            if delta.get("text"):
                self._delta({"content": delta["text"]}, out)
        elif kind == "input_json_delta":
            tool = self._tools.get(payload.get("index", -1))
            piece = delta.get("partial_json")
            if tool is not None and piece:
                self._tool_has_args[tool] = True
                self._tool_delta(tool, {"function": {"arguments": piece}}, out)
        elif kind == "thinking_delta":
            if self._thinking and delta.get("thinking"):
                self._delta({"reasoning_content": delta["thinking"]}, out)
        # signature_delta, citations_delta and unknown deltas have no OpenAI form

    def _end(self, out: list[bytes]) -> None:
        finish = m.STOP_TO_FINISH.get(self._stop or "end_turn", "stop")
        self._delta({}, out, finish)
        if self._include_usage:
            usage = anthropic_usage_to_openai(self._usage)
            out.append(f'data: {self._head()},"choices":[],"usage":{dumps(usage)}}}\n\n'.encode())
        out.append(_DONE)
        self._done = self.complete = True

    def _on_end(self, out: list[bytes]) -> None:
        if self._stop is None:
            self._truncated()
        self._end(out)  # message_delta came, message_stop did not: nothing is missing


def anthropic_message_start(payload: dict[str, Any], usage: dict[str, Any]) -> str | None:
    """``message_start``: its usage into ``usage``; returns the message id."""
    message = payload.get("message") or {}
    usage.update({k: v for k, v in (message.get("usage") or {}).items() if v is not None})
    return message.get("id")


def anthropic_message_delta(payload: dict[str, Any], usage: dict[str, Any]) -> str | None:
    """``message_delta``: its usage into ``usage`` (counts are cumulative: later values replace
    earlier ones); returns its stop reason."""
    usage.update({k: v for k, v in (payload.get("usage") or {}).items() if v is not None})
    return (payload.get("delta") or {}).get("stop_reason")


_ANTHROPIC_EVENTS = frozenset(
    {
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "error",
    }
)


#: The characters that change the state of :meth:`_Block.scan` (strings, escapes, nesting).
_JSON_STRUCTURE = re.compile(r'[{}\[\]"\\]')


class _Block:
    """One Anthropic content block being built: text, thinking or a tool call."""

    __slots__ = ("kind", "parts", "id", "given_id", "name", "index", "done", "_opened", "_depth", "_in_str",
                 "_esc", "_broken")

    def __init__(self, kind: str, *, id: str | None = None, given_id: str | None = None, name: str = "") -> None:
        self.kind = kind
        #: What is held until the block starts: text, or a tool call's argument pieces.
        self.parts: list[str] = []
        self.id, self.given_id, self.name = id, given_id, name
        self.index: int | None = None  # the block index, once started
        self.done = False  # a tool call whose arguments are a complete JSON object
        # the scanner: the first character seen, nesting depth, inside a string, an escape pending
        self._opened = self._in_str = self._esc = self._broken = False
        self._depth = 0

    def scan(self, piece: str) -> None:
        """Follow a tool call's arguments, each character once: ``done`` when the JSON object
        they open closes (nothing can validly follow). Arguments that do not start with ``{``,
        or go on after the object, never complete."""
        if self.done or self._broken:
            return
        if not self._opened:
            head = piece.lstrip()
            if not head:
                return
            self._opened = True
            if head[0] != "{":
                self._broken = True
                return
        escaped, at = self._esc, 0  # an escape pending from the last piece covers this one's first character
        for match in _JSON_STRUCTURE.finditer(piece):
            pos = match.start()
            if escaped:
                escaped = False
                if pos == at:
                    continue  # the escaped character itself
            char = piece[pos]
            if self._in_str:
                if char == "\\":
                    escaped, at = True, pos + 1
                elif char == '"':
                    self._in_str = False
            elif char == '"':
                self._in_str = True
            elif char == "{" or char == "[":
                self._depth += 1
            elif char == "}" or char == "]":
                self._depth -= 1
                if self._depth == 0:
                    self.done = char == "}" and not piece[pos + 1 :].strip()
                    self._broken = not self.done
                    return
        self._esc = escaped and at == len(piece)

    def complete(self) -> bool:
        """For a tool call: its arguments so far are a whole JSON object (so no piece can follow)."""
        return self.done

    @property
    def opened(self) -> bool:
        """For a tool call: some arguments other than white space came."""
        return self._opened


class OpenAIToAnthropicStream(_StreamTranslator):
    """OpenAI ``chat.completion.chunk`` frames -> Anthropic Messages events.

    ``message_start`` comes with the first chunk (``usage.input_tokens`` is 0 unless
    that chunk already carries usage: OpenAI reports usage at the end). Reasoning
    (``reasoning_content`` or ``reasoning``), text and each tool call become content
    blocks in arrival order, one open at a time, each stopped before the next starts;
    tool-call arguments stream as ``input_json_delta``.

    Parallel tool calls whose argument pieces interleave (valid OpenAI: pieces carry
    the call's ``index``) cannot stream side by side in Anthropic's one-block-at-a-time
    order, so the open call streams and whatever arrives for a later block (another
    call, text) is held until the open call's arguments form a complete JSON object,
    or until the finish reason; held blocks are then sent in arrival order, each whole
    (one delta), the last one left open to go on streaming. Calls sent one after the
    other (OpenAI's own order) all stream as they come.

    ``message_delta`` (stop reason and the final usage, input tokens included) and
    ``message_stop`` wait for ``[DONE]`` or the end of the body, so a usage chunk after
    the finish reason is counted. An in-band ``{"error": …}`` frame becomes
    ``event: error`` and ends the stream.
    """

    __slots__ = ("_model", "_started", "_open", "_held", "_next", "_calls", "_has_calls", "_finish", "_usage",
                 "_refused", "_limit", "_kept")

    upstream_dialect = OPENAI
    client_dialect = ANTHROPIC

    def __init__(self, *, model: str | None, limit: int = _LIMIT) -> None:
        """``limit``: how many bytes of text and arguments may be held behind an open tool call
        (``limits.max_response_body_bytes``); past it the stream fails."""
        super().__init__()
        self._model = model
        self._limit = limit
        self._kept = 0  # bytes held in self._held
        self._started = False
        self._open: _Block | None = None  # the block being streamed
        self._held: list[_Block] = []  # blocks waiting for the open one to end, in arrival order
        self._next = 0
        self._calls: dict[int, _Block] = {}  # OpenAI tool-call index -> its current call
        self._has_calls = False
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self._refused = False

    @staticmethod
    def _emit(name: str, payload: dict[str, Any], out: list[bytes]) -> None:
        out.append(f"event: {name}\ndata: {dumps(payload)}\n\n".encode())

    def _start(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        self._started = True
        usage = openai_usage_to_anthropic(chunk.get("usage")) if chunk.get("usage") else None
        message = {
            "id": anthropic_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": self._model or chunk.get("model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": usage["input_tokens"] if usage else 0,
                "output_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": usage["cache_read_input_tokens"] if usage else 0,
            },
        }
        self._emit("message_start", {"type": "message_start", "message": message}, out)

    # -- blocks ---------------------------------------------------------------------------

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            self._emit("content_block_stop", {"type": "content_block_stop", "index": self._open.index}, out)
            self._open = None

    def _begin(self, block: _Block, out: list[bytes]) -> None:
        """Close the open block and start ``block``, with what it holds as its first delta."""
        self._close(out)
        block.index = self._next
        self._next += 1
        self._open = block
        if block.kind == "tool":
            shell: dict[str, Any] = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
        elif block.kind == "text":
            shell = {"type": "text", "text": ""}
        else:
            shell = {"type": "thinking", "thinking": "", "signature": ""}
        self._emit("content_block_start", {"type": "content_block_start", "index": block.index, "content_block": shell},
                   out)
        if block.parts:
            self._delta(block, "".join(block.parts), out)
            block.parts = []  # a tool call's completeness is followed by its scanner

    def _delta(self, block: _Block, piece: str, out: list[bytes]) -> None:
        if block.kind == "tool":
            delta = {"type": "input_json_delta", "partial_json": piece}
        elif block.kind == "text":
            delta = {"type": "text_delta", "text": piece}
        else:
            delta = {"type": "thinking_delta", "thinking": piece}
        self._emit("content_block_delta", {"type": "content_block_delta", "index": block.index, "delta": delta}, out)

    def _must_hold(self) -> bool:
        """True when a new block cannot start yet: blocks are held, or the open tool call may go on."""
        open_ = self._open
        return bool(self._held) or (open_ is not None and open_.kind == "tool" and not open_.complete())

    def _release(self, out: list[bytes], *, final: bool) -> None:
        """Start the held blocks in order: all of them, closed (``final``), or up to the last one or the
        first call whose arguments may still grow (it stays open; the rest stay held).

        A text or thinking block followed by held blocks is closed: what arrives for it later came
        after them, so it opens a new block rather than moving ahead of them."""
        self._close(out)
        while self._held:
            block = self._held.pop(0)
            self._kept -= sum(map(len, block.parts))
            self._begin(block, out)
            if not final and (not self._held or (block.kind == "tool" and not block.complete())):
                return
        self._close(out)

    def _hold(self, block: _Block, piece: str) -> None:
        """Keep ``piece`` in a held block, within the limit."""
        self._kept += len(piece)
        if self._kept > self._limit:
            self._malformed(f"holds more than limits.max_response_body_bytes ({self._limit} bytes) behind a tool "
                            "call whose arguments are not complete")
        block.parts.append(piece)

    def _text(self, kind: str, text: str, out: list[bytes]) -> None:
        """A piece of text or thinking: to the open block of that kind, or a new block (held if need be)."""
        open_ = self._open
        if open_ is not None and open_.kind == kind:
            self._delta(open_, text, out)
        elif self._must_hold():
            last = self._held[-1] if self._held else None
            if last is None or last.kind != kind:
                last = _Block(kind)
                self._held.append(last)
            self._hold(last, text)
        else:
            block = _Block(kind)
            block.parts.append(text)
            self._begin(block, out)
            block.parts = []

    # -- events ---------------------------------------------------------------------------

    def _on_event(self, event: SSEEvent, out: list[bytes]) -> None:
        data = event.data
        if data == "[DONE]":
            self._end(out)
            return
        if not data:
            return
        try:
            chunk = loads(data)
        except ValueError:
            self._malformed("has a chunk that is not JSON")
        if not isinstance(chunk, dict):
            return
        if chunk.get("error"):
            self._error(stream_error(OPENAI, chunk), out)
            return
        if not self._started:
            self._start(chunk, out)
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) == 0:
                self._on_choice(choice, out)
                if self._done:
                    return

    def _on_choice(self, choice: dict[str, Any], out: list[bytes]) -> None:
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self._text("thinking", reasoning, out)
        for key in ("content", "refusal"):
            text = delta.get(key)
            if isinstance(text, str) and text:
                if key == "refusal":
                    self._refused = True
                self._text("text", text, out)
        calls = delta.get("tool_calls")
        if not calls and delta.get("function_call"):  # legacy functions: one call, index 0
            calls = [{"index": 0, "function": delta["function_call"]}]
        for position, call in enumerate(calls or ()):
            self._on_tool_call(call, position, out)
            if self._done:
                return
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
            self._release(out, final=True)

    def _on_tool_call(self, call: dict[str, Any], position: int, out: list[bytes]) -> None:
        """A tool-call fragment: a new call (unseen ``index``, or a new ``id`` at a seen one,
        as servers that omit ``index`` send) opens a block or is held; others continue their call."""
        index = call.get("index", position)
        call_id = call.get("id")
        fn = call.get("function") or {}
        known = self._calls.get(index)
        if known is None or (call_id and known.given_id and call_id != known.given_id):
            if known is not None:
                known.done = True  # its index was reused: nothing more can come for it
            known = self._calls[index] = _Block("tool", id=call_id or new_tool_id(), given_id=call_id,
                                                name=fn.get("name") or "")
            self._has_calls = True
            if self._must_hold():
                self._held.append(known)
            else:
                self._begin(known, out)
        arguments = fn.get("arguments")
        if not arguments:
            return
        known.scan(arguments)
        if known.index is None:
            self._hold(known, arguments)
        elif known is self._open:
            self._delta(known, arguments, out)
            if self._held and known.complete():
                self._release(out, final=False)
        elif known.index is not None and arguments.strip():
            self._malformed("sends more arguments for a tool call whose arguments were already a complete JSON object")

    def _end(self, out: list[bytes]) -> None:
        if not self._started:
            self._start({}, out)
        self._release(out, final=True)
        reason = stop_reason(self._finish, has_tools=self._has_calls, refused=self._refused)
        usage = openai_usage_to_anthropic(self._usage)
        delta = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": None}, "usage": usage}
        self._emit("message_delta", delta, out)
        self._emit("message_stop", {"type": "message_stop"}, out)
        self._done = self.complete = True

    def _on_end(self, out: list[bytes]) -> None:
        if self._finish is None:
            self._truncated()
        self._end(out)  # finish_reason came, [DONE] did not: nothing is missing
