"""Official SDKs' streaming helpers against providers with ``supports_streaming: false``.

The upstream gets a JSON request (``"stream": false``); the client, which asked for a stream, gets a
valid stream in its own dialect synthesised from the JSON answer by the translate plugin's response
adapter (text, tool calls with their inputs, usage, stop reason), same dialect and translated.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from ccproxy_plugins import translate
from tests.servers import ProxyThread, provider_config
from tests.translate.test_e2e import streamed_tool_calls

CLAUDE = "claude-sonnet-4-5"
GPT = "gpt-4o"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def proxy(mock: Any) -> Iterator[ProxyThread]:
    config = provider_config(mock.url, retries={"max_attempts": 1})
    for provider in config["providers"].values():
        provider["supports_streaming"] = False
    with ProxyThread(config, plugins=[("translate", translate)]) as server:
        yield server


def _upstream_asked_json(mock: Any) -> None:
    sent = mock.upstream.requests[-1].json()
    # Same dialect: "stream": false replaces the client's true; translated: no "stream" (the default, false).
    assert sent.get("stream", False) is False and "stream_options" not in sent


@pytest.mark.parametrize("model", [CLAUDE, GPT], ids=["same-dialect", "translated"])
@pytest.mark.parametrize("content", ["text", "tools"])
def test_anthropic_messages_stream(proxy, upstream, model, content):
    client = anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0,
                                 default_headers={"x-mock-content": content})
    with client.messages.stream(model=model, max_tokens=64, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    _upstream_asked_json(upstream)
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    if content == "text":
        assert text and final.content[0].type == "text" and final.content[0].text == text
        assert final.stop_reason == "end_turn"
    else:
        tool = next(block for block in final.content if block.type == "tool_use")
        assert tool.name and isinstance(tool.input, dict) and tool.input
        assert final.stop_reason == "tool_use"


@pytest.mark.parametrize("model", [GPT, CLAUDE], ids=["same-dialect", "translated"])
@pytest.mark.parametrize("content", ["text", "tools"])
def test_openai_stream_true(proxy, upstream, model, content):
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0,
                           default_headers={"x-mock-content": content})
    chunks = list(client.chat.completions.create(
        model=model, messages=HI, stream=True, stream_options={"include_usage": True}
    ))
    _upstream_asked_json(upstream)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = streamed_tool_calls(chunks)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    if content == "text":
        assert text and finish == ["stop"]
    else:
        assert calls and all(c["name"] and json.loads(c["arguments"]) for c in calls.values())
        assert finish == ["tool_calls"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_a_client_that_did_not_ask_gets_json(proxy, upstream):
    client = anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0)
    message = client.messages.create(model=GPT, max_tokens=64, messages=HI)
    assert message.content[0].text and message.stop_reason == "end_turn"
