"""Fuzzing the HTTP surface over a real socket with hypothesis.

Random methods, paths (encoded, dotted, absolute-form, with queries), headers (odd names,
odd bytes, credentials right and wrong) and bodies (bytes, any JSON, request-shaped JSON
with random fields) go to a proxy in front of the mock upstream. Every answer must be:

* a parseable HTTP response, never a 5xx unless the upstream itself sent it;
* without a traceback;
* when it is an error of the proxy's own, in the dialect of the path (Anthropic's shape
  on ``.../messages``, OpenAI's elsewhere).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.servers import ProxyThread, provider_config, read_all

KEY = "fuzz-proxy-key-0123456789"
MAX_EXAMPLES = 1000
ROUTES = ["/v1/messages", "/v1/chat/completions", "/v1/models", "/health", "/plugins", "/", "/v1/messages/count_tokens",
          "/v1/../v1/messages", "/v1%2Fmessages", "/v1/messages/", "//v1/messages", "/v1/chat/completions/../../x",
          "http://127.0.0.1:1/v1/messages", "/v1/messages?beta=true", "/v1/chat/completions?x=%0d%0a"]
MODELS = ["claude-sonnet-4-5", "gpt-4o", "claude-haiku-4-5", "unknown-model", "", "../x", "http://evil/", "gpt-4o\r\n"]
RESERVED = {"connection", "content-length", "transfer-encoding", "host", "expect", "upgrade"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
request_shaped = st.fixed_dictionaries(
    {"model": st.sampled_from(MODELS) | st.text(max_size=20) | json_values},
    optional={
        "stream": st.booleans() | json_values,
        "max_tokens": st.integers(-5, 10**6) | json_values,
        "messages": st.just([{"role": "user", "content": "hi"}]) | json_values,
        "stream_options": st.just({"include_usage": True}) | json_values,
        "system": json_values,
        "tools": json_values,
        "metadata": json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    request_shaped.map(lambda v: json.dumps(v).encode()),
    request_shaped.map(lambda v: json.dumps(v, ensure_ascii=False).encode()),
)
header_names = st.sampled_from(["x-api-key", "authorization", "anthropic-version", "anthropic-beta", "accept",
                                "accept-encoding", "content-type", "x-request-id", "user-agent", "cookie",
                                "x-forwarded-host", "te", "keep-alive", "proxy-authorization"]) | st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.!#$%&'*+^`|~", min_size=1, max_size=20) | st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"), min_size=1, max_size=20)
header_values = st.sampled_from([KEY, f"Bearer {KEY}", "Bearer wrong", "gzip", "text/event-stream", "application/json",
                                 "2023-06-01", ""]) | st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\r\n"), max_size=40)
methods = st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW", "post"])
paths = st.sampled_from(ROUTES) | st.text(alphabet="/abcv1%2F.?=&-_~", min_size=1, max_size=30).map(lambda p: "/" + p)
#: Requests the proxy routes upstream (well-formed enough to get there), with random fields and headers.
PROXY_PATHS = ["/v1/messages", "/v1/chat/completions", "/v1/messages?beta=true"]
proxy_requests = st.tuples(
    st.just("POST"),
    st.sampled_from(PROXY_PATHS),
    st.lists(st.tuples(header_names, header_values), max_size=6),
    st.one_of(
        request_shaped.map(lambda v: json.dumps(v).encode()),
        st.tuples(st.sampled_from(["claude-sonnet-4-5", "gpt-4o"]), st.booleans(), st.dictionaries(
            st.sampled_from(["temperature", "metadata", "system", "tools", "thinking", "top_p", "stop", "n", "user"]),
            json_values, max_size=4)).map(lambda t: json.dumps(
                {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], **t[2], "model": t[0],
                 "stream": t[1]}).encode()),
    ),
    st.just(True),
)
any_requests = st.tuples(methods, paths, st.lists(st.tuples(header_names, header_values), max_size=8), bodies,
                         st.booleans())


def _proxy(mock, translate: bool):
    plugins: dict[str, Any] = {"auth": {"keys": [KEY]}}
    if not translate:
        plugins["disabled"] = ["translate"]
    config = provider_config(mock.url, plugins=plugins, timeouts={"connect": 1, "headers": 3, "idle": 3, "total": 10})
    return ProxyThread(config)


@pytest.fixture(scope="module")
def fuzz_proxy(mock):
    """The core and the auth plugin (requests in the other dialect get a clear 400)."""
    with _proxy(mock, translate=False) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def translating_proxy(mock):
    with _proxy(mock, translate=True) as proxy:
        yield proxy


def exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        return read_all(sock)


def check(method: str, path: str, reply: bytes) -> None:
    assert reply.startswith(b"HTTP/1.1 "), reply[:200]
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    from_upstream = headers.get("server") == "mock-upstream"
    assert b"Traceback" not in reply and b'File "' not in reply
    assert status < 500 or from_upstream, reply[:500]
    if status >= 400 and not from_upstream and method.upper() != "HEAD" and body:
        if headers.get("transfer-encoding") == "chunked":
            size, _, rest = body.partition(b"\r\n")
            body = rest[: int(size, 16)]
        data = json.loads(body)
        target = path.split("?", 1)[0]
        if "://" in target:
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        if target.rstrip("/").endswith("/messages"):
            assert data["type"] == "error" and {"type", "message"} <= set(data["error"]), data
        else:
            assert {"message", "type"} <= set(data["error"]), data


def test_fuzz_http_surface(fuzz_proxy, mock, capsys):
    ran = {"cases": 0, "statuses": {}}

    @settings(max_examples=MAX_EXAMPLES)
    @given(request=st.one_of(proxy_requests, proxy_requests, any_requests))
    def case(request: tuple[str, str, list[tuple[str, str]], bytes, bool]) -> None:
        method, path, headers, body, authed = request
        lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", f"content-length: {len(body)}", "connection: close"]
        if authed:
            lines.append(f"x-api-key: {KEY}")
        lines += [f"{name}: {value}" for name, value in headers
                  if name.lower() not in RESERVED and not name.lower().startswith("x-mock")]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body
        reply = exchange(fuzz_proxy.port, raw)
        check(method, path, reply)
        ran["cases"] += 1
        status = reply[9:12].decode()
        ran["statuses"][status] = ran["statuses"].get(status, 0) + 1

    start = time.monotonic()
    case()
    with capsys.disabled():
        print(f"\n[fuzz] {ran['cases']} HTTP cases in {time.monotonic() - start:.1f}s, statuses {dict(sorted(ran['statuses'].items()))}")
    assert ran["cases"] >= MAX_EXAMPLES // 2
    assert ran["statuses"].get("200", 0) >= MAX_EXAMPLES // 20  # a good share reached the upstream and came back
    assert mock.errors == []


def _send_body(proxy: ProxyThread, mock, body: dict[str, Any], path: str) -> None:
    raw = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nhost: evil.example\r\nx-api-key: {KEY}\r\ncontent-length: {len(raw)}\r\nconnection: close\r\n\r\n"
    before = len(mock.upstream.requests)
    reply = exchange(proxy.port, head.encode() + raw)
    check("POST", path, reply)
    for request in mock.upstream.requests[before:]:
        assert request.path in ("/v1/messages", "/v1/chat/completions")
        assert request.header("x-api-key") != KEY and KEY not in (request.header("authorization") or "")


@settings(max_examples=150)
@given(body=request_shaped, path=st.sampled_from(["/v1/messages", "/v1/chat/completions"]))
def test_fuzz_request_bodies_reach_only_the_configured_upstream(fuzz_proxy, mock, body: dict[str, Any], path: str):
    _send_body(fuzz_proxy, mock, body, path)


@settings(max_examples=150)
@given(body=request_shaped, path=st.sampled_from(["/v1/messages", "/v1/chat/completions"]))
def test_fuzz_translated_request_bodies(translating_proxy, mock, body: dict[str, Any], path: str):
    """The same bodies through the translate plugin (a model of the other dialect)."""
    if isinstance(body.get("model"), str):
        body = {**body, "model": "gpt-4o" if path == "/v1/messages" else "claude-sonnet-4-5"}
    _send_body(translating_proxy, mock, body, path)
