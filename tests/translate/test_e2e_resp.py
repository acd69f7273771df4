"""End to end, the Responses dialect: the official SDKs -> ccproxy -> the mock upstream of each dialect.

A Responses client (``openai``'s ``client.responses``) to a Responses, an Anthropic and a Chat upstream; an
Anthropic and a Chat client to a Responses upstream; the same dialect byte for byte; usage and cost.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from ccproxy_core import hookimpl
from tests.mock_upstream import DEFAULT_TEXT
from tests.servers import ProxyThread, closed_port, provider_config

RESP = "gpt-5-mini"  # served by the Responses provider
CLAUDE = "claude-sonnet-4-5"
CHAT = "gpt-4o"
UPSTREAMS = {"responses": RESP, "anthropic": CLAUDE, "openai": CHAT}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather at a place",
          "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}]
FIXED = {"x-mock-fixed-ids": "1"}


class Ends:
    """Records each request's context, by request id, when ``ccproxy_stream_end`` runs (after the client may
    have read the whole answer)."""

    def __init__(self) -> None:
        self.ctxs: dict[str, Any] = {}
        self.cond = threading.Condition()

    @hookimpl
    def ccproxy_stream_end(self, ctx: Any) -> None:
        with self.cond:
            self.ctxs[ctx.request_id] = ctx
            self.cond.notify_all()

    def of(self, request_id: str) -> Any:
        """The context of the request sent with ``x-request-id: request_id``."""
        with self.cond:
            assert self.cond.wait_for(lambda: request_id in self.ctxs, 5)
            return self.ctxs[request_id]


@pytest.fixture(scope="module")
def ends() -> Ends:
    return Ends()


@pytest.fixture(scope="module")
def proxy(mock: Any, ends: Ends) -> Iterator[ProxyThread]:
    config = provider_config(mock.url)
    config["providers"] = {"responses": {"format": "responses", "base_url": mock.url + "/v1",
                                         "api_key": "sk-resp-upstream-SECRET", "models": ["gpt-5*"]},
                           **config["providers"]}
    config["models"] = {"codex": {"model": RESP}}
    with ProxyThread(config, plugins=[("ends", ends)]) as server:
        yield server


def client(proxy: ProxyThread, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(api_key="proxy-key", base_url=proxy.url + "/v1", max_retries=0, default_headers=headers)


@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("content", ["text", "tools", "parallel_tools", "thinking"])
def test_responses_client_to_each_upstream(proxy: ProxyThread, upstream: str, content: str) -> None:
    gpt = client(proxy, **{"x-mock-content": content})
    kwargs: dict[str, Any] = {"model": UPSTREAMS[upstream], "input": "What is the weather?",
                              "instructions": "Be brief.", "max_output_tokens": 2048}
    if content.endswith("tools"):
        kwargs["tools"] = TOOLS
    if content == "thinking":
        kwargs["reasoning"] = {"effort": "low", "summary": "auto"}
    whole = gpt.responses.create(**kwargs)
    with gpt.responses.stream(**kwargs) as stream:
        events = list(stream)
        streamed = stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    calls = 2 if content == "parallel_tools" else 1 if content == "tools" else 0
    reasoning = content == "thinking" and upstream != "openai"  # the mock's Chat API has no reasoning
    for response in (whole, streamed):
        assert response.status == "completed" and response.model == UPSTREAMS[upstream]
        types = [item.type for item in response.output]
        assert types.count("function_call") == calls and ("reasoning" in types) == reasoning
        assert response.output_text == ("" if calls else DEFAULT_TEXT)
        for call in (i for i in response.output if i.type == "function_call"):
            assert call.name == "get_weather" and json.loads(call.arguments)["unit"] == "celsius"
        assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert [(i.type, getattr(i, "call_id", None)) for i in streamed.output] == [
        (i.type, getattr(i, "call_id", None)) for i in whole.output]


@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_input_tokens(proxy: ProxyThread, upstream: str, mock: Any) -> None:
    mock.reset_stats()
    count = client(proxy).responses.input_tokens.count(model=UPSTREAMS[upstream], input="hi " * 40,
                                                       instructions="Be brief.")
    assert count.object == "response.input_tokens"
    if upstream == "responses":  # passed through: the upstream's own count
        assert count.input_tokens == 12 and mock.requests[-1].path == "/v1/responses/input_tokens"
    elif upstream == "anthropic":  # translated to Anthropic's count endpoint, never a completion
        assert count.input_tokens == 12 and [r.path for r in mock.requests] == ["/v1/messages/count_tokens"]
        sent = mock.requests[-1]
        assert sent.json() == {"model": CLAUDE, "system": [{"type": "text", "text": "Be brief."}],
                               "messages": [{"role": "user", "content": "hi " * 40}]}  # no max_tokens, stream...
        assert sent.header("anthropic-version") and sent.header("x-api-key") == "sk-ant-upstream-SECRET"
        assert sent.header("authorization") is None and sent.query == ""
    else:  # estimated here, no upstream call
        assert 20 < count.input_tokens < 60 and mock.requests == []
    # Like every proxy answer, whichever way the count was made: the gateway's id for its logs.
    raw = httpx.post(proxy.url + "/v1/responses/input_tokens", json={"model": UPSTREAMS[upstream], "input": "hi"})
    assert raw.status_code == 200 and len(raw.headers["x-ccproxy-request-id"]) == 32


def test_input_tokens_from_an_anthropic_upstream_errors_and_tools(proxy: ProxyThread, mock: Any) -> None:
    mock.reset_stats()
    count = client(proxy).responses.input_tokens.count(model=CLAUDE, input="hi", tools=TOOLS, tool_choice="auto",
                                                       reasoning={"effort": "low"}, extra_query={"trace": "1"})
    assert (count.object, count.input_tokens) == ("response.input_tokens", 12)
    sent = mock.requests[-1].json()
    assert set(sent) <= {"model", "messages", "system", "tools", "tool_choice", "thinking", "output_config"}
    assert sent["tools"][0]["name"] == "get_weather" and sent["tools"][0]["input_schema"]["type"] == "object"
    assert mock.requests[-1].query == ""  # the client's query string is for its own dialect
    with pytest.raises(openai.RateLimitError) as caught:
        client(proxy, **{"x-mock-status": "429"}).responses.input_tokens.count(model=CLAUDE, input="hi")
    assert set(caught.value.body) == {"message", "type", "param", "code"}
    assert [r.path for r in mock.requests] == ["/v1/messages/count_tokens"] * 2


def test_anthropic_and_chat_clients_to_a_responses_upstream(proxy: ProxyThread) -> None:
    claude = anthropic.Anthropic(api_key="k", base_url=proxy.url, max_retries=0,
                                 default_headers={"x-mock-content": "parallel_tools"})
    hi = [{"role": "user", "content": "hi"}]
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    message = claude.messages.create(model=RESP, max_tokens=64, messages=hi, tools=tools)
    with claude.messages.stream(model=RESP, max_tokens=64, messages=hi, tools=tools) as stream:
        streamed = stream.get_final_message()
    for m in (message, streamed):
        assert m.stop_reason == "tool_use" and [b.type for b in m.content] == ["tool_use", "tool_use"]
        assert m.content[1].input == {"location": "Tokyo, Japan", "unit": "celsius"}
    gpt = client(proxy)
    completion = gpt.chat.completions.create(model=RESP, messages=hi)
    chunks = list(gpt.chat.completions.create(model=RESP, messages=hi, stream=True,
                                              stream_options={"include_usage": True}))
    assert completion.choices[0].message.content == DEFAULT_TEXT
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == DEFAULT_TEXT
    assert chunks[-1].usage.prompt_tokens == 12


def test_same_dialect_byte_for_byte(proxy: ProxyThread, mock: Any, ends: Ends) -> None:
    body = {"model": RESP, "input": "hi", "stream": True}
    for headers in (FIXED, {**FIXED, "x-mock-split": "1"},
                    {**FIXED, "x-mock-content": "parallel_tools", "x-request-id": "same-tools"}):
        direct = httpx.post(mock.url + "/v1/responses", json=body, headers=headers, timeout=10)
        proxied = httpx.post(proxy.url + "/v1/responses?trace=1", json=body, headers=headers, timeout=10)
        assert proxied.status_code == 200 and proxied.content == direct.content
        assert proxied.headers["content-type"] == direct.headers["content-type"]
        assert proxied.headers["x-request-id"] == direct.headers["x-request-id"]
    forwarded = mock.requests[-1]
    assert forwarded.query == "trace=1" and forwarded.header("authorization") == "Bearer sk-resp-upstream-SECRET"
    ctx = ends.of("same-tools")
    assert (ctx.client_dialect, ctx.upstream_dialect, ctx.outcome) == ("responses", "responses", "completed")
    assert ctx.usage.as_dict() == {"input_tokens": 9, "output_tokens": 12, "cache_read_input_tokens": 3,
                                   "cache_creation_input_tokens": 0}
    plain = httpx.post(proxy.url + "/v1/responses", json={**body, "stream": False},
                       headers={**FIXED, "x-request-id": "same-json"}, timeout=10)
    assert plain.content == httpx.post(mock.url + "/v1/responses", json={**body, "stream": False}, headers=FIXED,
                                       timeout=10).content
    assert ends.of("same-json").usage.output_tokens == 5


def test_errors_in_the_responses_shape(proxy: ProxyThread) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client(proxy, **{"x-mock-status": "429"}).responses.create(model=RESP, input="hi")
    assert caught.value.response.headers["retry-after"] == "7"
    with pytest.raises(openai.RateLimitError) as translated:  # from an Anthropic upstream, in this dialect
        client(proxy, **{"x-mock-status": "429"}).responses.create(model=CLAUDE, input="hi")
    assert set(translated.value.body) == {"message", "type", "param", "code"}
    with pytest.raises(openai.NotFoundError):
        client(proxy).responses.create(model="no-such-model", input="hi")
    bad = httpx.post(proxy.url + "/v1/responses", content=b"{", timeout=10)
    assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}


def test_alias_and_max_tokens_through_translation(proxy: ProxyThread) -> None:
    response = client(proxy).responses.create(model="codex", input="hi")
    assert response.model == "codex" and response.output_text == DEFAULT_TEXT
    for model in (CLAUDE, CHAT):
        cut = client(proxy, **{"x-mock-max-tokens": "1"}).responses.create(model=model, input="hi")
        assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"


def test_fallback_from_a_dead_responses_provider_and_disconnect(mock: Any, ends: Ends) -> None:
    """A Responses provider that cannot be reached falls back (before the first write) to an Anthropic
    one, translated; a client leaving mid-stream closes the upstream exchange."""
    config = provider_config(mock.url)
    config["providers"] = {"dead": {"format": "responses", "base_url": f"http://127.0.0.1:{closed_port()}/v1",
                                    "api_key": "k", "models": ["gpt-5*"], "fallbacks": ["anthropic"]},
                           **config["providers"]}
    with ProxyThread(config, plugins=[("ends", ends)]) as server:
        with client(server, **{"x-request-id": "fell-back"}).responses.stream(model=RESP, input="hi") as stream:
            assert stream.get_final_response().output_text == DEFAULT_TEXT
        ctx = ends.of("fell-back")
        assert [a.provider for a in ctx.attempts] == ["dead", "anthropic"] and ctx.upstream_dialect == "anthropic"
        mock.reset_stats()
        with httpx.stream("POST", server.url + "/v1/responses", timeout=10,
                          json={"model": "gpt-4o", "input": "hi", "stream": True},
                          headers={"x-mock-events": "1000", "x-mock-delay": "5", "x-request-id": "left"}) as response:
            next(response.iter_raw())
        assert ends.of("left").outcome == "client_disconnected"
        assert mock.wait_for(lambda m: m.disconnects == 1 and m.active_streams == 0, timeout=5)


@pytest.mark.parametrize("upstream", ["anthropic", "openai"])
@pytest.mark.parametrize("stream", [False, True])
def test_previous_response_id_against_a_translated_upstream(proxy: ProxyThread, mock: Any, upstream: str,
                                                            stream: bool) -> None:
    """The gateway keeps each translated exchange and expands the chain: a tool round trip, then a follow-up."""
    model = UPSTREAMS[upstream]

    def create(**kwargs: Any) -> Any:
        gpt = client(proxy, **{"x-mock-content": kwargs.pop("content", "text")})
        if not stream:
            return gpt.responses.create(model=model, tools=TOOLS, **kwargs)
        with gpt.responses.stream(model=model, tools=TOOLS, **kwargs) as events:
            return events.get_final_response()

    first = create(input="Weather in SF?", instructions="Be brief.", content="tools")
    [call] = [i for i in first.output if i.type == "function_call"]
    second = create(previous_response_id=first.id, input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees"}])
    third = create(previous_response_id=second.id, input="Thanks!")
    assert third.output_text == DEFAULT_TEXT
    sent = mock.requests[-1].json()
    if upstream == "anthropic":
        turns = [(m["role"], [b["type"] if isinstance(b, dict) else b for b in m["content"]]
                  if isinstance(m["content"], list) else m["content"]) for m in sent["messages"]]
        assert turns == [("user", ["text"]), ("assistant", ["tool_use"]), ("user", ["tool_result"]),
                         ("assistant", ["text"]), ("user", ["text"])]
        assert "system" not in sent  # instructions are not carried over
    else:
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool", "assistant", "user"]
        assert sent["messages"][2]["tool_call_id"] == call.call_id


def test_previous_response_id_store_false_unknown_and_passthrough(proxy: ProxyThread, mock: Any) -> None:
    gpt = client(proxy)
    kept_nothing = gpt.responses.create(model=CLAUDE, input="secret", store=False)
    for unknown in (kept_nothing.id, "resp_never"):
        with pytest.raises(openai.BadRequestError, match="not found") as caught:
            gpt.responses.create(model=CLAUDE, previous_response_id=unknown, input="more")
        assert set(caught.value.body) == {"message", "type", "param", "code"}
    answer = gpt.responses.create(model=RESP, previous_response_id="resp_upstream_knows", input="more")
    assert answer.output_text == DEFAULT_TEXT  # a Responses upstream gets it as sent
    assert mock.requests[-1].json() == {"model": RESP, "previous_response_id": "resp_upstream_knows", "input": "more"}


def test_metrics_and_cost_for_the_route(proxy: ProxyThread, ends: Ends) -> None:
    client(proxy, **{"x-request-id": "priced"}).responses.create(model=CLAUDE, input="hi")
    client(proxy).responses.input_tokens.count(model=CLAUDE, input="hi")
    ctx = ends.of("priced")
    assert ctx.usage.output_tokens == 5 and ctx.cost is not None and ctx.cost > 0
    metrics = httpx.get(proxy.url + "/metrics", timeout=10).text
    assert 'route="/v1/responses"' in metrics and 'route="/v1/responses/input_tokens"' in metrics
