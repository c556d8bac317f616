"""Spend report: payments summed per calendar window (hour, day, week, month),
network, asset and state, for accounting exports. Pure: it takes the payment
records the operator's client already listed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from teller.errors import InvalidArgument
from teller.spend.windows import CALENDAR_UNITS, calendar_bounds


@dataclass(frozen=True, slots=True)
class Line:
    window_start_ms: int
    window_end_ms: int
    network: str
    asset: str
    state: str
    payments: int
    amount: int  # token atomic units


def parse_time(text: str, field: str) -> int:
    """``2026-11-30``, ``2026-11-30T12:00:00Z`` (UTC unless an offset is given)."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"{field}: {text!r} is not an ISO 8601 date or time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def report(payments: Iterable[tuple[int, str, str, str, int]], *, by: str, since_ms: int,
           until_ms: int) -> list[Line]:
    """``payments``: (created_ms, network, asset, state, amount). Lines in window
    order, then network, asset, state; payments outside [since, until) are left out."""
    if by not in CALENDAR_UNITS:
        raise InvalidArgument(f"by must be one of {', '.join(CALENDAR_UNITS)}, got {by!r}")
    if until_ms <= since_ms:
        raise InvalidArgument("until must be after since")
    sums: dict[tuple[int, int, str, str, str], list[int]] = {}
    for created, network, asset, state, amount in payments:
        if not since_ms <= created < until_ms:
            continue
        start, end = calendar_bounds(by, created)
        acc = sums.setdefault((start, end, network, asset, state), [0, 0])
        acc[0] += 1
        acc[1] += amount
    return [Line(k[0], k[1], k[2], k[3], k[4], n, total) for k, (n, total) in sorted(sums.items())]


__all__ = ["Line", "parse_time", "report"]
