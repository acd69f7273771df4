"""Request conversion, both ways, field by field, and the 400s."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccproxy_core.errors import InvalidRequest
from ccproxy_plugins.translate.base import Settings
from ccproxy_plugins.translate.requests import anthropic_to_openai, openai_to_anthropic
from tests.translate.strategies import json_values, mutated

DEFAULT = Settings()


def to_anthropic(body: dict[str, Any], settings: Settings = DEFAULT, ignored: list[str] | None = None) -> dict[str, Any]:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], **body}
    before = copy.deepcopy(body)
    out = openai_to_anthropic(body, model="claude-upstream", settings=settings, ignored=[] if ignored is None else ignored)
    assert body == before, "the input must not be modified"
    return out


def to_openai(body: dict[str, Any], settings: Settings = DEFAULT, ignored: list[str] | None = None) -> dict[str, Any]:
    body = {"model": "claude", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **body}
    before = copy.deepcopy(body)
    out = anthropic_to_openai(body, model="gpt-upstream", settings=settings, ignored=[] if ignored is None else ignored)
    assert body == before, "the input must not be modified"
    return out


def rejects(convert: Any, body: dict[str, Any], *words: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        convert(body)
    for word in words:
        assert word in info.value.message, info.value.message
    assert info.value.status == 400


# == OpenAI -> Anthropic ==============================================================


def test_o2a_minimal_and_model_and_default_max_tokens() -> None:
    assert to_anthropic({}) == {
        "model": "claude-upstream",
        "max_tokens": 8192,
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert to_anthropic({}, Settings(default_max_tokens=1000))["max_tokens"] == 1000


def test_o2a_max_tokens_fields() -> None:
    assert to_anthropic({"max_tokens": 50})["max_tokens"] == 50
    assert to_anthropic({"max_completion_tokens": 70, "max_tokens": 50})["max_tokens"] == 70


def test_o2a_system_and_developer_messages_wherever_they_occur() -> None:
    out = to_anthropic(
        {
            "messages": [
                {"role": "system", "content": "A"},
                {"role": "developer", "content": [{"type": "text", "text": "B"}]},
                {"role": "user", "content": "hi"},
                {"role": "developer", "content": "C"},
                {"role": "assistant", "content": "ok"},
            ]
        }
    )
    assert out["system"] == [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]
    assert out["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": [{"type": "text", "text": "C"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
    ]


def test_o2a_user_parts_text_and_images() -> None:
    out = to_anthropic(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    ],
                }
            ]
        }
    )
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_o2a_pdf_and_text_files() -> None:
    out = to_anthropic(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
                        {"type": "file", "file": {"file_data": "data:text/plain;base64,aMOpbGxv"}},
                    ],
                }
            ]
        }
    )
    assert out["messages"][0]["content"] == [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}, "title": "a.pdf"},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "héllo"}},
    ]


def test_o2a_tool_calls_and_results_merged_in_order() -> None:
    out = to_anthropic(
        {
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": '{"city": "Paris"}'}},
                        {"id": "call:2", "type": "function", "function": {"name": "t", "arguments": ""}},
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call:2", "content": [{"type": "text", "text": "noon"}]},
                {"role": "user", "content": "thanks"},
                {"role": "assistant", "content": "bye"},
            ]
        }
    )
    assert out["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "w", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "t", "input": {}},
        ],
    }
    assert out["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
            {"type": "text", "text": "thanks"},
        ],
    }
    assert len(out["messages"]) == 4


def test_o2a_tools_and_tool_choice() -> None:
    tools = [
        {"type": "function", "function": {"name": "w", "description": "Weather", "parameters": {"type": "object", "properties": {"c": {"type": "string"}}}, "strict": True}},
        {"type": "function", "function": {"name": "n"}},
    ]
    out = to_anthropic({"tools": tools})
    assert out["tools"] == [
        {"name": "w", "input_schema": {"type": "object", "properties": {"c": {"type": "string"}}}, "description": "Weather", "strict": True},
        {"name": "n", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in out
    for choice, expected in [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "w"}}, {"type": "tool", "name": "w"}),
    ]:
        assert to_anthropic({"tools": tools, "tool_choice": choice})["tool_choice"] == expected


def test_o2a_parallel_tool_calls_false() -> None:
    tools = [{"type": "function", "function": {"name": "w"}}]
    assert to_anthropic({"tools": tools, "parallel_tool_calls": False})["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    assert to_anthropic({"tools": tools, "tool_choice": "required", "parallel_tool_calls": False})["tool_choice"] == {
        "type": "any",
        "disable_parallel_tool_use": True,
    }
    assert to_anthropic({"tools": tools, "tool_choice": "none", "parallel_tool_calls": False})["tool_choice"] == {"type": "none"}
    assert "tool_choice" not in to_anthropic({"tools": tools, "parallel_tool_calls": True})


def test_o2a_sampling_stop_user() -> None:
    out = to_anthropic({"stop": "END", "temperature": 0.3, "top_p": 0.9, "user": "u-1"})
    assert out["stop_sequences"] == ["END"]
    assert (out["temperature"], out["top_p"]) == (0.3, 0.9)
    assert out["metadata"] == {"user_id": "u-1"}
    assert to_anthropic({"stop": ["a", "b"]})["stop_sequences"] == ["a", "b"]
    assert to_anthropic({"temperature": 1.7})["temperature"] == 1.0  # clamped to Anthropic's range
    assert to_anthropic({"safety_identifier": "s-1"})["metadata"] == {"user_id": "s-1"}


@pytest.mark.parametrize(
    ("effort", "budget"), [("minimal", 1024), ("low", 4096), ("medium", 8192), ("high", 16384), ("xhigh", 32768)]
)
def test_o2a_reasoning_effort_to_thinking_budget(effort: str, budget: int) -> None:
    out = to_anthropic({"reasoning_effort": effort, "max_completion_tokens": 64000})
    assert out["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert out["max_tokens"] == 64000


def test_o2a_reasoning_budget_and_max_tokens() -> None:
    out = to_anthropic({"reasoning_effort": "high"})  # default max_tokens grows to fit the budget
    assert out["thinking"]["budget_tokens"] == 16384 and out["max_tokens"] == 16384 + 8192
    out = to_anthropic({"reasoning_effort": "high", "max_tokens": 5000})  # the client's cap caps the budget
    assert out["thinking"]["budget_tokens"] == 4999 and out["max_tokens"] == 5000
    assert "thinking" not in to_anthropic({"reasoning_effort": "none"})
    rejects(to_anthropic, {"reasoning_effort": "low", "max_tokens": 1000}, "reasoning_effort", "1024")
    rejects(to_anthropic, {"reasoning_effort": "extreme"}, "reasoning_effort")


def test_o2a_reasoning_effort_skipped_inside_a_tool_loop() -> None:
    ignored: list[str] = []
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "r"},
    ]
    out = to_anthropic({"messages": messages, "reasoning_effort": "low"}, ignored=ignored)
    assert "thinking" not in out and ignored == ["reasoning_effort"]
    done = [*messages, {"role": "assistant", "content": "answer"}, {"role": "user", "content": "more"}]
    assert "thinking" in to_anthropic({"messages": done, "reasoning_effort": "low"})


def test_o2a_stream_and_stream_options() -> None:
    out = to_anthropic({"stream": True, "stream_options": {"include_usage": True}})
    assert out["stream"] is True and "stream_options" not in out


def test_o2a_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}
    out = to_anthropic({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}})
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "output_config" not in to_anthropic({"response_format": {"type": "text"}})
    rejects(to_anthropic, {"response_format": {"type": "json_object"}}, "response_format", "json_object")


def test_o2a_ignored_fields_are_reported_not_sent() -> None:
    ignored: list[str] = []
    out = to_anthropic({"seed": 1, "store": True, "metadata": {"a": "b"}, "frequency_penalty": 0.5, "x_vendor": 1}, ignored=ignored)
    assert ignored == ["seed", "store", "metadata", "frequency_penalty", "x_vendor"]
    assert not set(ignored) & set(out)


def test_o2a_top_k_passes() -> None:
    assert to_anthropic({"top_k": 40})["top_k"] == 40


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"n": 2}, ["n > 1"]),
        ({"logprobs": True}, ["logprobs"]),
        ({"top_logprobs": 3}, ["top_logprobs"]),
        ({"logit_bias": {"50256": -100}}, ["logit_bias"]),
        ({"audio": {"voice": "alloy", "format": "wav"}}, ["audio"]),
        ({"modalities": ["text", "audio"]}, ["modalities"]),
        ({"web_search_options": {}}, ["web_search_options"]),
        ({"functions": [{"name": "f"}]}, ["functions"]),
        ({"tools": [{"type": "custom", "custom": {"name": "c"}}]}, ["tools[0]", "custom"]),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "allowed_tools"}}, ["allowed_tools"]),
        ({"tool_choice": "required"}, ["tool_choice"]),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}]}, ["messages[0].content[0]", "audio"]),
        ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]}, ["file_id"]),
        ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_data": "data:image/gif;base64,R0l="}}]}]}, ["image/gif"]),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}]}]}, ["base64"]),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{bad"}}]}]}, ["messages[0].tool_calls[0].function.arguments", "JSON"]),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}, ["object"]),
        ({"messages": [{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}]}, ["function_call"]),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, ["function"]),
        ({"messages": [{"role": "tool", "content": "x"}]}, ["tool_call_id"]),
        ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}]}, ["messages[0].content[0]"]),
        ({"messages": [{"role": "wizard", "content": "x"}]}, ["wizard"]),
        ({"messages": []}, ["messages"]),
        ({"temperature": "hot"}, ["temperature"]),
    ],
)
def test_o2a_400s(body: dict[str, Any], words: list[str]) -> None:
    rejects(to_anthropic, body, *words)


# == Anthropic -> OpenAI ==============================================================


def test_a2o_minimal() -> None:
    assert to_openai({}) == {
        "model": "gpt-upstream",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 100,
    }
    assert to_openai({}, Settings(max_tokens_field="max_tokens"))["max_tokens"] == 100


def test_a2o_system_string_blocks_and_inline_system_messages() -> None:
    assert to_openai({"system": "S"})["messages"][0] == {"role": "system", "content": "S"}
    out = to_openai(
        {
            "system": [{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "B"}],
            "messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": [{"type": "text", "text": "C"}]}],
        }
    )
    assert out["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]},
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "C"},
    ]


def test_a2o_user_blocks() -> None:
    out = to_openai(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "see"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                        {"type": "document", "title": "r.pdf", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
                        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain"}},
                    ],
                }
            ]
        }
    )
    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "see"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                {"type": "file", "file": {"filename": "r.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
                {"type": "text", "text": "plain"},
            ],
        }
    ]
    single = to_openai({"messages": [{"role": "user", "content": [{"type": "text", "text": "only"}]}]})
    assert single["messages"] == [{"role": "user", "content": "only"}]


def test_a2o_assistant_tool_use_and_results_in_order() -> None:
    out = to_openai(
        {
            "messages": [
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                        {"type": "text", "text": "Running."},
                        {"type": "tool_use", "id": "toolu_a", "name": "bash", "input": {"cmd": "ls"}},
                        {"type": "tool_use", "id": "toolu_b", "name": "read", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_a", "content": "a.py"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_b",
                            "is_error": True,
                            "content": [
                                {"type": "text", "text": "line1"},
                                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QQ"}},
                                {"type": "text", "text": "line2"},
                            ],
                        },
                        {"type": "text", "text": "continue"},
                    ],
                },
            ]
        }
    )
    assert out["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Running.",
            "tool_calls": [
                {"id": "toolu_a", "type": "function", "function": {"name": "bash", "arguments": '{"cmd":"ls"}'}},
                {"id": "toolu_b", "type": "function", "function": {"name": "read", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_a", "content": "a.py"},
        {
            "role": "tool",
            "tool_call_id": "toolu_b",
            "content": [{"type": "text", "text": "line1"}, {"type": "text", "text": "line2"}],
        },
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,QQ"}},
                {"type": "text", "text": "continue"},
            ],
        },
    ]


def test_a2o_assistant_with_only_tool_calls_has_null_content() -> None:
    out = to_openai(
        {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]}]}
    )
    assert out["messages"][0]["content"] is None


def test_a2o_tools_and_tool_choice() -> None:
    tools = [
        {"name": "f", "description": "F", "input_schema": {"type": "object", "properties": {}}, "cache_control": {"type": "ephemeral"}},
        {"type": "custom", "name": "g", "input_schema": {"type": "object"}, "strict": True},
    ]
    out = to_openai({"tools": tools})
    assert out["tools"] == [
        {"type": "function", "function": {"name": "f", "description": "F", "parameters": {"type": "object", "properties": {}}}},
        {"type": "function", "function": {"name": "g", "parameters": {"type": "object"}, "strict": True}},
    ]
    for choice, expected in [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ]:
        assert to_openai({"tools": tools, "tool_choice": choice})["tool_choice"] == expected
    out = to_openai({"tools": tools, "tool_choice": {"type": "any", "disable_parallel_tool_use": True}})
    assert out["parallel_tool_calls"] is False
    assert "parallel_tool_calls" not in to_openai({"tools": tools, "tool_choice": {"type": "auto"}})


def test_a2o_sampling_stop_user() -> None:
    out = to_openai({"temperature": 0.2, "top_p": 0.8, "stop_sequences": ["\n\nHuman:"], "metadata": {"user_id": "u"}})
    assert (out["temperature"], out["top_p"], out["stop"], out["user"]) == (0.2, 0.8, ["\n\nHuman:"], "u")


def test_the_upstream_streams_only_when_asked_to() -> None:
    """``stream`` is ``ctx.upstream_stream`` (a provider with ``supports_streaming: false`` gets JSON)."""
    client = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    for out in (
        anthropic_to_openai(client, model="g", settings=DEFAULT, ignored=[], stream=False),
        openai_to_anthropic({**client, "stream_options": {"include_usage": True}}, model="c", settings=DEFAULT,
                            ignored=[], stream=False),
    ):
        assert "stream" not in out and "stream_options" not in out
    out = anthropic_to_openai(client, model="g", settings=DEFAULT, ignored=[], stream=True, stream_usage=False)
    assert out["stream"] is True and "stream_options" not in out


def test_a2o_stream_always_asks_for_usage() -> None:
    out = to_openai({"stream": True})
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert "stream_options" not in to_openai({"stream": False})


@pytest.mark.parametrize(
    ("thinking", "effort"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, "low"),
        ({"type": "enabled", "budget_tokens": 4095}, "low"),
        ({"type": "enabled", "budget_tokens": 4096}, "medium"),
        ({"type": "enabled", "budget_tokens": 16383}, "medium"),
        ({"type": "enabled", "budget_tokens": 31999}, "high"),
        ({"type": "disabled"}, None),
        ({"type": "adaptive"}, None),
    ],
)
def test_a2o_thinking_to_reasoning_effort(thinking: dict[str, Any], effort: str | None) -> None:
    assert to_openai({"thinking": thinking}).get("reasoning_effort") == effort


def test_a2o_output_config() -> None:
    assert to_openai({"thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}})["reasoning_effort"] == "high"
    assert to_openai({"output_config": {"effort": "low"}})["reasoning_effort"] == "low"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    out = to_openai({"output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert out["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    rejects(to_openai, {"output_config": {"effort": "ludicrous"}}, "output_config.effort")


def test_a2o_reasoning_effort_can_be_turned_off() -> None:
    ignored: list[str] = []
    out = to_openai({"thinking": {"type": "enabled", "budget_tokens": 2000}}, Settings(reasoning_effort=False), ignored)
    assert "reasoning_effort" not in out and ignored == ["thinking"]


def test_a2o_claude_code_extras_are_ignored_not_fatal() -> None:
    ignored: list[str] = []
    out = to_openai({"context_management": {"edits": []}, "top_k": 5, "service_tier": "auto"}, ignored=ignored)
    assert ignored == ["context_management", "top_k", "service_tier"]
    assert not set(ignored) & set(out)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"mcp_servers": [{"type": "url", "url": "https://x", "name": "m"}]}, ["mcp_servers"]),
        ({"container": "c1"}, ["container"]),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, ["tools[0]", "web_search_20250305"]),
        ({"tool_choice": {"type": "any"}}, ["tool_choice"]),
        ({"messages": [{"role": "user", "content": [{"type": "search_result", "source": "s", "title": "t", "content": []}]}]}, ["messages[0].content[0]", "search_result"]),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}, ["image source", "file"]),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://x.pdf"}}]}]}, ["document source"]),
        ({"messages": [{"role": "assistant", "content": [{"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]}, ["server_tool_use"]),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "x"}}]}]}]}, ["tool result"]),
        ({"system": [{"type": "image", "source": {}}]}, ["system[0]"]),
        ({"messages": [{"role": "tool", "content": "x"}]}, ["messages[0].role"]),
    ],
)
def test_a2o_400s(body: dict[str, Any], words: list[str]) -> None:
    rejects(to_openai, body, *words)


# == Round trips =======================================================================


def test_round_trip_openai_anthropic_openai_keeps_the_conversation() -> None:
    original = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "r"},
            {"role": "assistant", "content": "done"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "required",
        "max_completion_tokens": 100,
        "stop": ["x"],
    }
    anthropic_body = openai_to_anthropic(original, model="a", settings=DEFAULT, ignored=[])
    back = anthropic_to_openai(anthropic_body, model="m", settings=DEFAULT, ignored=[])
    assert back == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "r"},
            {"role": "assistant", "content": "done"},
        ],
        "max_completion_tokens": 100,
        "stop": ["x"],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "required",
    }


# == Malformed fields: a 400 naming the field path ====================================


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": "hi"}, "messages: expected a non-empty array, got a string"),
        ({"messages": None}, "messages: expected a non-empty array, got null"),
        ({"messages": [5]}, "messages[0]: expected an object, got a number"),
        ({"messages": [{"content": "x"}]}, "messages[0].role: expected a string, got null"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content: expected a string or an array of content parts, got a number"),
        ({"messages": [{"role": "user"}]}, "messages[0].content: expected a string or an array of content parts, got null"),
        ({"messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content[0]: expected an object, got a string"),
        ({"messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages[0].content[0].type: expected a string, got null"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text: expected a string, got a number"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "cache_control": True}]}]}, "messages[0].content[0].cache_control: expected an object, got a boolean"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": [{"type": "image_url", "image_url": "https://x/y.png"}]}]}, "messages[2].content[0].image_url: expected an object, got a string"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}]}, "messages[0].content[0].image_url.url: expected a non-empty string, got an empty string"),
        ({"messages": [{"role": "user", "content": [{"type": "file", "file": "f"}]}]}, "messages[0].content[0].file: expected an object, got a string"),
        ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_data": "data:text/plain;base64,/w=="}}]}]}, "messages[0].content[0].file.file_data is not base64 UTF-8 text"),
        ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_data": "data:text/plain;base64,é"}}]}]}, "messages[0].content[0].file.file_data is not base64 UTF-8 text"),
        ({"messages": [{"role": "system", "content": [{"type": "text", "text": None}]}]}, "messages[0].content[0].text: expected a string, got null"),
        ({"messages": [{"role": "assistant", "content": 5}]}, "messages[0].content: expected a string or an array of content parts, got a number"),
        ({"messages": [{"role": "assistant", "refusal": ["no"]}]}, "messages[0].refusal: expected a string, got an array"),
        ({"messages": [{"role": "assistant", "tool_calls": "x"}]}, "messages[0].tool_calls: expected an array, got a string"),
        ({"messages": [{"role": "assistant", "tool_calls": [None]}]}, "messages[0].tool_calls[0]: expected an object, got null"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": "f"}]}]}, "messages[0].tool_calls[0].function: expected an object, got a string"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]}]}, "messages[0].tool_calls[0].function.name: expected a non-empty string, got null"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}]}]}, "messages[0].tool_calls[0].function.arguments: expected a string, got an object"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[" * 100_000}}]}]}, "messages[0].tool_calls[0].function.arguments: not valid JSON"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": 7, "function": {"name": "f"}}]}]}, "messages[0].tool_calls[0].id: expected a non-empty string, got a number"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": 1, "function": {"name": "f"}}]}]}, "messages[0].tool_calls[0].type: expected a string, got a number"),
        ({"messages": [{"role": "tool", "tool_call_id": "", "content": "x"}]}, "messages[0].tool_call_id: expected a non-empty string, got an empty string"),
        ({"messages": [{"role": "tool", "tool_call_id": "c", "content": 5}]}, "messages[0].content: expected a string or an array of content parts, got a number"),
        ({"tools": True}, "tools: expected an array, got a boolean"),
        ({"tools": [5]}, "tools[0]: expected an object, got a number"),
        ({"tools": [{"type": "function", "function": "f"}]}, "tools[0].function: expected an object, got a string"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools[0].function.parameters: expected an object, got a string"),
        ({"tools": [{"type": "function", "function": {"name": "f", "description": 1}}]}, "tools[0].function.description: expected a string, got a number"),
        ({"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]}, "tools[0].function.strict: expected true or false, got a string"),
        ({"tool_choice": 5}, "tool_choice: expected a string or an object, got a number"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": "f"}}, "tool_choice.function: expected an object, got a string"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"function": {"name": "f"}}}, "tool_choice.type: expected a string, got null"),
        ({"parallel_tool_calls": "no"}, "parallel_tool_calls: expected true or false, got a string"),
        ({"stop": 5}, "stop: expected a string or an array of strings, got a number"),
        ({"stop": {"a": 1}}, "stop: expected a string or an array of strings, got an object"),
        ({"stop": ["a", 1]}, "stop[1]: expected a string, got a number"),
        ({"max_tokens": "10"}, "max_tokens: expected an integer, got a string"),
        ({"max_completion_tokens": 1.5}, "max_completion_tokens: expected an integer, got a number"),
        ({"temperature": True}, "temperature: expected a number, got a boolean"),
        ({"top_p": "1"}, "top_p: expected a number, got a string"),
        ({"top_k": 1.5}, "top_k: expected an integer, got a number"),
        ({"n": True}, "n: expected an integer, got a boolean"),
        ({"user": 5}, "user: expected a string, got a number"),
        ({"safety_identifier": {}}, "safety_identifier: expected a string, got an object"),
        ({"reasoning_effort": ["high"]}, "reasoning_effort: expected a string, got an array"),
        ({"response_format": "json"}, "response_format: expected an object, got a string"),
        ({"response_format": {}}, "response_format.type: expected a string, got null"),
        ({"response_format": {"type": "json_schema", "json_schema": "x"}}, "response_format.json_schema: expected an object, got a string"),
        ({"stream_options": True}, "stream_options: expected an object, got a boolean"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage: expected true or false, got a string"),
        ({"modalities": "audio"}, "modalities: expected an array, got a string"),
    ],
)
def test_o2a_malformed_fields(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        to_anthropic(body)
    assert info.value.message == message and info.value.status == 400


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": {"role": "user"}}, "messages: expected a non-empty array, got an object"),
        ({"messages": []}, "messages: expected a non-empty array, got an empty array"),
        ({"messages": ["hi"]}, "messages[0]: expected an object, got a string"),
        ({"messages": [{"role": 1, "content": "x"}]}, "messages[0].role: expected a string, got a number"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content: expected a string or an array of content blocks, got null"),
        ({"messages": [{"role": "user", "content": [5]}]}, "messages[0].content[0]: expected an object, got a number"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text: expected a string, got null"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": "x"}]}]}, "messages[0].content[0].source: expected an object, got a string"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png"}}]}]}, "messages[0].content[0].source.data: expected a string, got null"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": 5}}]}]}, "messages[0].content[0].source.url: expected a non-empty string, got a number"),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": None}}]}]}, "messages[0].content[0].source.data: expected a string, got null"),
        ({"messages": [{"role": "user", "content": [{"type": "document", "title": 5, "source": {"type": "base64", "media_type": "application/pdf", "data": "JV"}}]}]}, "messages[0].content[0].title: expected a string, got a number"),
        ({"messages": [{"role": "user", "content": [{"type": "video", "source": {}}]}]}, "messages[0].content[0]: content block type 'video' cannot be translated to the OpenAI Chat Completions API"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]}, "messages[0].content[0].tool_use_id: expected a non-empty string, got null"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": 5}]}]}, "messages[0].content[0].content: expected a string or an array of content blocks, got a number"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": ["x"]}]}]}, "messages[0].content[0].content[0]: expected an object, got a string"),
        ({"messages": [{"role": "assistant", "content": {"type": "text"}}]}, "messages[0].content: expected a string or an array of content blocks, got an object"),
        ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "x"}]}]}, "messages[0].content[0].input: expected an object, got a string"),
        ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "input": {}}]}]}, "messages[0].content[0].name: expected a non-empty string, got null"),
        ({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]}]}, "messages[0].content[0].id: expected a non-empty string, got null"),
        ({"messages": [{"role": "assistant", "content": [{"type": "web_fetch_tool_result", "tool_use_id": "s", "content": {}}]}]}, "messages[0].content[0]: content block type 'web_fetch_tool_result' cannot be translated to the OpenAI Chat Completions API"),
        ({"messages": [{"role": "assistant", "content": [{"text": "x"}]}]}, "messages[0].content[0].type: expected a string, got null"),
        ({"system": 5}, "system: expected a string or an array of text blocks, got a number"),
        ({"system": False}, "system: expected a string or an array of text blocks, got a boolean"),
        ({"system": [{"type": "text", "text": 5}]}, "system[0].text: expected a string, got a number"),
        ({"metadata": True}, "metadata: expected an object, got a boolean"),
        ({"metadata": {"user_id": 5}}, "metadata.user_id: expected a string, got a number"),
        ({"max_tokens": "100"}, "max_tokens: expected an integer, got a string"),
        ({"temperature": "warm"}, "temperature: expected a number, got a string"),
        ({"top_p": []}, "top_p: expected a number, got an empty array"),
        ({"stop_sequences": "END"}, "stop_sequences: expected an array, got a string"),
        ({"stop_sequences": ["a", None]}, "stop_sequences[1]: expected a string, got null"),
        ({"tools": {"name": "f"}}, "tools: expected an array, got an object"),
        ({"tools": ["f"]}, "tools[0]: expected an object, got a string"),
        ({"tools": [{"name": 5}]}, "tools[0].name: expected a non-empty string, got a number"),
        ({"tools": [{"name": "f", "input_schema": []}]}, "tools[0].input_schema: expected an object, got an empty array"),
        ({"tools": [{"name": "f", "strict": 1}]}, "tools[0].strict: expected true or false, got a number"),
        ({"tool_choice": "auto"}, "tool_choice: expected an object, got a string"),
        ({"tool_choice": {"name": "f"}}, "tool_choice.type: expected a string, got null"),
        ({"tools": [{"name": "f"}], "tool_choice": {"type": "tool"}}, "tool_choice.name: expected a non-empty string, got null"),
        ({"tools": [{"name": "f"}], "tool_choice": {"type": "auto", "disable_parallel_tool_use": "yes"}}, "tool_choice.disable_parallel_tool_use: expected true or false, got a string"),
        ({"thinking": True}, "thinking: expected an object, got a boolean"),
        ({"thinking": {"budget_tokens": 2000}}, "thinking.type: expected a string, got null"),
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens: expected an integer, got null"),
        ({"thinking": {"type": "enabled", "budget_tokens": "2000"}}, "thinking.budget_tokens: expected an integer, got a string"),
        ({"output_config": 5}, "output_config: expected an object, got a number"),
        ({"output_config": {"effort": ["high"]}}, "output_config.effort: expected a string, got an array"),
        ({"output_config": {"format": "json"}}, "output_config.format: expected an object, got a string"),
        ({"output_config": {"format": {"type": "json_object"}}}, "output_config.format type 'json_object' cannot be translated (json_schema only)"),
        ({"output_config": {"format": {"type": "json_schema", "schema": True}}}, "output_config.format.schema: expected an object, got a boolean"),
    ],
)
def test_a2o_malformed_fields(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        to_openai(body)
    assert info.value.message == message and info.value.status == 400


def test_malformed_fields_are_checked_even_when_a_setting_skips_them() -> None:
    rejects(lambda b: to_openai(b, Settings(reasoning_effort=False)), {"thinking": "on"}, "thinking: expected an object")
    tool_turn = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "r"},
    ]
    rejects(to_anthropic, {"messages": tool_turn, "reasoning_effort": "turbo"}, "reasoning_effort 'turbo'")


# == Random JSON: a dict or a 400, nothing else =======================================

OPENAI_FULL: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "S"},
        {"role": "developer", "content": [{"type": "text", "text": "D", "cache_control": {"type": "ephemeral"}}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
                {"type": "file", "file": {"file_data": "data:text/plain;base64,aMOpbGxv"}},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Checking."}],
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": '{"city": "Paris"}'}},
                {"id": "call:2", "type": "function", "function": {"name": "t", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call:2", "content": [{"type": "text", "text": "noon"}]},
        {"role": "user", "content": "thanks"},
        {"role": "assistant", "content": None, "refusal": "no"},
        {"role": "developer", "content": "late"},
        {"role": "user", "content": "more"},
    ],
    "tools": [
        {"type": "function", "function": {"name": "w", "description": "Weather", "parameters": {"type": "object"}, "strict": True}},
        {"type": "function", "function": {"name": "t"}, "cache_control": {"type": "ephemeral"}},
    ],
    "tool_choice": {"type": "function", "function": {"name": "w"}},
    "parallel_tool_calls": False,
    "stop": ["END"],
    "max_completion_tokens": 30000,
    "max_tokens": 100,
    "temperature": 1.5,
    "top_p": 0.9,
    "top_k": 5,
    "user": "u",
    "safety_identifier": "s",
    "reasoning_effort": "high",
    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    "stream": True,
    "stream_options": {"include_usage": True},
    "modalities": ["text"],
    "n": 1,
    "seed": 1,
    "metadata": {"a": "b"},
}

ANTHROPIC_FULL: dict[str, Any] = {
    "model": "claude",
    "max_tokens": 1000,
    "system": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "T"}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "document", "title": "a", "source": {"type": "base64", "media_type": "application/pdf", "data": "JV"}},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hello"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hm", "signature": "sig"},
                {"type": "redacted_thinking", "data": "x"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny", "is_error": False},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "text", "text": "noon"},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                ]},
                {"type": "text", "text": "thanks"},
            ],
        },
        {"role": "system", "content": "late"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "more"},
    ],
    "tools": [
        {"name": "w", "description": "Weather", "input_schema": {"type": "object"}, "strict": True},
        {"type": "custom", "name": "t", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}},
    ],
    "tool_choice": {"type": "tool", "name": "w", "disable_parallel_tool_use": True},
    "stop_sequences": ["END"],
    "temperature": 0.5,
    "top_p": 0.9,
    "top_k": 5,
    "metadata": {"user_id": "u"},
    "thinking": {"type": "enabled", "budget_tokens": 5000},
    "output_config": {"effort": "high", "format": {"type": "json_schema", "schema": {"type": "object"}}},
    "stream": True,
    "context_management": {"edits": []},
}  # fmt: skip

CONVERTERS = [openai_to_anthropic, anthropic_to_openai]
SETTINGS = [DEFAULT, Settings(reasoning_effort=False, max_tokens_field="max_tokens", thinking="drop")]
TOP_KEYS = sorted({*OPENAI_FULL, *ANTHROPIC_FULL})
random_bodies = st.dictionaries(st.sampled_from(TOP_KEYS) | st.text(max_size=8), json_values, max_size=8)


def test_the_fuzz_seed_bodies_are_valid() -> None:
    assert openai_to_anthropic(OPENAI_FULL, model="m", settings=DEFAULT, ignored=[])["tools"]
    assert anthropic_to_openai(ANTHROPIC_FULL, model="m", settings=DEFAULT, ignored=[])["tools"]


def _dict_or_400(convert: Any, body: dict[str, Any], settings: Settings) -> None:
    before = copy.deepcopy(body)
    try:
        out = convert(body, model="m", settings=settings, ignored=[])
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.message
    else:
        assert isinstance(out, dict) and out["messages"]
        json.dumps(out, allow_nan=False)
    assert body == before, "the input must not be modified"


@settings(max_examples=300)
@given(
    convert=st.sampled_from(CONVERTERS),
    body=st.one_of(random_bodies, mutated([OPENAI_FULL, ANTHROPIC_FULL])),
    options=st.sampled_from(SETTINGS),
)
def test_random_json_gives_a_dict_or_a_400(convert: Any, body: dict[str, Any], options: Settings) -> None:
    _dict_or_400(convert, body, options)


@settings(max_examples=300)
@given(body=mutated([OPENAI_FULL]), options=st.sampled_from(SETTINGS))
def test_mutated_openai_bodies_give_a_dict_or_a_400(body: dict[str, Any], options: Settings) -> None:
    _dict_or_400(openai_to_anthropic, body, options)


@settings(max_examples=300)
@given(body=mutated([ANTHROPIC_FULL]), options=st.sampled_from(SETTINGS))
def test_mutated_anthropic_bodies_give_a_dict_or_a_400(body: dict[str, Any], options: Settings) -> None:
    _dict_or_400(anthropic_to_openai, body, options)
