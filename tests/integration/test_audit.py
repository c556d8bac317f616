"""The audit log: every admin action, signature and denial, filterable and paged."""

from __future__ import annotations

import json

import pytest

from teller_client import InvalidArgument, LimitExceeded, Policy
from testbed.x402_server import sdk_v2_challenge


def test_every_action_is_recorded(teller):
    admin = teller.admin()
    t = teller.setup_tenant(policy=Policy(per_payment_max=1000))
    client = teller.client(t.token)
    chall = sdk_v2_challenge(amount="1000")
    signed = client.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url, wallet_id=t.wallet_id)
    big = sdk_v2_challenge(amount="1001")
    with pytest.raises(LimitExceeded):
        client.sign(status=402, headers=big.headers, body=big.body, url=big.url, wallet_id=t.wallet_id)
    admin.revoke_token(t.token_id)
    admin.disable_tenant(t.tenant_id)

    events, _ = admin.audit_events(tenant_id=t.tenant_id, page_size=100)
    actions = [e.action for e in reversed(events)]
    assert actions == ["tenant.create", "token.issue", "wallet.create", "policy.set", "payment.sign",
                       "payment.deny", "token.revoke", "tenant.disable"]
    sign = next(e for e in events if e.action == "payment.sign")
    assert (sign.payment_id, sign.wallet_id, sign.amount) == (signed.payment_id, t.wallet_id, "1000")
    assert sign.network == "eip155:84532" and sign.payee == signed.requirement.pay_to
    assert sign.asset == signed.requirement.asset and sign.resource_url == chall.url
    assert sign.actor == f"token:{t.token_id}" and sign.at_ms > 0
    assert json.loads(sign.details_json)["protocol"] == "x402"
    deny = next(e for e in events if e.action == "payment.deny")
    assert (deny.outcome, deny.reason, deny.amount) == ("denied", "per_payment_max", "1001")


def test_paging_and_filters(teller):
    admin = teller.admin()
    t = teller.setup_tenant()
    for i in range(7):
        admin.create_wallet(t.tenant_id, f"w{i}")
    seen, token, pages = [], "", 0
    while True:
        page, token = admin.audit_events(tenant_id=t.tenant_id, action="wallet.create", page_size=3, page_token=token)
        seen += page
        pages += 1
        if not token:
            break
    assert pages == 3 and len(seen) == 8  # setup_tenant's wallet + 7
    assert [e.id for e in seen] == sorted((e.id for e in seen), reverse=True)
    assert len({e.id for e in seen}) == 8
    newest = seen[0].at_ms
    later, _ = admin.audit_events(tenant_id=t.tenant_id, since_ms=newest + 1)
    assert later == []
    with pytest.raises(InvalidArgument):
        admin.audit_events(page_token="not-a-cursor")
