"""The asyncio client against the real server."""

from __future__ import annotations

import asyncio

import pytest

from teller_client import AsyncTellerClient, LimitExceeded, Policy
from testbed.x402_server import sdk_v2_challenge


def test_async_client_signs_and_maps_errors(teller):
    t = teller.setup_tenant(policy=Policy(daily_budget=1000))
    chall = sdk_v2_challenge(amount="1000")

    async def scenario():
        async with AsyncTellerClient(teller.target, t.token) as client:
            signed = await client.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url,
                                       wallet_id=t.wallet_id)
            with pytest.raises(LimitExceeded) as info:
                await client.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url,
                                  wallet_id=t.wallet_id)
            spend = await client.spend()
            wallets = await client.list_wallets()
            events, _ = await client.audit_events(action="payment.deny")
            return signed, info.value, spend, wallets, events

    signed, denial, spend, wallets, events = asyncio.run(scenario())
    assert signed.header_name == "PAYMENT-SIGNATURE" and signed.requirement.amount == 1000
    assert (denial.reason, denial.limit, denial.remaining) == ("budget_exhausted:day", 1000, 0)
    assert spend[0].reserved == 1000
    assert [w.id for w in wallets] == [t.wallet_id]
    assert len(events) == 1 and events[0].reason == "budget_exhausted:day"
