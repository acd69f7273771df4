"""Responses API response bodies: the ``response`` object, its items and usage, and the
non-streamed conversions to and from an Anthropic Message and a Chat ``chat.completion``.

The stream translators (:mod:`.resp_streams`) build the same objects with the helpers here,
so a streamed and a JSON answer carry the same ids, items and usage. Bodies whose fields
have types the dialect does not allow raise :class:`UpstreamProtocolError` naming the field.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from ccproxy_core import ProxyError

from . import mappings as m
from .base import Settings, dumps
from .check import expect_dict, expect_list, expect_str
from .responses import (
    _bad,
    _dict,
    _int,
    anthropic_id,
    anthropic_usage_to_openai,
    new_tool_id,
    openai_id,
    openai_usage_to_anthropic,
    stop_reason,
    tool_input_from_arguments,
)

__all__ = [
    "responses_id",
    "item_id",
    "response_object",
    "message_item",
    "reasoning_item",
    "function_call_item",
    "usage_from_chat",
    "usage_to_chat",
    "error_object",
    "anthropic_message_to_responses",
    "chat_completion_to_responses",
    "responses_to_anthropic_message",
    "responses_to_chat_completion",
]


def responses_id(upstream_id: str | None) -> str:
    """The Responses id for an upstream message or completion id: ``resp_`` + the id."""
    return f"resp_{upstream_id or uuid.uuid4().hex}"


def item_id(prefix: str, response_id: str, index: int) -> str:
    """The id of output item ``index`` (``msg``, ``rs`` or ``fc``), unique within the response."""
    return f"{prefix}_{response_id.removeprefix('resp_')}_{index}"


def response_object(
    *,
    id: str,
    created_at: int,
    model: str | None,
    status: str,
    output: list[dict[str, Any]],
    request: dict[str, Any] | None,
    usage: dict[str, Any] | None = None,
    incomplete: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``response`` object; the request's options are echoed as the Responses API does."""
    request = request if isinstance(request, dict) else {}
    reasoning = _dict(request.get("reasoning"))
    return {
        "id": id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": request.get("store", True),
        "temperature": request.get("temperature", 1.0),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p", 1.0),
        "truncation": request.get("truncation", "disabled"),
        "usage": usage,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


def message_item(id: str, parts: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    """An assistant ``message`` item with ``output_text`` / ``refusal`` parts."""
    return {"id": id, "type": "message", "status": status, "role": "assistant", "content": parts}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def reasoning_item(id: str, summary: str, encrypted: str | None = None) -> dict[str, Any]:
    """A ``reasoning`` item: the thinking as one summary part (none when empty); an Anthropic
    thinking signature (or redacted thinking's data) as ``encrypted_content``."""
    item: dict[str, Any] = {"id": id, "type": "reasoning", "summary": []}
    if summary:
        item["summary"] = [{"type": "summary_text", "text": summary}]
    if encrypted:
        item["encrypted_content"] = encrypted
    return item


def function_call_item(id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"id": id, "type": "function_call", "status": status, "arguments": arguments, "call_id": call_id,
            "name": name}


# -- usage ------------------------------------------------------------------------------


def usage_from_chat(usage: Any) -> dict[str, Any]:
    """Chat usage -> Responses usage (Chat's ``prompt_tokens_details.cache_write_tokens``, which
    only some servers send, is Responses' ``input_tokens_details.cache_write_tokens``)."""
    usage = _dict(usage)
    prompt_details = _dict(usage.get("prompt_tokens_details"))
    details = {"cached_tokens": _int(prompt_details.get("cached_tokens")),
               "cache_write_tokens": _int(prompt_details.get("cache_write_tokens"))}
    reasoning = _int(_dict(usage.get("completion_tokens_details")).get("reasoning_tokens"))
    inputs, outputs = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
    return {
        "input_tokens": inputs,
        "input_tokens_details": details,
        "output_tokens": outputs,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": inputs + outputs,
    }


def usage_to_chat(usage: Any) -> dict[str, Any]:
    """Responses usage -> Chat usage (the inverse of :func:`usage_from_chat`)."""
    usage = _dict(usage)
    details = _dict(usage.get("input_tokens_details"))
    inputs, outputs = _int(usage.get("input_tokens")), _int(usage.get("output_tokens"))
    prompt_details = {"cached_tokens": _int(details.get("cached_tokens"))}
    if _int(details.get("cache_write_tokens")):
        prompt_details["cache_write_tokens"] = _int(details.get("cache_write_tokens"))
    out: dict[str, Any] = {"prompt_tokens": inputs, "completion_tokens": outputs, "total_tokens": inputs + outputs,
                           "prompt_tokens_details": prompt_details}
    reasoning = _int(_dict(usage.get("output_tokens_details")).get("reasoning_tokens"))
    if reasoning:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


def usage_from_anthropic(usage: Any) -> dict[str, Any]:
    """Anthropic usage -> Responses usage (input tokens include cache reads and writes)."""
    return usage_from_chat(anthropic_usage_to_openai(usage))


def error_object(error: ProxyError) -> dict[str, Any]:
    """``response.error`` for a failed response."""
    return {"code": m.KIND_TO_RESPONSES_CODE.get(error.kind, "server_error"), "message": error.message}


# -- Anthropic / Chat -> Responses --------------------------------------------------------


class OutputBuilder:
    """Collects output items in order; consecutive text goes into one ``message`` item."""

    def __init__(self, response_id: str) -> None:
        self.response_id = response_id
        self.items: list[dict[str, Any]] = []

    def _id(self, prefix: str) -> str:
        return item_id(prefix, self.response_id, len(self.items))

    def part(self, part: dict[str, Any]) -> None:
        last = self.items[-1] if self.items else None
        if last is not None and last["type"] == "message":
            last["content"].append(part)
        else:
            self.items.append(message_item(self._id("msg"), [part]))

    def reasoning(self, summary: str, encrypted: str | None = None) -> None:
        self.items.append(reasoning_item(self._id("rs"), summary, encrypted))

    def call(self, call_id: str, name: str, arguments: str) -> None:
        self.items.append(function_call_item(self._id("fc"), call_id, name, arguments))

    def response(self, model: Any, request: dict[str, Any] | None, usage: dict[str, Any], incomplete: str | None,
                 created: int | None) -> dict[str, Any]:
        """The ``response`` with these items: ``incomplete`` (a reason) or ``completed``."""
        return response_object(
            id=self.response_id, created_at=int(time.time()) if created is None else created, model=model,
            status="incomplete" if incomplete else "completed", output=self.items, request=request, usage=usage,
            incomplete=incomplete,
        )


def anthropic_message_to_responses(
    msg: dict[str, Any], *, model: str | None, request: dict[str, Any] | None, created: int | None = None
) -> dict[str, Any]:
    """An Anthropic Message -> a Responses ``response`` (see docs/translation.md)."""
    out = OutputBuilder(responses_id(expect_str(msg.get("id"), "id", default=None, error=_bad)))
    content = msg.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    for i, block in enumerate(expect_list(content, "content", default=(), error=_bad)):
        at = f"content[{i}]"
        block = expect_dict(block, at, error=_bad)
        kind = block.get("type")
        if kind == "text":
            out.part(text_part(expect_str(block.get("text"), at, "text", default="", error=_bad)))
        elif kind == "tool_use":
            arguments = dumps(expect_dict(block.get("input"), at, "input", default={}, error=_bad))
            call_id = expect_str(block.get("id"), at, "id", default=None, error=_bad) or new_tool_id()
            out.call(call_id, expect_str(block.get("name"), at, "name", default="", error=_bad), arguments)
        elif kind == "thinking":
            out.reasoning(expect_str(block.get("thinking"), at, "thinking", default="", error=_bad),
                          expect_str(block.get("signature"), at, "signature", default=None, error=_bad))
        elif kind == "redacted_thinking":
            out.reasoning("", expect_str(block.get("data"), at, "data", default=None, error=_bad))
        # server-tool and unknown blocks have no Responses form here (documented)
    stop = expect_str(msg.get("stop_reason"), "stop_reason", default=None, error=_bad)
    return out.response(model or msg.get("model"), request, usage_from_anthropic(msg.get("usage")),
                        m.STOP_TO_INCOMPLETE.get(stop or ""), created)


def chat_completion_to_responses(
    completion: dict[str, Any], *, model: str | None, request: dict[str, Any] | None, created: int | None = None
) -> dict[str, Any]:
    """A Chat ``chat.completion`` (first choice) -> a Responses ``response``."""
    out = OutputBuilder(responses_id(expect_str(completion.get("id"), "id", default=None, error=_bad)))
    choices = expect_list(completion.get("choices"), "choices", default=(), error=_bad)
    choice = expect_dict(choices[0], "choices[0]", error=_bad) if choices else {}
    message = expect_dict(choice.get("message"), "choices[0].message", default={}, error=_bad)
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        out.reasoning(reasoning)
    text = message.get("content")
    if isinstance(text, list):  # some compatible servers return parts
        text = "".join(str(_dict(p).get("text") or "") for p in text)
    if expect_str(text, "choices[0].message.content", default=None, error=_bad):
        out.part(text_part(text))
    refusal = expect_str(message.get("refusal"), "choices[0].message.refusal", default=None, error=_bad)
    if refusal:
        out.part({"type": "refusal", "refusal": refusal})
    for i, call in enumerate(expect_list(message.get("tool_calls"), "choices[0].message.tool_calls", default=(),
                                         error=_bad)):
        at = f"choices[0].message.tool_calls[{i}]"
        call = expect_dict(call, at, error=_bad)
        fn = expect_dict(call.get("function"), at, "function", default={}, error=_bad)
        arguments = fn.get("arguments")
        arguments = arguments if isinstance(arguments, str) else dumps(arguments or {})
        out.call(expect_str(call.get("id"), at, "id", default=None, error=_bad) or new_tool_id(),
                 expect_str(fn.get("name"), at, "function.name", default="", error=_bad), arguments)
    finish = expect_str(choice.get("finish_reason"), "choices[0].finish_reason", default=None, error=_bad)
    return out.response(model or completion.get("model"), request, usage_from_chat(completion.get("usage")),
                        m.FINISH_TO_INCOMPLETE.get(finish or ""), created)


# -- Responses -> Anthropic / Chat --------------------------------------------------------


def _items(response: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(type, item) for each output item, type-checked."""
    out = []
    for i, item in enumerate(expect_list(response.get("output"), "output", default=(), error=_bad)):
        item = expect_dict(item, f"output[{i}]", error=_bad)
        out.append((item.get("type"), item))
    return out


def _parts(item: dict[str, Any], index: int) -> list[tuple[str, str]]:
    """(part type, text) of a message item's ``output_text`` and ``refusal`` parts."""
    at = f"output[{index}]"
    parts = []
    for j, part in enumerate(expect_list(item.get("content"), at, "content", default=(), error=_bad)):
        part = expect_dict(part, f"{at}.content[{j}]", error=_bad)
        kind = part.get("type")
        if kind in ("output_text", "refusal"):
            key = "text" if kind == "output_text" else "refusal"
            parts.append((kind, expect_str(part.get(key), f"{at}.content[{j}]", key, default="", error=_bad)))
    return parts


def _summary(item: dict[str, Any], index: int) -> str:
    """A reasoning item's text: its summary parts (or reasoning text) joined by blank lines."""
    at = f"output[{index}]"
    texts = []
    for key in ("summary", "content"):
        for j, part in enumerate(expect_list(item.get(key), at, key, default=(), error=_bad)):
            texts.append(expect_str(expect_dict(part, f"{at}.{key}[{j}]", error=_bad).get("text"), at, key,
                                    default="", error=_bad))
        if texts:
            break
    return "\n\n".join(texts)


def _status(response: dict[str, Any]) -> str | None:
    """The Chat ``finish_reason`` a Responses status stands for (None: ``stop``)."""
    details = _dict(response.get("incomplete_details"))
    return m.INCOMPLETE_TO_FINISH.get(details.get("reason") or "") if response.get("status") == "incomplete" else None


def responses_to_anthropic_message(response: dict[str, Any], *, model: str | None) -> dict[str, Any]:
    """A Responses ``response`` -> an Anthropic Message."""
    content: list[dict[str, Any]] = []
    refused = False
    for index, (kind, item) in enumerate(_items(response)):
        if kind == "reasoning":
            text = _summary(item, index)
            if text:
                content.append({"type": "thinking", "thinking": text, "signature": ""})
        elif kind == "message":
            for part_kind, text in _parts(item, index):
                refused = refused or part_kind == "refusal"
                content.append({"type": "text", "text": text})
        elif kind == "function_call":
            at = f"output[{index}]"
            content.append({
                "type": "tool_use",
                "id": expect_str(item.get("call_id"), at, "call_id", default=None, error=_bad) or new_tool_id(),
                "name": expect_str(item.get("name"), at, "name", default="", error=_bad),
                "input": tool_input_from_arguments(item.get("arguments")),
            })
    has_tools = any(block["type"] == "tool_use" for block in content)
    return {
        "id": anthropic_id(expect_str(response.get("id"), "id", default=None, error=_bad)),
        "type": "message",
        "role": "assistant",
        "model": model or response.get("model"),
        "content": content,
        "stop_reason": stop_reason(_status(response), has_tools=has_tools, refused=refused),
        "stop_sequence": None,
        "usage": openai_usage_to_anthropic(usage_to_chat(response.get("usage"))),
    }


def responses_to_chat_completion(
    response: dict[str, Any], *, model: str | None, settings: Settings, created: int | None = None
) -> dict[str, Any]:
    """A Responses ``response`` -> a Chat ``chat.completion`` (one choice)."""
    texts: list[str] = []
    refusals: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, (kind, item) in enumerate(_items(response)):
        if kind == "reasoning":
            thinking.append(_summary(item, index))
        elif kind == "message":
            for part_kind, text in _parts(item, index):
                (texts if part_kind == "output_text" else refusals).append(text)
        elif kind == "function_call":
            at = f"output[{index}]"
            arguments = item.get("arguments")
            calls.append({
                "id": expect_str(item.get("call_id"), at, "call_id", default=None, error=_bad) or new_tool_id(),
                "type": "function",
                "function": {"name": expect_str(item.get("name"), at, "name", default="", error=_bad),
                             "arguments": arguments if isinstance(arguments, str) else dumps(arguments or {})},
            })
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not (calls or refusals) else None,
        "refusal": "".join(refusals) if refusals else None,
    }
    if calls:
        message["tool_calls"] = calls
    if any(thinking) and settings.thinking == "reasoning_content":
        message["reasoning_content"] = "\n\n".join(t for t in thinking if t)
    finish = _status(response) or ("content_filter" if refusals else "tool_calls" if calls else "stop")
    created_at = response.get("created_at")
    return {
        "id": openai_id(expect_str(response.get("id"), "id", default=None, error=_bad)),
        "object": "chat.completion",
        "created": created if created is not None else created_at if isinstance(created_at, int) else int(time.time()),
        "model": model or response.get("model"),
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage_to_chat(response.get("usage")),
    }
