"""Official SDKs across dialects: text, multi-turn with images and tool results, tools streamed and not."""

from __future__ import annotations

import base64
import json
from typing import Any

from tests.translate.test_e2e import CLAUDE, GPT, HI, anthropic_client, mock_headers, openai_client, proxy  # noqa: F401

PIXEL = base64.b64encode(bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")).decode()
MOCK_TEXT = "Hello from the mock upstream."
WEATHER_TOOL_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_TOOL_ANTHROPIC = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_openai_client_plain_text_stream_from_anthropic(proxy: Any) -> None:
    stream = openai_client(proxy, **mock_headers(delay="5")).chat.completions.create(model=CLAUDE, messages=HI, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == MOCK_TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # streamed, not one lump


def test_anthropic_client_plain_text_stream_from_openai(proxy: Any) -> None:
    with anthropic_client(proxy, **mock_headers(delay="5")).messages.stream(model=GPT, max_tokens=50, messages=HI) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == MOCK_TEXT and len(pieces) > 1
    assert final.content[0].text == MOCK_TEXT and final.stop_reason == "end_turn"


def test_openai_multi_turn_with_images_and_tool_results_reaches_anthropic(proxy: Any, upstream: Any) -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rainy"},
    ]
    completion = openai_client(proxy).chat.completions.create(
        model=CLAUDE, messages=messages, tools=[WEATHER_TOOL_OPENAI], tool_choice="auto", max_tokens=40
    )
    assert completion.choices[0].message.content == MOCK_TEXT
    sent = upstream.upstream.requests[-1].json()
    assert sent["system"] == [{"type": "text", "text": "Be brief."}]
    user, assistant, results = sent["messages"]
    assert [b["type"] for b in user["content"]] == ["text", "image", "image"]
    assert user["content"][1]["source"] == {"type": "base64", "media_type": "image/png", "data": PIXEL}
    assert user["content"][2]["source"] == {"type": "url", "url": "https://example.com/cat.png"}
    assert [(b["type"], b["input"]) for b in assistant["content"]] == [("tool_use", {"city": "Paris"}), ("tool_use", {"city": "Rome"})]
    assert [(b["type"], b["content"]) for b in results["content"]] == [("tool_result", "sunny"), ("tool_result", "rainy")]
    assert results["content"][0]["tool_use_id"] == assistant["content"][0]["id"]
    assert sent["tools"][0]["input_schema"]["required"] == ["city"] and sent["tool_choice"] == {"type": "auto"}


def test_anthropic_multi_turn_with_images_and_tool_results_reaches_openai(proxy: Any, upstream: Any) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather where this was taken?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
            ],
        },
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "snow"}]},
    ]
    message = anthropic_client(proxy).messages.create(
        model=GPT, max_tokens=40, system="Be brief.", messages=messages, tools=[WEATHER_TOOL_ANTHROPIC],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert message.content[0].text == MOCK_TEXT
    sent = upstream.upstream.requests[-1].json()
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    image = sent["messages"][1]["content"][1]
    assert image == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}
    call = sent["messages"][2]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert sent["messages"][3] == {"role": "tool", "tool_call_id": call["id"], "content": "snow"}
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["max_completion_tokens"] == 40


def test_openai_client_tool_calls_not_streamed_from_anthropic(proxy: Any) -> None:
    completion = openai_client(proxy, **mock_headers(content="parallel_tools")).chat.completions.create(
        model=CLAUDE, messages=HI, tools=[WEATHER_TOOL_OPENAI]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 2
    assert all(isinstance(json.loads(c.function.arguments), dict) for c in choice.message.tool_calls)


def test_openai_client_single_tool_call_streamed_from_anthropic(proxy: Any) -> None:
    chunks = list(
        openai_client(proxy, **mock_headers(content="tools", split="1")).chat.completions.create(
            model=CLAUDE, messages=HI, tools=[WEATHER_TOOL_OPENAI], stream=True
        )
    )
    fragments = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert fragments[0].id and fragments[0].function.name and len(fragments) > 2  # arguments arrive in pieces
    assert json.loads("".join(f.function.arguments or "" for f in fragments))


def test_anthropic_client_tools_from_openai_streamed_and_not(proxy: Any) -> None:
    client = anthropic_client(proxy, **mock_headers(content="parallel_tools"))
    with client.messages.stream(model=GPT, max_tokens=50, messages=HI, tools=[WEATHER_TOOL_ANTHROPIC]) as stream:
        streamed = stream.get_final_message()
    plain = client.messages.create(model=GPT, max_tokens=50, messages=HI, tools=[WEATHER_TOOL_ANTHROPIC])
    for message in (streamed, plain):
        tools = [b for b in message.content if b.type == "tool_use"]
        assert message.stop_reason == "tool_use" and len(tools) == 2
        assert all(isinstance(t.input, dict) and t.input for t in tools)


def test_include_usage_honoured_for_openai_clients_of_anthropic(proxy: Any) -> None:
    with_usage = list(openai_client(proxy).chat.completions.create(
        model=CLAUDE, messages=HI, stream=True, stream_options={"include_usage": True}))
    without = list(openai_client(proxy).chat.completions.create(model=CLAUDE, messages=HI, stream=True))
    usage = with_usage[-1].usage
    assert with_usage[-1].choices == [] and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.prompt_tokens_details.cached_tokens > 0  # the mock reports cache reads
    assert all(c.usage is None for c in without) and without[-1].choices
