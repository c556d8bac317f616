"""Teller tops up an MPP session's channel when the next voucher would pass its
deposit, against mppx's own session server on the local Tempo testbed
(docs/sessions-testbed.md): the Sign batch reserves the top-up like the open,
Teller hands mppx the ``topUp`` credential (mppx broadcasts it), then answers
with the voucher the raised deposit covers. A stream of over a thousand
vouchers with top-ups in the middle, then a cooperative close; the chain shows
where every unit went, and Teller's spend is exactly that."""

from __future__ import annotations

import json
import secrets

import pytest
from eth_utils import to_checksum_address
from sqlalchemy import select

from teller.db.models import Channel, ChannelTopUp
from testbed.chain import FACILITATOR_KEY
from testbed.escrow_proxy import escrow_abi
from testbed.tempo import TEMPO_CHAIN_ID
from tests.e2e import test_teller_sessions as sessions
from tests.e2e.test_teller_sessions import (
    PRICE,
    VOUCHERS,
    _day,
    _decode,
    _emulation_fees,
    _events,
    _paid_request,
    _tenant,
)
from tests.support.harness import RunningTeller, make_settings
from tests.support.mpp_live import PATH_USD
from tests.support.mppx_session import mppx_session_server

pytestmark = pytest.mark.slow

# The sessions' chain: a Tempo chain with the escrow proxy (per module).
testbed = sessions.testbed


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db(request, tmp_path, testbed):
    """A Teller on SQLite, or on PostgreSQL (whose Sign batches lock the channel and
    raise its deposit through async psycopg), that may POST top-ups to the local server."""
    chain, proxy_url, proxy = testbed
    url = f"sqlite:///{tmp_path / 'teller.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    running = RunningTeller(make_settings(url, tmp_path, rpc_urls={chain.network: proxy_url},
                                          reconcile_interval_seconds=0, session_escrows={chain.network: proxy.escrow},
                                          outbound_allow=("127.0.0.1",)))
    yield running
    running.stop()

SMALL = 40_000  # the server's suggested deposit ("0.04"): 400 requests a deposit


def _server(proxy_url, proxy, payee):
    return mppx_session_server(proxy_url, TEMPO_CHAIN_ID, proxy.escrow, PATH_USD, FACILITATOR_KEY, payee,
                               "0.0001", suggested_deposit="0.04")


def test_a_thousand_vouchers_with_top_ups_then_a_close_leave_exactly_what_the_chain_shows(any_db, testbed):
    live = any_db
    chain, proxy_url, proxy = testbed
    payee = to_checksum_address("0x" + secrets.token_hex(20))
    t = _tenant(live, chain)
    client = live.client(t.token)
    funded = chain.balance(t.address)
    with _server(proxy_url, proxy, payee) as server:
        url = server.url + "/metered"
        opened, _ = _paid_request(client, t, url, server)
        assert opened["action"] == "open"
        channel_id = opened["channelId"]
        totals = []
        for _ in range(VOUCHERS):
            payload, paid = _paid_request(client, t, url, server)
            # Every answer is a voucher on the one channel: the top-ups went to mppx on the way.
            assert payload["action"] == "voucher" and payload["channelId"] == channel_id
            totals.append(int(payload["cumulativeAmount"]))
        receipt = _decode(paid.headers["payment-receipt"])
        assert totals == [PRICE * n for n in range(2, VOUCHERS + 2)]
        assert int(receipt["acceptedCumulative"]) == totals[-1]
        (channel,) = live.app.channels.of_tenant(t.tenant_id)
        last = totals[-1]
        # Each top-up adds the suggested deposit, and only when the next unit did not fit.
        top_ups = -(-last // SMALL) - 1
        assert top_ups >= 1 and channel.deposit == SMALL * (1 + top_ups) and channel.cumulative == last
        on_chain = _events(chain.w3, proxy.escrow, "TopUp", channel_id)
        assert len(on_chain) == top_ups and {e["additionalDeposit"] for e in on_chain} == {SMALL}
        assert on_chain[-1]["newDeposit"] == channel.deposit
        # Each top-up a payment, reserved against the day, audited with its channel and new deposit.
        with live.app.db.read() as s:
            ids = list(s.scalars(select(ChannelTopUp.payment_id).where(ChannelTopUp.channel == channel.id)
                                 .order_by(ChannelTopUp.deposit_before)))
        assert len(ids) == top_ups
        signed = [json.loads(e.details_json) for e in client.audit_events(action="payment.sign")[0]]
        topped = [d for d in signed if d.get("action") == "topUp"]
        assert [(d["channel"], d["added"], d["deposit"]) for d in topped] == \
            [(channel.id, SMALL, SMALL * (n + 2)) for n in range(top_ups)][::-1]
        assert _day(client).reserved > channel.deposit
        closed = client.close_channel(channel.id, url)
        assert (closed.cumulative, closed.status) == (last, 204), server.log()[-2000:]
    (event,) = _events(chain.w3, proxy.escrow, "ChannelClosed", channel_id)
    settled_before = sum(e["deltaPaid"] for e in _events(chain.w3, proxy.escrow, "Settled", channel_id))
    assert settled_before + event["settledToPayee"] == last
    assert event["refundedToPayer"] == channel.deposit - last
    result = live.app.reconciler.run_once()
    assert not result.errors, result.errors
    assert result.transitions["channel.closed"] == 1, result.transitions
    # The reconciler read the escrow's TopUp events: each confirms Teller's top-up of that transaction.
    assert result.transitions["channel.topped_up"] == top_ups, result.transitions
    confirmed = [json.loads(e.details_json) for e in client.audit_events(action="channel.topped_up")[0]]
    assert sorted(d["top_up_payment"] for d in confirmed) == sorted(ids)
    assert all(d["confirmed"] for d in confirmed)
    payments = [live.app.lifecycle.get(p, t.tenant_id) for p in [closed_open_id(live, channel.id), *ids]]
    assert all(p.state == "settled" and p.fee_paid for p in payments), payments
    fees = sum(p.fee_paid for p in payments)
    # On chain: the payee holds exactly the last voucher; the wallet paid that and the
    # fees of the open and the top-ups (and the testbed's emulated approvals), and got
    # the rest of every deposit back.
    assert chain.balance(payee) == last
    wallet_paid = funded - chain.balance(t.address) - _emulation_fees(chain.w3, t.address)
    assert wallet_paid == last + fees
    state = chain.w3.eth.contract(address=proxy.escrow, abi=escrow_abi()).functions.getChannelState(
        bytes.fromhex(channel_id[2:])).call()
    assert tuple(state) == (0, 0, 0)
    # Teller's spend is what the chain shows, to the unit.
    day = _day(client)
    assert (day.reserved, day.spent) == (0, wallet_paid)
    print(f"\nvouchers={len(totals)} top_ups={top_ups} deposit={channel.deposit} payee={last} "
          f"refund={event['refundedToPayer']} fees={[p.fee_paid for p in payments]} spent={day.spent}")


def closed_open_id(live, handle: str) -> str:
    with live.app.db.read() as s:
        return str(s.scalar(select(Channel.open_payment_id).where(Channel.id == handle)))
