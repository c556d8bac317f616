"""The spend ledger: per-minute buckets of what each tenant and wallet holds.

A payment that is not released holds its ``amount_common`` in the buckets of
its tenant and its wallet for the minute it was created: as ``reserved`` until
it settles, then as ``spent``. ``bucket_delta`` is the one rule for how a
payment's buckets move, used when a Sign reserves and when the lifecycle
settles or releases. A budget window sums whole minutes from the buckets plus,
for a rolling window, the exact payments of its part-minute edge.

Pure: the arithmetic, and the SQL text both database drivers send
(``teller.spend.store`` runs it through SQLAlchemy; the Sign batch's async
PostgreSQL path sends the same text).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from teller.spend.rules import Budget
from teller.states import PaymentState

#: A bucket's width: payments are summed per minute of their ``created_ms``.
MINUTE_MS = 60_000
_FAR = 2**62  # "no upper bound" for a rolling window's buckets
_SETTLED = PaymentState.SETTLED.value


def bucket_delta(state: str | None, amount: int, new_state: str | None, new_amount: int) -> tuple[int, int]:
    """How a payment's buckets move, as (reserved, spent), when it goes from
    holding ``amount`` in ``state`` to holding ``new_amount`` in ``new_state``.
    A state of None holds nothing: a payment not recorded yet, or released.
    Settled amounts are spent; every other unreleased state reserves."""
    reserved = spent = 0
    if state is not None:
        if state == _SETTLED:
            spent -= amount
        else:
            reserved -= amount
    if new_state is not None:
        if new_state == _SETTLED:
            spent += new_amount
        else:
            reserved += new_amount
    return reserved, spent


#: What a row written into a bucket that exists already does: it adds to it.
BUCKET_UPSERT = ("ON CONFLICT (scope, scope_id, minute) DO UPDATE SET reserved = spend_buckets.reserved + "
                 "EXCLUDED.reserved, spent = spend_buckets.spent + EXCLUDED.spent")


def _bucket_row(param: Callable[[str], str]) -> str:
    return ("INSERT INTO spend_buckets (scope, scope_id, minute, reserved, spent) VALUES "  # noqa: S608
            f"({', '.join(param(n) for n in ('scope', 'scope_id', 'minute', 'reserved', 'spent'))}) "
            f"{BUCKET_UPSERT}")


#: One scope's minute bucket, moved by (reserved, spent); batches send one row per
#: (scope, id, minute), tenants before wallets (the lock order everywhere).
BUCKET_ROW_SQL = _bucket_row(lambda n: f":{n}")


@dataclass(frozen=True, slots=True)
class WindowUse:
    reserved: int
    spent: int

    @property
    def used(self) -> int:
        return self.reserved + self.spent


def windows_select(source: str) -> str:
    """Reserved and spent per window, for windows (k, scope, sid, ms, me, st, ed)
    from ``source``: whole minutes from the buckets, plus the exact payments of a
    rolling window's part-minute edge (a calendar window's edge is empty)."""
    edge = ("SELECT COALESCE(SUM(p.amount_common), 0) FROM payments p WHERE v.scope = '{scope}' "  # noqa: S608
            "AND p.{column} = v.sid AND p.created_ms >= v.st AND p.created_ms < v.ed AND p.released_ms IS NULL "
            "AND p.state {op} '" + _SETTLED + "'")

    def part(field: str, op: str) -> str:
        whole = (f"(SELECT COALESCE(SUM(b.{field}), 0) FROM spend_buckets b WHERE b.scope = v.scope "  # noqa: S608
                 "AND b.scope_id = v.sid AND b.minute >= v.ms AND b.minute < v.me)")
        return (f"{whole} + ({edge.format(scope='tenant', column='tenant_id', op=op)}) "
                f"+ ({edge.format(scope='wallet', column='wallet_id', op=op)})")

    return f"{source} SELECT v.k, {part('reserved', '<>')} AS reserved, {part('spent', '=')} AS spent FROM v"  # noqa: S608


#: PostgreSQL: the windows as one JSON array of rows, so one text (prepared once)
#: serves every batch, and the driver encodes one string rather than seven arrays.
WINDOWS_PG_SQL = windows_select(
    "WITH v AS (SELECT * FROM json_to_recordset(%s::json) AS u(k int, scope text, sid text, ms bigint, me bigint, "
    "st bigint, ed bigint))")
WINDOW_FIELDS = ("k", "scope", "sid", "ms", "me", "st", "ed")


def window_rows(scopes: Mapping[tuple[str, str], Sequence[Budget]],
                now_ms: int) -> tuple[list[tuple[tuple[str, str], str]], list[tuple[int, str, str, int, int, int, int]]]:
    """Per budget window of ``scopes``: its (scope key, budget name) and its row
    (k, scope, scope id, first minute, end minute, edge start ms, edge end ms)."""
    names: list[tuple[tuple[str, str], str]] = []
    rows: list[tuple[int, str, str, int, int, int, int]] = []
    for (column, scope_id), budgets in scopes.items():
        for b in budgets:
            start, end = b.bounds(now_ms)
            m_start = -(-start // MINUTE_MS)
            rolling = bool(b.rolling_ms)
            rows.append((len(names), column, scope_id, m_start, _FAR if rolling else end // MINUTE_MS, start,
                         m_start * MINUTE_MS if rolling else start))
            names.append(((column, scope_id), b.name))
    return names, rows


def windows_from(names: Sequence[tuple[tuple[str, str], str]], scopes: Mapping[tuple[str, str], Any],
                 results: Any) -> dict[tuple[str, str], dict[str, WindowUse]]:
    out: dict[tuple[str, str], dict[str, WindowUse]] = {key: {} for key in scopes}
    for k, reserved, spent in results:
        key, name = names[int(k)]
        out[key][name] = WindowUse(int(reserved), int(spent))
    return out


__all__ = ["BUCKET_ROW_SQL", "BUCKET_UPSERT", "MINUTE_MS", "WINDOWS_PG_SQL", "WINDOW_FIELDS", "WindowUse",
           "bucket_delta", "window_rows", "windows_from", "windows_select"]
