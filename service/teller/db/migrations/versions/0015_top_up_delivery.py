"""When the server took each channel top-up (``channel_top_ups.delivered_ms``):
until then a voucher may not use the deposit it adds.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None
# A nullable column and an index: the previous release serves on this schema unchanged
# (its top-ups are written undelivered, and count as delivered once the reconciler sees them mined).
expand_only = True


def upgrade() -> None:
    with op.batch_alter_table("channel_top_ups") as batch:
        batch.add_column(sa.Column("delivered_ms", sa.BigInteger(), nullable=True))
    # Top-ups made before delivery was recorded were handed to the server by the release
    # that made them: none of them holds a voucher back.
    op.execute("UPDATE channel_top_ups SET delivered_ms = created_ms")
    op.create_index("ix_channel_top_ups_channel", "channel_top_ups", ["channel", "delivered_ms"])


def downgrade() -> None:
    op.drop_index("ix_channel_top_ups_channel", table_name="channel_top_ups")
    with op.batch_alter_table("channel_top_ups") as batch:
        batch.drop_column("delivered_ms")
