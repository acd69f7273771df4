"""Request bodies from a Responses API client, field by field: Responses -> Anthropic
Messages and Responses -> Chat Completions (the other way: :mod:`.resp_upstream`).

The rules of :mod:`.requests` hold: a new dict, the input never modified; content the
other dialect cannot carry is a 400 naming it; top-level options with no meaning there are
listed in ``ignored``; every field read is type-checked (docs/translation.md).
"""

from __future__ import annotations

from typing import Any

from ccproxy_core import InvalidRequest

from . import mappings as m
from .base import Settings
from .check import expect_bool, expect_dict, expect_int, expect_list, expect_number, expect_str
from .requests import (
    _items,
    _part,
    _refuse_if,
    _tool_id,
    _tool_input,
    copy_fields,
    max_tokens_and_thinking,
    parse_data_url,
)

__all__ = ["responses_to_anthropic", "responses_to_openai"]

Body = dict[str, Any]
#: Responses fields no translation can carry: server-side state and templates (400).
_RESPONSES_REFUSED = ("previous_response_id", "conversation", "prompt", "background")
#: Responses fields read by both converters from a Responses client.
_RESPONSES_HANDLED = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "max_output_tokens", "reasoning",
    "text", "temperature", "top_p", "stream", "user", "safety_identifier", *_RESPONSES_REFUSED,
})


# -- reading a Responses request ------------------------------------------------------------


def _refuse_state(body: Body, api: str) -> None:
    for key in _RESPONSES_REFUSED:
        _refuse_if(body.get(key), f"{key} (server-side state; send the whole input)", api)


def _input(body: Body) -> list[tuple[str, dict[str, Any], str]]:
    """(type, item, path) of each input item; a string input is one user message."""
    value = body.get("input")
    if isinstance(value, str):
        return [("message", {"role": "user", "content": value}, "input")]
    out = []
    for i, item in enumerate(expect_list(value, "input", nonempty=True)):
        at = f"input[{i}]"
        item = expect_dict(item, at)
        kind = expect_str(item.get("type"), at, "type", default="message")
        out.append((kind, item, at))
    return out


def _content_parts(content: Any, where: str) -> list[tuple[str, dict[str, Any], str]]:
    """(type, part, path) of message content; a string is one ``input_text`` part."""
    if isinstance(content, str):
        return [("input_text", {"text": content}, where)]
    out = []
    for i, item in enumerate(_items(content, where, "content parts")):
        part, kind = _part(item, f"{where}[{i}]")
        out.append((kind, part, f"{where}[{i}]"))
    return out


def _text_of(kind: str, part: dict[str, Any], where: str) -> str | None:
    """The text of a text-like part (``input_text``, ``output_text``, ``text``); None for other parts."""
    if kind in ("input_text", "output_text", "text", "summary_text"):
        return expect_str(part.get("text"), where, "text")
    return None


def _plain_text(content: Any, where: str) -> str:
    """System, developer and assistant content: text parts only, joined."""
    texts = []
    for kind, part, at in _content_parts(content, where):
        text = _text_of(kind, part, at)
        if text is None:
            if kind == "refusal":
                text = expect_str(part.get("refusal"), at, "refusal")
            else:
                raise InvalidRequest(f"{at}: content part {kind!r} is not allowed here")
        texts.append(text)
    return "".join(texts)


def _image_url(part: dict[str, Any], where: str) -> str:
    if part.get("file_id") is not None:
        raise InvalidRequest(f"{where}.file_id: file ids cannot be translated; send image_url")
    return expect_str(part.get("image_url"), where, "image_url", nonempty=True)


#: Hosted tools a translated upstream cannot run, dropped (and listed as ignored) rather than refused: the
#: Codex CLI offers ``web_search`` on every request, so refusing it would refuse every Codex turn.
_DROPPED_TOOLS = frozenset({"web_search", "web_search_preview"})


def _function_tools(tools: list[Any], ignored: list[str], where: str = "tools") -> list[tuple[dict[str, Any], str]]:
    """(tool, path) of each function tool, those of a ``namespace`` tool included (flattened: a call
    comes back by the function's own name); :data:`_DROPPED_TOOLS` are dropped; other types are a 400."""
    out = []
    for i, tool in enumerate(tools):
        at = f"{where}[{i}]"
        tool, kind = _part(tool, at)
        if kind == "namespace":
            out.extend(_function_tools(expect_list(tool.get("tools"), at, "tools"), ignored, f"{at}.tools"))
            continue
        if kind in _DROPPED_TOOLS:
            ignored.append(f"{at} ({kind})")
            continue
        if kind != "function":
            raise InvalidRequest(f"{at}: tool type {kind!r} cannot be translated (function tools only)")
        expect_str(tool.get("name"), at, "name", nonempty=True)
        out.append((tool, at))
    return out


def _responses_tool_choice(choice: Any) -> Any:
    """Responses ``tool_choice`` -> Chat ``tool_choice`` (``auto``/``none``/``required`` or a function)."""
    if choice is None or isinstance(choice, str):
        if choice is not None and choice not in m.OPENAI_TOOL_CHOICE:
            raise InvalidRequest(f"tool_choice {choice!r} is not one of none, auto, required")
        return choice
    choice, kind = _part(choice, "tool_choice")
    if kind != "function":
        raise InvalidRequest(f"tool_choice type {kind!r} cannot be translated")
    return {"type": "function", "function": {"name": expect_str(choice.get("name"), "tool_choice.name",
                                                                   nonempty=True)}}


def _options(body: Body) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(``reasoning``, ``text.format`` or {}, ``reasoning.effort``) of a Responses request."""
    reasoning = expect_dict(body.get("reasoning"), "reasoning", default={})
    effort = expect_str(reasoning.get("effort"), "reasoning.effort", default=None)
    if effort is not None and effort not in m.EFFORT_TO_BUDGET:
        raise InvalidRequest(f"reasoning.effort {effort!r} is not one of {', '.join(m.EFFORT_TO_BUDGET)}")
    text = expect_dict(body.get("text"), "text", default={})
    fmt = expect_dict(text.get("format"), "text.format", default={})
    return reasoning, fmt, effort


def _user_id(body: Body) -> str | None:
    user = expect_str(body.get("user"), "user", default=None)
    return user or expect_str(body.get("safety_identifier"), "safety_identifier", default=None)


# -- Responses -> Anthropic -----------------------------------------------------------------


def _anthropic_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Responses user content -> Anthropic blocks."""
    blocks: list[dict[str, Any]] = []
    for kind, part, at in _content_parts(content, where):
        text = _text_of(kind, part, at)
        if text is not None:
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "input_image":
            url = _image_url(part, at)
            parsed = parse_data_url(url)
            source = {"type": "base64", "media_type": parsed[0], "data": parsed[1]} if parsed else {"type": "url",
                                                                                                     "url": url}
            blocks.append({"type": "image", "source": source})
        elif kind == "input_file":
            data = expect_str(part.get("file_data"), at, "file_data", default=None)
            parsed = parse_data_url(data) if data else None
            if parsed is None or parsed[0] != "application/pdf":
                raise InvalidRequest(f"{at}: only a base64 PDF data URL in file_data can be translated")
            block = {"type": "document", "source": {"type": "base64", "media_type": parsed[0], "data": parsed[1]}}
            if part.get("filename"):
                block["title"] = expect_str(part.get("filename"), at, "filename")
            blocks.append(block)
        else:
            raise InvalidRequest(f"{at}: content part type {kind!r} cannot be translated")
    return blocks


def _add(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Append ``blocks`` to the last message when it has ``role``, else as a new message."""
    if messages and messages[-1]["role"] == role and role != "system":
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _unsigned_tool_turn(messages: list[dict[str, Any]]) -> bool:
    """The last assistant message has tool calls but does not start with signed thinking."""
    for message in reversed(messages):
        if message["role"] == "assistant":
            content = message["content"]
            has_tools = any(b.get("type") == "tool_use" for b in content)
            return has_tools and content[0].get("type") not in ("thinking", "redacted_thinking")
    return False


def responses_to_anthropic(
    body: Body, *, model: str | None, settings: Settings, ignored: list[str], stream: bool | None = None,
    stream_usage: bool = True,
) -> Body:
    """A Responses request -> an Anthropic Messages request (``stream`` as in :mod:`.requests`)."""
    _refuse_state(body, "the Anthropic Messages API")
    ignored.extend(key for key in body if key not in _RESPONSES_HANDLED)
    system: list[dict[str, Any]] = []
    instructions = expect_str(body.get("instructions"), "instructions", default=None)
    if instructions:
        system.append({"type": "text", "text": instructions})
    messages: list[dict[str, Any]] = []
    for kind, item, at in _input(body):
        if kind == "message":
            role = expect_str(item.get("role"), at, "role")
            if role in ("system", "developer"):
                text = _plain_text(item.get("content"), f"{at}.content")
                blocks = [{"type": "text", "text": text}] if text else []
                if messages:
                    messages.append({"role": "system", "content": blocks})
                else:
                    system.extend(blocks)
            elif role == "user":
                _add(messages, "user", _anthropic_blocks(item.get("content"), f"{at}.content"))
            elif role == "assistant":
                text = _plain_text(item.get("content"), f"{at}.content")
                _add(messages, "assistant", [{"type": "text", "text": text}] if text else [])
            else:
                raise InvalidRequest(f"{at}.role: {role!r} is not a message role")
        elif kind == "function_call":
            block = {"type": "tool_use", "id": _tool_id(item.get("call_id"), f"{at}.call_id"),
                     "name": expect_str(item.get("name"), at, "name", nonempty=True),
                     "input": _tool_input(item.get("arguments"), f"{at}.arguments")}
            _add(messages, "assistant", [block])
        elif kind == "function_call_output":
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": _tool_id(item.get("call_id"),
                                                                                      f"{at}.call_id")}
            output = item.get("output")
            result["content"] = output if isinstance(output, str) else _anthropic_blocks(output, f"{at}.output")
            _add(messages, "user", [result])
        elif kind == "reasoning":
            encrypted = expect_str(item.get("encrypted_content"), at, "encrypted_content", default=None)
            summary = "\n\n".join(expect_str(expect_dict(p, f"{at}.summary").get("text"), f"{at}.summary", "text")
                                  for p in expect_list(item.get("summary"), at, "summary", default=()))
            if encrypted and summary:  # a thinking block this gateway gave out, signature and all
                _add(messages, "assistant", [{"type": "thinking", "thinking": summary, "signature": encrypted}])
            elif encrypted:
                _add(messages, "assistant", [{"type": "redacted_thinking", "data": encrypted}])
            # without encrypted_content: unsigned reasoning Anthropic does not take back (documented)
        else:
            raise InvalidRequest(f"{at}: input item type {kind!r} cannot be translated")
    if isinstance(body.get("input"), str):
        messages[0]["content"] = body["input"]

    out: Body = {"model": model or body.get("model")}
    explicit = expect_int(body.get("max_output_tokens"), "max_output_tokens", default=None)
    reasoning, fmt, effort = _options(body)
    max_tokens_and_thinking(out, explicit, effort, _unsigned_tool_turn(messages), "reasoning", settings, ignored)
    if system:
        out["system"] = system
    out["messages"] = messages
    temperature = expect_number(body.get("temperature"), "temperature", default=None)
    if temperature is not None:
        out["temperature"] = min(temperature, 1.0)
    top_p = expect_number(body.get("top_p"), "top_p", default=None)
    if top_p is not None:
        out["top_p"] = top_p
    user = _user_id(body)
    if user:
        out["metadata"] = {"user_id": user}
    tools = expect_list(body.get("tools"), "tools", default=None)
    choice = _responses_tool_choice(body.get("tool_choice"))
    parallel = expect_bool(body.get("parallel_tool_calls"), "parallel_tool_calls", default=None)
    if tools:
        converted = []
        for tool, at in _function_tools(tools, ignored):
            entry: dict[str, Any] = {"name": tool["name"], "input_schema": expect_dict(
                tool.get("parameters"), at, "parameters", default=None) or {"type": "object", "properties": {}}}
            if expect_str(tool.get("description"), at, "description", default=None):
                entry["description"] = tool["description"]
            if expect_bool(tool.get("strict"), at, "strict", default=None) is not None:
                entry["strict"] = tool["strict"]
            converted.append(entry)
        out["tools"] = converted
        anthropic_choice: dict[str, Any] | None = None
        if isinstance(choice, dict):
            anthropic_choice = {"type": "tool", "name": choice["function"]["name"]}
        elif choice is not None:
            anthropic_choice = {"type": m.OPENAI_TOOL_CHOICE[choice]}
        if parallel is False and (anthropic_choice is None or anthropic_choice["type"] != "none"):
            anthropic_choice = {**(anthropic_choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if anthropic_choice:
            out["tool_choice"] = anthropic_choice
    elif choice not in (None, "none", "auto"):
        raise InvalidRequest("tool_choice needs tools")
    kind = expect_str(fmt.get("type"), "text.format.type", default="text")
    if kind == "json_schema":
        out["output_config"] = {"format": {"type": "json_schema",
                                           "schema": expect_dict(fmt.get("schema"), "text.format.schema")}}
    elif kind != "text":
        raise InvalidRequest(f"text.format type {kind!r} cannot be translated to the Anthropic Messages API")
    if body.get("stream") if stream is None else stream:
        out["stream"] = True
    return out


# -- Responses -> Chat ----------------------------------------------------------------------


def _chat_user_content(content: Any, where: str) -> Any:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for kind, part, at in _content_parts(content, where):
        text = _text_of(kind, part, at)
        if text is not None:
            parts.append({"type": "text", "text": text})
        elif kind == "input_image":
            image = {"url": _image_url(part, at)}
            if part.get("detail") is not None:
                image["detail"] = expect_str(part.get("detail"), at, "detail")
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            file = {k: expect_str(part.get(k), at, k) for k in ("file_data", "file_id", "filename")
                    if part.get(k) is not None}
            if "file_data" not in file and "file_id" not in file:
                raise InvalidRequest(f"{at}: only file_data or file_id can be translated")
            parts.append({"type": "file", "file": file})
        else:
            raise InvalidRequest(f"{at}: content part type {kind!r} cannot be translated")
    return parts


def responses_to_openai(
    body: Body, *, model: str | None, settings: Settings, ignored: list[str], stream: bool | None = None,
    stream_usage: bool = True,
) -> Body:
    """A Responses request -> a Chat Completions request (a streamed one asks for the usage
    chunk unless ``stream_usage`` is False: Responses clients need usage)."""
    _refuse_state(body, "the OpenAI Chat Completions API")
    carried = ("prompt_cache_key", "service_tier", "store", "metadata")
    ignored.extend(key for key in body if key not in _RESPONSES_HANDLED and key not in carried)
    messages: list[dict[str, Any]] = []
    instructions = expect_str(body.get("instructions"), "instructions", default=None)
    if instructions:
        messages.append({"role": "system", "content": instructions})
    pending: list[dict[str, Any]] = []  # images from tool outputs, for the user message after them
    for kind, item, at in _input(body):
        if pending and kind != "function_call_output":
            messages.append({"role": "user", "content": pending})
            pending = []
        if kind == "message":
            role = expect_str(item.get("role"), at, "role")
            if role in ("system", "developer"):
                messages.append({"role": role, "content": _plain_text(item.get("content"), f"{at}.content")})
            elif role == "user":
                messages.append({"role": "user", "content": _chat_user_content(item.get("content"), f"{at}.content")})
            elif role == "assistant":
                messages.append({"role": "assistant", "content": _plain_text(item.get("content"), f"{at}.content")})
            else:
                raise InvalidRequest(f"{at}.role: {role!r} is not a message role")
        elif kind == "function_call":
            call = {"id": expect_str(item.get("call_id"), at, "call_id", nonempty=True), "type": "function",
                    "function": {"name": expect_str(item.get("name"), at, "name", nonempty=True),
                                 "arguments": expect_str(item.get("arguments"), at, "arguments", default="")}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                last["content"] = last["content"] or None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = expect_str(item.get("call_id"), at, "call_id", nonempty=True)
            output = item.get("output")
            if not isinstance(output, str):
                parts = _chat_user_content(output, f"{at}.output")
                pending.extend(p for p in parts if p["type"] != "text")
                output = "".join(p["text"] for p in parts if p["type"] == "text")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "reasoning":
            continue  # Chat Completions takes no reasoning input (documented)
        else:
            raise InvalidRequest(f"{at}: input item type {kind!r} cannot be translated")
    if pending:
        messages.append({"role": "user", "content": pending})

    out: Body = {"model": model or body.get("model"), "messages": messages}
    max_tokens = expect_int(body.get("max_output_tokens"), "max_output_tokens", default=None)
    if max_tokens is not None:
        out[settings.max_tokens_field] = max_tokens
    copy_fields(out, body, ("temperature", "top_p"), expect_number)
    copy_fields(out, body, ("user", "safety_identifier", "prompt_cache_key", "service_tier"), expect_str)
    copy_fields(out, body, ("store",), expect_bool)
    if expect_dict(body.get("metadata"), "metadata", default=None):
        out["metadata"] = body["metadata"]
    reasoning, fmt, effort = _options(body)
    if effort is not None:
        if settings.reasoning_effort:
            out["reasoning_effort"] = effort
        else:
            ignored.append("reasoning")
    text = expect_dict(body.get("text"), "text", default={})
    if expect_str(text.get("verbosity"), "text.verbosity", default=None):
        out["verbosity"] = text["verbosity"]
    kind = expect_str(fmt.get("type"), "text.format.type", default="text")
    if kind == "json_schema":
        spec = {"name": expect_str(fmt.get("name"), "text.format.name", default="output"),
                "schema": expect_dict(fmt.get("schema"), "text.format.schema")}
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                spec[key] = fmt[key]
        out["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif kind == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif kind != "text":
        raise InvalidRequest(f"text.format type {kind!r} cannot be translated")
    tools = expect_list(body.get("tools"), "tools", default=None)
    choice = _responses_tool_choice(body.get("tool_choice"))
    if tools:
        converted = []
        for tool, at in _function_tools(tools, ignored):
            fn = {key: tool[key] for key in ("name", "description", "parameters", "strict") if tool.get(key) is not None}
            converted.append({"type": "function", "function": fn})
        out["tools"] = converted
        if choice is not None:
            out["tool_choice"] = choice
    elif choice not in (None, "none", "auto"):
        raise InvalidRequest("tool_choice needs tools")
    parallel = expect_bool(body.get("parallel_tool_calls"), "parallel_tool_calls", default=None)
    if parallel is not None and tools:
        out["parallel_tool_calls"] = parallel
    if body.get("stream") if stream is None else stream:
        out["stream"] = True
        if stream_usage:
            out["stream_options"] = {"include_usage": True}
    return out
