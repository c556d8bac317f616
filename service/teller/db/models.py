"""SQLAlchemy 2.0 models. Schema changes go through Alembic (``teller migrate``).

Times are integer epoch milliseconds (UTC) so SQLite and PostgreSQL compare
them identically. Amounts are atomic token units in BIGINT; larger amounts are
refused at parse time rather than silently rounded.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
AutoId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="active")
    # Read inside every Sign transaction, so a freeze holds on all replicas at once.
    frozen: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The operator's words with the last freeze, shown by `teller admin tenant list`.
    frozen_reason: Mapped[str] = mapped_column(String(500), default="", server_default="")
    created_ms: Mapped[int] = mapped_column(BigInteger)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    # SHA-256 of the token's secret part; the token itself is never stored.
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    created_ms: Mapped[int] = mapped_column(BigInteger)
    revoked_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Wallet(Base):
    __tablename__ = "wallets"
    __table_args__ = (UniqueConstraint("tenant_id", "address"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    address: Mapped[str] = mapped_column(String(42))
    state: Mapped[str] = mapped_column(String(16), default="active")
    frozen: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    frozen_reason: Mapped[str] = mapped_column(String(500), default="", server_default="")
    kek_version: Mapped[str] = mapped_column(String(64))
    wrapped_data_key: Mapped[bytes] = mapped_column(LargeBinary)
    key_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class WalletAddress(Base):
    """Which tenant holds each wallet address. One key in two tenants would be two
    budgets over one wallet: the primary key refuses the second (the check in
    ``Admin.create_wallet`` gives it a clear error; this is the backstop)."""

    __tablename__ = "wallet_addresses"
    address: Mapped[str] = mapped_column(String(42), primary_key=True)  # checksummed, as wallets.address
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    wallet_id: Mapped[str] = mapped_column(String(36))


class SpendPolicy(Base):
    """A policy document for a tenant (wallet_id = "") or one of its wallets."""

    __tablename__ = "spend_policies"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    wallet_id: Mapped[str] = mapped_column(String(36), primary_key=True, default="")
    document: Mapped[str] = mapped_column(Text)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (
        # One use per authorization nonce, and per idempotency key: the
        # database refuses a duplicate even if application logic slipped.
        UniqueConstraint("wallet_id", "nonce"),
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_payments_tenant_created", "tenant_id", "created_ms"),
        Index("ix_payments_wallet_created", "wallet_id", "created_ms"),
        Index("ix_payments_live", "released_ms", "state", "valid_before"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    wallet_id: Mapped[str] = mapped_column(ForeignKey("wallets.id"))
    protocol: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    scheme: Mapped[str] = mapped_column(String(32))
    network: Mapped[str] = mapped_column(String(64))
    asset: Mapped[str] = mapped_column(String(64))
    # The token's EIP-712 domain, needed again to sign a cancelAuthorization.
    asset_name: Mapped[str] = mapped_column(String(100), default="", server_default="")
    asset_version: Mapped[str] = mapped_column(String(100), default="", server_default="")
    pay_to: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(BigInteger)
    # The amount in the tenant policy's common unit: what budgets count.
    amount_common: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Fees the wallet pays for a transaction Teller signs (Tempo), in fee-token base
    # units: the most it can cost (reserved), and what it cost once mined. The
    # fee's share of amount_common is fee_common (reserved, then trued up).
    fee_max: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    fee_common: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    fee_paid: Mapped[int | None] = mapped_column(BigInteger, nullable=True, default=None)
    resource_url: Mapped[str] = mapped_column(Text, default="")
    nonce: Mapped[str] = mapped_column(String(66))
    valid_before: Mapped[int] = mapped_column(BigInteger)
    # signed -> settled | failed | expired | voided (teller.lifecycle holds the rules).
    state: Mapped[str] = mapped_column(String(16), default="signed")
    state_reason: Mapped[str] = mapped_column(String(200), default="", server_default="")
    # The transaction that used (settled) or canceled the authorization.
    tx_hash: Mapped[str] = mapped_column(String(66), default="", server_default="")
    # Set when the amount stops counting against budgets (expired, voided, or a
    # failed authorization proven unusable). Budgets count rows where it is NULL.
    released_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True, default=None)
    updated_ms: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    header_name: Mapped[str] = mapped_column(String(64))
    # The signed proof, kept so an idempotent retry returns it unchanged.
    # It authorizes only a transfer to pay_to; it is not key material.
    header_value: Mapped[str] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    idempotency_expires_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    created_ms: Mapped[int] = mapped_column(BigInteger)


class PaidResponse(Base):
    """The response a paid ``Pay`` got, kept (when the operator set
    ``keep_paid_response_bytes``) so a retry with the same idempotency key of a
    settled payment is answered without paying or re-sending the proof."""

    __tablename__ = "paid_responses"
    payment_id: Mapped[str] = mapped_column(ForeignKey("payments.id"), primary_key=True)
    status: Mapped[int] = mapped_column(Integer)
    headers_json: Mapped[str] = mapped_column(Text)  # [[name, value], ...] as handed to the caller
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class SpendBucket(Base):
    """Unreleased payment amounts per scope (tenant or wallet) and minute of
    ``created_ms``, kept in the same transactions that write payments and move
    them along their lifecycle, so a budget window is summed from a few hundred
    buckets instead of every payment in it."""

    __tablename__ = "spend_buckets"
    scope: Mapped[str] = mapped_column(String(8), primary_key=True)  # "tenant" | "wallet"
    scope_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    minute: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # created_ms // 60000
    reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    spent: Mapped[int] = mapped_column(BigInteger, default=0)


class ChainCursor(Base):
    """How far the reconciler has scanned a network's authorization events (row
    ``<network>``) and its channels' escrow events (row ``channels:<network>``)."""

    __tablename__ = "chain_cursors"
    network: Mapped[str] = mapped_column(String(64), primary_key=True)
    block: Mapped[int] = mapped_column(BigInteger)
    # A lease only spares replicas duplicate work; correctness never depends on
    # it, since every state change is a guarded UPDATE.
    lease_owner: Mapped[str] = mapped_column(String(64), default="", server_default="")
    lease_until_ms: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_tenant_id", "tenant_id", "id"),)
    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(100), default="")
    wallet_id: Mapped[str] = mapped_column(String(36), default="")
    payment_id: Mapped[str] = mapped_column(String(36), default="")
    amount: Mapped[str] = mapped_column(String(80), default="")
    asset: Mapped[str] = mapped_column(String(64), default="")
    network: Mapped[str] = mapped_column(String(64), default="")
    payee: Mapped[str] = mapped_column(String(64), default="")
    resource_url: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[str] = mapped_column(Text, default="{}")
    # The per-tenant hash chain (teller.audit.chain), written in the event's own transaction.
    seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    prev_hash: Mapped[str] = mapped_column(String(64), default="", server_default="")
    hash: Mapped[str] = mapped_column(String(64), default="", server_default="")


class AuditHead(Base):
    """The newest event of each audit chain. Locked while an event is appended,
    so concurrent writers of one tenant's log line up instead of forking it."""

    __tablename__ = "audit_heads"
    chain: Mapped[str] = mapped_column(String(36), primary_key=True)  # tenant id, or "" for none
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class AuditKey(Base):
    """Teller's own Ed25519 keys that sign exported audit chain heads, sealed
    under the KEK like wallet keys. The newest unretired one signs; retired ones
    stay so that their public keys can still be looked up."""

    __tablename__ = "audit_keys"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # first 16 hex of SHA-256(public key)
    public_key: Mapped[str] = mapped_column(String(64))  # raw 32 bytes, hex
    kek_version: Mapped[str] = mapped_column(String(64))
    wrapped_data_key: Mapped[bytes] = mapped_column(LargeBinary)
    key_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    retired_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
class Operator(Base):
    """A named operator credential for AdminService (``tlo_<id>.<secret>``): each
    call is audited by the name, and revoking it ends it on every replica at once.
    The configured ``admin_token`` is the bootstrap operator and has no row."""

    __tablename__ = "operators"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # SHA-256 of the credential's secret part; the credential itself is never stored.
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[str] = mapped_column(String(80))
    revoked_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Channel(Base):
    """An MPP session payment channel (TIP-1034 v2) a wallet opened: its deposit,
    and the highest voucher Teller signed on it (``cumulative``). The channel's
    row is locked while a voucher is signed; the checks keep every total within
    the deposit even if application logic slipped."""

    __tablename__ = "channels"
    __table_args__ = (
        UniqueConstraint("network", "escrow", "channel_id"),
        Index("ix_channels_tenant_state", "tenant_id", "state"),
        CheckConstraint("cumulative >= 0 AND cumulative <= deposit", name="ck_channels_within_deposit"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # Teller's handle
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    wallet_id: Mapped[str] = mapped_column(ForeignKey("wallets.id"))
    network: Mapped[str] = mapped_column(String(64))  # CAIP-2
    escrow: Mapped[str] = mapped_column(String(42))  # checksummed
    channel_id: Mapped[str] = mapped_column(String(66))  # 0x + 64 lowercase hex: the escrow's id
    token: Mapped[str] = mapped_column(String(42))
    payee: Mapped[str] = mapped_column(String(42))
    # The descriptor every escrow call and credential names (teller.mpp.channel.ChannelDescriptor.to_json).
    descriptor: Mapped[str] = mapped_column(Text)
    deposit: Mapped[int] = mapped_column(BigInteger)
    cumulative: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[str] = mapped_column(String(16))  # teller.channels.rules.ChannelState
    # The payment that opened it (its deposit's reservation; the reconciler follows its transaction).
    open_payment_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # Where on chain the last escrow event the reconciler applied to it was
    # (teller.mpp.channel_events.EventLog.position); events at or before it change
    # nothing, so each applies once and in chain order (teller.channels.lifecycle).
    last_event: Mapped[int | None] = mapped_column(BigInteger, nullable=True, default=None)
    # A forced close (teller.channels.forced): the chain time (unix seconds) from which
    # the payer may withdraw, from the escrow's CloseRequested; the fee payments of the
    # requestClose and withdraw transactions. A live withdraw payment is the one
    # reconciler's claim to send it.
    grace_end: Mapped[int | None] = mapped_column(BigInteger, nullable=True, default=None)
    force_payment_id: Mapped[str | None] = mapped_column(String(36), nullable=True, default=None)
    withdraw_payment_id: Mapped[str | None] = mapped_column(String(36), nullable=True, default=None)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class Voucher(Base):
    """Every voucher signed, by channel and total: the primary key refuses a
    second voucher for one total, so two workers can never both sign it."""

    __tablename__ = "vouchers"
    __table_args__ = (UniqueConstraint("tenant_id", "idempotency_key"),)
    channel: Mapped[str] = mapped_column(ForeignKey("channels.id"), primary_key=True)
    cumulative: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    signature: Mapped[str] = mapped_column(String(132))  # 0x + r, s, v
    # The Sign call's key: its retry gets this voucher again, not one more unit.
    tenant_id: Mapped[str] = mapped_column(String(36))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class ChannelTopUp(Base):
    """A payment that raised a channel's deposit by ``added`` (a ``topUp`` on the
    escrow). Its transaction never mined, the deposit goes back down. Until the
    server took it (``delivered_ms``, or its transaction mined), the server does
    not know the deposit it adds, and no voucher may use it."""

    __tablename__ = "channel_top_ups"
    __table_args__ = (CheckConstraint("added > 0", name="ck_channel_top_ups_positive"),
                      Index("ix_channel_top_ups_channel", "channel", "delivered_ms"))
    payment_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    channel: Mapped[str] = mapped_column(ForeignKey("channels.id"))
    added: Mapped[int] = mapped_column(BigInteger)
    deposit_before: Mapped[int] = mapped_column(BigInteger)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    delivered_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True, default=None)


class SchemaRevision(Base):
    """Each migration step applied, and whether it declared itself expand-only:
    an older release reads this to know it may serve on a schema one step ahead
    (``teller.db.migrate``), since it lacks that step's module."""

    __tablename__ = "schema_revisions"
    revision: Mapped[str] = mapped_column(String(64), primary_key=True)
    down_revision: Mapped[str | None] = mapped_column(String(200), nullable=True)
    expand_only: Mapped[bool] = mapped_column(Boolean)
    applied_ms: Mapped[int] = mapped_column(BigInteger)
