"""Token usage and cost, from the upstream's own numbers, streamed or not, in both dialects.

Fills ``ctx.usage`` (a :class:`ccproxy_core.context.Usage`: ``input_tokens``, ``output_tokens``,
``cache_read_input_tokens``, ``cache_creation_input_tokens``), ``ctx.usage_partial``, ``ctx.inband_error``
and ``ctx.cost`` (USD, or None when the model has no price) before any other plugin's
``ccproxy_stream_end`` runs (``tryfirst``), so the access log and the metrics see them.

Where the numbers come from (always ``ctx.upstream_dialect``, so translated requests count too):

* Anthropic stream: ``message_start.message.usage`` gives input and cache tokens (and a first
  output count); every ``message_delta.usage`` replaces the counts it carries (they are cumulative).
* OpenAI stream: the usage chunk (``choices: []``, ``usage``) that ``stream_options.include_usage``
  asks for. When a client streams without it, this plugin asks the upstream for it
  (``ccproxy_request_body``) and removes what that adds from the client's stream (the usage frame and
  the ``"usage":null`` field of the other chunks), so the client gets what it asked for.
* Responses stream: the ``response`` of ``response.completed`` / ``response.incomplete`` /
  ``response.failed`` carries ``usage`` (``input_tokens`` with ``input_tokens_details.cached_tokens``,
  ``output_tokens``); ``error`` and ``response.failed`` are in-band errors.
* Non-streamed responses: the body's ``usage``, read from the body's end when it can
  (:func:`last_member_usage`), else from the whole body parsed.

Streams are read by :class:`StreamReader`, a response adapter that passes the bytes on and parses
only the reads that may hold one of these events, so the core neither parses a stream into events
nor calls a hook per event for this plugin.

The dialects are normalised to Anthropic's meaning: ``input_tokens`` counts the input tokens billed
at the full input price, so for OpenAI it is ``prompt_tokens - prompt_tokens_details.cached_tokens``
and ``cache_read_input_tokens`` is ``cached_tokens``.

This plugin's own ``ctx.state["usage"]`` holds ``source`` (``"stream"``, ``"body"`` or None), ``final``
(the upstream's closing numbers were seen: ``message_delta``, the OpenAI usage chunk or a JSON body)
and ``requested`` (this plugin added ``include_usage`` to the last attempt streamed from the upstream).
``ctx.usage_partial`` is True when the closing numbers never came although the request was cut short
(client gone, upstream failed) or some numbers were counted (e.g. an error event ended the stream after ``message_start``): what was
counted so far is kept, not dropped. An error event inside a stream (Anthropic ``event: error``,
OpenAI ``data: {"error": ...}``) is kept in ``ctx.inband_error`` (its message).

The price table is per app: ``ccproxy_configure`` returns a :class:`UsagePlugin` holding it, whose
methods are this plugin's hooks that need it.

Settings (``plugins: usage: {...}``):

* ``prices``: ``{glob: {input, output, cache_read, cache_creation}}`` in USD per million tokens,
  matched against the model sent upstream; first match wins; merged over :data:`DEFAULT_PRICES`
  (a key of yours replaces the default of the same key, and yours are tried first).
* ``default_prices``: ``false`` to use only your own table.
* ``request_stream_usage``: ``false`` to never add ``include_usage`` (for OpenAI-compatible servers
  that reject ``stream_options``).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from ccproxy_core import (
    ANTHROPIC,
    CLIENT_DISCONNECTED,
    DECODABLE_CODINGS,
    OPENAI,
    RESPONSES,
    UPSTREAM_ERROR,
    Config,
    PluginSettings,
    RequestContext,
    SSEParser,
    Usage,
    hookimpl,
)

NAME = "usage"
log = logging.getLogger("ccproxy")

USAGE_KEYS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")

#: List prices in USD per million tokens (standard tier, short context), as published by Anthropic
#: and OpenAI. They are defaults to override in the config: prices change, and batch, priority,
#: long-context and regional rates are not modelled. Order matters: the first glob that matches wins.
#: ``cache_creation`` is the 5-minute cache write price; OpenAI has no cache write charge.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    # Anthropic
    "claude-opus-4-5*": {"input": 5.0, "output": 25.0, "cache_read": 0.5, "cache_creation": 6.25},
    "claude-opus-4*": {"input": 15.0, "output": 75.0, "cache_read": 1.5, "cache_creation": 18.75},
    "claude-sonnet-4*": {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_creation": 3.75},
    "claude-haiku-4*": {"input": 1.0, "output": 5.0, "cache_read": 0.1, "cache_creation": 1.25},
    "claude-3-7-sonnet*": {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_creation": 3.75},
    "claude-3-5-sonnet*": {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_creation": 3.75},
    "claude-3-5-haiku*": {"input": 0.8, "output": 4.0, "cache_read": 0.08, "cache_creation": 1.0},
    "claude-3-opus*": {"input": 15.0, "output": 75.0, "cache_read": 1.5, "cache_creation": 18.75},
    "claude-3-haiku*": {"input": 0.25, "output": 1.25, "cache_read": 0.03, "cache_creation": 0.3},
    # OpenAI
    "gpt-5*-pro*": {"input": 15.0, "output": 120.0},
    "gpt-5*-nano*": {"input": 0.05, "output": 0.4, "cache_read": 0.005, "cache_creation": 0.05},
    "gpt-5*-mini*": {"input": 0.25, "output": 2.0, "cache_read": 0.025, "cache_creation": 0.25},
    "gpt-5*": {"input": 1.25, "output": 10.0, "cache_read": 0.125, "cache_creation": 1.25},
    "gpt-4.1-nano*": {"input": 0.1, "output": 0.4, "cache_read": 0.025, "cache_creation": 0.1},
    "gpt-4.1-mini*": {"input": 0.4, "output": 1.6, "cache_read": 0.1, "cache_creation": 0.4},
    "gpt-4.1*": {"input": 2.0, "output": 8.0, "cache_read": 0.5, "cache_creation": 2.0},
    "gpt-4o-mini*": {"input": 0.15, "output": 0.6, "cache_read": 0.075, "cache_creation": 0.15},
    "gpt-4o*": {"input": 2.5, "output": 10.0, "cache_read": 1.25, "cache_creation": 2.5},
    "gpt-4-turbo*": {"input": 10.0, "output": 30.0},
    "gpt-3.5-turbo*": {"input": 0.5, "output": 1.5},
    "o4-mini*": {"input": 1.1, "output": 4.4, "cache_read": 0.275, "cache_creation": 1.1},
    "o3-mini*": {"input": 1.1, "output": 4.4, "cache_read": 0.55, "cache_creation": 1.1},
    "o3-pro*": {"input": 20.0, "output": 80.0},
    "o3*": {"input": 2.0, "output": 8.0, "cache_read": 0.5, "cache_creation": 2.0},
    "o1-mini*": {"input": 1.1, "output": 4.4, "cache_read": 0.55, "cache_creation": 1.1},
    "o1-pro*": {"input": 150.0, "output": 600.0},
    "o1*": {"input": 15.0, "output": 60.0, "cache_read": 7.5, "cache_creation": 15.0},
}



@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens of each kind."""

    input: float
    output: float
    cache_read: float
    cache_creation: float

    def cost(self, usage: Usage) -> float:
        """The USD cost of ``usage``."""
        return (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_read_input_tokens * self.cache_read
            + usage.cache_creation_input_tokens * self.cache_creation
        ) / 1_000_000


@dataclass(slots=True)
class PriceSetting:
    """One entry of ``plugins.usage.prices``; unpriced cache tokens cost what input tokens cost
    (an over- rather than an under-estimate)."""

    input: float
    output: float
    cache_read: float | None = None
    cache_creation: float | None = None

    def price(self) -> Price:
        return Price(
            self.input,
            self.output,
            self.input if self.cache_read is None else self.cache_read,
            self.input if self.cache_creation is None else self.cache_creation,
        )


class PriceTable:
    """Glob -> :class:`Price`, first match wins; :attr:`by_model` caches the answer per model name."""

    def __init__(self, prices: dict[str, PriceSetting] | None = None, *, defaults: bool = True) -> None:
        ordered: dict[str, PriceSetting] = dict(prices or {})
        if defaults:
            for pattern, value in DEFAULT_PRICES.items():
                ordered.setdefault(pattern, PriceSetting(**value))
        self.entries = [(p, v.price()) for p, v in ordered.items()]
        #: ``by_model[model]`` is ``lookup(model)``: a dict lookup once a name was seen.
        self.by_model = _PriceCache(self)

    def lookup(self, model: str | None) -> Price | None:
        """The price of the first glob ``model`` matches (None for none, or no model)."""
        if not model:
            return None
        return next((price for pattern, price in self.entries if fnmatch.fnmatchcase(model, pattern)), None)


class _PriceCache(dict):  # type: ignore[type-arg]
    """Model name -> :meth:`PriceTable.lookup`, filled on first use; at most :data:`MAX_CACHED_MODELS` names
    are kept (model names come from clients), others are looked up each time."""

    def __init__(self, table: PriceTable) -> None:
        super().__init__()
        self.table = table

    def __missing__(self, model: str | None) -> Price | None:
        found = self.table.lookup(model)
        if len(self) < MAX_CACHED_MODELS:
            self[model] = found
        return found


MAX_CACHED_MODELS = 4096


@dataclass(slots=True)
class UsageSettings:
    """The ``plugins: usage:`` block, as written (see the module docstring)."""

    prices: dict[str, PriceSetting] | None = None
    default_prices: bool = True
    request_stream_usage: bool = True


@dataclass(frozen=True, slots=True)
class SharedSettings:
    """What other plugins read of this plugin's settings."""

    #: Ask an OpenAI upstream for the usage chunk of a stream (translate asks for it too).
    request_stream_usage: bool = True


def settings_for(config: Config | None) -> SharedSettings:
    """:class:`SharedSettings` from ``config`` (checked at start-up by ``ccproxy_configure``); a few
    µs, so other plugins may call it per request."""
    if config is None:
        return SharedSettings()
    raw = config.plugin_settings(NAME)
    shared = {key: raw[key] for key in ("request_stream_usage",) if key in raw}
    return PluginSettings(NAME, shared, config.path).load(SharedSettings)


@hookimpl
def ccproxy_configure(settings: PluginSettings) -> UsagePlugin:
    """Check ``plugins: usage:`` while the app is built (a bad price stops start-up)."""
    loaded = settings.load(UsageSettings)
    return UsagePlugin(PriceTable(loaded.prices, defaults=loaded.default_prices), loaded.request_stream_usage)


class UsagePlugin:
    """This plugin's hooks that need the app's settings: the price table and ``request_stream_usage``."""

    def __init__(self, prices: PriceTable, request_stream_usage: bool = True) -> None:
        self.prices = prices
        self.request_stream_usage = request_stream_usage

    @hookimpl
    def ccproxy_request_body(self, ctx: RequestContext, body: dict[str, Any]) -> bool | None:
        """Ask an OpenAI upstream for the usage chunk when an OpenAI client streams without it."""
        flags = _flags(ctx)
        flags["requested"] = False  # per attempt: a fallback may speak another dialect
        if ctx.client_dialect != OPENAI or ctx.upstream_dialect != OPENAI or body.get("stream") is not True:
            return None
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return None
        if not self.request_stream_usage:
            return None
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        flags["requested"] = True
        return True

    #: Only a streamed attempt is changed: the core skips the hook (and its copy of the body) for the others;
    #: only ``stream_options`` is set: the core puts it into the client's bytes instead of re-serialising them.
    ccproxy_request_body.streamed_only = True  # type: ignore[attr-defined]
    ccproxy_request_body.top_level_only = True  # type: ignore[attr-defined]

    @hookimpl(tryfirst=True)
    def ccproxy_stream_end(self, ctx: RequestContext) -> None:
        """Settle partial usage and the cost before the access log and metrics read them."""
        flags = ctx.state.get(NAME) or _flags(ctx)
        usage = ctx.usage
        # Partial: the closing numbers never came, yet something was counted or the request was cut short.
        ctx.usage_partial = not flags["final"] and (
            usage is not None or ctx.outcome in (CLIENT_DISCONNECTED, UPSTREAM_ERROR)
        )
        if usage is None:
            ctx.cost = None
            return
        price = self.prices.by_model[ctx.model or ctx.model_requested]
        ctx.cost = round(price.cost(usage), 10) if price is not None else None


# -- asking for usage --------------------------------------------------------------------


def _flags(ctx: RequestContext) -> dict[str, Any]:
    flags = ctx.state.get(NAME)
    if flags is None:
        flags = ctx.state[NAME] = {"source": None, "final": False, "requested": False}
    return flags


@hookimpl(tryfirst=True)
def ccproxy_response_adapter(ctx: RequestContext) -> StreamReader | UsageChunkRemover | None:
    """An upstream stream: read its usage (:class:`StreamReader`), first in the chain so it sees the
    upstream's bytes, and hide from the client what asking for usage added (same-dialect OpenAI
    streams only)."""
    headers = ctx.response_headers
    if "text/event-stream" not in headers.get("content-type", ""):
        return None
    flags = ctx.state.get(NAME)
    remover = None
    # upstream_stream: "requested" is of the last streamed attempt (the hook skips the others).
    if flags and flags.get("requested") and ctx.upstream_stream and not ctx.translated and ctx.upstream_dialect == OPENAI:
        remover = UsageChunkRemover()
    encoding = headers.get("content-encoding")
    if encoding is not None and encoding.strip().lower() not in DECODABLE_CODINGS:
        return remover  # not read, as the core passes it through unread when only observers read it
    return StreamReader(ctx, remover)


class StreamReader:
    """A response adapter that reads usage from an upstream stream as it passes, unchanged (or through
    ``remover``), as :func:`read_event` would from every event, at a fraction of the cost.

    Only reads that may hold an event carrying usage or an error are parsed (:data:`_UNREAD`, by
    dialect): a read is skipped when the parser holds nothing (the previous read ended with a blank
    line), it ends with a blank line itself and holds no carriage return (so it is whole events and leaves
    the parser as it found it) and none of its events can matter (``unread``). Any
    other read goes to the parser. An exception is logged once per process and the stream goes on.
    """

    __slots__ = ("ctx", "parser", "unread", "remover")

    def __init__(self, ctx: RequestContext, remover: UsageChunkRemover | None = None) -> None:
        self.ctx = ctx
        self.parser = SSEParser()
        #: True for whole events none of which can matter (see :data:`_UNREAD`).
        self.unread = _UNREAD.get(ctx.upstream_dialect, _UNREAD[OPENAI])
        self.remover = remover

    def feed(self, data: bytes) -> bytes:
        if not (self.parser.passes(data) and self.unread(data)):
            self._read(self.parser.feed(data))
        return self.remover.feed(data) if self.remover is not None else data

    def finish(self) -> bytes:
        self._read(self.parser.flush())
        return self.remover.finish() if self.remover is not None else b""

    def _read(self, events: list[Any]) -> None:
        global _failed
        for event in events:
            try:
                chunk = read_event(self.ctx, event)
                if chunk is not None and self.remover is not None and _is_usage_chunk(chunk):
                    self.remover.usage_data = event.data  # parsed once: the remover knows the frame by its text
            except Exception:
                if not _failed:
                    _failed = True
                    log.exception("usage: reading an event's usage failed; the stream goes on (logged once)")


_failed = False


#: How OpenAI's own chunks end when usage was asked for: their one ``"usage"``, null, last.
_NULL_LAST = b',"usage":null}\n\n'


def _chat_unread(data: bytes) -> bool:
    """No Chat Completions event in ``data`` matters: no error key (a quoted ``"error"`` in a model's text is
    escaped, ``\\"error\\"``) and every ``"usage"`` is ``"usage":null`` (a usage object in any spacing is read).
    Two scans for an OpenAI chunk (:data:`_NULL_LAST`)."""
    if data.find(b'"error"') >= 0:
        return False
    usages = data.count(b'"usage"')
    return usages == 0 or (usages == 1 and data.endswith(_NULL_LAST)) or usages == data.count(b'"usage":null')


#: By upstream dialect, whether no event in some whole events can matter to :func:`read_event`: bytes
#: without which none does are absent (the names of the Anthropic and Responses API events that do).
#: Substring checks, cheaper than a regular expression: a name found elsewhere only costs a parse, a usage
#: or error is never skipped. ``bytes.find``, not ``in``, per read: on Python 3.11 ``sub in data`` first
#: tries ``sub`` as an int and builds a TypeError it drops.
_UNREAD = {
    ANTHROPIC: lambda data: data.find(b"message_start") < 0 and data.find(b"message_delta") < 0
    and data.find(b"error") < 0,
    RESPONSES: lambda data: data.find(b"response.completed") < 0 and data.find(b"response.incomplete") < 0
    and data.find(b"response.failed") < 0 and data.find(b"error") < 0,
    OPENAI: _chat_unread,
}


#: The end of a blank line, which ends an event: a line end right after another (CRLF is one line end).
_BLANK_LINE = re.compile(rb"\n\n|\n\r\n?|\r\r\n?")
_NULL_USAGE = (b',"usage":null', b', "usage": null', b'"usage":null,', b'"usage": null, ')


class UsageChunkRemover:
    """A response adapter that drops the ``choices: []`` usage frame and ``"usage": null`` fields.

    Bytes are held only up to the next blank line, in any mix of line ends (the end of the event being
    read; the core bounds one event at ``limits.max_sse_event_bytes`` before any adapter sees it);
    everything else passes through unchanged. Work is linear in the bytes fed: held pieces are joined
    once, and each read is searched once (plus the 3 bytes before it, where a blank line may start).
    In JSON text an unescaped ``"usage":null`` can only be a key and its value, so removing it
    (with its comma) leaves valid JSON.
    """

    __slots__ = ("_held", "_edge", "_dropped", "_ended_last", "_lf", "usage_data")

    def __init__(self) -> None:
        self._held: list[bytes] = []  # pieces of the event being read (no blank line among them)
        self._edge = b""  # the last 3 held bytes
        self._dropped = False
        self._ended_last = False  # the usage frame dropped was the last of what _clean was given
        #: The last read ended with a CR ending an event: what a LF opening the next read (the rest of a CRLF)
        #: becomes, b"\n" if that event was passed on, b"" if it was the frame dropped; None otherwise.
        self._lf: bytes | None = None
        #: The data of an event already known to be the usage chunk (by :class:`StreamReader`, which parsed it).
        self.usage_data: str | None = None

    def feed(self, data: bytes) -> bytes:
        if self._lf is not None:
            return self._after_cr(data)
        held = self._held
        if not held and data.endswith(b"\n\n"):  # the usual read: whole events
            return self._clean(data)
        edge = self._edge if held else b""
        probe = edge + data if edge else data
        # The last blank line holds one of these pairs: a line end, then the start of an empty line's end.
        cut = max(probe.rfind(b"\n\n"), probe.rfind(b"\n\r"), probe.rfind(b"\r\r"))
        if cut >= 0:
            cut += 3 if probe[cut + 1] == 0x0D and probe[cut + 2 : cut + 3] == b"\n" else 2  # (its CRLF, whole)
            cut -= len(edge)  # in data
        if cut <= 0:
            if data:
                held.append(data)
                self._edge = (edge + data)[-3:]
            return b""
        head = b"".join(held) + data[:cut] if held else data[:cut]
        self._held = [data[cut:]] if cut < len(data) else []
        self._edge = data[cut:][-3:]
        self._ended_last = False
        cleaned = self._clean(head)
        if cut == len(data) and head.endswith(b"\r"):
            self._lf = b"" if self._ended_last else b"\n"
        return cleaned

    def _after_cr(self, data: bytes) -> bytes:
        """A read after one that ended with a CR ending an event: a LF opening it (the rest of a CRLF split
        between reads) goes with that event, whatever became of it."""
        lf = b""
        if data[:1] == b"\n":
            lf, data = self._lf or b"", data[1:]
        self._lf = None
        return lf + self.feed(data)

    def finish(self) -> bytes:
        rest = b"".join(self._held)
        self._held, self._edge = [], b""
        return self._clean(rest) if rest else b""

    def _clean(self, data: bytes) -> bytes:
        if data.endswith(_NULL_LAST) and data.count(b'"usage"') == 1:  # OpenAI's own chunk: one scan
            return data[: -len(_NULL_LAST)] + b"}\n\n"
        if not self._dropped and (b'"choices":[]' in data or b'"choices": []' in data):
            data = self._drop_usage_frame(data)
        # The usual field first (OpenAI's own spacing); the other forms only when one is left.
        cleaned = data.replace(_NULL_USAGE[0], b"")
        if cleaned.find(b'"usage":null') >= 0 or cleaned.find(b'"usage": null') >= 0:  # (find: see _UNREAD)
            for pattern in _NULL_USAGE[1:]:
                cleaned = cleaned.replace(pattern, b"")
        return cleaned

    def _drop_usage_frame(self, data: bytes) -> bytes:
        """``data`` without the first usage frame in it: each event with its blank line, and what follows the
        last blank line (the stream's end, when it ends without one)."""
        out: list[bytes] = []
        start = 0
        ends = [(blank.start(), blank.end()) for blank in _BLANK_LINE.finditer(data)]  # (event's, with its blank line)
        if not ends or ends[-1][1] < len(data):
            ends.append((len(data), len(data)))
        for event_end, end in ends:
            if not self._dropped and self._is_usage_frame(data[start:event_end]):
                self._dropped = True
                self._ended_last = end == len(data)
            else:
                out.append(data[start:end])
            start = end
        return b"".join(out)

    def _is_usage_frame(self, frame: bytes) -> bool:
        if b'"usage"' not in frame or (b'"choices":[]' not in frame and b'"choices": []' not in frame):
            return False
        lines = frame.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        payload = b"\n".join(
            line[6:] if line.startswith(b"data: ") else line[5:] for line in lines if line.startswith(b"data:")
        )
        if self.usage_data is not None and payload == self.usage_data.encode():
            return True
        try:
            chunk = json.loads(payload)
        except ValueError:
            return False
        return _is_usage_chunk(chunk)


def _is_usage_chunk(chunk: Any) -> bool:
    """The chunk a Chat Completions stream ends with when usage was asked for: no choices, a usage object."""
    return isinstance(chunk, dict) and chunk.get("choices") == [] and isinstance(chunk.get("usage"), dict)


# -- reading usage -----------------------------------------------------------------------


def _int(value: Any) -> int:
    """A positive count of a parsed JSON value (an ``int``, never a subclass: ``bool`` is none), else 0."""
    return value if value.__class__ is int and value > 0 else 0


def _set_anthropic(ctx: RequestContext, usage: Any, *, replace: bool) -> None:
    if not isinstance(usage, dict):
        return
    target = ctx.usage
    if target is None:  # replace or not, each count is the one given, else 0: made at once
        get = usage.get
        ctx.usage = Usage(_int(get("input_tokens")), _int(get("output_tokens")), _int(get("cache_read_input_tokens")),
                          _int(get("cache_creation_input_tokens")))
        return
    for key in USAGE_KEYS:
        value = usage.get(key)
        if value is not None or not replace:
            setattr(target, key, _int(value))


#: (input, its details, output) keys of OpenAI's usage objects: Chat Completions', the Responses API's.
_CHAT_KEYS = ("prompt_tokens", "prompt_tokens_details", "completion_tokens")
_RESPONSES_KEYS = ("input_tokens", "input_tokens_details", "output_tokens")


def _set_openai(ctx: RequestContext, usage: Any, keys: tuple[str, str, str] = _CHAT_KEYS) -> None:
    if not isinstance(usage, dict):
        return
    input_key, details_key, output_key = keys
    details = usage.get(details_key)
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    full = _int(usage.get(input_key)) - cached  # billed at the full input price
    ctx.usage = Usage(full if full > 0 else 0, _int(usage.get(output_key)), cached)


#: Responses events whose ``response`` is final (and carries ``usage``).
_RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _loads(data: str) -> dict[str, Any]:
    """The JSON object in ``data``; {} for anything else (a malformed upstream event is not our failure)."""
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _error_message(payload: Any) -> str:
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or "error")
    return str(error or "error")


def read_event(ctx: RequestContext, event: Any) -> Any:
    """Read usage from the few events that carry it (:class:`StreamReader` passes them). Returns the Chat
    Completions chunk it parsed for its usage, else None."""
    data: str = event.data
    if ctx.upstream_dialect == ANTHROPIC:
        name = event.event
        if name == "message_start":
            message = _loads(data).get("message")
            if not isinstance(message, dict):
                return
            flags = _flags(ctx)
            flags["source"] = "stream"
            _set_anthropic(ctx, message.get("usage"), replace=False)
        elif name == "message_delta":
            flags = _flags(ctx)
            flags["source"], flags["final"] = "stream", True
            _set_anthropic(ctx, _loads(data).get("usage"), replace=True)
        elif name == "error":
            ctx.inband_error = _error_message(_loads(data))
        return
    if ctx.upstream_dialect == RESPONSES:
        name = event.event
        if name in _RESPONSES_FINAL:
            response = _loads(data).get("response")
            if not isinstance(response, dict):
                return
            flags = _flags(ctx)
            flags["source"], flags["final"] = "stream", True
            _set_openai(ctx, response.get("usage"), _RESPONSES_KEYS)
            if name == "response.failed":
                ctx.inband_error = _error_message(response)
        elif name == "error":
            payload = _loads(data)
            ctx.inband_error = str(payload.get("message") or payload.get("code") or "error")
        return
    # Chat Completions: a usage object in any JSON spacing (OpenAI's own chunks say "usage":null).
    if data.count('"usage"') != data.count('"usage":null'):
        chunk = _loads(data)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            flags = _flags(ctx)
            flags["source"] = "stream"
            _set_openai(ctx, usage)
            choices = chunk.get("choices")
            # The usage chunk has no choices; some servers put usage on the finishing chunk instead.
            if not choices or any(isinstance(c, dict) and c.get("finish_reason") for c in choices):
                flags["final"] = True
        return chunk
    elif '"error"' in data:  # a model's quoted "error" is escaped in the JSON text: \"error\"
        chunk = _loads(data)
        if chunk.get("error"):  # not "error": null
            ctx.inband_error = _error_message(chunk)


@hookimpl
def ccproxy_response_body(ctx: RequestContext, body: bytes) -> None:
    """A whole JSON response: its ``usage``."""
    status = ctx.upstream_status or 0
    if not 200 <= status < 300:
        return
    start = body.rfind(b'"usage"')  # rfind: it is near the end (and see _UNREAD)
    if start < 0:
        return
    usage = last_member_usage(body, start)
    if usage is _UNKNOWN:
        try:
            payload = json.loads(body)
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        usage = payload.get("usage")
    flags = _flags(ctx)
    if ctx.upstream_dialect == ANTHROPIC:
        _set_anthropic(ctx, usage, replace=False)
    elif ctx.upstream_dialect == RESPONSES:
        _set_openai(ctx, usage, _RESPONSES_KEYS)
    else:
        _set_openai(ctx, usage)
    if ctx.usage is not None:
        flags["source"], flags["final"] = "body", True


_UNKNOWN = object()
_SCAN = json.JSONDecoder().scan_once  # one JSON value at an index: (value, end), StopIteration if none
_WS = r"[ \t\n\r]*"  # JSON's whitespace (json.decoder.WHITESPACE)
_USAGE_KEY = re.compile(rf'"usage"{_WS}:{_WS}')
#: What may follow the usage member to the body's end: up to 8 members with a plain name and a
#: literal, a number, a plain string or an empty object or array (OpenAI puts a few there), then the
#: final ``}``. Anything else costs the full parse.
_SIMPLE = r'"[^"\\\x00-\x1f]*"'
_LITERAL = rf"null|true|false|{_SIMPLE}|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|\{{{_WS}\}}|\[{_WS}\]"
_TAIL = re.compile(rf"(?:{_WS},{_WS}{_SIMPLE}{_WS}:{_WS}(?:{_LITERAL})){{0,8}}{_WS}\}}{_WS}")


def last_member_usage(body: bytes, start: int | None = None) -> Any:
    """``json.loads(body)["usage"]`` read from the end of a JSON object, or :data:`_UNKNOWN`; ``start``:
    ``body.rfind(b'"usage"')``, if the caller has it.

    A whole body costs a full parse (every dict and string of the answer) for four numbers, while
    the usual answer ends with ``usage`` or a few short members after it. The last ``"usage"`` key
    is decoded with its value, and what follows must be :data:`_TAIL`: in JSON text that proves it a
    member of the outermost object and the last of that name (the names after it are plain, none
    is ``usage``). Anything else (a body not starting ``{`` in UTF-8, a ``"usage"`` that is a value
    or nested deeper, any other tail, text that does not decode) is :data:`_UNKNOWN`: the caller
    parses the whole body. Only the text before the member is not read: a body malformed there,
    which the full parse refuses, still gives its usage.
    """
    if body[:1] != b"{" or body[1:2] == b"\x00":  # json.loads would guess UTF-16 or UTF-32
        return _UNKNOWN
    if start is None:
        start = body.rfind(b'"usage"')
    if start < 1 or body[start - 1] == 0x5C:  # an escaped quote (a backslash before it): inside a longer string
        return _UNKNOWN
    try:
        # Only the member and what follows it are decoded (a '"' starts a character), once the whole body
        # is known to be UTF-8, as it is when it is ASCII (bytes.find finds in UTF-8 what str.find would).
        if not body.isascii():
            body.decode()
        text = body[start:].decode()
        if text.startswith('"usage":{'):  # compact JSON: no regular expression
            at = 8
        else:
            key = _USAGE_KEY.match(text)
            if key is None:  # a value, not a key
                return _UNKNOWN
            at = key.end()
        usage, end = _SCAN(text, at)
    except (ValueError, StopIteration):  # not UTF-8 (json.loads may still read it), or no JSON value there
        return _UNKNOWN
    return usage if text[end:] == "}" or _TAIL.fullmatch(text, end) is not None else _UNKNOWN
