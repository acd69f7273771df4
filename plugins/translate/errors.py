"""Upstream error bodies and in-stream error frames, shown in the client's dialect.

An upstream error becomes a :class:`ProxyError` with a neutral ``kind`` and the
status the client gets; :func:`ccproxy_core.dialects.error_payload` renders it.
"""

from __future__ import annotations

from typing import Any

from ccproxy_core import ANTHROPIC, RESPONSES, ProxyError

from . import mappings as m
from .base import loads

__all__ = ["upstream_error", "client_status", "stream_error"]

_MAX_MESSAGE = 2000


def client_status(upstream_dialect: str, status: int) -> int:
    """The status a client of the other dialect gets for an upstream error status."""
    table = m.ANTHROPIC_TO_OPENAI_STATUS if upstream_dialect == ANTHROPIC else m.OPENAI_TO_ANTHROPIC_STATUS
    return table.get(status, status)


def _error_object(payload: Any) -> dict[str, Any] | None:
    """The inner error object of an Anthropic or OpenAI error payload, if any."""
    if isinstance(payload, list) and payload:  # some OpenAI-compatible servers wrap it in a list
        payload = payload[0]
    if not isinstance(payload, dict):
        return None
    inner = payload.get("error")
    if isinstance(inner, dict):
        return inner
    if isinstance(inner, str):
        return {"message": inner}
    return None


def _anthropic_kind(error: dict[str, Any] | None, status: int | None) -> str:
    kind = error.get("type") if error else None
    if isinstance(kind, str) and kind in m.ANTHROPIC_ERROR_KINDS:
        return kind
    return _status_kind(status)


def _openai_kind(error: dict[str, Any] | None, status: int | None) -> str:
    if status is not None and status >= 500:
        return "api_error"
    if status in m.STATUS_KIND:
        return m.STATUS_KIND[status]  # type: ignore[index]
    for key in ("code", "type"):
        value = error.get(key) if error else None
        if isinstance(value, str) and value in m.OPENAI_ERROR_KIND:
            return m.OPENAI_ERROR_KIND[value]
    return _status_kind(status)


def _status_kind(status: int | None) -> str:
    if status is None or status >= 500:
        return m.STATUS_KIND.get(status or 500, "api_error")
    return m.STATUS_KIND.get(status, "invalid_request_error")


def _message(error: dict[str, Any] | None, fallback: str) -> str:
    message = error.get("message") if error else None
    return message if isinstance(message, str) and message else fallback


def upstream_error(upstream_dialect: str, status: int, body: bytes) -> ProxyError:
    """An upstream error response -> the error the client sees (status already mapped).

    Bodies that are not the dialect's error JSON keep their text (shortened) as the
    message; the kind then comes from the status.
    """
    try:
        error = _error_object(loads(body))
    except (ValueError, RecursionError):
        error = None
    if error is None:
        text = body.decode("utf-8", "replace").strip()[:_MAX_MESSAGE]
        fallback = text or f"upstream returned HTTP {status}"
    else:
        fallback = f"upstream returned HTTP {status}"
    kind = _anthropic_kind(error, status) if upstream_dialect == ANTHROPIC else _openai_kind(error, status)
    return ProxyError(_message(error, fallback), status=client_status(upstream_dialect, status), kind=kind)


def stream_error(upstream_dialect: str, payload: Any) -> ProxyError:
    """An error payload that came with a success status (Anthropic ``event: error``
    data, an OpenAI ``data: {"error": ...}`` frame, a Responses ``error`` event or
    ``response.failed``, or such a JSON body) -> the error to show the client."""
    error = _error_object(payload)
    if upstream_dialect == RESPONSES and error is None and isinstance(payload, dict):
        response = payload.get("response")
        inner = response.get("error") if isinstance(response, dict) else None
        error = inner if isinstance(inner, dict) else payload  # response.failed, or the flat error event
    if upstream_dialect == ANTHROPIC:
        kind = _anthropic_kind(error, None)
    else:
        code = error.get("code") if error else None
        kind = _openai_kind(error, code if isinstance(code, int) else None)  # OpenRouter puts the status in code
    status = 529 if kind == "overloaded_error" else 500
    return ProxyError(_message(error, "upstream error"), status=status, kind=kind)
