"""Non-streaming response bodies and usage: Anthropic Message <-> OpenAI ChatCompletion."""

from __future__ import annotations

import time
import uuid
from typing import Any

from . import mappings as m
from .base import Settings, dumps, loads

__all__ = [
    "anthropic_usage_to_openai",
    "openai_usage_to_anthropic",
    "anthropic_message_to_openai",
    "openai_completion_to_anthropic",
    "tool_input_from_arguments",
    "openai_id",
    "anthropic_id",
    "new_tool_id",
    "stop_reason",
]


def openai_id(anthropic_message_id: str | None) -> str:
    """The OpenAI completion id for an Anthropic message id: ``chatcmpl-`` + the id."""
    return f"chatcmpl-{anthropic_message_id or uuid.uuid4().hex}"


def anthropic_id(openai_completion_id: str | None) -> str:
    """The Anthropic message id for an OpenAI completion id: ``msg_`` + the id."""
    return f"msg_{openai_completion_id or uuid.uuid4().hex}"


def new_tool_id() -> str:
    """An id for a tool call an OpenAI-compatible upstream sent without one."""
    return f"toolu_{uuid.uuid4().hex[:24]}"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def anthropic_usage_to_openai(usage: dict[str, Any]) -> dict[str, Any]:
    """Anthropic usage -> OpenAI usage.

    ``prompt_tokens`` = input + cache read + cache creation tokens (Anthropic's
    ``input_tokens`` excludes both); ``prompt_tokens_details.cached_tokens`` = cache
    reads, ``cache_write_tokens`` = cache creation (only when non-zero);
    ``completion_tokens_details.reasoning_tokens`` = ``output_tokens_details.thinking_tokens``.
    """
    cache_read = _int(usage.get("cache_read_input_tokens"))
    cache_write = _int(usage.get("cache_creation_input_tokens"))
    prompt = _int(usage.get("input_tokens")) + cache_read + cache_write
    completion = _int(usage.get("output_tokens"))
    details: dict[str, int] = {"cached_tokens": cache_read}
    if cache_write:
        details["cache_write_tokens"] = cache_write
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": details,
    }
    thinking = (usage.get("output_tokens_details") or {}).get("thinking_tokens")
    if isinstance(thinking, int):
        out["completion_tokens_details"] = {"reasoning_tokens": thinking}
    return out


def openai_usage_to_anthropic(usage: dict[str, Any] | None) -> dict[str, Any]:
    """OpenAI usage -> Anthropic usage, the inverse of :func:`anthropic_usage_to_openai`
    (``input_tokens`` = prompt tokens minus cached and cache-write tokens)."""
    usage = usage or {}
    details = usage.get("prompt_tokens_details") or {}
    cached = _int(details.get("cached_tokens"))
    written = _int(details.get("cache_write_tokens"))
    out: dict[str, Any] = {
        "input_tokens": max(_int(usage.get("prompt_tokens")) - cached - written, 0),
        "output_tokens": _int(usage.get("completion_tokens")),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    if isinstance(reasoning, int) and reasoning:
        out["output_tokens_details"] = {"thinking_tokens": reasoning}
    return out


def tool_input_from_arguments(arguments: Any) -> dict[str, Any]:
    """OpenAI ``function.arguments`` from an upstream -> Anthropic ``input``.

    Empty arguments are ``{}``. Arguments that are not a JSON object are kept, not
    dropped, as ``{"_raw": "<the arguments string>"}`` so the client can see them.
    """
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        value = loads(arguments)
    except (TypeError, ValueError):
        value = None
    return value if isinstance(value, dict) else {"_raw": arguments if isinstance(arguments, str) else dumps(arguments)}


def anthropic_message_to_openai(
    msg: dict[str, Any], *, model: str | None, settings: Settings, created: int | None = None
) -> dict[str, Any]:
    """An Anthropic Message -> an OpenAI ``chat.completion`` (one choice)."""
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in msg.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": dumps(block.get("input") or {})},
                }
            )
        elif kind == "thinking":
            thinking.append(block.get("thinking", ""))
        # redacted_thinking and server-tool blocks have no OpenAI form (documented)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    if thinking and settings.thinking == "reasoning_content":
        message["reasoning_content"] = "".join(thinking)
    stop = msg.get("stop_reason")
    return {
        "id": openai_id(msg.get("id")),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model or msg.get("model"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": m.STOP_TO_FINISH.get(stop, "stop") if stop else "stop",
            }
        ],
        "usage": anthropic_usage_to_openai(msg.get("usage") or {}),
    }


def openai_completion_to_anthropic(completion: dict[str, Any], *, model: str | None) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` (first choice) -> an Anthropic Message."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, list):  # some compatible servers return parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    if text:
        content.append({"type": "text", "text": text})
    refusal = message.get("refusal")
    if refusal:
        content.append({"type": "text", "text": refusal})
    calls = list(message.get("tool_calls") or ())
    legacy = message.get("function_call")
    if legacy:
        calls.append({"function": legacy})
    for call in calls:
        fn = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or new_tool_id(),
                "name": fn.get("name"),
                "input": tool_input_from_arguments(fn.get("arguments")),
            }
        )
    return {
        "id": anthropic_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model or completion.get("model"),
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), has_tools=bool(calls), refused=bool(refusal)),
        "stop_sequence": None,
        "usage": openai_usage_to_anthropic(completion.get("usage")),
    }


def stop_reason(finish_reason: str | None, *, has_tools: bool, refused: bool) -> str:
    """OpenAI ``finish_reason`` -> Anthropic ``stop_reason``.

    A refusal is ``refusal``; tool calls that ended with ``stop`` (some compatible
    servers say so) are ``tool_use``; a missing reason is ``end_turn``.
    """
    if refused:
        return "refusal"
    reason = m.FINISH_TO_STOP.get(finish_reason or "stop", "end_turn")
    if has_tools and reason == "end_turn":
        return "tool_use"
    return reason
