"""Type checks for the fields of parsed JSON bodies.

Each ``expect_*(value, where, key)`` returns ``value`` when it has the expected JSON
type; when ``value`` is None (the field is absent or null) and a ``default`` was
given, it returns the default; otherwise it raises ``error(message)`` with a message
that names the field's path, e.g. ``messages[2].content[0].image_url: expected an
object, got a string``. The path is ``where`` followed by ``key`` (``.key``, or
``[key]`` for an index); it is only built on failure, which keeps the checks cheap.
``error`` is :class:`InvalidRequest` (400) for client bodies; response converters
pass one that makes an :class:`UpstreamProtocolError` (502).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NoReturn

from ccproxy_core import InvalidRequest

__all__ = [
    "REQUIRED",
    "expect_bool",
    "expect_dict",
    "expect_int",
    "expect_list",
    "expect_number",
    "expect_str",
    "fail",
    "json_type",
]

#: The ``default`` of a field that must be present (None is not accepted either).
REQUIRED: Final[Any] = object()

ErrorFactory = Callable[[str], Exception]
Key = str | int | None


def json_type(value: Any) -> str:
    """The JSON type of a parsed value, as a message says it (``a string``, ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, list):
        return "an array" if value else "an empty array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def fail(path: str, expected: str, value: Any, error: ErrorFactory = InvalidRequest) -> NoReturn:
    """Raise ``error("<path>: expected <expected>, got <type of value>")``."""
    raise error(f"{path}: expected {expected}, got {json_type(value)}")


def _other(value: Any, where: str, key: Key, expected: str, default: Any, error: ErrorFactory) -> Any:
    if value is None and default is not REQUIRED:
        return default
    path = where if key is None else f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}"
    fail(path, expected, value, error)


def expect_dict(
    value: Any, where: str, key: Key = None, *, default: Any = REQUIRED, error: ErrorFactory = InvalidRequest
) -> Any:
    """A JSON object."""
    return value if isinstance(value, dict) else _other(value, where, key, "an object", default, error)


def expect_list(
    value: Any,
    where: str,
    key: Key = None,
    *,
    default: Any = REQUIRED,
    nonempty: bool = False,
    error: ErrorFactory = InvalidRequest,
) -> Any:
    """A JSON array (with ``nonempty``, one with at least one element)."""
    if isinstance(value, list) and (value or not nonempty):
        return value
    return _other(value, where, key, "a non-empty array" if nonempty else "an array", default, error)


def expect_str(
    value: Any,
    where: str,
    key: Key = None,
    *,
    default: Any = REQUIRED,
    nonempty: bool = False,
    error: ErrorFactory = InvalidRequest,
) -> Any:
    """A string (with ``nonempty``, not ``""``)."""
    if isinstance(value, str) and (value or not nonempty):
        return value
    return _other(value, where, key, "a non-empty string" if nonempty else "a string", default, error)


def expect_int(
    value: Any, where: str, key: Key = None, *, default: Any = REQUIRED, error: ErrorFactory = InvalidRequest
) -> Any:
    """An integer (not a boolean, not a float)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return _other(value, where, key, "an integer", default, error)


def expect_number(
    value: Any, where: str, key: Key = None, *, default: Any = REQUIRED, error: ErrorFactory = InvalidRequest
) -> Any:
    """An integer or a float (not a boolean)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return _other(value, where, key, "a number", default, error)


def expect_bool(
    value: Any, where: str, key: Key = None, *, default: Any = REQUIRED, error: ErrorFactory = InvalidRequest
) -> Any:
    """``true`` or ``false``."""
    return value if isinstance(value, bool) else _other(value, where, key, "true or false", default, error)
