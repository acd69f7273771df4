"""Token counts for upstreams that have no count endpoint: the local estimate and its transport.

A count goes to an upstream's own count endpoint when its dialect has one (Anthropic, Responses;
translated between the two, see :mod:`.proxy`). A Chat Completions upstream has no such endpoint
(and a completion call would bill a generation), so the count is estimated here, in-process, by
:class:`EstimateTransport`: the engine sends the attempt to it like to any upstream, so keys,
limits, hooks and logs apply unchanged.

The estimate (:func:`estimate_input_tokens`) counts the request's text (system, messages, tool
calls and results, tool definitions) in word and punctuation pieces, plus fixed overheads per
message, per tool and per image. Its error, measured against OpenAI's ``cl100k_base`` counts of
the same text on ``tests/data/count_corpus.json``, is stated in docs/translation.md and checked by
``tests/test_count_tokens.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

__all__ = ["estimate_input_tokens", "estimate_responses_input_tokens", "estimated", "EstimateTransport", "ESTIMATE_HEADER"]

#: Response header naming the estimate, so a client or log can tell it from an upstream's count.
ESTIMATE_HEADER = "x-ccproxy-token-count"

T = TypeVar("T")
_PIECES = re.compile(r"[A-Za-z]+|\d{1,3}|[^\sA-Za-z\d]+|\s+")
#: Letters per token within one word (long words split into several tokens).
_LETTERS_PER_TOKEN = 10
_PER_MESSAGE = 4
_PER_TOOL = 8
#: An image's tokens are not knowable without decoding it; Anthropic's ceiling for one image.
_PER_IMAGE = 1600


def _piece_tokens(piece: str) -> int:
    if piece[0].isalpha() and piece.isascii():
        return 1 + (len(piece) - 1) // _LETTERS_PER_TOKEN
    if piece[0].isspace():
        # A single space joins the next word's token; runs of spaces and newlines cost more.
        return 0 if piece == " " else 1
    if piece.isascii():  # a run of punctuation: about one token per two characters
        return 1 + (len(piece) - 1) // 2
    return len(piece)  # non-ASCII: about one token per character


class _PieceTokens(dict):  # type: ignore[type-arg]
    """:func:`_piece_tokens` of the pieces seen, so that an estimate is a look-up per piece, in C (the pieces
    of real text repeat). Pieces up to 32 characters are kept, at most :data:`MAX_PIECES` (then it starts
    again)."""

    def __missing__(self, piece: str) -> int:
        tokens = _piece_tokens(piece)
        if len(piece) <= 32:
            if len(self) >= MAX_PIECES:
                self.clear()
            self[piece] = tokens
        return tokens


#: The pieces whose tokens :class:`_PieceTokens` keeps (~5 MB at most).
MAX_PIECES = 50_000
_TOKENS = _PieceTokens()


#: Characters a text is read in at a time (split where one run of letters, digits, punctuation or spaces
#: ends, which leaves its pieces as they were): a thread that estimates lets others run between two.
CHUNK = 65_536
_RUN = re.compile(r"[A-Za-z]+|\d+|[^\sA-Za-z\d]+|\s+")


def _text_tokens(text: str) -> int:
    if len(text) <= CHUNK:
        return sum(map(_TOKENS.__getitem__, _PIECES.findall(text)))
    tokens, start = 0, 0
    while start < len(text):
        run = _RUN.match(text, min(start + CHUNK, len(text)))
        end = run.end() if run else len(text)
        tokens += sum(map(_TOKENS.__getitem__, _PIECES.findall(text, start, end)))
        start = end
    return tokens


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return _text_tokens(content)
    if not isinstance(content, list):
        return 0
    tokens = 0
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind in ("image", "image_url"):
            tokens += _PER_IMAGE
        elif kind in ("input_image", "input_file"):
            tokens += _PER_IMAGE
        elif kind == "tool_use":
            tokens += _text_tokens(str(block.get("name", ""))) + _text_tokens(json.dumps(block.get("input", {})))
        elif kind == "tool_result":
            tokens += _content_tokens(block.get("content"))
        elif kind == "document":
            source = block.get("source") or {}
            tokens += _content_tokens(source.get("data") if source.get("type") == "text" else source.get("content"))
        else:
            for key in ("text", "thinking"):
                value = block.get(key)
                if isinstance(value, str):
                    tokens += _text_tokens(value)
    return tokens


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """An estimate of the input tokens of an Anthropic Messages request ``body`` (at least 1)."""
    tokens = _content_tokens(body.get("system"))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            tokens += _PER_MESSAGE + _content_tokens(message.get("content"))
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            tokens += _PER_TOOL + _text_tokens(json.dumps(tool, ensure_ascii=False))
    return max(tokens, 1)


def estimate_responses_input_tokens(body: dict[str, Any]) -> int:
    """The same estimate for a Responses API request ``body``: ``instructions``, ``input`` (a string or
    items: messages, function calls and their outputs, reasoning summaries) and ``tools`` (at least 1)."""
    tokens = _content_tokens(body.get("instructions"))
    items = body.get("input")
    for item in [{"role": "user", "content": items}] if isinstance(items, str) else items or []:
        if not isinstance(item, dict):
            continue
        tokens += _PER_MESSAGE
        kind = item.get("type", "message")
        if kind == "message":
            tokens += _content_tokens(item.get("content"))
        elif kind == "function_call":
            tokens += _text_tokens(str(item.get("name", ""))) + _text_tokens(str(item.get("arguments", "")))
        elif kind == "function_call_output":
            output = item.get("output")
            tokens += _content_tokens(output) if isinstance(output, (str, list)) else 0
        elif kind == "reasoning":
            tokens += _content_tokens(item.get("summary"))
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            tokens += _PER_TOOL + _text_tokens(json.dumps(tool, ensure_ascii=False))
    return max(tokens, 1)


#: A body over this many bytes is estimated in a worker thread (:func:`estimated`).
INLINE_BYTES = 64 * 1024


async def estimated(estimate: Callable[[T], int], body: T, size: int) -> int:
    """``estimate(body)``; in a worker thread when the body is over :data:`INLINE_BYTES`, so that the event
    loop keeps serving meanwhile (the GIL can change hands between the pieces of text read, :data:`CHUNK`
    characters at most) instead of stopping for as long as the estimate runs: ~4 ms per 75 KB of a
    Claude Code session, seconds for a body near ``limits.max_body_bytes``. (Parsing the body's JSON, in C,
    holds the GIL throughout, as the parse of every request does.)"""
    return await asyncio.to_thread(estimate, body) if size > INLINE_BYTES else estimate(body)


class EstimateTransport(httpx.AsyncBaseTransport):
    """Answers a count request in-process with ``{"input_tokens": N}``: the local estimate of ``body``, the
    request's body as the intake parsed it (the estimate reads no model, so an alias's renamed bytes count the
    same). The bytes are not parsed again: that would stop the event loop a second time, for as long as the
    first parse, even from the estimate's thread."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raw = await request.aread()
        count = await estimated(estimate_input_tokens, self.body, len(raw))
        return httpx.Response(
            200, headers={ESTIMATE_HEADER: "estimate"}, json={"input_tokens": count}, request=request
        )
