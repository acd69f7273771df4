"""The OpenAI Responses API: OpenAI's headers and errors, a ``response`` object, typed SSE events
with a ``sequence_number``, no ``[DONE]``."""

from __future__ import annotations

import itertools
from json.encoder import encode_basestring_ascii as encode_string
from collections.abc import Iterator, Sequence
from typing import Any

from tests.mock_upstream.content import (CACHE_READ_TOKENS, INPUT_TOKENS, Block, Text, Thinking, Tool, model_of,
                                         output_tokens)
from tests.mock_upstream.dialect import Event
from tests.mock_upstream.openai_chat import OpenAIChat
from tests.mock_upstream.scenario import Scenario


class OpenAIResponses(OpenAIChat):
    """The Responses API (``POST /v1/responses``): headers, errors and models as OpenAI's Chat API."""

    def blocks(self, sc: Scenario) -> list[Block]:
        return super(OpenAIChat, self).blocks(sc)  # reasoning items included

    @staticmethod
    def _usage(blocks: Sequence[Block]) -> dict[str, Any]:
        output = output_tokens(blocks)
        reasoning = sum(len(b.pieces) for b in blocks if isinstance(b, Thinking))
        return {"input_tokens": INPUT_TOKENS, "input_tokens_details": {"cached_tokens": CACHE_READ_TOKENS},
                "output_tokens": output, "output_tokens_details": {"reasoning_tokens": reasoning},
                "total_tokens": INPUT_TOKENS + output}

    def _ids(self, blocks: Sequence[Block]) -> list[str]:
        prefixes = {Text: "msg", Thinking: "rs", Tool: "fc"}
        return [f"{prefixes[type(b)]}_{self._token(12)}{i:02d}" for i, b in enumerate(blocks)]

    def _response(self, body: dict[str, Any], status: str, output: list[dict[str, Any]],
                  usage: dict[str, Any] | None, id: str) -> dict[str, Any]:
        tools = body.get("tools") if isinstance(body.get("tools"), list) else []
        return {
            "id": id, "object": "response", "created_at": self._now(), "status": status,
            "background": False, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None, "model": model_of(body), "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"), "prompt_cache_key": None,
            "reasoning": {"effort": None, "summary": None}, "safety_identifier": None,
            "service_tier": "default", "store": body.get("store", True), "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"), "tools": tools, "top_logprobs": 0, "top_p": 1.0,
            "truncation": "disabled", "usage": usage, "user": None, "metadata": body.get("metadata") or {},
        }

    @staticmethod
    def _item(block: Block, id: str, *, done: bool) -> dict[str, Any]:
        """The output item, whole (``done``) or as ``response.output_item.added`` carries it."""
        status = "completed" if done else "in_progress"
        match block:
            case Text(pieces):
                content = [{"type": "output_text", "annotations": [], "logprobs": [], "text": "".join(pieces)}]
                return {"id": id, "type": "message", "status": status, "content": content if done else [],
                        "role": "assistant"}
            case Thinking(pieces, signature):
                summary = [{"type": "summary_text", "text": "".join(pieces)}]
                return {"id": id, "type": "reasoning", "encrypted_content": signature,
                        "summary": summary if done else []}
            case Tool(suffix, name, arguments, _):
                return {"id": id, "type": "function_call", "status": status,
                        "arguments": arguments if done else "", "call_id": f"call_{suffix}", "name": name}
        raise TypeError(block)

    def _status(self, sc: Scenario) -> str:
        return "incomplete" if sc.max_tokens else "completed"

    def completion(self, body: dict[str, Any], blocks: list[Block], sc: Scenario) -> dict[str, Any]:
        output = [self._item(b, id, done=True) for b, id in zip(blocks, self._ids(blocks))]
        status = self._status(sc)
        return self._response(body, status, output, self._usage(blocks), f"resp_{self._token(24)}")

    def stream(self, body: dict[str, Any], blocks: list[Block], sc: Scenario) -> Iterator[Event]:
        numbers = itertools.count()
        response = self._response(body, "in_progress", [], None, f"resp_{self._token(24)}")

        def event(kind: str, **fields: Any) -> Event:
            return kind, {"type": kind, "sequence_number": next(numbers), **fields}

        yield event("response.created", response=response)
        yield event("response.in_progress", response=response)
        output = []
        for index, (block, id) in enumerate(zip(blocks, self._ids(blocks))):
            yield event("response.output_item.added", output_index=index, item=self._item(block, id, done=False))
            where = {"item_id": id, "output_index": index}
            for kind, data in self._parts(block, where, numbers):
                yield (kind, data) if isinstance(data, str) else event(kind, **data)
                if sc.inband_error and kind.endswith(".delta"):
                    yield event("response.failed", response={
                        **response, "status": "failed",
                        "error": {"code": "server_error", "message": "The server had an error while processing "
                                                                     "your request. Sorry about that!"}})
                    return
            item = self._item(block, id, done=True)
            output.append(item)
            yield event("response.output_item.done", output_index=index, item=item)
        status = self._status(sc)
        final = {**response, "status": status, "output": output, "usage": self._usage(blocks),
                 "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None}
        yield event(f"response.{status}", response=final)

    @staticmethod
    def _parts(block: Block, where: dict[str, Any], numbers: Iterator[int]) -> Iterator[tuple[str, Any]]:
        """The events between an item's ``added`` and ``done``: (type, fields), or (type, the whole data) for
        text deltas, the bulk of every stream, whose JSON comes from a template (numbered from ``numbers``)."""
        match block:
            case Text(pieces):
                part = {"type": "output_text", "annotations": [], "logprobs": []}
                at = {**where, "content_index": 0}
                yield "response.content_part.added", {**at, "part": {**part, "text": ""}}
                template = ('{"type":"response.output_text.delta","sequence_number":%%d,"item_id":"%s",'
                            '"output_index":%d,"content_index":0,"delta":%%s,"logprobs":[]}'
                            % (where["item_id"], where["output_index"]))
                for piece in pieces:
                    yield "response.output_text.delta", template % (next(numbers), encode_string(piece))
                text = "".join(pieces)
                yield "response.output_text.done", {**at, "text": text, "logprobs": []}
                yield "response.content_part.done", {**at, "part": {**part, "text": text}}
            case Thinking(pieces, _):
                at = {**where, "summary_index": 0}
                yield "response.reasoning_summary_part.added", {**at, "part": {"type": "summary_text", "text": ""}}
                for piece in pieces:
                    yield "response.reasoning_summary_text.delta", {**at, "delta": piece}
                text = "".join(pieces)
                yield "response.reasoning_summary_text.done", {**at, "text": text}
                yield "response.reasoning_summary_part.done", {**at, "part": {"type": "summary_text", "text": text}}
            case Tool(_, _, arguments, pieces):
                for piece in pieces:
                    yield "response.function_call_arguments.delta", {**where, "delta": piece}
                yield "response.function_call_arguments.done", {**where, "arguments": arguments}
