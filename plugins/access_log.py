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
a line reaches it without a ``logging`` record, and its fields are kept as they are when the request
ends and turned into JSON (redacted) when the batch is written: off the request's path, and all
the batch's lines in one go, which costs less CPU than one at a time between requests.

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
from typing import Any, TextIO

from ccproxy_core import Config, ConfigError, PluginSettings, RequestContext, hookimpl

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
#: The record's fields whose text comes from a client, an upstream or a config (everything else is a
#: number, a flag or one of the proxy's own words): only these can hold a secret, so only these are
#: redacted when bodies are not logged.
_FREE_TEXT = ("request_id", "upstream_request_id", "route", "provider", "model_requested", "model", "error",
              "error_kind")
_ATTEMPT_FREE_TEXT = ("provider", "model", "error")
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


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


class _Pending:
    """A line whose JSON is made when its batch is written: a request's fields (:meth:`AccessLog.record`)."""

    __slots__ = ("log", "record", "text")

    def __init__(self, log: AccessLog, record: dict[str, Any]) -> None:
        self.log = log
        self.record: dict[str, Any] | None = record
        self.text: str | None = None

    def __str__(self) -> str:
        if self.text is None:  # made once, for every sink the line goes to
            self.text, self.record = self.log.line(self.record), None  # type: ignore[arg-type]
        return self.text


class _Batch:
    """Lines written together: when the event loop finishes the iteration that produced them, and
    no sooner than :data:`FLUSH_INTERVAL` after the previous write (sooner once :data:`MAX_PENDING`
    wait). Without a running loop, at once. A line is a ``str`` or a :class:`_Pending`, without its newline."""

    __slots__ = ("lines", "write", "due", "handle", "loop", "last")

    def __init__(self, write: Callable[[str], None], due: Callable[[], None] | None = None) -> None:
        self.lines: list[str] = []
        self.write = write  # takes the joined lines, each ending in a newline
        self.due = due or self.flush  # what the timer calls (a handler takes its lock first)
        self.handle: asyncio.Handle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # where ``handle`` is scheduled
        self.last = -math.inf  # loop time of the last write

    def add(self, line: str | _Pending) -> None:
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
            text = "\n".join([line if line.__class__ is str else str(line) for line in lines]) + "\n"
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

    def add(self, line: str | _Pending) -> None:
        """What ``emit`` does with a record whose message is ``line``, without the record."""
        with self.lock:  # type: ignore[union-attr]
            try:
                self.batch.add(line)
            except Exception:
                self.handleError(logging.makeLogRecord({"name": logger.name, "msg": str(line), "levelno": logging.INFO,
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
        record = self.record(ctx)
        handler = _sole_handler() if listening else None
        if listening and handler is None:  # a logging handler formats the line at once
            line: str | _Pending = self.line(record)
            logger.info(line)
        else:  # with bodies, the line is made now, so that the batch holds text, not parsed bodies
            line = self.line(record) if self.log_bodies else _Pending(self, record)
            if handler is not None:
                handler.add(line)
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

    def line(self, record: dict[str, Any]) -> str:
        """``record`` (:meth:`record`) as the JSON line, redacted. Changes ``record``."""
        if self.log_bodies:
            # Bodies hold text anywhere: redact the whole line as JSON text.
            return self.redactor.text(_ENCODER.encode(record))
        # Otherwise only the free-text fields can hold a secret; they are short, and usually clean.
        search = self.redactor.raw.search
        redact = self.redactor.value
        for key in _FREE_TEXT:
            value = record[key]
            if value.__class__ is str and search(value):
                record[key] = redact(value)
        for attempt in record["attempts"]:
            for key in _ATTEMPT_FREE_TEXT:
                value = attempt[key]
                if value.__class__ is str and search(value):
                    attempt[key] = redact(value)
        return _ENCODER.encode(record)

    def record(self, ctx: RequestContext) -> dict[str, Any]:
        state = ctx.state
        mine = state.get(NAME) or {}
        headers = ctx.response_headers
        error = ctx.error
        if error is not None:
            message, kind = error.message, error.kind
        elif mine.get("upstream_error") is not None:
            message, kind = mine["upstream_error"]
        elif ctx.inband_error is not None:
            message, kind = ctx.inband_error, "in_band"
        else:
            message = kind = None
        usage = ctx.usage
        record: dict[str, Any] = {
            "time": _iso(ctx.started_at),
            "pid": self.pid,
            "request_id": ctx.request_id,
            "upstream_request_id": headers.get("request-id") or headers.get("x-request-id"),
            "method": ctx.method,
            "route": ctx.route,
            "client_dialect": ctx.client_dialect,
            "key": ctx.client_key,
            "provider": ctx.provider,
            "upstream_dialect": ctx.upstream_dialect,
            "model_requested": ctx.model_requested,
            "model": ctx.model,
            "stream": ctx.stream,
            "status": ctx.status,
            "upstream_status": ctx.upstream_status,
            "outcome": ctx.outcome,
            "t_upstream_headers_ms": _ms(ctx.t_upstream_headers),
            "t_first_byte_ms": _ms(ctx.t_first_byte),
            "duration_ms": _ms(ctx.duration),
            "bytes_sent": ctx.bytes_sent,
            "events_sent": ctx.events_sent,
            "usage": usage.as_dict() if usage is not None else None,
            "usage_partial": ctx.usage_partial,
            "cost_usd": ctx.cost,
            "attempts": [
                {
                    "provider": a.provider,
                    "model": a.model,
                    "status": a.status,
                    "error": a.error,
                    "error_kind": a.error_kind,
                    "elapsed_ms": _ms(a.elapsed),
                }
                for a in ctx.attempts
            ],
            "fallback": len(ctx.attempts) > 1,
            "error": message,
            "error_kind": kind,
        }
        if self.log_bodies:
            record["request_body"] = self.body(ctx.body)
            record["response_body"] = self.body(mine.get("response_body"))
        return record


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
