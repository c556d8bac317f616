"""Named operator credentials, and the record of applied schema steps.

Revision ID: 0008
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0010"
branch_labels = None
depends_on = None
# Only adds tables: the release before this one keeps working on the result.
expand_only = True


def upgrade() -> None:
    op.create_table(
        "operators",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.Column("revoked_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operators")),
        sa.UniqueConstraint("name", name=op.f("uq_operators_name")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_operators_secret_hash")),
    )
    op.create_table(
        "schema_revisions",
        sa.Column("revision", sa.String(length=64), nullable=False),
        sa.Column("down_revision", sa.String(length=200), nullable=True),
        sa.Column("expand_only", sa.Boolean(), nullable=False),
        sa.Column("applied_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("revision", name=op.f("pk_schema_revisions")),
    )


def downgrade() -> None:
    op.drop_table("schema_revisions")
    op.drop_table("operators")
