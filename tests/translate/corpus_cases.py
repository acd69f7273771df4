"""The stream corpus: recorded-shape upstream streams and how each is translated.

``corpus/<input>.sse`` holds the upstream's wire bytes; ``corpus/<case>.expected.sse``
the translated bytes the client must get. Regenerate the expected files after a
deliberate change with ``UPDATE_GOLDEN=1 pytest tests/translate`` and review the diff.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccproxy_plugins.translate.resp_streams import (
    AnthropicToResponsesStream,
    ChatToResponsesStream,
    ResponsesToAnthropicStream,
    ResponsesToChatStream,
)
from ccproxy_plugins.translate.streams import AnthropicToOpenAIStream, OpenAIToAnthropicStream

CORPUS = Path(__file__).parent / "corpus"
CREATED = 1_700_000_000
MODEL = "client-alias"
LIMIT = 1 << 20
#: The client dialect of a case whose name does not say it (the upstream's other dialect).
_OTHER = {"anthropic": "openai", "openai": "anthropic"}


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    options: dict[str, Any] = field(default_factory=dict)
    #: The client's dialect; by default the upstream's other one (the first two dialects).
    client_dialect: str = ""

    @property
    def upstream(self) -> str:
        return self.source.split("_", 1)[0]

    @property
    def client(self) -> str:
        return self.client_dialect or _OTHER[self.upstream]

    @property
    def input_path(self) -> Path:
        return CORPUS / f"{self.source}.sse"

    @property
    def expected_path(self) -> Path:
        return CORPUS / f"{self.name}.expected.sse"

    def adapter(self) -> Any:
        if self.client == "responses":
            cls = AnthropicToResponsesStream if self.upstream == "anthropic" else ChatToResponsesStream
            return cls(model=MODEL, request={"model": MODEL, **self.options}, limit=LIMIT, created=CREATED)
        if self.upstream == "responses" and self.client == "anthropic":
            return ResponsesToAnthropicStream(model=MODEL)
        if self.upstream == "responses":
            options = {"include_usage": False, "thinking": True, **self.options}
            return ResponsesToChatStream(model=MODEL, created=CREATED, **options)
        if self.upstream == "anthropic":
            options = {"include_usage": False, "thinking": True, **self.options}
            return AnthropicToOpenAIStream(model=MODEL, created=CREATED, **options)
        return OpenAIToAnthropicStream(model=MODEL)

    def input(self) -> bytes:
        return self.input_path.read_bytes()


CASES = [
    Case("anthropic_text", "anthropic_text"),
    Case("anthropic_text.include_usage", "anthropic_text", {"include_usage": True}),
    Case("anthropic_tool_call", "anthropic_tool_call", {"include_usage": True}),
    Case("anthropic_parallel_tools", "anthropic_parallel_tools", {"include_usage": True}),
    Case("anthropic_thinking", "anthropic_thinking"),
    Case("anthropic_thinking.drop", "anthropic_thinking", {"thinking": False}),
    Case("anthropic_cache_usage", "anthropic_cache_usage", {"include_usage": True}),
    Case("anthropic_unknown_event", "anthropic_unknown_event"),
    Case("anthropic_error", "anthropic_error", {"include_usage": True}),
    Case("openai_text", "openai_text"),
    Case("openai_tool_calls", "openai_tool_calls"),
    Case("openai_parallel_tool_calls", "openai_parallel_tool_calls"),
    Case("openai_interleaved_tool_calls", "openai_interleaved_tool_calls"),
    Case("openai_include_usage", "openai_include_usage"),
    Case("openai_error", "openai_error"),
    Case("openai_reasoning_content", "openai_reasoning_content"),
]
#: The Responses API: each Anthropic and Chat stream to a Responses client, each Responses
#: stream to an Anthropic and a Chat client.
RESPONSES_CASES = [
    *(Case(f"{source}.responses", source, client_dialect="responses") for source in (
        "anthropic_text", "anthropic_tool_call", "anthropic_parallel_tools", "anthropic_thinking",
        "anthropic_cache_usage", "anthropic_unknown_event", "anthropic_error", "openai_text", "openai_tool_calls",
        "openai_parallel_tool_calls", "openai_interleaved_tool_calls", "openai_include_usage", "openai_error",
        "openai_reasoning_content")),
    *(Case(f"{source}.{client}", source, {"include_usage": True} if client == "openai" else {},
           client_dialect=client)
      for source in ("responses_text", "responses_tool_call", "responses_parallel_tools", "responses_reasoning",
                     "responses_max_tokens", "responses_failed", "responses_error")
      for client in ("anthropic", "openai")),
]


def translate(case: Case, pieces: list[bytes]) -> bytes:
    """Feed ``pieces`` one by one, then finish."""
    adapter = case.adapter()
    out = [adapter.feed(piece) for piece in pieces]
    out.append(adapter.finish())
    return b"".join(out)
