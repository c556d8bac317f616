"""Payment fees: what a Teller-signed transaction may cost its wallet in fees,
reserved with the payment and trued up to the real fee when it settles.

Revision ID: 0007
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payments") as b:
        # Fee-token base units: the most the transaction can cost (gas limit x max fee per gas).
        b.add_column(sa.Column("fee_max", sa.BigInteger(), server_default="0", nullable=False))
        # The part of amount_common that is fee (the reservation, then the real fee).
        b.add_column(sa.Column("fee_common", sa.BigInteger(), server_default="0", nullable=False))
        # Fee-token base units the mined transaction cost; NULL until it is known.
        b.add_column(sa.Column("fee_paid", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payments") as b:
        b.drop_column("fee_paid")
        b.drop_column("fee_common")
        b.drop_column("fee_max")
