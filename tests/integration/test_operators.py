"""Named operator credentials: each audited by name, revocable on every replica,
with the configured admin_token kept as the bootstrap operator."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from teller_client import AdminClient, AlreadyExists, InvalidArgument, NotFound, Unauthenticated


def _actors(admin: AdminClient, action: str) -> list[str]:
    events, _ = admin.audit_events(action=action, page_size=100)
    return [e.actor for e in events]


def test_named_operators_are_audited_by_name_and_revocable(teller, caplog):
    bootstrap = teller.admin()
    alice_op, alice_token = bootstrap.create_operator("alice")
    assert alice_token.startswith("tlo_") and alice_op.name == "alice"
    assert alice_op.created_by == "operator:bootstrap" and alice_op.revoked_at_ms == 0
    with AdminClient(teller.admin_target, alice_token) as alice:
        tenant = alice.create_tenant("acme")
        bootstrap.create_tenant("globex")
        assert _actors(bootstrap, "tenant.create") == ["operator:bootstrap", "operator:alice"]
        assert _actors(bootstrap, "operator.create") == ["operator:bootstrap"]
        assert [o.name for o in alice.list_operators()] == ["alice"]
        bob_op, bob_token = alice.create_operator("bob")
        assert bob_op.created_by == "operator:alice"

        revoked = bootstrap.revoke_operator("alice")
        assert revoked.revoked_at_ms > 0
        with pytest.raises(Unauthenticated, match="revoked"):
            alice.list_tenants()
    with AdminClient(teller.admin_target, bob_token) as bob:
        assert tenant.id in {t.id for t in bob.list_tenants()}
        assert _actors(bob, "operator.revoke") == ["operator:bootstrap"]
    with AdminClient(teller.admin_target, bob_token[:-2] + "xx") as forged, pytest.raises(Unauthenticated):
        forged.list_tenants()
    with AdminClient(teller.admin_target, "tlo_nosuch.secret") as unknown, pytest.raises(Unauthenticated):
        unknown.list_tenants()
    assert alice_token not in caplog.text and bob_token not in caplog.text


@pytest.mark.parametrize(("name", "error", "needle"), [
    ("bootstrap", InvalidArgument, "reserved"),
    ("has space", InvalidArgument, "name must be"),
    ("", InvalidArgument, "name must be"),
    ("x" * 65, InvalidArgument, "name must be"),
])
def test_bad_operator_names_are_refused_by_name(teller, name, error, needle):
    with pytest.raises(error, match=needle):
        teller.admin().create_operator(name)


def test_duplicate_and_unknown_operators(teller):
    admin = teller.admin()
    admin.create_operator("carol")
    with pytest.raises(AlreadyExists, match="carol"):
        admin.create_operator("carol")
    with pytest.raises(NotFound, match="nobody"):
        admin.revoke_operator("nobody")
    # A tenant token is no operator credential.
    t = teller.setup_tenant()
    with AdminClient(teller.admin_target, t.token) as tenant_as_admin, pytest.raises(Unauthenticated):
        tenant_as_admin.list_operators()


def test_operator_commands_from_the_shell(teller, caplog):
    caplog.set_level(logging.INFO)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELLER_")}

    def cli(*args: str, token: str = teller.settings.admin_token) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "teller.cli", "admin", "--target", teller.admin_target,
                               "--token", token, "operator", *args], env=env, capture_output=True, text=True,
                              timeout=60)

    created = cli("create", "dave")
    assert created.returncode == 0, created.stderr
    credential = created.stdout.splitlines()[1]
    assert credential.startswith("tlo_")
    listing = cli("list", token=credential)
    assert listing.returncode == 0, listing.stderr
    header, row = listing.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "CREATED_BY", "CREATED", "REVOKED"]
    assert row.split()[1:3] == ["dave", "operator:bootstrap"]
    assert cli("revoke", "dave").stdout.strip() == "operator dave revoked"
    refused = cli("list", token=credential)
    assert refused.returncode == 1 and "revoked" in refused.stderr
