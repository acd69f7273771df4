"""Request conversion to and from the Responses API, field by field, the 400s, and fuzzing."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccproxy_core.errors import InvalidRequest
from ccproxy_plugins.translate.base import Settings
from ccproxy_plugins.translate.resp_requests import responses_to_anthropic, responses_to_openai
from ccproxy_plugins.translate.resp_upstream import anthropic_to_responses, openai_to_responses
from tests.translate.strategies import json_values, mutated
from tests.translate.test_requests import ANTHROPIC_FULL, OPENAI_FULL

DEFAULT = Settings()

RESPONSES_FULL: dict[str, Any] = {
    "model": "gpt-5.1",
    "instructions": "You are Codex.",
    "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<env>linux</env>"}]},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "What is in this image, and the weather?"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0K", "detail": "auto"},
        ]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Look, then call."}],
         "encrypted_content": "EqQBsig"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking.",
                                                              "annotations": []}]},
        {"type": "function_call", "call_id": "call_a", "name": "shell", "arguments": "{\"command\":[\"ls\"]}"},
        {"type": "function_call", "call_id": "call_b", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"},
        {"type": "function_call_output", "call_id": "call_a", "output": "README.md"},
        {"type": "function_call_output", "call_id": "call_b", "output": [{"type": "input_text", "text": "4°C"}]},
        {"role": "user", "content": "thanks"},
    ],
    "tools": [
        {"type": "function", "name": "shell", "description": "Run a command",
         "parameters": {"type": "object", "properties": {"command": {"type": "array"}}}, "strict": False},
        {"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": True},
    ],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "max_output_tokens": 20000,
    "reasoning": {"effort": "medium", "summary": "auto"},
    "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True},
             "verbosity": "low"},
    "temperature": 0.7,
    "top_p": 0.9,
    "store": False,
    "include": ["reasoning.encrypted_content"],
    "stream": True,
    "metadata": {"session": "s1"},
    "prompt_cache_key": "019a-session",
    "safety_identifier": "user-1",
}  # fmt: skip


def convert(fn: Any, body: dict[str, Any], settings: Settings = DEFAULT, ignored: list[str] | None = None) -> dict:
    before = copy.deepcopy(body)
    out = fn(body, model="upstream", settings=settings, ignored=[] if ignored is None else ignored)
    assert body == before, "the input must not be modified"
    json.dumps(out, allow_nan=False)
    return out


# == Responses -> Anthropic ===============================================================


def test_r2a_full_request() -> None:
    ignored: list[str] = []
    out = convert(responses_to_anthropic, RESPONSES_FULL, ignored=ignored)
    assert out["system"] == [{"type": "text", "text": "You are Codex."}, {"type": "text", "text": "<env>linux</env>"}]
    assert out["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this image, and the weather?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Look, then call.", "signature": "EqQBsig"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_a", "name": "shell", "input": {"command": ["ls"]}},
            {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_a", "content": "README.md"},
            {"type": "tool_result", "tool_use_id": "call_b", "content": [{"type": "text", "text": "4°C"}]},
            {"type": "text", "text": "thanks"}]},
    ]  # fmt: skip
    assert out["max_tokens"] == 20000 and out["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert out["tools"] == [
        {"name": "shell", "input_schema": RESPONSES_FULL["tools"][0]["parameters"], "description": "Run a command",
         "strict": False},
        {"name": "get_weather", "input_schema": {"type": "object"}, "strict": True},
    ]
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": {"type": "object"}}}
    assert out["temperature"] == 0.7 and out["top_p"] == 0.9 and out["stream"] is True
    assert out["metadata"] == {"user_id": "user-1"}
    assert sorted(ignored) == ["include", "metadata", "prompt_cache_key", "store"]


def test_r2a_string_input_and_defaults() -> None:
    out = convert(responses_to_anthropic, {"model": "m", "input": "hi"})
    assert out == {"model": "upstream", "max_tokens": 8192, "messages": [{"role": "user", "content": "hi"}]}


def test_r2a_effort_dropped_in_an_unsigned_tool_turn() -> None:
    body = {"model": "m", "reasoning": {"effort": "high"}, "input": [
        {"role": "user", "content": "go"}, {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "ok"}]}
    ignored: list[str] = []
    out = convert(responses_to_anthropic, body, ignored=ignored)
    assert "thinking" not in out and ignored == ["reasoning"]


def test_r2a_tool_choice_function_and_required() -> None:
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    assert convert(responses_to_anthropic, {"input": "x", "tools": tools, "tool_choice": "required"})[
        "tool_choice"] == {"type": "any"}
    assert convert(responses_to_anthropic, {"input": "x", "tools": tools, "tool_choice": {"type": "function",
                                                                                          "name": "f"}})[
        "tool_choice"] == {"type": "tool", "name": "f"}


# == Responses -> Chat ====================================================================


def test_r2o_full_request() -> None:
    ignored: list[str] = []
    out = convert(responses_to_openai, RESPONSES_FULL, ignored=ignored)
    assert out["messages"] == [
        {"role": "system", "content": "You are Codex."},
        {"role": "developer", "content": "<env>linux</env>"},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this image, and the weather?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K", "detail": "auto"}}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "shell", "arguments": "{\"command\":[\"ls\"]}"}},
            {"id": "call_b", "type": "function", "function": {"name": "get_weather",
                                                               "arguments": "{\"city\":\"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "README.md"},
        {"role": "tool", "tool_call_id": "call_b", "content": "4°C"},
        {"role": "user", "content": "thanks"},
    ]  # fmt: skip
    assert out["tools"][0] == {"type": "function", "function": {
        "name": "shell", "description": "Run a command", "parameters": RESPONSES_FULL["tools"][0]["parameters"],
        "strict": False}}
    assert (out["tool_choice"], out["parallel_tool_calls"]) == ("auto", False)
    assert out["max_completion_tokens"] == 20000 and out["reasoning_effort"] == "medium"
    assert out["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": {"type": "object"}, "strict": True}}
    assert out["verbosity"] == "low"
    assert (out["store"], out["metadata"], out["prompt_cache_key"], out["safety_identifier"]) == (
        False, {"session": "s1"}, "019a-session", "user-1")
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert ignored == ["include"]


def test_r2o_images_in_tool_output_follow_the_tool_messages() -> None:
    body = {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                      {"type": "function_call_output", "call_id": "c", "output": [
                          {"type": "input_text", "text": "see"},
                          {"type": "input_image", "image_url": "https://x/y.png"}]}]}
    assert convert(responses_to_openai, body)["messages"][1:] == [
        {"role": "tool", "tool_call_id": "c", "content": "see"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
    ]


def test_r2o_reasoning_setting_off_and_max_tokens_field() -> None:
    out = convert(responses_to_openai, {"input": "x", "reasoning": {"effort": "low"}, "max_output_tokens": 5},
                  Settings(reasoning_effort=False, max_tokens_field="max_tokens"))
    assert "reasoning_effort" not in out and out["max_tokens"] == 5


@pytest.mark.parametrize("fn", [responses_to_anthropic, responses_to_openai])
@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"input": "x", "previous_response_id": "resp_1"}, ["previous_response_id", "send the whole input"]),
        ({"input": "x", "background": True}, ["background"]),
        ({"input": [{"type": "web_search_call", "id": "w"}]}, ["input[0]", "web_search_call"]),
        ({"input": "x", "tools": [{"type": "file_search"}]}, ["tools[0]", "file_search"]),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, ["file_id"]),
        ({"input": "x", "tool_choice": "required"}, ["tool_choice needs tools"]),
        ({"input": "x", "reasoning": {"effort": "huge"}}, ["reasoning.effort"]),
        ({"input": [{"role": "user", "content": 5}]}, ["input[0].content", "got a number"]),
        ({"input": []}, ["input", "non-empty"]),
    ],
)
def test_from_responses_400s(fn: Any, body: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(InvalidRequest) as info:
        convert(fn, {"model": "m", **body})
    for word in words:
        assert word in info.value.message


# == Anthropic / Chat -> Responses ========================================================


def test_a2r_full_request_keeps_text_and_tool_order() -> None:
    body = {"model": "c", "system": "Be brief.", "max_tokens": 100, "stop_sequences": ["X"], "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "t", "signature": "s"}, {"type": "text", "text": "let me"},
            {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}}, {"type": "text", "text": "after"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
                                     {"type": "image", "source": {"type": "url", "url": "https://x/i.png"}}]}],
        "tools": [{"name": "f", "description": "F", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "thinking": {"type": "enabled", "budget_tokens": 5000}, "metadata": {"user_id": "u"},
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}, "stream": True}
    ignored: list[str] = []
    out = convert(anthropic_to_responses, body, ignored=ignored)
    assert out == {
        "model": "upstream", "instructions": "Be brief.",
        "input": [
            {"type": "message", "role": "user", "content": "hi"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "let me",
                                                                  "annotations": []}]},
            {"type": "function_call", "call_id": "t1", "name": "f", "arguments": "{\"x\":1}"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "after",
                                                                  "annotations": []}]},
            {"type": "function_call_output", "call_id": "t1", "output": "ok"},
            {"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "https://x/i.png"}]},
        ],
        "store": False, "max_output_tokens": 100, "user": "u", "reasoning": {"effort": "medium", "summary": "auto"},
        "text": {"format": {"type": "json_schema", "name": "output", "schema": {"type": "object"}, "strict": False}},
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": False,
                   "description": "F"}],
        "tool_choice": "required", "parallel_tool_calls": False, "stream": True,
    }  # fmt: skip
    assert ignored == ["stop_sequences"]


def test_o2r_full_request() -> None:
    body = {"model": "g", "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "hi"},
                                     {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]},
        {"role": "assistant", "content": "calling", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": True,
        "max_completion_tokens": 50, "reasoning_effort": "high", "verbosity": "low", "prompt_cache_key": "k",
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {}, "strict": True}},
        "stream": True, "stream_options": {"include_usage": True}, "seed": 1}
    ignored: list[str] = []
    out = convert(openai_to_responses, body, ignored=ignored)
    assert out == {
        "model": "upstream",
        "input": [
            {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "s"}]},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "hi"},
                {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "calling",
                                                                  "annotations": []}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "r"},
        ],
        "prompt_cache_key": "k", "store": False, "max_output_tokens": 50, "reasoning": {"effort": "high"},
        "text": {"format": {"type": "json_schema", "name": "n", "schema": {}, "strict": True}, "verbosity": "low"},
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}],
        "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": True, "stream": True,
    }  # fmt: skip
    assert ignored == ["seed"]


@pytest.mark.parametrize(
    ("fn", "body", "words"),
    [
        (openai_to_responses, {"n": 2}, ["n > 1"]),
        (openai_to_responses, {"logit_bias": {"1": 2}}, ["logit_bias"]),
        (openai_to_responses, {"tools": [{"type": "custom", "custom": {"name": "x"}}]}, ["tools[0]", "custom"]),
        (openai_to_responses, {"messages": [{"role": "function", "content": "x"}]}, ["function"]),
        (anthropic_to_responses, {"mcp_servers": [{"url": "x"}]}, ["mcp_servers"]),
        (anthropic_to_responses, {"tools": [{"type": "web_search_20250305", "name": "w"}]}, ["web_search"]),
    ],
)
def test_to_responses_400s(fn: Any, body: dict[str, Any], words: list[str]) -> None:
    base = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(InvalidRequest) as info:
        convert(fn, {**base, **body})
    for word in words:
        assert word in info.value.message


# == fuzzing: any body gives a request or a 400 naming a field ============================

CONVERTERS = [responses_to_anthropic, responses_to_openai, anthropic_to_responses, openai_to_responses]
SETTINGS = [DEFAULT, Settings(reasoning_effort=False, max_tokens_field="max_tokens", thinking="drop")]
TOP_KEYS = sorted({*OPENAI_FULL, *ANTHROPIC_FULL, *RESPONSES_FULL})
random_bodies = st.dictionaries(st.sampled_from(TOP_KEYS) | st.text(max_size=8), json_values, max_size=8)


def test_the_fuzz_seed_bodies_are_valid() -> None:
    for fn, body in ((responses_to_anthropic, RESPONSES_FULL), (responses_to_openai, RESPONSES_FULL),
                     (anthropic_to_responses, ANTHROPIC_FULL), (openai_to_responses, OPENAI_FULL)):
        assert convert(fn, body)


def _request_or_400(fn: Any, body: dict[str, Any], options: Settings) -> None:
    before = copy.deepcopy(body)
    try:
        out = fn(body, model="m", settings=options, ignored=[])
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.message
    else:
        assert isinstance(out, dict) and (out.get("messages") or "input" in out)
        json.dumps(out, allow_nan=False)
    assert body == before, "the input must not be modified"


@settings(max_examples=300)
@given(fn=st.sampled_from(CONVERTERS), body=st.one_of(random_bodies, mutated([RESPONSES_FULL, OPENAI_FULL,
                                                                                ANTHROPIC_FULL])),
       options=st.sampled_from(SETTINGS))
def test_random_json_gives_a_request_or_a_400(fn: Any, body: dict[str, Any], options: Settings) -> None:
    _request_or_400(fn, body, options)


@settings(max_examples=300)
@given(fn=st.sampled_from(CONVERTERS[:2]), body=mutated([RESPONSES_FULL]), options=st.sampled_from(SETTINGS))
def test_mutated_responses_bodies_give_a_request_or_a_400(fn: Any, body: dict[str, Any], options: Settings) -> None:
    _request_or_400(fn, body, options)


@settings(max_examples=200)
@given(body=mutated([OPENAI_FULL]), options=st.sampled_from(SETTINGS))
def test_mutated_chat_bodies_to_responses(body: dict[str, Any], options: Settings) -> None:
    _request_or_400(openai_to_responses, body, options)


@settings(max_examples=200)
@given(body=mutated([ANTHROPIC_FULL]), options=st.sampled_from(SETTINGS))
def test_mutated_anthropic_bodies_to_responses(body: dict[str, Any], options: Settings) -> None:
    _request_or_400(anthropic_to_responses, body, options)
