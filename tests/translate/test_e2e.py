"""End to end: official SDK -> ccproxy (with the translate plugin) -> mock upstream of the other dialect."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from ccproxy_plugins import translate
from tests.servers import ProxyThread, provider_config

CLAUDE = "claude-sonnet-4-5"
GPT = "gpt-4o"


@pytest.fixture(scope="module")
def proxy(mock: Any) -> Iterator[ProxyThread]:
    config = provider_config(mock.url, models={"fast": {"model": GPT}, "smart": {"model": CLAUDE}})
    with ProxyThread(config, plugins=[("translate", translate)]) as server:
        yield server


def openai_client(proxy: ProxyThread, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(api_key="proxy-key", base_url=proxy.url + "/v1", max_retries=0, default_headers=headers)


def anthropic_client(proxy: ProxyThread, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="proxy-key", base_url=proxy.url, max_retries=0, default_headers=headers)


def streamed_tool_calls(chunks: list[Any]) -> dict[int, dict[str, str]]:
    """The tool calls an OpenAI client assembles from stream chunks: index -> name and arguments."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
            entry["name"] += call.function.name or ""
            entry["arguments"] += call.function.arguments or ""
    return calls


def mock_headers(**scenario: str) -> dict[str, str]:
    return {f"x-mock-{k.replace('_', '-')}": v for k, v in scenario.items()}


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("scenario", [{}, {"split": "1"}, {"coalesce": "1"}, {"crlf": "1", "split": "1"}, {"gzip": "1"}])
def test_openai_client_streams_from_anthropic_upstream(proxy: ProxyThread, scenario: dict[str, str]) -> None:
    client = openai_client(proxy, **mock_headers(content="parallel_tools", **scenario))
    chunks = list(
        client.chat.completions.create(model=CLAUDE, messages=HI, stream=True, stream_options={"include_usage": True})
    )
    assert len({c.id for c in chunks}) == 1 and chunks[0].choices[0].delta.role == "assistant"
    assert {c.model for c in chunks} == {CLAUDE}
    calls = streamed_tool_calls(chunks)
    assert len(calls) >= 2 and all(json.loads(c["arguments"]) for c in calls.values())
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["tool_calls"]
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens > 0


@pytest.mark.parametrize("scenario", [{}, {"split": "1"}, {"crlf": "1"}, {"gzip": "1"}])
def test_anthropic_client_streams_from_openai_upstream(proxy: ProxyThread, scenario: dict[str, str]) -> None:
    client = anthropic_client(proxy, **mock_headers(content="tools", **scenario))
    with client.messages.stream(model=GPT, max_tokens=100, messages=HI) as stream:
        message = stream.get_final_message()
    assert message.model == GPT
    assert message.stop_reason == "tool_use"
    tool = [b for b in message.content if b.type == "tool_use"][0]
    assert isinstance(tool.input, dict) and tool.input
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


@pytest.mark.parametrize("scenario", [{}, {"split": "1"}])
def test_anthropic_client_gets_interleaved_parallel_tool_calls(proxy: ProxyThread, scenario: dict[str, str]) -> None:
    """An OpenAI upstream alternating the argument pieces of two calls: both reach the client whole."""
    client = anthropic_client(proxy, **mock_headers(content="parallel_tools", interleave="1", **scenario))
    with client.messages.stream(model=GPT, max_tokens=100, messages=HI) as stream:
        events = list(stream)
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    assert [(b.type, b.id, b.input) for b in message.content] == [
        ("tool_use", "call_01A09q90qw90lq917835lq9", {"location": "San Francisco, CA", "unit": "celsius"}),
        ("tool_use", "call_01B77e21rt45kx553390wz2", {"location": "Tokyo, Japan", "unit": "celsius"}),
    ]
    blocks = [(e.type, e.index) for e in events if e.type.startswith("content_block_") and e.type != "content_block_delta"]
    assert blocks == [("content_block_start", 0), ("content_block_stop", 0), ("content_block_start", 1),
                      ("content_block_stop", 1)]
    deltas = [e.index for e in events if e.type == "content_block_delta"]
    assert deltas == sorted(deltas) and deltas.count(0) > 1  # the first call streamed piece by piece


def test_anthropic_client_json_from_openai_upstream(proxy: ProxyThread) -> None:
    message = anthropic_client(proxy).messages.create(model=GPT, max_tokens=100, messages=HI)
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0


def test_openai_client_json_from_anthropic_upstream(proxy: ProxyThread) -> None:
    completion = openai_client(proxy, **mock_headers(content="thinking")).chat.completions.create(model=CLAUDE, messages=HI)
    assert completion.choices[0].message.content
    assert completion.choices[0].message.model_extra.get("reasoning_content")
    assert completion.usage.prompt_tokens > 0


def test_the_upstream_gets_a_translated_request(proxy: ProxyThread, upstream: Any) -> None:
    client = openai_client(proxy, **mock_headers(echo="1"))
    client.chat.completions.create(
        model=CLAUDE,
        messages=[{"role": "system", "content": "S"}, *HI],
        max_completion_tokens=33,
        stop=["END"],
    )
    request = upstream.requests[-1]
    body = request.json()
    assert body["system"] == [{"type": "text", "text": "S"}]
    assert (body["max_tokens"], body["stop_sequences"], body["model"]) == (33, ["END"], CLAUDE)
    assert request.header("anthropic-version") == "2023-06-01"


def test_stream_asks_openai_upstream_for_usage(proxy: ProxyThread, upstream: Any) -> None:
    client = anthropic_client(proxy)
    with client.messages.stream(model=GPT, max_tokens=10, messages=HI) as stream:
        stream.get_final_message()
    body = upstream.requests[-1].json()
    assert body["stream_options"] == {"include_usage": True}
    assert upstream.requests[-1].header("anthropic-version") is None


@pytest.mark.parametrize("ask", [True, False])
def test_request_stream_usage_setting_governs_translated_requests_too(mock: Any, upstream: Any, ask: bool) -> None:
    config = provider_config(mock.url, plugins={"usage": {"request_stream_usage": ask}})
    with ProxyThread(config) as server:
        with anthropic_client(server).messages.stream(model=GPT, max_tokens=10, messages=HI) as stream:
            message = stream.get_final_message()
    body = upstream.requests[-1].json()
    assert body["stream"] is True
    if ask:
        assert body["stream_options"] == {"include_usage": True} and message.usage.output_tokens > 0
    else:
        assert "stream_options" not in body and message.content[0].text  # no usage chunk, the answer is whole


def test_upstream_errors_reach_clients_in_their_dialect(proxy: ProxyThread) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        openai_client(proxy, **mock_headers(status="429")).chat.completions.create(model=CLAUDE, messages=HI)
    assert info.value.response.headers.get("retry-after") == "7"
    assert info.value.body["type"] == "rate_limit_error"
    assert "x-ratelimit-limit-requests" in info.value.response.headers
    with pytest.raises(openai.InternalServerError) as info:
        openai_client(proxy, **mock_headers(status="529")).chat.completions.create(model=CLAUDE, messages=HI)
    assert info.value.status_code == 503
    with pytest.raises(anthropic.RateLimitError) as ainfo:
        anthropic_client(proxy, **mock_headers(status="429")).messages.create(model=GPT, max_tokens=5, messages=HI)
    assert ainfo.value.body["error"]["type"] == "rate_limit_error"
    assert "anthropic-ratelimit-requests-limit" in ainfo.value.response.headers


def test_inband_errors_reach_clients(proxy: ProxyThread) -> None:
    with pytest.raises(openai.APIError):
        list(openai_client(proxy, **mock_headers(inband_error="1")).chat.completions.create(model=CLAUDE, messages=HI, stream=True))
    with pytest.raises(anthropic.APIStatusError):
        with anthropic_client(proxy, **mock_headers(inband_error="1")).messages.stream(model=GPT, max_tokens=5, messages=HI) as s:
            s.get_final_message()


def test_truncated_upstream_stream_is_visible(proxy: ProxyThread) -> None:
    headers = {"authorization": "Bearer proxy-key", **mock_headers(drop_after="3")}
    body = {"model": CLAUDE, "messages": HI, "stream": True}
    with httpx.Client() as client:
        try:
            raw = client.post(proxy.url + "/v1/chat/completions", json=body, headers=headers).content
        except httpx.RemoteProtocolError:
            return  # the connection was closed: visibly broken, as wanted
    assert b"[DONE]" not in raw and b'"error"' in raw


def test_unknown_anthropic_events_do_not_reach_openai_clients(proxy: ProxyThread) -> None:
    headers = {"authorization": "Bearer proxy-key", **mock_headers(unknown_event="1")}
    body = {"model": CLAUDE, "messages": HI, "stream": True}
    raw = httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=headers).content
    assert raw.endswith(b"data: [DONE]\n\n") and b"event:" not in raw


def test_aliases_answer_with_the_requested_name(proxy: ProxyThread) -> None:
    # translated, streamed and not
    with anthropic_client(proxy).messages.stream(model="fast", max_tokens=5, messages=HI) as stream:
        assert stream.get_final_message().model == "fast"
    assert openai_client(proxy).chat.completions.create(model="smart", messages=HI).model == "smart"
    # same dialect: only the name changes
    chunks = list(openai_client(proxy).chat.completions.create(model="fast", messages=HI, stream=True))
    assert {c.model for c in chunks} == {"fast"}
    assert anthropic_client(proxy).messages.create(model="smart", max_tokens=5, messages=HI).model == "smart"
    with anthropic_client(proxy).messages.stream(model="smart", max_tokens=5, messages=HI) as stream:
        assert stream.get_final_message().model == "smart"


@pytest.mark.parametrize(("path", "model", "why"), [
    ("/v1/messages", "smart", "renamed"),
    ("/v1/chat/completions", "fast", "renamed"),
    ("/v1/messages", GPT, "translated"),
    ("/v1/chat/completions", CLAUDE, "translated"),
])
def test_a_json_answer_an_adapter_held_whole_keeps_a_content_length(
    proxy: ProxyThread, path: str, model: str, why: str
) -> None:
    body = {"model": model, "max_tokens": 5, "messages": HI}
    r = httpx.post(proxy.url + path, json=body, headers={"authorization": "Bearer proxy-key"})
    assert r.status_code == 200 and r.json()["model"] == model, why
    assert r.headers["content-length"] == str(len(r.content)) and "transfer-encoding" not in r.headers
    # A stream through the same adapters is still written as it arrives.
    r = httpx.post(proxy.url + path, json={**body, "stream": True}, headers={"authorization": "Bearer proxy-key"})
    assert r.headers["transfer-encoding"] == "chunked" and "content-length" not in r.headers


def test_same_dialect_without_alias_passes_bytes_through(proxy: ProxyThread) -> None:
    headers = {"authorization": "Bearer proxy-key", **mock_headers(fixed_ids="1", crlf="1")}
    body = {"model": GPT, "messages": HI, "stream": True}
    raw = httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=headers).content
    assert b"\r\n" in raw  # untouched: the rename adapter would have re-framed it
