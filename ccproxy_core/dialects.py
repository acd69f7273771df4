"""What each client dialect looks like on the wire: paths and error shapes.

This is the single place where a :class:`ProxyError` becomes bytes the
client understands, as a JSON body or as an in-stream error event.

Dialects: ``anthropic`` (Messages), ``openai`` (Chat Completions) and ``responses``
(the OpenAI Responses API). The constants live in :mod:`ccproxy_core.context`.
"""

from __future__ import annotations

import json

from .context import ANTHROPIC, OPENAI, RESPONSES
from .errors import ProxyError

#: Path the upstream of each dialect serves, appended to the provider's base_url.
UPSTREAM_PATHS = {ANTHROPIC: "/v1/messages", OPENAI: "/chat/completions", RESPONSES: "/responses"}
#: Path of each upstream dialect's token count. A count goes to an upstream that has one (translated
#: between the two dialects); a Chat upstream gets the local estimate (:mod:`.counting`), never a completion call.
COUNT_PATHS = {ANTHROPIC: "/v1/messages/count_tokens", RESPONSES: "/responses/input_tokens"}
#: The body fields each count endpoint accepts (``messages.count_tokens`` in the anthropic SDK,
#: ``responses.input_tokens.count`` in the openai SDK): a translated count keeps only these.
COUNT_FIELDS = {
    ANTHROPIC: frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers",
                          "cache_control", "output_config", "output_format", "speed"}),
    RESPONSES: frozenset({"model", "input", "instructions", "tools", "tool_choice", "text", "reasoning",
                          "parallel_tool_calls", "previous_response_id", "conversation", "truncation",
                          "personality"}),
}

#: Path of each upstream dialect's model list, appended to the provider's base_url.
MODELS_PATHS = {ANTHROPIC: "/v1/models", OPENAI: "/models"}

# Neutral kind -> OpenAI error type. Anthropic uses the neutral kinds as they are.
_OPENAI_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "request_too_large": "invalid_request_error",
    "rate_limit_error": "rate_limit_error",
    "overloaded_error": "server_error",
    "timeout_error": "timeout_error",
    "api_error": "server_error",
    "billing_error": "insufficient_quota",
    "budget_exceeded": "rate_limit_error",  # a gateway key's budget (the code says budget_exceeded)
}
_ANTHROPIC_TYPES = {"timeout_error": "api_error", "budget_exceeded": "rate_limit_error"}


def error_payload(dialect: str, error: ProxyError) -> dict:
    """The error object in ``dialect``'s own shape (OpenAI's for both OpenAI dialects)."""
    if dialect == OPENAI or dialect == RESPONSES:
        return {
            "error": {
                "message": error.message,
                "type": _OPENAI_TYPES.get(error.kind, "server_error"),
                "param": None,
                "code": error.kind,
            }
        }
    return {
        "type": "error",
        "error": {"type": _ANTHROPIC_TYPES.get(error.kind, error.kind), "message": error.message},
    }


def error_body(dialect: str, error: ProxyError) -> bytes:
    """A JSON error body in ``dialect``'s shape."""
    return json.dumps(error_payload(dialect, error)).encode()


def error_event(dialect: str, error: ProxyError) -> bytes:
    """An in-stream error event in ``dialect``'s framing, for failures after the head.

    Responses: ``event: error`` with ``{"type": "error", "code", "message", "param"}`` and the
    stream's next ``sequence_number`` when the error carries one (a Responses stream adapter that
    raises sets ``error.sequence_number``); the core, which does not count events, sends none.
    """
    if dialect == RESPONSES:
        payload = {"type": "error", "code": error.kind, "message": error.message, "param": None}
        sequence = getattr(error, "sequence_number", None)
        if sequence is not None:
            payload["sequence_number"] = sequence
        return b"event: error\ndata: " + json.dumps(payload).encode() + b"\n\n"
    data = json.dumps(error_payload(dialect, error))
    if dialect == OPENAI:
        return b"data: " + data.encode() + b"\n\n"
    return b"event: error\ndata: " + data.encode() + b"\n\n"
