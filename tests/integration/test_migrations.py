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
    from teller.spend.parse import parse

    p = parse(doc)
    assert p.per_payment_max == 100 and p.allow_unknown_assets
    assert [(b.name, b.calendar, b.limit) for b in p.budgets] == [("day", "day", 1000)]


def test_0003_downgrade_keeps_held_payments_counted(db_url):
    from sqlalchemy import text

    upgrade(db_url)
    engine = create_engine(db_url)
    cols = ("id, tenant_id, wallet_id, protocol, version, scheme, network, asset, pay_to, amount, nonce, "
            "valid_before, state, header_name, header_value, request_hash, created_ms, released_ms, resource_url")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, name, state, created_ms) VALUES ('t1', 'old', 'active', 1)"))
        conn.execute(text("INSERT INTO wallets (id, tenant_id, label, address, state, kek_version, wrapped_data_key, "
                          "key_ciphertext, created_ms) VALUES ('w1', 't1', '', '0x1', 'active', 'k', :b, :b, 1)"),
                     {"b": b"x"})
        for pid, state, released in (("p1", "failed", None), ("p2", "failed", 5), ("p3", "expired", 5)):
            conn.execute(text(f"INSERT INTO payments ({cols}) VALUES (:id, 't1', 'w1', 'x402', 2, 'exact', "
                              "'eip155:1', '0xa', '0xb', 10, :id, 1, :state, 'h', 'v', 'r', 1, :rel, '')"),
                         {"id": pid, "state": state, "rel": released})
    from teller.db.migrate import downgrade

    downgrade(db_url, "0002")
    with engine.connect() as conn:
        states = dict(conn.execute(text("SELECT id, state FROM payments")).all())
    engine.dispose()
    # 0002 counts signed and settled: the held one counts, the released ones do not.
    assert states == {"p1": "signed", "p2": "failed", "p3": "expired"}


def test_0015_counts_the_top_ups_made_before_it_as_delivered(db_url):
    """Top-ups recorded before delivery was (0014) were handed to the server by the release that
    made them: none may hold a voucher back after the upgrade."""
    from sqlalchemy import text

    upgrade(db_url, "0014")
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, name, state, created_ms) VALUES ('t1', 'old', 'active', 1)"))
        conn.execute(text("INSERT INTO wallets (id, tenant_id, label, address, state, kek_version, wrapped_data_key, "
                          "key_ciphertext, created_ms) VALUES ('w1', 't1', '', '0x1', 'active', 'k', :b, :b, 1)"),
                     {"b": b"x"})
        conn.execute(text("INSERT INTO channels (id, tenant_id, wallet_id, network, escrow, channel_id, token, payee, "
                          "descriptor, deposit, cumulative, state, created_ms, updated_ms) VALUES ('c1', 't1', 'w1', "
                          "'eip155:1', '0xe', '0x01', '0xa', '0xb', '{}', 20, 0, 'open', 1, 1)"))
        conn.execute(text("INSERT INTO channel_top_ups (payment_id, channel, added, deposit_before, created_ms) "
                          "VALUES ('p1', 'c1', 10, 10, 7)"))
    upgrade(db_url)
    with engine.connect() as conn:
        delivered = conn.execute(text("SELECT delivered_ms FROM channel_top_ups WHERE payment_id = 'p1'")).scalar_one()
    engine.dispose()
    assert delivered == 7
