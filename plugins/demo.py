"""The offline demo provider: a provider whose ``base_url`` is ``demo://…`` answers in-process.

It is an httpx transport, so its answers take exactly the path a real upstream's
do (held head, streaming, adapters, hooks). It replies in the dialect of the
path it is called on, streaming a word at a time when asked to stream, and shows
what the gateway translates: when the request offers tools it calls the first one
(arguments that fit its schema), then answers in text once the tool result comes
back; it thinks first when thinking (Anthropic) or ``reasoning_effort`` (Chat) is
asked for; usage counts input with the local estimate. It answers token counts too.

The Responses dialect joins as a third branch of :meth:`DemoTransport.handle_async_request`
(path ``/responses``, and ``/responses/input_tokens`` for counts) when that dialect is routed:
:class:`_Answer` is dialect-free, so what it needs is its request reader (``input`` items,
``reasoning``, flat function tools) and an emitter of Responses events.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ccproxy_core import PluginSettings, ProviderConfig, estimate_input_tokens, hookimpl

#: Pause between streamed words, in seconds.
WORD_DELAY = 0.03


@dataclass(slots=True)
class _NoSettings:
    """This plugin takes no settings: any key under ``plugins: demo:`` is refused."""


@hookimpl
def ccproxy_configure(settings: PluginSettings) -> None:
    settings.load(_NoSettings)


@hookimpl
def ccproxy_upstream_transport(provider: ProviderConfig) -> httpx.AsyncBaseTransport | None:
    return DemoTransport() if provider.base_url.startswith("demo://") else None


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _tool_result(body: dict[str, Any], openai: bool) -> str | None:
    """The text of the tool result the last message carries, if it is one."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    if not messages:
        return None
    last = messages[-1]
    if openai:
        content = last.get("content") if last.get("role") == "tool" else None
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        return None if content is None else str(content)
    if last.get("role") != "user" or not isinstance(last.get("content"), list):
        return None
    for block in last["content"]:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            content = block.get("content")
            if isinstance(content, list):
                content = " ".join(b.get("text", "") for b in content if isinstance(b, dict))
            return str(content or "")
    return None


def _value(name: str, schema: Any) -> Any:
    """A value that fits ``schema`` (deterministic: the same schema always gets the same value)."""
    schema = schema if isinstance(schema, dict) else {}
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if kind == "object" or "properties" in schema:
        return _arguments(schema)
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return "echo hello from the ccproxy demo" if name == "command" else f"demo {name}"


def _arguments(schema: Any) -> dict[str, Any]:
    """Arguments for a tool with input ``schema``: each required property (every property when
    none is required) with a value that fits it."""
    schema = schema if isinstance(schema, dict) else {}
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = [n for n in schema.get("required") or [] if n in properties] or list(properties)
    return {name: _value(name, properties[name]) for name in required}


def _first_tool(body: dict[str, Any], openai: bool) -> tuple[str, dict[str, Any]] | None:
    """The name and arguments of the call the demo makes: the first offered tool's."""
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        if openai:
            function = tool.get("function") if isinstance(tool.get("function"), dict) else {}
            if function.get("name"):
                return str(function["name"]), _arguments(function.get("parameters"))
        elif tool.get("name") and "input_schema" in tool:  # server tools (web search, ...) have none
            return str(tool["name"]), _arguments(tool.get("input_schema"))
    return None


def _thinks(body: dict[str, Any], openai: bool) -> bool:
    if openai:
        return bool(body.get("reasoning_effort")) and body.get("reasoning_effort") != "none"
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


@dataclass(slots=True)
class _Answer:
    """What the demo says: optional thinking, then text words or one tool call."""

    thinking: list[str]
    words: list[str]
    tool: tuple[str, dict[str, Any]] | None
    input_tokens: int

    @property
    def output_tokens(self) -> int:
        return len(self.thinking) + len(self.words) + (len(json.dumps(self.tool[1])) // 4 + 1 if self.tool else 0)


def _answer(body: dict[str, Any], openai: bool) -> _Answer:
    result = _tool_result(body, openai)
    tool = None if result is not None else _first_tool(body, openai)
    if result is not None:
        text = f"The tool returned: {result.strip()[:200]}"
    elif tool is not None:
        text = ""
    else:
        text = "Hello from the ccproxy demo provider (offline, no API key needed)."
        said = _last_user_text(body).strip()[:200]
        if said:
            text += f" You said: {said}"
    thinking = _words("The demo thinks before it answers.") if _thinks(body, openai) else []
    return _Answer(thinking, _words(text) if text else [], tool, estimate_input_tokens(body))


def _sse(event: str | None, data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "").encode() + f"data: {payload}\n\n".encode()


_SIGNATURE = "ZGVtbw=="  # thinking blocks are signed; the demo's signature is a constant


def _anthropic_blocks(answer: _Answer) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if answer.thinking:
        blocks.append({"type": "thinking", "thinking": "".join(answer.thinking), "signature": _SIGNATURE})
    if answer.words:
        blocks.append({"type": "text", "text": "".join(answer.words)})
    if answer.tool:
        blocks.append({"type": "tool_use", "id": "toolu_demo_" + uuid.uuid4().hex[:16], "name": answer.tool[0],
                       "input": answer.tool[1]})
    return blocks


def _anthropic_events(model: str, answer: _Answer) -> list[bytes]:
    msg_id = "msg_demo_" + uuid.uuid4().hex[:16]
    usage = {"input_tokens": answer.input_tokens, "output_tokens": 1, "cache_read_input_tokens": 0,
             "cache_creation_input_tokens": 0}
    start = {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": usage}
    events = [_sse("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(_anthropic_blocks(answer)):
        kind = block["type"]
        if kind == "thinking":
            opening, deltas = {"type": "thinking", "thinking": "", "signature": ""}, [
                {"type": "thinking_delta", "thinking": w} for w in answer.thinking] + [
                {"type": "signature_delta", "signature": _SIGNATURE}]
        elif kind == "text":
            opening, deltas = {"type": "text", "text": ""}, [{"type": "text_delta", "text": w} for w in answer.words]
        else:
            opening = {**block, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": json.dumps(block["input"])}]
        events.append(_sse("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": opening}))
        events += [_sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
                   for d in deltas]
        events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    stop = "tool_use" if answer.tool else "end_turn"
    events += [_sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                      "usage": {"output_tokens": answer.output_tokens}}),
               _sse("message_stop", {"type": "message_stop"})]
    return events


def _openai_usage(answer: _Answer) -> dict[str, Any]:
    return {"prompt_tokens": answer.input_tokens, "completion_tokens": answer.output_tokens,
            "total_tokens": answer.input_tokens + answer.output_tokens,
            "completion_tokens_details": {"reasoning_tokens": len(answer.thinking)}}


def _openai_tool_call(answer: _Answer) -> dict[str, Any]:
    assert answer.tool is not None
    return {"id": "call_demo_" + uuid.uuid4().hex[:16], "type": "function",
            "function": {"name": answer.tool[0], "arguments": json.dumps(answer.tool[1])}}


def _openai_chunks(model: str, answer: _Answer, include_usage: bool) -> list[bytes]:
    base = {"id": "chatcmpl-demo" + uuid.uuid4().hex[:16], "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse(None, {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"reasoning_content": w}) for w in answer.thinking]
    chunks += [chunk({"content": w}) for w in answer.words]
    if answer.tool:
        call = _openai_tool_call(answer)
        arguments = call["function"].pop("arguments")
        chunks.append(chunk({"tool_calls": [{"index": 0, **call, "function": {**call["function"], "arguments": ""}}]}))
        chunks.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}))
    chunks.append(chunk({}, "tool_calls" if answer.tool else "stop"))
    if include_usage:
        chunks.append(_sse(None, {**base, "choices": [], "usage": _openai_usage(answer)}))
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def _json_reply(openai: bool, model: str, answer: _Answer) -> dict[str, Any]:
    if openai:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(answer.words) or None}
        if answer.thinking:
            message["reasoning_content"] = "".join(answer.thinking)
        if answer.tool:
            message["tool_calls"] = [_openai_tool_call(answer)]
        return {"id": "chatcmpl-demo" + uuid.uuid4().hex[:16], "object": "chat.completion", "created": int(time.time()),
                "model": model, "choices": [{"index": 0, "message": message,
                                             "finish_reason": "tool_calls" if answer.tool else "stop"}],
                "usage": _openai_usage(answer)}
    return {"id": "msg_demo_" + uuid.uuid4().hex[:16], "type": "message", "role": "assistant", "model": model,
            "content": _anthropic_blocks(answer), "stop_reason": "tool_use" if answer.tool else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": answer.input_tokens, "output_tokens": answer.output_tokens,
                      "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}


class _Paced(httpx.AsyncByteStream):
    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            await asyncio.sleep(WORD_DELAY)
            yield part


class DemoTransport(httpx.AsyncBaseTransport):
    """Answers Anthropic (``/v1/messages``) and OpenAI (``/chat/completions``) requests in-process."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.rstrip("/")
        openai = path.endswith("/chat/completions")
        try:
            body = json.loads(await request.aread())
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        request_id = "demo_" + uuid.uuid4().hex[:12]
        headers = {("x-request-id" if openai else "request-id"): request_id}
        if path.endswith("/count_tokens"):
            return httpx.Response(200, headers=headers, json={"input_tokens": estimate_input_tokens(body)},
                                  request=request)
        if not openai and not path.endswith("/messages"):  # e.g. /v1/models: the demo lists nothing
            return httpx.Response(404, headers=headers, request=request, json={
                "type": "error", "error": {"type": "not_found_error", "message": f"the demo has no {path}"}})
        model = str(body.get("model", "demo"))
        answer = _answer(body, openai)
        if body.get("stream") is True:
            if openai:
                include = bool((body.get("stream_options") or {}).get("include_usage"))
                parts = _openai_chunks(model, answer, include)
            else:
                parts = _anthropic_events(model, answer)
            headers["content-type"] = "text/event-stream; charset=utf-8"
            return httpx.Response(200, headers=headers, stream=_Paced(parts), request=request)
        return httpx.Response(200, headers=headers, json=_json_reply(openai, model, answer), request=request)
