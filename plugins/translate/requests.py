"""Request bodies: OpenAI Chat Completions <-> Anthropic Messages.

Both converters return a new dict and never modify their input. Message content is
never dropped without a documented reason: a part or block that the other dialect
cannot carry raises :class:`InvalidRequest` naming it. Top-level options the other
dialect has no use for are listed in ``ignored`` (see docs/translation.md).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from ccproxy_core.errors import InvalidRequest

from . import mappings as m
from .base import Settings, dumps, loads

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
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{where} must be a non-empty string")
    return _TOOL_ID_BAD.sub("_", value)


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


def _text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI system/developer/tool content (a string or text parts) -> Anthropic text blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or a list of content parts")
    blocks = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise InvalidRequest(f"{where}[{i}]: content part {kind!r} is not allowed here")
        text = part.get("text") if part["type"] == "text" else part.get("refusal")
        if text:
            blocks.append(_with_cache_control({"type": "text", "text": text}, part))
    return blocks


def _with_cache_control(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Carry a ``cache_control`` marker some OpenAI clients put on parts (OpenRouter style)."""
    if part.get("cache_control"):
        block["cache_control"] = part["cache_control"]
    return block


def _image_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{where}.image_url.url must be a string")
    parsed = parse_data_url(url)
    if parsed is not None:
        source = {"type": "base64", "media_type": parsed[0], "data": parsed[1]}
    elif url.startswith("data:"):
        raise InvalidRequest(f"{where}.image_url.url: only base64 data URLs can be translated")
    else:
        source = {"type": "url", "url": url}
    return _with_cache_control({"type": "image", "source": source}, part)


def _file_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    file = part.get("file") or {}
    data_url = file.get("file_data")
    parsed = parse_data_url(data_url) if isinstance(data_url, str) else None
    if parsed is None:
        raise InvalidRequest(f"{where}.file: only inline file_data (a base64 data URL) can be translated, not file_id")
    media_type, data = parsed
    if media_type == "application/pdf":
        source: dict[str, Any] = {"type": "base64", "media_type": media_type, "data": data}
    elif media_type == "text/plain":
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"{where}.file.file_data is not base64 UTF-8 text") from exc
        source = {"type": "text", "media_type": "text/plain", "data": text}
    else:
        raise InvalidRequest(f"{where}.file: media type {media_type!r} cannot be translated (PDF and text only)")
    block: dict[str, Any] = {"type": "document", "source": source}
    if file.get("filename"):
        block["title"] = file["filename"]
    return _with_cache_control(block, part)


def _user_content(content: Any, where: str) -> str | list[dict[str, Any]]:
    """OpenAI user content -> Anthropic user content (a string stays a string)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or a list of content parts")
    blocks: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        at = f"{where}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append(_with_cache_control({"type": "text", "text": part["text"]}, part))
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
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if isinstance(arguments, dict):
        return arguments
    try:
        value = loads(arguments)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"{where} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where} must encode a JSON object")
    return value


def _assistant_blocks(msg: dict[str, Any], where: str) -> list[dict[str, Any]]:
    _refuse_if(msg.get("function_call"), f"{where}.function_call (legacy functions; use tool_calls)", _ANTHROPIC_API)
    _refuse_if(msg.get("audio"), f"{where}.audio", _ANTHROPIC_API)
    content = msg.get("content")
    blocks = _text_blocks(content, f"{where}.content") if content is not None else []
    if msg.get("refusal") and not blocks:
        blocks.append({"type": "text", "text": msg["refusal"]})
    for j, call in enumerate(msg.get("tool_calls") or ()):
        at = f"{where}.tool_calls[{j}]"
        if call.get("type", "function") != "function":
            raise InvalidRequest(f"{at}: tool call type {call.get('type')!r} cannot be translated")
        fn = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": _tool_id(call.get("id"), f"{at}.id"),
                "name": fn.get("name"),
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
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list")
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    open_results = False  # out[-1] is a user message made of tool results
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidRequest(f"{where} must be an object")
        role = msg.get("role")
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
            raise InvalidRequest(f"{where}.role {role!r} is not a chat message role")
    return system, out


def _openai_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be a list")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise InvalidRequest(f"tools[{i}]: tool type {kind!r} cannot be translated (function tools only)")
        fn = tool.get("function") or {}
        if not fn.get("name"):
            raise InvalidRequest(f"tools[{i}].function.name is required")
        converted: dict[str, Any] = {
            "name": fn["name"],
            "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
        }
        if fn.get("description"):
            converted["description"] = fn["description"]
        if fn.get("strict") is not None:
            converted["strict"] = fn["strict"]
        if tool.get("cache_control"):
            converted["cache_control"] = tool["cache_control"]
        out.append(converted)
    return out


def _openai_tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        result: dict[str, Any] | None = None
    elif isinstance(choice, str):
        if choice not in m.OPENAI_TOOL_CHOICE:
            raise InvalidRequest(f"tool_choice {choice!r} is not one of none, auto, required")
        result = {"type": m.OPENAI_TOOL_CHOICE[choice]}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if not name:
            raise InvalidRequest("tool_choice.function.name is required")
        result = {"type": "tool", "name": name}
    else:
        kind = choice.get("type") if isinstance(choice, dict) else choice
        raise InvalidRequest(f"tool_choice type {kind!r} cannot be translated")
    if parallel is False and (result is None or result["type"] != "none"):
        result = {**(result or {"type": "auto"}), "disable_parallel_tool_use": True}
    return result


def _thinking(effort: Any, max_tokens: int, explicit_max: bool, settings: Settings) -> tuple[dict | None, int]:
    """``reasoning_effort`` -> (Anthropic ``thinking`` or None, ``max_tokens``).

    The budget comes from :data:`mappings.EFFORT_TO_BUDGET`. Anthropic needs
    ``budget_tokens < max_tokens``: a client-set limit caps the budget (400 if that
    leaves less than the 1024-token minimum); the default limit grows to
    ``budget + default_max_tokens`` instead.
    """
    if effort not in m.EFFORT_TO_BUDGET:
        raise InvalidRequest(f"reasoning_effort {effort!r} is not one of {', '.join(m.EFFORT_TO_BUDGET)}")
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


def openai_to_anthropic(body: Body, *, model: str | None, settings: Settings, ignored: list[str]) -> Body:
    """An OpenAI Chat Completions request -> an Anthropic Messages request.

    Raises:
        InvalidRequest: for content or options Anthropic cannot express (the message
            names the field).
    """
    for key, label in _OPENAI_REFUSED:
        _refuse_if(body.get(key), label, _ANTHROPIC_API)
    _refuse_if(body.get("n") not in (None, 1), "n > 1", _ANTHROPIC_API)
    _refuse_if([x for x in body.get("modalities") or () if x != "text"], "modalities other than text", _ANTHROPIC_API)
    _refuse_if(body.get("web_search_options") is not None, "web_search_options", _ANTHROPIC_API)
    for key in body:
        if key not in _OPENAI_HANDLED:
            ignored.append(key)

    system, messages = _openai_messages(body.get("messages"))
    out: Body = {"model": model or body.get("model")}
    explicit_max = body.get("max_completion_tokens") or body.get("max_tokens")
    max_tokens = explicit_max or settings.default_max_tokens
    if body.get("reasoning_effort") is not None:
        if _in_unsigned_tool_turn(messages):
            ignored.append("reasoning_effort")
        else:
            thinking, max_tokens = _thinking(body["reasoning_effort"], max_tokens, bool(explicit_max), settings)
            if thinking:
                out["thinking"] = thinking
    out["max_tokens"] = max_tokens
    if system:
        out["system"] = system
    out["messages"] = messages

    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool):
            raise InvalidRequest("temperature must be a number")
        out["temperature"] = min(temperature, 1.0)  # OpenAI allows 0..2, Anthropic 0..1
    for key in ("top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    user = body.get("user") or body.get("safety_identifier")
    if user:
        out["metadata"] = {"user_id": user}

    if body.get("tools"):
        out["tools"] = _openai_tools(body["tools"])
        choice = _openai_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice:
            out["tool_choice"] = choice
    elif body.get("tool_choice") not in (None, "none", "auto"):
        raise InvalidRequest("tool_choice needs tools")

    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        if fmt["type"] != "json_schema":
            raise InvalidRequest(
                f"response_format type {fmt['type']!r} cannot be translated to {_ANTHROPIC_API}; use json_schema"
            )
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest("response_format.json_schema.schema must be an object")
        out["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if body.get("stream"):
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
    }
)


def _openai_text(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text parts as OpenAI content: one part becomes a plain string."""
    if len(parts) == 1:
        return parts[0]["text"]
    return parts


#: Anthropic fields refused (400) when set: server-side features OpenAI has no form for.
_ANTHROPIC_REFUSED = ("mcp_servers", "container")


def _text_part(block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "text", "text": block.get("text", "")}


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url":
        url = source.get("url")
    else:
        raise InvalidRequest(f"{where}: image source {source.get('type')!r} cannot be translated (base64 and url only)")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source") or {}
    kind = source.get("type")
    if kind == "base64" and source.get("media_type") == "application/pdf":
        return {
            "type": "file",
            "file": {
                "filename": block.get("title") or "document.pdf",
                "file_data": f"data:application/pdf;base64,{source.get('data')}",
            },
        }
    if kind == "text":
        return {"type": "text", "text": source.get("data", "")}
    raise InvalidRequest(f"{where}: document source {kind!r} cannot be translated (base64 PDF and text only)")


def _user_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        return _text_part(block)
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
    content = block.get("content")
    images: list[dict[str, Any]] = []
    if content is None or isinstance(content, str):
        text: str | list[dict[str, Any]] = content or ""
    else:
        parts = []
        for k, item in enumerate(content):
            at = f"{where}.content[{k}]"
            if item.get("type") == "image":
                images.append(_image_part(item, at))
            else:
                part = _user_part(item, at)
                if part["type"] != "text":
                    raise InvalidRequest(f"{at}: {item.get('type')} in a tool result cannot be translated")
                parts.append(part)
        text = _openai_text(parts) if parts else ""
    return {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}, images


def _system_content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or a list of text blocks")
    parts = []
    for i, block in enumerate(content):
        if not isinstance(block, dict) or block.get("type") != "text":
            kind = block.get("type") if isinstance(block, dict) else None
            raise InvalidRequest(f"{where}[{i}]: block type {kind!r} is not allowed in a system prompt")
        parts.append(_text_part(block))
    return _openai_text(parts) if parts else ""


def _anthropic_user(content: Any, where: str, out: list[dict[str, Any]]) -> None:
    """Append OpenAI messages for one Anthropic user message: tool messages first
    (in order), then one user message with the other blocks and tool-result images."""
    if isinstance(content, str):
        out.append({"role": "user", "content": content})
        return
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or a list of content blocks")
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        at = f"{where}[{i}]"
        if not isinstance(block, dict):
            raise InvalidRequest(f"{at} must be an object")
        if block.get("type") == "tool_result":
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
    if not isinstance(content, list):
        raise InvalidRequest(f"{where} must be a string or a list of content blocks")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
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
        elif kind in ("thinking", "redacted_thinking"):
            continue  # signed reasoning only Anthropic can read back (documented)
        else:
            raise InvalidRequest(f"{where}[{i}]: content block type {kind!r} cannot be translated to {_OPENAI_API}")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _anthropic_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be a list")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise InvalidRequest(f"tools[{i}]: server tool type {kind!r} cannot be translated (custom tools only)")
        fn: dict[str, Any] = {"name": tool.get("name")}
        if tool.get("description"):
            fn["description"] = tool["description"]
        fn["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
        if tool.get("strict") is not None:
            fn["strict"] = tool["strict"]
        out.append({"type": "function", "function": fn})
    return out


def _anthropic_tool_choice(choice: Any) -> tuple[Any, bool]:
    """Anthropic ``tool_choice`` -> (OpenAI ``tool_choice`` or None, parallel tool use allowed)."""
    if choice is None:
        return None, True
    kind = choice.get("type") if isinstance(choice, dict) else None
    parallel = not choice.get("disable_parallel_tool_use", False) if isinstance(choice, dict) else True
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}, parallel
    if kind in m.ANTHROPIC_TOOL_CHOICE:
        return m.ANTHROPIC_TOOL_CHOICE[kind], parallel
    raise InvalidRequest(f"tool_choice type {kind!r} cannot be translated")


def _reasoning_effort(body: Body) -> str | None:
    """Anthropic ``output_config.effort`` or ``thinking`` -> OpenAI ``reasoning_effort``."""
    effort = (body.get("output_config") or {}).get("effort")
    if effort is not None:
        if effort not in m.ANTHROPIC_EFFORT:
            raise InvalidRequest(f"output_config.effort {effort!r} is not one of {', '.join(m.ANTHROPIC_EFFORT)}")
        return m.ANTHROPIC_EFFORT[effort]
    thinking = body.get("thinking") or {}
    if thinking.get("type") == "enabled" and isinstance(thinking.get("budget_tokens"), int):
        return m.effort_for_budget(thinking["budget_tokens"])
    return None  # disabled, adaptive (the model's default) or absent


def anthropic_to_openai(body: Body, *, model: str | None, settings: Settings, ignored: list[str]) -> Body:
    """An Anthropic Messages request -> an OpenAI Chat Completions request.

    Raises:
        InvalidRequest: for content or options OpenAI cannot express (the message
            names the field).
    """
    for key in _ANTHROPIC_REFUSED:
        _refuse_if(body.get(key), key, _OPENAI_API)
    for key in body:
        if key not in _ANTHROPIC_HANDLED:
            ignored.append(key)

    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _system_content(system, "system")})
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("messages must be a non-empty list")
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidRequest(f"{where} must be an object")
        role = msg.get("role")
        if role == "user":
            _anthropic_user(msg.get("content"), f"{where}.content", messages)
        elif role == "assistant":
            messages.append(_anthropic_assistant(msg.get("content"), f"{where}.content"))
        elif role == "system":
            messages.append({"role": "system", "content": _system_content(msg.get("content"), f"{where}.content")})
        else:
            raise InvalidRequest(f"{where}.role {role!r} is not a Messages API role")

    out: Body = {"model": model or body.get("model"), "messages": messages}
    if body.get("max_tokens") is not None:
        out[settings.max_tokens_field] = body["max_tokens"]
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    user = (body.get("metadata") or {}).get("user_id")
    if user:
        out["user"] = user
    if settings.reasoning_effort:
        effort = _reasoning_effort(body)
        if effort:
            out["reasoning_effort"] = effort
    elif body.get("thinking"):
        ignored.append("thinking")
    fmt = (body.get("output_config") or {}).get("format")
    if fmt:
        if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise InvalidRequest("output_config.format must be a json_schema format with a schema object")
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}
    if body.get("tools"):
        out["tools"] = _anthropic_tools(body["tools"])
        choice, parallel = _anthropic_tool_choice(body.get("tool_choice"))
        if choice is not None:
            out["tool_choice"] = choice
        if not parallel:
            out["parallel_tool_calls"] = False
    elif (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        raise InvalidRequest("tool_choice needs tools")
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # Anthropic clients need usage
    return out
