"""Signed audit exports: Teller signs a tenant's chain head with its own audit
key (sealed under the KEK); the tenant verifies the export offline with the
public key. Unknown tenants are errors, not empty valid chains."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from testbed.x402_server import sdk_v2_challenge

TELLER = [sys.executable, "-m", "teller.cli"]


def _run(*args: str, env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TELLER_")}
    return subprocess.run([*TELLER, *args], capture_output=True, text=True, timeout=120, env={**base, **(env or {})},
                          cwd=cwd)


@pytest.fixture
def activity(teller):
    t = teller.setup_tenant()
    client = teller.client(t.token)
    for amount in ("1000", "1001"):
        c = sdk_v2_challenge(amount=amount)
        client.sign(status=c.status, headers=c.headers, body=c.body, url=c.url, wallet_id=t.wallet_id)
    db = ["--database-url", teller.settings.resolved_database_url()]
    kek = {"TELLER_KEK": teller.settings.kek}
    return t, db, kek


def _rechain(events: list[dict]) -> list[dict]:
    """What a forger does after editing events: recompute every hash so the chain links again."""
    from teller.audit.chain import GENESIS, event_hash

    prev = GENESIS
    for seq, e in enumerate(events, 1):
        e["seq"], e["prev_hash"] = seq, prev
        e["hash"] = prev = event_hash(e)
    return events


def test_unknown_tenant_is_an_error(teller):
    db = ["--database-url", teller.settings.resolved_database_url()]
    verify = _run("audit", "verify", "--tenant", "no-such-tenant", *db)
    assert verify.returncode == 1 and "no-such-tenant" in verify.stderr and "not found" in verify.stderr
    assert "no problems" not in verify.stdout
    export = _run("audit", "export", "--tenant", "no-such-tenant", *db, env={"TELLER_KEK": teller.settings.kek})
    assert export.returncode == 1 and "not found" in export.stderr and export.stdout == ""


def test_signed_export_verifies_offline_and_catches_rewrites_and_truncation(activity, tmp_path):
    t, db, kek = activity
    public_key = _run("audit", "public-key", *db, env=kek)
    assert public_key.returncode == 0, public_key.stderr
    key = public_key.stdout.strip()
    assert len(bytes.fromhex(key)) == 32
    export = _run("audit", "export", "--tenant", t.tenant_id, *db, env=kek)
    assert export.returncode == 0, export.stderr
    path = tmp_path / "export.jsonl"
    path.write_text(export.stdout)

    # Offline: no database, no server, no KEK; in an empty directory.
    offline = tmp_path / "offline"
    offline.mkdir()
    ok = _run("audit", "verify-export", str(path), "--public-key", key, cwd=offline)
    assert ok.returncode == 0, ok.stderr
    assert "no problems" in ok.stdout and t.tenant_id in ok.stdout
    assert list(offline.iterdir()) == []

    *events, trailer = [json.loads(line) for line in export.stdout.splitlines()]
    assert trailer["seq"] == events[-1]["seq"] and trailer["hash"] == events[-1]["hash"]

    def verdict(lines: list[dict], *extra: str) -> subprocess.CompletedProcess:
        forged = tmp_path / "forged.jsonl"
        forged.write_text("".join(json.dumps(x) + "\n" for x in lines))
        return _run("audit", "verify-export", str(forged), "--public-key", key, *extra)

    # A rewritten chain: an edited event with every hash recomputed. The unsigned
    # check (what main had) calls it clean; the signature does not.
    rewritten = _rechain([dict(e) for e in events])
    rewritten[-1]["amount"] = "999999"
    rewritten = _rechain(rewritten)
    unsigned = tmp_path / "unsigned.jsonl"
    unsigned.write_text("".join(json.dumps(x) + "\n" for x in rewritten))
    assert _run("audit", "verify", "--file", str(unsigned)).returncode == 0
    bad = verdict([*rewritten, trailer])
    assert bad.returncode == 1 and "does not match" in bad.stdout + bad.stderr

    # Truncated: the newest events cut off, with or without the signature line.
    cut = verdict([*events[:-1], trailer])
    assert cut.returncode == 1 and "deleted" in cut.stdout
    assert verdict(events[:-1]).returncode == 1
    # The trailer edited to the truncated head: the signature breaks.
    moved = dict(trailer, seq=events[-2]["seq"], hash=events[-2]["hash"], events=len(events) - 1)
    forged = verdict([*events[:-1], moved])
    assert forged.returncode == 1 and "signature does not verify" in forged.stdout
    # Another key (an attacker's own) is not Teller's.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
    assert "not by the given public key" in verdict([*events, trailer], "--public-key", other).stdout


@pytest.mark.slow  # a dozen CLI runs against the database (~70 s on a busy machine)
def test_audit_key_rotation_keeps_old_exports_verifiable(activity, tmp_path):
    t, db, kek = activity
    first = _run("audit", "public-key", *db, env=kek).stdout.strip()
    old_export = tmp_path / "old.jsonl"
    old_export.write_text(_run("audit", "export", "--tenant", t.tenant_id, *db, env=kek).stdout)
    rotated = _run("audit", "rotate-key", *db, "-o", "json", env=kek)
    assert rotated.returncode == 0, rotated.stderr
    second = json.loads(rotated.stdout)["public_key"]
    assert second != first
    assert _run("audit", "public-key", *db, env=kek).stdout.strip() == second
    listed = json.loads(_run("audit", "public-key", "--all", *db, "-o", "json").stdout)
    assert [k["public_key"] for k in listed] == [second, first] and listed[1]["retired_ms"]
    assert _run("audit", "verify-export", str(old_export), "--public-key", first).returncode == 0
    new_export = tmp_path / "new.jsonl"
    new_export.write_text(_run("audit", "export", "--tenant", t.tenant_id, *db, env=kek).stdout)
    assert _run("audit", "verify-export", str(new_export), "--public-key", second).returncode == 0
    assert _run("audit", "verify-export", str(new_export), "--public-key", first).returncode == 1
    # The key is sealed under the KEK: without it, no export can be signed.
    assert "no KEK" in _run("audit", "export", "--tenant", t.tenant_id, *db).stderr
    # The database holds no usable private key: only the sealed blob.
    from sqlalchemy import create_engine, text

    with create_engine(db[1]).connect() as conn:
        row = conn.execute(text("SELECT public_key, key_ciphertext FROM audit_keys WHERE retired_ms IS NULL")).one()
    assert row.public_key == second and len(row.key_ciphertext) > 32
