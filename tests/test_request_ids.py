"""Request ids: the provider's ids reach the client untouched; the gateway's own id is in
``x-ccproxy-request-id`` on every response and in the access log.

The mock upstream derives its ids from the request it received (``req_`` + a hash of the
method, path and body), so the tests know the provider's id without trusting the proxy.
"""

from __future__ import annotations

import hashlib
import json
import socket

import anthropic
import httpx
import openai
import pytest

from tests.servers import ANTHROPIC_BODY, OPENAI_BODY, provider_config
from tests.test_observability import log_lines

MESSAGES = [{"role": "user", "content": "Hello"}]
HEADER = "x-ccproxy-request-id"


def provider_id(mock, nbytes: int) -> str:
    """The id the mock sent for its last request (Anthropic: 12 bytes, OpenAI: 16)."""
    request = mock.upstream.requests[-1]
    seed = f"{request.method} {request.path}\n".encode() + request.body
    return "req_" + hashlib.blake2b(seed, digest_size=nbytes).hexdigest()


def is_ours(value: str | None) -> bool:
    return value is not None and len(value) == 32 and all(c in "0123456789abcdef" for c in value)


@pytest.fixture
def server(make_proxy, mock, tmp_path):
    config = provider_config(mock.url, retries={"max_attempts": 1})
    config["plugins"] = {"access_log": {"path": str(tmp_path / "access.log")}}
    server = make_proxy(config)
    server.log = tmp_path / "access.log"
    return server


def test_openai_sdk_request_id_is_the_providers(server, upstream):
    gpt = openai.OpenAI(base_url=server.url + "/v1", api_key="client-key", max_retries=0)
    raw = gpt.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    completion = raw.parse()
    expected = provider_id(upstream, 16)
    assert raw.request_id == completion._request_id == raw.headers["x-request-id"] == expected
    ours = raw.headers[HEADER]
    assert is_ours(ours) and ours != expected
    stream = gpt.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    list(stream)
    assert stream.response.headers["x-request-id"] == provider_id(upstream, 16)
    assert is_ours(stream.response.headers[HEADER])
    lines = log_lines(server.log, 2)
    assert [line["request_id"] for line in lines] == [ours, stream.response.headers[HEADER]]
    assert lines[0]["upstream_request_id"] == expected


def test_anthropic_sdk_request_id_is_the_providers(server, upstream):
    claude = anthropic.Anthropic(base_url=server.url, api_key="client-key", max_retries=0)
    message = claude.messages.create(model="claude-sonnet-4-5", max_tokens=20, messages=MESSAGES)
    assert message._request_id == provider_id(upstream, 12)
    with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=20, messages=MESSAGES) as stream:
        final = stream.get_final_message()
        headers = stream.response.headers
    assert final.content and headers["request-id"] == provider_id(upstream, 12)
    assert is_ours(headers[HEADER]) and "x-request-id" not in headers
    (first, second) = log_lines(server.log, 2)
    assert second["request_id"] == headers[HEADER] and second["upstream_request_id"] == headers["request-id"]


def test_client_request_id_seeds_ours_and_goes_upstream_unchanged(server, upstream):
    r = httpx.post(server.url + "/v1/chat/completions", json={**OPENAI_BODY, "stream": False},
                   headers={"x-request-id": "client-7"})
    assert r.headers[HEADER] == "client-7"
    assert r.headers["x-request-id"] == provider_id(upstream, 16)  # the provider's, not the client's
    assert upstream.upstream.requests[-1].header("x-request-id") == "client-7"
    r = httpx.post(server.url + "/v1/messages", json={**ANTHROPIC_BODY, "stream": False})
    sent = upstream.upstream.requests[-1]
    assert sent.header("x-request-id") is None and sent.header(HEADER) is None  # nothing of ours goes upstream
    assert is_ours(r.headers[HEADER])
    r = httpx.post(server.url + "/v1/messages", json={**ANTHROPIC_BODY, "stream": False},
                   headers={"x-request-id": "not sane\x7f"})
    assert is_ours(r.headers[HEADER])  # an id we cannot log safely is replaced


def _raw(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def test_every_error_carries_our_id(make_proxy, mock):
    config = provider_config(mock.url, retries={"max_attempts": 1}, limits={"max_body_bytes": 4096})
    config["providers"]["down"] = {"format": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "k",
                                   "models": ["down-*"]}
    server = make_proxy(config)
    cases = [
        ("POST", "/v1/messages", {"model": "nope"}, {}, 404),  # unknown model (the core)
        ("POST", "/v1/nothing", {"model": "x"}, {}, 404),  # no such route (the boundary)
        ("GET", "/v1/messages", None, {}, 405),
        ("POST", "/v1/messages", {"model": "claude-x", "pad": "x" * 8000}, {}, 413),
        ("POST", "/v1/messages", "{bad", {}, 400),
        ("POST", "/v1/chat/completions", {**OPENAI_BODY, "model": "down-1"}, {}, 502),  # refused
        ("POST", "/v1/messages", ANTHROPIC_BODY, {"x-mock-status": "429"}, 429),  # the provider's, relayed
    ]
    for method, path, body, headers, status in cases:
        content = body if isinstance(body, str) else (json.dumps(body) if body is not None else None)
        r = httpx.request(method, server.url + path, content=content, headers=headers)
        assert r.status_code == status, (path, r.text)
        assert is_ours(r.headers.get(HEADER)), (path, status, r.headers)
    r = httpx.post(server.url + "/v1/nothing", json={}, headers={"x-request-id": "mine-404"})
    assert r.headers[HEADER] == "mine-404"
    # A head Sanic cannot parse still gets an id.
    head = _raw(server.port, b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and HEADER.encode() in head.lower()


def test_auth_refusal_carries_our_id(make_proxy, mock):
    config = provider_config(mock.url)
    config["plugins"] = {"auth": {"keys": ["sk-proxy-key-0001"]}}
    server = make_proxy(config)
    gpt = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        gpt.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert is_ours(info.value.response.headers[HEADER])
