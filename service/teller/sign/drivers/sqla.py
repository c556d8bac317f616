"""The Sign batch driver for any database, through a SQLAlchemy session (the
embedded SQLite default, and PostgreSQL outside the event loop)."""

from __future__ import annotations

from sqlalchemy import bindparam, insert, select, text, tuple_, update
from sqlalchemy.orm import Session

from teller.audit import events as audit
from teller.channels.rules import ChannelState
from teller.db.models import (
    ApiToken,
    AuditHead,
    Base,
    Channel,
    Payment,
    SpendPolicy,
    Tenant,
    Wallet,
)
from teller.sign.batch_io import (
    ChannelRow,
    FindNonce,
    LockChannel,
    Measure,
    PaymentRow,
    RaiseDeposit,
    Read,
    ReleaseKey,
    Snapshot,
    TenantRow,
    TokenRow,
    TopUpChannel,
    WalletRow,
    Windows,
    Write,
)
from teller.spend.ledger import BUCKET_ROW_SQL
from teller.spend.store import measure_many

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
_PAYMENT_ROW = select(*(Payment.__table__.c[name] for name in PaymentRow._fields))
_CLAIMS = _PAYMENT_ROW.where(Payment.tenant_id.in_(bindparam("tenant_ids", expanding=True)),
                             Payment.idempotency_key.in_(bindparam("keys", expanding=True)))
_NONCES = _PAYMENT_ROW.where(tuple_(Payment.wallet_id, Payment.nonce).in_(bindparam("pairs", expanding=True)))
_CHANNELS = (select(*(Channel.__table__.c[name] for name in ChannelRow._fields))
             .where(Channel.tenant_id.in_(bindparam("tenant_ids", expanding=True)),
                    Channel.state != ChannelState.CLOSED.value))
_NONCE = _PAYMENT_ROW.where(Payment.wallet_id == bindparam("wallet_id"), Payment.nonce == bindparam("nonce"))


class SqlBatchIO:
    """Answers one batch's requests in the transaction of session ``s`` (a
    ``batch_io.Driver``)."""

    __slots__ = ("s",)

    def __init__(self, s: Session) -> None:
        self.s = s

    def read(self, request: Read) -> Snapshot:
        s = self.s
        tenant_ids, wallet_ids, token_ids, keys = request.tenant_ids, request.wallet_ids, request.token_ids, request.keys
        tenants: dict[str, TenantRow] = {}
        heads: dict[str, tuple[int, str]] = {}
        for r in s.execute(_LOCK, {"tenant_ids": list(tenant_ids)}):
            tenants[r.id] = TenantRow(r.id, r.state, r.frozen)
            heads[r.id] = (int(r.seq), str(r.hash))
        wallets = {r.id: WalletRow(*r) for r in s.execute(_WALLETS, {"wallet_ids": list(wallet_ids)})}
        tokens = ({r.id: TokenRow(*r) for r in s.execute(_TOKENS, {"token_ids": list(token_ids)})}
                  if token_ids else {})
        claims = ({(p.tenant_id, p.idempotency_key or ""): PaymentRow(*p)
                   for p in s.execute(_CLAIMS, {"tenant_ids": list(tenant_ids), "keys": list(keys)})}
                  if keys else {})
        nonces = ({(p.wallet_id, p.nonce): PaymentRow(*p) for p in s.execute(_NONCES, {"pairs": list(request.nonces)})}
                  if request.nonces else {})
        channels: dict[str, list[ChannelRow]] = {t: [] for t in request.channel_tenants}
        if request.channel_tenants:
            for c in s.execute(_CHANNELS, {"tenant_ids": list(request.channel_tenants)}):
                channels[c.tenant_id].append(ChannelRow(*c))
        m = request.measure
        return Snapshot(tenants, heads, wallets, tokens, claims,
                        measure_many(s, m.scopes, m.now_ms) if m is not None else None, nonces, channels)

    def measure(self, request: Measure) -> Windows:
        return measure_many(self.s, request.scopes, request.now_ms)

    def release_key(self, request: ReleaseKey) -> None:
        self.s.execute(update(Payment).where(Payment.id == request.payment_id).values(idempotency_key=None))

    def find_nonce(self, request: FindNonce) -> PaymentRow | None:
        row = self.s.execute(_NONCE, {"wallet_id": request.wallet_id, "nonce": request.nonce}).first()
        return PaymentRow(*row) if row is not None else None

    def lock_channel(self, request: LockChannel) -> TopUpChannel | None:
        row = self.s.execute(select(Channel.id, Channel.wallet_id, Channel.state, Channel.deposit, Channel.cumulative)
                             .where(Channel.id == request.channel, Channel.tenant_id == request.tenant_id)
                             .with_for_update()).first()
        return TopUpChannel(*row) if row is not None else None

    def raise_deposit(self, request: RaiseDeposit) -> bool:
        moved = self.s.execute(update(Channel).where(Channel.id == request.channel,
                                                     Channel.deposit == request.before,
                                                     Channel.state == ChannelState.OPEN.value)
                               .values(deposit=request.after, updated_ms=request.now_ms)
                               .execution_options(synchronize_session=False))
        return moved.rowcount == 1  # type: ignore[attr-defined]

    def write(self, request: Write) -> None:
        s = self.s
        conn = s.connection()
        if request.payments:
            conn.execute(insert(Payment), list(request.payments))
        for table, row in request.rows:
            conn.execute(insert(Base.metadata.tables[table]), [row])
        if request.buckets:
            conn.execute(text(BUCKET_ROW_SQL), list(request.buckets))
        audit.write(s, request.events, dict(request.heads))


__all__ = ["SqlBatchIO"]
