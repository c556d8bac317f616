"""The `teller` command as an operator uses it, in real subprocesses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

TELLER = [sys.executable, "-m", "teller.cli"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELLER_")}
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_refuses_to_start_without_a_kek(tmp_path):
    result = subprocess.run([*TELLER, "serve", "--data-dir", str(tmp_path)], env=_env(TELLER_ADMIN_TOKEN="x"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no KEK configured" in result.stderr


def test_serve_refuses_an_unmigrated_database(tmp_path):
    # An explicit SQLite URL: outside dev mode a worker no longer picks the embedded file itself.
    kek = tmp_path / "kek"
    kek.write_text("v1:" + __import__("base64").b64encode(os.urandom(32)).decode())
    result = subprocess.run([*TELLER, "serve", "--data-dir", str(tmp_path), "--kek-file", str(kek),
                             "--database-url", f"sqlite:///{tmp_path / 'teller.db'}"],
                            env=_env(TELLER_ADMIN_TOKEN="x"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "run `teller migrate`" in result.stderr


@pytest.fixture
def dev_server(tmp_path: Path):
    port = _free_port()
    proc = subprocess.Popen([*TELLER, "serve", "--dev", "--data-dir", str(tmp_path), "--listen", f"127.0.0.1:{port}"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 30
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        while True:
            try:
                if health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    break
            except grpc.RpcError:
                if time.time() > deadline or proc.poll() is not None:
                    proc.kill()
                    raise AssertionError(proc.stdout.read() if proc.stdout else "server did not start") from None
                time.sleep(0.2)
    yield port, tmp_path, proc
    proc.terminate()
    proc.wait(15)


def _admin(port: int, data_dir: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run([*TELLER, "admin", "--target", f"127.0.0.1:{port}", "--data-dir", str(data_dir), *args],
                            env=_env(), capture_output=True, text=True, timeout=60, input=stdin)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_operator_workflow_from_the_shell(dev_server):
    from eth_account import Account

    port, data_dir, _proc = dev_server
    tenant_id = _admin(port, data_dir, "tenant", "create", "acme").split()[1]
    out = _admin(port, data_dir, "token", "issue", tenant_id, "--description", "backend")
    token = out.splitlines()[1]
    assert token.startswith("tlr_")
    address = _admin(port, data_dir, "wallet", "create", tenant_id, "--label", "hot").split()[2]
    acct = Account.create()
    imported = _admin(port, data_dir, "wallet", "import", tenant_id, "--key-file", "-", stdin=acct.key.hex())
    assert imported.split()[2] == acct.address
    listing = _admin(port, data_dir, "wallet", "list", tenant_id)
    assert address in listing and acct.address in listing and acct.key.hex()[2:] not in listing
    policy_file = data_dir / "policy.json"
    policy_file.write_text(json.dumps({
        "per_payment_max": "1000", "allow_unknown_assets": True,
        "budgets": [{"name": "day", "window": "day", "limit": "5000"},
                    {"name": "hour", "kind": "rolling", "window": "1h", "limit": "3000"}]}))
    _admin(port, data_dir, "policy", "set", tenant_id, "--file", str(policy_file))
    stored = json.loads(_admin(port, data_dir, "policy", "get", tenant_id))
    assert [b["name"] for b in stored["budgets"]] == ["day", "hour"]

    from teller_client import PermissionDenied, TellerClient
    from testbed.x402_server import sdk_v2_challenge

    chall = sdk_v2_challenge(amount="1000")
    with TellerClient(f"127.0.0.1:{port}", token) as client:
        wallet_id = client.list_wallets()[0].id
        client.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url, wallet_id=wallet_id)
    table = _admin(port, data_dir, "spend", "show", tenant_id).splitlines()
    assert table[0].split() == ["SCOPE", "WINDOW", "KIND", "LIMIT", "SPENT", "RESERVED", "REMAINING"]
    assert table[1].split() == ["tenant", "day", "calendar", "5000", "0", "1000", "4000"]
    assert table[2].split() == ["tenant", "hour", "rolling", "3000", "0", "1000", "2000"]
    assert "frozen" in _admin(port, data_dir, "freeze", tenant_id, "--reason", "incident")
    with TellerClient(f"127.0.0.1:{port}", token) as client, pytest.raises(PermissionDenied):
        client.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url, wallet_id=wallet_id)
    tail = _admin(port, data_dir, "audit", "tail", "--tenant", tenant_id)
    assert '"action": "payment.sign"' in tail and '"action": "wallet.import"' in tail
    assert acct.key.hex()[2:] not in tail


def test_admin_errors_are_clear(dev_server):
    port, data_dir, _ = dev_server
    result = subprocess.run([*TELLER, "admin", "--target", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
                             "wallet", "create", "no-such-tenant"], env=_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert "NOT_FOUND" in result.stderr and "no-such-tenant" in result.stderr


def test_migrate_command_on_postgres(pg_url):
    result = subprocess.run([*TELLER, "migrate", "--database-url", pg_url], env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "newest schema" in result.stdout


def test_demo_command_signs_and_verifies(tmp_path):
    result = subprocess.run([*TELLER, "demo"], env=_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PAYMENT-SIGNATURE: " in result.stdout
    assert "== wallet address: OK" in result.stdout
