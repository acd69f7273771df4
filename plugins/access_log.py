"""One JSON line per request, written when it ends, to the ``ccproxy.access`` logger (and a file).

The line is written in ``ccproxy_stream_end`` (``trylast``, so the usage plugin's numbers and every
other plugin's state are final) for every outcome: ``completed``, ``client_disconnected``,
``upstream_error`` and ``rejected``. Fields are listed in ``docs/observability.md``.

No header is ever logged, nor a body unless ``log_bodies: true``. Every line, bodies or not, goes
through redaction: anything that looks like a key (``sk-...``, ``Bearer ...``) or equals a
configured provider ``api_key``, a proxy key of the ``auth`` plugin (``plugins.auth.keys``) or a
value listed under ``redact`` becomes ``[REDACTED]``; in bodies the values of keys such as
``api_key``, ``authorization`` or ``password`` do too.

Lines are written out in batches: a line goes out at the end of the event-loop iteration that
produced it, and at most every :data:`FLUSH_INTERVAL` (0.1 s) under load (or once :data:`MAX_PENDING`
lines wait), so a busy worker makes about ten writes a second instead of one per request. Pending
lines are written at shutdown (and at interpreter exit). Outside a running event loop each line is
written at once. When this plugin's own stderr handler is the only listener (:func:`_sole_handler`),
a line reaches it without a ``logging`` record.

A line is made by :meth:`AccessLog.line` as text, field by field, exactly as ``json.dumps`` would
write its fields (:func:`_json`); the names a request carries (route, dialects, key, provider,
models) repeat from request to request, so their part of the line is made once and kept
(:meth:`AccessLog.names`).

Settings (``plugins: access_log: {...}``):

* ``path``: also append each line to this file (opened at start-up, written in batches as above).
* ``log_bodies``: add the client's request body and a non-streamed response body (debugging only).
* ``max_body_chars``: a body longer than this (as JSON text) is logged as a truncated string (65536).
* ``redact``: more literal values to redact (e.g. proxy keys handed to users).
* ``stderr``: when logging is not configured at all (no handler on the logger or the root), print
  the lines on stderr (default true). Configure the ``ccproxy.access`` logger to send them elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any, TextIO

from ccproxy_core import Attempt, Config, ConfigError, PluginSettings, RequestContext, Usage, hookimpl

NAME = "access_log"
logger = logging.getLogger("ccproxy.access")

REDACTED = "[REDACTED]"
#: Body keys whose values are always redacted (compared lower-case, ``-`` as ``_``).
SENSITIVE_KEYS = frozenset(
    {"api_key", "apikey", "x_api_key", "authorization", "proxy_authorization", "password", "secret",
     "client_secret", "access_token", "refresh_token", "id_token", "token", "cookie", "set_cookie"}
)
_KEY_LIKE = (
    r"sk-[A-Za-z0-9][A-Za-z0-9_\-]{6,}",  # Anthropic, OpenAI and most OpenAI-compatible keys
    r"(?i:bearer)\s+[A-Za-z0-9._~+/\-]{8,}=*",
)
_SECRET_HEADER = re.compile(r"(?i)auth|key|token|secret|cookie")
#: Seconds between two writes of the log under load (see the module docstring).
FLUSH_INTERVAL = 0.1
#: Lines waiting for a write past which the batch is written at once (bounds what it holds).
MAX_PENDING = 1024
#: The fields of the part of a line that :meth:`AccessLog.names` keeps, and of an attempt's; of these
#: ``_REDACTED_NAMES`` come from a client, an upstream or a config and are redacted. The other fields
#: that can hold a secret (redacted in :meth:`AccessLog.free`) are ``request_id``,
#: ``upstream_request_id``, ``error`` and ``error_kind``, and an attempt's ``error``; everything else is a
#: number, a flag or one of the proxy's own words (with bodies the whole line is redacted instead).
_NAMES = ("method", "route", "client_dialect", "key", "provider", "upstream_dialect", "model_requested", "model")
_ATTEMPT_NAMES = ("provider", "model")
_REDACTED_NAMES = frozenset({"route", "provider", "model_requested", "model"})
#: Name parts :meth:`AccessLog.names` keeps (model names come from clients: a bound); past it they start over.
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


class _Batch:
    """Lines written together: when the event loop finishes the iteration that produced them, and
    no sooner than :data:`FLUSH_INTERVAL` after the previous write (sooner once :data:`MAX_PENDING`
    wait). Without a running loop, at once. A line is a ``str`` without its newline."""

    __slots__ = ("lines", "write", "due", "handle", "loop", "last")

    def __init__(self, write: Callable[[str], None], due: Callable[[], None] | None = None) -> None:
        self.lines: list[str] = []
        self.write = write  # takes the joined lines, each ending in a newline
        self.due = due or self.flush  # what the timer calls (a handler takes its lock first)
        self.handle: asyncio.Handle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # where ``handle`` is scheduled
        self.last = -math.inf  # loop time of the last write

    def add(self, line: str) -> None:
        self.lines.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if len(self.lines) >= MAX_PENDING:
            self.due()
            return
        if self.handle is not None:
            if self.loop is loop:
                return  # a write is scheduled already
            self.handle.cancel()  # scheduled in a loop that has stopped (e.g. a test's): schedule here
        self.loop = loop
        wait = self.last + FLUSH_INTERVAL - loop.time()
        self.handle = loop.call_later(wait, self.due) if wait > 0 else loop.call_soon(self.due)

    def flush(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.cancel()
        if self.lines:
            lines, self.lines = self.lines, []
            text = "\n".join(lines) + "\n"
            try:
                self.last = asyncio.get_running_loop().time()
            except RuntimeError:
                pass
            self.write(text)


class _StderrLines(logging.StreamHandler):
    """The handler this plugin adds when logging is not configured: the bare JSON line, in batches."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(message)s"))
        self.batch = _Batch(self._write, self.flush)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.batch.add(self.format(record))
        except Exception:
            self.handleError(record)

    def add(self, line: str) -> None:
        """What ``emit`` does with a record whose message is ``line``, without the record."""
        with self.lock:  # type: ignore[union-attr]
            try:
                self.batch.add(line)
            except Exception:
                self.handleError(logging.makeLogRecord({"name": logger.name, "msg": line, "levelno": logging.INFO,
                                                        "levelname": "INFO"}))

    def _write(self, text: str) -> None:
        stream = self.stream
        stream.write(text)
        if hasattr(stream, "flush"):
            stream.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            self.batch.flush()
        finally:
            self.release()


def _sole_handler() -> _StderrLines | None:
    """This plugin's stderr handler when ``logger.info`` would reach it and nothing else (no filter,
    no other handler up the logger tree): then a line needs no ``LogRecord``. Checked per line, as
    logging can be configured at any time."""
    if logger.filters or logger.disabled or not logger.isEnabledFor(logging.INFO):
        return None
    handlers = logger.handlers
    if len(handlers) != 1:
        return None
    handler = handlers[0]
    if handler.__class__ is not _StderrLines or handler.filters or handler.level > logging.INFO:
        return None
    node: logging.Logger | None = logger
    while node is not None and node.propagate:
        node = node.parent
        if node is not None and node.handlers:
            return None
    return handler


@dataclass(slots=True)
class AccessLogSettings:
    """The ``plugins: access_log:`` block (see the module docstring)."""

    path: str | None = None
    log_bodies: bool = False
    max_body_chars: int = 65536
    redact: list[str] = field(default_factory=list)
    stderr: bool = True


class AccessLog:
    """The access log of one app: settings, redaction and the optional file; its hooks."""

    def __init__(self, config: Config, settings: AccessLogSettings) -> None:
        self.path = settings.path or None
        self.log_bodies = settings.log_bodies
        self.stderr = settings.stderr
        self.max_body_chars = settings.max_body_chars
        secrets = [p.api_key for p in config.providers.values() if p.api_key]
        secrets += [
            v for p in config.providers.values() for k, v in p.headers.items() if _SECRET_HEADER.search(k)
        ]
        proxy_keys = config.plugin_settings("auth").get("keys")  # the first-party auth plugin's client keys
        if isinstance(proxy_keys, list):
            secrets += [k for k in proxy_keys if isinstance(k, str)]
        self.redactor = Redactor(secrets + settings.redact)
        self.file: TextIO | None = None
        self.batch = _Batch(self._write)
        self.pid = os.getpid()
        self.name_parts: dict[tuple[Any, ...], str] = {}  # see names

    # -- hooks (this object is the plugin's per-app part) ---------------------------------------

    @hookimpl
    def ccproxy_startup(self) -> None:
        self.pid = os.getpid()  # the worker's own
        if self.path:
            try:
                self.file = open(self.path, "a", encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"plugins.access_log.path: cannot open {self.path!r}: {exc.strerror}") from None
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        if self.stderr and not logger.hasHandlers():
            logger.addHandler(_StderrLines())

    @hookimpl
    def ccproxy_shutdown(self) -> None:
        self.close()
        for handler in logger.handlers:
            if isinstance(handler, _StderrLines):
                handler.flush()

    @hookimpl
    def ccproxy_response_body(self, ctx: RequestContext, body: bytes) -> None:
        """Keep an upstream error's message (and, when debugging, the body) for the line."""
        status = ctx.upstream_status or 0
        if status >= 400:
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
            error = payload.get("error") if isinstance(payload, dict) else None
            if isinstance(error, dict):
                found = (str(error.get("message") or ""), str(error.get("type") or "upstream"))
            else:
                found = (f"upstream answered {status}", "upstream")
            ctx.state.setdefault(NAME, {})["upstream_error"] = found
        if self.log_bodies:
            ctx.state.setdefault(NAME, {})["response_body"] = body

    @hookimpl(trylast=True)
    def ccproxy_stream_end(self, ctx: RequestContext) -> None:
        listening = logger.isEnabledFor(logging.INFO)
        if self.file is None and not listening:
            return
        line = self.line(ctx)
        handler = _sole_handler() if listening else None
        if handler is not None:
            handler.add(line)
        elif listening:
            logger.info(line)
        if self.file is not None:
            self.batch.add(line)

    # -- the file and the line -----------------------------------------------------------------

    def _write(self, text: str) -> None:
        if self.file is not None:
            self.file.write(text)
            self.file.flush()

    def close(self) -> None:
        self.batch.flush()
        if self.file is not None:
            self.file.close()
            self.file = None

    def body(self, value: Any) -> Any:
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

    def line(self, ctx: RequestContext) -> str:
        """The request's line: its fields (docs/observability.md) as ``json.dumps`` writes them, redacted."""
        mine = ctx.state.get(NAME) or {}
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
        attempts = ctx.attempts
        free = self.free
        line = (
            f'{{"time":"{_iso(ctx.started_at)}","pid":{self.pid},"request_id":{free(ctx.request_id)},'
            f'"upstream_request_id":{free(headers.get("request-id") or headers.get("x-request-id"))},'
            f'{self.names(ctx)},"stream":{_json(ctx.stream)},"status":{_json(ctx.status)},'
            f'"upstream_status":{_json(ctx.upstream_status)},"outcome":{_json(ctx.outcome)},'
            f'"t_upstream_headers_ms":{_json(_ms(ctx.t_upstream_headers))},'
            f'"t_first_byte_ms":{_json(_ms(ctx.t_first_byte))},"duration_ms":{_json(_ms(ctx.duration))},'
            f'"bytes_sent":{_json(ctx.bytes_sent)},"events_sent":{_json(ctx.events_sent)},'
            f'"usage":{_usage(ctx.usage)},'
            f'"usage_partial":{_json(ctx.usage_partial)},"cost_usd":{_json(ctx.cost)},'
            f'"attempts":[{",".join([self.attempt(a) for a in attempts])}],'
            f'"fallback":{"true" if len(attempts) > 1 else "false"},"error":{free(message)},"error_kind":{free(kind)}}}'
        )
        if not self.log_bodies:
            return line
        # Bodies hold text anywhere: the whole line is redacted as JSON text.
        request_body, response_body = self.body(ctx.body), self.body(mine.get("response_body"))
        return self.redactor.text(f'{line[:-1]},"request_body":{_json(request_body)},"response_body":{_json(response_body)}}}')

    def free(self, value: Any) -> str:
        """A field that can hold a secret, redacted (with bodies, the whole line is), as JSON."""
        if value.__class__ is str and not self.log_bodies and self.redactor.raw.search(value):
            value = self.redactor.value(value)
        return _json(value)

    def names(self, ctx: RequestContext) -> str:
        """The fields ``method`` to ``model`` (:data:`_NAMES`) of the line: made once per set of values
        (:data:`MAX_NAME_PARTS` sets), as they repeat."""
        values = (ctx.method, ctx.route, ctx.client_dialect, ctx.client_key, ctx.provider, ctx.upstream_dialect,
                  ctx.model_requested, ctx.model)
        try:
            return self.name_parts[values]
        except (KeyError, TypeError):  # new, or a value that is no text and cannot be kept
            return self.name_part(_NAMES, values)

    def attempt(self, attempt: Attempt) -> str:
        """One attempt of the line's ``attempts``."""
        values = (attempt.provider, attempt.model)
        try:
            names = self.name_parts[values]
        except (KeyError, TypeError):
            names = self.name_part(_ATTEMPT_NAMES, values)
        return (f'{{{names},"status":{_json(attempt.status)},"error":{self.free(attempt.error)},'
                f'"error_kind":{_json(attempt.error_kind)},"elapsed_ms":{_json(_ms(attempt.elapsed))}}}')

    def name_part(self, keys: tuple[str, ...], values: tuple[Any, ...]) -> str:
        """``"key":value,...`` of ``keys`` and ``values``, redacted; kept when the values are text or None
        (a value equal to a kept one is then the same text: no number or flag passes for another)."""
        part = ",".join(
            f'"{key}":{self.free(value) if key in _REDACTED_NAMES else _json(value)}'
            for key, value in zip(keys, values)
        )
        if all(value is None or value.__class__ is str for value in values):
            if len(self.name_parts) >= MAX_NAME_PARTS:
                self.name_parts.clear()
            self.name_parts[values] = part
        return part


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def _iso(timestamp: float) -> str:
    """``datetime.fromtimestamp(timestamp, timezone.utc)`` in ISO 8601 with milliseconds and ``Z``.

    The date and time of day are formatted once per second; the microseconds are rounded
    half-even as ``datetime`` does, then cut to milliseconds as ``isoformat`` does.
    """
    frac, whole = math.modf(timestamp)
    seconds = int(whole)
    micros = round(frac * 1e6)
    if micros >= 1_000_000:
        seconds += 1
        micros -= 1_000_000
    if micros < 0:  # before 1970
        return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if _second[0] != seconds:
        _second[1] = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _second[0] = seconds
    return f"{_second[1]}.{micros // 1000:03d}Z"


@hookimpl
def ccproxy_configure(config: Config, settings: PluginSettings) -> AccessLog:
    """Check ``plugins: access_log:`` while the app is built, the file's path included; the app's
    log is what it returns."""
    loaded = settings.load(AccessLogSettings)
    if loaded.path:
        try:
            open(loaded.path, "a", encoding="utf-8").close()
        except OSError as exc:
            raise settings.error("path", f"cannot open {loaded.path!r}: {exc.strerror}") from None
    return AccessLog(config, loaded)
