"""The otel plugin's spans as the bytes of an OTLP ``ExportTraceServiceRequest``, written directly.

The SDK's encoder builds a protobuf object per span, attribute and value before serialising them: most
of a sampled request's export work, in a thread that shares the GIL with the event loop. This writes the same message's bytes from the plugin's
plain spans (the tests compare them with the SDK's own, byte for byte). Field numbers are those of
``opentelemetry/proto/trace/v1/trace.proto`` and ``common/v1/common.proto``; proto3 leaves a scalar field
at its default out, as the SDK's objects do.

A value the SDK cannot encode (an int outside int64, an unknown type) leaves its attribute out, as the SDK
does. Text that is not valid Unicode (a lone surrogate, which a client can put into a model name) is
written with ``?`` in its place, where the SDK's encoder fails the whole batch.
"""

from __future__ import annotations

import struct
from collections.abc import Container, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["RESOURCE_ATTRIBUTES", "attributes", "export_request", "scope", "span"]

#: ``SpanFlags``: the span says whether its parent is remote, and whether it is.
HAS_IS_REMOTE, IS_REMOTE = 0x100, 0x200
#: ``Status.StatusCode.STATUS_CODE_ERROR``.
STATUS_ERROR = 2

_double = struct.Struct("<d").pack
_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack


_SMALL = [bytes((n,)) for n in range(0x80)]  # the varints of one byte


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _field(key: bytes, payload: bytes) -> bytes:
    """A length-delimited field: a string, bytes or an embedded message."""
    return key + _varint(len(payload)) + payload


def _text(value: str) -> bytes:
    return value.encode("utf-8", "replace")  # a lone surrogate becomes "?"


# Keys (field number, wire type: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32) by message.
_REQUEST_RESOURCE_SPANS = _key(1, 2)
_RESOURCE_SPANS_RESOURCE, _RESOURCE_SPANS_SCOPE_SPANS = _key(1, 2), _key(2, 2)
RESOURCE_ATTRIBUTES = _key(1, 2)  # a Resource's attributes: the ``key`` for :func:`attributes`
_SCOPE_SPANS_SCOPE, _SCOPE_SPANS_SPANS = _key(1, 2), _key(2, 2)
_SCOPE_NAME, _SCOPE_VERSION = _key(1, 2), _key(2, 2)
_TRACE_ID, _SPAN_ID, _TRACE_STATE, _PARENT_ID, _NAME = (_key(n, 2) for n in range(1, 6))
_KIND, _START, _END, _ATTRIBUTES = _key(6, 0), _key(7, 1), _key(8, 1), _key(9, 2)
_EVENTS, _STATUS, _FLAGS = _key(11, 2), _key(15, 2), _key(16, 5)
_EVENT_TIME, _EVENT_NAME, _EVENT_ATTRIBUTES = _key(1, 1), _key(2, 2), _key(3, 2)
_STATUS_MESSAGE, _STATUS_CODE = _key(2, 2), _key(3, 0)
_KV_KEY, _KV_VALUE = _key(1, 2), _key(2, 2)
_STRING, _BOOL, _INT, _DOUBLE = _key(1, 2), _key(2, 0), _key(3, 0), _key(4, 1)
_ARRAY, _KVLIST, _BYTES, _VALUES = _key(5, 2), _key(6, 2), _key(7, 2), _key(1, 2)
_TRUE, _FALSE = _BOOL + b"\x01", _BOOL + b"\x00"
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _value(value: Any) -> bytes:
    """An ``AnyValue``'s bytes, as the SDK's ``_encode_value`` decides the type. Raises ValueError for a
    value it cannot encode."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return _TRUE if value else _FALSE
    if isinstance(value, str):
        return _field(_STRING, _text(value))
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"{value} is outside int64")
        return _INT + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return _DOUBLE + _double(value)
    if isinstance(value, bytes):
        return _field(_BYTES, value)
    if isinstance(value, Sequence):
        return _field(_ARRAY, b"".join(_field(_VALUES, _value(v)) for v in value))
    if isinstance(value, Mapping):
        return _field(_KVLIST, b"".join(_field(_VALUES, _key_value(str(k), v)) for k, v in value.items()))
    raise ValueError(f"invalid type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    return (_field(_KV_KEY, _text(key)) if key else b"") + _field(_KV_VALUE, _value(value))


#: Encoded ``KeyValue``s by (key, type, value), for strings, ints, bools and tuples of strings (most of a
#: span's attributes repeat from request to request); at most ``KV_CACHE_MAX`` of them, cleared when full.
#: Not floats (``-0.0 == 0.0``) nor other tuples (``(1,) == (True,) == (1.0,)``): equal keys, other bytes.
_kv_cache: dict[tuple[str, type, Any], bytes] = {}
KV_CACHE_MAX = 4096


def attributes(items: Mapping[str, Any] | None, key: bytes = _ATTRIBUTES, unique: Container[str] = ()) -> bytes:
    """The repeated ``KeyValue`` field ``key`` of a message (a span's attributes by default); an attribute
    whose value cannot be encoded is left out, as the SDK leaves it. The attributes named in ``unique`` (a
    request id) are not kept in the cache."""
    if not items:
        return b""
    out = []
    cache = _kv_cache
    for name, value in items.items():
        cls = value.__class__
        if cls is str:
            cached = len(value) <= 128 and name not in unique
        elif cls is tuple:
            cached = len(value) <= 8 and all(v.__class__ is str and len(v) <= 128 for v in value)
        else:
            cached = cls is int or cls is bool
        kv = cache.get((name, cls, value)) if cached else None
        if kv is None:
            try:
                kv = _key_value(name, value)
            except (ValueError, TypeError):
                continue
            if cached:
                if len(cache) >= KV_CACHE_MAX:
                    cache.clear()
                cache[name, cls, value] = kv
        n = len(kv)
        out += (key, _SMALL[n] if n < 0x80 else _varint(n), kv)
    return b"".join(out)


def scope(name: str, version: str | None = None) -> bytes:
    """An ``InstrumentationScope``'s bytes."""
    return (_field(_SCOPE_NAME, _text(name)) if name else b"") + (
        _field(_SCOPE_VERSION, _text(version)) if version else b"")


_TRACE_ID_16, _SPAN_ID_8, _PARENT_ID_8 = _TRACE_ID + b"\x10", _SPAN_ID + b"\x08", _PARENT_ID + b"\x08"
_STATUS_UNSET = _field(_STATUS, b"")
_FLAGS_LOCAL = _FLAGS + _fixed32(HAS_IS_REMOTE)
_FLAGS_REMOTE = _FLAGS + _fixed32(HAS_IS_REMOTE | IS_REMOTE)


def span(trace_id: int, span_id: int, trace_state: str, parent_id: int, parent_remote: bool, name: str, kind: int,
         start: int, end: int, attrs: Mapping[str, Any], events: Iterable[tuple[str, int, Mapping[str, Any]]],
         error: tuple[str | None] | None, unique: Container[str] = ()) -> bytes:
    """A ``Span``'s bytes. ``parent_id`` 0: a root span. ``events``: (name, time in ns, attributes).
    ``error``: None (status unset) or the ERROR status's description. ``unique``: see :func:`attributes`."""
    parts = [_TRACE_ID_16, trace_id.to_bytes(16, "big"), _SPAN_ID_8, span_id.to_bytes(8, "big")]
    if trace_state:
        parts.append(_field(_TRACE_STATE, _text(trace_state)))
    if parent_id:
        parts += (_PARENT_ID_8, parent_id.to_bytes(8, "big"))
    if name:
        parts.append(_field(_NAME, _text(name)))
    if kind:
        parts += (_KIND, _varint(kind))
    parts += (_START, _fixed64(start), _END, _fixed64(end), attributes(attrs, _ATTRIBUTES, unique))
    for event_name, time_ns, event_attrs in events:
        event = _EVENT_TIME + _fixed64(time_ns) + _field(_EVENT_NAME, _text(event_name))
        parts.append(_field(_EVENTS, event + attributes(event_attrs, _EVENT_ATTRIBUTES)))
    if error is None:
        parts.append(_STATUS_UNSET)
    else:
        message = _field(_STATUS_MESSAGE, _text(error[0])) if error[0] else b""
        parts.append(_field(_STATUS, message + _STATUS_CODE + _SMALL[STATUS_ERROR]))
    parts.append(_FLAGS_REMOTE if parent_remote else _FLAGS_LOCAL)
    return b"".join(parts)


def export_request(resource_attributes: bytes, scope_bytes: bytes, spans: Iterable[bytes]) -> bytes:
    """An ``ExportTraceServiceRequest``'s bytes: one resource (its attributes from :func:`attributes` with
    ``RESOURCE_ATTRIBUTES``), one scope (:func:`scope`), the spans (each from :func:`span`)."""
    scope_spans = _field(_SCOPE_SPANS_SCOPE, scope_bytes) + b"".join(_field(_SCOPE_SPANS_SPANS, s) for s in spans)
    resource_spans = _field(_RESOURCE_SPANS_RESOURCE, resource_attributes) + _field(_RESOURCE_SPANS_SCOPE_SPANS,
                                                                                    scope_spans)
    return _field(_REQUEST_RESOURCE_SPANS, resource_spans)
