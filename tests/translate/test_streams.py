"""Stream translation: golden files, arbitrary re-splits, and the official SDKs as consumers."""

from __future__ import annotations

import json
import os

import anthropic
import httpx2
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccproxy_core.errors import UpstreamProtocolError
from ccproxy_core.sse import SSEParser
from ccproxy_plugins.translate.streams import AnthropicToOpenAIStream, OpenAIToAnthropicStream, _Block

from .corpus_cases import CASES, CREATED, MODEL, Case, translate
from .strategies import json_values

BY_NAME = {case.name: case for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_golden(case: Case) -> None:
    output = translate(case, [case.input()])
    if os.environ.get("UPDATE_GOLDEN"):
        case.expected_path.write_bytes(output)
    assert output == case.expected_path.read_bytes()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_single_split_point(case: Case) -> None:
    """Two reads, split at every byte: inside multi-byte UTF-8, between \\r and \\n, …"""
    data = case.input()
    expected = case.expected_path.read_bytes()
    for cut in range(len(data) + 1):
        assert translate(case, [data[:cut], data[cut:]]) == expected, cut


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_byte_by_byte(case: Case) -> None:
    data = case.input()
    assert translate(case, [data[i : i + 1] for i in range(len(data))]) == case.expected_path.read_bytes()


@settings(max_examples=300)
@given(case=st.sampled_from(CASES), data=st.data())
def test_random_resplits_give_identical_output(case: Case, data: st.DataObject) -> None:
    raw = case.input()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=40)))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
    assert translate(case, pieces) == case.expected_path.read_bytes()


def test_outputs_are_well_formed_streams() -> None:
    """Every golden output is valid SSE with JSON data in the client's framing."""
    for case in CASES:
        events = SSEParser().feed(case.expected_path.read_bytes())
        assert events, case.name
        for event in events:
            if case.upstream == "anthropic":  # OpenAI client: data-only frames
                assert event.event is None
                if event.data != "[DONE]":
                    json.loads(event.data)
            else:  # Anthropic client: event name equals data type
                assert event.event == json.loads(event.data)["type"], case.name


# -- Anthropic -> OpenAI: structure ------------------------------------------------


def chunks(case_name: str) -> list[dict]:
    events = SSEParser().feed(BY_NAME[case_name].expected_path.read_bytes())
    return [json.loads(e.data) for e in events if e.data != "[DONE]"]


def test_openai_chunks_share_id_created_model_and_role_comes_first() -> None:
    out = chunks("anthropic_tool_call")
    assert {c["id"] for c in out} == {"chatcmpl-msg_014p7gG3wDgGV9EUtLvnow3U"}
    assert {c["created"] for c in out} == {CREATED}
    assert {c["model"] for c in out} == {MODEL}
    assert out[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in out[1:] if c["choices"])


def test_openai_tool_call_indexes_count_tool_calls_not_blocks() -> None:
    out = chunks("anthropic_tool_call")
    calls = [tc for c in out if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert {tc["index"] for tc in calls} == {0}  # the Anthropic block index was 1
    assert calls[0] == {
        "index": 0,
        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert all(set(tc) == {"index", "function"} for tc in calls[1:])
    assert len(calls) == 5  # streamed incrementally: the empty first piece is skipped
    args = "".join(tc["function"]["arguments"] for tc in calls)
    assert json.loads(args) == {"location": "San Francisco, CA", "unit": "fahrenheit"}


def test_openai_finish_reason_only_on_last_choice_chunk_then_usage() -> None:
    out = chunks("anthropic_tool_call")
    reasons = [c["choices"][0]["finish_reason"] for c in out if c["choices"]]
    assert reasons[-1] == "tool_calls" and set(reasons[:-1]) == {None}
    assert out[-1]["choices"] == []
    assert out[-1]["usage"] == {
        "prompt_tokens": 472,
        "completion_tokens": 89,
        "total_tokens": 561,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_openai_usage_counts_cache_tokens_as_prompt_tokens() -> None:
    usage = chunks("anthropic_cache_usage")[-1]["usage"]
    assert usage["prompt_tokens"] == 12 + 1800 + 42203
    assert usage["prompt_tokens_details"] == {"cached_tokens": 42203, "cache_write_tokens": 1800}
    assert usage["completion_tokens"] == 7
    assert chunks("anthropic_cache_usage")[-2]["choices"][0]["finish_reason"] == "length"


def test_openai_usage_chunk_only_when_asked() -> None:
    assert all(c["choices"] for c in chunks("anthropic_text"))
    assert chunks("anthropic_text.include_usage")[-1]["choices"] == []


def test_openai_stream_ends_with_done_exactly_once() -> None:
    for case in CASES:
        if case.upstream == "anthropic" and case.name != "anthropic_error":
            assert case.expected_path.read_bytes().endswith(b"data: {") is False
            assert case.expected_path.read_bytes().count(b"data: [DONE]") == 1, case.name


def test_openai_error_frame_ends_stream_without_done() -> None:
    raw = BY_NAME["anthropic_error"].expected_path.read_bytes()
    assert b"[DONE]" not in raw
    last = chunks("anthropic_error")[-1]
    assert last == {
        "error": {"message": "Overloaded", "type": "server_error", "param": None, "code": "overloaded_error"}
    }


def test_thinking_rule() -> None:
    kept = [c["choices"][0]["delta"].get("reasoning_content") for c in chunks("anthropic_thinking")]
    assert "".join(x for x in kept if x) == "The user asks for 27 * 453. 27 * 453 = 27 * 400 + 27 * 53 = 10800 + 1431 = 12231."
    dropped = BY_NAME["anthropic_thinking.drop"].expected_path.read_bytes()
    assert b"reasoning_content" not in dropped and b"signature" not in dropped


def test_unknown_events_pings_and_citations_are_dropped() -> None:
    raw = BY_NAME["anthropic_unknown_event"].expected_path.read_bytes()
    for word in (b"future", b"ping", b"citation"):
        assert word not in raw
    assert [c["choices"][0]["finish_reason"] for c in chunks("anthropic_unknown_event")][-1] == "stop"


# -- OpenAI -> Anthropic: structure ------------------------------------------------


def events(case_name: str) -> list[dict]:
    return [json.loads(e.data) for e in SSEParser().feed(BY_NAME[case_name].expected_path.read_bytes())]


def test_anthropic_event_order_and_block_indexes() -> None:
    out = events("openai_parallel_tool_calls")
    assert [e["type"] for e in out] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    starts = [e for e in out if e["type"] == "content_block_start"]
    assert [s["index"] for s in starts] == [0, 1, 2]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use", "tool_use"]
    assert starts[2]["content_block"]["id"] == "call_VrS8hwDRdm1gnBhbE1u2Fj5K"
    delta = out[-2]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"]["input_tokens"] == 95 and delta["usage"]["output_tokens"] == 52


def test_anthropic_usage_waits_for_the_usage_chunk() -> None:
    out = events("openai_include_usage")
    assert out[0]["message"]["usage"]["input_tokens"] == 0
    assert out[-2]["delta"]["stop_reason"] == "max_tokens"
    assert out[-2]["usage"] == {
        "input_tokens": 2006 - 1920,
        "output_tokens": 300,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 1920,
        "output_tokens_details": {"thinking_tokens": 256},
    }


def test_anthropic_error_event_ends_stream() -> None:
    out = events("openai_error")
    assert out[-1] == {
        "type": "error",
        "error": {
            "type": "api_error",
            "message": "The server had an error while processing your request. Sorry about that!",
        },
    }
    assert "message_stop" not in [e["type"] for e in out]


def test_reasoning_content_becomes_a_thinking_block() -> None:
    out = events("openai_reasoning_content")
    starts = [e["content_block"] for e in out if e["type"] == "content_block_start"]
    assert starts == [{"type": "thinking", "thinking": "", "signature": ""}, {"type": "text", "text": ""}]


# -- The official SDKs consume the translated streams ------------------------------


def _transport(body: bytes) -> httpx2.Client:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return httpx2.Client(transport=httpx2.MockTransport(handler))


def anthropic_final_message(case_name: str) -> anthropic.types.Message:
    return anthropic_stream_message(BY_NAME[case_name].expected_path.read_bytes())


def anthropic_stream_message(body: bytes) -> anthropic.types.Message:
    """What the Anthropic SDK makes of ``body`` as a Messages stream."""
    client = anthropic.Anthropic(api_key="k", base_url="http://proxy.test", http_client=_transport(body), max_retries=0)
    with client.messages.stream(model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as stream:
        return stream.get_final_message()


def openai_final_completion(case_name: str) -> openai.types.chat.ChatCompletion:
    return openai_stream_completion(BY_NAME[case_name].expected_path.read_bytes())


def openai_stream_completion(body: bytes) -> openai.types.chat.ChatCompletion:
    """What the OpenAI SDK makes of ``body`` as a Chat Completions stream."""
    client = openai.OpenAI(api_key="k", base_url="http://proxy.test/v1", http_client=_transport(body), max_retries=0)
    with client.chat.completions.stream(model=MODEL, messages=[{"role": "user", "content": "hi"}]) as stream:
        for _ in stream:
            pass
        # the snapshot, not get_final_completion(): that refuses finish_reason "length"
        return stream.current_completion_snapshot


def test_anthropic_sdk_text() -> None:
    message = anthropic_final_message("openai_text")
    assert message.content[0].type == "text"
    assert message.content[0].text == 'Grüß Gott 🌍! 你好\n"done"'
    assert message.stop_reason == "end_turn"
    assert message.model == MODEL
    assert message.id == "msg_chatcmpl-C9mXq2Lh7zVbN1kPqR3sT5uW"


def test_anthropic_sdk_tool_calls_and_usage() -> None:
    message = anthropic_final_message("openai_tool_calls")
    assert message.stop_reason == "tool_use"
    [tool] = message.content
    assert tool.type == "tool_use" and tool.id == "call_DdmO9pD3xa9XTPNJ32zg2hcA" and tool.name == "get_weather"
    assert tool.input == {"location": "Bogotá, Colombia"}
    assert (message.usage.input_tokens, message.usage.output_tokens) == (82, 17)


def test_anthropic_sdk_parallel_tool_calls() -> None:
    message = anthropic_final_message("openai_parallel_tool_calls")
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert [b.input for b in message.content[1:]] == [{"location": "Tokyo"}, {"location": "Zürich"}]
    assert message.usage.input_tokens == 95


def test_anthropic_sdk_interleaved_parallel_tool_calls() -> None:
    message = anthropic_final_message("openai_interleaved_tool_calls")
    assert message.stop_reason == "tool_use"
    assert [(b.type, b.id, b.name, b.input) for b in message.content] == [
        ("tool_use", "call_Int0aaaaaaaaaaaaaaaaaaaa", "get_weather", {"location": "Tokyo"}),
        ("tool_use", "call_Int1bbbbbbbbbbbbbbbbbbbb", "get_time", {"timezone": "Europe/Zürich"}),
    ]


def test_anthropic_sdk_usage_from_final_message_delta() -> None:
    message = anthropic_final_message("openai_include_usage")
    assert message.usage.input_tokens == 86
    assert message.usage.cache_read_input_tokens == 1920
    assert message.usage.output_tokens == 300
    assert message.stop_reason == "max_tokens"


def test_anthropic_sdk_thinking() -> None:
    message = anthropic_final_message("openai_reasoning_content")
    assert message.content[0].type == "thinking"
    assert message.content[0].thinking == "Hmm, 9.11 vs 9.8: 0.80 > 0.11, so 9.8 is larger."
    assert message.content[1].text == "9.8 is larger."


def test_anthropic_sdk_raises_on_error_event() -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        anthropic_final_message("openai_error")
    assert "server had an error" in str(info.value)


def test_openai_sdk_text() -> None:
    completion = openai_final_completion("anthropic_text")
    assert completion.choices[0].message.content == 'Bonjour ! Ça va très bien 👋 — 日本語も話せます。\n"Quoted" line.'
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == MODEL


def test_openai_sdk_tool_calls() -> None:
    completion = openai_final_completion("anthropic_parallel_tools")
    calls = completion.choices[0].message.tool_calls
    assert [c.id for c in calls] == [
        "toolu_01AbCdEfGhIjKlMnOpQrStUv",
        "toolu_01WxYzAbCdEfGhIjKlMnOpQr",
        "toolu_01NoArgsNoArgsNoArgsNoAr",
    ]
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"location": "Paris, France"},
        {"timezone": "Europe/Paris"},
        {},
    ]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage is not None and completion.usage.prompt_tokens == 610


def test_openai_sdk_usage_with_cache() -> None:
    completion = openai_final_completion("anthropic_cache_usage")
    assert completion.usage.prompt_tokens == 44015
    assert completion.usage.prompt_tokens_details.cached_tokens == 42203
    assert completion.usage.prompt_tokens_details.cache_write_tokens == 1800


def test_openai_sdk_raises_on_error_frame() -> None:
    with pytest.raises(openai.APIError) as info:
        openai_final_completion("anthropic_error")
    assert "Overloaded" in str(info.value)


# -- Ends that are not clean ---------------------------------------------------------


def test_truncated_anthropic_stream_raises_for_the_core() -> None:
    raw = BY_NAME["anthropic_text"].input()
    cut = raw.index(b"event: message_delta")
    adapter = AnthropicToOpenAIStream(model=MODEL, include_usage=False, thinking=True)
    out = adapter.feed(raw[:cut])
    assert b"[DONE]" not in out and b"finish_reason\":\"stop" not in out
    with pytest.raises(UpstreamProtocolError, match="ended before it was complete"):
        adapter.finish()
    assert adapter.complete is False


def test_anthropic_stream_without_message_stop_still_completes() -> None:
    raw = BY_NAME["anthropic_text"].input()
    adapter = AnthropicToOpenAIStream(model=MODEL, include_usage=False, thinking=True)
    out = adapter.feed(raw[: raw.index(b"event: message_stop")]) + adapter.finish()
    assert out.endswith(b"data: [DONE]\n\n") and adapter.complete


def test_openai_stream_without_done_completes_after_finish_reason() -> None:
    raw = BY_NAME["openai_text"].input()
    adapter = OpenAIToAnthropicStream(model=MODEL)
    out = adapter.feed(raw[: raw.index(b"data: [DONE]")]) + adapter.finish()
    assert out.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n') and adapter.complete


def test_openai_stream_without_finish_reason_raises_for_the_core() -> None:
    raw = BY_NAME["openai_text"].input()
    cut = raw.rindex(b"data: ", 0, raw.index(b'"finish_reason":"stop"'))
    adapter = OpenAIToAnthropicStream(model=MODEL)
    out = adapter.feed(raw[:cut])
    assert b"message_delta" not in out
    with pytest.raises(UpstreamProtocolError):
        adapter.finish()


def test_empty_upstream_body_raises() -> None:
    for adapter in (OpenAIToAnthropicStream(model=MODEL), AnthropicToOpenAIStream(model=MODEL, include_usage=True, thinking=True)):
        with pytest.raises(UpstreamProtocolError):
            adapter.finish()


def test_events_that_are_not_json_raise() -> None:
    with pytest.raises(UpstreamProtocolError, match="not JSON"):
        OpenAIToAnthropicStream(model=MODEL).feed(b"data: {oops\n\n")
    with pytest.raises(UpstreamProtocolError, match="not JSON"):
        AnthropicToOpenAIStream(model=MODEL, include_usage=False, thinking=True).feed(b"event: message_start\ndata: {oops\n\n")


def test_openai_last_frame_without_blank_line_is_used() -> None:
    raw = BY_NAME["openai_text"].input().rstrip(b"\n")
    adapter = OpenAIToAnthropicStream(model=MODEL)
    out = adapter.feed(raw) + adapter.finish()
    assert out == BY_NAME["openai_text"].expected_path.read_bytes()


def test_openrouter_style_in_band_error_with_numeric_code() -> None:
    frame = b'data: {"id":"gen-1","object":"chat.completion.chunk","created":1,"model":"x","error":{"code":429,"message":"Rate limited upstream"},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}\n\n'
    adapter = OpenAIToAnthropicStream(model=MODEL)
    out = adapter.feed(frame)
    assert out.endswith(
        b'event: error\ndata: {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limited upstream"}}\n\n'
    )
    assert adapter.feed(b"data: [DONE]\n\n") == b"" and adapter.finish() == b""


def _chunks(*deltas: dict, finish: str | None = "tool_calls") -> bytes:
    frames = [{"id": "c", "choices": [{"index": 0, "delta": delta}]} for delta in deltas]
    if finish:
        frames.append({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    return b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames) + b"data: [DONE]\n\n"


def _call(index: int, arguments: str, id: str | None = None, name: str | None = None) -> dict:
    fragment: dict = {"index": index, "function": {"arguments": arguments}}
    if id:
        fragment["id"], fragment["type"], fragment["function"]["name"] = id, "function", name
    return {"tool_calls": [fragment]}


def _blocks(out: bytes) -> list[tuple]:
    """(event type, block index, what it carries) for the content-block events of an Anthropic stream."""
    events = [json.loads(e.data) for e in SSEParser().feed(out)]
    rows = []
    for e in events:
        if e["type"] == "content_block_start":
            rows.append(("start", e["index"], e["content_block"].get("id") or e["content_block"]["type"]))
        elif e["type"] == "content_block_delta":
            d = e["delta"]
            rows.append(("delta", e["index"], d.get("partial_json", d.get("text"))))
        elif e["type"] == "content_block_stop":
            rows.append(("stop", e["index"], None))
    return rows


def test_interleaved_parallel_tool_calls_hold_the_later_call_until_the_first_is_complete() -> None:
    out = OpenAIToAnthropicStream(model=MODEL).feed(_chunks(
        _call(0, "", "a", "f"),
        _call(1, "", "b", "g"),
        _call(0, '{"x":'),
        _call(1, '{"y":'),
        _call(0, " 1}"),  # a is complete here: b is released and streams on
        _call(1, " 2}"),
    ))
    assert _blocks(out) == [
        ("start", 0, "a"), ("delta", 0, '{"x":'), ("delta", 0, " 1}"), ("stop", 0, None),
        ("start", 1, "b"), ("delta", 1, '{"y":'), ("delta", 1, " 2}"), ("stop", 1, None),
    ]


def test_text_and_calls_arriving_inside_an_open_call_are_held_in_order() -> None:
    out = OpenAIToAnthropicStream(model=MODEL).feed(_chunks(
        _call(0, '{"x":', "a", "f"),
        _call(1, '{"y":', "b", "g"),
        {"content": "note"},
        _call(2, "{}", "c", "h"),
        _call(1, "2}"),
        _call(0, "1}"),  # released in arrival order: b, the text, c (the last, left open)
        {"content": " more"},  # came after c: a new block, never moved ahead of c
    ))
    assert _blocks(out) == [
        ("start", 0, "a"), ("delta", 0, '{"x":'), ("delta", 0, "1}"), ("stop", 0, None),
        ("start", 1, "b"), ("delta", 1, '{"y":2}'), ("stop", 1, None),
        ("start", 2, "text"), ("delta", 2, "note"), ("stop", 2, None),
        ("start", 3, "c"), ("delta", 3, "{}"), ("stop", 3, None),
        ("start", 4, "text"), ("delta", 4, " more"), ("stop", 4, None),
    ]


def test_text_pieces_held_on_both_sides_of_a_call_keep_their_order() -> None:
    """Found by the property test below: text held before and after a held call, then more text."""
    out = OpenAIToAnthropicStream(model=MODEL).feed(_chunks(
        _call(0, "", "a", "f"),
        {"content": "x"},  # held: a may go on
        _call(1, "{}", "b", "g"),  # held
        {"content": "y"},  # held, after b
        _call(0, "{}"),  # a complete: the text, b and the second text are released in order
        {"content": "z"},
    ))
    assert _blocks(out) == [
        ("start", 0, "a"), ("delta", 0, "{}"), ("stop", 0, None),
        ("start", 1, "text"), ("delta", 1, "x"), ("stop", 1, None),
        ("start", 2, "b"), ("delta", 2, "{}"), ("stop", 2, None),
        ("start", 3, "text"), ("delta", 3, "y"), ("delta", 3, "z"), ("stop", 3, None),
    ]


def interleaved_calls(data: st.DataObject) -> tuple[list[dict], list[str], list[dict]]:
    """(the calls' arguments, the text pieces, Chat deltas): 1-4 calls and some text, each cut
    into random pieces, merged in any order that keeps each one's own order."""
    n = data.draw(st.integers(1, 4))
    inputs = [data.draw(st.dictionaries(st.sampled_from("abc"), st.integers() | st.text(max_size=5), max_size=3))
              for _ in range(n)]
    streams: list[list[dict]] = []
    for i, value in enumerate(inputs):
        text = json.dumps(value)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=4)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        streams.append([_call(i, pieces[0], f"id{i}", f"f{i}"), *(_call(i, p) for p in pieces[1:])])
    texts = data.draw(st.lists(st.sampled_from(["x", "yz"]), max_size=3))
    streams.append([{"content": t} for t in texts])
    merged: list[dict] = []
    while any(streams):
        merged.append(data.draw(st.sampled_from([s for s in streams if s])).pop(0))
    return inputs, texts, merged


@settings(max_examples=200)
@given(data=st.data())
def test_any_interleaving_of_parallel_calls_and_text_gives_a_valid_stream_with_every_input(data: st.DataObject) -> None:
    """Calls (and text) cut into random pieces and merged in any order that keeps each one's own order."""
    inputs, texts, merged = interleaved_calls(data)
    out = OpenAIToAnthropicStream(model=MODEL).feed(_chunks(*merged))
    rows = _blocks(out)
    open_block, seen, args, kinds = None, [], {}, {}
    for kind, index, value in rows:  # one block at a time, indexes 0, 1, … in order
        if kind == "start":
            assert open_block is None and index == len(seen)
            open_block = index
            seen.append(index)
            kinds[index] = value
        elif kind == "delta":
            assert index == open_block
            args[index] = args.get(index, "") + value
        else:
            assert index == open_block
            open_block = None
    assert open_block is None
    calls = {kinds[i]: json.loads(args.get(i) or "{}") for i in seen if kinds[i] != "text"}
    assert calls == {f"id{i}": value for i, value in enumerate(inputs)}
    assert "".join(args.get(i, "") for i in seen if kinds[i] == "text") == "".join(texts)


def test_arguments_after_a_complete_json_object_are_an_error() -> None:
    adapter = OpenAIToAnthropicStream(model=MODEL)
    adapter.feed(_chunks(_call(0, "{}", "a", "f"), _call(1, "{", "b", "g"), finish=None).rsplit(b"data: [DONE]", 1)[0])
    assert adapter.feed(b"data: " + json.dumps({"id": "c", "choices": [{"index": 0, "delta": _call(0, " ")}]}).encode()
                        + b"\n\n") == b""  # whitespace after the object: harmless
    with pytest.raises(UpstreamProtocolError, match="complete JSON object"):
        adapter.feed(b"data: " + json.dumps({"id": "c", "choices": [{"index": 0, "delta": _call(0, "x")}]}).encode()
                     + b"\n\n")


def test_whole_tool_calls_without_index_each_get_a_block() -> None:
    """Servers that send each call whole and omit ``index`` (Gemini's OpenAI API)."""
    frames = b"".join(
        b"data: " + json.dumps({"id": "c", "choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n"
        for delta in (
            {"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}]},
            {"tool_calls": [{"id": "b", "type": "function", "function": {"name": "g", "arguments": '{"y":2}'}}]},
        )
    ) + b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\ndata: [DONE]\n\n'
    adapter = OpenAIToAnthropicStream(model=MODEL)
    out = [json.loads(e.data) for e in SSEParser().feed(adapter.feed(frames))]
    starts = [e["content_block"] for e in out if e["type"] == "content_block_start"]
    assert [(b["id"], b["name"]) for b in starts] == [("a", "f"), ("b", "g")]
    assert [e["index"] for e in out if e["type"] == "content_block_stop"] == [0, 1]


def test_tool_calls_with_finish_reason_stop_are_tool_use() -> None:
    frames = (
        b'data: {"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]}}]}\n\n'
        b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n"
    )
    adapter = OpenAIToAnthropicStream(model=MODEL)
    assert b'"stop_reason":"tool_use"' in adapter.feed(frames)


def test_anthropic_tool_with_initial_input_and_no_deltas() -> None:
    frames = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{"a":1}}}\n\n'
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    )
    adapter = AnthropicToOpenAIStream(model=MODEL, include_usage=False, thinking=True)
    out = [json.loads(e.data) for e in SSEParser().feed(adapter.feed(frames))]
    assert out[-1]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == '{"a":1}'
    assert len(out) == 2  # no extra "{}" for a call whose input came whole


def test_corpus_inputs_match_the_sdk_types() -> None:
    """The recorded upstream streams have the shapes the official SDKs' types describe."""
    from pydantic import TypeAdapter

    anthropic_event = TypeAdapter(anthropic.types.RawMessageStreamEvent)
    for case in CASES:
        for event in SSEParser().feed(case.input()):
            if event.data == "[DONE]":
                continue
            payload = json.loads(event.data)
            if case.upstream == "anthropic":
                if event.event in ("ping", "error") or "future_" in event.data:  # deliberately unknown types
                    continue
                assert anthropic_event.validate_python(payload).type == event.event
            elif "error" not in payload:
                openai.types.chat.ChatCompletionChunk.model_validate(payload)


# -- what the Chat reader holds, and how it sees a call's end ----------------------------


def test_what_is_held_behind_an_open_call_is_bounded() -> None:
    adapter = OpenAIToAnthropicStream(model=MODEL, limit=100)
    adapter.feed(_chunks(_call(0, '{"x":', "a", "f"), _call(1, '{"y":"' + "z" * 60, "b", "g"), finish=None)
                 .rsplit(b"data: [DONE]", 1)[0])
    with pytest.raises(UpstreamProtocolError, match="max_response_body_bytes"):
        adapter.feed(_chunks({"content": "w" * 50}, finish=None).rsplit(b"data: [DONE]", 1)[0])


@settings(max_examples=300)
@given(value=json_values, data=st.data())
def test_a_calls_end_is_seen_exactly_when_its_object_closes(value: object, data: st.DataObject) -> None:
    """The scanner follows strings, escapes and nesting split anywhere, each character once."""
    text = json.dumps({"v": value, "s": '"}\\\\{'}, ensure_ascii=data.draw(st.booleans()),
                      indent=data.draw(st.sampled_from([None, 1])))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    block = _Block("tool")
    for a, b in zip([0, *cuts], [*cuts, len(text)]):
        assert block.complete() == (not text[a:].strip())  # done once only white space is left
        block.scan(text[a:b])
    assert block.complete()
    for bad in ("[1]", '{"a": 1} {', '"x"'):
        wrong = _Block("tool")
        wrong.scan(bad)
        assert not wrong.complete(), bad
