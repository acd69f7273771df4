"""Whole-body adapters (JSON and error bodies), model-name restoring adapters, and
:func:`choose_adapter`, which picks the adapter for a response."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

from ccproxy_core import (
    ANTHROPIC,
    OPENAI,
    RESPONSES,
    Limits,
    SSEParser,
    UpstreamProtocolError,
    encode_event,
    error_body,
    with_model,
)

from .base import JSON_CONTENT_TYPE, SSE_CONTENT_TYPE, ResponseAdapter, Settings, dumps, loads
from .errors import client_status, stream_error, upstream_error
from .resp_bodies import (
    anthropic_message_to_responses,
    chat_completion_to_responses,
    responses_to_anthropic_message,
    responses_to_chat_completion,
)
from .resp_streams import (
    RESPONSE_EVENTS,
    AnthropicToResponsesStream,
    ChatToResponsesStream,
    ResponsesToAnthropicStream,
    ResponsesToChatStream,
)
from .responses import anthropic_message_to_openai, openai_completion_to_anthropic
from .streams import AnthropicToOpenAIStream, OpenAIToAnthropicStream

_DEFAULT_LIMIT = Limits().max_response_body_bytes
#: Given a Responses client's final response object, to keep it (``previous_response_id``).
Keep = Callable[[dict[str, Any]], None]

__all__ = [
    "BufferedAdapter",
    "upstream_json",
    "stream_translator",
    "JSONResponseAdapter",
    "ErrorResponseAdapter",
    "ModelRenameJSONAdapter",
    "ModelRenameStreamAdapter",
    "choose_adapter",
    "count_answer",
]


class BufferedAdapter:
    """Collects the whole body and converts it in :meth:`finish` (bodies are small)."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def feed(self, data: bytes) -> bytes:
        """Keep ``data``; nothing is sent before the body is complete."""
        self._parts.append(data)
        return b""

    def finish(self) -> bytes:
        """Convert the whole body."""
        body = b"".join(self._parts)
        self._parts = []
        return self.convert(body)

    def convert(self, body: bytes) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError


class JSONResponseAdapter(BufferedAdapter):
    """A successful JSON body in the upstream's dialect -> the client's dialect.

    A body that is not a JSON object raises :class:`UpstreamProtocolError`, and an
    error payload under a 2xx status (some compatible servers send one) raises it as
    a :class:`ProxyError`: the core then fails the response visibly instead of
    sending the wrong shape under a success status.
    """

    __slots__ = ("_upstream", "_convert")

    def __init__(self, upstream_dialect: str, convert: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        super().__init__()
        self._upstream = upstream_dialect
        self._convert = convert

    def convert(self, body: bytes) -> bytes:
        return dumps(self._convert(upstream_json(self._upstream, body))).encode()


def upstream_json(upstream_dialect: str, body: bytes) -> dict[str, Any]:
    """A successful upstream JSON body as an object.

    Raises:
        UpstreamProtocolError: the body is not a JSON object.
        ProxyError: the body is an error payload (some compatible servers send one under 2xx).
    """
    try:
        payload = loads(body)
    except (ValueError, RecursionError):
        payload = None
    if not isinstance(payload, dict):
        raise UpstreamProtocolError("the upstream's response body is not a JSON object")
    if payload.get("error") is not None or payload.get("type") == "error":
        raise stream_error(upstream_dialect, payload)
    return payload


class ErrorResponseAdapter(BufferedAdapter):
    """An upstream error body -> the client's error shape (status set by :func:`choose_adapter`)."""

    __slots__ = ("_upstream", "_client", "_status")

    def __init__(self, upstream_dialect: str, client_dialect: str, status: int) -> None:
        super().__init__()
        self._upstream, self._client, self._status = upstream_dialect, client_dialect, status

    def convert(self, body: bytes) -> bytes:
        return error_body(self._client, upstream_error(self._upstream, self._status, body))


class ModelRenameJSONAdapter(BufferedAdapter):
    """Same dialect, aliased model: the upstream's JSON body with the value of its top-level ``model``
    set to the name the client asked for, every other byte kept (``with_model``); a body that is not a
    JSON object as far as its ``model``, or has none, passes unchanged."""

    __slots__ = ("_model",)

    def __init__(self, model: str) -> None:
        super().__init__()
        self._model = model

    def convert(self, body: bytes) -> bytes:
        try:
            return with_model(body, self._model)
        except ValueError:
            return body


# The first "model" key of an event's JSON: the top-level one in OpenAI chunks,
# message.model in Anthropic message_start (escaped quotes inside strings never match).
_MODEL_KEY = re.compile(r'("model"\s*:\s*)"(?:[^"\\]|\\.)*"')
_RAW_MODEL_KEY = re.compile(_MODEL_KEY.pattern.encode())


class ModelRenameStreamAdapter:
    """Same dialect, aliased model: the stream as the upstream sent it but for the model name.

    OpenAI chunks carry ``model`` in every chunk, Anthropic streams only in ``message_start``, Responses
    streams in the events that hold the whole ``response``. A read of whole events (it ends with a blank
    line and holds no carriage return, and the read before it ended an event) passes as it came: for OpenAI
    with the first ``model`` of each event replaced in its bytes, when every event is one ``data:`` line;
    otherwise unless it names an event that carries the model. Any other read is parsed, and its events
    re-framed (comments dropped, line ends ``\\n``) with the model replaced in those that carry it.
    """

    __slots__ = ("_parser", "_replacement", "_raw_replacement", "_every_event", "_events", "_names")

    def __init__(self, model: str, dialect: str) -> None:
        self._parser = SSEParser()
        quoted = dumps(model)
        raw = quoted.encode()
        self._replacement: Callable[[re.Match[str]], str] = lambda match: match.group(1) + quoted
        self._raw_replacement: Callable[[re.Match[bytes]], bytes] = lambda match: match.group(1) + raw
        self._every_event = dialect == OPENAI
        self._events = RESPONSE_EVENTS if dialect == RESPONSES else frozenset({"message_start"})
        self._names = tuple(name.encode() for name in self._events)

    def _encode(self, events: list[Any]) -> bytes:
        out = []
        for event in events:
            data = event.data
            if self._every_event or event.event in self._events:
                data = _MODEL_KEY.sub(self._replacement, data, count=1)
            out.append(encode_event(data, event.event, id=event.id, retry=event.retry))
        return b"".join(out)

    def _as_read(self, data: bytes) -> bytes | None:
        """Whole events ``data`` renamed in its own bytes; None when it must be parsed."""
        if not self._every_event:
            return None if any(data.find(name) >= 0 for name in self._names) else data
        events = data[:-2].split(b"\n\n")
        for i, event in enumerate(events):
            if not event.startswith(b"data: ") or event.find(b"\n") >= 0:  # a comment, a field, more lines
                return None
            events[i] = _RAW_MODEL_KEY.sub(self._raw_replacement, event, count=1)
        return b"\n\n".join(events) + b"\n\n"

    def feed(self, data: bytes) -> bytes:
        """The events completed by ``data``, renamed."""
        if self._parser.passes(data):
            out = self._as_read(data)
            if out is not None:
                return out
        return self._encode(self._parser.feed(data))

    def finish(self) -> bytes:
        """Re-encode the last event if the upstream left it unterminated."""
        return self._encode(self._parser.flush())


def _is_stream(ctx: Any) -> bool:
    content_type = ctx.response_headers.get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


def client_wants_usage(ctx: Any) -> bool:
    """The OpenAI client asked for the usage chunk (``stream_options.include_usage``)."""
    options = (ctx.body or {}).get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def response_limit(ctx: Any) -> int:
    """``limits.max_response_body_bytes``: what a translator may hold of one answer."""
    limits = getattr(ctx.config, "limits", None)
    return limits.max_response_body_bytes if limits is not None else _DEFAULT_LIMIT


def stream_translator(ctx: Any, settings: Settings, keep: Keep | None = None) -> ResponseAdapter:
    """The translator of an upstream stream into the client's dialect (the dialects differ); ``keep``
    is given a Responses client's final response object."""
    model = ctx.model_requested or ctx.model
    client, upstream = ctx.client_dialect, ctx.upstream_dialect
    thinking = settings.thinking == "reasoning_content"
    if client == RESPONSES:
        cls = AnthropicToResponsesStream if upstream == ANTHROPIC else ChatToResponsesStream
        translator = cls(model=model, request=ctx.body, limit=response_limit(ctx))
        translator._r.on_final = keep
        return translator
    if upstream == RESPONSES:
        if client == ANTHROPIC:
            return ResponsesToAnthropicStream(model=model, limit=response_limit(ctx))
        return ResponsesToChatStream(model=model, include_usage=client_wants_usage(ctx), thinking=thinking)
    if upstream == ANTHROPIC:
        return AnthropicToOpenAIStream(model=model, include_usage=client_wants_usage(ctx), thinking=thinking)
    return OpenAIToAnthropicStream(model=model, limit=response_limit(ctx))


def json_converter(ctx: Any, settings: Settings, keep: Keep | None = None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The converter of a successful JSON answer into the client's dialect (the dialects differ); ``keep``
    is given a Responses client's response object."""
    model = ctx.model_requested or ctx.model
    client, upstream = ctx.client_dialect, ctx.upstream_dialect
    if ctx.counting:
        return partial(count_answer, client)
    if client == RESPONSES:
        convert = anthropic_message_to_responses if upstream == ANTHROPIC else chat_completion_to_responses
        if keep is None:
            return partial(convert, model=model, request=ctx.body)

        def convert_and_keep(body: dict[str, Any]) -> dict[str, Any]:
            response = convert(body, model=model, request=ctx.body)
            keep(response)
            return response

        return convert_and_keep
    if upstream == RESPONSES:
        if client == ANTHROPIC:
            return partial(responses_to_anthropic_message, model=model)
        return partial(responses_to_chat_completion, model=model, settings=settings)
    if upstream == ANTHROPIC:
        return partial(anthropic_message_to_openai, model=model, settings=settings)
    return partial(openai_completion_to_anthropic, model=model)


def count_answer(client: str, body: dict[str, Any]) -> dict[str, Any]:
    """A token count in ``client``'s shape: Anthropic's ``{"input_tokens": N}`` or the Responses API's
    ``{"object": "response.input_tokens", "input_tokens": N}``.

    Raises:
        UpstreamProtocolError: the upstream's answer has no integer ``input_tokens``.
    """
    count = body.get("input_tokens")
    if not isinstance(count, int) or isinstance(count, bool):
        raise UpstreamProtocolError("the upstream's token count has no integer input_tokens")
    return {"object": "response.input_tokens", "input_tokens": count} if client == RESPONSES else {"input_tokens": count}


def choose_adapter(ctx: Any, settings: Settings, keep: Keep | None = None) -> ResponseAdapter | None:
    """The adapter for this response, or None to pass the bytes through (``keep``: see
    :func:`stream_translator`).

    Sets the client's ``content-type`` and, for errors, ``ctx.status``.
    """
    client, upstream = ctx.client_dialect, ctx.upstream_dialect
    status = ctx.upstream_status or 200
    requested = ctx.model_requested
    if upstream is None or client == upstream:
        if not requested or not ctx.model or requested == ctx.model or status >= 400:
            return None
        if _is_stream(ctx):
            return ModelRenameStreamAdapter(requested, client)
        return ModelRenameJSONAdapter(requested)

    if status >= 400:
        ctx.status = client_status(upstream, status)
        ctx.response_headers["content-type"] = JSON_CONTENT_TYPE
        return ErrorResponseAdapter(upstream, client, status)
    if _is_stream(ctx):
        ctx.response_headers["content-type"] = SSE_CONTENT_TYPE
        return stream_translator(ctx, settings, keep)
    ctx.response_headers["content-type"] = JSON_CONTENT_TYPE
    return JSONResponseAdapter(upstream, json_converter(ctx, settings, keep))
