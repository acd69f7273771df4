"""The streaming core over real sockets: held head, faithful bytes, timing, failures, disconnects."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import httpx
import pytest

from ccproxy_core import hookimpl
from tests.servers import ANTHROPIC_BODY, FIXED, OPENAI_BODY, closed_port, provider_config



class Recorder:
    """A plugin that records every lifecycle event it sees."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.chunks: list[bytes] = []
        self.ends: list[Any] = []
        self.ended = threading.Event()

    def wait_end(self) -> None:
        """``ccproxy_stream_end`` runs after the last byte went out: a client may see the body first."""
        assert self.ended.wait(5)

    @hookimpl
    def ccproxy_upstream_headers(self, ctx, status, headers):
        self.events.append(("headers", status))
        headers["x-seen-by-plugin"] = "yes"

    @hookimpl
    def ccproxy_stream_start(self, ctx):
        self.events.append(("start", ctx.status))

    @hookimpl
    async def ccproxy_stream_chunk(self, ctx, chunk):
        self.chunks.append(chunk)

    @hookimpl
    def ccproxy_stream_error(self, ctx, error):
        self.events.append(("error", error.status))

    @hookimpl
    def ccproxy_stream_end(self, ctx):
        self.events.append(("end", ctx.outcome))
        self.ends.append(ctx)
        self.ended.set()


def post(url: str, body: dict, headers: dict | None = None, path: str = "/v1/messages", **kw: Any) -> httpx.Response:
    return httpx.post(url + path, json=body, headers=headers or {}, timeout=10, **kw)


def raw_request(port: int, path: str, body: bytes, headers: dict[str, str]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    head = f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode() + body)
    return sock


# -- status, headers and bytes ------------------------------------------------------------


@pytest.mark.parametrize("path,body", [("/v1/messages", ANTHROPIC_BODY), ("/v1/chat/completions", OPENAI_BODY)])
def test_stream_bytes_identical_to_direct_call(proxy, upstream, path, body):
    direct_path = path if path == "/v1/messages" else "/v1/chat/completions"
    for headers in (FIXED, {**FIXED, "x-mock-split": "1"}, {**FIXED, "x-mock-crlf": "1"}):
        direct = httpx.post(upstream.url + direct_path, json=body, headers=headers, timeout=10)
        proxied = post(proxy.url, body, headers, path=path)
        assert proxied.status_code == 200
        assert proxied.content == direct.content
        assert proxied.headers["content-type"] == direct.headers["content-type"]
        assert proxied.headers["cache-control"] == "no-cache"
        assert proxied.headers["x-accel-buffering"] == "no"
    assert not proxied.content.rstrip().endswith(b"[DONE]") or path.endswith("completions")


def test_json_response_bytes_and_content_length(proxy, upstream):
    body = {**ANTHROPIC_BODY, "stream": False}
    direct = httpx.post(upstream.url + "/v1/messages", json=body, headers=FIXED)
    proxied = post(proxy.url, body, FIXED)
    assert proxied.content == direct.content
    assert proxied.headers["content-length"] == str(len(direct.content))
    assert "transfer-encoding" not in proxied.headers


def test_upstream_error_status_headers_and_body_pass_through(proxy, upstream):
    for path, body in (("/v1/messages", ANTHROPIC_BODY), ("/v1/chat/completions", OPENAI_BODY)):
        direct = httpx.post(upstream.url + path, json=body, headers={"x-mock-status": "429"})
        proxied = post(proxy.url, body, {"x-mock-status": "429"}, path=path)
        assert proxied.status_code == 429
        assert proxied.headers["retry-after"] == "7"
        assert proxied.content == direct.content
        for name, value in direct.headers.items():
            if "ratelimit" in name or name in ("request-id", "anthropic-organization-id", "openai-processing-ms"):
                assert proxied.headers[name] == value
        assert "set-cookie" not in proxied.headers


def test_response_headers_filtered_and_request_id(proxy, upstream):
    proxied = post(proxy.url, {**ANTHROPIC_BODY, "stream": False}, {"x-request-id": "client-id-123"})
    assert proxied.headers["x-ccproxy-request-id"] == "client-id-123"
    assert proxied.headers["request-id"].startswith("req_")
    assert "set-cookie" not in proxied.headers
    assert upstream.upstream.requests[-1].header("x-request-id") == "client-id-123"
    generated = post(proxy.url, {**ANTHROPIC_BODY, "stream": False})
    assert len(generated.headers["x-ccproxy-request-id"]) == 32


def test_request_headers_forwarded_credentials_replaced(proxy, upstream):
    body = json.dumps({**ANTHROPIC_BODY, "stream": False}).encode()
    sock = raw_request(
        proxy.port,
        "/v1/messages?beta=true",
        body,
        {
            "content-type": "application/json",
            "x-api-key": "client-proxy-key",
            "authorization": "Bearer client-token",
            "cookie": "session=abc",
            "anthropic-version": "2026-10-21",
            "anthropic-beta": "interleaved-thinking-2025-05-14,context-management-2025-06-27",
            "x-stainless-lang": "js",
            "connection": "keep-alive, x-hop",
            "x-hop": "must-not-pass",
            "keep-alive": "timeout=5",
            "accept": "application/json",
        },
    )
    sock.recv(65536)
    sock.close()
    seen = upstream.upstream.requests[-1]
    names = {name.lower() for name, _ in seen.headers}
    assert seen.query == "beta=true"
    assert seen.header("x-api-key") == "sk-ant-upstream-SECRET"
    assert seen.header("anthropic-version") == "2026-10-21"
    assert seen.header("anthropic-beta") == "interleaved-thinking-2025-05-14,context-management-2025-06-27"
    assert seen.header("x-stainless-lang") == "js"
    assert seen.header("accept") == "application/json"
    assert seen.body == body
    for gone in ("authorization", "cookie", "x-hop", "keep-alive", "accept-encoding", "user-agent"):
        assert gone not in names, gone
    assert seen.header("host") == f"127.0.0.1:{upstream.url.rsplit(':', 1)[1]}"


def test_openai_key_injected_as_bearer(proxy, upstream):
    post(proxy.url, {**OPENAI_BODY, "stream": False}, {"authorization": "Bearer client"}, path="/v1/chat/completions")
    seen = upstream.upstream.requests[-1]
    assert seen.header("authorization") == "Bearer sk-openai-upstream-SECRET"
    assert seen.path == "/v1/chat/completions"
    assert seen.header("x-api-key") is None


def test_compressed_body_passes_through_untouched(make_proxy, upstream):
    """With no plugin reading the body (usage off), gzip bytes reach the client as the upstream sent them."""
    proxy = make_proxy(provider_config(upstream.url, plugins={"disabled": ["usage"]}))
    headers = {**FIXED, "x-mock-gzip": "1", "accept-encoding": "gzip"}
    direct = httpx.post(upstream.url + "/v1/messages", json=ANTHROPIC_BODY, headers=headers)
    with httpx.stream("POST", proxy.url + "/v1/messages", json=ANTHROPIC_BODY, headers=headers) as proxied:
        assert proxied.headers["content-encoding"] == "gzip"
        raw = b"".join(proxied.iter_raw())
    with httpx.stream("POST", upstream.url + "/v1/messages", json=ANTHROPIC_BODY, headers=headers) as again:
        raw_direct = b"".join(again.iter_raw())
    assert raw == raw_direct
    assert direct.content.startswith(b"event: message_start")


def test_compressed_body_is_decoded_when_a_plugin_reads_it(proxy, upstream):
    headers = {**FIXED, "x-mock-gzip": "1", "accept-encoding": "gzip"}
    direct = httpx.post(upstream.url + "/v1/messages", json=ANTHROPIC_BODY, headers=headers)
    with httpx.stream("POST", proxy.url + "/v1/messages", json=ANTHROPIC_BODY, headers=headers) as proxied:
        assert "content-encoding" not in proxied.headers
        raw = b"".join(proxied.iter_raw())
    assert raw == direct.content


# -- timing: the held head and no coalescing ----------------------------------------------


def test_head_is_held_until_upstream_answers(proxy, upstream):
    body = json.dumps(ANTHROPIC_BODY).encode()
    sock = raw_request(proxy.port, "/v1/messages", body, {"content-type": "application/json", "x-mock-headers-delay": "600", "x-mock-status": "529"})
    sock.settimeout(0.4)
    with pytest.raises(socket.timeout):
        sock.recv(1)  # nothing may be written before the upstream's head arrives
    sock.settimeout(5)
    head = sock.recv(65536)
    sock.close()
    assert head.startswith(b"HTTP/1.1 529")
    assert b"retry-after: 7" in head.lower()


def test_events_arrive_spaced_as_sent(proxy, upstream):
    headers = {"x-mock-delay": "120", "x-mock-events": "5"}
    arrivals: list[tuple[float, bytes]] = []
    with httpx.stream("POST", proxy.url + "/v1/messages", json=ANTHROPIC_BODY, headers=headers, timeout=10) as r:
        for chunk in r.iter_raw():
            arrivals.append((time.monotonic(), chunk))
    deltas = [t for t, chunk in arrivals if b"content_block_delta" in chunk]
    assert len(deltas) == 5
    gaps = [b - a for a, b in zip(deltas, deltas[1:])]
    assert min(gaps) > 0.06, gaps  # each event written as it came, not coalesced at the end
    assert all(chunk.count(b"\n\n") == 1 for _, chunk in arrivals)  # one upstream write, one client write


# -- failures ------------------------------------------------------------------------------


def test_unreachable_upstream_is_502_in_each_dialect(make_proxy):
    server = make_proxy(provider_config(f"http://127.0.0.1:{closed_port()}"))
    r = post(server.url, ANTHROPIC_BODY)
    assert r.status_code == 502
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "api_error"
    r = post(server.url, OPENAI_BODY, path="/v1/chat/completions")
    assert r.status_code == 502
    assert r.json()["error"]["message"] and r.json()["error"]["type"] == "server_error"
    assert "SECRET" not in r.text


def test_slow_headers_is_504(make_proxy, mock):
    server = make_proxy(timeouts={"connect": 2, "headers": 0.3, "idle": 3, "total": 30})
    r = post(server.url, ANTHROPIC_BODY, {"x-mock-headers-delay": "1500"})
    assert r.status_code == 504
    assert r.json()["error"]["type"] == "api_error"
    assert "response headers" in r.json()["error"]["message"]


@pytest.mark.parametrize("scenario", ["x-mock-reset", "x-mock-garbage"])
def test_broken_upstream_before_head_is_502(proxy, upstream, scenario):
    r = post(proxy.url, OPENAI_BODY, {scenario: "1"}, path="/v1/chat/completions")
    assert r.status_code == 502
    assert set(r.json()["error"]) >= {"message", "type"}


@pytest.mark.parametrize("scenario", [{"x-mock-drop-after": "3"}, {"x-mock-truncate": "1"}])
@pytest.mark.parametrize("path,body", [("/v1/messages", ANTHROPIC_BODY), ("/v1/chat/completions", OPENAI_BODY)])
def test_failure_after_head_gives_error_event_and_broken_end(proxy, upstream, scenario, path, body):
    received = b""
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", proxy.url + path, json=body, headers=scenario, timeout=10) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                received += chunk
    if path == "/v1/messages":
        assert b"event: error\ndata: " in received
        assert b'"type": "error"' in received
    else:
        assert b'data: {"error": ' in received
        assert b"[DONE]" not in received


def test_idle_upstream_mid_stream_times_out_with_error_event(make_proxy, upstream):
    server = make_proxy(timeouts={"connect": 2, "headers": 3, "idle": 0.3, "total": 30})
    received = b""
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream(
            "POST", server.url + "/v1/messages", json=ANTHROPIC_BODY,
            headers={"x-mock-stall-after": "2", "x-mock-stall": "3000"}, timeout=10,
        ) as r:
            for chunk in r.iter_raw():
                received += chunk
    assert b"event: error" in received and b"sent nothing for 0.3s" in received


# -- client disconnects ---------------------------------------------------------------------


def test_client_disconnect_closes_upstream_and_reports(make_proxy, upstream):
    recorder = Recorder()
    server = make_proxy(plugins=[("recorder", recorder)])
    body = json.dumps(ANTHROPIC_BODY).encode()
    sock = raw_request(server.port, "/v1/messages", body, {"content-type": "application/json", "x-mock-delay": "100", "x-mock-events": "50"})
    assert b"message_start" in sock.recv(65536) or b"message_start" in sock.recv(65536)
    sock.close()
    assert upstream.wait_for(lambda m: m.disconnects == 1 and m.open_connections == 0, timeout=5)
    deadline = time.monotonic() + 5
    while not recorder.ends and time.monotonic() < deadline:
        time.sleep(0.02)
    assert recorder.ends[0].outcome == "client_disconnected"

    async def pool_active() -> int:
        return server.app.ctx.transports["anthropic"].pool_stats()["active"]

    assert server.run(pool_active) == 0


# -- lifecycle hooks -------------------------------------------------------------------------


def test_lifecycle_hooks_fire_in_order(make_proxy, upstream):
    recorder = Recorder()
    server = make_proxy(plugins=[("recorder", recorder)])
    r = post(server.url, ANTHROPIC_BODY)
    assert r.headers["x-seen-by-plugin"] == "yes"
    recorder.wait_end()
    kinds = [kind for kind, _ in recorder.events]
    assert kinds == ["headers", "start", "end"]
    assert b"".join(recorder.chunks) == r.content
    ctx = recorder.ends[0]
    assert ctx.outcome == "completed" and ctx.status == 200
    assert ctx.bytes_sent == len(r.content)
    assert ctx.events_sent == r.content.count(b"\n\n")
    assert ctx.t_upstream_headers <= ctx.t_first_byte <= ctx.duration
    assert ctx.provider == "anthropic" and ctx.upstream_dialect == "anthropic"


class HeaderWriter:
    """Sets response headers the way a careless plugin might: mixed case, CR/LF inside a value."""

    @hookimpl
    def ccproxy_upstream_headers(self, ctx, status, headers):
        headers["X-Plugin-Case"] = "kept"
        headers["x-forged"] = "a\r\nset-cookie: forged=1\r\n\r\nbody"
        headers["x-nul"] = "b\x00c"


@pytest.mark.parametrize("stream", [False, True])
def test_plugin_set_headers_are_sanitised_as_sanic_does(make_proxy, upstream, stream):
    """The client head is written without Sanic's multidict: names still go out lower-case, and CR, LF
    and NUL are still removed from values (no header or body can be forged through one)."""
    server = make_proxy(plugins=[("writer", HeaderWriter())])
    sock = raw_request(server.port, "/v1/messages", json.dumps({**ANTHROPIC_BODY, "stream": stream}).encode(),
                       {"content-type": "application/json"})
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(65536)
        assert data
        head += data
    sock.close()
    lines = head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    names = [line.split(b":", 1)[0] for line in lines[1:]]
    assert b"x-plugin-case: kept" in lines
    assert b"x-forged: aset-cookie: forged=1body" in lines
    assert b"x-nul: bc" in lines
    assert b"set-cookie" not in names and b"X-Plugin-Case" not in names
    assert len(names) == len(set(names))


def test_rejected_request_ends_once_with_outcome(make_proxy):
    recorder = Recorder()
    server = make_proxy(plugins=[("recorder", recorder)])
    r = post(server.url, {"model": "nope"})
    assert r.status_code == 404
    assert [k for k, _ in recorder.events] == ["end"]
    assert recorder.ends[0].outcome == "rejected"


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,status,needle",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[]", 400, "JSON object"),
        (b"", 400, "empty"),
        (b'{"messages": []}', 400, "model"),
        (b'{"model": 5}', 400, "model"),
        (b'{"model": "claude-x", "stream": "yes"}', 400, "stream"),
        (b'{"model": "unknown-model"}', 404, "unknown-model"),
        (b"\xff\xfe", 400, "UTF-8"),
    ],
)
def test_bad_input_in_each_dialect(proxy, raw, status, needle):
    r = httpx.post(proxy.url + "/v1/messages", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert r.json()["type"] == "error" and needle in r.json()["error"]["message"]
    r = httpx.post(proxy.url + "/v1/chat/completions", content=raw)
    assert r.status_code == status
    assert needle in r.json()["error"]["message"]


def test_wrong_method_and_unknown_route(proxy):
    r = httpx.get(proxy.url + "/v1/messages")
    assert r.status_code == 405 and r.json()["type"] == "error"
    r = httpx.put(proxy.url + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()
    r = httpx.head(proxy.url + "/")
    assert r.status_code == 404


def test_body_over_limit_is_413(make_proxy):
    server = make_proxy(limits={"max_body_bytes": 1000})
    r = httpx.post(server.url + "/v1/messages", json={**ANTHROPIC_BODY, "pad": "x" * 2000})
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "request_too_large"


def test_other_dialect_without_translation_is_clear_400(make_proxy, mock):
    config = provider_config(mock.url)
    config["plugins"] = {"disabled": ["translate"]} if _translate_installed() else {}
    server = make_proxy(config)
    r = post(server.url, {**OPENAI_BODY, "model": "claude-sonnet-4-5"}, path="/v1/chat/completions")
    assert r.status_code == 400
    assert "dialect" in r.json()["error"]["message"]


def _translate_installed() -> bool:
    from ccproxy_core.plugins import DEFAULT_PLUGINS

    return any(module.rpartition(".")[2] == "translate" for module in DEFAULT_PLUGINS)


# -- routes -------------------------------------------------------------------------------------


def test_models_and_health(proxy):
    assert httpx.get(proxy.url + "/health").json()["status"] == "ok"
    models = httpx.get(proxy.url + "/v1/models").json()
    assert models["object"] == "list" and isinstance(models["data"], list)


def test_events_ended_counts_what_the_joined_writes_count():
    """The relay's event count per write (no copy in the usual case) equals counting blank lines in the
    previous write's last byte joined to this one, for line ends of every kind split anywhere; over a stream
    with one blank line per event, in any mix of line ends, the writes count its events."""
    from ccproxy_core.client_writes import events_ended

    rng = __import__("random").Random(17)
    for _ in range(20000):
        tail = bytes(rng.choice(b"\n\ra") for _ in range(rng.randint(0, 2)))
        data = bytes(rng.choice(b"\n\r\n\ra") for _ in range(rng.randint(0, 8)))
        joined = tail[-1:] + data
        assert events_ended(tail, data) == joined.count(b"\n\n") + joined.count(b"\n\r") + joined.count(b"\r\r")
    ends = [b"\n", b"\r\n", b"\r"]
    for _ in range(2000):
        stream = b""
        events = rng.randint(1, 5)
        for i in range(events):  # a line end, then an empty line's (CR then LF would be one CRLF)
            first = rng.choice(ends)
            stream += b"data: %d" % i + first + rng.choice(ends[1:] if first == b"\r" else ends)
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 6))))
        tail, count = b"", 0
        for a, b in zip([0, *cuts], [*cuts, len(stream)]):
            count += events_ended(tail, stream[a:b])
            tail = stream[a:b][-2:]
        assert count == events, stream


@pytest.mark.parametrize("extra", [
    {}, {"content-length": 12}, {"x-u": "caf\u00e9"}, {"x-bad": "a\r\nb"}, {"X-Mixed": "v"},
])
def test_client_head_lines_are_the_bytes_of_its_pairs(extra):
    """Sanic's HTTP/1 writer gets the client head's lines as one pair: the head it writes is byte for byte
    the one its per-header pairs make (the form other writers get)."""
    from sanic.headers import format_http1_response
    from sanic.http import Http

    from ccproxy_core.client_head import ClientHead
    from ccproxy_core.request_head import ClientHttp

    def head(stream: Any) -> bytes:
        response = ClientHead(200, {"date": "Sat, 05 Dec 2026", "request-id": "req_1", **extra}, "application/json")
        response.stream = stream
        return format_http1_response(200, response.processed_headers)

    one = head(Http.__new__(Http))
    assert one == head(None) == head(ClientHttp.__new__(ClientHttp))
    if not {"x-u", "x-bad"} & set(extra):  # ASCII and clean: one pair under Http and the proxy's ClientHttp
        for stream in (Http.__new__(Http), ClientHttp.__new__(ClientHttp)):
            response = ClientHead(200, {"date": "Sat, 05 Dec 2026", **extra}, "application/json")
            response.stream = stream
            assert len(response.processed_headers) == 1
    assert one.startswith(b"HTTP/1.1 200 OK\r\ndate: Sat, 05 Dec 2026\r\n") and one.endswith(b"\r\n\r\n")


def test_raw_response_headers_are_the_general_paths():
    """The relay's path for an upstream head in httpx's layout gives the dict the general path gives
    (decode, then filter), or leaves the head to it: repeats, connection tokens, proxy-*, values that
    are not UTF-8 or hold a line feed, heads whose layout is cached already."""
    import httpx as _httpx

    from ccproxy_core import headers as h
    from ccproxy_core.relay import _header_items

    names = [b"content-type", b"Connection", b"x-a", b"proxy-x", b"set-cookie", b"keep-alive", b"request-id",
             b"content-length", b"x-b", b"transfer-encoding", b"a\nb"]
    values = [b"v", b"", b" a , b", b"x-a, request-id", b"close", b"caf\xc3\xa9", b"\xff", b"a\nb", b"x-b"]
    rng = __import__("random").Random(17)
    taken = 0
    for _ in range(3000):
        raw = [(n, n.lower(), rng.choice(values)) for n in rng.sample(names, rng.randint(0, 6))]
        if rng.random() < 0.2 and raw:
            raw.append(rng.choice(raw))  # a repeated name
        headers = _httpx.Headers()
        headers._list = raw
        general = h.response_headers(_header_items(headers))
        fast = h.raw_response_headers(raw)
        if fast is not None:
            taken += 1
            assert fast == general and list(fast) == list(general)
    assert taken > 200


def test_request_headers_by_layout_are_the_general_paths():
    """A client's headers filtered through their names' cached layout give what :func:`_filter` gives:
    credentials, hop-by-hop and connection-named headers dropped, repeats joined, names lower-cased."""
    from ccproxy_core import headers as h

    names = ["content-type", "Connection", "connection", "x-a", "proxy-x", "authorization", "keep-alive", "host",
             "user-agent", "content-length", "x-b", "te", "a\nb"]
    values = ["v", "", " x-a , b", "x-b, user-agent", "close", "caf\u00e9", "k", "a\nb"]
    rng = __import__("random").Random(17)
    for _ in range(3000):
        pairs = [(n, rng.choice(values)) for n in rng.sample(names, rng.randint(0, 7))]
        if rng.random() < 0.2 and pairs:
            pairs.append(rng.choice(pairs))  # a repeated name
        for _ in range(2):  # the second time, the layout is known
            got = h.request_headers(iter(pairs) if rng.random() < 0.5 else pairs)
            want = h._filter(list(pairs), h._REQUEST_DROP)
            assert got == want and list(got) == list(want)


def test_body_chunks_skip_sanics_send_chain(make_proxy, upstream, monkeypatch):
    """Once the head is out, a streamed body's chunks go to the client's transport in one call: Sanic's
    chunked writer runs only for the end. The client gets the upstream's bytes."""
    from sanic.http import Http

    writes: list[int] = []
    chunked = Http.http1_response_chunked

    async def counted(self, data, end_stream):
        writes.append(len(data))
        return await chunked(self, data, end_stream)

    monkeypatch.setattr(Http, "http1_response_chunked", counted)
    headers = {**FIXED, "x-mock-events": "30", "x-mock-delay": "3"}  # events spaced: one read, one write each
    direct = httpx.post(upstream.url + "/v1/messages", json=ANTHROPIC_BODY, headers=headers, timeout=10).content
    assert direct.count(b"event: content_block_delta") == 30
    recorder = Recorder()
    server = make_proxy(provider_config(upstream.url), plugins=[("recorder", recorder)])
    assert post(server.url, ANTHROPIC_BODY, headers).content == direct
    recorder.wait_end()
    assert recorder.ends[0].chunks_sent > 10
    assert writes == [0]  # the end only: every chunk after the head's took the direct path


class Ends:
    """A plugin that keeps each request's context at its end (no per-chunk hook)."""

    def __init__(self) -> None:
        self.ends: list[Any] = []
        self.ended = threading.Event()

    @hookimpl
    def ccproxy_stream_end(self, ctx):
        self.ends.append(ctx)
        self.ended.set()


def test_stream_reads_are_written_from_the_read_callback(make_proxy, upstream, monkeypatch):
    """While the relay waits for the next read, the connection's read callback writes it to the client:
    the relay's task wakes for the head's read and the end, not once per event. Bytes and counts as before."""
    from ccproxy_core.transport.response import _ResponseStream

    wakes: list[int] = []
    anext = _ResponseStream.__anext__

    async def counted(self):
        wakes.append(1)
        return await anext(self)

    monkeypatch.setattr(_ResponseStream, "__anext__", counted)
    headers = {**FIXED, "x-mock-events": "30", "x-mock-delay": "3"}  # events spaced: one read each
    direct = httpx.post(upstream.url + "/v1/messages", json=ANTHROPIC_BODY, headers=headers, timeout=10).content
    ends = Ends()
    server = make_proxy(provider_config(upstream.url), plugins=[("ends", ends)])
    assert post(server.url, ANTHROPIC_BODY, headers).content == direct
    assert ends.ended.wait(5)
    ctx = ends.ends[0]
    assert ctx.chunks_sent > 20 and ctx.events_sent == direct.count(b"\n\n")
    assert len(wakes) < 8, len(wakes)  # the first read (with the head), a few racing the write, the end


def test_reads_taken_in_the_read_callback_restart_the_idle_clock(make_proxy, upstream):
    """``timeouts.idle`` is the longest gap between reads, however a read is taken: 12 events 100 ms apart
    pass an idle timeout of 0.3 s although the relay's own wait lasts 1.2 s."""
    server = make_proxy(timeouts={"connect": 2, "headers": 3, "idle": 0.3, "total": 30})
    headers = {**FIXED, "x-mock-events": "12", "x-mock-delay": "100"}
    r = post(server.url, ANTHROPIC_BODY, headers)
    assert r.status_code == 200
    assert r.content.count(b"event: content_block_delta") == 12 and b"event: error" not in r.content


_SEND_SIGNAL_SCRIPT = """
import json, time, httpx
from sanic.http import Http
from ccproxy_core import hookimpl
from tests.mock_upstream import MockUpstreamThread
from tests.servers import ANTHROPIC_BODY, FIXED, ProxyThread, provider_config

writes, signalled = [], []
chunked = Http.http1_response_chunked
async def counted(self, data, end_stream):
    writes.append(len(data))
    return await chunked(self, data, end_stream)
Http.http1_response_chunked = counted

chunks = []
class SendSignal:
    @hookimpl
    def ccproxy_register_routes(self, app):
        @app.signal("http.lifecycle.send")
        async def sent(data):
            signalled.append(data)

    @hookimpl
    def ccproxy_stream_end(self, ctx):
        chunks.append(ctx.chunks_sent)

headers = {**FIXED, "x-mock-events": "30", "x-mock-delay": "3"}
with MockUpstreamThread() as mock, ProxyThread(provider_config(mock.url), plugins=[("send-signal", SendSignal())]) as proxy:
    direct = httpx.post(mock.url + "/v1/messages", json=ANTHROPIC_BODY, headers=headers, timeout=10).content
    proxied = httpx.post(proxy.url + "/v1/messages", json=ANTHROPIC_BODY, headers=headers, timeout=10).content
    for _ in range(500):  # ccproxy_stream_end runs after the client has the last byte
        if chunks:
            break
        time.sleep(0.01)
print(json.dumps({"same": proxied == direct, "writes": len(writes), "chunks": chunks,
                  "signalled": b"".join(signalled).count(b"event: content_block_delta")}))
"""


def test_a_send_signal_handler_sees_every_body_chunk():
    """With an ``http.lifecycle.send`` handler, every write goes through Sanic's send, so the handler sees
    each chunk. In a process of its own: Sanic strips the dispatch from its send class-wide when the
    first app of a process starts without a handler, as the other tests' apps do."""
    import subprocess
    import sys

    from tests.servers import ROOT

    done = subprocess.run([sys.executable, "-c", _SEND_SIGNAL_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # Each chunk after the one riding with the head went through Sanic's writer, and the end did.
    assert result["same"] and result["chunks"][0] > 10 and result["writes"] == result["chunks"][0], result
    assert result["signalled"] == 30, result  # the handler saw every event
