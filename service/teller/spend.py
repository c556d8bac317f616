"""The policy engine's database side: loading rules and measuring windows.

Everything here runs inside the Sign transaction, after the tenant row is
locked, so what it reads cannot change before the reservation commits.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, bindparam, case, func, select
from sqlalchemy.orm import Session

from teller import policy
from teller.db.models import Payment, SpendPolicy

SPENT = "settled"
# Everything else that is not released (signed, or failed while its
# authorization could still be used) is reserved: see teller.lifecycle.


@functools.lru_cache(maxsize=4096)
def parsed(document: str, wallet: bool) -> policy.Policy:
    """Policies are stored canonical and re-read on every Sign; parse each text once."""
    return policy.parse(document, wallet=wallet)


@dataclass(frozen=True, slots=True)
class Rules:
    tenant: policy.Policy
    wallet: policy.Policy | None  # already carrying the tenant's asset registry


def _policies(s: Session, tenant_id: str, wallet_ids: Sequence[str]) -> tuple[policy.Policy, dict[str, policy.Policy]]:
    """The tenant's policy and those of the given wallets that have one, in one query."""
    rows = s.execute(
        select(SpendPolicy.wallet_id, SpendPolicy.document).where(
            SpendPolicy.tenant_id == tenant_id, SpendPolicy.wallet_id.in_(("", *wallet_ids))
        )
    ).all()
    docs = dict(rows)
    tenant = parsed(docs.pop(""), False) if "" in docs else policy.DEFAULT
    return tenant, {w: policy.inherit(parsed(d, True), tenant) for w, d in docs.items()}


def rules_from(tenant_doc: str | None, wallet_doc: str | None) -> Rules:
    """Rules from the stored documents (read by the caller, e.g. with its lock)."""
    tenant = parsed(tenant_doc, False) if tenant_doc is not None else policy.DEFAULT
    return Rules(tenant, policy.inherit(parsed(wallet_doc, True), tenant) if wallet_doc is not None else None)


def load_rules(s: Session, tenant_id: str, wallet_id: str) -> Rules:
    tenant, wallets = _policies(s, tenant_id, (wallet_id,))
    return Rules(tenant, wallets.get(wallet_id))


@dataclass(frozen=True, slots=True)
class WindowUse:
    reserved: int
    spent: int

    @property
    def used(self) -> int:
        return self.reserved + self.spent


@functools.lru_cache(maxsize=256)
def _measure_statement(column: str, windows: tuple[tuple[str, bool], ...]) -> Select[Any]:
    """The window-sum query for a shape of budgets, built once: the bounds are
    bind parameters, so SQLAlchemy and the database reuse the plan."""
    col = Payment.tenant_id if column == "tenant" else Payment.wallet_id
    columns = []
    for i, (_, rolling) in enumerate(windows):
        # A rolling window has no upper bound here: a concurrent Sign on another
        # worker may have stamped its payment a moment "after" our clock read,
        # and it still counts against what is left.
        start = Payment.created_ms >= bindparam(f"start{i}")
        in_window = start if rolling else and_(start, Payment.created_ms < bindparam(f"end{i}"))
        for label, is_spent in (("reserved", Payment.state != SPENT), ("spent", Payment.state == SPENT)):
            columns.append(func.coalesce(func.sum(case(
                (and_(in_window, is_spent), Payment.amount_common), else_=0)), 0).label(f"w{i}_{label}"))
    return select(*columns).where(col == bindparam("scope_id"), Payment.created_ms >= bindparam("earliest"),
                                  Payment.released_ms.is_(None))


def measure(
    s: Session, column: str, scope_id: str, budgets: Sequence[policy.Budget], now_ms: int
) -> dict[str, WindowUse]:
    """Reserved and spent amounts in each budget's current window: one query for all windows."""
    if not budgets:
        return {}
    bounds = [b.bounds(now_ms) for b in budgets]
    params: dict[str, Any] = {"scope_id": scope_id, "earliest": min(start for start, _ in bounds)}
    for i, (start, end) in enumerate(bounds):
        params[f"start{i}"], params[f"end{i}"] = start, end
    statement = _measure_statement(column, tuple((b.name, bool(b.rolling_ms)) for b in budgets))
    values = s.execute(statement, params).one()._mapping
    return {b.name: WindowUse(int(values[f"w{i}_reserved"]), int(values[f"w{i}_spent"]))
            for i, b in enumerate(budgets)}


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
    for label, scope_id, rules_policy in scopes:
        use = measure(s, "tenant" if label == "tenant" else "wallet", scope_id, rules_policy.budgets, now_ms)
        for b in rules_policy.budgets:
            start, end = b.bounds(now_ms)
            u = use[b.name]
            out.append(WindowReport(label, b.name, "rolling" if b.rolling_ms else "calendar", b.limit,
                                    u.spent, u.reserved, start, end))
    return out
