"""The mock upstream over a real socket: faithful to both SDKs, and its faults really happen."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.mock_upstream import DEFAULT_TEXT, MockUpstream, MockUpstreamThread, Scenario

MESSAGES: dict[str, Any] = {"model": "claude-test-1", "max_tokens": 64,
                            "messages": [{"role": "user", "content": "hi"}]}
CHAT: dict[str, Any] = {"model": "gpt-test-1", "messages": [{"role": "user", "content": "hi"}]}
SF = {"location": "San Francisco, CA", "unit": "celsius"}
TOKYO = {"location": "Tokyo, Japan", "unit": "celsius"}
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "x"}
# dialect -> (path, request body); the body's "stream" is set per test
DIALECTS = {"anthropic": ("/v1/messages", MESSAGES), "openai": ("/v1/chat/completions", CHAT)}


_clients: list[anthropic.Anthropic | openai.OpenAI] = []


@pytest.fixture
def mock() -> Iterator[MockUpstreamThread]:
    """A running mock; SDK clients made by :func:`claude`/:func:`gpt` are closed afterwards."""
    with MockUpstreamThread() as upstream:
        try:
            yield upstream
        finally:
            while _clients:
                _clients.pop().close()
        assert upstream.errors == []


def claude(mock: MockUpstreamThread, headers: dict[str, str] | None = None) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=mock.url, api_key="x", max_retries=0, default_headers=headers)
    _clients.append(client)
    return client


def gpt(mock: MockUpstreamThread, headers: dict[str, str] | None = None) -> openai.OpenAI:
    client = openai.OpenAI(base_url=mock.url + "/v1", api_key="x", max_retries=0, default_headers=headers)
    _clients.append(client)
    return client


def parse_sse(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) per event; accepts \\n and \\r\\n line ends."""
    events = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        if block:
            lines = dict(line.split(": ", 1) for line in block.split("\n"))
            events.append((lines.get("event"), lines["data"]))
    return events


def post(mock: MockUpstreamThread, dialect: str, headers: dict[str, str] | None = None,
         stream: bool = True, **extra: Any) -> httpx.Response:
    path, body = DIALECTS[dialect]
    return httpx.post(mock.url + path, json={**body, "stream": stream, **extra},
                      headers={**ANTHROPIC_HEADERS, **(headers or {})}, timeout=10)


# --------------------------------------------------------------------------- SDK fidelity

ANTHROPIC_CONTENT = {  # x-mock-content -> (block types, stop_reason, tool inputs)
    "text": (["text"], "end_turn", []),
    "tools": (["tool_use"], "tool_use", [SF]),
    "parallel_tools": (["tool_use", "tool_use"], "tool_use", [SF, TOKYO]),
    "thinking": (["thinking", "text"], "end_turn", []),
}


@pytest.mark.parametrize("content", ANTHROPIC_CONTENT)
def test_anthropic_sdk_stream_equals_json(mock: MockUpstreamThread, content: str) -> None:
    client = claude(mock, {"x-mock-content": content})
    with client.messages.stream(**MESSAGES) as stream:
        streamed = stream.get_final_message()
    whole = client.messages.create(**MESSAGES)  # validates as anthropic.types.Message
    types, stop_reason, inputs = ANTHROPIC_CONTENT[content]
    for message in (streamed, whole):
        assert [b.type for b in message.content] == types
        assert message.stop_reason == stop_reason
        assert message.model == "claude-test-1" and message.id.startswith("msg_")
        assert [b.input for b in message.content if b.type == "tool_use"] == inputs
        assert all(b.text == DEFAULT_TEXT for b in message.content if b.type == "text")
        assert all(b.signature for b in message.content if b.type == "thinking")
        assert message.usage.input_tokens == 12 and message.usage.cache_read_input_tokens == 3
        assert message.usage.cache_creation_input_tokens == 0 and message.usage.output_tokens > 0
    assert [b.model_dump() for b in streamed.content] == [b.model_dump() for b in whole.content]
    assert streamed.usage.output_tokens == whole.usage.output_tokens
    assert [r.path for r in mock.requests] == ["/v1/messages"] * 2


def test_anthropic_stream_shape(mock: MockUpstreamThread) -> None:
    response = post(mock, "anthropic", {"x-mock-events": "4", "x-mock-unknown-event": "1"})
    events = parse_sse(response.content)
    names = [name for name, _ in events]
    assert names == ["message_start", "ping", "future_event", "content_block_start",
                     *["content_block_delta"] * 4, "content_block_stop", "message_delta", "message_stop"]
    assert all(json.loads(data)["type"] == name for name, data in events)
    assert json.loads(events[-2][1])["usage"] == {"output_tokens": 4}
    for header in ("request-id", "anthropic-organization-id", "anthropic-ratelimit-requests-limit",
                   "anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset",
                   "set-cookie", "connection"):
        assert header in response.headers
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.headers["content-type"].startswith("text/event-stream")
    # the SDK skips the unknown event
    with claude(mock, {"x-mock-unknown-event": "1"}).messages.stream(**MESSAGES) as stream:
        assert stream.get_final_text() == DEFAULT_TEXT


OPENAI_CONTENT = {  # x-mock-content -> (text, tool calls (name, arguments), finish_reason)
    "text": (DEFAULT_TEXT, [], "stop"),
    "tools": (None, [("get_weather", SF)], "tool_calls"),
    "parallel_tools": (None, [("get_weather", SF), ("get_weather", TOKYO)], "tool_calls"),
}


@pytest.mark.parametrize("content", OPENAI_CONTENT)
def test_openai_sdk_stream_equals_json(mock: MockUpstreamThread, content: str) -> None:
    client = gpt(mock, {"x-mock-content": content})
    whole = client.chat.completions.create(**CHAT)  # validates as ChatCompletion
    chunks = list(client.chat.completions.create(**CHAT, stream=True,
                                                 stream_options={"include_usage": True}))
    text, tools, finish = OPENAI_CONTENT[content]

    message = whole.choices[0].message
    assert (message.content, whole.choices[0].finish_reason, whole.model) == (text, finish, "gpt-test-1")
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []] == tools
    assert whole.usage is not None and whole.usage.prompt_tokens == 12

    # accumulate the stream as a client would
    assert len({(c.id, c.created) for c in chunks}) == 1
    choice_chunks = [c for c in chunks if c.choices]
    assert choice_chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in choice_chunks] == [None] * (len(choice_chunks) - 1) + [finish]
    streamed_text = "".join(c.choices[0].delta.content or "" for c in choice_chunks)
    calls: dict[int, dict[str, str]] = {}
    for chunk in choice_chunks:
        for fragment in chunk.choices[0].delta.tool_calls or []:
            if fragment.index not in calls:  # the first fragment names the call
                assert fragment.id and fragment.function and fragment.function.name
                calls[fragment.index] = {"id": fragment.id, "name": fragment.function.name, "arguments": ""}
            calls[fragment.index]["arguments"] += fragment.function.arguments or ""
    assert (streamed_text or None) == text
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == tools
    assert [c["id"] for c in calls.values()] == [c.id for c in message.tool_calls or []]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


@pytest.mark.parametrize("include_usage", [True, False, None])
def test_openai_usage_chunk_only_when_asked(mock: MockUpstreamThread, include_usage: bool | None) -> None:
    extra = {} if include_usage is None else {"stream_options": {"include_usage": include_usage}}
    events = parse_sse(post(mock, "openai", **extra).content)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(data) for _, data in events[:-1]]
    usage_chunks = [c for c in chunks if c.get("usage")]
    assert len(usage_chunks) == (1 if include_usage else 0)
    if include_usage:
        assert usage_chunks[0]["choices"] == [] and usage_chunks[0]["usage"]["prompt_tokens"] == 12


# --------------------------------------------------------------------------- wire behaviour


@pytest.mark.parametrize("dialect", DIALECTS)
def test_events_arrive_separately_spaced_by_delay(mock: MockUpstreamThread, dialect: str) -> None:
    """The mock sleeps ``delay`` before each event, so event k cannot arrive before (k+1) delays.

    Measured from before the request is sent: a loaded machine can only make events arrive
    later (several in one read, gaps between reads shrinking to nothing), never earlier, so the
    bound holds under any load and fails for a mock that sends events together or early.
    """
    delay = 0.05
    path, body = DIALECTS[dialect]
    arrivals: list[float] = []
    with httpx.Client(timeout=10) as client:
        sent = time.monotonic()
        with client.stream("POST", mock.url + path, json={**body, "stream": True},
                           headers={"x-mock-delay": "50", "x-mock-events": "2"}) as response:
            for piece in response.iter_raw():
                arrivals += [time.monotonic() - sent] * piece.count(b"\n\n")
    expected = 8 if dialect == "anthropic" else 5
    assert len(arrivals) == expected
    early = [(k, at) for k, at in enumerate(arrivals) if at < (k + 1) * delay]
    assert not early, arrivals


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_stream_starts_before_its_events_are_built(mock: MockUpstreamThread, dialect: str) -> None:
    """Events are generated as they are sent, so the head and the first events of a stream of a
    billion deltas arrive at once (building them first would take hours and all the memory)."""
    path, body = DIALECTS[dialect]
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", mock.url + path, json={**body, "stream": True},
                           headers={"x-mock-events": str(10**9)}) as response:
            assert response.status_code == 200
            received = b""
            for piece in response.iter_raw():
                received += piece
                if received.count(b"\n\n") >= 5:
                    break
    assert parse_sse(received.rpartition(b"\n\n")[0] + b"\n\n")[0][0] == (
        "message_start" if dialect == "anthropic" else None)
    assert mock.wait_for(lambda u: u.disconnects == 1 and u.active_streams == 0)


def test_keep_alive_and_request_bodies(mock: MockUpstreamThread) -> None:
    with httpx.Client(base_url=mock.url, timeout=10) as client:
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert client.post("/v1/messages?beta=true", json=MESSAGES).status_code == 200
        chunked = client.post("/v1/x?a=1&b=2", content=iter([b'{"model":', b'"m"}']),
                              headers={"x-mock-echo": "1", "X-Custom-Case": "Kept"})
    assert mock.connections_accepted == 1
    assert {r.connection_id for r in mock.requests} == {1}
    echo = chunked.json()
    assert echo["method"] == "POST" and echo["path"] == "/v1/x" and echo["query"] == "a=1&b=2"
    assert ["X-Custom-Case", "Kept"] in echo["headers"]
    assert ["Transfer-Encoding", "chunked"] in echo["headers"]
    assert echo["body"] == '{"model":"m"}' and mock.requests[-1].body == b'{"model":"m"}'
    assert mock.requests[1].query == "beta=true" and mock.requests[1].json() == MESSAGES
    assert mock.wait_for(lambda u: u.open_connections == 0 and u.completed == 3)


def test_pipelined_chunked_request_with_trailers() -> None:
    async def run() -> list[bytes]:
        upstream = MockUpstream()
        await upstream.start()
        reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
        body = json.dumps(CHAT).encode()
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x;ext=1\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n" % (len(body), body)
                     + b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)  # the server closes after the second reply
        writer.close()
        await writer.wait_closed()
        await upstream.stop()
        assert upstream.errors == [] and upstream.completed == 2
        assert [r.json()["model"] for r in upstream.requests[:1]] == ["gpt-test-1"]
        return raw.split(b"HTTP/1.1 ")[1:]

    first, second = asyncio.run(run())
    assert first.startswith(b"200 OK") and b'"chat.completion"' in first
    assert second.startswith(b"200 OK") and b"connection: close" in second and b'"gpt-4o"' in second


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("mode", ["x-mock-split", "x-mock-crlf", "x-mock-coalesce", "x-mock-gzip"])
def test_framing_modes_parse_with_sdks(mock: MockUpstreamThread, dialect: str, mode: str) -> None:
    headers = {mode: "1"}
    if dialect == "anthropic":
        with claude(mock, headers).messages.stream(**MESSAGES) as stream:
            assert stream.get_final_text() == DEFAULT_TEXT
    else:
        chunks = gpt(mock, headers).chat.completions.create(**CHAT, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == DEFAULT_TEXT
    assert mock.wait_for(lambda u: u.completed == 1)


def test_framing_modes_on_the_wire(mock: MockUpstreamThread) -> None:
    with httpx.Client(timeout=10) as client:
        path, body = DIALECTS["openai"]
        with client.stream("POST", mock.url + path, json={**body, "stream": True},
                           headers={"x-mock-split": "1"}) as response:
            pieces = list(response.iter_raw())
        plain = client.post(mock.url + path, json={**body, "stream": True}).content
        crlf = client.post(mock.url + path, json={**body, "stream": True}, headers={"x-mock-crlf": "1"}).content
        zipped = client.post(mock.url + path, json={**body, "stream": True}, headers={"x-mock-gzip": "1"})
        identity = client.post(mock.url + path, json=body,
                               headers={"x-mock-gzip": "1", "accept-encoding": "identity"})
    split = b"".join(pieces)  # the same events (ids differ)...
    assert len(split) == len(plain) and len(parse_sse(split)) == len(parse_sse(plain))
    assert len(pieces) > 3 * len(parse_sse(plain))  # ...in many small reads
    assert crlf.count(b"\r\n\r\n") == len(parse_sse(plain)) and b"\n" not in crlf.replace(b"\r\n", b"")
    assert zipped.headers["content-encoding"] == "gzip" and parse_sse(zipped.content)[-1][1] == "[DONE]"
    assert "content-encoding" not in identity.headers and identity.json()["object"] == "chat.completion"


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("stream", [True, False])
def test_fixed_ids_make_bodies_byte_stable(mock: MockUpstreamThread, dialect: str, stream: bool) -> None:
    headers = {"x-mock-fixed-ids": "1", "x-mock-gzip": "1", "accept-encoding": "gzip"}
    path, body = DIALECTS[dialect]

    def raw() -> bytes:  # still gzipped
        with httpx.stream("POST", mock.url + path, json={**body, "stream": stream}, headers=headers) as response:
            assert response.headers["content-encoding"] == "gzip"
            return b"".join(response.iter_raw())

    assert raw() == raw()
    assert post(mock, dialect, stream=stream).content != post(mock, dialect, stream=stream).content
    # request-id headers follow the request (so direct and proxied calls match), not the flag
    name = "request-id" if dialect == "anthropic" else "x-request-id"
    ids = [post(mock, dialect, stream=stream, **extra).headers[name] for extra in ({}, {}, {"top_k": 1})]
    assert ids[0] == ids[1] != ids[2]


# --------------------------------------------------------------------------- faults

FAULTS = {  # id -> (dialect, stream, headers, what the client sees)
    "drop-stream": ("anthropic", True, {"x-mock-drop-after": "3"}, httpx.RemoteProtocolError),
    "drop-json": ("openai", False, {"x-mock-drop-after": "0"}, httpx.RemoteProtocolError),
    "truncate-stream": ("openai", True, {"x-mock-truncate": "1"}, httpx.RemoteProtocolError),
    "truncate-json": ("anthropic", False, {"x-mock-truncate": "1"}, httpx.RemoteProtocolError),
    "reset": ("anthropic", True, {"x-mock-reset": "1"}, httpx.ReadError),  # a real RST
    "garbage": ("openai", False, {"x-mock-garbage": "1"}, httpx.RemoteProtocolError),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_faults_break_the_client(mock: MockUpstreamThread, fault: str) -> None:
    dialect, stream, headers, error = FAULTS[fault]
    with pytest.raises(error):
        post(mock, dialect, headers, stream=stream)
    assert mock.wait_for(lambda u: u.aborted == 1 and u.open_connections == 0)
    assert (mock.completed, mock.disconnects) == (0, 0)


def test_fault_through_sdks(mock: MockUpstreamThread) -> None:
    with pytest.raises(openai.APIConnectionError):
        gpt(mock, {"x-mock-reset": "1"}).chat.completions.create(**CHAT)
    with pytest.raises(anthropic.APIConnectionError):
        claude(mock, {"x-mock-garbage": "1"}).messages.create(**MESSAGES)


ERRORS = {  # (dialect, status) -> (SDK exception, error type)
    ("anthropic", 429): (anthropic.RateLimitError, "rate_limit_error"),
    ("anthropic", 529): (anthropic.InternalServerError, "overloaded_error"),
    ("anthropic", 401): (anthropic.AuthenticationError, "authentication_error"),
    ("openai", 429): (openai.RateLimitError, "requests"),
    ("openai", 503): (openai.InternalServerError, "server_error"),
    ("openai", 400): (openai.BadRequestError, "invalid_request_error"),
}


@pytest.mark.parametrize("dialect,status", ERRORS)
def test_status_errors_in_dialect_shape(mock: MockUpstreamThread, dialect: str, status: int) -> None:
    exc_type, error_type = ERRORS[dialect, status]
    headers = {"x-mock-status": str(status)}
    response = post(mock, dialect, headers)  # even when streaming was asked for
    assert response.status_code == status
    assert response.headers.get("retry-after") == ("7" if status in (429, 503, 529) else None)
    body = response.json()
    if dialect == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == error_type
        assert "request-id" in response.headers and "anthropic-ratelimit-requests-limit" in response.headers
        with pytest.raises(exc_type) as caught:
            claude(mock, headers).messages.create(**MESSAGES)
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["type"] == error_type
        assert "x-request-id" in response.headers and "x-ratelimit-limit-requests" in response.headers
        with pytest.raises(exc_type) as caught:
            gpt(mock, headers).chat.completions.create(**CHAT)
    assert caught.value.status_code == status


def test_inband_errors_reach_sdks(mock: MockUpstreamThread) -> None:
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        with claude(mock, {"x-mock-inband-error": "1"}).messages.stream(**MESSAGES) as stream:
            seen += stream.text_stream
    assert seen == ["Hello"] and "overloaded_error" in str(caught.value)
    with pytest.raises(openai.APIError, match="server had an error"):
        for chunk in gpt(mock, {"x-mock-inband-error": "1"}).chat.completions.create(**CHAT, stream=True):
            seen.append(chunk.choices[0].delta.content or "")
    assert seen[1:] == ["", "Hello"]
    assert mock.wait_for(lambda u: u.completed == 2)  # the stream itself ended cleanly


def test_headers_delay_and_stall(mock: MockUpstreamThread) -> None:
    path, body = DIALECTS["openai"]
    with httpx.Client(timeout=10) as client:
        start = time.monotonic()
        with client.stream("POST", mock.url + path, json={**body, "stream": True},
                           headers={"x-mock-headers-delay": "200", "x-mock-stall-after": "2",
                                    "x-mock-stall": "300"}) as response:
            assert time.monotonic() - start >= 0.18
            arrivals = [time.monotonic() for piece in response.iter_raw() for _ in range(piece.count(b"\n\n"))]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert len(arrivals) == 8 and max(gaps) >= 0.28 and gaps.index(max(gaps)) == 1


@pytest.mark.parametrize("while_", ["writing", "stalled"])
def test_client_leaving_mid_stream_is_counted(mock: MockUpstreamThread, while_: str) -> None:
    headers = ({"x-mock-delay": "20", "x-mock-events": "200"} if while_ == "writing"
               else {"x-mock-stall-after": "2", "x-mock-stall": "10000"})
    path, body = DIALECTS["anthropic"]
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", mock.url + path, json={**body, "stream": True}, headers=headers) as response:
            pieces = response.iter_raw()  # keep it: a collected iterator closes the connection
            next(pieces)
            time.sleep(0.05)
            assert (mock.active_streams, mock.disconnects) == (1, 0)
    # the stall case proves detection without a failing write
    assert mock.wait_for(lambda u: u.disconnects == 1 and u.open_connections == 0 and u.active_streams == 0,
                         timeout=2)
    assert (mock.completed, mock.aborted) == (0, 0)


# --------------------------------------------------------------------------- other routes, lifecycle


def test_models_not_found_and_head(mock: MockUpstreamThread) -> None:
    assert "gpt-4o" in [m.id for m in gpt(mock).models.list()]
    assert "claude-sonnet-4-5" in [m.id for m in claude(mock).models.list()]
    openai_404 = httpx.post(mock.url + "/v1/nope", json={})
    anthropic_404 = httpx.post(mock.url + "/v1/nope", json={}, headers=ANTHROPIC_HEADERS)
    assert openai_404.status_code == anthropic_404.status_code == 404
    assert openai_404.json()["error"]["message"] == "Invalid URL (POST /v1/nope)"
    assert anthropic_404.json()["error"]["type"] == "not_found_error"
    head = httpx.head(mock.url + "/")
    assert head.status_code == 404 and head.content == b""
    bad = httpx.post(mock.url + "/v1/messages", json=MESSAGES, headers={"x-mock-delay": "soon"})
    assert bad.status_code == 400 and "x-mock-delay" in bad.json()["error"]["message"]


def test_scenario_parsing() -> None:
    sc = Scenario.from_headers([("X-Mock-Delay", "50"), ("x-mock-split", "true"), ("x-mock-content", "Tools")])
    assert (sc.delay, sc.split, sc.content, sc.stall, sc.drop_after) == (0.05, True, "tools", 5.0, None)
    for header, value in [("x-mock-events", "0"), ("x-mock-status", "99"), ("x-mock-content", "poetry"),
                          ("x-mock-split", "maybe"), ("x-mock-delay", "-1")]:
        with pytest.raises(ValueError, match=header):
            Scenario.from_headers([(header, value)])


def test_stop_cancels_everything() -> None:
    async def run() -> None:
        upstream = MockUpstream()
        await upstream.start()
        _, idle = await asyncio.open_connection(upstream.host, upstream.port)
        reader, busy = await asyncio.open_connection(upstream.host, upstream.port)
        body = json.dumps({**CHAT, "stream": True}).encode()
        busy.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-mock-stall-after: 1\r\n"
                   b"x-mock-stall: 10000\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert await upstream.wait_for(lambda u: u.active_streams == 1 and u.open_connections == 2)
        await upstream.stop()
        assert (upstream.open_connections, upstream.active_streams) == (0, 0)
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        assert upstream.errors == []
        assert await asyncio.wait_for(reader.read(), 2)  # the head went out, then EOF
        for writer in (idle, busy):
            writer.close()
            await writer.wait_closed()

    asyncio.run(run())


def test_standalone_script() -> None:
    root = Path(__file__).resolve().parent.parent
    with subprocess.Popen([sys.executable, "-m", "tests.mock_upstream", "--port", "0"], cwd=root,
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            url = json.loads(proc.stdout.readline())["url"]
            assert httpx.get(url + "/v1/models").json()["object"] == "list"
        finally:
            proc.terminate()
