"""Spend buckets: per-minute sums of unreleased payments per tenant and wallet.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spend_buckets",
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("scope_id", sa.String(length=36), nullable=False),
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column("spent", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "scope_id", "minute", name=op.f("pk_spend_buckets")),
    )
    for scope, column in (("tenant", "tenant_id"), ("wallet", "wallet_id")):
        op.execute(
            "INSERT INTO spend_buckets (scope, scope_id, minute, reserved, spent) "  # noqa: S608 - constants only
            f"SELECT '{scope}', {column}, created_ms / 60000, "
            "SUM(CASE WHEN state <> 'settled' THEN amount_common ELSE 0 END), "
            "SUM(CASE WHEN state = 'settled' THEN amount_common ELSE 0 END) "
            f"FROM payments WHERE released_ms IS NULL GROUP BY {column}, created_ms / 60000"
        )


def downgrade() -> None:
    op.drop_table("spend_buckets")
