"""`teller admin channel list` and `channel show`, in real subprocesses against
an in-process Teller whose database holds channels and signed vouchers: the
table people read, the JSON scripts read, paging, and another tenant's channel."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.integration.test_cli import TELLER, _env
from tests.support.channel_rows import add_channel, set_state
from tests.support.channels import open_channel
from tests.support.harness import RunningTeller, make_settings


@pytest.fixture
def running(tmp_path, sqlite_template):
    import shutil

    shutil.copy2(sqlite_template, tmp_path / "teller.db")
    teller = RunningTeller(make_settings(f"sqlite:///{tmp_path / 'teller.db'}", tmp_path))
    yield teller
    teller.stop()


def cli(teller: RunningTeller, *args: str, code: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([*TELLER, "admin", *args, "--target", teller.admin_target,
                             "--token", teller.settings.admin_token], env=_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    return result


def test_channel_list_as_a_table_and_as_json(running):
    app = running.app
    ch = open_channel(app, deposit=100)
    app.channels.sign_voucher(ch.tenant_id, ch.handle, 30)
    later = add_channel(app, ch, 500, at_ms=2)
    closed = add_channel(app, ch, 70, at_ms=3)
    set_state(app, closed, "closed")

    table = cli(running, "channel", "list", "--tenant", ch.tenant_id).stdout.splitlines()
    assert table[0].split() == ["ID", "STATE", "DEPOSIT", "SPENT", "REMAINING", "NETWORK", "PAYEE", "WALLET_ID",
                                "CREATED"]
    assert [line.split()[:5] for line in table[1:]] == [[closed, "closed", "70", "0", "70"],
                                                        [later, "open", "500", "0", "500"],
                                                        [ch.handle, "open", "100", "30", "70"]]
    assert table[3].split()[-1] == "1970-01-01T00:00:00Z"

    doc = json.loads(cli(running, "channel", "list", "--tenant", ch.tenant_id, "--state", "open",
                         "-o", "json").stdout)
    assert doc["next_page_token"] == ""
    assert [(c["id"], c["deposit"], c["spent"], c["remaining"]) for c in doc["channels"]] == [
        (later, 500, 0, 500), (ch.handle, 100, 30, 70)]
    assert doc["channels"][1]["channel_id"] == ch.channel_id and doc["channels"][1]["wallet_id"] == ch.wallet_id

    # Paging as `payment list` pages: a hint on stderr, --page-token, --all.
    one = cli(running, "channel", "list", "--tenant", ch.tenant_id, "--limit", "1")
    assert len(one.stdout.splitlines()) == 2 and "--page-token " in one.stderr
    page = json.loads(cli(running, "channel", "list", "--tenant", ch.tenant_id, "--limit", "1", "-o", "json").stdout)
    rest = json.loads(cli(running, "channel", "list", "--tenant", ch.tenant_id, "--limit", "1", "--page-token",
                          page["next_page_token"], "-o", "json").stdout)
    assert [c["id"] for c in page["channels"] + rest["channels"]] == [closed, later]
    every = json.loads(cli(running, "channel", "list", "--tenant", ch.tenant_id, "--limit", "1", "--all",
                           "-o", "json").stdout)
    assert [c["id"] for c in every["channels"]] == [closed, later, ch.handle] and every["next_page_token"] == ""

    bad = cli(running, "channel", "list", "--tenant", ch.tenant_id, "--state", "settled", code=2)
    assert "invalid choice: 'settled'" in bad.stderr
    missing = cli(running, "channel", "list", "--tenant", "no-such-tenant", code=1)
    assert "NOT_FOUND" in missing.stderr and "no-such-tenant" in missing.stderr


def test_channel_show_lists_its_vouchers_highest_first(running):
    app = running.app
    ch = open_channel(app, deposit=100)
    signed = [app.channels.sign_voucher(ch.tenant_id, ch.handle, step) for step in (10, 25, 40)]

    out = cli(running, "channel", "show", ch.handle, "--tenant", ch.tenant_id).stdout.splitlines()
    fields = dict(line.split(None, 1) for line in out[:13])
    assert fields["ID"] == ch.handle and fields["STATE"] == "open" and fields["CHANNEL_ID"] == ch.channel_id
    assert (fields["DEPOSIT"], fields["SPENT"], fields["REMAINING"]) == ("100", "75", "25")
    assert out[14] == "3 voucher(s), highest total first:"
    assert out[15].split() == ["CUMULATIVE", "CREATED", "SIGNATURE"]
    assert [(line.split()[0], line.split()[2]) for line in out[16:]] == [
        (str(v.cumulative), v.signature) for v in reversed(signed)]

    doc = json.loads(cli(running, "channel", "show", ch.handle, "--tenant", ch.tenant_id, "-o", "json").stdout)
    assert doc["channel"]["id"] == ch.handle and doc["channel"]["spent"] == 75
    assert [(v["cumulative"], v["signature"]) for v in doc["vouchers"]] == [
        (v.cumulative, v.signature) for v in reversed(signed)]
    assert doc["next_page_token"] == ""

    page = json.loads(cli(running, "channel", "show", ch.handle, "--tenant", ch.tenant_id, "--limit", "2",
                          "-o", "json").stdout)
    assert [v["cumulative"] for v in page["vouchers"]] == [75, 35] and page["next_page_token"] == "35"
    every = json.loads(cli(running, "channel", "show", ch.handle, "--tenant", ch.tenant_id, "--limit", "2",
                           "--all", "-o", "json").stdout)
    assert [v["cumulative"] for v in every["vouchers"]] == [75, 35, 10]
    more = cli(running, "channel", "show", ch.handle, "--tenant", ch.tenant_id, "--limit", "1")
    assert "1 voucher(s) on this page" in more.stdout and "--page-token 75" in more.stderr

    # Named under another tenant, the channel does not exist.
    other = open_channel(app, deposit=5)
    wrong = cli(running, "channel", "show", ch.handle, "--tenant", other.tenant_id, code=1)
    assert "NOT_FOUND" in wrong.stderr and ch.handle in wrong.stderr
    help_text = cli(running, "channel", "show", "--help").stdout
    assert "--tenant" in help_text and "--page-token" in help_text and "vouchers" in help_text


def test_channel_close_is_by_force_only_and_names_the_tenant(running):
    ch = open_channel(running.app, deposit=100)
    # Without --force argparse refuses it: an operator has no session URL to close cooperatively with.
    refused = cli(running, "channel", "close", ch.handle, "--tenant", ch.tenant_id, code=2)
    assert "--force" in refused.stderr
    other = open_channel(running.app, deposit=5)
    wrong = cli(running, "channel", "close", ch.handle, "--tenant", other.tenant_id, "--force", code=1)
    assert "NOT_FOUND" in wrong.stderr and ch.handle in wrong.stderr
    assert running.app.channels.get(ch.tenant_id, ch.handle).state == "open"
    # The RPC says the same to a client that leaves force unset.
    from teller_client import InvalidArgument

    with pytest.raises(InvalidArgument, match="force must be set"):
        running.admin().close_channel(ch.tenant_id, ch.handle, force=False)
    help_text = cli(running, "channel", "close", "--help").stdout
    assert "requestClose" in help_text and "grace period" in help_text
