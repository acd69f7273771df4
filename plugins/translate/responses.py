"""Non-streaming response bodies and usage: Anthropic Message <-> OpenAI ChatCompletion.

Odd but valid upstream bodies convert (no usage, null content, no choices); a body
whose fields have types the dialect does not allow raises
:class:`UpstreamProtocolError` (502) naming the field.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from ccproxy_core import UpstreamProtocolError

from . import mappings as m
from .base import Settings, dumps, loads
from .check import expect_dict, expect_list, expect_str

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


def _dict(value: Any) -> dict[str, Any]:
    """Usage objects: anything else counts as none (as counts that are not numbers count as 0)."""
    return value if isinstance(value, dict) else {}


def _bad(message: str) -> UpstreamProtocolError:
    return UpstreamProtocolError(f"the upstream's response body cannot be translated: {message}")


def anthropic_usage_to_openai(usage: dict[str, Any] | None) -> dict[str, Any]:
    """Anthropic usage -> OpenAI usage.

    ``prompt_tokens`` = input + cache read + cache creation tokens (Anthropic's
    ``input_tokens`` excludes both); ``prompt_tokens_details.cached_tokens`` = cache
    reads, ``cache_write_tokens`` = cache creation (only when non-zero);
    ``completion_tokens_details.reasoning_tokens`` = ``output_tokens_details.thinking_tokens``.
    """
    usage = _dict(usage)
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
    thinking = _dict(usage.get("output_tokens_details")).get("thinking_tokens")
    if isinstance(thinking, int) and not isinstance(thinking, bool):
        out["completion_tokens_details"] = {"reasoning_tokens": thinking}
    return out


def openai_usage_to_anthropic(usage: dict[str, Any] | None) -> dict[str, Any]:
    """OpenAI usage -> Anthropic usage, the inverse of :func:`anthropic_usage_to_openai`
    (``input_tokens`` = prompt tokens minus cached and cache-write tokens)."""
    usage = _dict(usage)
    details = _dict(usage.get("prompt_tokens_details"))
    cached = _int(details.get("cached_tokens"))
    written = _int(details.get("cache_write_tokens"))
    out: dict[str, Any] = {
        "input_tokens": max(_int(usage.get("prompt_tokens")) - cached - written, 0),
        "output_tokens": _int(usage.get("completion_tokens")),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }
    reasoning = _int(_dict(usage.get("completion_tokens_details")).get("reasoning_tokens"))
    if reasoning:
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
    except (TypeError, ValueError, RecursionError):
        value = None
    return value if isinstance(value, dict) else {"_raw": arguments if isinstance(arguments, str) else dumps(arguments)}


def anthropic_message_to_openai(
    msg: dict[str, Any], *, model: str | None, settings: Settings, created: int | None = None
) -> dict[str, Any]:
    """An Anthropic Message -> an OpenAI ``chat.completion`` (one choice).

    Raises:
        UpstreamProtocolError: a field has a type the Messages API does not allow.
    """
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    content = msg.get("content")
    if isinstance(content, str):  # not the Messages API's shape, but plainly text
        content = [{"type": "text", "text": content}]
    for i, block in enumerate(expect_list(content, "content", default=(), error=_bad)):
        at = f"content[{i}]"
        block = expect_dict(block, at, error=_bad)
        kind = block.get("type")
        if kind == "text":
            texts.append(expect_str(block.get("text"), at, "text", default="", error=_bad))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": expect_str(block.get("id"), at, "id", default=None, error=_bad) or new_tool_id(),
                    "type": "function",
                    "function": {
                        "name": expect_str(block.get("name"), at, "name", default="", error=_bad),
                        "arguments": dumps(expect_dict(block.get("input"), at, "input", default={}, error=_bad)),
                    },
                }
            )
        elif kind == "thinking":
            thinking.append(expect_str(block.get("thinking"), at, "thinking", default="", error=_bad))
        # redacted_thinking, server-tool and unknown blocks have no OpenAI form (documented)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    if thinking and settings.thinking == "reasoning_content":
        message["reasoning_content"] = "".join(thinking)
    stop = expect_str(msg.get("stop_reason"), "stop_reason", default=None, error=_bad)
    return {
        "id": openai_id(expect_str(msg.get("id"), "id", default=None, error=_bad)),
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
        "usage": anthropic_usage_to_openai(msg.get("usage")),
    }


def openai_completion_to_anthropic(completion: dict[str, Any], *, model: str | None) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` (first choice) -> an Anthropic Message.

    Raises:
        UpstreamProtocolError: a field has a type Chat Completions does not allow.
    """
    choices = expect_list(completion.get("choices"), "choices", default=(), error=_bad)
    choice = expect_dict(choices[0], "choices[0]", error=_bad) if choices else {}
    message = expect_dict(choice.get("message"), "choices[0].message", default={}, error=_bad)
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, list):  # some compatible servers return parts
        text = "".join(_part_text(part, f"choices[0].message.content[{i}]") for i, part in enumerate(text))
    if expect_str(text, "choices[0].message.content", default=None, error=_bad):
        content.append({"type": "text", "text": text})
    refusal = expect_str(message.get("refusal"), "choices[0].message.refusal", default=None, error=_bad)
    if refusal:
        content.append({"type": "text", "text": refusal})
    calls = list(expect_list(message.get("tool_calls"), "choices[0].message.tool_calls", default=(), error=_bad))
    legacy = expect_dict(message.get("function_call"), "choices[0].message.function_call", default=None, error=_bad)
    if legacy:
        calls.append({"function": legacy})
    for i, call in enumerate(calls):
        at = f"choices[0].message.tool_calls[{i}]"
        call = expect_dict(call, at, error=_bad)
        fn = expect_dict(call.get("function"), at, "function", default={}, error=_bad)
        content.append(
            {
                "type": "tool_use",
                "id": expect_str(call.get("id"), at, "id", default=None, error=_bad) or new_tool_id(),
                "name": expect_str(fn.get("name"), at, "function.name", default="", error=_bad),
                "input": tool_input_from_arguments(fn.get("arguments")),
            }
        )
    finish = expect_str(choice.get("finish_reason"), "choices[0].finish_reason", default=None, error=_bad)
    return {
        "id": anthropic_id(expect_str(completion.get("id"), "id", default=None, error=_bad)),
        "type": "message",
        "role": "assistant",
        "model": model or completion.get("model"),
        "content": content,
        "stop_reason": stop_reason(finish, has_tools=bool(calls), refused=bool(refusal)),
        "stop_sequence": None,
        "usage": openai_usage_to_anthropic(completion.get("usage")),
    }


def _part_text(part: Any, where: str) -> str:
    """The text of a content part some compatible servers return (other parts have none)."""
    return expect_str(expect_dict(part, where, error=_bad).get("text"), where, "text", default="", error=_bad)


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
