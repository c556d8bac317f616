"""Payment lifecycle: outcome, settlement transaction, budget release; chain cursors.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payments") as b:
        b.add_column(sa.Column("state_reason", sa.String(length=200), server_default="", nullable=False))
        b.add_column(sa.Column("tx_hash", sa.String(length=66), server_default="", nullable=False))
        b.add_column(sa.Column("released_ms", sa.BigInteger(), nullable=True))
        b.add_column(sa.Column("updated_ms", sa.BigInteger(), server_default="0", nullable=False))
        b.add_column(sa.Column("asset_name", sa.String(length=100), server_default="", nullable=False))
        b.add_column(sa.Column("asset_version", sa.String(length=100), server_default="", nullable=False))
        b.create_index("ix_payments_live", ["released_ms", "state", "valid_before"], unique=False)
    op.execute("UPDATE payments SET updated_ms = created_ms")
    op.create_table(
        "chain_cursors",
        sa.Column("network", sa.String(length=64), nullable=False),
        sa.Column("block", sa.BigInteger(), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), server_default="", nullable=False),
        sa.Column("lease_until_ms", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("network", name=op.f("pk_chain_cursors")),
    )


def downgrade() -> None:
    op.drop_table("chain_cursors")
    # 0002 counted exactly the states signed and settled. A failed payment whose
    # authorization may still be used must keep holding its budget there too.
    op.execute("UPDATE payments SET state = 'signed' WHERE state = 'failed' AND released_ms IS NULL")
    with op.batch_alter_table("payments") as b:
        b.drop_index("ix_payments_live")
        b.drop_column("asset_version")
        b.drop_column("asset_name")
        b.drop_column("updated_ms")
        b.drop_column("released_ms")
        b.drop_column("tx_hash")
        b.drop_column("state_reason")
