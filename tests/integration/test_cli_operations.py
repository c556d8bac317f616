"""The operator's `teller` command against a real worker subprocess: where it
connects, options anywhere, JSON output, paging, help, freezes, tokens,
wallets, policy dry runs, spend reports and following the audit log."""

from __future__ import annotations

import itertools
import json
import queue
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from testbed.x402_server import PAYEE, USDC_BASE_SEPOLIA, sdk_v2_challenge
from tests.integration.test_cli import TELLER, _env, _free_port

PERMISSIVE = {"allow_unknown_assets": True, "budgets": [{"name": "day", "window": "day", "limit": "1000000"}]}


def teller(*args: str, stdin: str | None = None, env: dict[str, str] | None = None, cwd: Path | None = None,
           code: int | None = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([*TELLER, *args], env=env or _env(), capture_output=True, text=True, timeout=60,
                            input=stdin, cwd=cwd)
    if code is not None:
        assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    return result


def admin(server, *args: str, **kw) -> str:
    port, data_dir, _ = server
    # Connection options after the noun and verb: they used to work only before the noun.
    return teller("admin", *args, "--target", f"127.0.0.1:{port}", "--data-dir", str(data_dir), **kw).stdout


def admin_json(server, *args: str, **kw):
    return json.loads(admin(server, *args, "-o", "json", **kw))


def _wait_healthy(port: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 30
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        while True:
            try:
                if health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                if time.time() > deadline or proc.poll() is not None:
                    proc.kill()
                    raise AssertionError(proc.stdout.read() if proc.stdout else "server did not start") from None
                time.sleep(0.2)


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory):
    """One worker for this module (each test makes its own tenant): starting one takes seconds."""
    data_dir = tmp_path_factory.mktemp("teller")
    port = _free_port()
    proc = subprocess.Popen([*TELLER, "serve", "--dev", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    _wait_healthy(port, proc)
    yield port, data_dir, proc
    proc.terminate()
    proc.wait(15)


_names = itertools.count()
pytestmark = pytest.mark.slow  # a worker subprocess and tens of CLI runs (~2 min on a busy machine)


@pytest.fixture
def tenant(dev_server):
    tenant_id = admin_json(dev_server, "tenant", "create", f"acme-{next(_names)}")["id"]
    token = admin_json(dev_server, "token", "issue", tenant_id)["token"]
    wallet_id = admin_json(dev_server, "wallet", "create", tenant_id)["id"]
    policy = dev_server[1] / "policy.json"
    policy.write_text(json.dumps(PERMISSIVE))
    admin(dev_server, "policy", "set", tenant_id, "--file", str(policy))
    return tenant_id, token, wallet_id


def _sign(server, token: str, wallet_id: str, amounts=("1000",)):
    from teller_client import TellerClient

    with TellerClient(f"127.0.0.1:{server[0]}", token) as client:
        for amount in amounts:
            c = sdk_v2_challenge(amount=amount)
            client.sign(status=c.status, headers=c.headers, body=c.body, url=c.url, wallet_id=wallet_id)


def test_admin_target_follows_the_configuration_beside_it(tmp_path):
    """The shipped config serves AdminService on its own port; the CLI used to call 7402 regardless."""
    listen, admin_port = _free_port(), _free_port()
    cfg = tmp_path / "teller.toml"
    cfg.write_text(f'listen = "127.0.0.1:{listen}"\nadmin_listen = "0.0.0.0:{admin_port}"\n'
                   f'data_dir = "{tmp_path}"\ndev_mode = true\n')
    proc = subprocess.Popen([*TELLER, "serve", "--config", str(cfg)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait_healthy(listen, proc)
        # No --target: from --config, and (as in the container) from the environment.
        created = json.loads(teller("admin", "--config", str(cfg), "-o", "json", "tenant", "create", "acme").stdout)
        env = _env(TELLER_LISTEN=f"0.0.0.0:{listen}", TELLER_ADMIN_LISTEN=f"0.0.0.0:{admin_port}",
                   TELLER_DATA_DIR=str(tmp_path))
        listed = json.loads(teller("admin", "tenant", "list", "-o", "json", env=env).stdout)
        assert [t["id"] for t in listed] == [created["id"]]
        # --target still wins.
        wrong = teller("admin", "tenant", "list", "--target", f"127.0.0.1:{listen}", env=env, code=1)
        assert "UNIMPLEMENTED" in wrong.stderr  # what operators saw before: AdminService is not on listen
    finally:
        proc.terminate()
        proc.wait(15)


def test_every_command_has_help_and_there_is_a_version():
    from teller.cli.parser import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(getattr(action, "choices", None), dict):
                for name, sub in action.choices.items():
                    yield (*path, name), sub
                    yield from walk(sub, (*path, name))

    commands = list(walk(build_parser(), ()))
    assert ("admin", "token", "rotate") in [c for c, _ in commands]
    for path, sub in commands:
        assert sub.description, f"`teller {' '.join(path)}` has no help text"
    out = teller("admin", "payment", "list", "--help").stdout
    assert "--page-token" in out and "--output" in out
    version = teller("--version").stdout.strip()
    assert version.startswith("teller ") and version.split()[1][0].isdigit()


def test_json_output_paging_and_options_after_the_noun(dev_server, tenant):
    tenant_id, token, wallet_id = tenant
    _sign(dev_server, token, wallet_id, ("1001", "1002", "1003"))
    first = admin_json(dev_server, "payment", "list", tenant_id, "--limit", "2")
    assert len(first["payments"]) == 2 and first["next_page_token"]
    rest = admin_json(dev_server, "payment", "list", tenant_id, "--limit", "2", "--page-token",
                      first["next_page_token"])
    assert len(rest["payments"]) == 1 and rest["next_page_token"] == ""
    every = admin_json(dev_server, "payment", "list", tenant_id, "--limit", "2", "--all")["payments"]
    assert sorted(p["amount"] for p in every) == [1001, 1002, 1003]
    assert {p["id"] for p in every} == {p["id"] for p in first["payments"] + rest["payments"]}
    # The table says there is more, on stderr.
    port, data_dir, _ = dev_server
    table = teller("admin", "payment", "list", tenant_id, "--limit", "1", "--target", f"127.0.0.1:{port}",
                   "--data-dir", str(data_dir))
    assert "--page-token " in table.stderr and len(table.stdout.splitlines()) == 2

    events = admin_json(dev_server, "audit", "tail", "--tenant", tenant_id, "--limit", "3")
    older = admin_json(dev_server, "audit", "tail", "--tenant", tenant_id, "--limit", "3", "--page-token",
                       events["next_page_token"])
    assert len(events["events"]) == 3 and older["events"]
    assert max(e["id"] for e in older["events"]) < min(e["id"] for e in events["events"])

    for args in (("tenant", "list"), ("wallet", "list", tenant_id), ("token", "list", tenant_id),
                 ("spend", "show", tenant_id), ("payment", "show", every[0]["id"]), ("policy", "get", tenant_id)):
        json.loads(admin(dev_server, *args, "-o", "json"))
    csv_lines = admin(dev_server, "wallet", "list", tenant_id, "-o", "csv").splitlines()
    assert csv_lines[0].split(",")[:3] == ["id", "address", "state"] and wallet_id in csv_lines[1]


def test_policy_set_without_a_document_changes_nothing(dev_server, tenant):
    tenant_id, *_ = tenant
    before = admin(dev_server, "policy", "get", tenant_id)
    port, data_dir, _ = dev_server
    result = teller("admin", "--target", f"127.0.0.1:{port}", "--data-dir", str(data_dir), "policy", "set",
                    tenant_id, code=2)
    assert "--file" in result.stderr and "nothing was changed" in result.stderr
    assert admin(dev_server, "policy", "get", tenant_id) == before


def test_freezes_and_their_reasons_show_in_the_lists(dev_server, tenant):
    tenant_id, _token, wallet_id = tenant
    admin(dev_server, "freeze", tenant_id, "--reason", "incident 42")
    admin(dev_server, "freeze", tenant_id, "--wallet", wallet_id, "--reason", "key suspected leaked")
    (t,) = [t for t in admin_json(dev_server, "tenant", "list") if t["id"] == tenant_id]
    assert t["frozen"] is True and t["frozen_reason"] == "incident 42"
    (w,) = admin_json(dev_server, "wallet", "list", tenant_id)
    assert w["frozen"] is True and w["frozen_reason"] == "key suspected leaked"
    table = admin(dev_server, "tenant", "list")
    assert "FROZEN" in table and "incident 42" in table
    admin(dev_server, "unfreeze", tenant_id)
    (t,) = [t for t in admin_json(dev_server, "tenant", "list") if t["id"] == tenant_id]
    assert t["frozen"] is False and t["frozen_reason"] == ""


def test_tenant_enable_token_rotate_and_wallet_disable(dev_server, tenant):
    from teller_client import FailedPrecondition, PermissionDenied, TellerClient, Unauthenticated

    tenant_id, token, wallet_id = tenant
    old_id = admin_json(dev_server, "token", "list", tenant_id)[0]["id"]
    rotated = admin_json(dev_server, "token", "rotate", old_id)
    tokens = {t["id"]: t for t in admin_json(dev_server, "token", "list", tenant_id)}
    assert tokens[old_id]["revoked_at_ms"] > 0 and tokens[rotated["token_id"]]["revoked_at_ms"] == 0
    assert token not in admin(dev_server, "token", "list", tenant_id)
    with pytest.raises(Unauthenticated):
        _sign(dev_server, token, wallet_id)
    _sign(dev_server, rotated["token"], wallet_id)

    assert admin_json(dev_server, "tenant", "disable", tenant_id)["state"] == "disabled"
    with pytest.raises(PermissionDenied):
        _sign(dev_server, rotated["token"], wallet_id, ("1001",))
    assert admin_json(dev_server, "tenant", "enable", tenant_id)["state"] == "active"
    _sign(dev_server, rotated["token"], wallet_id, ("1002",))

    assert admin_json(dev_server, "wallet", "disable", tenant_id, wallet_id)["state"] == "disabled"
    with pytest.raises(FailedPrecondition), TellerClient(f"127.0.0.1:{dev_server[0]}", rotated["token"]) as c:
        ch = sdk_v2_challenge(amount="1003")
        c.sign(status=402, headers=ch.headers, body=ch.body, url=ch.url, wallet_id=wallet_id)
    actions = [e["action"] for e in admin_json(dev_server, "audit", "tail", "--tenant", tenant_id, "--all")["events"]]
    assert {"token.rotate", "tenant.enable", "wallet.disable"} <= set(actions)


def _saved_402(path: Path, amount: str) -> Path:
    c = sdk_v2_challenge(amount=amount)
    path.write_text(json.dumps({"status": 402, "headers": c.headers, "body": c.body.decode(), "url": c.url}))
    return path


def test_policy_test_dry_runs_a_saved_402_offline(tmp_path):
    saved = _saved_402(tmp_path / "402.json", "5000")
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({**PERMISSIVE, "per_payment_max": "4000"}))
    # No server and no database: nothing here could sign.
    denied = teller("policy", "test", "--policy", str(policy), "--challenge", str(saved), "-o", "json",
                    cwd=tmp_path, code=1)
    doc = json.loads(denied.stdout)
    assert doc["allowed"] is False and doc["reason"] == "per_payment_max" and "4000" in doc["message"]
    policy.write_text(json.dumps(PERMISSIVE))
    allowed = json.loads(teller("policy", "test", "--policy", str(policy), "--challenge", str(saved), "-o", "json",
                                cwd=tmp_path).stdout)
    assert allowed["allowed"] is True
    assert allowed["chosen"]["amount"] == "5000"
    assert allowed["chosen"]["pay_to"].lower() == PAYEE.lower()
    assert allowed["chosen"]["asset"].lower() == USDC_BASE_SEPOLIA.lower()
    over = teller("policy", "test", "--policy", str(policy), "--challenge", str(saved), "--used", "day=999000",
                  cwd=tmp_path, code=1)
    assert "budget_exhausted:day" in over.stdout
    bad = teller("policy", "test", "--policy", str(policy), "--challenge", str(policy), cwd=tmp_path, code=2)
    assert "challenge" in bad.stderr
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / ".teller").exists()


def test_admin_policy_test_uses_the_stored_policy_freeze_and_spend(dev_server, tenant):
    tenant_id, _token, wallet_id = tenant
    saved = _saved_402(dev_server[1] / "402.json", "2000")
    assert admin_json(dev_server, "policy", "test", tenant_id, "--challenge", str(saved))["allowed"] is True
    admin(dev_server, "freeze", tenant_id, "--wallet", wallet_id, "--reason", "x")
    port, data_dir, _ = dev_server
    out = teller("admin", "policy", "test", tenant_id, "--wallet", wallet_id, "--challenge", str(saved),
                 "--target", f"127.0.0.1:{port}", "--data-dir", str(data_dir), code=1).stdout
    assert "decision: deny (frozen)" in out


def test_spend_report_exports_csv_and_json_by_window(dev_server, tenant):
    tenant_id, token, wallet_id = tenant
    _sign(dev_server, token, wallet_id, ("1000", "2500"))
    since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    rows = admin_json(dev_server, "spend", "report", tenant_id, "--since", since, "--by", "day")
    assert [(r["state"], r["payments"], r["amount"]) for r in rows] == [("signed", 2, 3500)]
    assert rows[0]["window_end_ms"] - rows[0]["window_start_ms"] == 86_400_000
    csv_lines = admin(dev_server, "spend", "report", tenant_id, "--since", since, "-o", "csv").splitlines()
    assert csv_lines[0] == "window_start,window_end,network,asset,state,payments,amount"
    assert csv_lines[1].endswith(",signed,2,3500") and len(csv_lines) == 2
    future = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 2 * 86400))
    assert admin_json(dev_server, "spend", "report", tenant_id, "--since", future,
                      "--until", future + "T01:00:00Z") == []


def test_audit_tail_follow_prints_new_events(dev_server, tenant):
    tenant_id, *_ = tenant
    port, data_dir, _ = dev_server
    proc = subprocess.Popen([*TELLER, "admin", "audit", "tail", "--tenant", tenant_id, "--limit", "1", "--follow",
                             "--interval", "0.2", "--target", f"127.0.0.1:{port}", "--data-dir", str(data_dir)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()

    def next_line(timeout: float = 20) -> dict:
        return json.loads(lines.get(timeout=timeout))

    try:
        first = next_line()
        assert first["action"] == "policy.set"
        admin(dev_server, "freeze", tenant_id, "--reason", "follow me")
        admin(dev_server, "unfreeze", tenant_id)
        seen = [next_line(), next_line()]
        assert [e["action"] for e in seen] == ["tenant.freeze", "tenant.freeze"]
        assert seen[0]["id"] > first["id"] and seen[1]["id"] > seen[0]["id"]
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)
