"""Server-sent events, read incrementally with bounds, to find the payment events
of a metered MPP session stream (``payment-need-voucher``, ``payment-receipt``).

Sans-I/O: bytes in (as they arrive, split anywhere), events out. Only what the
payer needs is kept: an event's type and its data, each bounded; an event whose
data passes the bound is still reported (its type known, ``oversized`` set) so
a payment event cannot hide behind its size, while the bytes of a large
application event are never held. The stream's bytes themselves are relayed by
the caller untouched; this reader only watches them.

Parsing follows the WHATWG event-stream rules: lines end in CRLF, LF or CR; a
blank line dispatches; ``field: value`` drops one space after the colon; lines
starting with a colon are comments; the event type defaults to ``message``.
"""

from __future__ import annotations

from dataclasses import dataclass

NEED_VOUCHER = "payment-need-voucher"
RECEIPT = "payment-receipt"
MESSAGE = "message"
#: An event type longer than this is no event a payer acts on.
MAX_TYPE = 128


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    data: str  # the data lines joined with LF; empty when ``oversized``
    oversized: bool = False  # the data (or a line of it) passed the reader's bound


class SseReader:
    """Feed bytes with ``feed``; each call returns the events it completed."""

    def __init__(self, max_event_bytes: int) -> None:
        self.max = max_event_bytes
        self._line = bytearray()
        self._line_over = False  # the current line passed the bound: the rest of it is dropped
        self._after_cr = False  # the last byte was CR: an LF next ends nothing more
        self._type = ""
        self._data: list[bytes] = []
        self._size = 0
        self._over = False
        self._any = False  # the current event has had a field

    def feed(self, chunk: bytes) -> list[Event]:
        out: list[Event] = []
        if not chunk:
            return out  # nothing read: a CR just before still waits for its LF
        i = 0
        if self._after_cr and chunk[:1] == b"\n":
            i = 1
        self._after_cr = False
        n = len(chunk)
        while i < n:
            cr, lf = chunk.find(b"\r", i), chunk.find(b"\n", i)
            ends = [p for p in (cr, lf) if p >= 0]
            if not ends:
                self._take(chunk[i:])
                break
            end = min(ends)
            self._take(chunk[i:end])
            self._end_line(out)
            if chunk[end:end + 1] == b"\r":
                if end + 1 == n:
                    self._after_cr = True
                    i = n
                    continue
                if chunk[end + 1:end + 2] == b"\n":
                    end += 1
            i = end + 1
        return out

    def _take(self, part: bytes) -> None:
        if self._line_over:
            return
        if len(self._line) + len(part) > self.max:
            self._line_over = True
            self._line.clear()
            return
        self._line += part

    def _end_line(self, out: list[Event]) -> None:
        line, over = bytes(self._line), self._line_over
        self._line.clear()
        self._line_over = False
        if over:
            # Too long to keep: the event's data is oversized (whatever field it was).
            self._over = self._any = True
            return
        if not line:
            if self._any:
                out.append(Event(self._type or MESSAGE, "" if self._over else
                                 b"\n".join(self._data).decode("utf-8", "replace"), self._over))
            self._type, self._data, self._size, self._over, self._any = "", [], 0, False, False
            return
        if line.startswith(b":"):
            return  # a comment
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"event":
            self._any = True
            self._type = value.decode("utf-8", "replace")[:MAX_TYPE]
        elif name == b"data":
            self._any = True
            self._size += len(value) + 1
            if self._size > self.max:
                self._over, self._data = True, []
            elif not self._over:
                self._data.append(value)


def is_event_stream(headers: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> bool:
    """Whether a response's Content-Type is ``text/event-stream`` (parameters aside)."""
    for name, value in headers:
        if name.lower() == "content-type":
            return value.split(";", 1)[0].strip().lower() == "text/event-stream"
    return False


__all__ = ["MESSAGE", "NEED_VOUCHER", "RECEIPT", "Event", "SseReader", "is_event_stream"]
