"""The stream corpus: recorded-shape upstream streams and how each is translated.

``corpus/<input>.sse`` holds the upstream's wire bytes; ``corpus/<case>.expected.sse``
the translated bytes the client must get. Regenerate the expected files after a
deliberate change with ``UPDATE_GOLDEN=1 pytest tests/translate`` and review the diff.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccproxy_plugins.translate.streams import AnthropicToOpenAIStream, OpenAIToAnthropicStream

CORPUS = Path(__file__).parent / "corpus"
CREATED = 1_700_000_000
MODEL = "client-alias"


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def upstream(self) -> str:
        return self.source.split("_", 1)[0]

    @property
    def input_path(self) -> Path:
        return CORPUS / f"{self.source}.sse"

    @property
    def expected_path(self) -> Path:
        return CORPUS / f"{self.name}.expected.sse"

    def adapter(self) -> AnthropicToOpenAIStream | OpenAIToAnthropicStream:
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


def translate(case: Case, pieces: list[bytes]) -> bytes:
    """Feed ``pieces`` one by one, then finish."""
    adapter = case.adapter()
    out = [adapter.feed(piece) for piece in pieces]
    out.append(adapter.finish())
    return b"".join(out)
