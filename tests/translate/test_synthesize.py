"""Streams made from JSON answers (providers with ``supports_streaming: false``), checked with the
project's SSE parser and the official SDKs' stream accumulators."""

from __future__ import annotations

import copy
import json
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from ccproxy_core.config import Config, Limits
from ccproxy_core.context import ANTHROPIC, OPENAI, RequestContext
from ccproxy_core.errors import ProxyError, UpstreamProtocolError
from ccproxy_core.sse import SSEParser
from ccproxy_plugins import translate
from ccproxy_plugins.translate.synthesize import StreamSynthesizer, stream_adapter

ANTHROPIC_MESSAGE: dict[str, Any] = {
    "id": "msg_01SynthSynthSynthSynth",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "thinking", "thinking": "The user wants the weather.", "signature": "EqQBCgIYAhIMsig"},
        {"type": "text", "text": "Let me check Zürich 🌍."},
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"location": "Zürich", "unit": "c"}},
        {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 21, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 1000,
              "output_tokens": 64, "service_tier": "standard"},
}

OPENAI_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-SynthSynthSynth",
    "object": "chat.completion",
    "created": 1756300000,
    "model": "gpt-4o-2024-08-06",
    "choices": [{
        "index": 0,
        "message": {
            "role": "assistant",
            "content": "Checking both.",
            "refusal": None,
            "tool_calls": [
                {"id": "call_A", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "Tokyo"}'}},
                {"id": "call_B", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        "logprobs": None,
        "finish_reason": "tool_calls",
    }],
    "usage": {"prompt_tokens": 95, "completion_tokens": 40, "total_tokens": 135,
              "prompt_tokens_details": {"cached_tokens": 64}},
    "system_fingerprint": "fp_1",
}

ROUTES = {ANTHROPIC: "/v1/messages", OPENAI: "/v1/chat/completions"}


def context(client: str, upstream: str, *, body: dict | None = None, model: str = "upstream-model",
            requested: str | None = None, status: int = 200, content_type: str = "application/json",
            stream: bool = True, upstream_stream: bool = False, config: Config | None = None) -> RequestContext:
    ctx = RequestContext(request_id="r", method="POST", route=ROUTES[client], client_dialect=client)
    ctx.body = body or {"model": requested or model, "stream": stream}
    ctx.stream, ctx.upstream_stream = stream, upstream_stream
    ctx.model_requested, ctx.model = requested or model, model
    ctx.provider, ctx.upstream_dialect = "p", upstream
    ctx.upstream_status = ctx.status = status
    ctx.response_headers = {"content-type": content_type, "content-length": "123"}
    ctx.config = config
    return ctx


def synthesize(ctx: RequestContext, payload: dict, pieces: int = 3) -> bytes:
    adapter = translate.response_adapter(ctx)
    assert isinstance(adapter, StreamSynthesizer)
    assert ctx.response_headers["content-type"].startswith("text/event-stream")
    raw = json.dumps(payload, ensure_ascii=False).encode()
    step = len(raw) // pieces + 1
    out = b"".join(adapter.feed(raw[i : i + step]) for i in range(0, len(raw), step))
    assert out == b""  # nothing before the answer is whole
    return adapter.finish()


def events(stream: bytes) -> list[tuple[str | None, Any]]:
    return [(e.event, e.data if e.data == "[DONE]" else json.loads(e.data)) for e in SSEParser().feed(stream)]


def _client(body: bytes) -> httpx2.Client:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return httpx2.Client(transport=httpx2.MockTransport(handler))


def anthropic_final(stream: bytes) -> anthropic.types.Message:
    client = anthropic.Anthropic(api_key="k", base_url="http://proxy.test", http_client=_client(stream), max_retries=0)
    with client.messages.stream(model="m", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
        return s.get_final_message()


def openai_final(stream: bytes, **options: Any) -> tuple[openai.types.chat.ChatCompletion, list[Any]]:
    client = openai.OpenAI(api_key="k", base_url="http://proxy.test/v1", http_client=_client(stream), max_retries=0)
    chunks = []
    with client.chat.completions.stream(model="m", messages=[{"role": "user", "content": "hi"}], **options) as s:
        for event in s:
            if event.type == "chunk":
                chunks.append(event.chunk)
        return s.current_completion_snapshot, chunks


def check_anthropic_stream(stream: bytes) -> list[dict]:
    """Event names equal data types, and the order the Messages API promises."""
    parsed = events(stream)
    assert all(name == data["type"] for name, data in parsed)
    kinds = [data["type"] for _, data in parsed]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    open_block = None
    for _, data in parsed[1:-2]:
        if data["type"] == "content_block_start":
            assert open_block is None
            open_block = data["index"]
        elif data["type"] == "content_block_delta":
            assert data["index"] == open_block
        else:
            assert data["type"] == "content_block_stop" and data["index"] == open_block
            open_block = None
    return [data for _, data in parsed]


# -- Anthropic JSON -----------------------------------------------------------------------


def test_anthropic_json_to_anthropic_stream_is_the_same_message() -> None:
    stream = synthesize(context(ANTHROPIC, ANTHROPIC), ANTHROPIC_MESSAGE)
    out = check_anthropic_stream(stream)
    assert out[0]["message"]["usage"]["input_tokens"] == 21 and out[0]["message"]["usage"]["cache_read_input_tokens"] == 1000
    deltas = [e["delta"]["type"] for e in out if e["type"] == "content_block_delta"]
    assert deltas == ["thinking_delta", "signature_delta", "text_delta", "input_json_delta"]  # no input: no delta
    message = anthropic_final(stream)
    assert [b.model_dump(exclude_none=True) for b in message.content] == ANTHROPIC_MESSAGE["content"]
    assert (message.id, message.model) == (ANTHROPIC_MESSAGE["id"], ANTHROPIC_MESSAGE["model"])
    assert message.stop_reason == "tool_use" and message.usage.output_tokens == 64
    assert message.usage.cache_creation_input_tokens == 5


def test_anthropic_json_to_openai_stream_with_and_without_usage() -> None:
    body = {"model": "upstream-model", "stream": True, "stream_options": {"include_usage": True}}
    stream = synthesize(context(OPENAI, ANTHROPIC, body=body), ANTHROPIC_MESSAGE)
    assert stream.endswith(b"data: [DONE]\n\n") and stream.count(b"[DONE]") == 1
    completion, chunks = openai_final(stream, stream_options={"include_usage": True})
    assert len({c.id for c in chunks}) == 1 and chunks[0].choices[0].delta.role == "assistant"
    message = completion.choices[0].message
    assert message.content == "Let me check Zürich 🌍."
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("toolu_01A", "get_weather", {"location": "Zürich", "unit": "c"}), ("toolu_01B", "get_time", {})]
    assert message.model_extra["reasoning_content"] == "The user wants the weather."
    assert completion.choices[0].finish_reason == "tool_calls"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (1026, 64)
    assert chunks[-1].choices == []
    stream = synthesize(context(OPENAI, ANTHROPIC), ANTHROPIC_MESSAGE)
    assert b'"usage"' not in stream  # the client did not ask


@pytest.mark.parametrize("client", [ANTHROPIC, OPENAI])
def test_anthropic_max_tokens(client: str) -> None:
    message = {**ANTHROPIC_MESSAGE, "content": [{"type": "text", "text": "cut sho"}], "stop_reason": "max_tokens"}
    stream = synthesize(context(client, ANTHROPIC), message)
    if client == ANTHROPIC:
        assert anthropic_final(stream).stop_reason == "max_tokens"
    else:
        completion, _ = openai_final(stream)
        assert completion.choices[0].finish_reason == "length" and completion.choices[0].message.content == "cut sho"


def test_anthropic_blocks_without_a_delta_form_come_whole_and_citations_stream() -> None:
    citation = {"type": "char_location", "cited_text": "x", "document_index": 0, "document_title": "d",
                "start_char_index": 0, "end_char_index": 1}
    message = {**ANTHROPIC_MESSAGE, "content": [
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy"},
        {"type": "text", "text": "quoted", "citations": [citation]},
    ], "stop_reason": "end_turn"}
    stream = synthesize(context(ANTHROPIC, ANTHROPIC), message)
    check_anthropic_stream(stream)
    final = anthropic_final(stream)
    assert final.content[0].model_dump() == {"type": "redacted_thinking", "data": "EmwKAhgBEgy"}
    assert final.content[1].text == "quoted" and final.content[1].citations[0].cited_text == "x"


# -- OpenAI JSON --------------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [True, False])
def test_openai_json_to_openai_stream(include_usage: bool) -> None:
    body = {"model": "upstream-model", "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    stream = synthesize(context(OPENAI, OPENAI, body=body), OPENAI_COMPLETION)
    parsed = events(stream)
    assert all(name is None for name, _ in parsed) and parsed[-1][1] == "[DONE]"
    chunks = [data for _, data in parsed[:-1]]
    assert {c["id"] for c in chunks} == {"chatcmpl-SynthSynthSynth"} and {c["created"] for c in chunks} == {1756300000}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[:-1] == [None] * (len(finishes) - 1) and finishes[-1] == "tool_calls"
    first_fragments = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
                       if c["choices"] and "id" in (c["choices"][0]["delta"].get("tool_calls") or [{}])[0]]
    assert [(f["index"], f["id"], f["type"], f["function"]) for f in first_fragments] == [
        (0, "call_A", "function", {"name": "get_weather", "arguments": ""}),
        (1, "call_B", "function", {"name": "get_time", "arguments": ""})]
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    completion, _ = openai_final(stream, **options)
    message = completion.choices[0].message
    assert message.content == "Checking both." and completion.choices[0].finish_reason == "tool_calls"
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls] == [
        ("call_A", "get_weather", '{"location": "Tokyo"}'), ("call_B", "get_time", "{}")]
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == OPENAI_COMPLETION["usage"]
        assert completion.usage.prompt_tokens == 95
    else:
        assert all("usage" not in c for c in chunks)


def test_openai_json_to_anthropic_stream() -> None:
    stream = synthesize(context(ANTHROPIC, OPENAI), OPENAI_COMPLETION)
    check_anthropic_stream(stream)
    message = anthropic_final(stream)
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[0].text == "Checking both."
    assert [(b.id, b.name, b.input) for b in message.content[1:]] == [
        ("call_A", "get_weather", {"location": "Tokyo"}), ("call_B", "get_time", {})]
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (31, 64, 40)


@pytest.mark.parametrize("client", [ANTHROPIC, OPENAI])
def test_openai_length_and_reasoning(client: str) -> None:
    completion = copy.deepcopy(OPENAI_COMPLETION)
    completion["choices"][0]["message"] = {"role": "assistant", "content": "cut", "reasoning_content": "hmm"}
    completion["choices"][0]["finish_reason"] = "length"
    stream = synthesize(context(client, OPENAI), completion)
    if client == ANTHROPIC:
        message = anthropic_final(stream)
        assert message.stop_reason == "max_tokens"
        assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in message.content] == [
            ("thinking", "hmm"), ("text", "cut")]
    else:
        snapshot, _ = openai_final(stream)
        assert snapshot.choices[0].finish_reason == "length" and snapshot.choices[0].message.content == "cut"
        assert snapshot.choices[0].message.model_extra["reasoning_content"] == "hmm"


# -- when it applies, bounds and failures -------------------------------------------------


def test_an_alias_gets_its_own_name_back() -> None:
    stream = synthesize(context(OPENAI, OPENAI, requested="fast"), OPENAI_COMPLETION)
    assert {data["model"] for _, data in events(stream)[:-1]} == {"fast"}
    stream = synthesize(context(ANTHROPIC, ANTHROPIC, requested="smart"), ANTHROPIC_MESSAGE)
    assert anthropic_final(stream).model == "smart"
    assert anthropic_final(synthesize(context(ANTHROPIC, OPENAI, requested="gpt-alias"), OPENAI_COMPLETION)).model == "gpt-alias"


@pytest.mark.parametrize("change", [
    {"stream": False},  # the client wants JSON: it gets JSON
    {"upstream_stream": True},  # the upstream streams: the usual adapters
    {"status": 429},  # errors keep their usual treatment
    {"content_type": "text/event-stream"},  # asked for JSON, streamed anyway
])
def test_when_no_stream_is_made(change: dict) -> None:
    ctx = context(ANTHROPIC, OPENAI, **change)
    assert stream_adapter(ctx, translate.Settings()) is None
    assert not isinstance(translate.response_adapter(ctx), StreamSynthesizer)
    assert same_dialect_passes(change)


def same_dialect_passes(change: dict) -> bool:
    return translate.response_adapter(context(OPENAI, OPENAI, **change)) is None


def test_the_answer_is_bounded_by_max_response_body_bytes() -> None:
    config = Config(limits=Limits(max_response_body_bytes=100))
    adapter = stream_adapter(context(ANTHROPIC, ANTHROPIC, config=config), translate.Settings())
    assert adapter.feed(b"x" * 100) == b""
    with pytest.raises(UpstreamProtocolError, match=r"max_response_body_bytes \(100 bytes\)") as info:
        adapter.feed(b"x")
    assert info.value.status == 502


def test_bodies_that_are_not_an_answer_raise_before_anything_is_sent() -> None:
    adapter = stream_adapter(context(OPENAI, ANTHROPIC), translate.Settings())
    adapter.feed(b"<html>oops</html>")
    with pytest.raises(UpstreamProtocolError, match="not a JSON object"):
        adapter.finish()
    adapter = stream_adapter(context(ANTHROPIC, ANTHROPIC), translate.Settings())
    adapter.feed(json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}).encode())
    with pytest.raises(ProxyError, match="busy"):
        adapter.finish()
