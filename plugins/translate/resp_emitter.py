"""The writer of Responses API streams: :class:`ResponsesEmitter` turns block-level events
into Responses events, for the stream translators of :mod:`.resp_streams` and for a stream
made from a JSON answer (:func:`responses_events`). The stream contract and what it holds:
see :mod:`.resp_streams`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ccproxy_core import ProxyError, UpstreamProtocolError

from .base import dumps
from .resp_bodies import (
    error_object,
    function_call_item,
    item_id,
    message_item,
    reasoning_item,
    response_object,
    responses_id,
    text_part,
)

__all__ = ["ResponsesEmitter", "responses_events"]


class ResponsesEmitter:
    """Block-level events -> Responses stream events, appended to ``out`` (see the module docstring)."""

    __slots__ = ("_model", "_request", "_limit", "_created", "_seq", "id", "_shell", "_items", "kind", "_item",
                 "_parts", "_encrypted", "_event", "_prefix", "_size", "_summary", "on_final")

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
        #: Called with the final response object of a stream that completed or is incomplete.
        self.on_final: Callable[[dict[str, Any]], None] | None = None

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
        if self.on_final is not None and kind != "response.failed":
            self.on_final(response)

    def fail(self, error: ProxyError, out: list[bytes]) -> None:
        """End with ``response.failed`` (``response.error``: the upstream's error); an open item is dropped."""
        if self.id is None:
            self.start(None, out)
        self.kind = None
        response = self._response("failed", output=self._items, error=error_object(error))
        self._send("response.failed", {"response": response}, out)


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
