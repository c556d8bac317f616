"""Vouchers asked of one channel at the same time are signed together: one
transaction and one audit event per batch, each caller its own voucher, the
totals one strictly increasing sequence (``teller.rpc.batcher.ChannelBatchers``)."""

from __future__ import annotations

import base64
import json
import threading

import pytest
from sqlalchemy import select

from teller.db.models import AuditEvent
from teller_client import LimitExceeded, Policy
from tests.support.channels import CHAIN_ID, ESCROW, open_channel
from tests.support.harness import RunningTeller, make_settings

UNIT = 25
#: Loopback and allowed: a top-up would be POSTed here (nothing listens; none is made).
URL = "http://127.0.0.1:9/m"
CALLERS = 32


def _challenge(payee: str, token: str, amount: int = UNIT) -> str:
    request = {"amount": str(amount), "currency": token, "recipient": payee, "unitType": "token",
               "suggestedDeposit": "10000",
               "methodDetails": {"escrowContract": ESCROW, "chainId": CHAIN_ID, "sessionProtocol": "v2"}}
    encoded = base64.urlsafe_b64encode(json.dumps(request).encode()).decode().rstrip("=")
    return f'Payment id="s1", realm="api.test", method="tempo", intent="session", request="{encoded}"'


def _payload(value: str) -> dict:
    encoded = value.split(" ", 1)[-1]
    return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))["payload"]


@pytest.fixture
def teller(db_url, tmp_path):
    running = RunningTeller(make_settings(db_url, tmp_path, outbound_allow=("127.0.0.1",)))
    yield running
    running.stop()


def test_concurrent_vouchers_of_one_channel_share_transactions(teller):
    # The deposit is all the policy allows a channel: spent, it is not topped up.
    t = teller.setup_tenant(policy=Policy(allow_unknown_assets=True, max_channel_deposit=UNIT * CALLERS))
    ch = open_channel(teller.app, deposit=UNIT * CALLERS, tenant_id=t.tenant_id)
    view = teller.app.channels.get(ch.tenant_id, ch.handle)
    header = [("WWW-Authenticate", _challenge(view.payee, view.token))]
    client = teller.client(t.token)
    start, totals, errors = threading.Barrier(CALLERS), [], []

    def caller() -> None:
        start.wait()
        try:
            signed = client.sign(status=402, headers=header, body=b"", url=URL,
                                 wallet_id=ch.wallet_id)
            payload = _payload(signed.header_value)
            assert payload["action"] == "voucher" and payload["channelId"] == ch.channel_id
            totals.append(int(payload["cumulativeAmount"]))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors[:3]
    # Each caller its own voucher, one unit each, up to the deposit exactly.
    assert sorted(totals) == [UNIT * n for n in range(1, CALLERS + 1)]
    assert [total for total, _ in teller.app.channels.vouchers(ch.tenant_id, ch.handle)] == sorted(totals)
    with teller.app.db.read() as s:
        details = [json.loads(d) for d in s.scalars(select(AuditEvent.details).where(
            AuditEvent.tenant_id == ch.tenant_id, AuditEvent.action == "channel.voucher"))]
    # Every voucher in exactly one audited batch, and batches there were.
    assert sum(d["vouchers"] for d in details) == CALLERS
    assert len(details) < CALLERS, len(details)
    # The deposit is spent and the cap leaves no room for a top-up: the next caller is told so, by name.
    with pytest.raises(LimitExceeded, match="channel_deposit_exhausted"):
        client.sign(status=402, headers=header, body=b"", url=URL, wallet_id=ch.wallet_id)


def test_a_caller_refused_by_policy_does_not_hold_up_its_batch(teller):
    t = teller.setup_tenant()
    ch = open_channel(teller.app, deposit=UNIT * 8, tenant_id=t.tenant_id)
    view = teller.app.channels.get(ch.tenant_id, ch.handle)
    client = teller.client(t.token)
    ok = [("WWW-Authenticate", _challenge(view.payee, view.token))]
    # A unit above the caller's own cap: refused alone, the others signed.
    start, results = threading.Barrier(8), []

    def caller(i: int) -> None:
        start.wait()
        try:
            signed = client.sign(status=402, headers=ok, body=b"", url=URL, wallet_id=ch.wallet_id,
                                 max_amount=UNIT - 1 if i % 2 else None)
            results.append(int(_payload(signed.header_value)["cumulativeAmount"]))
        except Exception as exc:
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert sorted(r for r in results if isinstance(r, int)) == [UNIT * n for n in range(1, 5)]
    assert sorted(r for r in results if isinstance(r, str)) == ["LimitExceeded"] * 4
