"""MPP session payment channels and their vouchers.

Revision ID: 0011
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0008"
branch_labels = None
depends_on = None
# New tables only: the previous release serves on this schema unchanged.
expand_only = True


def upgrade() -> None:
    op.create_table(
        "channels",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("wallet_id", sa.String(length=36), nullable=False),
        sa.Column("network", sa.String(length=64), nullable=False),
        sa.Column("escrow", sa.String(length=42), nullable=False),
        sa.Column("channel_id", sa.String(length=66), nullable=False),
        sa.Column("token", sa.String(length=42), nullable=False),
        sa.Column("payee", sa.String(length=42), nullable=False),
        sa.Column("descriptor", sa.Text(), nullable=False),
        sa.Column("deposit", sa.BigInteger(), nullable=False),
        sa.Column("cumulative", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("open_payment_id", sa.String(length=36), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("cumulative >= 0 AND cumulative <= deposit", name="ck_channels_within_deposit"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_channels_tenant_id_tenants")),
        sa.ForeignKeyConstraint(["wallet_id"], ["wallets.id"], name=op.f("fk_channels_wallet_id_wallets")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channels")),
        sa.UniqueConstraint("network", "escrow", "channel_id", name=op.f("uq_channels_network_escrow_channel_id")),
    )
    op.create_index("ix_channels_tenant_state", "channels", ["tenant_id", "state"])
    op.create_table(
        "vouchers",
        sa.Column("channel", sa.String(length=36), nullable=False),
        sa.Column("cumulative", sa.BigInteger(), nullable=False),
        sa.Column("signature", sa.String(length=132), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["channel"], ["channels.id"], name=op.f("fk_vouchers_channel_channels")),
        sa.PrimaryKeyConstraint("channel", "cumulative", name=op.f("pk_vouchers")),
        sa.UniqueConstraint("tenant_id", "idempotency_key", name=op.f("uq_vouchers_tenant_id_idempotency_key")),
    )


def downgrade() -> None:
    op.drop_table("vouchers")
    op.drop_index("ix_channels_tenant_state", table_name="channels")
    op.drop_table("channels")
