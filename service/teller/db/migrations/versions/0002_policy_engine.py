"""Policy engine: policy documents per tenant and wallet, freezes, common-unit amounts.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as b:
        b.add_column(sa.Column("frozen", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("wallets") as b:
        b.add_column(sa.Column("frozen", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("payments") as b:
        b.add_column(sa.Column("amount_common", sa.BigInteger(), server_default="0", nullable=False))
        b.create_index("ix_payments_wallet_created", ["wallet_id", "created_ms"], unique=False)
    # Existing payments were budgeted in raw units; keep counting them that way.
    op.execute("UPDATE payments SET amount_common = amount")

    conn = op.get_bind()
    old = conn.execute(sa.text("SELECT tenant_id, per_payment_max, daily_budget, updated_ms FROM spend_policies")).all()
    op.drop_table("spend_policies")
    table = op.create_table(
        "spend_policies",
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("wallet_id", sa.String(length=36), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_spend_policies_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("tenant_id", "wallet_id", name=op.f("pk_spend_policies")),
    )
    # Old policies knew no asset lists: carry them over as allowing unknown
    # assets, so upgrading does not silently stop a tenant's payments.
    rows = []
    for tenant_id, per_payment_max, daily_budget, updated_ms in old:
        doc: dict[str, object] = {"allow_unknown_assets": True, "budgets": []}
        if per_payment_max is not None:
            doc["per_payment_max"] = str(per_payment_max)
        if daily_budget is not None:
            doc["budgets"] = [{"name": "day", "kind": "calendar", "window": "day", "limit": str(daily_budget)}]
        rows.append({"tenant_id": tenant_id, "wallet_id": "", "document": json.dumps(doc), "updated_ms": updated_ms})
    if rows:
        op.bulk_insert(table, rows)


def downgrade() -> None:
    # Lossy by nature: only the tenant per-payment maximum and a calendar-day
    # budget existed before 0002; wallet policies, lists and freezes are dropped.
    conn = op.get_bind()
    docs = conn.execute(sa.text("SELECT tenant_id, document, updated_ms FROM spend_policies WHERE wallet_id = ''")).all()
    op.drop_table("spend_policies")
    table = op.create_table(
        "spend_policies",
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("per_payment_max", sa.BigInteger(), nullable=True),
        sa.Column("daily_budget", sa.BigInteger(), nullable=True),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_spend_policies_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_spend_policies")),
    )
    rows = []
    for tenant_id, document, updated_ms in docs:
        doc = json.loads(document)
        day = next((b for b in doc.get("budgets", []) if b.get("kind", "calendar") == "calendar"
                    and b.get("window") == "day"), None)
        ppm = doc.get("per_payment_max")
        rows.append({"tenant_id": tenant_id, "per_payment_max": int(ppm) if ppm is not None else None,
                     "daily_budget": int(day["limit"]) if day else None, "updated_ms": updated_ms})
    if rows:
        op.bulk_insert(table, rows)
    with op.batch_alter_table("payments") as b:
        b.drop_index("ix_payments_wallet_created")
        b.drop_column("amount_common")
    with op.batch_alter_table("wallets") as b:
        b.drop_column("frozen")
    with op.batch_alter_table("tenants") as b:
        b.drop_column("frozen")
