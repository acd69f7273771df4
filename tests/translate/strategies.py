"""Hypothesis strategies for throwing odd JSON at the converters.

``json_values`` is any JSON value, biased towards the keys and words the converters
look for so that random objects reach deep into them; ``mutated(bodies)`` takes a
valid body and replaces or deletes one to three of its fields (at any depth).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from hypothesis import strategies as st

KEYS = [
    "role", "content", "type", "text", "image_url", "url", "file", "file_data", "filename", "tool_calls", "function",
    "name", "arguments", "id", "tool_call_id", "tool_use_id", "source", "data", "media_type", "input", "cache_control",
    "parameters", "input_schema", "refusal", "title", "thinking", "budget_tokens", "effort", "format", "schema",
    "json_schema", "user_id", "include_usage", "choices", "message", "usage", "finish_reason", "stop_reason", "error",
]  # fmt: skip
WORDS = [
    "user", "assistant", "system", "developer", "tool", "function", "text", "image_url", "image", "file", "document",
    "tool_use", "tool_result", "thinking", "redacted_thinking", "refusal", "base64", "url", "json_schema", "auto",
    "required", "any", "none", "custom", "enabled", "disabled", "high", "application/pdf", "text/plain", "{}",
    '{"a": 1}', "[1]", "data:image/png;base64,AA==", "data:text/plain;base64,aGk=", "data:application/pdf;base64,JV",
    "data:text/plain;base64,/w==", "",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(WORDS)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every node below ``value`` (keys and indexes)."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


@st.composite
def mutated(draw: st.DrawFn, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """One of ``bodies`` with 1-3 fields, at any depth, replaced by random JSON or deleted."""
    body = copy.deepcopy(draw(st.sampled_from(bodies)))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(body))
        if not paths:
            break
        *parents, key = draw(st.sampled_from(paths))
        parent = body
        for step in parents:
            parent = parent[step]
        if draw(st.booleans()) or isinstance(parent, list):
            parent[key] = draw(json_values)
        else:
            del parent[key]
    return body
