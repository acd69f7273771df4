"""How a client request comes in: the head's and body's deadlines, the head hooks, the bounded body, the parse.

The order on a proxy route (the routes are Sanic ``stream=True`` routes, so Sanic reads no body
by itself):

1. the head arrives within ``limits.head_timeout`` of its first byte (:class:`DeadlineProtocol`),
   parsed by :class:`~.request_head.ClientHttp` (Sanic's checks, less work);
2. ``ccproxy_request_head`` runs on the head alone: the ``auth`` plugin refuses a request
   without a key here, before a byte of its body is read;
3. :meth:`Intake.receive` reads the body: over ``limits.max_body_bytes`` is a 413, past the
   worker's ``limits.max_inflight_body_bytes`` a 503, both decided from ``content-length``
   before reading (and counted as the bytes arrive for a chunked body); the whole body must
   arrive within ``limits.body_timeout`` of the head (a 408);
4. :func:`parse_body` checks what routing needs and notes where each top-level value lies;
   :func:`with_members` later renames an alias's model in the client's bytes at that place
   (:func:`with_model`, the public helper, walks to it).
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import re
from collections.abc import Iterator
from json.decoder import scanstring
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any

from sanic.http import Stage
from sanic.server.protocols.http_protocol import HttpProtocol

from .config import Limits
from .errors import InvalidRequest, Overloaded, PayloadTooLarge, RequestTimeout
from .request_head import ClientHttp

if TYPE_CHECKING:  # pragma: no cover
    from sanic import Request

    from .config import Config
    from .context import RequestContext
    from .plugins import Plugins

log = logging.getLogger("ccproxy")


class Intake:
    """Receives the bodies of one worker's proxy-route requests within the configured bounds."""

    def __init__(self, config: Config, plugins: Plugins) -> None:
        self.limits = config.limits
        self.plugins = plugins
        self._head_hooks = plugins.implemented("ccproxy_request_head")
        #: Bytes reserved by the bodies this worker is receiving now.
        self.inflight = 0

    async def receive(self, request: Request, ctx: RequestContext) -> None:
        """Run ``ccproxy_request_head``, then read the body into ``request.body``.

        Raises:
            ProxyError: a head hook's refusal (e.g. 401), 413 for a body over
                ``max_body_bytes``, 503 when the worker's in-flight bodies would pass
                ``max_inflight_body_bytes``, 408 when the body is late.
        """
        if self._head_hooks:
            pending = self.plugins.run("ccproxy_request_head", ctx=ctx, request=request)
            if pending is not None:
                await pending
        stream = request.stream
        if stream is not None and stream.request_body:
            request.body = await self._read(stream)

    async def _read(self, stream: Any) -> bytes:
        limits = self.limits
        chunked = stream.request_body == "chunked"
        reserved = 0 if chunked else stream.request_bytes  # content-length
        if reserved > limits.max_body_bytes:
            raise self._too_large()
        self._reserve(reserved)
        chunks: list[bytes] = []
        received = 0
        try:
            while (data := await stream.read()) is not None:
                received += len(data)
                if received > reserved:  # chunked: count the bytes as they come
                    if received > limits.max_body_bytes:
                        raise self._too_large()
                    self._reserve(received - reserved)
                    reserved = received
                chunks.append(data)
        except asyncio.CancelledError:
            # DeadlineProtocol cancels the connection's task at the body's deadline and leaves
            # its error on the stream: turn that cancellation (only) into the error.
            error = stream.exception
            if isinstance(error, RequestTimeout) and asyncio.current_task().uncancel() == 0:  # type: ignore[union-attr]
                stream.exception = None
                raise error from None
            raise
        finally:
            self.inflight -= reserved
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _reserve(self, size: int) -> None:
        limit = self.limits.max_inflight_body_bytes
        if self.inflight + size > limit:
            raise Overloaded(
                f"the proxy is receiving too many request bodies at once (limits.max_inflight_body_bytes, "
                f"{limit} bytes); retry shortly",
                headers={"retry-after": str(self.limits.overload_retry_after)},
            )
        self.inflight += size

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body is larger than the configured limit of {self.limits.max_body_bytes} bytes "
            "(limits.max_body_bytes)"
        )


class DeadlineProtocol(HttpProtocol):
    """Sanic's HTTP/1.1 protocol, with deadlines instead of idle timers for what the client sends,
    and :class:`~.request_head.ClientHttp` for the connection.

    * The request head must be complete ``limits.head_timeout`` seconds after its first byte:
      a 408 in the dialect of the request line's path, or, when not even the request line
      arrived, the connection is closed without an answer.
    * The body must be complete ``limits.body_timeout`` seconds after the head: a 408 in the
      dialect (the proxy routes raise it through :meth:`Intake.receive`, so it is logged like
      any refusal); a body still arriving after the response (Sanic reads and discards what a
      handler left) is cut by closing the connection.
    * ``KEEP_ALIVE_TIMEOUT`` stays an idle timer between requests. Sanic's ``REQUEST_TIMEOUT``
      and ``RESPONSE_TIMEOUT`` are not used: the core's own timeouts govern upstream waits.

    The checks run every :attr:`check_every` seconds (at most 1 s) while a request is being
    received, so a deadline is enforced within that much of its time; an idle connection is
    checked every :attr:`idle_every` seconds (a quarter of the shortest of the two deadlines and
    the keep-alive timeout), still often enough to start the checks of a request that begins
    well before its deadlines.
    """

    __slots__ = ("head_timeout", "body_timeout", "check_every", "idle_every", "buffer_size")
    HTTP_CLASS = ClientHttp

    def _setup(self) -> None:
        super()._setup()
        config = getattr(self.app.ctx, "config", None)
        limits = config.limits if config is not None else Limits()
        self.buffer_size = self.app.config.REQUEST_BUFFER_SIZE
        self.head_timeout = limits.head_timeout
        self.body_timeout = limits.body_timeout
        self.check_every = max(0.1, min(1.0, self.head_timeout / 4, self.body_timeout / 4, self.keep_alive_timeout / 4))
        self.idle_every = max(self.check_every, min(self.head_timeout, self.body_timeout, self.keep_alive_timeout) / 4)

    def data_received(self, data: bytes) -> None:
        """``HttpProtocol.data_received`` with ``REQUEST_BUFFER_SIZE`` read once per connection (each
        read of a Sanic config attribute raises and catches an AttributeError), and the head's clock
        running from its first byte, not its last."""
        try:
            http = getattr(self, "_http", None)
            if http is None or http.stage is not Stage.REQUEST:
                self._time = monotonic()
            if not data:
                return self.close()
            self.recv_buffer += data
            if len(self.recv_buffer) >= self.buffer_size and self.transport:
                self.transport.pause_reading()
            if self._data_received:
                self._data_received.set()
        except Exception:
            log.exception("DeadlineProtocol.data_received failed")

    def check_timeouts(self) -> None:
        try:
            http = self.http
            if not self._task or http is None:
                return
            stage = http.stage
            every = self.check_every
            if stage is Stage.REQUEST:
                if monotonic() - self._time > self.head_timeout:
                    self._head_late(http)
            elif getattr(http, "request_body", None) and http.perft0 is not None:
                if perf_counter() - http.perft0 > self.body_timeout:
                    self._body_late(http)
            elif stage is Stage.IDLE:
                if monotonic() - self._time > self.keep_alive_timeout:
                    self._task.cancel()
                    return
                every = self.idle_every
            # Checks go on after a deadline: a handler that turned the cancellation into its 408 lets the
            # connection go on to discard the rest of the body, which the next check cuts.
            self._callback_check_timeouts = self.loop.call_later(every, self.check_timeouts)
        except Exception:
            log.exception("DeadlineProtocol.check_timeouts failed")

    def _head_late(self, http: Any) -> None:
        http.keep_alive = False
        if http.recv_buffer.find(b"\r\n") > 0:  # the request line is there: its path gives the dialect
            http.exception = RequestTimeout(
                f"the request head did not arrive within {self.head_timeout:g} s (limits.head_timeout)"
            )
        else:
            http.stage = Stage.FAILED  # Sanic answers nothing from this stage; the connection closes
        self._task.cancel()

    def _body_late(self, http: Any) -> None:
        http.keep_alive = False
        if http.stage is Stage.HANDLER:
            http.exception = RequestTimeout(
                f"the request body did not arrive within {self.body_timeout:g} s (limits.body_timeout)"
            )
        self._task.cancel()


# -- what the proxy checks in a request body ---------------------------------------------------------


def parse_body(raw: bytes, max_model_length: int, spans: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """The request's JSON object, checked only for what routing needs. ``spans``, when given, gets where each
    top-level value lies in ``raw.decode()`` (``(start, end)``, as :func:`with_members` takes them).

    Raises:
        InvalidRequest: the body is empty, not UTF-8, not JSON, nested deeper than Python
            can parse, not an object, or gives a top-level key twice (the upstream might use
            the other value than the one routed and priced); ``model`` is missing, empty or
            longer than ``max_model_length``; ``stream`` is not a boolean.
    """
    if not raw:
        raise InvalidRequest("the request body is empty; expected a JSON object")
    try:
        body = _loads_object(raw.decode("utf-8"), spans)
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not valid UTF-8") from None
    except _DuplicateKey as exc:
        raise InvalidRequest(f"the request body gives the key {exc.key[:64]!r} more than once") from None
    except ValueError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("the request body is not valid JSON: it is nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"the request body must be a JSON object, not {type(body).__name__}")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model: a non-empty string is required")
    if len(model) > max_model_length:
        raise InvalidRequest(
            f"model: at most {max_model_length} characters (limits.max_model_length), got {len(model)}"
        )
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("stream: must be true or false")
    return body


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


_scan_value = json.JSONDecoder().scan_once  # the C decoder: (value, end) at an index
_space = re.compile(r"[ \t\n\r]*").match
_WS = " \t\n\r"


def _loads_object(text: str, spans: dict[str, tuple[int, int]] | None = None) -> Any:
    """``json.loads(text)``, refusing a top-level object that gives a key twice; ``spans`` (if given) gets
    where each top-level value lies in ``text``.

    The top level is walked here (about 0.5 µs a member); each member's value is parsed
    by the C decoder, as ``json.loads`` would. Anything but an object, and any syntax
    error, is left to ``json.loads`` (so its error messages are the usual ones).

    Raises:
        _DuplicateKey: naming the key.
    """
    body: dict[str, Any] = {}
    try:
        for key, start, value, end in _members(text):
            if key in body:
                raise _DuplicateKey(key)
            body[key] = value
            if spans is not None:
                spans[key] = (start, end)
    except (ValueError, IndexError):
        if spans is not None:
            spans.clear()
        return json.loads(text)
    return body


def with_model(raw: bytes, model: str) -> bytes:
    """``raw``, a JSON object in UTF-8, with the value of its top-level ``model`` set to ``model`` and every
    other byte kept: an alias's request keeps the client's JSON (and the answer the upstream's), for a walk
    to the key (a few µs when ``model`` comes first, as Claude Code sends it) instead of a re-serialisation
    (~0.5 ms for an 80 KB body of a Claude Code session).

    Raises:
        ValueError: ``raw`` is not UTF-8, not a JSON object as far as the walk to ``model`` went, or has
            no top-level ``model``.
    """
    return with_members(raw, {"model": model})


def with_members(raw: bytes, replaced: dict[str, Any], added: dict[str, Any] | None = None,
                 spans: dict[str, tuple[int, int]] | None = None) -> bytes:
    """``raw``, a JSON object in UTF-8, with the values of its top-level members named in ``replaced`` set to
    theirs, and the members ``added`` (which it must not have) put first, every other byte kept. The walk goes
    as far as the last member replaced (none for ``added`` alone); none at all when ``spans``, from
    :func:`parse_body` of the same ``raw``, holds every member replaced (the OpenAI SDK sends ``model`` after
    ``messages``: the walk would parse the conversation again).

    Raises:
        ValueError: ``raw`` is not UTF-8, not a JSON object as far as the walk went, or lacks a member
            named in ``replaced``.
    """
    text = raw.decode("utf-8-sig")  # (a byte-order mark, which some servers put before an answer, goes)
    found: list[tuple[int, int, str]] = []
    if spans and all(key in spans for key in replaced) and not raw.startswith(codecs.BOM_UTF8):
        found = sorted((*spans[key], key) for key in replaced)
    elif replaced:
        try:
            for key, start, _, end in _members(text):
                if key in replaced:
                    found.append((start, end, key))
                    if len(found) == len(replaced):
                        break
        except IndexError:
            raise ValueError("the body ends before its object does") from None
        if len(found) < len(replaced):
            raise ValueError(f"the body has no top-level {', '.join(sorted(set(replaced) - {k for *_, k in found}))}")
    parts, at = [], 0
    if added:
        at = _space(text).end() + 1  # after the "{"
        if text[at - 1 : at] != "{":
            raise ValueError("the body is not a JSON object")
        members = ",".join(f"{json.dumps(k, ensure_ascii=False)}:{json.dumps(v, ensure_ascii=False)}"
                           for k, v in added.items())
        first = _space(text, at).end()
        parts += [text[:at], members if text[first : first + 1] == "}" else members + ","]
    for start, end, key in found:
        parts += [text[at:start], json.dumps(replaced[key], ensure_ascii=False)]
        at = end
    parts.append(text[at:])
    return "".join(parts).encode("utf-8")


def _members(text: str) -> Iterator[tuple[str, int, Any, int]]:
    """The members of the JSON object ``text`` holds, in order: ``(key, start, value, end)``, the value
    being ``text[start:end]``. Raises ValueError (or IndexError at the text's end) when ``text`` is not one
    object, as far as it was walked."""
    end = 0 if text[0] == "{" else _space(text).end()
    if text[end] != "{":
        raise ValueError
    end += 1
    c = text[end]
    if c in _WS:
        end = _space(text, end).end()
        c = text[end]
    if c == "}":
        end += 1
    else:
        while True:
            if c != '"':
                raise ValueError
            key, end = scanstring(text, end + 1)
            if text[end] != ":":
                end = _space(text, end).end()
                if text[end] != ":":
                    raise ValueError
            end += 1
            if text[end] in _WS:
                end = _space(text, end + 1).end()
            start = end
            try:
                value, end = _scan_value(text, start)
            except StopIteration:  # (a generator may not let it out)
                raise ValueError from None
            yield key, start, value, end
            c = text[end]
            if c in _WS:
                end = _space(text, end).end()
                c = text[end]
            end += 1
            if c == "}":
                break
            if c != ",":
                raise ValueError
            c = text[end]
            if c in _WS:
                end = _space(text, end).end()
                c = text[end]
    if end != len(text) and _space(text, end).end() != len(text):
        raise ValueError
