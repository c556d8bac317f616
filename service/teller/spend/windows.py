"""Budget windows: calendar-aligned (UTC hour, day, ISO week, month) or rolling.

Windows are half-open ``[start, end)`` in milliseconds since the epoch. Pure.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

CALENDAR_UNITS = ("hour", "day", "week", "month")


def rolling_bounds(rolling_ms: int, now_ms: int) -> tuple[int, int]:
    """The last ``rolling_ms``, ending with ``now_ms``."""
    return now_ms - rolling_ms + 1, now_ms + 1


def calendar_bounds(unit: str, now_ms: int) -> tuple[int, int]:
    t = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    if unit == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        return _ms(start), _ms(start) + 3_600_000
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        return _ms(day), _ms(day) + 86_400_000
    if unit == "week":  # ISO weeks start on Monday
        start_ms = _ms(day) - day.weekday() * 86_400_000
        return start_ms, start_ms + 7 * 86_400_000
    if unit == "month":
        first = day.replace(day=1)
        days = calendar.monthrange(first.year, first.month)[1]
        return _ms(first), _ms(first) + days * 86_400_000
    raise ValueError(unit)


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


__all__ = ["CALENDAR_UNITS", "calendar_bounds", "rolling_bounds"]
