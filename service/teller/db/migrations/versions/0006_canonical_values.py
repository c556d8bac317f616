"""Canonical values: one tenant per wallet address; stored policies in canonical form.

Revision ID: 0006
Revises: 0005

``wallet_addresses`` records which tenant holds each address (its primary key
refuses a second tenant). Addresses that two tenants already hold are not
deleted: the earliest wallet's tenant is recorded as the holder, and each
other holder is reported in the log and in its tenant's audit chain
(``wallet.address_shared``) for the operator to resolve.

Stored policy documents are re-read with today's canonical parser (networks,
addresses, hosts): a document that reads differently is rewritten and audited
(``policy.canonicalized``); one that no longer parses is left as it is and
reported (``policy.needs_review``). Sign refuses to act on such a policy until
the operator sets a new one (it fails closed).
"""

from __future__ import annotations

import json
import logging
import time

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

revision = "0006"
down_revision = "0009"
branch_labels = None
depends_on = None

log = logging.getLogger("teller.migrations")
ACTOR = "migration:0006"
#: (tenant, wallet or "", audit action, details) of one thing reported to the operator.
Report = tuple[str, str, str, dict[str, object]]


def upgrade() -> None:
    op.create_table(
        "wallet_addresses",
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("wallet_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_wallet_addresses_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_wallet_addresses")),
    )
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        # SQLite turns an integer sum past 2**63 - 1 into a float, silently: a minute's
        # bucket would stop counting exactly. Refuse the write instead (PostgreSQL
        # raises numeric_value_out_of_range by itself); Sign reports amount_out_of_range.
        for event in ("INSERT", "UPDATE"):
            op.execute(f"CREATE TRIGGER spend_buckets_exact_{event.lower()} BEFORE {event} ON spend_buckets "
                       "WHEN typeof(NEW.reserved) <> 'integer' OR typeof(NEW.spent) <> 'integer' "
                       "BEGIN SELECT RAISE(ABORT, 'amount_out_of_range: spend bucket past 2**63 - 1'); END")
    holders: dict[str, tuple[str, str]] = {}
    shared: list[tuple[str, str, str, str]] = []  # address, tenant, wallet, first holder's tenant
    for address, tenant_id, wallet_id in conn.execute(sa.text(
            "SELECT address, tenant_id, id FROM wallets ORDER BY created_ms, id")).all():
        if address not in holders:
            holders[address] = (tenant_id, wallet_id)
        elif holders[address][0] != tenant_id:
            shared.append((address, tenant_id, wallet_id, holders[address][0]))
    if holders:
        conn.execute(sa.text("INSERT INTO wallet_addresses (address, tenant_id, wallet_id) "
                             "VALUES (:address, :tenant_id, :wallet_id)"),
                     [{"address": a, "tenant_id": t, "wallet_id": w} for a, (t, w) in holders.items()])
    reports: list[Report] = []
    for address, tenant_id, wallet_id, first in shared:
        log.warning("wallet %s of tenant %s has address %s, which tenant %s also holds: one key, two budgets; "
                    "resolve by disabling one of them", wallet_id, tenant_id, address, first)
        reports.append((tenant_id, wallet_id, "wallet.address_shared",
                        {"address": address, "also_held_by_tenant": first}))
    reports.extend(_canonicalize_policies(conn))
    if reports:
        _audit(conn, reports)


def _canonicalize_policies(conn: sa.Connection) -> list[Report]:
    from teller.errors import InvalidArgument
    from teller.spend.parse import parse, to_document

    reports: list[Report] = []
    rows = conn.execute(sa.text("SELECT tenant_id, wallet_id, document FROM spend_policies")).all()
    for tenant_id, wallet_id, document in rows:
        try:
            old = json.loads(document)
            parsed = parse(old, wallet=bool(wallet_id))
        except (InvalidArgument, ValueError) as exc:
            problem = exc.message if isinstance(exc, InvalidArgument) else str(exc)
            log.warning("policy of tenant %s%s is not canonical and was left unchanged: %s", tenant_id,
                        f" wallet {wallet_id}" if wallet_id else "", problem)
            reports.append((tenant_id, wallet_id, "policy.needs_review", {"problem": problem[:500]}))
            continue
        new = to_document(parsed, wallet=bool(wallet_id))
        if new != old:
            conn.execute(sa.text("UPDATE spend_policies SET document = :doc WHERE tenant_id = :t AND wallet_id = :w"),
                         {"doc": json.dumps(new, sort_keys=True), "t": tenant_id, "w": wallet_id})
            log.warning("policy of tenant %s%s rewritten in canonical form", tenant_id,
                        f" wallet {wallet_id}" if wallet_id else "")
            reports.append((tenant_id, wallet_id, "policy.canonicalized", {"old": old, "new": new}))
    return reports


def _audit(conn: sa.Connection, reports: list[Report]) -> None:
    from teller.audit import events as audit

    now = int(time.time() * 1000)
    with Session(bind=conn) as s:
        for tenant_id, wallet_id, action, details in reports:
            audit.record(s, at_ms=now, actor=ACTOR, action=action, tenant_id=tenant_id, wallet_id=wallet_id,
                         outcome="flagged", details=details)
        s.flush()


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for event in ("insert", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS spend_buckets_exact_{event}")
    op.drop_table("wallet_addresses")
