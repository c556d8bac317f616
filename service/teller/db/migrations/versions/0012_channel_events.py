"""Channels remember the last escrow event the reconciler applied to them.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None
# A nullable column only: the previous release serves on this schema unchanged.
expand_only = True


def upgrade() -> None:
    op.add_column("channels", sa.Column("last_event", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("channels") as batch:
        batch.drop_column("last_event")
