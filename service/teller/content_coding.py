"""Content-codings of a response body (RFC 9110 section 8.4), decoded as it
streams. Pure: bytes in, bytes out.

Teller asks for only the codings it can decode (``ACCEPT``). Each decoder
hands out its output in pieces of at most ``STEP`` bytes, however much one
compressed chunk would inflate to, so the caller can count decoded bytes and
stop a decompression bomb after its limit instead of inflating it. (brotli
and zstd would need packages this build does not install: they are not asked
for.)
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence

#: The Accept-Encoding Teller sends, replacing any the caller gave.
ACCEPT = "gzip, deflate"
#: Decoded output per step: a compressed chunk never becomes more than this at once.
STEP = 64 * 1024
#: More stacked codings than this is not a real server.
MAX_CODINGS = 2
_GZIP, _ZLIB, _RAW = zlib.MAX_WBITS | 16, zlib.MAX_WBITS, -zlib.MAX_WBITS


class CodingError(Exception):
    """The body is not what its Content-Encoding says."""


class _Inflate:
    """gzip (all members, as gzip(1) reads them) or deflate (zlib-wrapped, or
    raw as some servers send it)."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self.wbits = _GZIP if coding == "gzip" else _ZLIB
        self.d = zlib.decompressobj(self.wbits)
        self.started = False
        self.head = b""  # deflate: the first two bytes say zlib-wrapped or raw

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self.coding == "deflate" and not self.started:
            self.head += data
            if len(self.head) < 2:
                return
            data, self.head = self.head, b""
            if (data[0] & 0x0F != 8) or (data[0] << 8 | data[1]) % 31:  # RFC 1950 header check
                self.wbits, self.d = _RAW, zlib.decompressobj(_RAW)
        while data:
            try:
                out = self.d.decompress(data, STEP)
            except zlib.error:
                raise CodingError(f"the body is not valid {self.coding}") from None
            self.started = True
            data = self.d.unconsumed_tail
            if self.d.eof:
                rest = self.d.unused_data
                if self.coding != "gzip" or not rest.strip(b"\0"):
                    data = b""  # trailing bytes after the stream: ignored, as zlib's gzip reader does
                else:
                    self.d, data = zlib.decompressobj(self.wbits), rest
            if out:
                yield out

    def finish(self) -> Iterator[bytes]:
        if self.head:  # a deflate body of one byte: no stream can be that short
            raise CodingError(f"the body is not valid {self.coding}")
        if not self.started:
            return
        try:
            out = self.d.flush()
        except zlib.error:
            raise CodingError(f"the body is not valid {self.coding}") from None
        for i in range(0, len(out), STEP):
            yield out[i:i + STEP]


def codings(headers: Sequence[tuple[str, str]]) -> list[str] | None:
    """The codings to undo, outermost first; None when there is one Teller did
    not ask for (the body is then passed on as sent, with its header)."""
    names: list[str] = []
    for key, value in headers:
        if key.lower() == "content-encoding":
            names += [c.strip().lower() for c in value.split(",") if c.strip()]
    names = ["gzip" if n == "x-gzip" else n for n in names if n != "identity"]
    if any(n not in ("gzip", "deflate") for n in names):
        return None
    if len(names) > MAX_CODINGS:
        raise CodingError(f"Content-Encoding stacks {len(names)} codings; at most {MAX_CODINGS} are decoded")
    return list(reversed(names))


class Decoder:
    """Undo ``names`` (outermost first) over a stream of chunks."""

    def __init__(self, names: Sequence[str]) -> None:
        self.layers = [_Inflate(n) for n in names]

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        return self._through(0, [chunk])

    def finish(self) -> Iterator[bytes]:
        for i, layer in enumerate(self.layers):
            yield from self._through(i + 1, layer.finish())

    def _through(self, i: int, pieces: Iterable[bytes]) -> Iterator[bytes]:
        if i == len(self.layers):
            yield from pieces
            return
        for piece in pieces:
            yield from self._through(i + 1, self.layers[i].feed(piece))


def decoded_headers(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers of a body handed on decoded: its coding and length are gone."""
    return [(k, v) for k, v in headers if k.lower() not in ("content-encoding", "content-length")]


__all__ = ["ACCEPT", "STEP", "CodingError", "Decoder", "codings", "decoded_headers"]
