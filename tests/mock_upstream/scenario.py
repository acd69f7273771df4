"""How to answer one request: the ``x-mock-*`` request headers, parsed into a :class:`Scenario`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

CONTENTS = ("text", "tools", "parallel_tools", "thinking", "shell")


def _ms(value: str) -> float:
    """Milliseconds as seconds; must be >= 0."""
    number = float(value)
    if number < 0:
        raise ValueError("must be >= 0")
    return number / 1000


def _count(value: str) -> int:
    """A count >= 0."""
    number = int(value)
    if number < 0:
        raise ValueError("must be >= 0")
    return number


def _positive(value: str) -> int:
    """A count >= 1."""
    number = int(value)
    if number < 1:
        raise ValueError("must be >= 1")
    return number


def _rate(value: str) -> float:
    """Events per second, > 0."""
    number = float(value)
    if not number > 0:
        raise ValueError("must be > 0")
    return number


def _flag(value: str) -> bool:
    """``1``/``true``/``yes``/``on`` is on, ``0``/``false``/``no``/``off``/empty is off."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("must be a flag (1/0)")


def _status(value: str) -> int:
    """An HTTP status code 100..599."""
    number = int(value)
    if not 100 <= number <= 599:
        raise ValueError("must be 100..599")
    return number


def _content(value: str) -> str:
    """One of :data:`CONTENTS`."""
    lowered = value.strip().lower()
    if lowered not in CONTENTS:
        raise ValueError(f"must be one of {', '.join(CONTENTS)}")
    return lowered


def _opt(header: str, parse: Callable[[str], Any], default: Any) -> Any:
    """A :class:`Scenario` field read from request header ``header`` by ``parse``."""
    return field(default=default, metadata={"header": header, "parse": parse})


@dataclass(frozen=True)
class Scenario:
    """How to answer one request, from its ``x-mock-*`` headers. Durations are in seconds here
    (milliseconds on the wire); ``None`` means off. An unparsable value gets a 400 naming it.

    "Events" are SSE events including ``message_start``/``ping``/``[DONE]``. For JSON replies
    ``delay`` is slept once before the head, and ``drop_after``/``truncate`` send the head with
    half the promised body, then FIN. ``coalesce`` ignores ``split``, ``stall_after``,
    ``drop_after`` and ``truncate``. A ``status`` below 400 only replaces the status code.
    ``rate`` writes event ``i`` at ``t0 + i / rate`` (a schedule: late events do not delay the
    next ones), ``delay`` sleeps before each event (a chain: each gap is at least ``delay``).
    Each :class:`MockUpstream` counter says how the response ended.
    """

    delay: float = _opt("x-mock-delay", _ms, 0.0)  # before the first event and between events
    events: int | None = _opt("x-mock-events", _positive, None)  # number of text deltas
    content: str = _opt("x-mock-content", _content, "text")
    split: bool = _opt("x-mock-split", _flag, False)  # every event in 1-7 byte writes
    coalesce: bool = _opt("x-mock-coalesce", _flag, False)  # head + all events in one write
    crlf: bool = _opt("x-mock-crlf", _flag, False)  # SSE lines end in \r\n
    status: int | None = _opt("x-mock-status", _status, None)  # >= 400: dialect error body
    headers_delay: float = _opt("x-mock-headers-delay", _ms, 0.0)  # before the status line
    drop_after: int | None = _opt("x-mock-drop-after", _count, None)  # FIN after N events
    reset: bool = _opt("x-mock-reset", _flag, False)  # RST before any response byte
    garbage: bool = _opt("x-mock-garbage", _flag, False)  # non-HTTP bytes, then FIN
    truncate: bool = _opt("x-mock-truncate", _flag, False)  # chunk promises more than sent
    stall_after: int | None = _opt("x-mock-stall-after", _count, None)  # pause after N events
    stall: float = _opt("x-mock-stall", _ms, 5.0)  # ... for this long, then continue
    inband_error: bool = _opt("x-mock-inband-error", _flag, False)  # error event after a delta
    gzip: bool = _opt("x-mock-gzip", _flag, False)  # gzip if the client accepts it
    echo: bool = _opt("x-mock-echo", _flag, False)  # answer with the request as JSON
    unknown_event: bool = _opt("x-mock-unknown-event", _flag, False)  # Anthropic future_event
    fixed_ids: bool = _opt("x-mock-fixed-ids", _flag, False)  # ids, timestamps: byte-stable bodies
    interleave: bool = _opt("x-mock-interleave", _flag, False)  # OpenAI: parallel tool calls' pieces alternate
    rate: float | None = _opt("x-mock-rate", _rate, None)  # events per second, on a schedule
    stamp: bool = _opt("x-mock-stamp", _flag, False)  # text deltas: "@" + send time in ns (benchmarks)
    max_tokens: bool = _opt("x-mock-max-tokens", _flag, False)  # the answer stops at its output token limit

    @property
    def plain(self) -> bool:
        """Nothing to wait for and no fault: a JSON reply can be written at once."""
        return not (self.delay or self.headers_delay or self.split or self.reset or self.garbage
                    or self.truncate or self.drop_after is not None or self.gzip)

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, str]]) -> Scenario:
        """The scenario the headers ask for (last occurrence wins).

        Raises:
            ValueError: a header value does not parse; the message names the header.
        """
        return cls.parse(cls.given(headers))

    @staticmethod
    def given(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        """The ``x-mock-*`` headers, lowercased, the last occurrence of each: what :meth:`parse` reads."""
        return tuple({name.lower(): value for name, value in headers if name[:7].lower() == "x-mock-"}.items())

    @staticmethod
    def parse(given: tuple[tuple[str, str], ...]) -> Scenario:
        """The scenario of :meth:`given` headers. Raises ValueError like :meth:`from_headers`."""
        return _parse(given) if given else _DEFAULT


@functools.lru_cache(maxsize=256)
def _parse(given: tuple[tuple[str, str], ...]) -> Scenario:
    """Parsed once per distinct set of headers: a benchmark sends the same ones again and again."""
    values = dict(given)
    kwargs: dict[str, Any] = {}
    for f in fields(Scenario):
        header = f.metadata["header"]
        if header in values:
            try:
                kwargs[f.name] = f.metadata["parse"](values[header])
            except ValueError as exc:
                raise ValueError(f"{header}: {values[header]!r} {exc}") from None
    return Scenario(**kwargs)


_DEFAULT = Scenario()
