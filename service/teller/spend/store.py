"""The spend ledger in the database: window sums, bucket moves, the spend report.

Everything here runs inside the caller's transaction (for Sign, after the
tenant row is locked), so what it reads cannot change before the reservation
commits. The arithmetic and the SQL text are ``teller.spend.ledger``'s.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, TextClause, and_, bindparam, case, func, select, text
from sqlalchemy.orm import Session

from teller.db.models import Payment, SpendPolicy
from teller.spend.ledger import (
    BUCKET_ROW_SQL,
    MINUTE_MS,
    WINDOW_FIELDS,
    WindowUse,
    bucket_delta,
    window_rows,
    windows_from,
    windows_select,
)
from teller.spend.parse import parsed
from teller.spend.rules import DEFAULT, Budget, Policy, inherit
from teller.states import PaymentState


def _policies(s: Session, tenant_id: str, wallet_ids: Sequence[str]) -> tuple[Policy, dict[str, Policy]]:
    """The tenant's policy and those of the given wallets that have one, in one query."""
    rows = s.execute(
        select(SpendPolicy.wallet_id, SpendPolicy.document).where(
            SpendPolicy.tenant_id == tenant_id, SpendPolicy.wallet_id.in_(("", *wallet_ids))
        )
    ).all()
    docs = dict(rows)
    tenant = parsed(docs.pop(""), False) if "" in docs else DEFAULT
    return tenant, {w: inherit(parsed(d, True), tenant) for w, d in docs.items()}


policies = _policies


@functools.lru_cache(maxsize=256)
def _scan_statement(column: str, windows: tuple[tuple[str, bool], ...]) -> Select[Any]:
    """The window-sum query for a shape of budgets, built once: the bounds are
    bind parameters, so SQLAlchemy and the database reuse the plan."""
    col = Payment.tenant_id if column == "tenant" else Payment.wallet_id
    settled = PaymentState.SETTLED.value
    columns = []
    for i, (_, rolling) in enumerate(windows):
        # A rolling window has no upper bound here: a concurrent Sign on another
        # worker may have stamped its payment a moment "after" our clock read,
        # and it still counts against what is left.
        start = Payment.created_ms >= bindparam(f"start{i}")
        in_window = start if rolling else and_(start, Payment.created_ms < bindparam(f"end{i}"))
        for label, is_spent in (("reserved", Payment.state != settled), ("spent", Payment.state == settled)):
            columns.append(func.coalesce(func.sum(case(
                (and_(in_window, is_spent), Payment.amount_common), else_=0)), 0).label(f"w{i}_{label}"))
    return select(*columns).where(col == bindparam("scope_id"), Payment.created_ms >= bindparam("earliest"),
                                  Payment.released_ms.is_(None))


def measure_by_scan(
    s: Session, column: str, scope_id: str, budgets: Sequence[Budget], now_ms: int
) -> dict[str, WindowUse]:
    """The same sums as ``measure``, from the payment rows themselves (O(payments in
    the window)): the reference ``measure``'s buckets are checked against."""
    if not budgets:
        return {}
    bounds = [b.bounds(now_ms) for b in budgets]
    params: dict[str, Any] = {"scope_id": scope_id, "earliest": min(start for start, _ in bounds)}
    for i, (start, end) in enumerate(bounds):
        params[f"start{i}"], params[f"end{i}"] = start, end
    statement = _scan_statement(column, tuple((b.name, bool(b.rolling_ms)) for b in budgets))
    values = s.execute(statement, params).one()._mapping
    return {b.name: WindowUse(int(values[f"w{i}_reserved"]), int(values[f"w{i}_spent"]))
            for i, b in enumerate(budgets)}


def measure(
    s: Session, column: str, scope_id: str, budgets: Sequence[Budget], now_ms: int
) -> dict[str, WindowUse]:
    """Reserved and spent amounts in each budget's current window of one scope, in
    one query whose cost does not grow with the number of payments in the window."""
    return measure_many(s, {(column, scope_id): budgets}, now_ms)[(column, scope_id)]


@functools.lru_cache(maxsize=512)
def _windows_statement(count: int) -> TextClause:
    """Any database: the windows as a VALUES list (the text depends only on ``count``)."""
    rows = ", ".join(f"(:k{i}, :scope{i}, :sid{i}, :ms{i}, :me{i}, :st{i}, :ed{i})" for i in range(count))
    return text(windows_select(f"WITH v(k, scope, sid, ms, me, st, ed) AS (VALUES {rows})"))


def measure_many(
    s: Session, scopes: Mapping[tuple[str, str], Sequence[Budget]], now_ms: int
) -> dict[tuple[str, str], dict[str, WindowUse]]:
    """``measure`` for many scopes ((column, scope id) -> budgets) in one query:
    what a batch of Sign calls needs, read once under the batch's tenant locks."""
    names, rows = window_rows(scopes, now_ms)
    if not rows:
        return windows_from(names, scopes, ())
    params = {f"{field}{i}": value for i, row in enumerate(rows)
              for field, value in zip(WINDOW_FIELDS, row, strict=True)}
    return windows_from(names, scopes, s.execute(_windows_statement(len(rows)), params))


def move_buckets(s: Session, p: Payment, new_state: str | None, new_amount: int) -> None:
    """Move payment ``p``'s buckets as it goes from its recorded state and amount
    to ``new_state`` (None: released) holding ``new_amount`` (``bucket_delta``),
    tenant before wallet (one lock order everywhere). Nothing is written when
    nothing moves."""
    reserved, spent = bucket_delta(p.state, p.amount_common, new_state, new_amount)
    if reserved or spent:
        minute = p.created_ms // MINUTE_MS
        s.execute(text(BUCKET_ROW_SQL), [
            {"scope": scope, "scope_id": scope_id, "minute": minute, "reserved": reserved, "spent": spent}
            for scope, scope_id in (("tenant", p.tenant_id), ("wallet", p.wallet_id))])


@dataclass(frozen=True, slots=True)
class WindowReport:
    scope: str  # "tenant" or "wallet:<id>"
    name: str
    kind: str  # "calendar" | "rolling"
    limit: int
    spent: int
    reserved: int
    start_ms: int
    end_ms: int

    @property
    def remaining(self) -> int:
        return max(self.limit - self.spent - self.reserved, 0)


def report(s: Session, tenant_id: str, wallet_ids: Sequence[str], now_ms: int) -> list[WindowReport]:
    """Per window: limit, spent, reserved-but-unsettled and what is left."""
    out: list[WindowReport] = []
    tenant, wallets = _policies(s, tenant_id, wallet_ids)
    scopes = [("tenant", tenant_id, tenant)] + [(f"wallet:{w}", w, wallets[w]) for w in wallet_ids if w in wallets]
    keys = {label: ("tenant" if label == "tenant" else "wallet", scope_id) for label, scope_id, _ in scopes}
    uses = measure_many(s, {keys[label]: rules.budgets for label, _, rules in scopes}, now_ms)
    for label, _, rules_policy in scopes:
        use = uses[keys[label]]
        for b in rules_policy.budgets:
            start, end = b.bounds(now_ms)
            u = use[b.name]
            out.append(WindowReport(label, b.name, "rolling" if b.rolling_ms else "calendar", b.limit,
                                    u.spent, u.reserved, start, end))
    return out


__all__ = ["WindowReport", "measure", "measure_by_scan", "measure_many", "move_buckets", "report"]
