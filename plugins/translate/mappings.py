"""The translation tables, in one place (docs/translation.md renders the same tables).

Every dialect-to-dialect mapping that is a lookup lives here; the converters only
walk structures and consult these tables.
"""

from __future__ import annotations

from typing import Final

# -- Stop reasons ---------------------------------------------------------------

#: Anthropic ``stop_reason`` -> OpenAI ``finish_reason``.
STOP_TO_FINISH: Final[dict[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
#: OpenAI ``finish_reason`` -> Anthropic ``stop_reason``.
FINISH_TO_STOP: Final[dict[str, str]] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# -- tool_choice ----------------------------------------------------------------

#: OpenAI string ``tool_choice`` -> Anthropic ``tool_choice.type``.
OPENAI_TOOL_CHOICE: Final[dict[str, str]] = {"auto": "auto", "none": "none", "required": "any"}
#: Anthropic ``tool_choice.type`` (except ``tool``) -> OpenAI string ``tool_choice``.
ANTHROPIC_TOOL_CHOICE: Final[dict[str, str]] = {v: k for k, v in OPENAI_TOOL_CHOICE.items()}

# -- Reasoning ------------------------------------------------------------------

#: OpenAI ``reasoning_effort`` -> Anthropic ``thinking.budget_tokens`` (None: no thinking).
EFFORT_TO_BUDGET: Final[dict[str, int | None]] = {
    "none": None,
    "minimal": 1024,
    "low": 4096,
    "medium": 8192,
    "high": 16384,
    "xhigh": 32768,
}
#: Anthropic ``thinking.budget_tokens`` -> OpenAI ``reasoning_effort``: the first
#: row whose bound the budget is below wins; the last row has no bound.
BUDGET_TO_EFFORT: Final[tuple[tuple[int | None, str], ...]] = (
    (4096, "low"),
    (16384, "medium"),
    (None, "high"),
)
#: Anthropic ``output_config.effort`` -> OpenAI ``reasoning_effort``.
ANTHROPIC_EFFORT: Final[dict[str, str]] = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
    "max": "high",
}
#: Smallest thinking budget Anthropic accepts.
MIN_THINKING_BUDGET: Final = 1024


def effort_for_budget(budget: int) -> str:
    """The OpenAI ``reasoning_effort`` for an Anthropic thinking budget."""
    for bound, effort in BUDGET_TO_EFFORT:
        if bound is None or budget < bound:
            return effort
    return BUDGET_TO_EFFORT[-1][1]  # pragma: no cover - the last row has no bound


# -- Errors ---------------------------------------------------------------------

#: HTTP status -> neutral error kind, for bodies whose own type says nothing better.
STATUS_KIND: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
#: OpenAI error ``type``/``code`` values -> neutral kind (checked before the status).
OPENAI_ERROR_KIND: Final[dict[str, str]] = {
    "invalid_request_error": "invalid_request_error",
    "invalid_api_key": "authentication_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "model_not_found": "not_found_error",
    "rate_limit_error": "rate_limit_error",
    "rate_limit_exceeded": "rate_limit_error",
    "requests": "rate_limit_error",
    "tokens": "rate_limit_error",
    "insufficient_quota": "rate_limit_error",
    "context_length_exceeded": "invalid_request_error",
    "server_error": "api_error",
    "overloaded_error": "overloaded_error",
}
#: Anthropic error types the neutral kinds of :mod:`ccproxy_core.errors` know.
ANTHROPIC_ERROR_KINDS: Final[frozenset[str]] = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "overloaded_error",
        "timeout_error",
    }
)
#: Status changes when an upstream error is shown to a client of the other dialect;
#: statuses not listed are kept.
ANTHROPIC_TO_OPENAI_STATUS: Final[dict[int, int]] = {529: 503}
OPENAI_TO_ANTHROPIC_STATUS: Final[dict[int, int]] = {}

# -- Headers --------------------------------------------------------------------

#: OpenAI rate-limit header -> Anthropic rate-limit header (and back, inverted).
RATELIMIT_HEADERS: Final[dict[str, str]] = {
    f"x-ratelimit-{field}-{unit}": f"anthropic-ratelimit-{unit}-{field}"
    for unit in ("requests", "tokens")
    for field in ("limit", "remaining", "reset")
}
#: Client request headers that only make sense to the named upstream dialect.
ANTHROPIC_ONLY_REQUEST_HEADERS: Final[tuple[str, ...]] = (
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
)
OPENAI_ONLY_REQUEST_HEADERS: Final[tuple[str, ...]] = ("openai-organization", "openai-project", "openai-beta")
#: ``anthropic-version`` sent to an Anthropic upstream when an OpenAI client gave none.
ANTHROPIC_VERSION: Final = "2023-06-01"

# -- The Responses API ----------------------------------------------------------

#: Anthropic ``stop_reason`` -> Responses ``incomplete_details.reason`` (others: ``completed``).
STOP_TO_INCOMPLETE: Final[dict[str, str]] = {
    "max_tokens": "max_output_tokens",
    "model_context_window_exceeded": "max_output_tokens",
    "refusal": "content_filter",
}
#: Chat ``finish_reason`` -> Responses ``incomplete_details.reason`` (others: ``completed``).
FINISH_TO_INCOMPLETE: Final[dict[str, str]] = {"length": "max_output_tokens", "content_filter": "content_filter"}
#: Responses ``incomplete_details.reason`` -> Chat ``finish_reason``.
INCOMPLETE_TO_FINISH: Final[dict[str, str]] = {"max_output_tokens": "length", "content_filter": "content_filter"}
#: Neutral error kind -> Responses ``response.error.code`` (others: ``server_error``).
KIND_TO_RESPONSES_CODE: Final[dict[str, str]] = {
    "rate_limit_error": "rate_limit_exceeded",
    "invalid_request_error": "invalid_prompt",
}
