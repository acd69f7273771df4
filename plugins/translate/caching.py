"""Prompt caching across translation to an OpenAI upstream.

An upstream's prompt cache reuses the longest prefix a request shares with an earlier one, so what
goes first must not change between turns:

* Claude Code starts ``system[0]`` with a line ``x-anthropic-billing-header: cc_version=…;
  cc_entrypoint=…; cch=<5 hex>;`` whose ``cch`` changes on every request. It means something to
  Anthropic only; :func:`without_billing_header` removes that line from a translated request (an
  Anthropic upstream gets the body unchanged).
* OpenAI routes requests that share a ``prompt_cache_key`` to the same cache. :func:`cache_key`
  gives the client's own key (``prompt_cache_key`` in the body), else one derived from the session
  id Claude Code puts in ``metadata.user_id``: stable for a session, and not the id itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

__all__ = ["without_billing_header", "cache_key", "BILLING_HEADER"]

BILLING_HEADER = "x-anthropic-billing-header:"
_SESSION = re.compile(r"session_([0-9a-fA-F-]{8,})")


def _strip(text: str) -> str:
    return text.partition("\n")[2] if text.startswith(BILLING_HEADER) else text


def without_billing_header(system: Any) -> Any:
    """``system`` without a leading billing-header line (a block left empty is dropped); anything
    else unchanged."""
    if isinstance(system, str):
        return _strip(system)
    if isinstance(system, list) and system and isinstance(system[0], dict) and system[0].get("type") == "text":
        text = system[0].get("text")
        if isinstance(text, str) and text.startswith(BILLING_HEADER):
            rest = _strip(text)
            return [{**system[0], "text": rest}, *system[1:]] if rest.strip() else system[1:]
    return system


def _session_id(user_id: str) -> str | None:
    try:
        value = json.loads(user_id)
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("session_id"), str) and value["session_id"]:
        return value["session_id"]
    match = _SESSION.search(user_id)
    return match.group(1) if match else None


def cache_key(body: dict[str, Any]) -> str | None:
    """The ``prompt_cache_key`` for an OpenAI upstream, or None when the client gave nothing stable."""
    key = body.get("prompt_cache_key")
    if isinstance(key, str) and key:
        return key[:64]
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    session = _session_id(user_id) if isinstance(user_id, str) else None
    if session is None:
        return None
    return "ccproxy-" + hashlib.sha256(session.encode()).hexdigest()[:32]
