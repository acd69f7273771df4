"""Bounded decoding of a compressed upstream body.

Used only when something reads the body (a response adapter, an observer plugin):
compressed bytes passed through untouched are never decoded. Each read is inflated
in pieces of at most :data:`PIECE` bytes, and the decoded total may not exceed
``max_ratio`` times the compressed bytes read so far plus :data:`RATIO_ALLOWANCE`
(``limits.max_decompression_ratio``; 0: no ratio limit), so a small "zip bomb" is refused after a few
MiB instead of filling memory. ``gzip``, ``deflate`` (zlib or raw) and ``identity``
are decoded; any other coding (``br``, ``zstd``, several codings) cannot be bounded
here and :func:`decoder_for` returns None for it.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator

from .errors import UpstreamProtocolError

__all__ = [
    "DECODABLE_CODINGS", "PIECE", "RATIO_ALLOWANCE", "BodyDecoder", "decodable_accept_encoding", "decoded", "decoder_for",
]

#: Largest decoded piece produced at once, in bytes.
PIECE = 64 * 1024
#: Decoded bytes allowed beyond ``ratio × compressed bytes`` (small bodies compress best).
RATIO_ALLOWANCE = 1024 * 1024

_WBITS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
#: The ``content-encoding`` values (lower-case) this module decodes; a response adapter is refused a body in any other.
DECODABLE_CODINGS = frozenset({*_WBITS, "identity"})


class BodyDecoder:
    """Decodes one body; :meth:`feed` yields bounded pieces and raises past the ratio."""

    __slots__ = ("encoding", "max_ratio", "_zlib", "_first", "_read", "_decoded")

    def __init__(self, encoding: str, max_ratio: int) -> None:
        self.encoding = encoding
        self.max_ratio = max_ratio
        wbits = _WBITS.get(encoding)
        self._zlib = zlib.decompressobj(wbits) if wbits is not None else None
        self._first = encoding == "deflate"  # "deflate" may be raw deflate: retried once without a header
        self._read = 0
        self._decoded = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decode one read of the body, piece by piece.

        Raises:
            UpstreamProtocolError: the data is not valid for its coding, or it inflates
                past the ratio.
        """
        self._read += len(data)
        z = self._zlib
        if z is None:  # identity
            if data:
                yield data
            return
        while data:
            try:
                out = z.decompress(data, PIECE)
            except zlib.error:
                if not self._first:
                    raise UpstreamProtocolError(f"the upstream's {self.encoding} body could not be decoded") from None
                z = self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                self._first = False
                continue
            self._first = False
            data = z.unconsumed_tail
            if out:
                yield self._count(out)
            elif not data:
                break

    def flush(self) -> bytes:
        """The body ended: what the decoder still holds."""
        z = self._zlib
        if z is None:
            return b""
        try:
            out = z.flush(PIECE)
        except zlib.error:  # pragma: no cover - flush after complete input does not fail
            raise UpstreamProtocolError(f"the upstream's {self.encoding} body could not be decoded") from None
        return self._count(out) if out else b""

    def _count(self, out: bytes) -> bytes:
        self._decoded += len(out)
        if self.max_ratio > 0 and self._decoded > self.max_ratio * self._read + RATIO_ALLOWANCE:
            raise UpstreamProtocolError(
                f"the upstream's {self.encoding} body inflates more than {self.max_ratio} times its size"
            )
        return out


def decoder_for(content_encoding: str, max_ratio: int) -> BodyDecoder | None:
    """A decoder for a ``content-encoding`` value, or None when it cannot be decoded within bounds."""
    encoding = content_encoding.strip().lower()
    if encoding not in DECODABLE_CODINGS:
        return None
    return BodyDecoder(encoding, max_ratio)


_ACCEPTED: dict[str, str] = {}


def decodable_accept_encoding(value: str) -> str:
    """The client's ``accept-encoding`` narrowed to the codings this module decodes.

    Sent upstream when the proxy may read the body, so that an upstream never answers
    in a coding (``br``, ``zstd``) the proxy would have to refuse; q-values are kept,
    ``*`` is dropped, and ``identity`` is what remains when nothing else does.
    """
    narrowed = _ACCEPTED.get(value)
    if narrowed is None:
        kept = [
            part.strip() for part in value.split(",") if part.split(";", 1)[0].strip().lower() in DECODABLE_CODINGS
        ]
        narrowed = ", ".join(kept) or "identity"
        if len(_ACCEPTED) >= 256:  # the values come from clients: bound the cache
            _ACCEPTED.clear()
        _ACCEPTED[value] = narrowed
    return narrowed


async def decoded(chunks: AsyncIterator[bytes], decoder: BodyDecoder) -> AsyncIterator[bytes]:
    """``chunks`` (raw reads) decoded, in pieces of at most :data:`PIECE` bytes."""
    async for chunk in chunks:
        for piece in decoder.feed(chunk):
            yield piece
    tail = decoder.flush()
    if tail:
        yield tail
