"""The seed's ``StreamingHandler`` decides streaming on the product path.

``ctx.stream`` is what the client asked; ``ctx.upstream_stream`` is what the upstream is asked, per
attempt (``should_stream``: the client asked and the provider has ``supports_streaming``). A provider
with ``supports_streaming: false`` gets a JSON request; a response adapter may turn the answer into the
client's stream, and the core then sends stream headers (decided from the final content-type).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from ccproxy_core import hookimpl
from ccproxy_core.streaming import HandlerConfig, StreamingHandler
from tests.servers import ANTHROPIC_BODY, OPENAI_BODY, provider_config


class Seen:
    """Records what request-phase hooks saw, and optionally turns a JSON answer into one SSE event."""

    def __init__(self, synthesise: bool = False) -> None:
        self.synthesise = synthesise
        self.bodies: list[tuple[bool, bool, Any]] = []
        self.usage_bodies: list[bytes] = []

    @hookimpl
    def ccproxy_request_body(self, ctx, body):
        self.bodies.append((ctx.stream, ctx.upstream_stream, body.get("stream")))

    @hookimpl
    def ccproxy_response_body(self, ctx, body):
        self.usage_bodies.append(body)

    @hookimpl
    def ccproxy_response_adapter(self, ctx):
        if not (self.synthesise and ctx.stream and not ctx.upstream_stream):
            return None
        ctx.response_headers["content-type"] = "text/event-stream"
        return _ToOneEvent()


class _ToOneEvent:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def feed(self, data: bytes) -> bytes:
        self.parts.append(data)
        return b""

    def finish(self) -> bytes:
        return b"event: whole\ndata: " + b"".join(self.parts) + b"\n\n"


def _config(mock_url: str, **provider: Any) -> dict[str, Any]:
    config = provider_config(mock_url, retries={"max_attempts": 1})
    for name in ("anthropic", "openai"):
        config["providers"][name].update(provider)
    return config


def test_should_stream_semantics():
    on, off = HandlerConfig(), HandlerConfig(supports_streaming=False)
    assert StreamingHandler.should_stream(b'{"stream": true}', on)
    assert not StreamingHandler.should_stream(b'{"stream": true}', off)
    assert not StreamingHandler.should_stream(b'{"stream": 1}', on)
    assert not StreamingHandler.should_stream(b"{bad", on) and not StreamingHandler.should_stream(b"[]", on)
    assert StreamingHandler.should_stream({"stream": True}, on) and not StreamingHandler.should_stream({}, on)
    assert StreamingHandler.should_stream_response({"Accept": "Text/Event-Stream"})
    assert StreamingHandler.should_stream_response({"content-type": "text/event-stream; charset=utf-8"})
    assert not StreamingHandler.should_stream_response({"accept": "application/json"})


@pytest.mark.parametrize("path,body", [("/v1/messages", ANTHROPIC_BODY), ("/v1/chat/completions", OPENAI_BODY)])
def test_no_stream_provider_gets_a_json_request(make_proxy, upstream, path, body):
    seen = Seen()
    server = make_proxy(_config(upstream.url, supports_streaming=False), plugins=[("seen", seen)])
    sent = {**body, "stream": True, "stream_options": {"include_usage": True}}
    r = httpx.post(server.url + path, json=sent, timeout=10)
    # The upstream is asked for JSON; the translate plugin turns its answer into the stream the client asked for.
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    upstream_body = upstream.upstream.requests[-1].json()
    assert upstream_body["stream"] is False and "stream_options" not in upstream_body
    assert seen.bodies == [(True, False, False)]  # the body hooks already see the upstream's request


def test_streaming_provider_keeps_the_clients_bytes(make_proxy, upstream):
    server = make_proxy(_config(upstream.url))
    raw = json.dumps({**ANTHROPIC_BODY, "stream": True}, separators=(",", ":")).encode()
    r = httpx.post(server.url + "/v1/messages", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert upstream.upstream.requests[-1].body == raw


def test_decided_per_attempt_across_fallbacks(make_proxy, upstream):
    """The primary cannot stream and fails; its fallback streams, and is asked to."""
    seen = Seen()
    config = provider_config(upstream.url, retries={"max_attempts": 1})
    config["providers"]["anthropic"].update(supports_streaming=False, fallbacks=["backup"],
                                            headers={"x-mock-status": "503"})
    config["providers"]["backup"] = {**config["providers"]["anthropic"], "models": ["none-*"], "fallbacks": [],
                                     "supports_streaming": True, "headers": {}}
    server = make_proxy(config, plugins=[("seen", seen)])
    r = httpx.post(server.url + "/v1/messages", json=ANTHROPIC_BODY, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    first, second = upstream.upstream.requests[-2:]
    assert first.json()["stream"] is False and second.json()["stream"] is True
    assert seen.bodies == [(True, False, False), (True, True, True)]


def test_adapter_made_stream_gets_stream_headers_and_observers_the_json(make_proxy, upstream):
    seen = Seen(synthesise=True)
    config = _config(upstream.url, supports_streaming=False)
    config["plugins"] = {"usage": {}}
    server = make_proxy(config, plugins=[("seen", seen)])
    with httpx.stream("POST", server.url + "/v1/messages", json=ANTHROPIC_BODY, timeout=10) as r:
        content = r.read()
    assert r.headers["content-type"] == "text/event-stream"
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
    assert "content-length" not in r.headers
    assert content.startswith(b"event: whole\ndata: {")
    (observed,) = seen.usage_bodies  # the body hooks read the upstream's JSON, not the synthesised stream
    assert json.loads(observed)["type"] == "message"


class StreamedOnly:
    """A ``ccproxy_request_body`` marked ``streamed_only``."""

    def __init__(self) -> None:
        self.bodies: list[tuple[bool, bool, Any]] = []

    @hookimpl
    def ccproxy_request_body(self, ctx, body):
        self.bodies.append((ctx.stream, ctx.upstream_stream, body.get("stream")))

    ccproxy_request_body.streamed_only = True


@pytest.mark.parametrize("beside", [False, True])
def test_streamed_only_body_hooks_skip_unstreamed_attempts(make_proxy, upstream, beside):
    """When every ``ccproxy_request_body`` is marked ``streamed_only``, an attempt that does not stream from the
    upstream skips the hook; an unmarked implementation beside it gets every attempt, and so does the marked one."""
    marked = StreamedOnly()
    plugins = [("marked", marked)] + ([("seen", Seen())] if beside else [])
    config = provider_config(upstream.url, retries={"max_attempts": 1})
    config["providers"]["anthropic"].update(supports_streaming=False, fallbacks=["backup"],
                                            headers={"x-mock-status": "503"})
    config["providers"]["backup"] = {**config["providers"]["anthropic"], "models": ["none-*"], "fallbacks": [],
                                     "supports_streaming": True, "headers": {}}
    server = make_proxy(config, plugins=plugins)
    r = httpx.post(server.url + "/v1/messages", json=ANTHROPIC_BODY, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    streamed = [(True, True, True)]
    assert marked.bodies == ([(True, False, False)] + streamed if beside else streamed)
    # A JSON request: no attempt streams, the client's bytes go upstream as they came.
    raw = json.dumps({**ANTHROPIC_BODY, "stream": False}, separators=(",", ":")).encode()
    config["providers"]["anthropic"].update(headers={})
    server = make_proxy(config, plugins=[("marked", marked)])
    r = httpx.post(server.url + "/v1/messages", content=raw, headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 200 and upstream.upstream.requests[-1].body == raw
    assert marked.bodies == ([(True, False, False)] + streamed if beside else streamed)
