"""Anthropic Messages: `request-id`, `anthropic-ratelimit-*`, typed SSE events."""

from __future__ import annotations

import json
import time
from json.encoder import encode_basestring_ascii as encode_string
from collections.abc import Iterator, Sequence
from typing import Any

from tests.mock_upstream.content import (CACHE_CREATION_TOKENS, CACHE_READ_TOKENS, INPUT_TOKENS, MODELS, Block,
                                         Text, Thinking, Tool, model_of, output_tokens)
from tests.mock_upstream.dialect import Dialect, Event, error_kind, rate_limit_headers
from tests.mock_upstream.scenario import Scenario

_ORG_ID = "3f1c2b7a-4d5e-4f60-8a9b-0c1d2e3f4a5b"


class Anthropic(Dialect):
    """Anthropic Messages: `request-id`, `anthropic-ratelimit-*`, typed SSE events."""

    def headers(self, status: int) -> list[tuple[str, str]]:
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._reset_at()))
        return [
            ("request-id", f"req_{self._request_token(12)}"),
            ("anthropic-organization-id", _ORG_ID),
            *rate_limit_headers(("requests",), "anthropic-ratelimit-{family}-{kind}", status, 4000, reset),
            *rate_limit_headers(("tokens", "input-tokens", "output-tokens"),
                                "anthropic-ratelimit-{family}-{kind}", status, 400000, reset),
            ("anthropic-ratelimit-unified-status", "rejected" if status == 429 else "allowed"),
            ("anthropic-ratelimit-unified-reset", str(self._reset_at())),
        ]

    def error(self, status: int, message: str | None = None) -> dict[str, Any]:
        kind, _, _, default = error_kind(status)
        return {"type": "error", "error": {"type": kind, "message": message or default}}

    @staticmethod
    def _usage(output_tokens: int) -> dict[str, Any]:
        return {"input_tokens": INPUT_TOKENS, "cache_creation_input_tokens": CACHE_CREATION_TOKENS,
                "cache_read_input_tokens": CACHE_READ_TOKENS, "output_tokens": output_tokens}

    @staticmethod
    def _stop_reason(blocks: Sequence[Block], sc: Scenario) -> str:
        if sc.max_tokens:
            return "max_tokens"
        return "tool_use" if any(isinstance(b, Tool) for b in blocks) else "end_turn"

    @staticmethod
    def _block(block: Block, *, empty: bool) -> dict[str, Any]:
        """The whole block, or the empty one that ``content_block_start`` carries."""
        match block:
            case Text(pieces):
                return {"type": "text", "text": "" if empty else "".join(pieces)}
            case Thinking(pieces, signature):
                return {"type": "thinking", "thinking": "" if empty else "".join(pieces),
                        "signature": "" if empty else signature}
            case Tool(suffix, name, arguments, _):
                return {"type": "tool_use", "id": f"toolu_{suffix}", "name": name,
                        "input": {} if empty else json.loads(arguments)}
        raise TypeError(block)

    @staticmethod
    def _deltas(block: Block, index: int) -> Iterator[dict[str, Any] | str]:
        """The block's ``content_block_delta`` events' data."""
        match block:
            case Text(pieces):  # the bulk of every stream: its JSON from a template
                template = '{"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":%%s}}' % index
                return (template % encode_string(p) for p in pieces)
            case Thinking(pieces, signature):
                deltas = [*({"type": "thinking_delta", "thinking": p} for p in pieces),
                          {"type": "signature_delta", "signature": signature}]
            case Tool(_, _, _, pieces):  # the real API starts with an empty fragment
                deltas = [{"type": "input_json_delta", "partial_json": p} for p in ("", *pieces)]
            case _:
                raise TypeError(block)
        return ({"type": "content_block_delta", "index": index, "delta": delta} for delta in deltas)

    def completion(self, body: dict[str, Any], blocks: list[Block], sc: Scenario) -> dict[str, Any]:
        return {
            "id": f"msg_{self._token(12)}", "type": "message", "role": "assistant",
            "model": model_of(body), "content": [self._block(b, empty=False) for b in blocks],
            "stop_reason": self._stop_reason(blocks, sc), "stop_sequence": None,
            "usage": self._usage(output_tokens(blocks)),
        }

    def stream(self, body: dict[str, Any], blocks: list[Block], sc: Scenario) -> Iterator[Event]:
        message = {"id": f"msg_{self._token(12)}", "type": "message", "role": "assistant",
                   "model": model_of(body), "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": self._usage(1)}
        yield "message_start", {"type": "message_start", "message": message}
        yield "ping", {"type": "ping"}
        if sc.unknown_event:
            yield "future_event", {"type": "future_event", "detail": {"note": "an event type clients do not know yet"}}
        for index, block in enumerate(blocks):
            yield "content_block_start", {"type": "content_block_start", "index": index,
                                          "content_block": self._block(block, empty=True)}
            for delta in self._deltas(block, index):
                yield "content_block_delta", delta
                if sc.inband_error:
                    yield "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                    return
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
        yield "message_delta", {"type": "message_delta",
                                "delta": {"stop_reason": self._stop_reason(blocks, sc), "stop_sequence": None},
                                "usage": {"output_tokens": output_tokens(blocks)}}
        yield "message_stop", {"type": "message_stop"}

    def models(self) -> dict[str, Any]:
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-09-29T00:00:00Z"}
                for m in MODELS]
        return {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]}
