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
a line reaches it without a ``logging`` record. A line bound for one batch only (that handler's or
the file's) waits as the request's fields (:meth:`Lines.fields`) until the batch is written, then is
made (:mod:`.access_line`): off the request's path, and all the batch's lines in one go, which costs
less CPU than one at a time between requests. A line bound for a logging handler, or for both
batches, is made at once (once).

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
from typing import Any, TextIO

from ccproxy_core import Config, ConfigError, PluginSettings, RequestContext, hookimpl

from .access_line import Lines, Redactor

NAME = "access_log"
logger = logging.getLogger("ccproxy.access")

_SECRET_HEADER = re.compile(r"(?i)auth|key|token|secret|cookie")
#: Seconds between two writes of the log under load (see the module docstring).
FLUSH_INTERVAL = 0.1
#: Lines waiting for a write past which the batch is written at once (bounds what it holds).
MAX_PENDING = 1024
class _Batch:
    """Lines written together: when the event loop finishes the iteration that produced them, and
    no sooner than :data:`FLUSH_INTERVAL` after the previous write (sooner once :data:`MAX_PENDING`
    wait). Without a running loop, at once. A line is a ``str`` without its newline, or a request's
    :meth:`Lines.fields`, made into its line when the batch is written."""

    __slots__ = ("lines", "write", "due", "handle", "loop", "last")

    def __init__(self, write: Callable[[str], None], due: Callable[[], None] | None = None) -> None:
        self.lines: list[str | tuple[Any, ...]] = []
        self.write = write  # takes the joined lines, each ending in a newline
        self.due = due or self.flush  # what the timer calls (a handler takes its lock first)
        self.handle: asyncio.Handle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # where ``handle`` is scheduled
        self.last = -math.inf  # loop time of the last write

    def add(self, line: str | tuple[Any, ...]) -> None:
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
            text = "\n".join([line if line.__class__ is str else line[0].line(line) for line in lines]) + "\n"
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

    def add(self, line: str | tuple[Any, ...]) -> None:
        """What ``emit`` does with a record whose message is ``line``, without the record."""
        with self.lock:  # type: ignore[union-attr]
            try:
                self.batch.add(line)
            except Exception:
                text = line if line.__class__ is str else line[0].line(line)  # type: ignore[union-attr]
                self.handleError(logging.makeLogRecord({"name": logger.name, "msg": text, "levelno": logging.INFO,
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
    """This plugin's stderr handler when ``logger.info``, which the caller found enabled, would reach it
    and nothing else (no filter, no other handler up the logger tree): then a line needs no
    ``LogRecord``. Checked per line, as logging can be configured at any time."""
    if logger.filters or logger.disabled:
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
    """The access log of one app: how its lines are made (:class:`Lines`), where they go (the optional
file); its hooks."""

    def __init__(self, config: Config, settings: AccessLogSettings) -> None:
        self.path = settings.path or None
        self.stderr = settings.stderr
        secrets = [p.api_key for p in config.providers.values() if p.api_key]
        secrets += [
            v for p in config.providers.values() for k, v in p.headers.items() if _SECRET_HEADER.search(k)
        ]
        auth = config.plugin_settings("auth")  # the first-party auth plugin's client and admin keys
        for item in [*(auth.get("keys") or []), *(auth.get("admin_keys") or [])]:
            key = item.get("key") if isinstance(item, dict) else item  # a key with limits is a mapping
            if isinstance(key, str):
                secrets.append(key)
        self.lines = Lines(Redactor(secrets + settings.redact), settings.log_bodies, settings.max_body_chars)
        self.file: TextIO | None = None
        self.batch = _Batch(self._write)

    # -- hooks (this object is the plugin's per-app part) ---------------------------------------

    @hookimpl
    def ccproxy_startup(self) -> None:
        self.lines.pid = os.getpid()  # the worker's own
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
        if self.lines.log_bodies:
            ctx.state.setdefault(NAME, {})["response_body"] = body

    @hookimpl(trylast=True)
    def ccproxy_stream_end(self, ctx: RequestContext) -> None:
        listening = logger.isEnabledFor(logging.INFO)
        if self.file is None and not listening:
            return
        # The line is made when its batch is written (off the request's path, all together), but at once for a
        # logging handler, or to be made once for both the file and the plugin's stderr handler.
        line: str | tuple[Any, ...] = self.lines.fields(ctx, ctx.state.get(NAME) or {})
        handler = _sole_handler() if listening else None
        if listening and (handler is None or self.file is not None):
            line = self.lines.line(line)  # type: ignore[arg-type]
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
