"""Stream translators to and from the Responses API.

To a Responses client, one :class:`ResponsesEmitter` writes the stream from block-level
events (``begin`` text/thinking/tool, ``delta``, ``signature``, ``end``; ``finish`` with the
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

import time
from typing import Any

from ccproxy_core import ANTHROPIC, OPENAI, ProxyError, UpstreamProtocolError
from ccproxy_core.dialects import RESPONSES  # exported from ccproxy_core once the dialect has a route
from ccproxy_core.sse import SSEEvent

from . import mappings as m
from .base import dumps, loads
from .errors import stream_error
from .resp_bodies import (
    error_object,
    function_call_item,
    item_id,
    message_item,
    reasoning_item,
    response_object,
    responses_id,
    text_part,
    usage_from_anthropic,
    usage_from_chat,
    usage_to_chat,
)
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
    "ResponsesEmitter",
    "AnthropicToResponsesStream",
    "ChatToResponsesStream",
    "ResponsesToAnthropicStream",
    "ResponsesToChatStream",
    "responses_events",
]

#: Events whose data holds the whole ``response`` object (the alias rename edits their model).
RESPONSE_EVENTS = frozenset({"response.created", "response.in_progress", "response.queued", "response.completed",
                             "response.incomplete", "response.failed"})


class ResponsesEmitter:
    """Block-level events -> Responses stream events, appended to ``out`` (see the module docstring)."""

    __slots__ = ("_model", "_request", "_limit", "_created", "_seq", "id", "_shell", "_items", "kind", "_item",
                 "_parts", "_encrypted", "_event", "_prefix", "_size", "_summary")

    def __init__(self, *, model: str | None, request: dict[str, Any] | None, limit: int,
                 created: int | None = None) -> None:
        self._model, self._request, self._limit = model, request, limit
        self._created = int(time.time()) if created is None else created
        self._seq = 0
        self.id: str | None = None  #: the response id, once started
        self._items: list[dict[str, Any]] = []  # finished items
        self._shell: dict[str, Any] | None = None  # the response object of a stream made from a JSON answer
        #: The open item's block kind: ``text``, ``thinking``, ``tool`` or None.
        self.kind: str | None = None
        self._item: dict[str, Any] = {}
        self._parts: list[str] = []
        self._encrypted: str | None = None
        self._event = ""  # the open item's delta event type
        self._prefix = ""  # its data up to the "delta" value
        self._size = 0
        self._summary = False  # the open reasoning item's summary part was announced

    @property
    def sequence(self) -> int:
        """The next sequence number."""
        return self._seq

    def _send(self, kind: str, fields: dict[str, Any], out: list[bytes]) -> None:
        data = dumps({"type": kind, **fields, "sequence_number": self._seq})
        self._seq += 1
        out.append(f"event: {kind}\ndata: {data}\n\n".encode())

    def _response(self, status: str, **fields: Any) -> dict[str, Any]:
        if self._shell is not None:
            return {**self._shell, "status": status, "usage": None, "incomplete_details": None, "error": None, **fields}
        return response_object(id=self.id or "", created_at=self._created, model=self._model, status=status,
                               request=self._request, **fields)

    def start(self, upstream_id: str | None, out: list[bytes], *, response: dict[str, Any] | None = None) -> None:
        """``response.created`` and ``response.in_progress`` (``response``: the final object of a
        stream made from a JSON answer, whose fields these events then show)."""
        self._shell = response
        self.id = str(response.get("id") or "") if response is not None else responses_id(upstream_id)
        self._send("response.created", {"response": self._response("in_progress", output=[])}, out)
        self._send("response.in_progress", {"response": self._response("in_progress", output=[])}, out)

    def _grow(self, size: int) -> None:
        self._size += size
        if self._size > self._limit:
            raise UpstreamProtocolError(
                f"the upstream's answer is larger than limits.max_response_body_bytes ({self._limit} bytes)")

    def begin(self, kind: str, out: list[bytes], *, call_id: str = "", name: str = "", id: str | None = None) -> None:
        """Open an output item: ``text`` (a message), ``thinking`` (reasoning) or ``tool`` (a function call)."""
        if self.id is None:
            self.start(None, out)
        self.end(out)
        index = len(self._items)
        self.kind, self._parts, self._encrypted, self._summary = kind, [], None, False
        head = {"output_index": index}
        if kind == "text":
            self._item = message_item(id or item_id("msg", self.id, index), [], "in_progress")  # type: ignore[arg-type]
            self._send("response.output_item.added", {**head, "item": self._item}, out)
            fields = {"item_id": self._item["id"], **head, "content_index": 0}
            self._send("response.content_part.added", {**fields, "part": text_part("")}, out)
            self._event = "response.output_text.delta"
            self._prefix = f'"type":"response.output_text.delta",{dumps(fields)[1:-1]},"delta":'
        elif kind == "thinking":
            self._item = reasoning_item(id or item_id("rs", self.id, index), "")  # type: ignore[arg-type]
            self._send("response.output_item.added", {**head, "item": self._item}, out)
            fields = {"item_id": self._item["id"], **head, "summary_index": 0}
            self._event = "response.reasoning_summary_text.delta"
            self._prefix = f'"type":"response.reasoning_summary_text.delta",{dumps(fields)[1:-1]},"delta":'
        else:
            self._item = function_call_item(id or item_id("fc", self.id, index), call_id, name, "",  # type: ignore[arg-type]
                                            "in_progress")
            self._send("response.output_item.added", {**head, "item": self._item}, out)
            fields = {"item_id": self._item["id"], **head}
            self._event = "response.function_call_arguments.delta"
            self._prefix = f'"type":"response.function_call_arguments.delta",{dumps(fields)[1:-1]},"delta":'

    def delta(self, piece: str, out: list[bytes]) -> None:
        """A piece of the open item's text, thinking or arguments."""
        if not piece or self.kind is None:
            return
        self._grow(len(piece))
        self._parts.append(piece)
        if self.kind == "thinking" and not self._summary:
            self._summary = True
            fields = {"item_id": self._item["id"], "output_index": len(self._items), "summary_index": 0}
            self._send("response.reasoning_summary_part.added", {**fields, "part": {"type": "summary_text",
                                                                                    "text": ""}}, out)
        logprobs = ',"logprobs":[]' if self.kind == "text" else ""
        out.append(f"event: {self._event}\ndata: {{{self._prefix}{dumps(piece)}"
                   f'{logprobs},"sequence_number":{self._seq}}}\n\n'.encode())
        self._seq += 1

    def signature(self, value: str) -> None:
        """The open reasoning item's ``encrypted_content`` (an Anthropic signature or redacted data)."""
        if value and self.kind == "thinking":
            self._grow(len(value))
            self._encrypted = (self._encrypted or "") + value

    def end(self, out: list[bytes]) -> None:
        """Close the open item, if any: its ``.done`` events, whole."""
        kind = self.kind
        if kind is None:
            return
        self.kind = None
        text = "".join(self._parts)
        self._parts = []
        index = len(self._items)
        fields = {"item_id": self._item["id"], "output_index": index}
        if kind == "text":
            part = text_part(text)
            self._send("response.output_text.done", {**fields, "content_index": 0, "text": text, "logprobs": []}, out)
            self._send("response.content_part.done", {**fields, "content_index": 0, "part": part}, out)
            item = message_item(self._item["id"], [part])
        elif kind == "thinking":
            if self._summary:
                part = {"type": "summary_text", "text": text}
                self._send("response.reasoning_summary_text.done", {**fields, "summary_index": 0, "text": text}, out)
                self._send("response.reasoning_summary_part.done", {**fields, "summary_index": 0, "part": part}, out)
            item = reasoning_item(self._item["id"], text, self._encrypted)
        else:
            item = function_call_item(self._item["id"], self._item["call_id"], self._item["name"], text or "{}")
            self._send("response.function_call_arguments.done",
                       {**fields, "name": item["name"], "arguments": item["arguments"]}, out)
        self._items.append(item)
        self._send("response.output_item.done", {"output_index": index, "item": item}, out)

    def finish(self, out: list[bytes], *, usage: dict[str, Any], incomplete: str | None = None,
               response: dict[str, Any] | None = None) -> None:
        """Close the open item and end with ``response.completed`` or ``response.incomplete``
        (``response``: the final object as it is, for a stream made from a JSON answer)."""
        if self.id is None:
            self.start(None, out)
        self.end(out)
        if response is None:
            status = "incomplete" if incomplete else "completed"
            response = self._response(status, output=self._items, usage=usage, incomplete=incomplete)
        status = response.get("status")
        kind = "response.failed" if status == "failed" else "response.incomplete" if status == "incomplete" else \
            "response.completed"
        self._send(kind, {"response": response}, out)

    def fail(self, error: ProxyError, out: list[bytes]) -> None:
        """End with ``response.failed`` (``response.error``: the upstream's error); an open item is dropped."""
        if self.id is None:
            self.start(None, out)
        self.kind = None
        response = self._response("failed", output=self._items, error=error_object(error))
        self._send("response.failed", {"response": response}, out)


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


def responses_events(response: dict[str, Any]) -> bytes:
    """A Responses ``response`` object as the events of a Responses stream (for a stream
    made from a JSON answer): its items with their own ids, then the object itself as the
    final event."""
    out: list[bytes] = []
    r = ResponsesEmitter(model=response.get("model"), request=None, limit=1 << 62,
                         created=response.get("created_at") if isinstance(response.get("created_at"), int) else None)
    r.start(None, out, response=response)
    items = response.get("output") if isinstance(response.get("output"), list) else []
    for item in items:
        item = item if isinstance(item, dict) else {}
        kind = item.get("type")
        if kind == "message":  # its output_text parts as one part (refusal parts have no delta form here)
            texts = [p.get("text") or "" for p in item.get("content") or ()
                     if isinstance(p, dict) and p.get("type") == "output_text"]
            r.begin("text", out, id=item.get("id"))
            r.delta("".join(texts), out)
        elif kind == "reasoning":
            r.begin("thinking", out, id=item.get("id"))
            summary = [p.get("text") or "" for p in item.get("summary") or () if isinstance(p, dict)]
            r.delta("\n\n".join(summary), out)
            r.signature(item.get("encrypted_content") or "")
        elif kind == "function_call":
            r.begin("tool", out, id=item.get("id"), call_id=item.get("call_id") or "", name=item.get("name") or "")
            r.delta(item.get("arguments") or "", out)
        r.end(out)
    r.finish(out, usage=response.get("usage") or {}, response=response)
    return b"".join(out)
