"""An OpenAI Chat Completions upstream with a prompt-prefix cache, for prompt-caching tests.

It models what OpenAI documents: a request reuses the longest prefix it shares with an earlier
request of the same ``prompt_cache_key`` (no key: its own bucket), counted in whole 128-token
blocks once at least 1024 tokens match, and reports it as ``usage.prompt_tokens_details.
cached_tokens``. Tokens are counted as 4 bytes of the request's ``messages`` and ``tools`` JSON.
Non-streamed answers only; every request body is kept in ``bodies``.
"""

from __future__ import annotations

import asyncio
import json
import os

from tests.scripted_upstream import ScriptedUpstream

BYTES_PER_TOKEN = 4
MIN_CACHED, BLOCK = 1024, 128


def _prompt(body: dict) -> bytes:
    return json.dumps([body.get("messages"), body.get("tools")], separators=(",", ":")).encode()


def cached_tokens(prompt: bytes, earlier: list[bytes]) -> int:
    """The cached part of ``prompt`` given the ``earlier`` prompts of its bucket."""
    shared = max((len(os.path.commonprefix([prompt, e])) for e in earlier), default=0) // BYTES_PER_TOKEN
    return shared // BLOCK * BLOCK if shared >= MIN_CACHED else 0


class PrefixCacheUpstream(ScriptedUpstream):
    """Serves ``POST …/chat/completions`` on 127.0.0.1 with cache-aware usage."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict] = []
        self._buckets: dict[str | None, list[bytes]] = {}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.partition(b":")[2]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            body = json.loads(await reader.readexactly(length))
            self.bodies.append(body)
            prompt = _prompt(body)
            bucket = self._buckets.setdefault(body.get("prompt_cache_key"), [])
            cached = cached_tokens(prompt, bucket)
            bucket.append(prompt)
            tokens = len(prompt) // BYTES_PER_TOKEN
            answer = json.dumps({
                "id": "chatcmpl-cache", "object": "chat.completion", "created": 1727740800, "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": tokens, "completion_tokens": 1, "total_tokens": tokens + 1,
                          "prompt_tokens_details": {"cached_tokens": cached}}}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                         b"connection: close\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
