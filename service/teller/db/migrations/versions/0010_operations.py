"""Operations: freeze reasons on tenants and wallets; audit signing keys.

Revision ID: 0010
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("tenants", "wallets"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("frozen_reason", sa.String(length=500), nullable=False, server_default=""))
    op.create_table(
        "audit_keys",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("kek_version", sa.String(length=64), nullable=False),
        sa.Column("wrapped_data_key", sa.LargeBinary(), nullable=False),
        sa.Column("key_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("retired_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_keys")),
    )


def downgrade() -> None:
    op.drop_table("audit_keys")
    for table in ("tenants", "wallets"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("frozen_reason")
