"""Time, injectable so tests can move it."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
DAY_MS = 86_400_000


def system_clock() -> float:
    return time.time()


def ms(clock: Clock) -> int:
    return int(clock() * 1000)


def utc_day_bounds(now_ms: int) -> tuple[int, int]:
    start = now_ms - now_ms % DAY_MS
    return start, start + DAY_MS
