"""OpenAI Chat Completions: `x-request-id`, `x-ratelimit-*`, `data:` chunks and `[DONE]`."""

from __future__ import annotations

import itertools
from json.encoder import encode_basestring_ascii as encode_string
from collections.abc import Iterator, Sequence
from typing import Any

from tests.mock_upstream.content import (CACHE_READ_TOKENS, INPUT_TOKENS, MODELS, Block, Text, Thinking, Tool,
                                         model_of, output_tokens)
from tests.mock_upstream.dialect import Dialect, Event, dumps, error_kind, rate_limit_headers
from tests.mock_upstream.scenario import Scenario


class OpenAIChat(Dialect):
    """OpenAI Chat Completions: `x-request-id`, `x-ratelimit-*`, `data:` chunks and `[DONE]`."""

    def headers(self, status: int) -> list[tuple[str, str]]:
        return [
            ("x-request-id", f"req_{self._request_token(16)}"),
            ("openai-organization", "mock-org"),
            ("openai-processing-ms", "42"),
            ("openai-version", "2020-10-01"),
            *rate_limit_headers(("requests",), "x-ratelimit-{kind}-{family}", status, 10000, "6ms"),
            *rate_limit_headers(("tokens",), "x-ratelimit-{kind}-{family}", status, 30000000, "0s"),
        ]

    def error(self, status: int, message: str | None = None) -> dict[str, Any]:
        _, kind, code, default = error_kind(status)
        return {"error": {"message": message or default, "type": kind, "param": None, "code": code}}

    def blocks(self, sc: Scenario) -> list[Block]:
        return [b for b in super().blocks(sc) if not isinstance(b, Thinking)]

    @staticmethod
    def _usage(blocks: Sequence[Block]) -> dict[str, Any]:
        output = output_tokens(blocks)
        return {"prompt_tokens": INPUT_TOKENS, "completion_tokens": output,
                "total_tokens": INPUT_TOKENS + output,
                "prompt_tokens_details": {"cached_tokens": CACHE_READ_TOKENS, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0,
                                              "rejected_prediction_tokens": 0}}

    @staticmethod
    def _finish_reason(blocks: Sequence[Block], sc: Scenario) -> str:
        if sc.max_tokens:
            return "length"
        return "tool_calls" if any(isinstance(b, Tool) for b in blocks) else "stop"

    @staticmethod
    def _tool_call(tool: Tool) -> dict[str, Any]:
        return {"id": f"call_{tool.suffix}", "type": "function",
                "function": {"name": tool.name, "arguments": tool.arguments}}

    def _envelope(self, body: dict[str, Any], obj: str) -> dict[str, Any]:
        return {"id": f"chatcmpl-{self._token(12)}", "object": obj, "created": self._now(),
                "model": model_of(body), "service_tier": "default", "system_fingerprint": "fp_mock0001"}

    def completion(self, body: dict[str, Any], blocks: list[Block], sc: Scenario) -> dict[str, Any]:
        text = "".join("".join(b.pieces) for b in blocks if isinstance(b, Text))
        tools = [self._tool_call(b) for b in blocks if isinstance(b, Tool)]
        message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None,
                                   "annotations": []}
        if tools:
            message["tool_calls"] = tools
        return {**self._envelope(body, "chat.completion"),
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": self._finish_reason(blocks, sc)}],
                "usage": self._usage(blocks)}

    def stream(self, body: dict[str, Any], blocks: list[Block], sc: Scenario) -> Iterator[Event]:
        envelope = self._envelope(body, "chat.completion.chunk")
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True

        def chunk(delta: dict[str, Any], finish: str | None = None) -> Event:
            data = {**envelope, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish}]}
            if include_usage:
                data["usage"] = None
            return (None, data)

        # Text chunks, the bulk of every stream, get their JSON from a template (the same bytes).
        before, _, after = dumps(chunk({"content": "\0"})[1]).decode().rpartition('"\\u0000"')
        has_text = any(isinstance(b, Text) for b in blocks)
        events = itertools.chain(
            [chunk({"role": "assistant", "content": "" if has_text else None, "refusal": None})],
            ((None, before + encode_string(p) + after) for b in blocks if isinstance(b, Text) for p in b.pieces),
            self._calls([b for b in blocks if isinstance(b, Tool)], chunk, sc))
        if sc.inband_error:
            yield from itertools.islice(events, 2)
            yield None, self.error(500, "The server had an error while processing your request. Sorry about that!")
            return
        yield from events
        yield chunk({}, self._finish_reason(blocks, sc))
        if include_usage:
            yield None, {**envelope, "choices": [], "usage": self._usage(blocks)}
        yield None, "[DONE]"

    def _calls(self, tools: list[Tool], chunk: Any, sc: Scenario) -> list[Event]:
        """Every tool call's fragments, after all text: one call after the other, or with ``interleave`` the first
        fragment of every call, then the second of each, ... (valid OpenAI)."""
        calls: list[list[Event]] = []
        for index, tool in enumerate(tools):
            first = {"index": index, **self._tool_call(tool)}
            first["function"] = {**first["function"], "arguments": ""}
            calls.append([chunk({"tool_calls": [first]}),
                          *(chunk({"tool_calls": [{"index": index, "function": {"arguments": p}}]})
                            for p in tool.pieces)])
        if sc.interleave:
            return [c[i] for i in range(max(map(len, calls), default=0)) for c in calls if i < len(c)]
        return [fragment for call in calls for fragment in call]

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 1727740800,
                                            "owned_by": "mock"} for m in MODELS]}
