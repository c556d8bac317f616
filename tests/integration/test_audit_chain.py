"""The tamper-evident audit log: per-tenant hash chains written with each event,
verified in the database and offline from an export."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from teller.audit import tools as audit_tools
from teller.db import Database, make_engine
from testbed.x402_server import sdk_v2_challenge

TELLER = [sys.executable, "-m", "teller.cli"]


def _activity(teller, signs: int = 3):
    t = teller.setup_tenant()
    client = teller.client(t.token)
    for i in range(signs):
        c = sdk_v2_challenge(amount=str(1000 + i))
        client.sign(status=c.status, headers=c.headers, body=c.body, url=c.url, wallet_id=t.wallet_id)
    return t


@pytest.fixture
def db(teller):
    database = Database(make_engine(teller.settings.resolved_database_url(), 2))
    yield database
    database.engine.dispose()


def _events(db, tenant_id):
    with db.engine.connect() as conn:
        return conn.execute(text("SELECT id, seq FROM audit_events WHERE tenant_id = :t ORDER BY id"),
                            {"t": tenant_id}).all()


def _sql(db, statement, **params):
    with db.engine.begin() as conn:
        conn.execute(text(statement), params)


def test_a_clean_log_verifies_and_its_export_verifies_offline(teller, db):
    t = _activity(teller)
    assert audit_tools.verify_database(db) == []
    out = io.StringIO()
    key = Ed25519PrivateKey.generate()
    n = audit_tools.export(db, t.tenant_id, out, key, 1)
    assert n == len(_events(db, t.tenant_id)) >= 6  # tenant, token, wallet, policy, 3 signatures
    assert audit_tools.verify_file(io.StringIO(out.getvalue())) == []
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["seq"] for e in lines[:-1]] == list(range(1, n + 1))
    assert lines[-1]["type"] == "teller.audit.export" and lines[-1]["seq"] == n


def test_an_edited_row_is_named(teller, db):
    t = _activity(teller)
    eid, seq = _events(db, t.tenant_id)[4]
    _sql(db, "UPDATE audit_events SET amount = '1' WHERE id = :id", id=eid)
    problems = audit_tools.verify_database(db, t.tenant_id)
    assert [str(p) for p in problems] == [f"chain {t.tenant_id}: event id {eid} (seq {seq}): does not match its "
                                          "hash: edited"]


def test_a_deleted_row_is_named(teller, db):
    t = _activity(teller)
    rows = _events(db, t.tenant_id)
    _sql(db, "DELETE FROM audit_events WHERE id = :id", id=rows[2][0])
    (problem,) = audit_tools.verify_database(db, t.tenant_id)
    assert problem.event_id == rows[3][0] and "1 event(s) missing (deleted)" in problem.what


def test_deleting_the_newest_rows_is_caught_by_the_chain_head(teller, db):
    t = _activity(teller)
    rows = _events(db, t.tenant_id)
    _sql(db, "DELETE FROM audit_events WHERE id = :id", id=rows[-1][0])
    (problem,) = audit_tools.verify_database(db, t.tenant_id)
    assert "newest event(s) were deleted" in problem.what


def test_reordered_rows_are_named(teller, db):
    t = _activity(teller)
    (a, _), (b, _) = _events(db, t.tenant_id)[2:4]
    # Swap the two events' positions: each row now holds the other's content.
    cols = "seq, at_ms, actor, action, outcome, reason, wallet_id, payment_id, amount, details, prev_hash, hash"
    with db.engine.begin() as conn:
        ra = conn.execute(text(f"SELECT {cols} FROM audit_events WHERE id = :i"), {"i": a}).mappings().one()
        rb = conn.execute(text(f"SELECT {cols} FROM audit_events WHERE id = :i"), {"i": b}).mappings().one()
        assign = ", ".join(f"{c} = :{c}" for c in cols.split(", "))
        conn.execute(text(f"UPDATE audit_events SET {assign} WHERE id = :id"), {**rb, "id": a})
        conn.execute(text(f"UPDATE audit_events SET {assign} WHERE id = :id"), {**ra, "id": b})
    problems = audit_tools.verify_database(db, t.tenant_id)
    assert problems and problems[0].event_id == a and "missing" in problems[0].what
    assert any(p.event_id == b and "out of order" in p.what for p in problems)


@pytest.mark.postgres
def test_concurrent_writers_never_fork_a_chain(pg_teller):
    t = _activity(pg_teller, signs=0)
    client, admin = pg_teller.client(t.token), pg_teller.admin()
    c = sdk_v2_challenge(amount="10")
    errors: list[BaseException] = []

    def sign() -> None:
        try:
            for _ in range(10):
                client.sign(status=c.status, headers=c.headers, body=c.body, url=c.url, wallet_id=t.wallet_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def operate() -> None:
        try:
            for i in range(10):
                admin.set_frozen(t.tenant_id, i % 2 == 0, reason="drill")
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=sign) for _ in range(6)] + [threading.Thread(target=operate)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not [e for e in errors if "frozen" not in str(e)]
    db = Database(make_engine(pg_teller.settings.resolved_database_url(), 2))
    try:
        assert audit_tools.verify_database(db) == []
    finally:
        db.engine.dispose()


def test_audit_commands(teller, tmp_path):
    t = _activity(teller)
    url = teller.settings.resolved_database_url()
    ok = subprocess.run([*TELLER, "audit", "verify", "--database-url", url], capture_output=True, text=True)
    assert ok.returncode == 0 and "no problems" in ok.stdout
    export = subprocess.run([*TELLER, "audit", "export", "--tenant", t.tenant_id, "--database-url", url],
                            capture_output=True, text=True, env={**os.environ, "TELLER_KEK": teller.settings.kek})
    assert export.returncode == 0
    path = tmp_path / "log.jsonl"
    path.write_text(export.stdout)
    assert subprocess.run([*TELLER, "audit", "verify", "--file", str(path)]).returncode == 0
    lines = export.stdout.splitlines()
    doc = json.loads(lines[2])
    doc["actor"] = "someone-else"
    lines[2] = json.dumps(doc)
    path.write_text("\n".join(lines) + "\n")
    bad = subprocess.run([*TELLER, "audit", "verify", "--file", str(path)], capture_output=True, text=True)
    assert bad.returncode == 1 and f"event id {doc['id']}" in bad.stdout and "edited" in bad.stdout


def test_migration_chains_existing_events(db_url):
    from teller.db import upgrade

    upgrade(db_url, "0003")
    engine = make_engine(db_url, 2)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, name, state, created_ms) VALUES ('t1', 'old', 'active', 1)"))
        for i in range(3):
            conn.execute(text("INSERT INTO audit_events (tenant_id, at_ms, actor, action, outcome, reason, wallet_id, "
                              "payment_id, amount, asset, network, payee, resource_url, details) VALUES "
                              "('t1', :i, 'operator', 'x', 'ok', '', '', '', '', '', '', '', '', '{}')"), {"i": i})
    upgrade(db_url)
    db = Database(engine)
    try:
        assert audit_tools.verify_database(db) == []
        from teller.audit import events as audit

        with db.transaction() as s:  # new events continue the migrated chain
            audit.record(s, at_ms=9, actor="operator", action="y", tenant_id="t1")
        assert audit_tools.verify_database(db) == []
        assert [seq for _, seq in _events(db, "t1")] == [1, 2, 3, 4]
    finally:
        engine.dispose()
