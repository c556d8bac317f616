"""Schema compatibility across one release (expand/contract): a worker serves on
its own head and on a schema one expand-only step ahead, nothing newer; `teller
migrate` of an older release explains a newer schema in one line. The next
release is simulated by a migration this test writes into a temporary
versions directory."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, text

from teller.db import migrate
from teller.errors import ConfigError
from teller_client import AdminClient, Policy, TellerClient, TellerError
from testbed.procs import free_port, wait_healthy
from testbed.x402_server import sdk_v2_challenge

TELLER = [sys.executable, "-m", "teller.cli"]

NEXT_RELEASE = '''"""A next release's step: {what}."""
import sqlalchemy as sa
from alembic import op

revision = "{revision}"
down_revision = "{parent}"
branch_labels = None
depends_on = None
{marker}


def upgrade() -> None:
    op.add_column("payments", sa.Column("{column}", sa.String(40), nullable=True))
    op.create_table("{table}", sa.Column("id", sa.String(32), primary_key=True))


def downgrade() -> None:
    op.drop_table("{table}")
    op.drop_column("payments", "{column}")
'''


def next_release(tmp: Path, revision: str, parent: str, *, expand: bool) -> Path:
    """A versions directory holding one more migration after ``parent``."""
    versions = tmp / "next_versions"
    versions.mkdir(exist_ok=True)
    (versions / f"{revision}_next.py").write_text(NEXT_RELEASE.format(
        what="expand only" if expand else "drops nothing yet, but says it is not expand-only",
        revision=revision, parent=parent, marker="expand_only = True" if expand else "",
        column=f"note_{revision}", table=f"things_{revision}"))
    return versions


def _schema(url: str) -> migrate.Schema:
    engine = create_engine(url)
    try:
        return migrate.schema(engine)
    finally:
        engine.dispose()


def test_the_worker_serves_one_expand_step_ahead_and_nothing_further(db_url, tmp_path):
    own = migrate.head()
    migrate.upgrade(db_url)
    assert _schema(db_url).kind == "current"
    extra = next_release(tmp_path, "9001", own, expand=True)
    migrate.upgrade(db_url, extra_locations=[extra])
    found = _schema(db_url)
    assert (found.kind, found.revision, found.head) == ("expand_ahead", "9001", own)
    engine = create_engine(db_url)
    try:
        assert migrate.check_servable(engine).kind == "expand_ahead"
        # Two steps ahead, though the second is expand-only too: refused, by name.
        next_release(tmp_path, "9002", "9001", expand=True)
        migrate.upgrade(db_url, extra_locations=[extra])
        with pytest.raises(ConfigError, match=r"9002 is newer than this release .* not one expand-only step"):
            migrate.check_servable(engine)
        # The newer release can take it back down to this release's head (a rollback).
        assert migrate.migrate(db_url, own, extra_locations=[extra]) == f"database schema migrated down to {own}"
        assert migrate.check_servable(engine).kind == "current"
        with engine.connect() as conn:
            recorded = set(conn.execute(text("SELECT revision FROM schema_revisions")).scalars())
        assert own in recorded and not recorded & {"9001", "9002"}
    finally:
        engine.dispose()


def test_a_step_ahead_that_is_not_expand_only_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'teller.db'}"
    migrate.upgrade(url, extra_locations=[next_release(tmp_path, "9101", migrate.head(), expand=False)])
    found = _schema(url)
    assert found.kind == "newer" and not found.servable


def _migrate_cli(url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELLER_")}
    return subprocess.run([*TELLER, "migrate", "--database-url", url], env=env, capture_output=True, text=True,
                          timeout=120)


def test_an_older_teller_migrate_explains_a_newer_schema_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'teller.db'}"
    extra = next_release(tmp_path, "9201", migrate.head(), expand=True)
    migrate.upgrade(url, extra_locations=[extra])
    ahead = _migrate_cli(url)
    assert ahead.returncode == 0, ahead.stderr
    assert ahead.stdout.strip() == (f"database schema 9201 is one expand-only step ahead of this release "
                                    f"({migrate.head()}): this release serves on it, nothing to migrate")
    next_release(tmp_path, "9202", "9201", expand=False)
    migrate.upgrade(url, extra_locations=[extra])
    newer = _migrate_cli(url)
    lines = newer.stderr.strip().splitlines()
    assert newer.returncode == 2 and len(lines) == 1, newer.stderr
    assert "9202 is newer than this release" in lines[0] and f"teller migrate --to {migrate.head()}" in lines[0]


# --- a rolling upgrade, with processes --------------------------------------------------------------------


class Worker:
    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.target = f"127.0.0.1:{port}"
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([*TELLER, "serve", "--listen", self.target], env=self.env,
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        wait_healthy(self.target, self.proc, self.log)

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(30)


@pytest.mark.postgres
@pytest.mark.slow
def test_rolling_upgrade_with_an_expand_migration_under_load(pg_url, tmp_path):
    """Two workers take Sign calls without pause while the next release's expand
    migration is applied, then one of them is restarted on the migrated schema
    (as an old pod is rescheduled, or a rollback starts one): no call fails."""
    migrate.upgrade(pg_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELLER_")}
    admin_token = "op_" + base64.urlsafe_b64encode(os.urandom(18)).decode()
    env.update({"TELLER_DATABASE_URL": pg_url, "TELLER_KEK": "v1:" + base64.b64encode(os.urandom(32)).decode(),
                "TELLER_ADMIN_TOKEN": admin_token, "TELLER_DATA_DIR": str(tmp_path), "TELLER_LOG_LEVEL": "WARNING",
                "TELLER_GRPC_ACCEPTORS": "2", "TELLER_SHUTDOWN_GRACE_SECONDS": "10",
                "TELLER_RECONCILE_INTERVAL_SECONDS": "0"})
    workers = [Worker(env, free_port(), tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        with AdminClient(workers[0].target, admin_token) as admin:
            tenant = admin.create_tenant("rolling")
            _, token = admin.issue_token(tenant.id)
            wallet = admin.create_wallet(tenant.id)
            admin.set_policy(tenant.id, Policy(allow_unknown_assets=True))
        chall = sdk_v2_challenge(amount="1000")
        # Callers reach the workers as through a Service: one channel over both
        # addresses, balancing per call; a worker that stops leaves the rotation.
        target = "ipv4:" + ",".join(w.target for w in workers)
        outcomes: Counter[str] = Counter()
        counting = threading.Lock()
        stop = threading.Event()

        def count(outcome: str) -> None:
            with counting:
                outcomes[outcome] += 1

        def caller() -> None:
            channel = grpc.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin"),
                                                             ("grpc.use_local_subchannel_pool", 1)])
            with TellerClient(target, token, channel=channel) as client:
                while not stop.is_set():
                    try:
                        client.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url,
                                    wallet_id=wallet.id)
                        count("ok")
                    except TellerError as exc:
                        count(f"{exc.code.name}: {exc.message[:100]}")

        threads = [threading.Thread(target=caller) for _ in range(8)]
        for t in threads:
            t.start()
        try:
            time.sleep(3)
            before = outcomes["ok"]
            extra = next_release(tmp_path, "9301", migrate.head(), expand=True)
            migrate.upgrade(pg_url, extra_locations=[extra])  # the new release's `teller migrate`
            assert _schema(pg_url).kind == "expand_ahead"
            time.sleep(2)
            migrated = outcomes["ok"]
            assert workers[1].stop() == 0
            workers[1].start()  # the same (older) release, on the newer schema
            time.sleep(3)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        failed = {k: n for k, n in outcomes.items() if k != "ok"}
        assert not failed, failed
        assert before > 0 and migrated > before and outcomes["ok"] > migrated
        # The restarted worker serves on the migrated schema.
        with TellerClient(workers[1].target, token) as direct:
            direct.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url, wallet_id=wallet.id)
        with create_engine(pg_url).connect() as conn:
            signed = conn.execute(text("SELECT count(*) FROM payments WHERE tenant_id = :t"),
                                  {"t": tenant.id}).scalar_one()
        assert signed == outcomes["ok"] + 1
        print(f"rolling upgrade: {outcomes['ok']} Sign calls, 0 failed "
              f"({before} before the migration, {migrated} before the restart)")
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.stop()
