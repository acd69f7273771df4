"""Request bodies: OpenAI Chat Completions <-> Anthropic Messages.

Both converters return a new dict and never modify their input. Message content is
never dropped without a documented reason: a part or block that the other dialect
cannot carry raises :class:`InvalidRequest` naming it. Top-level options the other
dialect has no use for are listed in ``ignored`` (see docs/translation.md).

Every field is read through the :mod:`.check` helpers, so a field of the wrong JSON
type is a 400 naming its path (``messages[2].content[0].image_url: expected an
object, got a string``), never a crash.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from ccproxy_core import InvalidRequest

from . import mappings as m
from .caching import cache_key, without_billing_header
from .base import Settings, dumps, loads
from .check import expect_bool, expect_dict, expect_int, expect_list, expect_number, expect_str, fail

__all__ = ["openai_to_anthropic", "anthropic_to_openai", "parse_data_url"]

Body = dict[str, Any]

# -- OpenAI -> Anthropic --------------------------------------------------------

#: Top-level OpenAI fields handled by :func:`openai_to_anthropic` itself.
_OPENAI_HANDLED = frozenset(
    {
        "model",
        "messages",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "user",
        "safety_identifier",
        "reasoning_effort",
        "stream",
        "stream_options",
        "response_format",
        "n",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "audio",
        "modalities",
        "web_search_options",
        "functions",
        "function_call",
    }
)

#: OpenAI fields refused (400) when set: (field, what the message calls it).
_OPENAI_REFUSED = (
    ("logprobs", "logprobs"),
    ("top_logprobs", "top_logprobs"),
    ("logit_bias", "logit_bias"),
    ("audio", "audio output"),
    ("functions", "functions (legacy; use tools)"),
    ("function_call", "function_call (legacy; use tools)"),
)

_TOOL_ID_BAD = re.compile(r"[^a-zA-Z0-9_-]")


def _tool_id(value: Any, where: str) -> str:
    """An OpenAI tool-call id made acceptable to Anthropic (``^[a-zA-Z0-9_-]+$``).

    Other characters become ``_``; the same rewrite applies to ``tool_calls[].id``
    and ``tool_call_id`` so pairs keep matching.
    """
    return _TOOL_ID_BAD.sub("_", expect_str(value, where, nonempty=True))


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:<media type>;base64,<data>`` -> (media type, data); None for other URLs."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    media_type = head[: -len(";base64")].split(";", 1)[0]
    return media_type or "application/octet-stream", data


_ANTHROPIC_API = "the Anthropic Messages API"
_OPENAI_API = "the OpenAI Chat Completions API"


def _refuse_if(cond: Any, what: str, api: str) -> None:
    """Raise the 400 for a field that ``api`` cannot express, when ``cond`` is truthy."""
    if cond:
        raise InvalidRequest(f"{what} cannot be translated to {api}")


def _items(content: Any, where: str, what: str) -> list[Any]:
    """Content that is not a string: it must be an array (of ``what``)."""
    if not isinstance(content, list):
        fail(where, f"a string or an array of {what}", content)
    return content


def _part(part: Any, where: str) -> tuple[dict[str, Any], str]:
    """A content part or block: (the object, its ``type``)."""
    part = expect_dict(part, where)
    return part, expect_str(part.get("type"), where, "type")


def _text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI system/developer/tool/assistant content (a string or text parts) -> Anthropic text blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for i, item in enumerate(_items(content, where, "content parts")):
        at = f"{where}[{i}]"
        part, kind = _part(item, at)
        if kind not in ("text", "refusal"):
            raise InvalidRequest(f"{at}: content part {kind!r} is not allowed here")
        text = expect_str(part.get(kind), at, kind)  # the "text" or "refusal" field
        if text:
            blocks.append(_with_cache_control({"type": "text", "text": text}, part, at))
    return blocks


def _with_cache_control(block: dict[str, Any], part: dict[str, Any], where: str) -> dict[str, Any]:
    """Carry a ``cache_control`` marker some OpenAI clients put on parts (OpenRouter style)."""
    marker = expect_dict(part.get("cache_control"), where, "cache_control", default=None)
    if marker:
        block["cache_control"] = marker
    return block


def _image_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    image = expect_dict(part.get("image_url"), where, "image_url")
    url = expect_str(image.get("url"), where, "image_url.url", nonempty=True)
    parsed = parse_data_url(url)
    if parsed is not None:
        source = {"type": "base64", "media_type": parsed[0], "data": parsed[1]}
    elif url.startswith("data:"):
        raise InvalidRequest(f"{where}.image_url.url: only base64 data URLs can be translated")
    else:
        source = {"type": "url", "url": url}
    return _with_cache_control({"type": "image", "source": source}, part, where)


def _file_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    file = expect_dict(part.get("file"), where, "file")
    data_url = expect_str(file.get("file_data"), where, "file.file_data", default=None)
    parsed = parse_data_url(data_url) if data_url is not None else None
    if parsed is None:
        raise InvalidRequest(f"{where}.file: only inline file_data (a base64 data URL) can be translated, not file_id")
    media_type, data = parsed
    if media_type == "application/pdf":
        source: dict[str, Any] = {"type": "base64", "media_type": media_type, "data": data}
    elif media_type == "text/plain":
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except ValueError as exc:  # binascii.Error, non-ASCII input, UnicodeDecodeError
            raise InvalidRequest(f"{where}.file.file_data is not base64 UTF-8 text") from exc
        source = {"type": "text", "media_type": "text/plain", "data": text}
    else:
        raise InvalidRequest(f"{where}.file: media type {media_type!r} cannot be translated (PDF and text only)")
    block: dict[str, Any] = {"type": "document", "source": source}
    filename = expect_str(file.get("filename"), where, "file.filename", default=None)
    if filename:
        block["title"] = filename
    return _with_cache_control(block, part, where)


def _user_content(content: Any, where: str) -> str | list[dict[str, Any]]:
    """OpenAI user content -> Anthropic user content (a string stays a string)."""
    if isinstance(content, str):
        return content
    blocks: list[dict[str, Any]] = []
    for i, item in enumerate(_items(content, where, "content parts")):
        at = f"{where}[{i}]"
        part, kind = _part(item, at)
        if kind == "text":
            text = expect_str(part.get("text"), at, "text")
            if text:
                blocks.append(_with_cache_control({"type": "text", "text": text}, part, at))
        elif kind == "image_url":
            blocks.append(_image_block(part, at))
        elif kind == "file":
            blocks.append(_file_block(part, at))
        elif kind == "input_audio":
            raise InvalidRequest(f"{at}: audio input cannot be translated to {_ANTHROPIC_API}")
        else:
            raise InvalidRequest(f"{at}: content part type {kind!r} cannot be translated")
    return blocks


def _tool_input(arguments: Any, where: str) -> dict[str, Any]:
    """OpenAI ``function.arguments`` (a JSON string) -> Anthropic ``input`` (an object)."""
    if arguments is None or not expect_str(arguments, where).strip():
        return {}
    try:
        value = loads(arguments)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"{where}: not valid JSON") from exc
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}: must encode a JSON object")
    return value


def _assistant_blocks(msg: dict[str, Any], where: str) -> list[dict[str, Any]]:
    _refuse_if(msg.get("function_call"), f"{where}.function_call (legacy functions; use tool_calls)", _ANTHROPIC_API)
    _refuse_if(msg.get("audio"), f"{where}.audio", _ANTHROPIC_API)
    content = msg.get("content")
    blocks = _text_blocks(content, f"{where}.content") if content is not None else []
    refusal = expect_str(msg.get("refusal"), where, "refusal", default=None)
    if refusal:
        blocks.append({"type": "text", "text": refusal})
    for j, call in enumerate(expect_list(msg.get("tool_calls"), where, "tool_calls", default=())):
        at = f"{where}.tool_calls[{j}]"
        call = expect_dict(call, at)
        kind = expect_str(call.get("type"), at, "type", default="function")
        if kind != "function":
            raise InvalidRequest(f"{at}: tool call type {kind!r} cannot be translated")
        fn = expect_dict(call.get("function"), at, "function")
        blocks.append(
            {
                "type": "tool_use",
                "id": _tool_id(call.get("id"), f"{at}.id"),
                "name": expect_str(fn.get("name"), at, "function.name", nonempty=True),
                "input": _tool_input(fn.get("arguments"), f"{at}.function.arguments"),
            }
        )
    return blocks


def _openai_messages(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI ``messages`` -> (Anthropic ``system`` blocks, Anthropic ``messages``).

    System/developer messages before the first other message become the top-level
    ``system``; later ones stay in place as Anthropic ``role: system`` messages.
    Consecutive ``tool`` messages and a user message right after them form one
    Anthropic user message, tool results first.
    """
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    open_results = False  # out[-1] is a user message made of tool results
    for i, msg in enumerate(expect_list(messages, "messages", nonempty=True)):
        where = f"messages[{i}]"
        msg = expect_dict(msg, where)
        role = expect_str(msg.get("role"), where, "role")
        if role in ("system", "developer"):
            blocks = _text_blocks(msg.get("content"), f"{where}.content")
            if out:
                out.append({"role": "system", "content": blocks})
            else:
                system.extend(blocks)
            open_results = False
        elif role == "user":
            content = _user_content(msg.get("content"), f"{where}.content")
            if open_results:
                if isinstance(content, str):
                    content = [{"type": "text", "text": content}] if content else []
                out[-1]["content"].extend(content)
            else:
                out.append({"role": "user", "content": content})
            open_results = False
        elif role == "assistant":
            blocks = _assistant_blocks(msg, where)
            out.append({"role": "assistant", "content": blocks or ""})
            open_results = False
        elif role == "tool":
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": _tool_id(msg.get("tool_call_id"), f"{where}.tool_call_id"),
            }
            content = msg.get("content")
            if isinstance(content, str):
                result["content"] = content
            elif content is not None:
                result["content"] = _text_blocks(content, f"{where}.content")
            if open_results:
                out[-1]["content"].append(result)
            else:
                out.append({"role": "user", "content": [result]})
                open_results = True
        elif role == "function":
            raise InvalidRequest(f"{where}: role 'function' (legacy functions) cannot be translated; use tools")
        else:
            raise InvalidRequest(f"{where}.role: {role!r} is not a chat message role")
    return system, out


def _openai_tools(tools: list[Any]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        tool, kind = _part(tool, at)
        if kind != "function":
            raise InvalidRequest(f"{at}: tool type {kind!r} cannot be translated (function tools only)")
        fn = expect_dict(tool.get("function"), at, "function")
        schema = expect_dict(fn.get("parameters"), at, "function.parameters", default=None)
        converted: dict[str, Any] = {
            "name": expect_str(fn.get("name"), at, "function.name", nonempty=True),
            "input_schema": schema or {"type": "object", "properties": {}},
        }
        description = expect_str(fn.get("description"), at, "function.description", default=None)
        if description:
            converted["description"] = description
        strict = expect_bool(fn.get("strict"), at, "function.strict", default=None)
        if strict is not None:
            converted["strict"] = strict
        out.append(_with_cache_control(converted, tool, at))
    return out


def _openai_tool_choice(choice: Any, parallel: bool | None) -> dict[str, Any] | None:
    if choice is None:
        result: dict[str, Any] | None = None
    elif isinstance(choice, str):
        if choice not in m.OPENAI_TOOL_CHOICE:
            raise InvalidRequest(f"tool_choice {choice!r} is not one of none, auto, required")
        result = {"type": m.OPENAI_TOOL_CHOICE[choice]}
    elif not isinstance(choice, dict):
        fail("tool_choice", "a string or an object", choice)
    elif (kind := expect_str(choice.get("type"), "tool_choice.type")) == "function":
        fn = expect_dict(choice.get("function"), "tool_choice.function")
        result = {"type": "tool", "name": expect_str(fn.get("name"), "tool_choice.function.name", nonempty=True)}
    else:
        raise InvalidRequest(f"tool_choice type {kind!r} cannot be translated")
    if parallel is False and (result is None or result["type"] != "none"):
        result = {**(result or {"type": "auto"}), "disable_parallel_tool_use": True}
    return result


def _thinking(effort: str, max_tokens: int, explicit_max: bool, settings: Settings) -> tuple[dict | None, int]:
    """``reasoning_effort`` (a key of :data:`mappings.EFFORT_TO_BUDGET`) -> (Anthropic
    ``thinking`` or None, ``max_tokens``).

    Anthropic needs ``budget_tokens < max_tokens``: a client-set limit caps the budget
    (400 if that leaves less than the 1024-token minimum); the default limit grows to
    ``budget + default_max_tokens`` instead.
    """
    budget = m.EFFORT_TO_BUDGET[effort]
    if budget is None:
        return None, max_tokens
    if budget >= max_tokens:
        if not explicit_max:
            max_tokens = budget + settings.default_max_tokens
        else:
            budget = max_tokens - 1
            if budget < m.MIN_THINKING_BUDGET:
                raise InvalidRequest(
                    f"reasoning_effort needs max_completion_tokens above {m.MIN_THINKING_BUDGET} "
                    "for an Anthropic upstream (thinking budget minimum)"
                )
    return {"type": "enabled", "budget_tokens": budget}, max_tokens


def max_tokens_and_thinking(
    out: Body, explicit: int | None, effort: str | None, skip: bool, field: str, settings: Settings, ignored: list[str]
) -> None:
    """Set an Anthropic request's ``thinking`` (from an OpenAI ``effort``; when ``skip``, the
    client's ``field`` is listed in ``ignored`` instead) and ``max_tokens`` (``explicit`` or the
    default, grown or capped by :func:`_thinking`)."""
    max_tokens = explicit or settings.default_max_tokens
    if effort is not None:
        if skip:
            ignored.append(field)
        else:
            thinking, max_tokens = _thinking(effort, max_tokens, bool(explicit), settings)
            if thinking:
                out["thinking"] = thinking
    out["max_tokens"] = max_tokens


def _in_unsigned_tool_turn(messages: list[dict[str, Any]]) -> bool:
    """True when the last assistant message holds tool calls.

    With thinking on, Anthropic requires that message to start with the signed
    thinking block it produced, which an OpenAI client cannot send back; such a
    request goes without thinking rather than fail.
    """
    for message in reversed(messages):
        if message["role"] == "assistant":
            content = message["content"]
            return isinstance(content, list) and any(b.get("type") == "tool_use" for b in content)
    return False


def copy_fields(out: Body, body: Body, keys: tuple[str, ...], expect: Any) -> None:
    """Copy each of ``keys`` that ``body`` sets (not null), checked by ``expect``."""
    for key in keys:
        value = expect(body.get(key), key, default=None)
        if value is not None:
            out[key] = value


def _string_list(value: Any, path: str) -> list[str]:
    """An array of strings (absent or null: none)."""
    return [expect_str(item, path, i) for i, item in enumerate(expect_list(value, path, default=()))]


def openai_to_anthropic(
    body: Body, *, model: str | None, settings: Settings, ignored: list[str], stream: bool | None = None
) -> Body:
    """An OpenAI Chat Completions request -> an Anthropic Messages request.

    ``stream``: whether the upstream is asked to stream (``ctx.upstream_stream``); None
    copies the client's ``stream``.

    Raises:
        InvalidRequest: for fields of the wrong type and for content or options
            Anthropic cannot express (the message names the field).
    """
    for key, label in _OPENAI_REFUSED:
        _refuse_if(body.get(key), label, _ANTHROPIC_API)
    _refuse_if(expect_int(body.get("n"), "n", default=1) != 1, "n > 1", _ANTHROPIC_API)
    modalities = _string_list(body.get("modalities"), "modalities")
    _refuse_if([x for x in modalities if x != "text"], "modalities other than text", _ANTHROPIC_API)
    _refuse_if(body.get("web_search_options") is not None, "web_search_options", _ANTHROPIC_API)
    for key in body:
        if key not in _OPENAI_HANDLED:
            ignored.append(key)

    system, messages = _openai_messages(body.get("messages"))
    out: Body = {"model": model or body.get("model")}
    completion_max = expect_int(body.get("max_completion_tokens"), "max_completion_tokens", default=None)
    legacy_max = expect_int(body.get("max_tokens"), "max_tokens", default=None)
    effort = expect_str(body.get("reasoning_effort"), "reasoning_effort", default=None)
    if effort is not None and effort not in m.EFFORT_TO_BUDGET:
        raise InvalidRequest(f"reasoning_effort {effort!r} is not one of {', '.join(m.EFFORT_TO_BUDGET)}")
    max_tokens_and_thinking(out, completion_max or legacy_max, effort, _in_unsigned_tool_turn(messages),
                            "reasoning_effort", settings, ignored)
    if system:
        out["system"] = system
    out["messages"] = messages

    stop = body.get("stop")
    if stop is not None and not isinstance(stop, (str, list)):
        fail("stop", "a string or an array of strings", stop)
    stop_sequences = [stop] if isinstance(stop, str) else _string_list(stop, "stop")
    if stop:
        out["stop_sequences"] = stop_sequences
    temperature = expect_number(body.get("temperature"), "temperature", default=None)
    if temperature is not None:
        out["temperature"] = min(temperature, 1.0)  # OpenAI allows 0..2, Anthropic 0..1
    for key, expect in (("top_p", expect_number), ("top_k", expect_int)):
        value = expect(body.get(key), key, default=None)
        if value is not None:
            out[key] = value
    user = expect_str(body.get("user"), "user", default=None)
    safety_identifier = expect_str(body.get("safety_identifier"), "safety_identifier", default=None)
    if user or safety_identifier:
        out["metadata"] = {"user_id": user or safety_identifier}

    tools = expect_list(body.get("tools"), "tools", default=None)
    choice = _openai_tool_choice(
        body.get("tool_choice"), expect_bool(body.get("parallel_tool_calls"), "parallel_tool_calls", default=None)
    )
    if tools:
        out["tools"] = _openai_tools(tools)
        if choice:
            out["tool_choice"] = choice
    elif body.get("tool_choice") not in (None, "none", "auto"):
        raise InvalidRequest("tool_choice needs tools")

    fmt = expect_dict(body.get("response_format"), "response_format", default=None)
    if fmt is not None:
        kind = expect_str(fmt.get("type"), "response_format.type")
        if kind == "json_schema":
            spec = expect_dict(fmt.get("json_schema"), "response_format.json_schema")
            schema = expect_dict(spec.get("schema"), "response_format.json_schema.schema")
            out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        elif kind != "text":
            raise InvalidRequest(
                f"response_format type {kind!r} cannot be translated to {_ANTHROPIC_API}; use json_schema"
            )
    options = expect_dict(body.get("stream_options"), "stream_options", default={})
    # read by the response adapter
    expect_bool(options.get("include_usage"), "stream_options.include_usage", default=None)
    if body.get("stream") if stream is None else stream:
        out["stream"] = True
    return out


# -- Anthropic -> OpenAI --------------------------------------------------------

#: Top-level Anthropic fields handled by :func:`anthropic_to_openai` itself.
_ANTHROPIC_HANDLED = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stop_sequences",
        "temperature",
        "top_p",
        "stream",
        "tools",
        "tool_choice",
        "metadata",
        "thinking",
        "output_config",
        "mcp_servers",
        "container",
        "prompt_cache_key",
    }
)


def _openai_text(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text parts as OpenAI content: one part becomes a plain string."""
    if len(parts) == 1:
        return parts[0]["text"]
    return parts


#: Anthropic fields refused (400) when set: server-side features OpenAI has no form for.
_ANTHROPIC_REFUSED = ("mcp_servers", "container")


def _text_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    return {"type": "text", "text": expect_str(block.get("text"), where, "text")}


def _source(block: dict[str, Any], where: str) -> tuple[dict[str, Any], str]:
    """A block's ``source``: (the object, its ``type``)."""
    return _part(block.get("source"), f"{where}.source")


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source, kind = _source(block, where)
    if kind == "base64":
        media_type = expect_str(source.get("media_type"), where, "source.media_type", nonempty=True)
        data = expect_str(source.get("data"), where, "source.data")
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        url = expect_str(source.get("url"), where, "source.url", nonempty=True)
    else:
        raise InvalidRequest(f"{where}: image source {kind!r} cannot be translated (base64 and url only)")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source, kind = _source(block, where)
    if kind == "base64" and source.get("media_type") == "application/pdf":
        title = expect_str(block.get("title"), where, "title", default=None)
        data = expect_str(source.get("data"), where, "source.data")
        return {
            "type": "file",
            "file": {"filename": title or "document.pdf", "file_data": f"data:application/pdf;base64,{data}"},
        }
    if kind == "text":
        return {"type": "text", "text": expect_str(source.get("data"), where, "source.data")}
    raise InvalidRequest(f"{where}: document source {kind!r} cannot be translated (base64 PDF and text only)")


def _user_part(block: Any, where: str) -> dict[str, Any]:
    """An Anthropic user content block (not ``tool_result``) -> an OpenAI content part."""
    block, kind = _part(block, where)
    if kind == "text":
        return _text_part(block, where)
    if kind == "image":
        return _image_part(block, where)
    if kind == "document":
        return _document_part(block, where)
    raise InvalidRequest(f"{where}: content block type {kind!r} cannot be translated to {_OPENAI_API}")


def _tool_result(block: dict[str, Any], where: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An Anthropic ``tool_result`` -> (an OpenAI tool message, image parts it carried).

    OpenAI tool messages hold text only, so images go to the user message that
    follows the tool messages.
    """
    call_id = expect_str(block.get("tool_use_id"), where, "tool_use_id", nonempty=True)
    content = block.get("content")
    images: list[dict[str, Any]] = []
    if content is None or isinstance(content, str):
        text: str | list[dict[str, Any]] = content or ""
    else:
        parts = []
        for k, item in enumerate(_items(content, f"{where}.content", "content blocks")):
            at = f"{where}.content[{k}]"
            part = _user_part(item, at)
            if part["type"] == "image_url":
                images.append(part)
            elif part["type"] == "text":
                parts.append(part)
            else:
                raise InvalidRequest(f"{at}: {item['type']} in a tool result cannot be translated")
        text = _openai_text(parts) if parts else ""
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _system_content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    parts = []
    for i, item in enumerate(_items(content, where, "text blocks")):
        at = f"{where}[{i}]"
        block, kind = _part(item, at)
        if kind != "text":
            raise InvalidRequest(f"{at}: block type {kind!r} is not allowed in a system prompt")
        parts.append(_text_part(block, at))
    return _openai_text(parts) if parts else ""


def _anthropic_user(content: Any, where: str, out: list[dict[str, Any]]) -> None:
    """Append OpenAI messages for one Anthropic user message: tool messages first
    (in order), then one user message with the other blocks and tool-result images."""
    if isinstance(content, str):
        out.append({"role": "user", "content": content})
        return
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(_items(content, where, "content blocks")):
        at = f"{where}[{i}]"
        if isinstance(block, dict) and block.get("type") == "tool_result":
            message, images = _tool_result(block, at)
            out.append(message)
            parts.extend(images)
        else:
            parts.append(_user_part(block, at))
    if parts:
        text_only = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": _openai_text(parts) if text_only else parts})


def _anthropic_assistant(content: Any, where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, item in enumerate(_items(content, where, "content blocks")):
        at = f"{where}[{i}]"
        block, kind = _part(item, at)
        if kind == "text":
            texts.append(_text_part(block, at)["text"])
        elif kind == "tool_use":
            name = expect_str(block.get("name"), at, "name", nonempty=True)
            arguments = dumps(expect_dict(block.get("input"), at, "input", default={}))
            calls.append(
                {
                    "id": expect_str(block.get("id"), at, "id", nonempty=True),
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # signed reasoning only Anthropic can read back (documented)
        else:
            raise InvalidRequest(f"{at}: content block type {kind!r} cannot be translated to {_OPENAI_API}")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _anthropic_tools(tools: list[Any]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        tool = expect_dict(tool, at)
        kind = expect_str(tool.get("type"), at, "type", default="custom")
        if kind != "custom":
            raise InvalidRequest(f"{at}: server tool type {kind!r} cannot be translated (custom tools only)")
        fn: dict[str, Any] = {"name": expect_str(tool.get("name"), at, "name", nonempty=True)}
        description = expect_str(tool.get("description"), at, "description", default=None)
        if description:
            fn["description"] = description
        schema = expect_dict(tool.get("input_schema"), at, "input_schema", default=None)
        fn["parameters"] = schema or {"type": "object", "properties": {}}
        strict = expect_bool(tool.get("strict"), at, "strict", default=None)
        if strict is not None:
            fn["strict"] = strict
        out.append({"type": "function", "function": fn})
    return out


def _anthropic_tool_choice(choice: Any) -> tuple[Any, bool]:
    """Anthropic ``tool_choice`` -> (OpenAI ``tool_choice`` or None, parallel tool use allowed)."""
    if choice is None:
        return None, True
    choice, kind = _part(choice, "tool_choice")
    key = "disable_parallel_tool_use"
    parallel = not expect_bool(choice.get(key), "tool_choice", key, default=False)
    if kind == "tool":
        name = expect_str(choice.get("name"), "tool_choice.name", nonempty=True)
        return {"type": "function", "function": {"name": name}}, parallel
    if kind in m.ANTHROPIC_TOOL_CHOICE:
        return m.ANTHROPIC_TOOL_CHOICE[kind], parallel
    raise InvalidRequest(f"tool_choice type {kind!r} cannot be translated")


def _reasoning_effort(body: Body, config: dict[str, Any]) -> str | None:
    """Anthropic ``output_config.effort`` or ``thinking`` -> OpenAI ``reasoning_effort``."""
    effort = expect_str(config.get("effort"), "output_config.effort", default=None)
    if effort is not None and effort not in m.ANTHROPIC_EFFORT:
        raise InvalidRequest(f"output_config.effort {effort!r} is not one of {', '.join(m.ANTHROPIC_EFFORT)}")
    thinking = expect_dict(body.get("thinking"), "thinking", default=None)
    budget = None
    if thinking is not None and expect_str(thinking.get("type"), "thinking.type") == "enabled":
        budget = expect_int(thinking.get("budget_tokens"), "thinking.budget_tokens")
    if effort is not None:
        return m.ANTHROPIC_EFFORT[effort]
    # disabled, adaptive (the model's default) or absent: None
    return m.effort_for_budget(budget) if budget is not None else None


def anthropic_to_openai(
    body: Body,
    *,
    model: str | None,
    settings: Settings,
    ignored: list[str],
    stream: bool | None = None,
    stream_usage: bool = True,
) -> Body:
    """An Anthropic Messages request -> an OpenAI Chat Completions request.

    ``stream``: whether the upstream is asked to stream (``ctx.upstream_stream``); None
    copies the client's ``stream``. A streamed request asks for the usage chunk
    (``stream_options.include_usage``: Anthropic clients need usage) unless ``stream_usage``
    is False (``usage.request_stream_usage: false``, for servers that refuse ``stream_options``).

    Raises:
        InvalidRequest: for fields of the wrong type and for content or options
            OpenAI cannot express (the message names the field).
    """
    for key in _ANTHROPIC_REFUSED:
        _refuse_if(body.get(key), key, _OPENAI_API)
    for key in body:
        if key not in _ANTHROPIC_HANDLED:
            ignored.append(key)

    messages: list[dict[str, Any]] = []
    system = without_billing_header(body.get("system"))
    if system is not None:
        system = _system_content(system, "system")
        if system:
            messages.append({"role": "system", "content": system})
    for i, msg in enumerate(expect_list(body.get("messages"), "messages", nonempty=True)):
        where = f"messages[{i}]"
        msg = expect_dict(msg, where)
        role = expect_str(msg.get("role"), where, "role")
        if role == "user":
            _anthropic_user(msg.get("content"), f"{where}.content", messages)
        elif role == "assistant":
            messages.append(_anthropic_assistant(msg.get("content"), f"{where}.content"))
        elif role == "system":
            messages.append({"role": "system", "content": _system_content(msg.get("content"), f"{where}.content")})
        else:
            raise InvalidRequest(f"{where}.role: {role!r} is not a Messages API role")

    out: Body = {"model": model or body.get("model"), "messages": messages}
    max_tokens = expect_int(body.get("max_tokens"), "max_tokens", default=None)
    if max_tokens is not None:
        out[settings.max_tokens_field] = max_tokens
    copy_fields(out, body, ("temperature", "top_p"), expect_number)
    stop = _string_list(body.get("stop_sequences"), "stop_sequences")
    if stop:
        out["stop"] = stop
    metadata = expect_dict(body.get("metadata"), "metadata", default={})
    user = expect_str(metadata.get("user_id"), "metadata.user_id", default=None)
    if user:
        out["user"] = user
    key = cache_key(body)
    if key is not None:
        out["prompt_cache_key"] = key
    config = expect_dict(body.get("output_config"), "output_config", default={})
    effort = _reasoning_effort(body, config)
    if settings.reasoning_effort:
        if effort:
            out["reasoning_effort"] = effort
    elif body.get("thinking"):
        ignored.append("thinking")
    fmt = expect_dict(config.get("format"), "output_config.format", default=None)
    if fmt is not None:
        kind = expect_str(fmt.get("type"), "output_config.format.type")
        if kind != "json_schema":
            raise InvalidRequest(f"output_config.format type {kind!r} cannot be translated (json_schema only)")
        schema = expect_dict(fmt.get("schema"), "output_config.format.schema")
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    tools = expect_list(body.get("tools"), "tools", default=None)
    choice, parallel = _anthropic_tool_choice(body.get("tool_choice"))
    if tools:
        out["tools"] = _anthropic_tools(tools)
        if choice is not None:
            out["tool_choice"] = choice
        if not parallel:
            out["parallel_tool_calls"] = False
    elif choice not in (None, "auto", "none"):
        raise InvalidRequest("tool_choice needs tools")
    if body.get("stream") if stream is None else stream:
        out["stream"] = True
        if stream_usage:
            out["stream_options"] = {"include_usage": True}  # Anthropic clients need usage
    return out
