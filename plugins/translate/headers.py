"""Rate-limit response headers in the client's naming.

OpenAI's ``x-ratelimit-reset-*`` values are durations (``6m0s``, ``20ms``);
Anthropic's ``anthropic-ratelimit-*-reset`` values are RFC 3339 instants. Values that
do not parse, or name an instant past what a ``datetime`` holds, are copied unchanged.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

from ccproxy_core import ANTHROPIC

from . import mappings as m

__all__ = ["add_client_headers", "parse_duration", "format_duration"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(value: str) -> float | None:
    """A Go-style duration (``1h2m3.5s``, ``20ms``) -> seconds; None if it is not one."""
    value = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return total if pos == len(value) and pos else None


def format_duration(seconds: float) -> str:
    """Seconds -> a Go-style duration as OpenAI sends it (``20ms``, ``1.5s``, ``6m0s``)."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes:
        return f"{int(minutes)}m{text}"
    return text


def _rfc3339_to_duration(value: str, now: float) -> str:
    try:
        instant = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return value
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=timezone.utc)
    return format_duration(instant.timestamp() - now)


def _duration_to_rfc3339(value: str, now: float) -> str:
    seconds = parse_duration(value)
    if seconds is None:
        return value
    try:
        instant = datetime.fromtimestamp(now + seconds, timezone.utc).replace(microsecond=0)
    except (OverflowError, ValueError, OSError):  # past what a datetime holds (the upstream's value)
        return value
    return instant.isoformat().replace("+00:00", "Z")


def add_client_headers(upstream_dialect: str, headers: dict[str, str], now: float | None = None) -> None:
    """Add the client-dialect names of the upstream's rate-limit headers to ``headers``
    (lower-case names), keeping the originals and any name already set."""
    now = time.time() if now is None else now
    if upstream_dialect == ANTHROPIC:
        pairs = [(a, o) for o, a in m.RATELIMIT_HEADERS.items()]
        convert = _rfc3339_to_duration
    else:
        pairs = list(m.RATELIMIT_HEADERS.items())
        convert = _duration_to_rfc3339
    for source, target in pairs:
        value = headers.get(source)
        if value is None or target in headers:
            continue
        headers[target] = convert(value, now) if source.endswith("-reset") or "-reset-" in source else value
