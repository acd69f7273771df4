"""Which reply a request gets: the route table (path -> dialect and handler), echo, status overrides.

A third dialect adds its rows to :data:`ROUTES` (and a guess to :func:`dialect_of` if its
requests can be told apart by their headers).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from tests.mock_upstream.anthropic_messages import Anthropic
from tests.mock_upstream.content import INPUT_TOKENS, has_tool_result
from tests.mock_upstream.dialect import Dialect, Reply, dumps
from tests.mock_upstream.openai_chat import OpenAIChat
from tests.mock_upstream.openai_responses import OpenAIResponses
from tests.mock_upstream.request import RecordedRequest
from tests.mock_upstream.scenario import Scenario


def dialect_of(request: RecordedRequest) -> type[Dialect]:
    """The dialect a request without a dialect-specific path is answered in."""
    if request.header("anthropic-version") is not None or request.header("x-api-key") is not None:
        return Anthropic
    return OpenAIChat


def _request_json(dialect: Dialect, request: RecordedRequest) -> dict[str, Any] | Reply:
    """The request body as a JSON object, or a 400 reply saying why not."""
    try:
        body = request.json()
    except ValueError:
        return dialect.error_reply(400, "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return dialect.error_reply(400, "The request body must be a JSON object.")
    return body


def _generate(dialect: Dialect, request: RecordedRequest, sc: Scenario) -> Reply:
    """A completion in ``dialect``: JSON or a stream, as the body's ``stream`` asks."""
    body = _request_json(dialect, request)
    if isinstance(body, Reply):
        return body
    if sc.content == "shell" and has_tool_result(body):
        sc = dataclasses.replace(sc, content="text")
    blocks = dialect.blocks(sc)
    headers = dialect.headers(200)
    if body.get("stream") is True:
        return Reply(200, [*headers, ("cache-control", "no-cache")],
                     events=functools.partial(dialect.stream, body, blocks, sc))
    return Reply(200, headers, dumps(dialect.completion(body, blocks, sc)))


def _count_tokens(dialect: Dialect, request: RecordedRequest, sc: Scenario) -> Reply:
    body = _request_json(dialect, request)
    if isinstance(body, Reply):
        return body
    return Reply(200, dialect.headers(200), dumps({"input_tokens": INPUT_TOKENS}))


def _input_tokens(dialect: Dialect, request: RecordedRequest, sc: Scenario) -> Reply:
    body = _request_json(dialect, request)
    if isinstance(body, Reply):
        return body
    return Reply(200, dialect.headers(200), dumps({"object": "response.input_tokens", "input_tokens": INPUT_TOKENS}))


def _models(dialect: Dialect, request: RecordedRequest, sc: Scenario) -> Reply:
    return Reply(200, dialect.headers(200), dumps(dialect.models()))


Handler = Callable[[Dialect, RecordedRequest, Scenario], Reply]

# (method, path suffix, dialect or None to guess it from the headers, handler); first match wins.
ROUTES: tuple[tuple[str, str, type[Dialect] | None, Handler], ...] = (
    ("POST", "/v1/messages/count_tokens", Anthropic, _count_tokens),
    ("POST", "/v1/messages", Anthropic, _generate),
    ("POST", "/chat/completions", OpenAIChat, _generate),
    ("POST", "/responses/input_tokens", OpenAIResponses, _input_tokens),
    ("POST", "/responses", OpenAIResponses, _generate),
    ("GET", "/models", None, _models),
)


def route(request: RecordedRequest, sc: Scenario) -> Reply:
    """The reply for ``request`` under ``sc`` (echo and status overrides included)."""
    if sc.echo:
        return Reply(200, [], dumps({
            "method": request.method, "path": request.path, "query": request.query,
            "headers": [list(h) for h in request.headers],
            "body": request.body.decode("utf-8", "replace")}))
    for method, suffix, dialect_type, handler in ROUTES:
        if request.path.rstrip("/").endswith(suffix):
            dialect = (dialect_type or dialect_of(request))(request, sc.fixed_ids)
            if request.method != method and (method, request.method) != ("GET", "HEAD"):
                return dialect.error_reply(405, f"Method {request.method} not allowed.")
            if sc.status is not None and sc.status >= 400:
                return dialect.error_reply(sc.status)
            reply = handler(dialect, request, sc)
            if sc.status is not None:
                reply.status = sc.status
            return reply
    dialect = dialect_of(request)(request, sc.fixed_ids)
    return dialect.error_reply(404, f"Invalid URL ({request.method} {request.path})")

