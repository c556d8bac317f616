"""KEK rotation on real PostgreSQL: a new KEK version is added, every data key is
re-wrapped online while a worker keeps signing, and after the old KEK is
removed every wallet still signs."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
from dataclasses import replace

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from x402.http.utils import decode_payment_signature_header

from teller import rotation
from teller.app import kek_provider
from teller.audit import tools as audit_tools
from teller.db import Database, make_engine
from testbed.x402_server import sdk_v2_challenge
from tests.support.harness import RunningTeller, make_settings

pytestmark = pytest.mark.postgres


def _kek(version: str) -> str:
    return f"{version}:{base64.b64encode(os.urandom(32)).decode()}"


def _recovered(header_value: str) -> str:
    payload = decode_payment_signature_header(header_value)
    a = payload.payload["authorization"]
    typed = {
        "types": {"EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                                   {"name": "chainId", "type": "uint256"},
                                   {"name": "verifyingContract", "type": "address"}],
                  "TransferWithAuthorization": [{"name": n, "type": t} for n, t in (
                      ("from", "address"), ("to", "address"), ("value", "uint256"), ("validAfter", "uint256"),
                      ("validBefore", "uint256"), ("nonce", "bytes32"))]},
        "primaryType": "TransferWithAuthorization",
        "domain": {"name": "USDC", "version": "2", "chainId": 84532,
                   "verifyingContract": payload.accepted.asset},
        "message": {"from": a["from"], "to": a["to"], "value": int(a["value"]), "validAfter": int(a["validAfter"]),
                    "validBefore": int(a["validBefore"]), "nonce": bytes.fromhex(a["nonce"][2:])},
    }
    return Account.recover_message(encode_typed_data(full_message=typed), signature=payload.payload["signature"])


def _sign(client, t) -> str:
    c = sdk_v2_challenge(amount="100")
    return client.sign(status=c.status, headers=c.headers, body=c.body, url=c.url, wallet_id=t.wallet_id).header_value


def test_rewrap_online_then_retire_the_old_kek(pg_url, tmp_path):
    v1, v2 = _kek("v1"), _kek("v2")
    base = make_settings(pg_url, tmp_path, kek=v1)
    first = RunningTeller(base)
    tenants = [first.setup_tenant() for _ in range(4)]
    first.stop()

    # Workers roll to the new configuration first: v2 current, v1 still readable.
    both = replace(base, kek=f"{v2},{v1}")
    worker = RunningTeller(both)
    db = Database(make_engine(pg_url, 4))
    try:
        assert rotation.status(db) == {"v1": 4}
        failures: list[BaseException] = []
        signed = 0
        stop = threading.Event()

        def keep_signing() -> None:
            nonlocal signed
            clients = [(worker.client(t.token), t) for t in tenants]
            while not stop.is_set():
                for client, t in clients:
                    try:
                        assert _recovered(_sign(client, t)) == t.address
                        signed += 1
                    except BaseException as exc:  # reported below
                        failures.append(exc)

        threads = [threading.Thread(target=keep_signing) for _ in range(2)]
        for th in threads:
            th.start()
        try:
            result = rotation.rewrap_all(db, kek_provider(both), batch=2)
        finally:
            stop.set()
            for th in threads:
                th.join(60)
        assert failures == [] and signed > 0
        assert (result.rewrapped, result.current_version) == (4, "v2")
        assert rotation.status(db) == {"v2": 4}
        assert rotation.rewrap_all(db, kek_provider(both)).rewrapped == 0  # idempotent
    finally:
        worker.stop()

    # The old KEK is gone: every wallet still signs.
    retired = RunningTeller(replace(base, kek=v2))
    try:
        for t in tenants:
            assert _recovered(_sign(retired.client(t.token), t)) == t.address
    finally:
        retired.stop()
    # And a worker holding only the old KEK can no longer open them: the data keys really moved.
    stale = RunningTeller(replace(base, kek=v1))
    try:
        from teller_client import TellerError

        with pytest.raises(TellerError):
            _sign(stale.client(tenants[0].token), tenants[0])
    finally:
        stale.stop()
    try:
        assert audit_tools.verify_database(db) == []
    finally:
        db.engine.dispose()


def test_keys_commands(pg_url, tmp_path):
    v1, v2 = _kek("v1"), _kek("v2")
    base = make_settings(pg_url, tmp_path, kek=v1)
    first = RunningTeller(base)
    first.setup_tenant()
    first.stop()
    kek_file = tmp_path / "kek"
    kek_file.write_text(f"{v2}\n{v1}\n")
    cmd = [sys.executable, "-m", "teller.cli", "keys"]
    status = subprocess.run([*cmd, "status", "--database-url", pg_url, "--kek-file", str(kek_file)],
                            capture_output=True, text=True)
    assert status.returncode == 0 and "v1=1" in status.stdout
    rewrap = subprocess.run([*cmd, "rewrap", "--database-url", pg_url, "--kek-file", str(kek_file)],
                            capture_output=True, text=True)
    assert rewrap.returncode == 0, rewrap.stderr
    assert "re-wrapped 1 wallet key(s) under KEK 'v2'" in rewrap.stdout and "v2=1" in rewrap.stdout
