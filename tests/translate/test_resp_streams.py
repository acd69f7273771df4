"""Streams to and from the Responses API: golden files split at every byte, the stream
contract, the official SDKs as consumers, interleaved calls, bounds and broken ends."""

from __future__ import annotations

import json
import os

import anthropic
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccproxy_core.dialects import error_event
from ccproxy_core.errors import UpstreamProtocolError
from ccproxy_core.sse import SSEParser
from ccproxy_plugins.translate.resp_streams import (
    AnthropicToResponsesStream,
    ChatToResponsesStream,
    ResponsesToAnthropicStream,
    ResponsesToChatStream,
)

from .corpus_cases import CREATED, LIMIT, MODEL, RESPONSES_CASES, Case, translate
from .test_streams import _chunks, _transport, interleaved_calls, anthropic_stream_message, openai_stream_completion

BY_NAME = {case.name: case for case in RESPONSES_CASES}
TO_RESPONSES = [case for case in RESPONSES_CASES if case.client == "responses"]


@pytest.mark.parametrize("case", RESPONSES_CASES, ids=lambda c: c.name)
def test_golden(case: Case) -> None:
    output = translate(case, [case.input()])
    if os.environ.get("UPDATE_GOLDEN"):
        case.expected_path.write_bytes(output)
    assert output == case.expected_path.read_bytes()


@pytest.mark.parametrize("case", RESPONSES_CASES, ids=lambda c: c.name)
def test_every_single_split_point(case: Case) -> None:
    data, expected = case.input(), case.expected_path.read_bytes()
    for cut in range(len(data) + 1):
        assert translate(case, [data[:cut], data[cut:]]) == expected, cut


@pytest.mark.parametrize("case", RESPONSES_CASES, ids=lambda c: c.name)
def test_byte_by_byte(case: Case) -> None:
    data = case.input()
    assert translate(case, [data[i : i + 1] for i in range(len(data))]) == case.expected_path.read_bytes()


@settings(max_examples=200)
@given(case=st.sampled_from(RESPONSES_CASES), data=st.data())
def test_random_resplits_give_identical_output(case: Case, data: st.DataObject) -> None:
    raw = case.input()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=40)))
    assert translate(case, [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]) == case.expected_path.read_bytes()


# -- the Responses stream contract -------------------------------------------------------


def responses_events(raw: bytes) -> list[dict]:
    out = []
    for event in SSEParser().feed(raw):
        payload = json.loads(event.data)
        assert event.event == payload["type"]
        out.append(payload)
    return out


def assert_contract(events: list[dict]) -> None:
    """What every Responses stream we write must satisfy (see docs/translation.md)."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    final = events[-1]
    assert final["type"] in ("response.completed", "response.incomplete", "response.failed")
    assert sum(e["type"].startswith("response.") and "response" in e for e in events) == 3
    open_items: dict[int, dict] = {}
    done: list[dict] = []
    for e in events[2:-1]:
        if e["type"] == "response.output_item.added":
            assert not open_items and e["output_index"] == len(done)  # one item at a time, in order
            open_items[e["output_index"]] = e["item"]
        elif e["type"] == "response.output_item.done":
            assert e["item"]["id"] == open_items.pop(e["output_index"])["id"]
            done.append(e["item"])
        else:
            assert e["output_index"] in open_items and e["item_id"] == open_items[e["output_index"]]["id"]
    if final["type"] != "response.failed":  # a failure may cut an item short
        assert not open_items
        assert final["response"]["output"] == done
        usage = final["response"]["usage"]
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        assert set(usage["input_tokens_details"]) == {"cached_tokens", "cache_write_tokens"}
        assert set(usage["output_tokens_details"]) == {"reasoning_tokens"}


@pytest.mark.parametrize("case", TO_RESPONSES, ids=lambda c: c.name)
def test_streams_to_responses_keep_the_contract(case: Case) -> None:
    raw = case.expected_path.read_bytes()
    assert b"[DONE]" not in raw
    assert_contract(responses_events(raw))


def final(case_name: str) -> dict:
    return responses_events(BY_NAME[case_name].expected_path.read_bytes())[-1]


def test_usage_cached_and_reasoning_tokens() -> None:
    assert final("anthropic_cache_usage.responses")["response"]["usage"] == {
        "input_tokens": 12 + 1800 + 42203, "input_tokens_details": {"cached_tokens": 42203, "cache_write_tokens": 1800},
        "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 12 + 1800 + 42203 + 7,
    }
    usage = final("openai_include_usage.responses")["response"]["usage"]
    assert usage["input_tokens_details"]["cached_tokens"] == 1920
    assert usage["output_tokens_details"]["reasoning_tokens"] == 256


def test_max_tokens_is_incomplete() -> None:
    for name in ("anthropic_cache_usage.responses", "openai_include_usage.responses"):
        event = final(name)
        assert event["type"] == "response.incomplete"
        assert event["response"]["status"] == "incomplete"
        assert event["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_upstream_errors_become_response_failed() -> None:
    event = final("anthropic_error.responses")
    assert event["type"] == "response.failed"
    assert event["response"]["error"] == {"code": "server_error", "message": "Overloaded"}
    assert final("openai_error.responses")["response"]["status"] == "failed"


def test_thinking_becomes_a_reasoning_item_with_its_signature() -> None:
    item = final("anthropic_thinking.responses")["response"]["output"][0]
    assert item["type"] == "reasoning"
    assert item["summary"] == [{"type": "summary_text", "text": "The user asks for 27 * 453. 27 * 453 = 27 * 400 + "
                                                                    "27 * 53 = 10800 + 1431 = 12231."}]
    assert item["encrypted_content"].startswith("EqQBCgIYAhIM")


def test_function_calls_stream_their_arguments() -> None:
    events = responses_events(BY_NAME["anthropic_parallel_tools.responses"].expected_path.read_bytes())
    calls = [e["item"] for e in events if e["type"] == "response.output_item.done" and
             e["item"]["type"] == "function_call"]
    assert [(c["call_id"], json.loads(c["arguments"])) for c in calls] == [
        ("toolu_01AbCdEfGhIjKlMnOpQrStUv", {"location": "Paris, France"}),
        ("toolu_01WxYzAbCdEfGhIjKlMnOpQr", {"timezone": "Europe/Paris"}),
        ("toolu_01NoArgsNoArgsNoArgsNoAr", {}),
    ]
    deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert len(deltas) > len(calls)  # incrementally, not whole at the end
    dones = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [d["arguments"] for d in dones] == [c["arguments"] for c in calls]


# -- the official SDKs consume the translated streams ------------------------------------


def sdk_response(case_name: str) -> openai.types.responses.Response:
    body = BY_NAME[case_name].expected_path.read_bytes()
    client = openai.OpenAI(api_key="k", base_url="http://proxy.test/v1", http_client=_transport(body), max_retries=0)
    with client.responses.stream(model=MODEL, input="hi") as stream:
        for _ in stream:
            pass
        return stream.get_final_response()


def test_openai_sdk_text_from_anthropic_and_chat() -> None:
    assert sdk_response("anthropic_text.responses").output_text == (
        'Bonjour ! Ça va très bien 👋 — 日本語も話せます。\n"Quoted" line.')
    assert sdk_response("openai_text.responses").output_text == 'Grüß Gott 🌍! 你好\n"done"'


def test_openai_sdk_parallel_calls_from_interleaved_chat_stream() -> None:
    response = sdk_response("openai_interleaved_tool_calls.responses")
    calls = [(item.call_id, item.name, json.loads(item.arguments)) for item in response.output]
    assert calls == [("call_Int0aaaaaaaaaaaaaaaaaaaa", "get_weather", {"location": "Tokyo"}),
                     ("call_Int1bbbbbbbbbbbbbbbbbbbb", "get_time", {"timezone": "Europe/Zürich"})]


def test_openai_sdk_reasoning_and_usage() -> None:
    response = sdk_response("openai_reasoning_content.responses")
    assert response.output[0].type == "reasoning"
    assert response.output[0].summary[0].text == "Hmm, 9.11 vs 9.8: 0.80 > 0.11, so 9.8 is larger."
    assert response.output_text == "9.8 is larger."
    assert response.usage.output_tokens_details.reasoning_tokens == 81


def anthropic_message(case_name: str) -> anthropic.types.Message:
    return anthropic_stream_message(BY_NAME[case_name].expected_path.read_bytes())


def chat_completion(case_name: str) -> openai.types.chat.ChatCompletion:
    return openai_stream_completion(BY_NAME[case_name].expected_path.read_bytes())


def test_anthropic_sdk_from_responses_upstream() -> None:
    message = anthropic_message("responses_tool_call.anthropic")
    assert [b.type for b in message.content] == ["thinking", "tool_use"]
    assert message.content[1].input == {"location": "Bogotá, Colombia", "unit": "celsius"}
    assert message.content[1].id == "call_W3ath3rW3ath3rW3ath3r"
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        310 - 256, 256, 52)
    parallel = anthropic_message("responses_parallel_tools.anthropic")
    assert [b.type for b in parallel.content] == ["text", "tool_use", "tool_use", "tool_use"]
    assert [b.input for b in parallel.content[1:]] == [{"location": "Tokyo"}, {"timezone": "Europe/Zürich"}, {}]
    assert anthropic_message("responses_max_tokens.anthropic").stop_reason == "max_tokens"
    assert anthropic_message("responses_text.anthropic").content[0].text == 'Hallo 👋 — ça va? 日本語も。\n"quoted"'


def test_anthropic_sdk_raises_on_failed_and_error() -> None:
    for name, words in (("responses_failed.anthropic", "failed to generate"), ("responses_error.anthropic",
                                                                                 "Rate limit")):
        with pytest.raises(anthropic.APIStatusError, match=words):
            anthropic_message(name)


def test_chat_sdk_from_responses_upstream() -> None:
    completion = chat_completion("responses_parallel_tools.openai")
    calls = completion.choices[0].message.tool_calls
    assert [(c.id, json.loads(c.function.arguments)) for c in calls] == [
        ("call_TokyoTokyoTokyoTokyo", {"location": "Tokyo"}), ("call_ZurichZurichZurichZu", {"timezone": "Europe/Zürich"}),
        ("call_NoArgsNoArgsNoArgsNo", {})]
    assert completion.choices[0].message.content == "Checking both."
    assert completion.choices[0].finish_reason == "tool_calls"
    reasoning = chat_completion("responses_reasoning.openai")
    assert reasoning.usage.completion_tokens_details.reasoning_tokens == 81
    assert chat_completion("responses_max_tokens.openai").choices[0].finish_reason == "length"
    with pytest.raises(openai.APIError, match="Rate limit"):
        chat_completion("responses_error.openai")


def test_corpus_inputs_match_the_sdk_types() -> None:
    from pydantic import TypeAdapter

    event_type = TypeAdapter(openai.types.responses.ResponseStreamEvent)
    for case in RESPONSES_CASES:
        if case.upstream == "responses":
            for event in SSEParser().feed(case.input()):
                assert event_type.validate_python(json.loads(event.data)).type == event.event
        elif case.client == "responses":  # and what we write has those shapes too
            for event in SSEParser().feed(case.expected_path.read_bytes()):
                assert event_type.validate_python(json.loads(event.data)).type == event.event, case.name


# -- holding, bounds and broken ends -------------------------------------------------------


@settings(max_examples=150)
@given(data=st.data())
def test_any_interleaving_of_chat_calls_gives_a_valid_responses_stream(data: st.DataObject) -> None:
    inputs, texts, merged = interleaved_calls(data)
    adapter = ChatToResponsesStream(model=MODEL, request=None, limit=LIMIT, created=CREATED)
    events = responses_events(adapter.feed(_chunks(*merged)) + adapter.finish())
    assert_contract(events)
    output = events[-1]["response"]["output"]
    calls = {item["call_id"]: json.loads(item["arguments"]) for item in output if item["type"] == "function_call"}
    assert calls == {f"id{i}": value for i, value in enumerate(inputs)}
    assert "".join(p["text"] for item in output if item["type"] == "message" for p in item["content"]) == "".join(texts)


def test_interleaved_responses_items_reach_anthropic_clients_one_block_at_a_time() -> None:
    def ev(kind: str, **fields: object) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()

    fc = {"type": "function_call", "arguments": ""}
    raw = b"".join([
        ev("response.created", response={"id": "resp_1"}),
        ev("response.output_item.added", output_index=0, item={**fc, "call_id": "a", "name": "f"}),
        ev("response.output_item.added", output_index=1, item={**fc, "call_id": "b", "name": "g"}),
        ev("response.function_call_arguments.delta", output_index=1, delta='{"y":'),
        ev("response.function_call_arguments.delta", output_index=0, delta='{"x":1}'),
        ev("response.function_call_arguments.delta", output_index=1, delta="2}"),
        ev("response.completed", response={"id": "resp_1", "status": "completed", "usage": None}),
    ])
    adapter = ResponsesToAnthropicStream(model=MODEL)
    events = [json.loads(e.data) for e in SSEParser().feed(adapter.feed(raw) + adapter.finish())]
    starts = [(e["index"], e["content_block"]["id"]) for e in events if e["type"] == "content_block_start"]
    assert starts == [(0, "a"), (1, "b")]
    args = {}
    for e in events:
        if e["type"] == "content_block_delta":
            args[e["index"]] = args.get(e["index"], "") + e["delta"]["partial_json"]
    assert args == {0: '{"x":1}', 1: '{"y":2}'}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_what_a_responses_stream_holds_is_bounded() -> None:
    adapter = AnthropicToResponsesStream(model=MODEL, request=None, limit=100, created=CREATED)
    head = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","usage":{}}}\n\n'
            b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
            b'"content_block":{"type":"text","text":""}}\n\n')
    delta = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,' \
            b'"delta":{"type":"text_delta","text":"' + b"x" * 60 + b'"}}\n\n'
    sent = adapter.feed(head + delta)
    with pytest.raises(UpstreamProtocolError, match="max_response_body_bytes") as info:
        adapter.feed(delta)
    sequence = len(responses_events(sent))
    assert info.value.sequence_number == sequence  # the core's error event continues the count
    event = json.loads(SSEParser().feed(error_event("responses", info.value))[0].data)
    assert event == {"type": "error", "code": "api_error", "message": info.value.message, "param": None,
                     "sequence_number": sequence}


@pytest.mark.parametrize("name", ["anthropic_text", "openai_text"])
def test_truncated_upstream_stream_raises_for_the_core(name: str) -> None:
    raw = BY_NAME[f"{name}.responses"].input()
    cut = raw.index(b"event: message_delta") if name.startswith("anthropic") else raw.index(b'"finish_reason":"stop"')
    cls = AnthropicToResponsesStream if name.startswith("anthropic") else ChatToResponsesStream
    adapter = cls(model=MODEL, request=None, limit=LIMIT, created=CREATED)
    out = adapter.feed(raw[: raw.rindex(b"\n\n", 0, cut) + 2])
    assert b"response.completed" not in out
    with pytest.raises(UpstreamProtocolError, match="ended before it was complete") as info:
        adapter.finish()
    assert info.value.sequence_number == len(responses_events(out))


@pytest.mark.parametrize("client", ["anthropic", "openai"])
def test_responses_stream_without_its_final_event_raises(client: str) -> None:
    raw = BY_NAME[f"responses_text.{client}"].input()
    adapter = BY_NAME[f"responses_text.{client}"].adapter()
    out = adapter.feed(raw[: raw.index(b"event: response.completed")])
    assert b"message_stop" not in out and b"[DONE]" not in out
    with pytest.raises(UpstreamProtocolError, match="ended before it was complete"):
        adapter.finish()


def test_responses_events_that_are_not_json_raise() -> None:
    for adapter in (ResponsesToAnthropicStream(model=MODEL),
                    ResponsesToChatStream(model=MODEL, include_usage=False, thinking=True)):
        with pytest.raises(UpstreamProtocolError, match="not JSON"):
            adapter.feed(b"event: response.created\ndata: {oops\n\n")
