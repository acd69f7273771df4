"""``previous_response_id`` against a translated upstream, kept in the shared state: a chain continued on
another process (sqlite: two gateways on one file, as ``--workers 2``) and on another instance (redis); the per-value bound and the TTL;
Redis down (``state.on_error``); and no state call for requests that keep nothing. Real sockets, the mock,
a real Redis-protocol server."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx
import openai
import pytest
import redis

from tests.gateway_helpers import RedisServer, gateway_process, stop_process
from tests.mock_upstream import DEFAULT_TEXT
from tests.servers import ProxyThread, provider_config, reserved_port

CLAUDE = "claude-sonnet-4-5"
CHAT = "gpt-4o"
RESP = "gpt-5-mini"


def config_for(mock_url: str, state: dict | None = None, **translate: Any) -> dict:
    config = provider_config(mock_url)
    config["providers"] = {"responses": {"format": "responses", "base_url": mock_url + "/v1",
                                         "api_key": "sk-resp-upstream-SECRET", "models": ["gpt-5*"]},
                           **config["providers"]}
    config["plugins"] = {"disabled": ["example"], "translate": translate}
    if state:
        config["state"] = state
    return config


def post(url: str, body: dict, **headers: str) -> httpx.Response:
    """One request on a connection of its own (so a multi-worker server may give it to any worker)."""
    return httpx.post(url + "/v1/responses", json=body, headers=headers, timeout=15)


def chain(urls: list[str], model: str, tag: str) -> list[str]:
    """A conversation whose turn n goes to ``urls[n % len(urls)]``, each turn continuing the one before;
    returns the request ids. The last turn's upstream request must hold every earlier turn."""
    previous, ids = None, []
    for n in range(len(urls)):
        body: dict[str, Any] = {"model": model, "input": f"{tag} turn {n}"}
        if previous:
            body["previous_response_id"] = previous
        ids.append(f"{tag}-{n}")
        reply = post(urls[n], body, **{"x-request-id": ids[-1]})
        assert reply.status_code == 200, reply.text
        previous = reply.json()["id"]
    return ids


def sent_turns(mock: Any, tag: str) -> list[str]:
    """The user turns of ``tag``'s last request as the upstream got it (Anthropic messages)."""
    [last] = [r.json() for r in mock.requests if f"{tag} turn 3" in json.dumps(r.json())]
    return [m["content"] if isinstance(m["content"], str) else m["content"][0].get("text")
            for m in last["messages"] if m["role"] == "user"]


def test_a_chain_continues_in_another_process_with_sqlite(tmp_path: Any, upstream: Any) -> None:
    """Two gateway processes on one SQLite file, as the workers of ``--workers 2`` are (each its own
    connection to the file); the turns alternate between them, so each follow-up is read by the process
    that did not write it. (Which worker of one server accepts a connection is the kernel's choice, so a
    test through one port could not make sure a chain crosses.)"""
    config = config_for(upstream.url, {"backend": "sqlite", "path": str(tmp_path / "state.db")})
    with reserved_port() as port_a, reserved_port() as port_b:
        a = gateway_process(tmp_path, "a", config, port_a)
        b = gateway_process(tmp_path, "b", config, port_b)
        try:
            chain([f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"] * 2, CLAUDE, "q")
        finally:
            errors = stop_process(a) + stop_process(b)
    assert sent_turns(upstream, "q") == [f"q turn {n}" for n in range(4)]
    assert "Traceback" not in errors


def test_a_chain_continues_on_the_other_instance_with_redis(tmp_path: Any, upstream: Any, redis_server: Any) -> None:
    """Two gateway processes, one Redis: the turns alternate between them, streamed and not, to an
    Anthropic and a Chat upstream; each value lives ``store_ttl`` in Redis."""
    config = config_for(upstream.url, {"backend": "redis", "url": redis_server.url}, store_ttl=120)
    with reserved_port() as port_a, reserved_port() as port_b:
        a = gateway_process(tmp_path, "a", config, port_a)
        b = gateway_process(tmp_path, "b", config, port_b)
        try:
            urls = [f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"] * 2
            chain(urls, CLAUDE, "r")
            assert sent_turns(upstream, "r") == [f"r turn {n}" for n in range(4)]
            clients = [openai.OpenAI(api_key="k", base_url=u + "/v1", max_retries=0) for u in urls[:2]]
            previous = None
            for n in range(4):
                with clients[n % 2].responses.stream(model=CHAT, input=f"s turn {n}",
                                                     previous_response_id=previous or openai.NOT_GIVEN) as events:
                    final = events.get_final_response()
                assert final.output_text == DEFAULT_TEXT
                previous = final.id
            last = upstream.requests[-1].json()
            assert [m["content"] for m in last["messages"] if m["role"] == "user"] == [f"s turn {n}" for n in range(4)]
            ttl = redis.Redis.from_url(redis_server.url).pttl(f"ccproxy:resp:{previous}")
            assert 0 < ttl <= 120_000
        finally:
            errors = stop_process(a) + stop_process(b)
    assert "Traceback" not in errors


def test_a_value_over_the_bound_is_not_kept_and_its_follow_up_says_why(upstream: Any) -> None:
    with ProxyThread(config_for(upstream.url, store_max_value_bytes=2000)) as server:
        small = post(server.url, {"model": CLAUDE, "input": "hi"}).json()["id"]
        big = post(server.url, {"model": CLAUDE, "input": "x" * 3000})
        assert big.status_code == 200  # the answer itself is unaffected
        assert post(server.url, {"model": CLAUDE, "input": "more", "previous_response_id": small}).status_code == 200
        refused = post(server.url, {"model": CLAUDE, "input": "more", "previous_response_id": big.json()["id"]})
        assert refused.status_code == 400
        message = refused.json()["error"]["message"]
        assert "was not kept" in message and "store_max_value_bytes (2000)" in message and "whole input" in message


def test_a_kept_exchange_expires_after_store_ttl(upstream: Any) -> None:
    with ProxyThread(config_for(upstream.url, store_ttl=0.3)) as server:
        first = post(server.url, {"model": CLAUDE, "input": "hi"}).json()["id"]
        time.sleep(0.5)
        gone = post(server.url, {"model": CLAUDE, "input": "more", "previous_response_id": first})
        assert gone.status_code == 400 and "not found" in gone.json()["error"]["message"]


@pytest.mark.parametrize("on_error", ["closed", "open"])
def test_redis_down(upstream: Any, on_error: str, caplog: pytest.LogCaptureFixture) -> None:
    """closed: a request that must keep its exchange gets 503 in dialect (streamed: an error event
    instead of ``response.completed``); open: it passes, not kept, with a warning. A follow-up gets 503
    either way and never reaches the upstream. What keeps nothing (``store: false``, a Responses
    upstream) makes no state call, so it passes. No traceback, no hang; Redis back, chains work again."""
    with reserved_port() as port:
        server_ = RedisServer(port).start()
        config = config_for(upstream.url, {"backend": "redis", "url": server_.url, "on_error": on_error})
        try:
            with ProxyThread(config) as server, caplog.at_level(logging.INFO):
                first = post(server.url, {"model": CLAUDE, "input": "hi"}).json()["id"]
                server_.stop()
                started = time.monotonic()
                plain = post(server.url, {"model": CLAUDE, "input": "hi"})
                with httpx.stream("POST", server.url + "/v1/responses", timeout=15,
                                  json={"model": CHAT, "input": "hi", "stream": True},
                                  headers={"x-mock-delay": "5"}) as streamed:  # the head goes out first
                    assert streamed.status_code == 200
                    events, broken = [], False
                    try:
                        for line in streamed.iter_lines():
                            events += [line] if line.startswith("event:") else []
                    except httpx.RemoteProtocolError:
                        broken = True  # the visible break after an error event
                sent = len(upstream.requests)
                follow_up = post(server.url, {"model": CLAUDE, "input": "more", "previous_response_id": first})
                assert len(upstream.requests) == sent  # refused before any upstream call
                unkept = post(server.url, {"model": CLAUDE, "input": "hi", "store": False})
                same = post(server.url, {"model": RESP, "input": "hi", "previous_response_id": "resp_upstream"})
                assert time.monotonic() - started < 5  # no hang
                assert follow_up.status_code == 503 and follow_up.headers["retry-after"] == "1"
                assert set(follow_up.json()["error"]) == {"message", "type", "param", "code"}
                assert (unkept.status_code, same.status_code) == (200, 200)
                if on_error == "closed":
                    assert plain.status_code == 503 and "could not be kept" in plain.json()["error"]["message"]
                    assert broken and events[-1] == "event: error" and "event: response.completed" not in events
                else:
                    assert plain.status_code == 200 and events[-1] == "event: response.completed" and not broken
                    assert "not kept for previous_response_id" in caplog.text
                assert not any(r.exc_info for r in caplog.records) and "SECRET" not in caplog.text
                server_.start()
                again = post(server.url, {"model": CLAUDE, "input": "hi"}).json()["id"]
                assert post(server.url, {"model": CLAUDE, "input": "more",
                                         "previous_response_id": again}).status_code == 200
        finally:
            server_.stop()
