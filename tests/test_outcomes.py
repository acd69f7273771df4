"""Outcomes and usage are true when clients leave right after the last byte.

A one-shot client (``http.client``: send, read the whole body, close) closes its socket as soon
as it has the last byte, often before the core has seen the upstream's end or run its
end-of-response hooks. Such a response was delivered: it is ``completed`` with its usage whole.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from collections import Counter
from pathlib import Path
from typing import Any

from ccproxy_core import estimate_input_tokens, hookimpl
from tests.servers import ANTHROPIC_BODY, OPENAI_BODY, ROOT, provider_config
from tests.test_observability import ANTHROPIC_USAGE, OPENAI_USAGE, log_lines

ROUNDS = 10  # x 4 cases = 40 one-shot requests


def _one_shot(port: int, path: str, body: dict[str, Any]) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        conn.close()


def _run(server: Any, log: Path, cases: list[tuple[str, dict[str, Any], dict[str, int]]]) -> None:
    sent = []
    for _ in range(ROUNDS):
        for path, body, usage in cases:
            content = _one_shot(server.port, path, body)
            sent.append((body, usage, content))
    lines = log_lines(log, len(sent))
    # Logged in the order the requests ended (one at a time), so line i is request i.
    assert Counter(line["outcome"] for line in lines) == {"completed": len(sent)}
    for line, (body, usage, content) in zip(lines, sent):
        assert line["stream"] is body["stream"]
        assert line["usage"] == usage and line["usage_partial"] is False
        assert line["bytes_sent"] == len(content)


def test_one_shot_clients_are_completed_with_whole_usage(make_proxy, mock, tmp_path):
    log = tmp_path / "access.log"
    config = provider_config(mock.url, retries={"max_attempts": 1})
    config["plugins"] = {"access_log": {"path": str(log)}}
    server = make_proxy(config)
    _run(server, log, [
        ("/v1/messages", {**ANTHROPIC_BODY, "stream": True}, ANTHROPIC_USAGE),
        ("/v1/messages", {**ANTHROPIC_BODY, "stream": False}, ANTHROPIC_USAGE),
        ("/v1/chat/completions", {**OPENAI_BODY, "stream": True}, OPENAI_USAGE),
        ("/v1/chat/completions", {**OPENAI_BODY, "stream": False}, OPENAI_USAGE),
    ])


def test_one_shot_clients_of_the_bundled_demo(make_proxy, tmp_path, monkeypatch):
    """The bundled config's offline ``demo`` providers (an in-process httpx transport)."""
    import yaml

    monkeypatch.setattr("ccproxy_plugins.demo.WORD_DELAY", 0.0)
    log = tmp_path / "access.log"
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["plugins"] = {**(config.get("plugins") or {}), "access_log": {"path": str(log)}}
    server = make_proxy(config)
    message = {"max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    # "Hello from the ccproxy demo provider (offline, no API key needed). You said: hi": 14 words.
    # Input tokens: the local estimate of the request (ccproxy_core.estimate_input_tokens).
    usage = {"input_tokens": estimate_input_tokens(message), "output_tokens": 14, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    _run(server, log, [
        ("/v1/messages", {**message, "model": "demo", "stream": True}, usage),
        ("/v1/messages", {**message, "model": "demo", "stream": False}, usage),
        ("/v1/chat/completions", {**message, "model": "demo-gpt", "stream": True}, usage),
        ("/v1/chat/completions", {**message, "model": "demo-gpt", "stream": False}, usage),
    ])


class SlowObserver:
    """An async body hook that takes a while: a client leaving meanwhile must not cut it short."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    @hookimpl
    async def ccproxy_response_body(self, ctx, body):
        await asyncio.sleep(0.05)
        self.seen.append(len(body))


def test_async_end_observers_finish_after_the_client_left(make_proxy, mock, tmp_path):
    log = tmp_path / "access.log"
    config = provider_config(mock.url, retries={"max_attempts": 1})
    config["plugins"] = {"access_log": {"path": str(log)}}
    observer = SlowObserver()
    server = make_proxy(config, plugins=[("slow", observer)])
    sizes = [len(_one_shot(server.port, "/v1/messages", {**ANTHROPIC_BODY, "stream": False})) for _ in range(5)]
    lines = log_lines(log, 5)
    assert [line["outcome"] for line in lines] == ["completed"] * 5
    assert observer.seen == sizes  # each ran to its end, before the request was logged
    assert all(line["usage"] == ANTHROPIC_USAGE for line in lines)
