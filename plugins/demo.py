"""The offline demo provider: a provider whose ``base_url`` is ``demo://…`` answers in-process.

It is an httpx transport, so its answers take exactly the path a real upstream's
do (held head, streaming, adapters, hooks). It replies in the dialect of the
path it is called on, streaming a word at a time when asked to stream.
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

from ccproxy_core import PluginSettings, ProviderConfig, hookimpl

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
                return " ".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def _reply(body: dict[str, Any]) -> list[str]:
    said = _last_user_text(body).strip()[:200]
    text = "Hello from the ccproxy demo provider (offline, no API key needed)."
    if said:
        text += f" You said: {said}"
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _sse(event: str | None, data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "").encode() + f"data: {payload}\n\n".encode()


def _anthropic_events(model: str, words: list[str]) -> list[bytes]:
    msg_id = "msg_demo_" + uuid.uuid4().hex[:16]
    usage = {"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    start = {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": usage}
    events = [_sse("message_start", {"type": "message_start", "message": start}),
              _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}})]
    events += [_sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": w}}) for w in words]
    events += [_sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
               _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                      "usage": {"output_tokens": len(words)}}),
               _sse("message_stop", {"type": "message_stop"})]
    return events


def _openai_chunks(model: str, words: list[str], include_usage: bool) -> list[bytes]:
    base = {"id": "chatcmpl-demo" + uuid.uuid4().hex[:16], "object": "chat.completion.chunk",
            "created": int(time.time()), "model": model}
    chunks = [_sse(None, {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                              "finish_reason": None}]})]
    chunks += [_sse(None, {**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]})
               for w in words]
    chunks.append(_sse(None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    if include_usage:
        chunks.append(_sse(None, {**base, "choices": [], "usage": {
            "prompt_tokens": 10, "completion_tokens": len(words), "total_tokens": 10 + len(words)}}))
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def _json_reply(openai: bool, model: str, words: list[str]) -> dict[str, Any]:
    text = "".join(words)
    if openai:
        return {"id": "chatcmpl-demo" + uuid.uuid4().hex[:16], "object": "chat.completion", "created": int(time.time()),
                "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": len(words), "total_tokens": 10 + len(words)}}
    return {"id": "msg_demo_" + uuid.uuid4().hex[:16], "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": len(words)}}


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
        openai = request.url.path.endswith("/chat/completions")
        try:
            body = json.loads(await request.aread())
        except ValueError:
            body = {}
        model = str(body.get("model", "demo"))
        words = _reply(body)
        request_id = "demo_" + uuid.uuid4().hex[:12]
        headers = {("x-request-id" if openai else "request-id"): request_id}
        if body.get("stream") is True:
            if openai:
                include = bool((body.get("stream_options") or {}).get("include_usage"))
                parts = _openai_chunks(model, words, include)
            else:
                parts = _anthropic_events(model, words)
            headers["content-type"] = "text/event-stream; charset=utf-8"
            return httpx.Response(200, headers=headers, stream=_Paced(parts), request=request)
        return httpx.Response(200, headers=headers, json=_json_reply(openai, model, words), request=request)
