"""Channels remember a forced close: when its grace period ends, and the fee
payments of its ``requestClose`` and ``withdraw`` transactions.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None
# Nullable columns only: the previous release serves on this schema unchanged.
expand_only = True


def upgrade() -> None:
    op.add_column("channels", sa.Column("grace_end", sa.BigInteger(), nullable=True))
    op.add_column("channels", sa.Column("force_payment_id", sa.String(36), nullable=True))
    op.add_column("channels", sa.Column("withdraw_payment_id", sa.String(36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("channels") as batch:
        batch.drop_column("withdraw_payment_id")
        batch.drop_column("force_payment_id")
        batch.drop_column("grace_end")
