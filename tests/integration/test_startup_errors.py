"""Start-up failures as an operator meets them: real `teller` subprocesses that
must stop with one line (a JSON object when JSON logs are on) and a non-zero
exit code, never a Python traceback; and `teller config check`."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from teller.db import upgrade
from testbed.procs import free_port, wait_healthy

TELLER = [sys.executable, "-m", "teller.cli"]


def _kek() -> str:
    return "v1:" + base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'teller.db'}"
    upgrade(url)
    return url


def _env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELLER_")}
    env.update({"TELLER_KEK": _kek(), "TELLER_ADMIN_TOKEN": "op_" + "x" * 20, "TELLER_DATA_DIR": str(tmp_path),
                "TELLER_DATABASE_URL": url, "TELLER_LOG_LEVEL": "INFO"})
    env.update(extra)
    return {k: v for k, v in env.items() if v != "<unset>"}


def _fails_in_one_line(args: list[str], env: dict[str, str], needle: str, *, json_logs: bool) -> dict[str, str]:
    """Run ``teller args``; it must exit non-zero with exactly one line on stderr
    (parsed as JSON when ``json_logs``) that contains ``needle``."""
    if json_logs:
        env = {**env, "TELLER_LOG_FORMAT": "json"}
    result = subprocess.run([*TELLER, *args], env=env, capture_output=True, text=True, timeout=60)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode not in (0, None), result.stderr
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    if not json_logs:
        assert needle in lines[0], lines[0]
        return {"msg": lines[0]}
    doc = json.loads(lines[0])
    assert doc["level"] == "ERROR"
    assert needle in doc["msg"], doc
    return doc


@pytest.fixture(params=[False, True], ids=["text", "json"])
def json_logs(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_database_unreachable(tmp_path, json_logs):
    url = f"postgresql+psycopg://teller:hunter2@127.0.0.1:{free_port()}/teller"
    doc = _fails_in_one_line(["serve", "--listen", f"127.0.0.1:{free_port()}"], _env(tmp_path, url),
                             "database unreachable", json_logs=json_logs)
    assert "hunter2" not in json.dumps(doc)


@pytest.mark.parametrize(("listen", "json_logs"), [("nohost", False), ("127.0.0.1:99999", True),
                                                  ("256.1.1.1:7402", False)])
def test_bad_listen_address(tmp_path, sqlite_url, json_logs, listen):
    _fails_in_one_line(["serve", "--listen", listen], _env(tmp_path, sqlite_url), "listen", json_logs=json_logs)


def test_port_in_use_by_another_program(tmp_path, sqlite_url, json_logs):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        _fails_in_one_line(["serve", "--listen", f"127.0.0.1:{port}"], _env(tmp_path, sqlite_url), "port in use",
                           json_logs=json_logs)


@pytest.mark.parametrize(("var", "value", "needle", "json_logs"), [
    ("TELLER_LOG_LEVEL", "LOUD", "log_level", True),
    ("TELLER_DATABASE_URL", "postgres://teller:hunter2@127.0.0.1/teller", "database_url", False),
    ("TELLER_DATABASE_URL", "postgres://teller:hunter2@127.0.0.1/teller", "database_url", True),
    ("TELLER_RPC_URLS", "eip155:8453", "rpc_urls", False),
    ("TELLER_RPC_URLS", "eip155:8453=not a url", "rpc_urls", True),
    ("TELLER_DATABASE_URL", "<unset>", "database_url", False),
    ("TELLER_GRPC_ACCEPTORS", "many", "grpc_acceptors", True),
    ("TELLER_ADMIN_TOKEN_FILE", "/nonexistent/token", "admin_token_file", False),
])
def test_bad_settings_stop_start_up_in_one_line(tmp_path, sqlite_url, json_logs, var, value, needle):
    env = _env(tmp_path, sqlite_url, **{var: value})
    if var == "TELLER_ADMIN_TOKEN_FILE":
        env.pop("TELLER_ADMIN_TOKEN")
    doc = _fails_in_one_line(["serve", "--listen", f"127.0.0.1:{free_port()}"], env, needle, json_logs=json_logs)
    assert "hunter2" not in json.dumps(doc)


def test_unknown_log_format_is_refused_not_silently_text(tmp_path, sqlite_url):
    env = _env(tmp_path, sqlite_url, TELLER_LOG_FORMAT="jsonl")
    result = subprocess.run([*TELLER, "serve", "--listen", f"127.0.0.1:{free_port()}"], env=env,
                            capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "log_format must be one of text, json, got 'jsonl'" in lines[0]


def test_rewrap_without_the_old_kek(tmp_path, sqlite_url):
    from teller.app import build
    from tests.support.harness import make_settings

    app = build(make_settings(sqlite_url, tmp_path))
    try:
        tenant = app.admin.create_tenant("acme")
        app.admin.create_wallet(tenant.id)
    finally:
        app.close()
    new_only = tmp_path / "kek-new"
    new_only.write_text(_kek().replace("v1:", "v2:") + "\n")
    _fails_in_one_line(["keys", "rewrap", "--kek-file", str(new_only), "--database-url", sqlite_url],
                       _env(tmp_path, sqlite_url), "test1", json_logs=True)


@pytest.mark.slow
def test_a_second_worker_on_a_busy_port_refuses_to_start(tmp_path, sqlite_url, json_logs):
    """Two Teller workers on one port would share it through SO_REUSEPORT and
    split the traffic between them: the second must not start."""
    port = free_port()
    env = _env(tmp_path, sqlite_url)
    log = tmp_path / "first.log"
    first = subprocess.Popen([*TELLER, "serve", "--listen", f"127.0.0.1:{port}"], env=env,
                             stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"127.0.0.1:{port}", first, log)
        # Another deployment: its own KEK and operator token, same port.
        other = _env(tmp_path, f"sqlite:///{tmp_path / 'other.db'}")
        upgrade(other["TELLER_DATABASE_URL"])
        second = subprocess.Popen([*TELLER, "serve", "--listen", f"127.0.0.1:{port}"],
                                  env={**other, **({"TELLER_LOG_FORMAT": "json"} if json_logs else {})},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _, err = second.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            second.kill()
            second.communicate()
            raise AssertionError("a second worker started on a port another worker listens on") from None
        lines = err.strip().splitlines()
        assert second.returncode != 0 and len(lines) == 1, err
        assert "port in use" in (json.loads(lines[0])["msg"] if json_logs else lines[0])
        assert first.poll() is None
    finally:
        first.terminate()
        first.wait(20)


@pytest.mark.slow
def test_a_restarted_worker_takes_its_port_back(tmp_path, sqlite_url):
    port = free_port()
    env = _env(tmp_path, sqlite_url)
    for n in range(2):
        log = tmp_path / f"run{n}.log"
        proc = subprocess.Popen([*TELLER, "serve", "--listen", f"127.0.0.1:{port}"], env=env,
                                stdout=log.open("wb"), stderr=subprocess.STDOUT)
        try:
            wait_healthy(f"127.0.0.1:{port}", proc, log)
        finally:
            proc.terminate()
            assert proc.wait(20) == 0


def test_secrets_come_from_files(tmp_path, sqlite_url):
    token_file = tmp_path / "token"
    token_file.write_text("op_from_a_file_1234567890\n")
    url_file = tmp_path / "url"
    url_file.write_text(sqlite_url + "\n")
    env = _env(tmp_path, "<unset>", TELLER_ADMIN_TOKEN="<unset>", TELLER_ADMIN_TOKEN_FILE=str(token_file),
               TELLER_DATABASE_URL_FILE=str(url_file))
    port = free_port()
    log = tmp_path / "w.log"
    proc = subprocess.Popen([*TELLER, "serve", "--listen", f"127.0.0.1:{port}"], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"127.0.0.1:{port}", proc, log)
        from teller_client import AdminClient

        with AdminClient(f"127.0.0.1:{port}", "op_from_a_file_1234567890") as admin:
            assert admin.list_tenants() == []
    finally:
        proc.terminate()
        proc.wait(20)


def test_config_check(tmp_path, sqlite_url):
    good = subprocess.run([*TELLER, "config", "check"], env=_env(tmp_path, sqlite_url),
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "configuration ok" in good.stdout
    bad_env = _env(tmp_path, "postgres://u@h/db", TELLER_LOG_LEVEL="LOUD", TELLER_LOG_FORMAT="jsonl",
                   TELLER_KEK="<unset>", TELLER_GRPC_ACCEPTORS="0")
    started = time.monotonic()
    bad = subprocess.run([*TELLER, "config", "check"], env=bad_env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30
    assert bad.returncode == 1, bad.stdout + bad.stderr
    problems = bad.stdout.strip().splitlines()
    assert len(problems) == 5, problems
    for needle in ("database_url", "log_level", "log_format", "KEK", "grpc_acceptors"):
        assert sum(needle in p for p in problems) == 1, (needle, problems)
    assert "Traceback" not in bad.stderr


def test_config_check_names_every_problem_in_process(tmp_path):
    from teller import config

    token = tmp_path / "token"
    token.write_text("op_from_file_0123456789\n")
    toml = tmp_path / "teller.toml"
    toml.write_text('listen = "127.0.0.1:7402"\nlisten_port = 1\ntracing = "maybe"\n'
                    'rpc_urls = {"base" = "https://rpc.example/KEY"}\n')
    problems = config.check(toml, env={"TELLER_ADMIN_TOKEN": "op_x", "TELLER_ADMIN_TOKEN_FILE": str(token),
                                       "TELLER_KEK_FILE": str(tmp_path / "missing-kek"),
                                       "TELLER_DATABASE_URL": "sqlite:///x.db", "TELLER_METRICS_LISTEN": "9402"})
    assert sorted(problems) == sorted([
        f"unknown config keys in {toml}: ['listen_port']",
        "tracing must be true or false, got 'maybe'",
        "rpc_urls: network 'base' must be a CAIP-2 id like eip155:8453",
        "set admin_token or admin_token_file, not both",
        f"cannot read KEK file {tmp_path / 'missing-kek'}: No such file or directory",
        "metrics_listen must be host:port with a port from 0 to 65535, got '9402'",
    ])
    assert not any("KEY" in p for p in problems)  # a secret's value is never echoed
    url_file = tmp_path / "url"
    url_file.write_text("sqlite:///from-file.db\n")
    rpc = tmp_path / "rpc"
    rpc.write_text("eip155:8453=https://a.example/KEY\neip155:1=https://b.example/KEY2\n")
    settings = config.load(env={"TELLER_DATABASE_URL_FILE": str(url_file), "TELLER_ADMIN_TOKEN_FILE": str(token),
                                "TELLER_RPC_URLS_FILE": str(rpc)})
    assert (settings.database_url, settings.admin_token) == ("sqlite:///from-file.db", "op_from_file_0123456789")
    assert settings.rpc_urls == {"eip155:8453": "https://a.example/KEY", "eip155:1": "https://b.example/KEY2"}
