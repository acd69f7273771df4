"""Stream translators to and from the Responses API.

To a Responses client, one :class:`.resp_emitter.ResponsesEmitter` writes the stream from
block-level events (``begin`` text/thinking/tool, ``delta``, ``signature``, ``end``; ``finish`` with the
usage and why the answer stopped; ``fail``). Two readers drive it:
:class:`AnthropicToResponsesStream` (Messages events map one to one onto blocks) and
:class:`ChatToResponsesStream`, which is :class:`.streams.OpenAIToAnthropicStream` with the
emitter as its writer, so interleaved parallel tool calls are held exactly as for an
Anthropic client (one item open at a time, in arrival order).

From a Responses upstream, :class:`ResponsesToAnthropicStream` feeds Responses events into
the same holding logic of :class:`.streams.OpenAIToAnthropicStream` (``output_index`` as the
tool-call index), and :class:`ResponsesToChatStream` writes with the chunk writer of
:class:`.streams.AnthropicToOpenAIStream`.

The Responses stream contract: ``event: <type>`` and ``data: {"type": <type>, …,
"sequence_number": n}`` with n = 0, 1, 2, …; ``response.created`` → ``response.in_progress`` →
items → ``response.completed`` | ``response.incomplete`` | ``response.failed``; no
``[DONE]``. Each item's text is kept until its ``.done`` event and every finished item until
``response.completed`` (both carry them whole): at most ``limits.max_response_body_bytes``
of text, past which the stream fails (``UpstreamProtocolError``). When a translator raises,
the error carries ``sequence_number`` (the next number not sent) for the core's error event.
"""

from __future__ import annotations

from typing import Any

from ccproxy_core import ANTHROPIC, OPENAI, RESPONSES, ProxyError, SSEEvent

from . import mappings as m
from .base import dumps, loads
from .errors import stream_error
from .resp_bodies import usage_from_anthropic, usage_from_chat, usage_to_chat
from .resp_emitter import ResponsesEmitter
from .responses import openai_usage_to_anthropic, stop_reason
from .streams import (
    _ANTHROPIC_EVENTS,
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    _StreamTranslator,
    anthropic_message_delta,
    anthropic_message_start,
)

__all__ = [
    "AnthropicToResponsesStream",
    "ChatToResponsesStream",
    "ResponsesToAnthropicStream",
    "ResponsesToChatStream",
    "RESPONSE_EVENTS",
]

#: Events whose data holds the whole ``response`` object (the alias rename edits their model).
RESPONSE_EVENTS = frozenset({"response.created", "response.in_progress", "response.queued", "response.completed",
                             "response.incomplete", "response.failed"})


class _ToResponses(_StreamTranslator):
    """A translator whose client speaks Responses: failures end with ``response.failed``; a
    :class:`ProxyError` raised by ``feed``/``finish`` carries the next ``sequence_number``."""

    __slots__ = ()  # subclasses hold ``_r``, their ResponsesEmitter

    client_dialect = RESPONSES
    _r: ResponsesEmitter

    def feed(self, data: bytes) -> bytes:
        sequence = self._r.sequence  # what this read produces is not sent when it fails
        try:
            return super().feed(data)
        except ProxyError as exc:
            exc.sequence_number = sequence  # type: ignore[attr-defined]
            raise

    def finish(self) -> bytes:
        sequence = self._r.sequence
        try:
            return super().finish()
        except ProxyError as exc:
            exc.sequence_number = sequence  # type: ignore[attr-defined]
            raise

    def _error(self, error: ProxyError, out: list[bytes]) -> None:
        self._r.fail(error, out)
        self._done = True


class AnthropicToResponsesStream(_ToResponses):
    """Anthropic Messages events -> a Responses stream.

    Text blocks become message items, thinking blocks reasoning items (the signature, or
    redacted thinking's data, as ``encrypted_content``), ``tool_use`` blocks function-call
    items (``call_id`` = the block id); server-tool blocks, citations, pings and unknown events
    are dropped. ``message_stop`` (or the end of the body after ``message_delta``) gives
    ``response.completed``, or ``response.incomplete`` for ``max_tokens`` and ``refusal``;
    ``event: error`` gives ``response.failed``.
    """

    __slots__ = ("_r", "_open", "_stop", "_usage", "_has_args")

    upstream_dialect = ANTHROPIC

    def __init__(self, *, model: str | None, request: dict[str, Any] | None, limit: int,
                 created: int | None = None) -> None:
        super().__init__()
        self._r = ResponsesEmitter(model=model, request=request, limit=limit, created=created)
        self._open: int | None = None  # the Anthropic index of the block being streamed
        self._stop: str | None = None
        self._usage: dict[str, Any] = {}
        self._has_args = False

    def _on_event(self, event: SSEEvent, out: list[bytes]) -> None:
        name = event.event
        if name == "ping" or (name is not None and name not in _ANTHROPIC_EVENTS):
            return
        try:
            payload = loads(event.data)
        except ValueError:
            self._malformed(f"has an event {name or 'message'!r} that is not JSON")
        if not isinstance(payload, dict):
            return
        kind = name or payload.get("type")
        r = self._r
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            if payload.get("index") != self._open:
                return
            dtype = delta.get("type")
            if dtype == "text_delta":
                r.delta(delta.get("text") or "", out)
            elif dtype == "thinking_delta":
                r.delta(delta.get("thinking") or "", out)
            elif dtype == "input_json_delta" and delta.get("partial_json"):
                self._has_args = True
                r.delta(delta["partial_json"], out)
            elif dtype == "signature_delta":
                r.signature(delta.get("signature") or "")
        elif kind == "content_block_start":
            self._on_block_start(payload, out)
        elif kind == "content_block_stop":
            if self._open is not None and payload.get("index") == self._open:
                if r.kind == "tool" and not self._has_args:
                    r.delta("{}", out)  # a call without input
                r.end(out)
                self._open = None
        elif kind == "message_start":
            message_id = anthropic_message_start(payload, self._usage)
            if r.id is None:
                r.start(message_id, out)
        elif kind == "message_delta":
            self._stop = anthropic_message_delta(payload, self._usage) or self._stop or "end_turn"
        elif kind == "message_stop":
            self._end(out)
        elif kind == "error":
            self._error(stream_error(ANTHROPIC, payload), out)

    def _on_block_start(self, payload: dict[str, Any], out: list[bytes]) -> None:
        block = payload.get("content_block") or {}
        kind, r = block.get("type"), self._r
        self._open = payload.get("index")
        if kind == "text":
            r.begin("text", out)
            r.delta(block.get("text") or "", out)
        elif kind == "thinking":
            r.begin("thinking", out)
            r.delta(block.get("thinking") or "", out)
            r.signature(block.get("signature") or "")
        elif kind == "redacted_thinking":
            r.begin("thinking", out)
            r.signature(block.get("data") or "")
        elif kind == "tool_use":
            r.begin("tool", out, call_id=block.get("id") or "", name=block.get("name") or "")
            initial = block.get("input")
            self._has_args = bool(initial)
            if initial:
                r.delta(dumps(initial), out)
        else:
            self._open = None  # server-tool and unknown blocks have no Responses form here

    def _end(self, out: list[bytes]) -> None:
        stop = self._stop or "end_turn"
        self._r.finish(out, usage=usage_from_anthropic(self._usage), incomplete=m.STOP_TO_INCOMPLETE.get(stop))
        self._done = self.complete = True

    def _on_end(self, out: list[bytes]) -> None:
        if self._stop is None:
            self._truncated()
        self._end(out)


class ChatToResponsesStream(_ToResponses, OpenAIToAnthropicStream):
    """OpenAI ``chat.completion.chunk`` frames -> a Responses stream: the Chat reader of
    :class:`OpenAIToAnthropicStream` (blocks in arrival order, interleaved calls held) with
    :class:`ResponsesEmitter` as its writer. ``finish_reason`` ``length`` and
    ``content_filter`` end in ``response.incomplete``; the usage chunk gives the usage."""

    __slots__ = ("_r",)

    upstream_dialect = OPENAI

    def __init__(self, *, model: str | None, request: dict[str, Any] | None, limit: int,
                 created: int | None = None) -> None:
        OpenAIToAnthropicStream.__init__(self, model=model, limit=limit)
        self._r = ResponsesEmitter(model=model, request=request, limit=limit, created=created)

    def _start(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        self._started = True
        self._r.start(chunk.get("id"), out)

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            self._r.end(out)
            self._open = None

    def _begin(self, block: Any, out: list[bytes]) -> None:
        self._close(out)
        block.index = self._next
        self._next += 1
        self._open = block
        self._r.begin(block.kind, out, call_id=block.id or "", name=block.name)
        if block.parts:
            self._r.delta("".join(block.parts), out)
            block.parts = []

    def _delta(self, block: Any, piece: str, out: list[bytes]) -> None:
        self._r.delta(piece, out)

    def _end(self, out: list[bytes]) -> None:
        if not self._started:
            self._start({}, out)
        self._release(out, final=True)
        incomplete = m.FINISH_TO_INCOMPLETE.get(self._finish or "")
        self._r.finish(out, usage=usage_from_chat(self._usage), incomplete=incomplete)
        self._done = self.complete = True


def _response_of(payload: dict[str, Any]) -> dict[str, Any]:
    response = payload.get("response")
    return response if isinstance(response, dict) else {}


def _finish_reason(response: dict[str, Any], has_calls: bool) -> str:
    """The Chat ``finish_reason`` for a final Responses object."""
    details = response.get("incomplete_details") if isinstance(response.get("incomplete_details"), dict) else {}
    if response.get("status") == "incomplete":
        return m.INCOMPLETE_TO_FINISH.get(details.get("reason") or "", "length")
    return "tool_calls" if has_calls else "stop"


def _responses_payload(reader: _StreamTranslator, event: SSEEvent) -> tuple[str, dict[str, Any]] | None:
    """(type, data) of a Responses event; None for one to skip. Data that is not JSON raises."""
    if not event.data or event.data == "[DONE]":
        return None
    try:
        payload = loads(event.data)
    except ValueError:
        reader._malformed(f"has an event {event.event or 'message'!r} that is not JSON")
    if not isinstance(payload, dict):
        return None
    kind = payload.get("type") or event.event
    return (kind, payload) if isinstance(kind, str) else None


class ResponsesToAnthropicStream(OpenAIToAnthropicStream):
    """Responses events -> Anthropic Messages events, through the block logic of
    :class:`OpenAIToAnthropicStream`: text and refusal deltas are text, reasoning summary and
    reasoning text deltas are thinking (``signature: ""``), function-call items are tool calls
    indexed by ``output_index`` (items that interleave are held like Chat's parallel calls).
    ``response.completed``/``incomplete`` end the message (usage and stop reason from the
    final object); ``response.failed`` and ``error`` become ``event: error``. A body that ends
    before one of them is truncated."""

    __slots__ = ()

    upstream_dialect = RESPONSES

    def _on_event(self, event: SSEEvent, out: list[bytes]) -> None:
        parsed = _responses_payload(self, event)
        if parsed is None:
            return
        kind, payload = parsed
        if not self._started:
            self._start({"id": _response_of(payload).get("id")}, out)
        index = payload.get("output_index", 0)
        if kind == "response.output_text.delta" or kind == "response.refusal.delta":
            self._refused = self._refused or kind == "response.refusal.delta"
            if payload.get("delta"):
                self._text("text", payload["delta"], out)
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            if payload.get("delta"):
                self._text("thinking", payload["delta"], out)
        elif kind == "response.reasoning_summary_part.added" and payload.get("summary_index"):
            self._text("thinking", "\n\n", out)
        elif kind == "response.function_call_arguments.delta":
            if payload.get("delta"):
                self._on_tool_call({"index": index, "function": {"arguments": payload["delta"]}}, 0, out)
        elif kind in ("response.output_item.added", "response.output_item.done"):
            item = payload.get("item") if isinstance(payload.get("item"), dict) else {}
            if item.get("type") == "function_call":
                self._on_function_item(kind, index, item, out)
        elif kind in ("response.completed", "response.incomplete"):
            response = _response_of(payload)
            self._usage = usage_to_chat(response.get("usage"))
            self._finish = _finish_reason(response, self._has_calls)
            self._end(out)
        elif kind in ("response.failed", "error"):
            self._error(stream_error(RESPONSES, payload), out)

    def _on_function_item(self, kind: str, index: int, item: dict[str, Any], out: list[bytes]) -> None:
        known = self._calls.get(index)
        if kind == "response.output_item.added" and known is None:
            name = item.get("name") if isinstance(item.get("name"), str) else ""
            self._on_tool_call({"index": index, "id": item.get("call_id") or None, "function": {"name": name}}, 0, out)
            known = self._calls[index]
        arguments = item.get("arguments")
        if known is not None and not known.opened and isinstance(arguments, str) and arguments:
            self._on_tool_call({"index": index, "function": {"arguments": arguments}}, 0, out)

    def _on_end(self, out: list[bytes]) -> None:
        self._truncated()


class ResponsesToChatStream(AnthropicToOpenAIStream):
    """Responses events -> OpenAI ``chat.completion.chunk`` frames, written by
    :class:`AnthropicToOpenAIStream`: text deltas are ``content``, refusal deltas ``refusal``,
    reasoning deltas ``reasoning_content`` (setting ``thinking``), each function-call item a
    tool call numbered 0, 1, … in the order its item was added. The final object gives the
    finish reason and the usage chunk (when the client asked for it); ``response.failed`` and
    ``error`` become an OpenAI error frame."""

    __slots__ = ("_refused",)

    upstream_dialect = RESPONSES

    def __init__(self, *, model: str | None, include_usage: bool, thinking: bool, created: int | None = None) -> None:
        super().__init__(model=model, include_usage=include_usage, thinking=thinking, created=created)
        self._refused = False

    def _on_event(self, event: SSEEvent, out: list[bytes]) -> None:
        parsed = _responses_payload(self, event)
        if parsed is None:
            return
        kind, payload = parsed
        if not self._prefix:
            self._start(_response_of(payload).get("id"), out)
        delta = payload.get("delta")
        if kind == "response.output_text.delta":
            if delta:
                self._delta({"content": delta}, out)
        elif kind == "response.refusal.delta":
            self._refused = True
            if delta:
                self._delta({"refusal": delta}, out)
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            if delta and self._thinking:
                self._delta({"reasoning_content": delta}, out)
        elif kind == "response.reasoning_summary_part.added" and payload.get("summary_index") and self._thinking:
            self._delta({"reasoning_content": "\n\n"}, out)
        elif kind == "response.function_call_arguments.delta":
            tool = self._tools.get(payload.get("output_index", -1))
            if tool is not None and delta:
                self._tool_has_args[tool] = True
                self._tool_delta(tool, {"function": {"arguments": delta}}, out)
        elif kind in ("response.output_item.added", "response.output_item.done"):
            item = payload.get("item") if isinstance(payload.get("item"), dict) else {}
            if item.get("type") == "function_call":
                self._on_function_item(kind, payload.get("output_index", -1), item, out)
        elif kind in ("response.completed", "response.incomplete"):
            response = _response_of(payload)
            self._usage = openai_usage_to_anthropic(usage_to_chat(response.get("usage")))
            finish = _finish_reason(response, bool(self._tool_has_args))
            self._stop = stop_reason(finish, has_tools=bool(self._tool_has_args), refused=self._refused)
            self._end(out)
        elif kind in ("response.failed", "error"):
            self._error(stream_error(RESPONSES, payload), out)

    def _on_function_item(self, kind: str, index: Any, item: dict[str, Any], out: list[bytes]) -> None:
        tool = self._tools.get(index)
        arguments = item.get("arguments") if isinstance(item.get("arguments"), str) else ""
        if tool is None and kind == "response.output_item.added":
            tool = self._tools[index] = len(self._tool_has_args)
            self._tool_has_args.append(bool(arguments))
            function = {"name": item.get("name"), "arguments": arguments}
            self._tool_delta(tool, {"id": item.get("call_id"), "type": "function", "function": function}, out)
        elif tool is not None and not self._tool_has_args[tool]:
            self._tool_has_args[tool] = True
            self._tool_delta(tool, {"function": {"arguments": arguments or "{}"}}, out)

    def _on_end(self, out: list[bytes]) -> None:
        self._truncated()
