"""Alembic migrations produce exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from teller.db import upgrade
from teller.db.models import Base


def test_migrations_match_models(db_url):
    upgrade(db_url)
    engine = create_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []


def test_upgrade_is_idempotent(db_url):
    upgrade(db_url)
    upgrade(db_url)


def test_0002_carries_old_policies_over(db_url):
    import json

    from sqlalchemy import text

    upgrade(db_url, "0001")
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, name, state, created_ms) VALUES ('t1', 'old', 'active', 1)"))
        conn.execute(text("INSERT INTO spend_policies (tenant_id, per_payment_max, daily_budget, updated_ms) "
                          "VALUES ('t1', 100, 1000, 5)"))
    upgrade(db_url)
    with engine.connect() as conn:
        doc = json.loads(conn.execute(text("SELECT document FROM spend_policies WHERE tenant_id = 't1'")).scalar_one())
    engine.dispose()
    from teller import policy

    p = policy.parse(doc)
    assert p.per_payment_max == 100 and p.allow_unknown_assets
    assert [(b.name, b.calendar, b.limit) for b in p.budgets] == [("day", "day", 1000)]
