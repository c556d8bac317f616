"""One wallet address belongs to one tenant; what --dev writes is private to its user."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace

import pytest
from eth_account import Account
from sqlalchemy import create_engine, text

from teller.audit.tools import verify_database
from teller.config import Settings, finalize_for_serving
from teller.db import Database, upgrade
from teller.db.engine import make_engine
from teller_client import AlreadyExists
from tests.support.harness import RunningTeller, make_settings

KEY = "0x" + "4c" * 32  # test key only
ADDRESS = Account.from_key(KEY).address


def test_a_key_imported_into_a_second_tenant_is_refused_and_audited(teller):
    admin = teller.admin()
    first = teller.setup_tenant(private_key=KEY)
    assert first.address == ADDRESS
    second = admin.create_tenant("second")
    with pytest.raises(AlreadyExists) as info:
        admin.import_wallet(second.id, KEY, "same key")
    assert info.value.reason == "address_held_by_another_tenant"
    assert ADDRESS in info.value.message and "another tenant" in info.value.message
    assert admin.list_wallets(second.id) == []
    assert [w.address for w in admin.list_wallets(first.tenant_id)] == [ADDRESS]
    (event,), _ = admin.audit_events(tenant_id=second.id, action="wallet.import")
    assert (event.outcome, event.reason) == ("denied", "address_held_by_another_tenant")
    # The same tenant importing it twice is the old, plain refusal.
    with pytest.raises(AlreadyExists) as again:
        admin.import_wallet(first.tenant_id, KEY, "again")
    assert again.value.reason != "address_held_by_another_tenant"


def _seed_0005(url: str) -> None:
    upgrade(url, "0005")
    engine = create_engine(url)
    wallet = ("INSERT INTO wallets (id, tenant_id, label, address, state, frozen, kek_version, wrapped_data_key, "
              "key_ciphertext, created_ms) VALUES (:id, :t, '', :a, 'active', false, 'k', :b, :b, :at)")
    with engine.begin() as conn:
        for t in ("t1", "t2", "t3"):
            conn.execute(text("INSERT INTO tenants (id, name, state, frozen, created_ms) "
                              "VALUES (:t, :t, 'active', false, 1)"), {"t": t})
        for wid, t, at in (("w1", "t1", 1), ("w2", "t2", 2), ("w3", "t3", 3)):
            conn.execute(text(wallet), {"id": wid, "t": t, "a": ADDRESS if t != "t3" else "0x" + "11" * 20,
                                        "b": b"x", "at": at})
        # Stored by the old parser: a host it kept as spelled, a network it let through with a leading zero.
        docs = {"t1": {"unit_decimals": 6, "hosts": {"allow": [], "deny": ["127.1", "Evil.Example."]}},
                "t2": {"unit_decimals": 6, "networks": {"allow": [], "deny": ["eip155:08453"]}}}
        for t, doc in docs.items():
            conn.execute(text("INSERT INTO spend_policies (tenant_id, wallet_id, document, updated_ms) "
                              "VALUES (:t, '', :d, 1)"), {"t": t, "d": json.dumps(doc)})
    engine.dispose()


def test_0006_reports_shared_addresses_and_canonicalizes_policies(db_url):
    _seed_0005(db_url)
    upgrade(db_url)
    engine = create_engine(db_url)
    with engine.connect() as conn:
        holders = dict(conn.execute(text("SELECT address, tenant_id FROM wallet_addresses")).all())
        wallets = conn.execute(text("SELECT count(*) FROM wallets")).scalar_one()
        events = conn.execute(text("SELECT tenant_id, action, outcome, details FROM audit_events ORDER BY id")).all()
        docs = dict(conn.execute(text("SELECT tenant_id, document FROM spend_policies")).all())
    engine.dispose()
    assert holders == {ADDRESS: "t1", "0x" + "11" * 20: "t3"} and wallets == 3  # nothing deleted
    by_action = {(e.tenant_id, e.action): e for e in events}
    shared = by_action[("t2", "wallet.address_shared")]
    assert shared.outcome == "flagged" and json.loads(shared.details)["also_held_by_tenant"] == "t1"
    assert json.loads(docs["t1"])["hosts"]["deny"] == ["127.0.0.1", "evil.example"]
    assert ("t1", "policy.canonicalized") in by_action
    # Not safely rewritable: left as stored, flagged for the operator.
    assert json.loads(docs["t2"])["networks"]["deny"] == ["eip155:08453"]
    assert "policy.networks.deny[0]" in json.loads(by_action[("t2", "policy.needs_review")].details)["problem"]
    engine2 = make_engine(db_url)
    try:
        assert verify_database(Database(engine2)) == []  # the reports extend each tenant's chain properly
    finally:
        engine2.dispose()


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_dev_data_directory_and_files_are_private(tmp_path):
    old = os.umask(0o022)
    try:
        data = tmp_path / "dev"
        settings = finalize_for_serving(replace(Settings(data_dir=data, dev_mode=True), listen="127.0.0.1:0"))
        running = RunningTeller(replace(make_settings(settings.resolved_database_url(), data),
                                        kek=settings.kek, admin_token=settings.admin_token))
        try:
            running.setup_tenant()
        finally:
            running.stop()
    finally:
        os.umask(old)
    assert _mode(data) == 0o700
    written = sorted(p.name for p in data.iterdir())
    assert {"admin-token", "dev-kek", "teller.db"} <= set(written)
    assert {p.name: _mode(p) for p in data.iterdir()} == dict.fromkeys(written, 0o600)


def test_an_existing_wide_dev_directory_and_database_are_tightened(tmp_path):
    data = tmp_path / "old"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    db = data / "teller.db"
    db.write_bytes(b"")
    os.chmod(db, 0o644)
    finalize_for_serving(Settings(data_dir=data, dev_mode=True))
    make_engine(f"sqlite:///{db}").dispose()
    assert (_mode(data), _mode(db), _mode(data / "dev-kek"), _mode(data / "admin-token")) == (0o700, 0o600, 0o600,
                                                                                              0o600)


def test_a_flagged_stored_policy_refuses_payments_until_set_again():
    from teller.errors import FailedPrecondition
    from teller.spend.parse import rules_from

    with pytest.raises(FailedPrecondition) as info:
        rules_from(json.dumps({"networks": {"deny": ["eip155:08453"]}}), None)
    assert info.value.reason == "policy_needs_review" and "policy.networks.deny[0]" in info.value.message


def test_concurrent_imports_of_one_key_leave_one_holder(teller):
    """Racing imports into several tenants: the check may pass in all of them, the
    primary key of wallet_addresses lets exactly one commit."""
    from concurrent.futures import ThreadPoolExecutor

    admin = teller.admin()
    tenants = [admin.create_tenant(f"race-{i}").id for i in range(6)]

    def attempt(tenant_id: str) -> str:
        try:
            teller.admin().import_wallet(tenant_id, KEY, "race")
            return "ok"
        except AlreadyExists as exc:
            return exc.reason

    with ThreadPoolExecutor(len(tenants)) as pool:
        outcomes = list(pool.map(attempt, tenants))
    assert sorted(outcomes) == ["address_held_by_another_tenant"] * 5 + ["ok"]
    holders = [t for t in tenants if admin.list_wallets(t)]
    assert len(holders) == 1
