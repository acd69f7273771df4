"""What the mock says, whatever the dialect: content blocks, built lazily, and the token counts.

A dialect module turns these blocks into its own JSON and SSE shapes. Text is generated piece by
piece as it is sent, so a 100,000-delta stream costs nothing before its head goes out.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

#: The reply text when no scenario asks for something else.
DEFAULT_TEXT = "Hello from the mock upstream."
INPUT_TOKENS = 12
CACHE_READ_TOKENS = 3
CACHE_CREATION_TOKENS = 0
MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "gpt-4o", "gpt-4o-mini")

#: Stands for the send time in a stamped text delta; the writer replaces it with ``"@"`` and 20 digits of
#: ``time.monotonic_ns()`` as the event is written (``x-mock-stamp``; the load client reads it back).
STAMP = "@" + "T" * 20
_STAMPED_PIECE = STAMP + " token "


class Words:
    """``n`` text deltas of ``text``, generated as they are iterated (``len`` is known up front).

    With more deltas than words the words are repeated; with ``stamp`` every delta is a
    :data:`STAMP` placeholder followed by ``" token "``.
    """

    __slots__ = ("text", "n", "stamp")

    def __init__(self, text: str, n: int, stamp: bool = False):
        self.text, self.n, self.stamp = text, n, stamp

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[str]:
        if self.stamp:
            return itertools.repeat(_STAMPED_PIECE, self.n)
        words = self.text.split(" ")
        if self.n <= len(words):
            return iter(_group([w if i == 0 else " " + w for i, w in enumerate(words)], self.n))
        return (w if i == 0 else " " + w for i, w in zip(range(self.n), itertools.cycle(words)))


@dataclass(frozen=True)
class Text:
    pieces: Words


@dataclass(frozen=True)
class Thinking:
    pieces: tuple[str, ...]
    signature: str


@dataclass(frozen=True)
class Tool:
    suffix: str  # the dialect adds its id prefix (toolu_ / call_)
    name: str
    arguments: str  # the JSON text of the arguments
    pieces: tuple[str, ...]  # ``arguments`` cut into streaming fragments


Block = Text | Thinking | Tool


def _group(items: Sequence[str], n: int) -> tuple[str, ...]:
    """``items`` joined into ``n`` contiguous, nearly equal, non-empty groups."""
    n = min(n, len(items))
    bounds = [round(i * len(items) / n) for i in range(n + 1)]
    return tuple("".join(items[a:b]) for a, b in itertools.pairwise(bounds))


def _tool(suffix: str, name: str, arguments: dict[str, Any]) -> Tool:
    text = json.dumps(arguments)
    return Tool(suffix, name, text, tuple(text[i : i + 9] for i in range(0, len(text), 9)))


_WEATHER_SF = _tool("01A09q90qw90lq917835lq9", "get_weather", {"location": "San Francisco, CA", "unit": "celsius"})
_WEATHER_TOKYO = _tool("01B77e21rt45kx553390wz2", "get_weather", {"location": "Tokyo, Japan", "unit": "celsius"})
#: The Codex CLI's shell tool (``exec_command``), for ``x-mock-content: shell``.
SHELL_OUTPUT = "mock-shell-ok"
_SHELL = _tool("01C55s83sh12ll90ok77zz1", "exec_command", {"cmd": f"echo {SHELL_OUTPUT}"})
_THOUGHT = "The user said hello. A short, friendly greeting is the right answer here."
_SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds2b7m5iS3fDjKdE6HrQqAKF9H2TMAn"


def _text(n: int | None, stamp: bool) -> Text:
    return Text(Words(DEFAULT_TEXT, n or 5, stamp))


#: ``x-mock-content`` -> (``x-mock-events``, ``x-mock-stamp``) -> blocks.
PLANS: dict[str, Callable[[int | None, bool], list[Block]]] = {
    "text": lambda n, stamp: [_text(n, stamp)],
    "tools": lambda n, stamp: [_WEATHER_SF],
    "parallel_tools": lambda n, stamp: [_WEATHER_SF, _WEATHER_TOKYO],
    "thinking": lambda n, stamp: [Thinking(tuple(Words(_THOUGHT, 3)), _SIGNATURE), _text(n, stamp)],
    "shell": lambda n, stamp: [_SHELL],  # answered with "text" once the request carries a tool's result
}


def has_tool_result(body: dict[str, Any]) -> bool:
    """The request's last turn carries a tool's result (Anthropic ``tool_result``, Chat ``role: tool``,
    Responses ``function_call_output``): a tool round trip is complete."""
    turns = body.get("input") if "input" in body else body.get("messages")
    last = turns[-1] if isinstance(turns, list) and turns and isinstance(turns[-1], dict) else {}
    content = last.get("content")
    return (last.get("type") == "function_call_output" or last.get("role") == "tool"
            or isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result"
                                                 for b in content))


def output_tokens(blocks: Sequence[Block]) -> int:
    """The mock's token count: one per streamed content piece."""
    return sum(len(b.pieces) for b in blocks)


def model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    return model if isinstance(model, str) and model else "mock-model"
