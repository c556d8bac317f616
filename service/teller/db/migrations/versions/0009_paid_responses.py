"""Paid responses: what a paid Pay got back, kept for an idempotent retry.

Revision ID: 0009
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "paid_responses",
        sa.Column("payment_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("headers_json", sa.Text(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"],
                                name=op.f("fk_paid_responses_payment_id_payments")),
        sa.PrimaryKeyConstraint("payment_id", name=op.f("pk_paid_responses")),
    )


def downgrade() -> None:
    op.drop_table("paid_responses")
