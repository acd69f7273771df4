"""Responses JSON answers in the four directions, errors, the dialect's wire shapes, and the
translate plugin's hooks selecting the Responses converters (nothing changes for the others)."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccproxy_core.context import ANTHROPIC, OPENAI
from ccproxy_core.dialects import RESPONSES, UPSTREAM_PATHS, error_body, error_event
from ccproxy_core.errors import ProxyError, UpstreamProtocolError
from ccproxy_core.sse import SSEParser
from ccproxy_plugins import translate
from ccproxy_plugins.translate.adapters import (
    ErrorResponseAdapter,
    JSONResponseAdapter,
    ModelRenameStreamAdapter,
    count_answer,
)
from ccproxy_plugins.translate.base import Settings
from ccproxy_plugins.translate.resp_bodies import (
    anthropic_message_to_responses,
    chat_completion_to_responses,
    responses_to_anthropic_message,
    responses_to_chat_completion,
)
from ccproxy_plugins.translate.resp_streams import (
    AnthropicToResponsesStream,
    ChatToResponsesStream,
    ResponsesToAnthropicStream,
    ResponsesToChatStream,
)
from ccproxy_plugins.translate.synthesize import StreamSynthesizer
from tests.translate.strategies import json_values
from tests.translate.test_responses import ANTHROPIC_MESSAGE, make_ctx

REQUEST = {"model": "gpt-5", "instructions": "Be brief.", "tools": [{"type": "function", "name": "get_weather",
                                                                    "parameters": {"type": "object"}}],
           "max_output_tokens": 500, "store": False}
CHAT_COMPLETION = {
    "id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "gpt-4o",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Checking.", "reasoning_content": "think",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                          "arguments": "{\"city\":\"Oslo\"}"}}]}}],
    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
              "prompt_tokens_details": {"cached_tokens": 64}, "completion_tokens_details": {"reasoning_tokens": 5}},
}  # fmt: skip
RESPONSE = {
    "id": "resp_1", "object": "response", "created_at": 1764806400, "status": "completed", "model": "gpt-5",
    "output": [
        {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "a"},
                                                        {"type": "summary_text", "text": "b"}]},
        {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "Hello", "annotations": []}]},
        {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_9", "name": "f",
         "arguments": "{\"x\":1}"},
    ],
    "usage": {"input_tokens": 300, "input_tokens_details": {"cached_tokens": 256, "cache_write_tokens": 0},
              "output_tokens": 40, "output_tokens_details": {"reasoning_tokens": 12}, "total_tokens": 340},
}  # fmt: skip


def test_anthropic_message_to_responses() -> None:
    out = anthropic_message_to_responses(ANTHROPIC_MESSAGE, model="client", request=REQUEST, created=7)
    assert (out["id"], out["object"], out["status"], out["model"], out["created_at"]) == (
        "resp_msg_01EcyWo6m4hyW8KHs2y2pei5", "response", "completed", "client", 7)
    assert [item["type"] for item in out["output"]] == ["reasoning", "message", "function_call", "function_call"]
    assert out["output"][0]["encrypted_content"] == "EqQB..."
    assert out["output"][2]["call_id"] == "toolu_01A09q90qw90lq917835lq9"
    assert json.loads(out["output"][2]["arguments"]) == {"location": "Paris"}
    assert out["usage"] == {"input_tokens": 330, "input_tokens_details": {"cached_tokens": 300,
                                                                         "cache_write_tokens": 20},
                            "output_tokens": 40, "output_tokens_details": {"reasoning_tokens": 0},
                            "total_tokens": 370}
    assert (out["instructions"], out["max_output_tokens"], out["store"], out["tools"]) == (
        "Be brief.", 500, False, REQUEST["tools"])  # the request echoed, as the Responses API does
    openai.types.responses.Response.model_validate(out)
    truncated = anthropic_message_to_responses({**ANTHROPIC_MESSAGE, "stop_reason": "max_tokens"}, model="m",
                                               request=None)
    assert truncated["status"] == "incomplete" and truncated["incomplete_details"] == {"reason": "max_output_tokens"}


def test_chat_completion_to_responses() -> None:
    out = chat_completion_to_responses(CHAT_COMPLETION, model="client", request=None)
    assert [item["type"] for item in out["output"]] == ["reasoning", "message", "function_call"]
    assert out["output"][1]["content"][0]["text"] == "Checking."
    assert out["usage"]["input_tokens_details"]["cached_tokens"] == 64
    assert out["usage"]["output_tokens_details"]["reasoning_tokens"] == 5
    openai.types.responses.Response.model_validate(out)
    length = {**CHAT_COMPLETION, "choices": [{**CHAT_COMPLETION["choices"][0], "finish_reason": "length"}]}
    assert chat_completion_to_responses(length, model="m", request=None)["incomplete_details"] == {
        "reason": "max_output_tokens"}


def test_responses_to_anthropic_message() -> None:
    out = responses_to_anthropic_message(RESPONSE, model="client")
    assert out["content"] == [
        {"type": "thinking", "thinking": "a\n\nb", "signature": ""},
        {"type": "text", "text": "Hello"},
        {"type": "tool_use", "id": "call_9", "name": "f", "input": {"x": 1}},
    ]
    assert (out["id"], out["stop_reason"], out["model"]) == ("msg_resp_1", "tool_use", "client")
    assert out["usage"] == {"input_tokens": 44, "output_tokens": 40, "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 256, "output_tokens_details": {"thinking_tokens": 12}}
    anthropic.types.Message.model_validate(out)
    incomplete = {**RESPONSE, "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
                  "output": RESPONSE["output"][:2]}
    assert responses_to_anthropic_message(incomplete, model="m")["stop_reason"] == "max_tokens"


def test_responses_to_chat_completion() -> None:
    out = responses_to_chat_completion(RESPONSE, model="client", settings=Settings())
    message = out["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == ("Hello", "a\n\nb")
    assert message["tool_calls"] == [{"id": "call_9", "type": "function", "function": {"name": "f",
                                                                                         "arguments": "{\"x\":1}"}}]
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["usage"] == {"prompt_tokens": 300, "completion_tokens": 40, "total_tokens": 340,
                            "prompt_tokens_details": {"cached_tokens": 256},
                            "completion_tokens_details": {"reasoning_tokens": 12}}
    assert out["created"] == 1764806400
    openai.types.chat.ChatCompletion.model_validate(out)
    dropped = responses_to_chat_completion(RESPONSE, model="m", settings=Settings(thinking="drop"))
    assert "reasoning_content" not in dropped["choices"][0]["message"]


@settings(max_examples=200)
@given(upstream=st.sampled_from([ANTHROPIC, OPENAI, RESPONSES]), body=json_values)
def test_random_upstream_json_gives_a_response_or_an_upstream_error(upstream: str, body: Any) -> None:
    for client in ([RESPONSES] if upstream != RESPONSES else [ANTHROPIC, OPENAI]):
        adapter = translate.response_adapter(make_ctx(client, upstream))
        adapter.feed(json.dumps(body).encode())
        try:
            json.loads(adapter.finish())
        except ProxyError as exc:  # UpstreamProtocolError, or an error payload under 200
            assert exc.message


def test_failed_response_under_200_is_an_error() -> None:
    adapter = translate.response_adapter(make_ctx(ANTHROPIC, RESPONSES))
    adapter.feed(json.dumps({**RESPONSE, "status": "failed", "error": {"code": "rate_limit_exceeded",
                                                                        "message": "slow down"}}).encode())
    with pytest.raises(ProxyError, match="slow down") as info:
        adapter.finish()
    assert info.value.kind == "rate_limit_error"


def test_sdk_parses_a_translated_json_answer() -> None:
    body = json.dumps(anthropic_message_to_responses(ANTHROPIC_MESSAGE, model="m", request=REQUEST)).encode()

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "application/json"}, content=body)

    client = openai.OpenAI(api_key="k", base_url="http://proxy.test/v1", max_retries=0,
                           http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    response = client.responses.create(model="m", input="hi")
    assert response.output_text == "Let me check."
    assert [c.name for c in response.output if c.type == "function_call"] == ["get_weather", "get_time"]
    assert response.usage.input_tokens_details.cached_tokens == 300


# -- the dialect on the wire --------------------------------------------------------------


def test_responses_dialect_wire_shapes() -> None:
    assert UPSTREAM_PATHS[RESPONSES] == "/responses"
    error = ProxyError("slow down", status=429, kind="rate_limit_error")
    assert json.loads(error_body(RESPONSES, error)) == {"error": {"message": "slow down", "type": "rate_limit_error",
                                                                  "param": None, "code": "rate_limit_error"}}
    [event] = SSEParser().feed(error_event(RESPONSES, error))
    assert event.event == "error"
    assert json.loads(event.data) == {"type": "error", "code": "rate_limit_error", "message": "slow down",
                                      "param": None}


@pytest.mark.parametrize(("status", "body", "client_status", "kind"), [
    (429, {"error": {"message": "m", "type": "requests", "code": "rate_limit_exceeded"}}, 429, "rate_limit_error"),
    (400, {"error": {"message": "m", "type": "invalid_request_error", "code": None}}, 400, "invalid_request_error"),
    (500, {"error": {"message": "m", "type": "server_error"}}, 500, "api_error"),
])
def test_responses_upstream_errors_for_anthropic_clients(status: int, body: dict, client_status: int,
                                                         kind: str) -> None:
    ctx = make_ctx(ANTHROPIC, RESPONSES, status=status)
    adapter = translate.response_adapter(ctx)
    assert isinstance(adapter, ErrorResponseAdapter) and ctx.status == client_status
    adapter.feed(json.dumps(body).encode())
    assert json.loads(adapter.finish())["error"]["type"] == kind


def test_anthropic_upstream_errors_for_responses_clients() -> None:
    ctx = make_ctx(RESPONSES, ANTHROPIC, status=529)
    adapter = translate.response_adapter(ctx)
    adapter.feed(b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
    assert ctx.status == 503
    assert json.loads(adapter.finish()) == {"error": {"message": "Overloaded", "type": "server_error", "param": None,
                                                      "code": "overloaded_error"}}


# -- the hooks select the Responses converters ---------------------------------------------


@pytest.mark.parametrize(("client", "upstream", "cls"), [
    (RESPONSES, ANTHROPIC, AnthropicToResponsesStream), (RESPONSES, OPENAI, ChatToResponsesStream),
    (ANTHROPIC, RESPONSES, ResponsesToAnthropicStream), (OPENAI, RESPONSES, ResponsesToChatStream),
])
def test_response_adapter_choice_for_streams(client: str, upstream: str, cls: type) -> None:
    ctx = make_ctx(client, upstream, content_type="text/event-stream")
    assert isinstance(translate.response_adapter(ctx), cls)
    assert isinstance(translate.response_adapter(make_ctx(client, upstream)), JSONResponseAdapter)


def test_request_adapter_for_each_new_direction() -> None:
    messages = {"model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    cases = [
        (RESPONSES, ANTHROPIC, {"model": "c", "input": "hi", "store": False}, "messages"),
        (RESPONSES, OPENAI, {"model": "c", "input": "hi"}, "messages"),
        (ANTHROPIC, RESPONSES, messages, "input"),
        (OPENAI, RESPONSES, {"model": "c", "messages": [{"role": "user", "content": "hi"}]}, "input"),
    ]
    for client, upstream, body, key in cases:
        ctx = make_ctx(client, upstream)
        out = translate.request_adapter(ctx, body)
        assert out["model"] == "upstream-model" and key in out, (client, upstream)
    ctx = make_ctx(RESPONSES, ANTHROPIC)
    translate.request_adapter(ctx, cases[0][2])
    assert ctx.state["translate"] == {"ignored_fields": ["store"]}
    ctx = make_ctx(RESPONSES, RESPONSES)
    assert translate.request_adapter(ctx, {"model": "c", "input": "hi"}) is None


def test_request_headers_for_responses() -> None:
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "x", "openai-beta": "responses=v1"}
    translate.ccproxy_request_headers(make_ctx(ANTHROPIC, RESPONSES), headers)
    assert headers == {"openai-beta": "responses=v1"}
    headers = {"openai-organization": "org", "openai-project": "p"}
    translate.ccproxy_request_headers(make_ctx(OPENAI, RESPONSES), headers)
    assert headers == {"openai-organization": "org", "openai-project": "p"}  # both OpenAI dialects
    headers = {"openai-organization": "org"}
    translate.ccproxy_request_headers(make_ctx(RESPONSES, ANTHROPIC), headers)
    assert headers == {"anthropic-version": "2023-06-01"}


def test_rate_limit_headers_between_the_openai_dialects_are_left_alone() -> None:
    headers = {"x-ratelimit-limit-requests": "5"}
    translate.ccproxy_upstream_headers(make_ctx(OPENAI, RESPONSES), headers)
    assert headers == {"x-ratelimit-limit-requests": "5"}
    translate.ccproxy_upstream_headers(make_ctx(ANTHROPIC, RESPONSES), headers)
    assert headers["anthropic-ratelimit-requests-limit"] == "5"


def test_alias_rename_in_a_same_dialect_responses_stream() -> None:
    ctx = make_ctx(RESPONSES, RESPONSES, content_type="text/event-stream")
    adapter = translate.response_adapter(ctx)
    assert isinstance(adapter, ModelRenameStreamAdapter)
    raw = (b'event: response.created\ndata: {"type":"response.created","response":{"id":"r","model":"gpt-x"}}\n\n'
           b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"\\"model\\":"}\n\n')
    assert adapter.feed(raw) + adapter.finish() == raw.replace(b'"gpt-x"', b'"client-model"')


@pytest.mark.parametrize(("client", "upstream"), [
    (RESPONSES, RESPONSES), (RESPONSES, ANTHROPIC), (RESPONSES, OPENAI), (ANTHROPIC, RESPONSES), (OPENAI, RESPONSES)])
def test_a_stream_made_from_a_json_answer(client: str, upstream: str) -> None:
    """``supports_streaming: false``: the JSON answer becomes the client's stream."""
    ctx = make_ctx(client, upstream, requested="upstream-model")
    ctx.stream, ctx.upstream_stream = True, False
    adapter = translate.response_adapter(ctx)
    assert isinstance(adapter, StreamSynthesizer)
    body = {ANTHROPIC: ANTHROPIC_MESSAGE, OPENAI: CHAT_COMPLETION, RESPONSES: RESPONSE}[upstream]
    adapter.feed(json.dumps(body).encode())
    events = SSEParser().feed(adapter.finish())
    if client == RESPONSES:
        payloads = [json.loads(e.data) for e in events]
        assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
        assert payloads[-1]["type"] == "response.completed"
        assert [item["type"] for item in payloads[-1]["response"]["output"]][-1] == "function_call"
        if upstream == RESPONSES:  # the answer itself, as it came
            assert payloads[-1]["response"] == RESPONSE
        else:
            openai.types.responses.ResponseCompletedEvent.model_validate(payloads[-1])
    elif client == ANTHROPIC:
        assert json.loads(events[-2].data)["delta"]["stop_reason"] == "tool_use"
    else:
        assert events[-1].data == "[DONE]"


def test_synthesized_stream_is_bounded() -> None:
    ctx = make_ctx(RESPONSES, ANTHROPIC)
    ctx.stream, ctx.upstream_stream = True, False
    adapter = translate.response_adapter(ctx)
    with pytest.raises(UpstreamProtocolError):
        adapter.feed(b"x" * (64 * 1024 * 1024 + 1))


def test_count_answers_map_between_the_two_count_shapes() -> None:
    assert count_answer(ANTHROPIC, {"object": "response.input_tokens", "input_tokens": 7}) == {"input_tokens": 7}
    assert count_answer(RESPONSES, {"input_tokens": 7}) == {"object": "response.input_tokens", "input_tokens": 7}
    for bad in ({}, {"input_tokens": "7"}, {"input_tokens": True}):
        with pytest.raises(UpstreamProtocolError):
            count_answer(ANTHROPIC, bad)
