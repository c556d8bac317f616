"""The database side of one Sign batch: what it reads under its locks and what
it writes, in as few round trips as the database allows.

Two implementations with one shape. ``SqlBatchIO`` speaks SQLAlchemy and works
on any database (the embedded SQLite default). ``PgBatchIO`` sends the same
statements through psycopg's pipeline on the batch's own connection: the lock
and the reads that do not depend on one another travel together, the window
query alone (it needs the policies just read), and every write together, so a
batch costs three round trips plus BEGIN/COMMIT whatever its size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from psycopg.rows import namedtuple_row
from sqlalchemy import bindparam, insert, select, text
from sqlalchemy.orm import Session

from teller import audit, policy, spend
from teller.db.models import ApiToken, AuditEvent, AuditHead, Payment, SpendPolicy, Tenant, Wallet


class WalletRow(NamedTuple):
    id: str
    tenant_id: str
    address: str
    state: str
    frozen: bool
    kek_version: str
    wrapped_data_key: bytes
    key_ciphertext: bytes
    tenant_doc: str | None
    wallet_doc: str | None


@dataclass(slots=True)
class Snapshot:
    """What a batch read with its tenants locked (locked tenants are in ``heads``)."""

    tenants: dict[str, Any]  # id -> (id, state, frozen)
    heads: dict[str, tuple[int, str]]
    wallets: dict[str, WalletRow]
    tokens: dict[str, Any]  # id -> (id, tenant_id, secret_hash, revoked_ms)
    claims: dict[tuple[str, str], Any]  # (tenant, idempotency key) -> payment row


class BatchIO(Protocol):
    def read(self, s: Session, tenant_ids: Sequence[str], wallet_ids: Sequence[str], token_ids: Sequence[str],
             keys: Sequence[str]) -> Snapshot: ...

    def measure(self, s: Session, scopes: Mapping[tuple[str, str], Sequence[policy.Budget]],
                now_ms: int) -> dict[tuple[str, str], dict[str, spend.WindowUse]]: ...

    def write(self, s: Session, payments: Sequence[dict[str, Any]], buckets: Sequence[dict[str, Any]],
              events: Sequence[dict[str, Any]], heads: Mapping[str, tuple[int, str]]) -> None: ...


# -- any database, through SQLAlchemy --------------------------------------

# The tenants of a batch and their audit chain heads, locked in id order: every
# batch takes its locks in the same order, so two batches never deadlock.
_LOCK = (
    select(Tenant.id, Tenant.state, Tenant.frozen, AuditHead.seq, AuditHead.hash)
    .join(AuditHead, AuditHead.chain == Tenant.id)
    .where(Tenant.id.in_(bindparam("tenant_ids", expanding=True)))
    .order_by(Tenant.id)
    .with_for_update(of=[Tenant, AuditHead])
)
_WALLETS = select(
    Wallet.id, Wallet.tenant_id, Wallet.address, Wallet.state, Wallet.frozen, Wallet.kek_version,
    Wallet.wrapped_data_key, Wallet.key_ciphertext,
    select(SpendPolicy.document).where(SpendPolicy.tenant_id == Wallet.tenant_id, SpendPolicy.wallet_id == "")
    .scalar_subquery().label("tenant_doc"),
    select(SpendPolicy.document).where(SpendPolicy.tenant_id == Wallet.tenant_id, SpendPolicy.wallet_id == Wallet.id)
    .scalar_subquery().label("wallet_doc"),
).where(Wallet.id.in_(bindparam("wallet_ids", expanding=True)))
_TOKENS = (select(ApiToken.id, ApiToken.tenant_id, ApiToken.secret_hash, ApiToken.revoked_ms)
           .where(ApiToken.id.in_(bindparam("token_ids", expanding=True))))
_CLAIMS = select(Payment).where(Payment.tenant_id.in_(bindparam("tenant_ids", expanding=True)),
                                Payment.idempotency_key.in_(bindparam("keys", expanding=True)))


class SqlBatchIO:
    def read(self, s: Session, tenant_ids: Sequence[str], wallet_ids: Sequence[str], token_ids: Sequence[str],
             keys: Sequence[str]) -> Snapshot:
        tenants: dict[str, Any] = {}
        heads: dict[str, tuple[int, str]] = {}
        for r in s.execute(_LOCK, {"tenant_ids": list(tenant_ids)}):
            tenants[r.id] = r
            heads[r.id] = (int(r.seq), str(r.hash))
        wallets = {r.id: WalletRow(*r) for r in s.execute(_WALLETS, {"wallet_ids": list(wallet_ids)})}
        tokens = {r.id: r for r in s.execute(_TOKENS, {"token_ids": list(token_ids)})} if token_ids else {}
        claims = ({(p.tenant_id, p.idempotency_key or ""): p
                   for p in s.scalars(_CLAIMS, {"tenant_ids": list(tenant_ids), "keys": list(keys)})}
                  if keys else {})
        return Snapshot(tenants, heads, wallets, tokens, claims)

    def measure(self, s: Session, scopes: Mapping[tuple[str, str], Sequence[policy.Budget]],
                now_ms: int) -> dict[tuple[str, str], dict[str, spend.WindowUse]]:
        return spend.measure_many(s, scopes, now_ms)

    def write(self, s: Session, payments: Sequence[dict[str, Any]], buckets: Sequence[dict[str, Any]],
              events: Sequence[dict[str, Any]], heads: Mapping[str, tuple[int, str]]) -> None:
        conn = s.connection()
        if payments:
            conn.execute(insert(Payment), list(payments))
        if buckets:
            conn.execute(text(spend.BUCKET_ROW_SQL), list(buckets))
        audit.write(s, events, dict(heads))


# -- PostgreSQL, through psycopg's pipeline ----------------------------------

_PG_LOCK = ("SELECT t.id, t.state, t.frozen, h.seq, h.hash FROM tenants t JOIN audit_heads h ON h.chain = t.id "
            "WHERE t.id = ANY(%s::text[]) ORDER BY t.id FOR UPDATE OF t, h")
_PG_WALLETS = (
    "SELECT w.id, w.tenant_id, w.address, w.state, w.frozen, w.kek_version, w.wrapped_data_key, w.key_ciphertext, "
    "(SELECT document FROM spend_policies WHERE tenant_id = w.tenant_id AND wallet_id = ''), "
    "(SELECT document FROM spend_policies WHERE tenant_id = w.tenant_id AND wallet_id = w.id) "
    "FROM wallets w WHERE w.id = ANY(%s::text[])")
_PG_TOKENS = "SELECT id, tenant_id, secret_hash, revoked_ms FROM api_tokens WHERE id = ANY(%s::text[])"
_PAYMENT_COLUMNS = tuple(c.key for c in Payment.__table__.columns)
_PG_CLAIMS = (f"SELECT {', '.join(_PAYMENT_COLUMNS)} FROM payments "  # noqa: S608 - the model's columns
              "WHERE tenant_id = ANY(%s::text[]) AND idempotency_key = ANY(%s::text[])")


def _named_insert(table: str, columns: Sequence[str]) -> str:
    return (f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 - the model's columns
            f"VALUES ({', '.join(f'%({c})s' for c in columns)})")


_PG_INSERT_PAYMENT = _named_insert("payments", _PAYMENT_COLUMNS)
_PG_INSERT_EVENT = _named_insert("audit_events", tuple(c.key for c in AuditEvent.__table__.columns if c.key != "id"))
_PG_HEAD = "UPDATE audit_heads SET seq = %(seq)s, hash = %(hash)s WHERE chain = %(c)s"


class PgBatchIO:
    @staticmethod
    def _raw(s: Session) -> Any:
        # The psycopg connection under the session's own transaction (psycopg
        # begins it with the first statement; the session commits it).
        return s.connection().connection.driver_connection

    def read(self, s: Session, tenant_ids: Sequence[str], wallet_ids: Sequence[str], token_ids: Sequence[str],
             keys: Sequence[str]) -> Snapshot:
        raw = self._raw(s)
        with raw.pipeline():
            lock = raw.cursor(row_factory=namedtuple_row).execute(_PG_LOCK, (list(tenant_ids),))
            wallets = raw.cursor().execute(_PG_WALLETS, (list(wallet_ids),))
            tokens = raw.cursor(row_factory=namedtuple_row).execute(_PG_TOKENS, (list(token_ids),)) if token_ids \
                else None
            claims = raw.cursor(row_factory=namedtuple_row).execute(
                _PG_CLAIMS, (list(tenant_ids), list(keys))) if keys else None
        tenants: dict[str, Any] = {}
        heads: dict[str, tuple[int, str]] = {}
        for r in lock.fetchall():
            tenants[r.id] = r
            heads[r.id] = (int(r.seq), str(r.hash))
        return Snapshot(
            tenants, heads, {r[0]: WalletRow(*r) for r in wallets.fetchall()},
            {r.id: r for r in tokens.fetchall()} if tokens is not None else {},
            {(p.tenant_id, p.idempotency_key): p for p in claims.fetchall()} if claims is not None else {})

    def measure(self, s: Session, scopes: Mapping[tuple[str, str], Sequence[policy.Budget]],
                now_ms: int) -> dict[tuple[str, str], dict[str, spend.WindowUse]]:
        names, rows = spend.window_rows(scopes, now_ms)
        if not rows:
            return spend.windows_from(names, scopes, ())
        columns = [list(c) for c in zip(*rows, strict=True)]
        return spend.windows_from(names, scopes, self._raw(s).execute(spend.WINDOWS_PG_SQL, columns).fetchall())

    def write(self, s: Session, payments: Sequence[dict[str, Any]], buckets: Sequence[dict[str, Any]],
              events: Sequence[dict[str, Any]], heads: Mapping[str, tuple[int, str]]) -> None:
        raw = self._raw(s)
        with raw.pipeline(), raw.cursor() as cur:
            if payments:
                cur.executemany(_PG_INSERT_PAYMENT, payments)
            if buckets:
                cur.executemany(spend.BUCKET_ROW_PG_SQL, buckets)
            if events:
                cur.executemany(_PG_INSERT_EVENT, events)
            if heads:
                cur.executemany(_PG_HEAD, [{"c": c, "seq": seq, "hash": h} for c, (seq, h) in heads.items()])


def for_dialect(name: str) -> BatchIO:
    return PgBatchIO() if name == "postgresql" else SqlBatchIO()


__all__ = ["BatchIO", "PgBatchIO", "Snapshot", "SqlBatchIO", "WalletRow", "for_dialect"]
