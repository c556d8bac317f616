"""The Sign batch driver for any database, through a SQLAlchemy session (the
embedded SQLite default, and PostgreSQL outside the event loop)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, insert, select, text, tuple_, update
from sqlalchemy.orm import Session

from teller import audit, policy, spend
from teller.db.models import ApiToken, AuditHead, Payment, SpendPolicy, Tenant, Wallet
from teller.errors import PermissionDenied
from teller.sign import batch_io
from teller.sign.batch_io import Read, Snapshot, WalletRow, Write

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
_NONCES = select(Payment).where(tuple_(Payment.wallet_id, Payment.nonce).in_(bindparam("pairs", expanding=True)))


class SqlBatchIO:
    def answer(self, s: Session, request: batch_io.Request) -> Any:
        """The SQLAlchemy answer to one request of a batch plan (any database)."""
        if isinstance(request, batch_io.Read):
            return self.read(s, request)
        if isinstance(request, batch_io.Measure):
            return self.measure(s, request.scopes, request.now_ms)
        if isinstance(request, batch_io.Write):
            return self.write(s, request)
        if isinstance(request, batch_io.Missing):
            frozen = self._lock_tenant(s, request.tenant_id)
            return frozen, audit.locked_head(s, request.tenant_id)
        if isinstance(request, batch_io.ReleaseKey):
            s.execute(update(Payment).where(Payment.id == request.payment_id).values(idempotency_key=None))
            return None
        assert isinstance(request, batch_io.FindNonce)
        return s.execute(select(Payment).where(Payment.wallet_id == request.wallet_id,
                                               Payment.nonce == request.nonce)).scalar_one_or_none()

    @staticmethod
    def _lock_tenant(s: Session, tenant_id: str) -> bool:
        """Lock the tenant's row for the check-and-reserve; returns its freeze flag."""
        row = s.execute(select(Tenant.state, Tenant.frozen).where(Tenant.id == tenant_id).with_for_update()).first()
        if row is None or row.state != "active":
            raise PermissionDenied("tenant is disabled", reason="tenant_disabled")
        return bool(row.frozen)

    def read(self, s: Session, request: Read) -> Snapshot:
        tenant_ids, wallet_ids, token_ids, keys = request.tenant_ids, request.wallet_ids, request.token_ids, request.keys
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
        nonces = ({(p.wallet_id, p.nonce): p for p in s.scalars(_NONCES, {"pairs": list(request.nonces)})}
                  if request.nonces else {})
        m = request.measure
        return Snapshot(tenants, heads, wallets, tokens, claims,
                        spend.measure_many(s, m.scopes, m.now_ms) if m is not None else None, nonces)

    def measure(self, s: Session, scopes: Mapping[tuple[str, str], Sequence[policy.Budget]],
                now_ms: int) -> dict[tuple[str, str], dict[str, spend.WindowUse]]:
        return spend.measure_many(s, scopes, now_ms)

    def write(self, s: Session, request: Write) -> None:
        conn = s.connection()
        if request.payments:
            conn.execute(insert(Payment), list(request.payments))
        if request.buckets:
            conn.execute(text(spend.BUCKET_ROW_SQL), list(request.buckets))
        audit.write(s, request.events, dict(request.heads))


__all__ = ["SqlBatchIO"]
