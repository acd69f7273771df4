"""JSON bodies, error bodies, usage, headers and the hook implementations."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import anthropic
import httpx2
import openai
import pluggy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccproxy_core import SSEParser, hookspecs
from ccproxy_core.context import ANTHROPIC, OPENAI, RequestContext
from ccproxy_core.errors import ConfigError, ProxyError, UpstreamProtocolError
from ccproxy_core.plugins import PluginSettings
from ccproxy_plugins import translate
from ccproxy_plugins.translate.adapters import (
    ErrorResponseAdapter,
    JSONResponseAdapter,
    ModelRenameJSONAdapter,
    ModelRenameStreamAdapter,
)
from ccproxy_plugins.translate.base import ResponseAdapter, Settings
from ccproxy_plugins.translate.headers import add_client_headers, format_duration, parse_duration
from ccproxy_plugins.translate.responses import (
    anthropic_message_to_openai,
    anthropic_usage_to_openai,
    openai_completion_to_anthropic,
    openai_usage_to_anthropic,
)
from ccproxy_plugins.translate.streams import AnthropicToOpenAIStream, OpenAIToAnthropicStream
from tests.translate.strategies import json_values, mutated

ANTHROPIC_MESSAGE = {
    "id": "msg_01EcyWo6m4hyW8KHs2y2pei5",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "thinking", "thinking": "Need the weather.", "signature": "EqQB..."},
        {"type": "text", "text": "Let me check.", "citations": None},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "Paris"}},
        {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "cache_creation_input_tokens": 20,
        "cache_read_input_tokens": 300,
        "output_tokens": 40,
        "service_tier": "standard",
    },
}

OPENAI_COMPLETION = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Checking both.",
                "refusal": None,
                "annotations": [],
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": '{"city":"Oslo"}'}},
                    {"id": "call_2", "type": "function", "function": {"name": "w", "arguments": "{oops"}},
                    {"id": "call_3", "type": "function", "function": {"name": "t", "arguments": ""}},
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    },
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}


# -- JSON bodies --------------------------------------------------------------------


def test_anthropic_message_to_openai() -> None:
    out = anthropic_message_to_openai(ANTHROPIC_MESSAGE, model="alias", settings=Settings(), created=5)
    assert out == {
        "id": "chatcmpl-msg_01EcyWo6m4hyW8KHs2y2pei5",
        "object": "chat.completion",
        "created": 5,
        "model": "alias",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me check.",
                    "refusal": None,
                    "tool_calls": [
                        {"id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}},
                        {"id": "toolu_01B", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                    ],
                    "reasoning_content": "Need the weather.",
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 330,
            "completion_tokens": 40,
            "total_tokens": 370,
            "prompt_tokens_details": {"cached_tokens": 300, "cache_write_tokens": 20},
        },
    }
    dropped = anthropic_message_to_openai(ANTHROPIC_MESSAGE, model="a", settings=Settings(thinking="drop"))
    assert "reasoning_content" not in dropped["choices"][0]["message"]


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        ("something_new", "stop"),
    ],
)
def test_stop_reason_to_finish_reason(stop: str, finish: str) -> None:
    msg = {**ANTHROPIC_MESSAGE, "content": [{"type": "text", "text": "x"}], "stop_reason": stop}
    assert anthropic_message_to_openai(msg, model="a", settings=Settings())["choices"][0]["finish_reason"] == finish


def test_openai_completion_to_anthropic() -> None:
    out = openai_completion_to_anthropic(OPENAI_COMPLETION, model="alias")
    assert out == {
        "id": "msg_chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "type": "message",
        "role": "assistant",
        "model": "alias",
        "content": [
            {"type": "text", "text": "Checking both."},
            {"type": "tool_use", "id": "call_1", "name": "w", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "call_2", "name": "w", "input": {"_raw": "{oops"}},
            {"type": "tool_use", "id": "call_3", "name": "t", "input": {}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 93, "output_tokens": 46, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1024},
    }


@pytest.mark.parametrize(
    ("finish", "stop"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("content_filter", "refusal"), (None, "end_turn")],
)
def test_finish_reason_to_stop_reason(finish: str | None, stop: str) -> None:
    completion = {"id": "c", "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": finish}]}
    assert openai_completion_to_anthropic(completion, model="a")["stop_reason"] == stop


def test_openai_refusal_and_reasoning() -> None:
    completion = {
        "id": "c",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "refusal": "I can't help with that.", "reasoning_content": "policy"},
                "finish_reason": "stop",
            }
        ],
    }
    out = openai_completion_to_anthropic(completion, model="a")
    assert out["content"] == [
        {"type": "thinking", "thinking": "policy", "signature": ""},
        {"type": "text", "text": "I can't help with that."},
    ]
    assert out["stop_reason"] == "refusal"


def test_usage_conversions_are_inverse() -> None:
    anthropic_usage = {"input_tokens": 10, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 300, "output_tokens": 40}
    assert openai_usage_to_anthropic(anthropic_usage_to_openai(anthropic_usage)) == anthropic_usage
    openai_usage = {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57, "prompt_tokens_details": {"cached_tokens": 30}}
    assert anthropic_usage_to_openai(openai_usage_to_anthropic(openai_usage)) == openai_usage
    assert openai_usage_to_anthropic(None) == {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _client_for(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> httpx2.Client:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, headers={"content-type": "application/json", **(headers or {})}, content=body)

    return httpx2.Client(transport=httpx2.MockTransport(handler))


def _anthropic(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="k", base_url="http://p.test", http_client=_client_for(body, status, headers), max_retries=0)


def _openai(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> openai.OpenAI:
    return openai.OpenAI(api_key="k", base_url="http://p.test/v1", http_client=_client_for(body, status, headers), max_retries=0)


def test_sdks_parse_translated_json() -> None:
    body = json.dumps(openai_completion_to_anthropic(OPENAI_COMPLETION, model="alias")).encode()
    message = _anthropic(body).messages.create(model="alias", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert message.content[1].input == {"city": "Oslo"} and message.usage.cache_read_input_tokens == 1024

    body = json.dumps(anthropic_message_to_openai(ANTHROPIC_MESSAGE, model="alias", settings=Settings())).encode()
    completion = _openai(body).chat.completions.create(model="alias", messages=[{"role": "user", "content": "x"}])
    assert json.loads(completion.choices[0].message.tool_calls[0].function.arguments) == {"location": "Paris"}
    assert completion.usage.prompt_tokens_details.cached_tokens == 300


# -- Error bodies -------------------------------------------------------------------


def _error(upstream: str, client: str, status: int, body: Any) -> tuple[int, dict[str, Any]]:
    ctx = make_ctx(client, upstream, status=status, content_type="application/json")
    adapter = translate.response_adapter(ctx)
    assert isinstance(adapter, ErrorResponseAdapter)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    out = adapter.feed(raw[:5]) + adapter.feed(raw[5:]) + adapter.finish()
    assert ctx.response_headers["content-type"] == "application/json"
    return ctx.status, json.loads(out)


def anthropic_error(kind: str, message: str = "m") -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"}


@pytest.mark.parametrize(
    ("status", "kind", "client_status", "openai_type"),
    [
        (400, "invalid_request_error", 400, "invalid_request_error"),
        (401, "authentication_error", 401, "authentication_error"),
        (403, "permission_error", 403, "permission_error"),
        (404, "not_found_error", 404, "not_found_error"),
        (413, "request_too_large", 413, "invalid_request_error"),
        (429, "rate_limit_error", 429, "rate_limit_error"),
        (500, "api_error", 500, "server_error"),
        (529, "overloaded_error", 503, "server_error"),
    ],
)
def test_anthropic_errors_for_openai_clients(status: int, kind: str, client_status: int, openai_type: str) -> None:
    got_status, body = _error(ANTHROPIC, OPENAI, status, anthropic_error(kind, "boom"))
    assert got_status == client_status
    assert body == {"error": {"message": "boom", "type": openai_type, "param": None, "code": kind}}


@pytest.mark.parametrize(
    ("status", "error", "client_status", "kind"),
    [
        (400, {"type": "invalid_request_error", "code": "context_length_exceeded"}, 400, "invalid_request_error"),
        (401, {"type": "invalid_request_error", "code": "invalid_api_key"}, 401, "authentication_error"),
        (403, {"type": "invalid_request_error", "code": "unsupported_country_region_territory"}, 403, "permission_error"),
        (404, {"type": "invalid_request_error", "code": "model_not_found"}, 404, "not_found_error"),
        (429, {"type": "requests", "code": "rate_limit_exceeded"}, 429, "rate_limit_error"),
        (429, {"type": "insufficient_quota", "code": "insufficient_quota"}, 429, "rate_limit_error"),
        (500, {"type": "server_error", "code": None}, 500, "api_error"),
        (503, {"type": "server_error", "code": None}, 503, "api_error"),
        (418, {"type": "teapot", "code": None}, 418, "invalid_request_error"),
    ],
)
def test_openai_errors_for_anthropic_clients(status: int, error: dict[str, Any], client_status: int, kind: str) -> None:
    got_status, body = _error(OPENAI, ANTHROPIC, status, {"error": {"message": "boom", "param": None, **error}})
    assert got_status == client_status
    assert body == {"type": "error", "error": {"type": kind, "message": "boom"}}


def test_error_bodies_that_are_not_json_keep_their_text() -> None:
    status, body = _error(OPENAI, ANTHROPIC, 502, b"<html>Bad Gateway</html>")
    assert (status, body["error"]) == (502, {"type": "api_error", "message": "<html>Bad Gateway</html>"})
    status, body = _error(ANTHROPIC, OPENAI, 529, b"")
    assert status == 503 and body["error"]["message"] == "upstream returned HTTP 529"
    status, body = _error(OPENAI, ANTHROPIC, 400, [{"error": {"message": "listed", "code": 400}}])
    assert body["error"] == {"type": "invalid_request_error", "message": "listed"}


def test_sdks_see_the_right_exception_classes() -> None:
    _, body = _error(ANTHROPIC, OPENAI, 429, anthropic_error("rate_limit_error", "slow down"))
    with pytest.raises(openai.RateLimitError):
        _openai(json.dumps(body).encode(), 429, {"retry-after": "3"}).chat.completions.create(model="a", messages=[])
    status, body = _error(ANTHROPIC, OPENAI, 529, anthropic_error("overloaded_error"))
    with pytest.raises(openai.InternalServerError):
        _openai(json.dumps(body).encode(), status).chat.completions.create(model="a", messages=[])
    status, body = _error(OPENAI, ANTHROPIC, 401, {"error": {"message": "bad key", "type": "invalid_request_error", "code": "invalid_api_key"}})
    with pytest.raises(anthropic.AuthenticationError) as info:
        _anthropic(json.dumps(body).encode(), status).messages.create(model="a", max_tokens=1, messages=[])
    assert info.value.body["error"]["type"] == "authentication_error"


# -- Headers ------------------------------------------------------------------------


def test_durations() -> None:
    assert parse_duration("6m0s") == 360
    assert parse_duration("1h2m3.5s") == 3723.5
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("soon") is None and parse_duration("") is None and parse_duration("5") is None
    assert [format_duration(x) for x in (0.02, 1, 1.5, 61.25, 3723.5, -3)] == ["20ms", "1s", "1.5s", "1m1.25s", "1h2m3.5s", "0ms"]


def test_openai_rate_limit_headers_for_anthropic_clients() -> None:
    now = datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp()
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-tokens": "29000",
        "x-ratelimit-reset-tokens": "1m30s",
        "retry-after": "2",
    }
    add_client_headers(OPENAI, headers, now=now)
    assert headers["anthropic-ratelimit-requests-limit"] == "500"
    assert headers["anthropic-ratelimit-requests-remaining"] == "499"
    assert headers["anthropic-ratelimit-requests-reset"] == "2025-01-01T00:00:00Z"
    assert headers["anthropic-ratelimit-tokens-limit"] == "30000"
    assert headers["anthropic-ratelimit-tokens-remaining"] == "29000"
    assert headers["anthropic-ratelimit-tokens-reset"] == "2025-01-01T00:01:30Z"
    assert headers["x-ratelimit-limit-requests"] == "500" and headers["retry-after"] == "2"  # originals kept


def test_anthropic_rate_limit_headers_for_openai_clients() -> None:
    now = datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp()
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2025-01-01T00:00:01Z",
        "anthropic-ratelimit-tokens-limit": "80000",
        "anthropic-ratelimit-tokens-remaining": "79000",
        "anthropic-ratelimit-tokens-reset": "2025-01-01T00:06:00Z",
        "x-ratelimit-limit-tokens": "kept",  # never overwritten
    }
    add_client_headers(ANTHROPIC, headers, now=now)
    assert headers["x-ratelimit-limit-requests"] == "50"
    assert headers["x-ratelimit-remaining-requests"] == "49"
    assert headers["x-ratelimit-reset-requests"] == "1s"
    assert headers["x-ratelimit-limit-tokens"] == "kept"
    assert headers["x-ratelimit-reset-tokens"] == "6m0s"
    assert headers["anthropic-ratelimit-requests-limit"] == "50"


def test_unparsable_reset_values_are_copied() -> None:
    headers = {"anthropic-ratelimit-requests-reset": "later", "x-ratelimit-reset-tokens": "later"}
    add_client_headers(ANTHROPIC, headers)
    assert headers["x-ratelimit-reset-requests"] == "later"


def test_reset_durations_past_any_date_are_copied() -> None:
    """An upstream's huge duration (year past 9999, or past the platform's time_t) is copied, not an error."""
    headers = {"x-ratelimit-reset-requests": "99999999999h", "x-ratelimit-reset-tokens": "1" * 400 + "h"}
    add_client_headers(OPENAI, headers)
    assert headers["anthropic-ratelimit-requests-reset"] == "99999999999h"
    assert headers["anthropic-ratelimit-tokens-reset"] == "1" * 400 + "h"


# -- Hooks and adapter choice ---------------------------------------------------------


class Config:
    def __init__(self, settings: dict[str, Any] | None) -> None:
        self.settings = settings

    def plugin_settings(self, name: str) -> dict[str, Any]:
        assert name == "translate"
        return self.settings or {}


def make_ctx(
    client: str,
    upstream: str,
    *,
    status: int = 200,
    content_type: str = "application/json",
    model: str = "upstream-model",
    requested: str = "client-model",
    body: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> RequestContext:
    ctx = RequestContext(request_id="r1", method="POST", route="/v1/x", client_dialect=client)
    ctx.upstream_dialect = upstream
    ctx.upstream_status = ctx.status = status
    ctx.response_headers = {"content-type": content_type}
    ctx.model, ctx.model_requested = model, requested
    ctx.body = body or {}
    ctx.config = Config(settings)  # type: ignore[assignment]
    return ctx


def test_request_adapter_only_when_dialects_differ() -> None:
    ctx = make_ctx(OPENAI, OPENAI)
    assert translate.request_adapter(ctx, {"model": "x", "messages": []}) is None
    ctx = make_ctx(OPENAI, ANTHROPIC, settings={"default_max_tokens": 77})
    out = translate.request_adapter(ctx, {"model": "client-model", "messages": [{"role": "user", "content": "hi"}], "seed": 1})
    assert out == {"model": "upstream-model", "max_tokens": 77, "messages": [{"role": "user", "content": "hi"}]}
    assert ctx.state["translate"] == {"ignored_fields": ["seed"]}


def test_response_adapter_choice() -> None:
    assert translate.response_adapter(make_ctx(OPENAI, OPENAI, requested="upstream-model")) is None
    assert translate.response_adapter(make_ctx(OPENAI, OPENAI, status=429)) is None
    assert isinstance(translate.response_adapter(make_ctx(OPENAI, OPENAI)), ModelRenameJSONAdapter)
    assert isinstance(
        translate.response_adapter(make_ctx(ANTHROPIC, ANTHROPIC, content_type="text/event-stream")),
        ModelRenameStreamAdapter,
    )
    ctx = make_ctx(OPENAI, ANTHROPIC, content_type="text/event-stream; charset=utf-8", body={"stream_options": {"include_usage": True}})
    adapter = translate.response_adapter(ctx)
    assert isinstance(adapter, AnthropicToOpenAIStream) and adapter._include_usage
    assert ctx.response_headers["content-type"] == "text/event-stream; charset=utf-8"
    adapter = translate.response_adapter(make_ctx(ANTHROPIC, OPENAI, content_type="text/event-stream"))
    assert isinstance(adapter, OpenAIToAnthropicStream)
    assert isinstance(translate.response_adapter(make_ctx(ANTHROPIC, OPENAI)), JSONResponseAdapter)
    assert isinstance(adapter, ResponseAdapter)


def test_thinking_setting_reaches_the_stream_adapter() -> None:
    ctx = make_ctx(OPENAI, ANTHROPIC, content_type="text/event-stream", settings={"thinking": "drop"})
    adapter = translate.response_adapter(ctx)
    assert isinstance(adapter, AnthropicToOpenAIStream) and adapter._thinking is False


def test_json_adapter_translates_and_names_the_requested_model() -> None:
    ctx = make_ctx(ANTHROPIC, OPENAI)
    adapter = translate.response_adapter(ctx)
    raw = json.dumps(OPENAI_COMPLETION).encode()
    out = json.loads(adapter.feed(raw[:100]) + adapter.feed(raw[100:]) + adapter.finish())
    assert out["model"] == "client-model" and out["type"] == "message"


def test_json_adapter_on_a_body_that_is_not_json() -> None:
    adapter = translate.response_adapter(make_ctx(ANTHROPIC, OPENAI))
    adapter.feed(b"<html>oops</html>")
    with pytest.raises(UpstreamProtocolError):
        adapter.finish()


def test_json_adapter_on_an_error_payload_under_200() -> None:
    adapter = translate.response_adapter(make_ctx(ANTHROPIC, OPENAI))
    adapter.feed(b'{"error": {"message": "model overloaded", "code": 503}}')
    with pytest.raises(ProxyError, match="model overloaded") as info:
        adapter.finish()
    assert info.value.kind == "api_error"


@pytest.mark.parametrize(
    ("upstream", "body", "expected"),
    [
        (ANTHROPIC, {"id": "msg_1", "content": None}, {"content": "", "finish_reason": "stop", "prompt_tokens": 0}),
        (ANTHROPIC, {"content": [], "usage": None, "stop_reason": None}, {"content": "", "finish_reason": "stop", "prompt_tokens": 0}),
        (ANTHROPIC, {"content": "hi"}, {"content": "hi", "finish_reason": "stop", "prompt_tokens": 0}),
        (ANTHROPIC, {"content": [{"type": "text", "text": "a"}, {"type": "server_tool_use"}], "usage": {"input_tokens": "x"}}, {"content": "a", "finish_reason": "stop", "prompt_tokens": 0}),
        (OPENAI, {"choices": []}, {"content": [], "stop_reason": "end_turn", "input_tokens": 0}),
        (OPENAI, {"choices": None, "usage": None}, {"content": [], "stop_reason": "end_turn", "input_tokens": 0}),
        (OPENAI, {"choices": [{"message": {"content": None}, "finish_reason": None}]}, {"content": [], "stop_reason": "end_turn", "input_tokens": 0}),
        (OPENAI, {"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"type": "x"}]}}], "usage": {"prompt_tokens_details": None}}, {"content": [{"type": "text", "text": "a"}], "stop_reason": "end_turn", "input_tokens": 0}),
    ],
)  # fmt: skip
def test_json_adapter_on_odd_but_valid_bodies(upstream: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    adapter = translate.response_adapter(make_ctx(OPENAI if upstream == ANTHROPIC else ANTHROPIC, upstream))
    adapter.feed(json.dumps(body).encode())
    out = json.loads(adapter.finish())
    if upstream == ANTHROPIC:
        got = {"content": out["choices"][0]["message"]["content"], "finish_reason": out["choices"][0]["finish_reason"],
               "prompt_tokens": out["usage"]["prompt_tokens"]}  # fmt: skip
    else:
        got = {"content": out["content"], "stop_reason": out["stop_reason"], "input_tokens": out["usage"]["input_tokens"]}
    assert got == expected


@pytest.mark.parametrize(
    ("upstream", "body", "message"),
    [
        (ANTHROPIC, {"content": 5}, "content: expected an array, got a number"),
        (ANTHROPIC, {"content": ["text"]}, "content[0]: expected an object, got a string"),
        (ANTHROPIC, {"content": [{"type": "text", "text": 5}]}, "content[0].text: expected a string, got a number"),
        (ANTHROPIC, {"content": [{"type": "tool_use", "name": "f", "input": "x"}]}, "content[0].input: expected an object, got a string"),
        (ANTHROPIC, {"content": [], "stop_reason": ["end_turn"]}, "stop_reason: expected a string, got an array"),
        (OPENAI, {"choices": "x"}, "choices: expected an array, got a string"),
        (OPENAI, {"choices": [None]}, "choices[0]: expected an object, got null"),
        (OPENAI, {"choices": [{"message": "hi"}]}, "choices[0].message: expected an object, got a string"),
        (OPENAI, {"choices": [{"message": {"content": 5}}]}, "choices[0].message.content: expected a string, got a number"),
        (OPENAI, {"choices": [{"message": {"content": [5]}}]}, "choices[0].message.content[0]: expected an object, got a number"),
        (OPENAI, {"choices": [{"message": {"tool_calls": {"id": "c"}}}]}, "choices[0].message.tool_calls: expected an array, got an object"),
        (OPENAI, {"choices": [{"message": {"tool_calls": [{"function": "f"}]}}]}, "choices[0].message.tool_calls[0].function: expected an object, got a string"),
        (OPENAI, {"choices": [{"message": {}, "finish_reason": {"a": 1}}]}, "choices[0].finish_reason: expected a string, got an object"),
    ],
)
def test_json_adapter_on_bodies_that_cannot_be_translated(upstream: str, body: dict[str, Any], message: str) -> None:
    adapter = translate.response_adapter(make_ctx(OPENAI if upstream == ANTHROPIC else ANTHROPIC, upstream))
    adapter.feed(json.dumps(body).encode())
    with pytest.raises(UpstreamProtocolError) as info:
        adapter.finish()
    assert info.value.status == 502
    assert info.value.message == f"the upstream's response body cannot be translated: {message}"


@settings(max_examples=300)
@given(
    upstream=st.sampled_from([ANTHROPIC, OPENAI]),
    body=st.one_of(json_values, mutated([ANTHROPIC_MESSAGE, OPENAI_COMPLETION])),
)
def test_random_upstream_json_gives_json_or_an_upstream_error(upstream: str, body: Any) -> None:
    adapter = translate.response_adapter(make_ctx(OPENAI if upstream == ANTHROPIC else ANTHROPIC, upstream))
    adapter.feed(json.dumps(body).encode())
    try:
        out = json.loads(adapter.finish())
    except UpstreamProtocolError:
        return
    except ProxyError:  # an error payload under 200, raised as that error
        assert body.get("error") is not None or body.get("type") == "error"
        return
    assert isinstance(out, dict) and out["model"] == "client-model"


def adapter_out(body: bytes) -> bytes:
    adapter = ModelRenameJSONAdapter("x")
    return adapter.feed(body) + adapter.finish()


def test_rename_json_adapter() -> None:
    adapter = translate.response_adapter(make_ctx(OPENAI, OPENAI))
    raw = json.dumps(OPENAI_COMPLETION, indent=1, ensure_ascii=True).encode()
    out = adapter.feed(raw) + adapter.finish()
    assert json.loads(out) == {**OPENAI_COMPLETION, "model": "client-model"}
    assert out == raw.replace(json.dumps(OPENAI_COMPLETION["model"]).encode(), b'"client-model"', 1)  # the rest kept
    assert adapter_out(b'\xef\xbb\xbf {"model": "m"}') == b' {"model": "x"}'  # a byte-order mark goes
    for body in (b"not json", b'{"id": "x"}', b"[1]", b'{"id": "x", "model"', b"\xff"):
        assert adapter_out(body) == body


def test_rename_stream_adapter_openai_and_anthropic() -> None:
    adapter = translate.response_adapter(make_ctx(OPENAI, OPENAI, content_type="text/event-stream"))
    raw = (
        b'data: {"id":"c","model": "gpt-4o-2024-08-06","choices":[{"delta":{"content":"\\"model\\": \\"x\\""}}]}\r\n\r\n'
        b": comment\n\ndata: [DONE]\n\n"
    )
    out = b"".join(adapter.feed(raw[i : i + 7]) for i in range(0, len(raw), 7)) + adapter.finish()
    assert out == (
        b'data: {"id":"c","model": "client-model","choices":[{"delta":{"content":"\\"model\\": \\"x\\""}}]}\n\n'
        b"data: [DONE]\n\n"
    )
    adapter = translate.response_adapter(make_ctx(ANTHROPIC, ANTHROPIC, content_type="text/event-stream"))
    raw = (
        b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-x","id":"m"}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","model":"kept"}\n\n'
    )
    assert adapter.feed(raw) + adapter.finish() == raw.replace(b'"claude-x"', b'"client-model"')


RENAMED_STREAMS = [
    (ANTHROPIC, b'"claude-x"',
     b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-x","id":"m"}}\n\n'
     b'event: ping\ndata: {"type": "ping"}\n\n: keep-alive\n\n'
     b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"message_start \\"model\\":1"}}\n\n'
     b'event: message_stop\ndata: {"type":"message_stop"}\n\n'),
    (OPENAI, b'"gpt-x"',
     b'data: {"id":"c","model":"gpt-x","choices":[{"delta":{"content":"\\"model\\": \\"y\\""}}]}\n\n' * 3
     + b"data: [DONE]\n\n"),
]


@pytest.mark.parametrize(("dialect", "name", "raw"), RENAMED_STREAMS)
def test_rename_stream_adapter_passes_whole_events_as_they_came(dialect: str, name: bytes, raw: bytes) -> None:
    """Reads of whole events pass as the upstream sent them but for the model (comments and fields kept);
    reads split anywhere give the same events, renamed where they carry the model."""
    renamed = raw.replace(name, b'"client-model"', 1 if dialect == ANTHROPIC else -1)
    expected = [(e.event, e.data) for e in SSEParser().feed(renamed)]

    def through(reads: list[bytes]) -> bytes:
        adapter = translate.response_adapter(make_ctx(dialect, dialect, content_type="text/event-stream"))
        return b"".join(adapter.feed(read) for read in reads) + adapter.finish()

    events = [block + b"\n\n" for block in raw[:-2].split(b"\n\n")]
    assert through(events) == renamed
    assert through([events[0], events[1] + events[2], *events[3:]]) == renamed
    for i in range(1, len(raw)):
        assert [(e.event, e.data) for e in SSEParser().feed(through([raw[:i], raw[i:]]))] == expected, i
    assert [(e.event, e.data) for e in SSEParser().feed(through([raw[i : i + 7] for i in range(0, len(raw), 7)]))] == expected


def test_upstream_headers_hook() -> None:
    ctx = make_ctx(OPENAI, ANTHROPIC)
    headers = {"anthropic-ratelimit-requests-limit": "5", "retry-after": "7"}
    translate.ccproxy_upstream_headers(ctx, headers)
    assert headers == {"anthropic-ratelimit-requests-limit": "5", "retry-after": "7", "x-ratelimit-limit-requests": "5"}
    same = make_ctx(OPENAI, OPENAI)
    headers = {"x-ratelimit-limit-requests": "5"}
    translate.ccproxy_upstream_headers(same, headers)
    assert headers == {"x-ratelimit-limit-requests": "5"}


def test_request_headers_hook() -> None:
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "x", "x-stainless-os": "Linux"}
    translate.ccproxy_request_headers(make_ctx(ANTHROPIC, OPENAI), headers)
    assert headers == {"x-stainless-os": "Linux"}
    headers = {"openai-organization": "org"}
    translate.ccproxy_request_headers(make_ctx(OPENAI, ANTHROPIC), headers)
    assert headers == {"anthropic-version": "2023-06-01"}
    headers = {"anthropic-beta": "x"}
    translate.ccproxy_request_headers(make_ctx(ANTHROPIC, ANTHROPIC), headers)
    assert headers == {"anthropic-beta": "x"}


def test_settings_validation() -> None:
    assert Settings.from_mapping(None) == Settings()
    assert Settings.from_mapping({"thinking": "drop", "default_max_tokens": 4096}) == Settings("drop", 4096)
    for bad in ({"thinking": "show"}, {"default_max_tokens": 0}, {"default_max_tokens": True}, {"reasoning_effort": "maybe"}, {"max_tokens_field": "n"}, {"colour": 1}):
        with pytest.raises(ConfigError):
            Settings.from_mapping(bad)
    with pytest.raises(ConfigError, match="plugins.translate.thinking"):
        translate.ccproxy_configure(PluginSettings("translate", {"thinking": "show"}, "config.yaml"))
    with pytest.raises(ConfigError, match="plugins.translate.default_max_tokens"):
        translate.ccproxy_configure(PluginSettings("translate", {"default_max_tokens": -1}))
    translate.ccproxy_configure(PluginSettings("translate", {"thinking": "drop", "default_max_tokens": "4096"}))
    translate.ccproxy_configure(PluginSettings("translate", {}))


def test_plugin_registers_against_the_hookspecs() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(translate, name="translate")
    pm.register(translate.ccproxy_configure(PluginSettings("translate", {})), name="translate-app")  # per-app hooks
    pm.check_pending()
    ctx = make_ctx(ANTHROPIC, OPENAI)
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    assert pm.hook.ccproxy_request_adapter(ctx=ctx, body=body)["max_completion_tokens"] == 5
    [adapter] = pm.hook.ccproxy_response_adapter(ctx=ctx)  # adapters are chained, not firstresult
    assert isinstance(adapter, JSONResponseAdapter)
