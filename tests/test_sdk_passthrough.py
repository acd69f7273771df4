"""The official SDKs through the proxy when client and upstream speak the same dialect."""

from __future__ import annotations

import anthropic
import openai
import pytest

MESSAGES = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def claude(proxy):
    return anthropic.Anthropic(base_url=proxy.url, api_key="client-key", max_retries=0)


@pytest.fixture
def gpt(proxy):
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="client-key", max_retries=0)


def test_anthropic_stream_and_create(claude, upstream):
    with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=50, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    message = claude.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=MESSAGES)
    assert message.content[0].text and message.stop_reason == "end_turn"
    assert upstream.upstream.requests[-1].header("x-api-key") == "sk-ant-upstream-SECRET"


def test_anthropic_tool_use_stream(claude):
    with claude.messages.stream(
        model="claude-sonnet-4-5", max_tokens=50, messages=MESSAGES, extra_headers={"x-mock-content": "tools"}
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    tool = next(block for block in final.content if block.type == "tool_use")
    assert isinstance(tool.input, dict) and tool.input


def test_anthropic_rate_limit_is_typed_with_retry_after(claude):
    with pytest.raises(anthropic.RateLimitError) as info:
        claude.messages.create(model="claude-x", max_tokens=5, messages=MESSAGES, extra_headers={"x-mock-status": "429"})
    assert info.value.response.headers["retry-after"] == "7"


def test_openai_stream_and_create(gpt):
    stream = gpt.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    completion = gpt.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert completion.choices[0].message.content and completion.choices[0].finish_reason == "stop"


def test_openai_parallel_tool_calls_stream(gpt):
    stream = gpt.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, extra_headers={"x-mock-content": "parallel_tools"}
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                entry["name"] += call.function.name or ""
                entry["arguments"] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and len(calls) == 2
    assert all(c["name"] and c["arguments"].startswith("{") for c in calls.values())


def test_openai_errors_are_typed(gpt):
    with pytest.raises(openai.NotFoundError):
        gpt.chat.completions.create(model="no-such-model", messages=MESSAGES)
    with pytest.raises(openai.InternalServerError):
        gpt.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers={"x-mock-status": "503"})
