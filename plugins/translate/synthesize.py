"""Streams made from JSON answers, for providers with ``supports_streaming: false``.

Contract (what :func:`stream_adapter` needs from the core and gives back):

* It applies when the client asked for a stream (``ctx.stream``), the upstream was asked
  for JSON (``not ctx.upstream_stream``), and the upstream answered 2xx with a body that is
  not ``text/event-stream``. Otherwise it returns None and the other adapters decide (an
  error status keeps its usual treatment: passed through, or translated to the client's
  error shape; an upstream that streamed anyway is relayed or translated as a stream).
* It sets ``ctx.response_headers["content-type"]`` to ``text/event-stream; charset=utf-8``;
  the core then drops the upstream's ``content-length`` (an adapter is present) and adds
  the stream headers.
* The adapter's ``feed`` keeps the upstream body (at most
  ``ctx.config.limits.max_response_body_bytes``; past it ``UpstreamProtocolError``, a 502)
  and returns nothing; ``finish`` returns the whole stream in ``ctx.client_dialect``:

  - Anthropic: ``message_start`` (with the message's usage, ``output_tokens`` 0), for each
    content block in order ``content_block_start``, its deltas (``text_delta`` after any
    ``citations_delta``; ``thinking_delta`` then ``signature_delta``; ``input_json_delta``
    with the whole input as JSON) and ``content_block_stop`` (blocks without a delta form,
    e.g. ``redacted_thinking``, come whole in their start), then ``message_delta``
    (``stop_reason``, ``stop_sequence``, the full usage) and ``message_stop``;
  - Responses: ``response.created``, ``response.in_progress``, each output item with its
    ``.added``, delta and ``.done`` events (:func:`.resp_emitter.responses_events`), then the
    answer itself in ``response.completed`` (``.incomplete``, ``.failed`` after its status);
  - OpenAI Chat: per choice a chunk with ``role``, then ``reasoning_content``, ``content``,
    ``refusal`` and each tool call (``index``, ``id``, ``type``, ``function.name`` with empty
    ``arguments``, then the arguments), then the ``finish_reason`` chunk; the usage chunk
    (``choices: []``) when the client asked ``stream_options.include_usage``; ``data: [DONE]``.

  Across dialects the stream is written in the upstream's dialect and then goes through
  the same stream translator a streamed answer would (:func:`.adapters.stream_translator`),
  so a synthesised stream and a real one translate alike. With an alias, the client's model
  name is put back as usual.
* A body that is not a JSON object, or an error payload under 2xx, raises from ``finish``
  (``UpstreamProtocolError`` / the error as a ``ProxyError``) before anything was sent, so
  the client gets a plain error response in its dialect.

Observers that read the upstream body (``ccproxy_response_body``, e.g. the usage plugin)
should still get the upstream's JSON: the upstream's content type, not the client's,
says whether the upstream body is a stream.
"""

from __future__ import annotations

from typing import Any

from ccproxy_core import ANTHROPIC, RESPONSES, UpstreamProtocolError

from .adapters import Keep, _is_stream, client_wants_usage, response_limit, stream_translator, upstream_json
from .base import SSE_CONTENT_TYPE, ResponseAdapter, Settings, dumps
from .resp_emitter import responses_events

__all__ = ["StreamSynthesizer", "anthropic_events", "openai_chunks", "stream_adapter"]

#: Content blocks streamed as a shell plus ``input_json_delta`` (the Messages API's tool calls).
_TOOL_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})


def stream_adapter(ctx: Any, settings: Settings, keep: Keep | None = None) -> ResponseAdapter | None:
    """A :class:`StreamSynthesizer` for this response, or None (see the module docstring)."""
    if not ctx.stream or ctx.upstream_stream:
        return None
    status = ctx.upstream_status or 200
    if not 200 <= status < 300 or _is_stream(ctx):
        return None
    client, upstream = ctx.client_dialect, ctx.upstream_dialect or ctx.client_dialect
    ctx.response_headers["content-type"] = SSE_CONTENT_TYPE
    limit = response_limit(ctx)
    rename = None
    if client == upstream:
        translator = None
        requested = ctx.model_requested
        rename = requested if requested and ctx.model and requested != ctx.model else None
        include_usage = client_wants_usage(ctx)
    else:
        translator = stream_translator(ctx, settings, keep)
        include_usage = True  # the translator needs the usage; it decides what the client gets
    return StreamSynthesizer(upstream, limit, include_usage=include_usage, model=rename, translator=translator)


class StreamSynthesizer:
    """Keeps an upstream JSON answer and, at the end, returns it as a complete SSE stream."""

    __slots__ = ("_upstream", "_limit", "_include_usage", "_model", "_translator", "_parts", "_size")

    def __init__(
        self,
        upstream_dialect: str,
        limit: int,
        *,
        include_usage: bool,
        model: str | None = None,
        translator: ResponseAdapter | None = None,
    ) -> None:
        """``model``: the name to put in place of the upstream's (an alias); ``translator``: the
        stream translator to the client's dialect, None when it is the upstream's."""
        self._upstream = upstream_dialect
        self._limit = limit
        self._include_usage = include_usage
        self._model = model
        self._translator = translator
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> bytes:
        """Keep ``data``; nothing is sent before the answer is whole."""
        self._size += len(data)
        if self._size > self._limit:
            self._parts = []
            raise UpstreamProtocolError(
                f"the upstream's answer is larger than limits.max_response_body_bytes ({self._limit} bytes)"
            )
        self._parts.append(data)
        return b""

    def finish(self) -> bytes:
        """The whole stream, in the client's dialect."""
        payload = upstream_json(self._upstream, b"".join(self._parts))
        self._parts = []
        if self._model is not None:
            payload["model"] = self._model
        if self._upstream == ANTHROPIC:
            stream = anthropic_events(payload)
        elif self._upstream == RESPONSES:
            stream = responses_events(payload)
        else:
            stream = openai_chunks(payload, include_usage=self._include_usage)
        if self._translator is None:
            return stream
        return self._translator.feed(stream) + self._translator.finish()


# -- writers ------------------------------------------------------------------------------


def _event(name: str, payload: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {dumps(payload)}\n\n"


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def anthropic_events(message: dict[str, Any]) -> bytes:
    """An Anthropic Message as the events of a Messages stream (see the module docstring)."""
    usage = {"input_tokens": 0, "output_tokens": 0, **_dict(message.get("usage"))}
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 0}}
    start.setdefault("type", "message")
    start.setdefault("role", "assistant")
    out = [_event("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(_list(message.get("content"))):
        block = _dict(block)
        kind = block.get("type")
        deltas: list[dict[str, Any]] = []
        if kind == "text":
            shell = {**block, "text": ""}
            if "citations" in block:
                shell["citations"] = []
                deltas += [{"type": "citations_delta", "citation": c} for c in _list(block["citations"])]
            if block.get("text"):
                deltas.append({"type": "text_delta", "text": block["text"]})
        elif kind == "thinking":
            shell = {**block, "thinking": "", "signature": ""}
            if block.get("thinking"):
                deltas.append({"type": "thinking_delta", "thinking": block["thinking"]})
            if block.get("signature"):
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
        elif kind in _TOOL_BLOCKS:
            shell = {**block, "input": {}}
            if block.get("input"):
                deltas.append({"type": "input_json_delta", "partial_json": dumps(block["input"])})
        else:  # redacted_thinking, server tool results, unknown blocks: whole in their start
            shell = block
        out.append(_event("content_block_start", {"type": "content_block_start", "index": index, "content_block": shell}))
        out += [_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas]
        out.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    delta = {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")}
    out.append(_event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
    out.append(_event("message_stop", {"type": "message_stop"}))
    return "".join(out).encode()


def openai_chunks(completion: dict[str, Any], *, include_usage: bool) -> bytes:
    """An OpenAI ``chat.completion`` as the chunks of a Chat Completions stream (see the module docstring)."""
    head = {"id": completion.get("id"), "object": "chat.completion.chunk", "created": completion.get("created"),
            "model": completion.get("model")}
    for key in ("service_tier", "system_fingerprint"):
        if key in completion:
            head[key] = completion[key]
    out: list[str] = []

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> None:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        out.append(f"data: {dumps({**head, 'choices': [choice]})}\n\n")

    for position, choice in enumerate(_list(completion.get("choices"))):
        choice = _dict(choice)
        index = choice.get("index", position)
        message = _dict(choice.get("message"))
        chunk(index, {"role": message.get("role") or "assistant", "content": ""})
        for key in ("reasoning_content", "reasoning", "content", "refusal"):
            if isinstance(message.get(key), str) and message[key]:
                chunk(index, {key: message[key]})
        for number, call in enumerate(_list(message.get("tool_calls"))):
            call = _dict(call)
            function = _dict(call.get("function"))
            first = {"index": number, "id": call.get("id"), "type": call.get("type") or "function",
                     "function": {"name": function.get("name"), "arguments": ""}}
            chunk(index, {"tool_calls": [first]})
            arguments = function.get("arguments")
            if arguments:
                arguments = arguments if isinstance(arguments, str) else dumps(arguments)
                chunk(index, {"tool_calls": [{"index": number, "function": {"arguments": arguments}}]})
        if isinstance(message.get("function_call"), dict):
            chunk(index, {"function_call": message["function_call"]})
        chunk(index, {}, choice.get("finish_reason") or "stop")
    if include_usage and isinstance(completion.get("usage"), dict):
        out.append(f"data: {dumps({**head, 'choices': [], 'usage': completion['usage']})}\n\n")
    out.append("data: [DONE]\n\n")
    return "".join(out).encode()
