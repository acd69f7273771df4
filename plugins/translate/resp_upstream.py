"""Request bodies to a Responses API upstream, field by field: Anthropic Messages ->
Responses and Chat Completions -> Responses (the other way: :mod:`.resp_requests`).

The rules of :mod:`.requests` hold: a new dict, the input never modified; content the
other dialect cannot carry is a 400 naming it; top-level options with no meaning there are
listed in ``ignored``; every field read is type-checked (docs/translation.md).
"""

from __future__ import annotations

from typing import Any

from ccproxy_core import InvalidRequest

from . import mappings as m
from .base import Settings, dumps
from .check import expect_bool, expect_dict, expect_int, expect_list, expect_number, expect_str, fail
from .requests import _OPENAI_REFUSED, _part, _refuse_if, anthropic_to_openai, copy_fields

__all__ = ["anthropic_to_responses", "openai_to_responses"]

Body = dict[str, Any]
_RESPONSES_API = "the OpenAI Responses API"


# -- Anthropic / Chat -> Responses ----------------------------------------------------------


def _message(role: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": parts}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def _input_part(part: dict[str, Any]) -> dict[str, Any]:
    """A Chat user content part (as :mod:`.requests` makes them) -> a Responses input part."""
    if part["type"] == "text":
        return {"type": "input_text", "text": part["text"]}
    if part["type"] == "image_url":
        image = {"type": "input_image", "image_url": part["image_url"]["url"]}
        if part["image_url"].get("detail") is not None:
            image["detail"] = part["image_url"]["detail"]
        return image
    return {"type": "input_file", **part["file"]}


def _function_tool(fn: dict[str, Any]) -> dict[str, Any]:
    """A Chat function -> a flat Responses function tool; ``strict`` false unless set (the
    Responses API's default is true, which adds schema restrictions)."""
    tool = {"type": "function", "name": fn["name"], "parameters": fn["parameters"], "strict": fn.get("strict", False)}
    if fn.get("description"):
        tool["description"] = fn["description"]
    return tool


def _flat_choice(choice: Any) -> Any:
    return {"type": "function", "name": choice["function"]["name"]} if isinstance(choice, dict) else choice


def anthropic_to_responses(
    body: Body, *, model: str | None, settings: Settings, ignored: list[str], stream: bool | None = None,
    stream_usage: bool = True,
) -> Body:
    """An Anthropic Messages request -> a Responses request (``store: false``; see docs/translation.md).

    Content goes through the Anthropic -> Chat converter's checks, then into items:
    a user message's tool results become ``function_call_output`` items (in place), an
    assistant's ``tool_use`` blocks ``function_call`` items between its text.
    """
    chat = anthropic_to_openai(body, model=model, settings=settings, ignored=ignored, stream=stream,
                               stream_usage=False)
    if body.get("stop_sequences"):
        ignored.append("stop_sequences")
    out = _chat_messages_to_items(chat, body)
    return _chat_options_to_responses(chat, out, settings, effort_summary=True)


def openai_to_responses(
    body: Body, *, model: str | None, settings: Settings, ignored: list[str], stream: bool | None = None,
    stream_usage: bool = True,
) -> Body:
    """A Chat Completions request -> a Responses request."""
    for key, label in _OPENAI_REFUSED:
        _refuse_if(body.get(key), label, _RESPONSES_API)
    _refuse_if(expect_int(body.get("n"), "n", default=1) != 1, "n > 1", _RESPONSES_API)
    carried = {"model", "messages", "tools", "tool_choice", "parallel_tool_calls", "max_tokens",
               "max_completion_tokens", "temperature", "top_p", "user", "safety_identifier", "reasoning_effort",
               "stream", "stream_options", "response_format", "prompt_cache_key", "service_tier", "store", "metadata",
               "verbosity", "n", *(key for key, _ in _OPENAI_REFUSED)}
    ignored.extend(key for key in body if key not in carried)
    chat = {"messages": expect_list(body.get("messages"), "messages", nonempty=True)}
    _check_chat_messages(chat["messages"])
    out: Body = {"model": model or body.get("model")}
    out.update(_chat_messages_to_items(chat, None))
    copy_fields(out, body, ("temperature", "top_p"), expect_number)
    copy_fields(out, body, ("user", "safety_identifier", "prompt_cache_key", "service_tier"), expect_str)
    if expect_dict(body.get("metadata"), "metadata", default=None):
        out["metadata"] = body["metadata"]
    out["store"] = expect_bool(body.get("store"), "store", default=False)
    limit = expect_int(body.get("max_completion_tokens"), "max_completion_tokens", default=None)
    limit = limit if limit is not None else expect_int(body.get("max_tokens"), "max_tokens", default=None)
    if limit is not None:
        out["max_output_tokens"] = limit
    effort = expect_str(body.get("reasoning_effort"), "reasoning_effort", default=None)
    if effort is not None:
        out["reasoning"] = {"effort": effort}
    text: dict[str, Any] = {}
    fmt = expect_dict(body.get("response_format"), "response_format", default=None)
    if fmt is not None:
        kind = expect_str(fmt.get("type"), "response_format.type")
        if kind == "json_schema":
            spec = expect_dict(fmt.get("json_schema"), "response_format.json_schema")
            text["format"] = {"type": "json_schema", "name": expect_str(spec.get("name"), "response_format.json_schema",
                                                                        "name", default="output"),
                              "schema": expect_dict(spec.get("schema"), "response_format.json_schema.schema")}
            for key in ("description", "strict"):
                if spec.get(key) is not None:
                    text["format"][key] = spec[key]
        elif kind == "json_object":
            text["format"] = {"type": "json_object"}
        elif kind != "text":
            raise InvalidRequest(f"response_format type {kind!r} cannot be translated")
    if expect_str(body.get("verbosity"), "verbosity", default=None):
        text["verbosity"] = body["verbosity"]
    if text:
        out["text"] = text
    tools = expect_list(body.get("tools"), "tools", default=None)
    if tools:
        converted = []
        for i, tool in enumerate(tools):
            tool, kind = _part(tool, f"tools[{i}]")
            if kind != "function":
                raise InvalidRequest(f"tools[{i}]: tool type {kind!r} cannot be translated (function tools only)")
            fn = expect_dict(tool.get("function"), f"tools[{i}]", "function")
            expect_str(fn.get("name"), f"tools[{i}]", "function.name", nonempty=True)
            converted.append(_function_tool({**fn, "parameters": expect_dict(
                fn.get("parameters"), f"tools[{i}]", "function.parameters", default=None) or
                {"type": "object", "properties": {}}}))
        out["tools"] = converted
    choice = body.get("tool_choice")
    if choice is not None:
        if isinstance(choice, dict):
            _, kind = _part(choice, "tool_choice")
            if kind != "function":
                raise InvalidRequest(f"tool_choice type {kind!r} cannot be translated")
            expect_str(expect_dict(choice.get("function"), "tool_choice.function").get("name"),
                       "tool_choice.function.name", nonempty=True)
        elif not isinstance(choice, str):
            fail("tool_choice", "a string or an object", choice)
        elif choice not in m.OPENAI_TOOL_CHOICE:
            raise InvalidRequest(f"tool_choice {choice!r} is not one of none, auto, required")
        out["tool_choice"] = _flat_choice(choice)
    parallel = expect_bool(body.get("parallel_tool_calls"), "parallel_tool_calls", default=None)
    if parallel is not None:
        out["parallel_tool_calls"] = parallel
    options = expect_dict(body.get("stream_options"), "stream_options", default={})
    expect_bool(options.get("include_usage"), "stream_options.include_usage", default=None)
    if body.get("stream") if stream is None else stream:
        out["stream"] = True
    return out


def _check_chat_messages(messages: list[Any]) -> None:
    """The checks of the Chat -> Anthropic converter, without its output (one set of rules)."""
    from .requests import _openai_messages

    _openai_messages(messages)


def _chat_messages_to_items(chat: Body, anthropic: Body | None) -> Body:
    """Chat ``messages`` -> Responses ``instructions`` and ``input`` items.

    ``anthropic``: the Anthropic request ``chat`` was made from, whose assistant messages keep
    the order of text and tool calls (Chat joins the text ahead of the calls)."""
    items: list[dict[str, Any]] = []
    instructions = None
    assistants = iter(m_ for m_ in (anthropic or {}).get("messages") or () if isinstance(m_, dict)
                      and m_.get("role") == "assistant")
    for i, msg in enumerate(chat["messages"]):
        role, content = msg["role"], msg.get("content")
        if role in ("system", "developer"):
            text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content or ())
            if i == 0 and anthropic is not None and isinstance(anthropic.get("system"), str):
                instructions = text
            else:
                items.append(_message(role, [{"type": "input_text", "text": text}]))
        elif role == "user":
            if isinstance(content, str):
                items.append({"type": "message", "role": "user", "content": content})
            else:
                items.append(_message("user", [_input_part(p) for p in content]))
        elif role == "tool":
            output = content if isinstance(content, str) else "".join(p.get("text", "") for p in content or ())
            items.append({"type": "function_call_output", "call_id": msg["tool_call_id"], "output": output})
        elif role == "assistant":
            source = next(assistants, None) if anthropic is not None else None
            if source is not None and isinstance(source.get("content"), list):
                for block in source["content"]:
                    if block.get("type") == "text" and block.get("text"):
                        items.append(_message("assistant", [_output_text(block["text"])]))
                    elif block.get("type") == "tool_use":
                        items.append({"type": "function_call", "call_id": block["id"], "name": block["name"],
                                      "arguments": dumps(block.get("input") or {})})
                continue
            text = content if isinstance(content, str) else "".join(
                p.get("text") or "" for p in content or () if isinstance(p, dict))
            if text:
                items.append(_message("assistant", [_output_text(text)]))
            if msg.get("refusal"):
                items.append(_message("assistant", [{"type": "refusal", "refusal": msg["refusal"]}]))
            for call in msg.get("tool_calls") or ():
                fn = call["function"]
                items.append({"type": "function_call", "call_id": call["id"], "name": fn["name"],
                              "arguments": fn.get("arguments") or "{}"})
    out: Body = {}
    if instructions:
        out["instructions"] = instructions
    out["input"] = items
    return out


def _chat_options_to_responses(chat: Body, out: Body, settings: Settings, *, effort_summary: bool) -> Body:
    """The options of a Chat request made by :mod:`.requests` -> Responses options (``store: false``)."""
    result: Body = {"model": chat["model"], **out, "store": False}
    limit = chat.get("max_completion_tokens", chat.get("max_tokens"))
    if limit is not None:
        result["max_output_tokens"] = limit
    for key in ("temperature", "top_p", "user"):
        if key in chat:
            result[key] = chat[key]
    if "reasoning_effort" in chat:
        result["reasoning"] = {"effort": chat["reasoning_effort"], **({"summary": "auto"} if effort_summary else {})}
    if "response_format" in chat:
        spec = chat["response_format"]["json_schema"]
        result["text"] = {"format": {"type": "json_schema", "name": spec["name"], "schema": spec["schema"],
                                     "strict": False}}
    if "tools" in chat:
        result["tools"] = [_function_tool(tool["function"]) for tool in chat["tools"]]
        if "tool_choice" in chat:
            result["tool_choice"] = _flat_choice(chat["tool_choice"])
        if "parallel_tool_calls" in chat:
            result["parallel_tool_calls"] = chat["parallel_tool_calls"]
    if chat.get("stream"):
        result["stream"] = True
    return result
