"""The access log's line: a request's fields as one JSON line, redacted (the ``access_log`` plugin writes it).

A line is made by :meth:`Lines.line` as text, field by field, exactly as ``json.dumps`` writes its
fields (:func:`_json`); the names a request carries (route, dialects, key, provider, models) and its
stream flag, statuses and outcome repeat from request to request, so their part of the line is made
once and kept (:meth:`Lines.names`), and so is an attempt's part without its time. Only the
fields that come from a client, an upstream or a config are redacted; with bodies, the whole line is.
A text of letters and digits, or an identifier (most request ids), needs no redaction regex
(:attr:`Redactor.plain`). The usual line (one attempt, no error, no bodies, plain numbers) is made in
fewer steps: its times and counts in one format, the rest from kept parts.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from datetime import datetime, timezone
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from ccproxy_core import Attempt, RequestContext, Usage

REDACTED = "[REDACTED]"
#: Body keys whose values are always redacted (compared lower-case, ``-`` as ``_``).
SENSITIVE_KEYS = frozenset(
    {"api_key", "apikey", "x_api_key", "authorization", "proxy_authorization", "password", "secret",
     "client_secret", "access_token", "refresh_token", "id_token", "token", "cookie", "set_cookie"}
)
#: Each alternative of the redaction patterns starts with a literal character (hence "bearer" in any case
#: as "b" or "B", then the rest in any case), so the regex engine looks for a match only where one of those
#: characters is, instead of trying every alternative at every position of the text.
_KEY_LIKE = (
    r"sk-[A-Za-z0-9][A-Za-z0-9_\-]{6,}",  # Anthropic, OpenAI and most OpenAI-compatible keys
    r"b(?i:earer)\s+[A-Za-z0-9._~+/\-]{8,}=*",
    r"B(?i:earer)\s+[A-Za-z0-9._~+/\-]{8,}=*",
)
#: The fields of the part of a line that :meth:`Lines.names` keeps, and of an attempt's; of these
#: ``_REDACTED_NAMES`` come from a client, an upstream or a config and are redacted. The other fields
#: that can hold a secret (redacted in :meth:`Lines.free`) are ``request_id``,
#: ``upstream_request_id``, ``error`` and ``error_kind``, and an attempt's ``error``; everything else is a
#: number, a flag or one of the proxy's own words (with bodies the whole line is redacted instead).
_NAMES = ("method", "route", "client_dialect", "key", "provider", "upstream_dialect", "model_requested", "model",
          "stream", "status", "upstream_status", "outcome")
_ATTEMPT_NAMES = ("provider", "model", "status", "error", "error_kind")
_REDACTED_NAMES = frozenset({"route", "provider", "model_requested", "model", "error"})
#: Classes of a kept part's number fields (statuses): never a flag or a float, which equal an int as a key.
_STATUS = (int, type(None))
#: Name parts :meth:`Lines.names` keeps (model names come from clients: a bound); past it they start over.
MAX_NAME_PARTS = 4096

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def _encoder() -> Callable[[Any], str]:
    """``_ENCODER.encode``, with the C encoder made once instead of per call and no check for cycles
    (a line's values are trees)."""
    if c_make_encoder is None:  # pragma: no cover (CPython has it)
        return _ENCODER.encode
    chunks = c_make_encoder(None, _ENCODER.default, encode_basestring, None, ":", ",", False, False, True)
    return lambda value: "".join(chunks(value, 0))


_encode = _encoder()


_isfinite = math.isfinite
#: The usual line's times and counts (see :meth:`Lines.line`); ``"%.1f"`` as in :func:`_ms`.
_TIMES = '"t_upstream_headers_ms":%.1f,"t_first_byte_ms":%.1f,"duration_ms":%.1f,"bytes_sent":%d,"events_sent":%d,"usage":'
#: The time's milliseconds as :func:`_iso` writes them.
_MILLIS = tuple("%03d" % n for n in range(1000))
_USAGE = '{"input_tokens":%d,"output_tokens":%d,"cache_read_input_tokens":%d,"cache_creation_input_tokens":%d}'


def _usage(usage: Usage | None) -> str:
    """``usage.as_dict()`` as ``_ENCODER`` writes it."""
    if usage is None:
        return "null"
    counts = (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens)
    if int is counts[0].__class__ is counts[1].__class__ is counts[2].__class__ is counts[3].__class__:
        return _USAGE % counts
    return _encode(usage.as_dict())


def _json(value: Any) -> str:
    """``value`` as ``_ENCODER`` writes it inside a line (the usual types without the encoder's set-up)."""
    cls = value.__class__
    if cls is str:
        return encode_basestring(value)
    if value is None:
        return "null"
    if cls is int:
        return int.__repr__(value)
    if cls is bool:
        return "true" if value else "false"
    if cls is float and _isfinite(value):
        return float.__repr__(value)
    return _encode(value)  # NaN, infinities, containers, anything else


class Redactor:
    """Replaces key-like strings and configured secrets in JSON text (the result stays valid JSON),
    or in a plain string (:meth:`value`)."""

    def __init__(self, secrets: list[str]) -> None:
        literal = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)
        #: A text of letters and digits (``isalnum``), or an identifier's characters (``isidentifier``:
        #: letters, digits, ``_``), holds no key-like string (each has ``-`` or a space): nor a secret,
        #: when no secret is such a text itself. Such a text is its own JSON string, quoted.
        self.plain = not any(s.isalnum() or f"a{s}".isidentifier() for s in literal)
        # Secrets are matched as they appear inside a JSON string (escaped).
        parts = [re.escape(json.dumps(s, ensure_ascii=False)[1:-1]) for s in literal] + list(_KEY_LIKE)
        self.pattern = re.compile("|".join(parts))
        # ... and as they are, in a string not yet encoded.
        self.raw = re.compile("|".join([re.escape(s) for s in literal] + list(_KEY_LIKE)))

    def text(self, value: str) -> str:
        return self.pattern.sub(REDACTED, value)

    def value(self, value: str) -> str:
        return self.raw.sub(REDACTED, value)


def _redact_keys(value: Any) -> Any:
    """A copy of a JSON value with the values of sensitive keys replaced."""
    if isinstance(value, dict):
        return {
            k: (REDACTED if str(k).lower().replace("-", "_") in SENSITIVE_KEYS else _redact_keys(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact_keys(v) for v in value]
    return value


class Lines:
    """How one app's access log makes its lines: its redaction, bodies or not, and the name parts it keeps."""

    def __init__(self, redactor: Redactor, log_bodies: bool = False, max_body_chars: int = 65536) -> None:
        self.redactor = redactor
        self.log_bodies = log_bodies
        self.max_body_chars = max_body_chars
        self.pid = os.getpid()  # the worker's own: set again at start-up
        self.name_parts: dict[tuple[Any, ...], str] = {}  # see names

    def body(self, value: Any) -> Any:
        """A body as the line holds it: parsed JSON with sensitive keys redacted, or text; cut to ``max_body_chars``."""
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray)):
            text = bytes(value).decode("utf-8", "replace")
            try:
                value = json.loads(text)
            except ValueError:
                return text[: self.max_body_chars]
        try:
            value = _redact_keys(value)
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        except RecursionError:  # parsed, but nested too deeply to walk again here
            return "[body nested too deeply to log]"
        if len(text) <= self.max_body_chars:
            return value
        return text[: self.max_body_chars] + f"...[truncated {len(text) - self.max_body_chars} chars]"

    def fields(self, ctx: RequestContext, mine: dict[str, Any]) -> tuple[Any, ...]:
        """What the line needs of ``ctx`` (and of ``mine``, the plugin's ``ctx.state`` entry): small values
        (the bodies' part of the line, when they are logged), after this object, which makes the line
        (``fields[0].line(fields)``)."""
        error = ctx.error
        if error is not None:
            message, kind = error.message, error.kind
        elif mine.get("upstream_error") is not None:
            message, kind = mine["upstream_error"]
        elif ctx.inband_error is not None:
            message, kind = ctx.inband_error, "in_band"
        else:
            message = kind = None
        headers = ctx.response_headers
        bodies = None
        if self.log_bodies:
            request, response = self.body(ctx.body), self.body(mine.get("response_body"))
            bodies = f',"request_body":{_json(request)},"response_body":{_json(response)}'
        return (
            self, ctx.started_at, ctx.request_id, headers.get("request-id") or headers.get("x-request-id"),
            (ctx.method, ctx.route, ctx.client_dialect, ctx.client_key, ctx.provider, ctx.upstream_dialect,
             ctx.model_requested, ctx.model, ctx.stream, ctx.status, ctx.upstream_status, ctx.outcome),
            ctx.t_upstream_headers, ctx.t_first_byte,
            ctx.duration, ctx.bytes_sent, ctx.events_sent, ctx.usage, ctx.usage_partial, ctx.cost, ctx.attempts,
            message, kind, bodies,
        )

    def line(self, fields: tuple[Any, ...]) -> str:
        """The request's line from its :meth:`fields`: as ``json.dumps`` writes them, redacted."""
        (_, started_at, request_id, upstream_request_id, names, t_upstream_headers, t_first_byte, duration,
         bytes_sent, events_sent, usage, usage_partial, cost, attempts, message, kind, bodies) = fields
        free = self.free
        if message is None and kind is None and bodies is None and len(attempts) == 1:
            # The usual line, with fewer steps: the time's second already made, floats for times, ints for
            # counts, one attempt without an error whose part is kept.
            attempt = attempts[0]
            elapsed = attempt.elapsed
            seconds = int(started_at)
            millis = round((started_at - seconds) * 1e6) // 1000  # as _iso: 0..999 unless a second is carried
            if (_second[0] == seconds and 0 <= millis < 1000 and attempt.error is None
                    and t_upstream_headers.__class__ is t_first_byte.__class__ is duration.__class__ is elapsed.__class__
                    is float and bytes_sent.__class__ is events_sent.__class__ is int and usage_partial.__class__ is bool
                    and attempt.status.__class__ in _STATUS):
                part = self.name_parts.get((attempt.provider, attempt.model, attempt.status, None, attempt.error_kind))
                headers_ms, first_byte_ms = t_upstream_headers * 1000, t_first_byte * 1000
                duration_ms, elapsed_ms = duration * 1000, elapsed * 1000
                if (part is not None and -1e13 < headers_ms < 1e13 and -1e13 < first_byte_ms < 1e13
                        and -1e13 < duration_ms < 1e13 and -1e13 < elapsed_ms < 1e13):  # "%.1f" writes what _ms does
                    return (
                        f'{{"time":"{_second[1]}.{_MILLIS[millis]}Z","pid":{self.pid},"request_id":{free(request_id)},'
                        f'"upstream_request_id":{free(upstream_request_id)},{self.names(names)},'
                        f'{_TIMES % (headers_ms, first_byte_ms, duration_ms, bytes_sent, events_sent)}'
                        f'{"null" if usage is None else _usage(usage)},"usage_partial":{"true" if usage_partial else "false"},'
                        f'"cost_usd":{"null" if cost is None else _json(cost)},"attempts":[{{{part},"elapsed_ms":'
                        f'{"%.1f" % elapsed_ms}}}],"fallback":false,"error":null,"error_kind":null}}'
                    )
        attempt = self.attempt
        line = (
            f'{{"time":"{_iso(started_at)}","pid":{self.pid},"request_id":{free(request_id)},'
            f'"upstream_request_id":{free(upstream_request_id)},{self.names(names)},'
            f'"t_upstream_headers_ms":{_ms(t_upstream_headers)},"t_first_byte_ms":{_ms(t_first_byte)},'
            f'"duration_ms":{_ms(duration)},"bytes_sent":{_json(bytes_sent)},"events_sent":{_json(events_sent)},'
            f'"usage":{_usage(usage)},"usage_partial":{_json(usage_partial)},"cost_usd":{_json(cost)},'
            f'"attempts":[{attempt(attempts[0]) if len(attempts) == 1 else ",".join([attempt(a) for a in attempts])}],'
            f'"fallback":{"true" if len(attempts) > 1 else "false"},'
        )
        if message is None and kind is None:  # the usual line
            line += '"error":null,"error_kind":null'
        else:
            line += f'"error":{free(message)},"error_kind":{free(kind)}'

        if bodies is None:
            return line + "}"
        return self.redactor.text(f"{line}{bodies}}}")  # bodies hold text anywhere: the whole line, as JSON text

    def free(self, value: Any) -> str:
        """A field that can hold a secret, redacted (with bodies, the whole line is), as JSON."""
        if value.__class__ is not str:
            return _json(value)
        if self.redactor.plain and (value.isalnum() or value.isidentifier()):
            return f'"{value}"'
        if not self.log_bodies and self.redactor.raw.search(value):
            value = self.redactor.value(value)
        return encode_basestring(value)

    def names(self, values: tuple[Any, ...]) -> str:
        """The fields ``method`` to ``outcome`` (:data:`_NAMES`) of the line: made once per set of values
        (:data:`MAX_NAME_PARTS` sets), as they repeat."""
        if values[8].__class__ is bool and values[9].__class__ in _STATUS and values[10].__class__ in _STATUS:
            try:
                return self.name_parts[values]
            except KeyError:
                return self.name_part(_NAMES, values, _texts(values[:8]) and _texts(values[11:]))
            except TypeError:  # a value that cannot be a key
                pass
        return self.name_part(_NAMES, values, False)

    def attempt(self, attempt: Attempt) -> str:
        """One attempt of the line's ``attempts``; its part without the time kept as :meth:`names` does
        (not with an error: that is free text)."""
        values = (attempt.provider, attempt.model, attempt.status, attempt.error, attempt.error_kind)
        if values[3] is None and values[2].__class__ in _STATUS:
            try:
                part = self.name_parts[values]
            except KeyError:
                part = self.name_part(_ATTEMPT_NAMES, values, _texts(values[:2]) and _texts(values[4:]))
            except TypeError:
                part = self.name_part(_ATTEMPT_NAMES, values, False)
        else:
            part = self.name_part(_ATTEMPT_NAMES, values, False)
        return f'{{{part},"elapsed_ms":{_ms(attempt.elapsed)}}}'

    def name_part(self, keys: tuple[str, ...], values: tuple[Any, ...], keep: bool) -> str:
        """``"key":value,...`` of ``keys`` and ``values``, redacted; kept when ``keep``: the caller checked that
        each value is text or None, or at a number's place a flag or a status (:data:`_STATUS`), always the
        same class there (a value equal to a kept one is then the same text: no number or flag passes for
        another)."""
        part = ",".join(
            f'"{key}":{self.free(value) if key in _REDACTED_NAMES else _json(value)}'
            for key, value in zip(keys, values)
        )
        if keep:
            if len(self.name_parts) >= MAX_NAME_PARTS:
                self.name_parts.clear()
            self.name_parts[values] = part
        return part


def _texts(values: tuple[Any, ...]) -> bool:
    """Every value is text (a ``str``, no subclass) or None."""
    return all(value is None or value.__class__ is str for value in values)


def _ms(seconds: float | None) -> str:
    """Seconds as the line's milliseconds, ``round(seconds * 1000, 1)``, in JSON.

    Below 10**13 ms, ``"%.1f"`` writes what ``repr`` writes of that rounded float (both round the
    exact binary value half to even, and 15 significant digits survive a float), in one step.
    """
    if seconds.__class__ is float:
        ms = seconds * 1000
        if -1e13 < ms < 1e13:  # (and not NaN)
            return "%.1f" % ms
    if seconds is None:
        return "null"
    ms = round(seconds * 1000, 1)
    return float.__repr__(ms) if ms.__class__ is float and _isfinite(ms) else _json(ms)


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def _iso(timestamp: float) -> str:
    """``datetime.fromtimestamp(timestamp, timezone.utc)`` in ISO 8601 with milliseconds and ``Z``.

    The date and time of day are formatted once per second; the microseconds are rounded
    half-even as ``datetime`` does, then cut to milliseconds as ``isoformat`` does.
    """
    seconds = int(timestamp)  # toward zero, as math.modf: the difference is exact
    micros = round((timestamp - seconds) * 1e6)
    if micros >= 1_000_000:
        seconds += 1
        micros -= 1_000_000
    if micros < 0:  # before 1970
        return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if _second[0] != seconds:
        _second[1] = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _second[0] = seconds
    return "%s.%03dZ" % (_second[1], micros // 1000)
