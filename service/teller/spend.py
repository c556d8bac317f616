"""The policy engine's database side: loading rules and measuring windows.

Everything here runs inside the Sign transaction, after the tenant row is
locked, so what it reads cannot change before the reservation commits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, TextClause, and_, bindparam, case, func, select, text
from sqlalchemy.orm import Session

from teller import policy
from teller.db.models import Payment, SpendPolicy
from teller.errors import FailedPrecondition, InvalidArgument

SPENT = "settled"
# Everything else that is not released (signed, or failed while its
# authorization could still be used) is reserved: see teller.lifecycle.


@functools.lru_cache(maxsize=4096)
def parsed(document: str, wallet: bool) -> policy.Policy:
    """Policies are stored canonical and re-read on every Sign; parse each text once.
    One stored before values were canonical that no longer reads (migration 0006
    flags it) refuses every payment until the operator sets a new one."""
    try:
        return policy.parse(document, wallet=wallet)
    except InvalidArgument as exc:
        raise FailedPrecondition(f"the stored {'wallet' if wallet else 'tenant'} policy must be set again by the "
                                 f"operator: {exc.message}", reason="policy_needs_review") from None


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



@dataclass(frozen=True, slots=True)
class WindowUse:
    reserved: int
    spent: int

    @property
    def used(self) -> int:
        return self.reserved + self.spent


@functools.lru_cache(maxsize=256)
def _scan_statement(column: str, windows: tuple[tuple[str, bool], ...]) -> Select[Any]:
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


def measure_by_scan(
    s: Session, column: str, scope_id: str, budgets: Sequence[policy.Budget], now_ms: int
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


MINUTE_MS = 60_000


def measure(
    s: Session, column: str, scope_id: str, budgets: Sequence[policy.Budget], now_ms: int
) -> dict[str, WindowUse]:
    """Reserved and spent amounts in each budget's current window of one scope, in
    one query whose cost does not grow with the number of payments in the window."""
    return measure_many(s, {(column, scope_id): budgets}, now_ms)[(column, scope_id)]


_FAR = 2**62  # "no upper bound" for a rolling window's buckets


def _windows_select(source: str) -> str:
    """Reserved and spent per window, for windows (k, scope, sid, ms, me, st, ed)
    from ``source``: whole minutes from the buckets, plus the exact payments of a
    rolling window's part-minute edge (a calendar window's edge is empty)."""
    edge = ("SELECT COALESCE(SUM(p.amount_common), 0) FROM payments p WHERE v.scope = '{scope}' "  # noqa: S608
            "AND p.{column} = v.sid AND p.created_ms >= v.st AND p.created_ms < v.ed AND p.released_ms IS NULL "
            "AND p.state {op} '" + SPENT + "'")

    def part(field: str, op: str) -> str:
        whole = (f"(SELECT COALESCE(SUM(b.{field}), 0) FROM spend_buckets b WHERE b.scope = v.scope "  # noqa: S608
                 "AND b.scope_id = v.sid AND b.minute >= v.ms AND b.minute < v.me)")
        return (f"{whole} + ({edge.format(scope='tenant', column='tenant_id', op=op)}) "
                f"+ ({edge.format(scope='wallet', column='wallet_id', op=op)})")

    return f"{source} SELECT v.k, {part('reserved', '<>')} AS reserved, {part('spent', '=')} AS spent FROM v"  # noqa: S608


@functools.lru_cache(maxsize=512)
def _windows_statement(count: int) -> TextClause:
    """Any database: the windows as a VALUES list (the text depends only on ``count``)."""
    rows = ", ".join(f"(:k{i}, :scope{i}, :sid{i}, :ms{i}, :me{i}, :st{i}, :ed{i})" for i in range(count))
    return text(_windows_select(f"WITH v(k, scope, sid, ms, me, st, ed) AS (VALUES {rows})"))


#: PostgreSQL: the windows as one JSON array of rows, so one text (prepared once)
#: serves every batch, and the driver encodes one string rather than seven arrays.
WINDOWS_PG_SQL = _windows_select(
    "WITH v AS (SELECT * FROM json_to_recordset(%s::json) AS u(k int, scope text, sid text, ms bigint, me bigint, "
    "st bigint, ed bigint))")
WINDOW_FIELDS = ("k", "scope", "sid", "ms", "me", "st", "ed")


def window_rows(scopes: Mapping[tuple[str, str], Sequence[policy.Budget]],
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


def measure_many(
    s: Session, scopes: Mapping[tuple[str, str], Sequence[policy.Budget]], now_ms: int
) -> dict[tuple[str, str], dict[str, WindowUse]]:
    """``measure`` for many scopes ((column, scope id) -> budgets) in one query:
    what a batch of Sign calls needs, read once under the batch's tenant locks."""
    names, rows = window_rows(scopes, now_ms)
    if not rows:
        return windows_from(names, scopes, ())
    params = {f"{field}{i}": value for i, row in enumerate(rows)
              for field, value in zip(WINDOW_FIELDS, row, strict=True)}
    return windows_from(names, scopes, s.execute(_windows_statement(len(rows)), params))


def _bucket_row(param: Callable[[str], str]) -> str:
    return ("INSERT INTO spend_buckets (scope, scope_id, minute, reserved, spent) VALUES "  # noqa: S608
            f"({', '.join(param(n) for n in ('scope', 'scope_id', 'minute', 'reserved', 'spent'))}) "
            "ON CONFLICT (scope, scope_id, minute) DO UPDATE SET reserved = spend_buckets.reserved + "
            "EXCLUDED.reserved, spent = spend_buckets.spent + EXCLUDED.spent")


#: One scope's minute bucket, moved by (reserved, spent); batches send one row per
#: (scope, id, minute), tenants before wallets (the lock order everywhere).
BUCKET_ROW_SQL = _bucket_row(lambda n: f":{n}")


def add_to_buckets(s: Session, tenant_id: str, wallet_id: str, created_ms: int, reserved: int, spent: int) -> None:
    """Add (or, with negative amounts, take) a payment's amount in its minute's
    buckets, tenant before wallet (one lock order everywhere)."""
    minute = created_ms // MINUTE_MS
    s.execute(text(BUCKET_ROW_SQL), [
        {"scope": scope, "scope_id": scope_id, "minute": minute, "reserved": reserved, "spent": spent}
        for scope, scope_id in (("tenant", tenant_id), ("wallet", wallet_id))])


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
