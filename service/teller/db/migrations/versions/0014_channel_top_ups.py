"""Top-ups of MPP session channels: each one a payment that raised a channel's deposit.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None
# A new table only: the previous release serves on this schema unchanged.
expand_only = True


def upgrade() -> None:
    # payment_id names the payment (no foreign key: a Sign batch writes a payment's
    # rows before the payment itself, as it does the channel of an open).
    op.create_table(
        "channel_top_ups",
        sa.Column("payment_id", sa.String(length=36), nullable=False),
        sa.Column("channel", sa.String(length=36), nullable=False),
        sa.Column("added", sa.BigInteger(), nullable=False),
        sa.Column("deposit_before", sa.BigInteger(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("added > 0", name="ck_channel_top_ups_positive"),
        sa.ForeignKeyConstraint(["channel"], ["channels.id"], name=op.f("fk_channel_top_ups_channel_channels")),
        sa.PrimaryKeyConstraint("payment_id", name=op.f("pk_channel_top_ups")),
    )


def downgrade() -> None:
    op.drop_table("channel_top_ups")
