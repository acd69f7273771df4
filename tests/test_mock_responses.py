"""The mock upstream's Responses API: faithful to the ``openai`` SDK, with the other dialects' scenarios and faults."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.mock_upstream import DEFAULT_TEXT, MockUpstreamThread, stream_framing
from tests.test_mock_upstream import SF, TOKYO, gpt, mock, parse_sse  # noqa: F401 (fixture)

RESPONSES: dict[str, Any] = {"model": "gpt-test-1", "input": "hi"}
CONTENT = {  # x-mock-content -> (output item types, function calls (name, arguments))
    "text": (["message"], []),
    "tools": (["function_call"], [("get_weather", SF)]),
    "parallel_tools": (["function_call", "function_call"], [("get_weather", SF), ("get_weather", TOKYO)]),
    "thinking": (["reasoning", "message"], []),
}


def post(mock: MockUpstreamThread, headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    return httpx.post(mock.url + "/v1/responses", json={**RESPONSES, "stream": True, **extra},
                      headers=headers or {}, timeout=10)


@pytest.mark.parametrize("content", CONTENT)
def test_sdk_stream_equals_json(mock: MockUpstreamThread, content: str) -> None:
    client = gpt(mock, {"x-mock-content": content})
    whole = client.responses.create(**RESPONSES)  # validates as openai.types.responses.Response
    with client.responses.stream(**RESPONSES) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        streamed = stream.get_final_response()
    types, calls = CONTENT[content]
    for response in (whole, streamed):
        assert [item.type for item in response.output] == types
        assert response.status == "completed" and response.model == "gpt-test-1"
        assert [(c.name, json.loads(c.arguments)) for c in response.output if c.type == "function_call"] == calls
        assert response.output_text == ("" if calls else DEFAULT_TEXT)
        assert response.usage is not None and response.usage.input_tokens == 12
        assert response.usage.input_tokens_details.cached_tokens == 3
        assert response.usage.output_tokens_details.reasoning_tokens == (3 if content == "thinking" else 0)
    assert "".join(deltas) == streamed.output_text
    assert [item.model_dump(exclude={"id"}, exclude_none=True) for item in streamed.output] == [
        item.model_dump(exclude={"id"}, exclude_none=True) for item in whole.output]
    assert [r.path for r in mock.requests] == ["/v1/responses"] * 2


def test_stream_shape(mock: MockUpstreamThread) -> None:
    response = post(mock, {"x-mock-events": "4"})
    events = parse_sse(response.content)
    names = [name for name, _ in events]
    assert names == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * 4,
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert len(events) == 4 + stream_framing["responses"]
    data = [json.loads(d) for _, d in events]
    assert [d["type"] for d in data] == names and [d["sequence_number"] for d in data] == list(range(len(data)))
    assert data[-1]["response"]["usage"]["output_tokens"] == 4
    assert "x-request-id" in response.headers and "x-ratelimit-limit-requests" in response.headers
    assert b"[DONE]" not in response.content


def test_max_tokens_is_incomplete(mock: MockUpstreamThread) -> None:
    client = gpt(mock, {"x-mock-max-tokens": "1"})
    whole = client.responses.create(**RESPONSES)
    events = parse_sse(post(mock, {"x-mock-max-tokens": "1"}).content)
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
    assert events[-1][0] == "response.incomplete"
    assert json.loads(events[-1][1])["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_errors_faults_and_token_count(mock: MockUpstreamThread) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        gpt(mock, {"x-mock-status": "429"}).responses.create(**RESPONSES)
    assert caught.value.response.headers["retry-after"] == "7"
    assert set(caught.value.body) == {"message", "type", "param", "code"}
    with pytest.raises(openai.APIConnectionError):
        gpt(mock, {"x-mock-reset": "1"}).responses.create(**RESPONSES)
    with gpt(mock, {"x-mock-inband-error": "1"}).responses.stream(**RESPONSES) as stream:
        seen = list(stream)  # the SDK hands the failure over as an event
    assert [e.type for e in seen[-2:]] == ["response.output_text.delta", "response.failed"]
    assert "server had an error" in seen[-1].response.error.message
    for mode in ("x-mock-split", "x-mock-crlf", "x-mock-coalesce", "x-mock-gzip"):
        with gpt(mock, {mode: "1"}).responses.stream(**RESPONSES) as stream:
            assert stream.get_final_response().output_text == DEFAULT_TEXT
    count = gpt(mock).responses.input_tokens.count(model="gpt-test-1", input="hi")
    assert (count.object, count.input_tokens) == ("response.input_tokens", 12)
