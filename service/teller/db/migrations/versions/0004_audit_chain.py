"""Tamper-evident audit log: a hash chain per tenant, with chain heads.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from teller.audit.chain import GENESIS, event_hash

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SELECT_EVENTS = ("SELECT id, tenant_id, at_ms, actor, action, outcome, reason, wallet_id, payment_id, amount, "
                 "asset, network, payee, resource_url, details FROM audit_events ORDER BY id")


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as b:
        b.add_column(sa.Column("seq", sa.BigInteger(), server_default="0", nullable=False))
        b.add_column(sa.Column("prev_hash", sa.String(length=64), server_default="", nullable=False))
        b.add_column(sa.Column("hash", sa.String(length=64), server_default="", nullable=False))
    heads = op.create_table(
        "audit_heads",
        sa.Column("chain", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("chain", name=op.f("pk_audit_heads")),
    )
    # Chain the events already there, oldest first, so the whole log verifies.
    conn = op.get_bind()
    last: dict[str, tuple[int, str]] = {}
    rows = conn.execute(sa.text(SELECT_EVENTS)).mappings()
    updates = []
    for row in rows:
        event = dict(row)
        chain = event["tenant_id"] or ""
        seq, prev = last.get(chain, (0, GENESIS))
        event.update(seq=seq + 1, prev_hash=prev)
        digest = event_hash(event)
        last[chain] = (seq + 1, digest)
        updates.append({"id": event["id"], "seq": seq + 1, "prev_hash": prev, "hash": digest})
    for u in updates:
        conn.execute(sa.text("UPDATE audit_events SET seq = :seq, prev_hash = :prev_hash, hash = :hash "
                             "WHERE id = :id"), u)
    tenants = [r[0] for r in conn.execute(sa.text("SELECT id FROM tenants"))]
    for chain in {"", *tenants, *last}:
        seq, digest = last.get(chain, (0, GENESIS))
        op.bulk_insert(heads, [{"chain": chain, "seq": seq, "hash": digest}])


def downgrade() -> None:
    op.drop_table("audit_heads")
    with op.batch_alter_table("audit_events") as b:
        b.drop_column("hash")
        b.drop_column("prev_hash")
        b.drop_column("seq")
