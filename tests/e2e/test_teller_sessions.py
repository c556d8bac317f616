"""Teller pays MPP sessions: mppx's session server (TIP-1034 v2) on a local Tempo
chain with the project's escrow behind the escrow proxy (docs/sessions-testbed.md).
The first paid request opens a channel (deposit and the open's fee reserved in the
batch that signs it); every later one is answered with a voucher under the
channel's lock. mppx verifies each against the chain's ChannelOpened event and its
own voucher rules; the chain shows where the deposit went."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets

import httpx
import pytest
from eth_utils import keccak, to_checksum_address

from teller.mpp import challenge as mpp_challenge
from teller.mpp import gas as tempo_gas
from teller.mpp import session as mpp_session
from teller_client import Asset, Budget, FailedPrecondition, LimitExceeded, PermissionDenied, Policy
from testbed.chain import FACILITATOR_KEY
from testbed.escrow_proxy import escrow_abi, escrow_proxy
from testbed.tempo import TEMPO_CHAIN_ID, tempo_chain
from tests.support.harness import RunningTeller, make_settings
from tests.support.mpp_live import MPPX_CHAIN_ARGS, PATH_USD
from tests.support.mppx_session import mppx_session_server

pytestmark = pytest.mark.slow

PRICE = 100  # raw units per paid request: "0.0001" at 6 decimals
DEPOSIT = 200_000  # the server's suggested deposit: "0.2", 2,000 requests
VOUCHERS = int(os.environ.get("TELLER_TEST_VOUCHERS", "1000"))


@pytest.fixture(scope="module")
def testbed():
    with tempo_chain(*MPPX_CHAIN_ARGS) as chain, escrow_proxy(chain.rpc_url) as (proxy_url, proxy):
        yield chain, proxy_url, proxy


@pytest.fixture
def live(tmp_path, testbed):
    chain, proxy_url, proxy = testbed
    running = RunningTeller(make_settings(
        f"sqlite:///{tmp_path / 'teller.db'}", tmp_path, rpc_urls={chain.network: proxy_url},
        reconcile_interval_seconds=0, session_escrows={chain.network: proxy.escrow},
        outbound_allow=("127.0.0.1",)))
    yield running
    running.stop()


def _tenant(teller, chain, *, fund: int = 1_000_000, day: int = 50_000_000):
    t = teller.setup_tenant(policy=Policy(assets=(Asset(chain.network, PATH_USD, 6),),
                                          budgets=(Budget(day, "day", name="day"),)))
    chain.fund(t.address, fund)
    return t


def _decode(value: str) -> dict:
    encoded = value.split(" ", 1)[-1]
    return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))


HTTP = httpx.Client(timeout=60)  # one keep-alive connection for a stream's requests


def _paid_request(client, t, url: str, server) -> tuple[dict, httpx.Response]:
    unpaid = HTTP.get(url)
    assert unpaid.status_code == 402, unpaid.text
    signed = client.sign(status=402, headers=list(unpaid.headers.items()), body=unpaid.content, url=url,
                         wallet_id=t.wallet_id)
    paid = HTTP.get(url, headers=signed.retry_headers())
    assert paid.status_code == 200, f"mppx answered {paid.status_code} {paid.text[:300]}\n{server.log()[-3000:]}"
    return _decode(signed.header_value)["payload"], paid


def _day(client):
    return next(w for w in client.spend() if w.scope == "tenant" and w.window == "day")


def _events(w3, escrow: str, name: str, channel_id: str) -> list[dict]:
    logs = getattr(w3.eth.contract(address=escrow, abi=escrow_abi()).events, name)().get_logs(from_block=0)
    return [dict(e["args"]) for e in logs if "0x" + bytes(e["args"]["channelId"]).hex() == channel_id.lower()]


TRANSFER = "0x" + keccak(text="Transfer(address,address,uint256)").hex()


def _received(w3, sender: str, to: str) -> int:
    """The token sent from ``sender`` to ``to``, summed from its Transfer logs."""
    topic = lambda a: "0x" + "00" * 12 + a[2:].lower()  # noqa: E731
    logs = w3.eth.get_logs({"fromBlock": 0, "address": to_checksum_address(PATH_USD),
                            "topics": [TRANSFER, topic(sender), topic(to)]})
    return sum(int.from_bytes(bytes(log["data"])[:32], "big") for log in logs)


def _emulation_fees(w3, owner: str) -> int:
    """What the escrow proxy's ``approve`` transactions from ``owner`` cost it: the
    testbed's emulation of the precompile's allowance-free transfer
    (docs/sessions-testbed.md, deviation 2); no Tempo node charges them."""
    approval = "0x" + keccak(text="Approval(address,address,uint256)").hex()
    logs = w3.eth.get_logs({"fromBlock": 0, "address": to_checksum_address(PATH_USD),
                            "topics": [approval, "0x" + "00" * 12 + owner[2:].lower()]})
    receipts = [w3.eth.get_transaction_receipt(h) for h in {log["transactionHash"] for log in logs}]
    return sum(tempo_gas.fee(r["gasUsed"], r["effectiveGasPrice"]) for r in receipts)


def _server(proxy_url, proxy, payee):
    return mppx_session_server(proxy_url, TEMPO_CHAIN_ID, proxy.escrow, PATH_USD, FACILITATOR_KEY, payee,
                               "0.0001", suggested_deposit="0.2")


def test_one_open_then_a_thousand_vouchers_that_mppx_accepts(live, testbed):
    chain, proxy_url, proxy = testbed
    payee = to_checksum_address("0x" + secrets.token_hex(20))
    t = _tenant(live, chain)
    client = live.client(t.token)
    with _server(proxy_url, proxy, payee) as server:
        url = server.url + "/metered"
        opened, _ = _paid_request(client, t, url, server)
        assert opened["action"] == "open" and opened["cumulativeAmount"] == str(PRICE)
        channel_id = opened["channelId"]
        # The deposit and the open's most expensive fee are reserved against the day.
        reserved = _day(client).reserved
        assert DEPOSIT < reserved < DEPOSIT + 50_000, reserved
        totals = []
        for _ in range(VOUCHERS):
            payload, paid = _paid_request(client, t, url, server)
            assert payload["action"] == "voucher" and payload["channelId"] == channel_id
            totals.append(int(payload["cumulativeAmount"]))
        receipt = _decode(paid.headers["payment-receipt"])
    # One strictly increasing sequence, one unit per request, each accepted by mppx.
    assert totals == [PRICE * n for n in range(2, VOUCHERS + 2)]
    assert int(receipt["acceptedCumulative"]) == totals[-1]
    # On chain: the open moved the deposit from the wallet into the escrow.
    (event,) = _events(chain.w3, proxy.escrow, "ChannelOpened", channel_id)
    assert (event["payer"], event["payee"], event["deposit"]) == (t.address, payee, DEPOSIT)
    channel = live.app.channels.of_tenant(t.tenant_id)
    assert [(c.channel_id, c.deposit, c.cumulative, c.state) for c in channel] == \
        [(channel_id, DEPOSIT, totals[-1], "open")]
    # Still reserved: vouchers spend inside the deposit, they reserve nothing more.
    assert _day(client).reserved == reserved


def test_a_deposit_the_budget_cannot_hold_opens_nothing(live, testbed):
    chain, proxy_url, proxy = testbed
    payee = to_checksum_address("0x" + secrets.token_hex(20))
    t = _tenant(live, chain, day=100_000)  # below the 200,000 deposit
    client = live.client(t.token)
    with _server(proxy_url, proxy, payee) as server:
        unpaid = httpx.get(server.url + "/metered", timeout=30)
        with pytest.raises(LimitExceeded, match="day"):
            client.sign(status=402, headers=list(unpaid.headers.items()), body=unpaid.content,
                        url=server.url + "/metered", wallet_id=t.wallet_id)
    assert live.app.channels.of_tenant(t.tenant_id) == []


def test_an_escrow_teller_does_not_trust_gets_no_deposit(tmp_path, testbed):
    chain, proxy_url, proxy = testbed
    running = RunningTeller(make_settings(f"sqlite:///{tmp_path / 'teller.db'}", tmp_path,
                                          rpc_urls={chain.network: proxy_url}, reconcile_interval_seconds=0))
    try:
        t = _tenant(running, chain)
        client = running.client(t.token)
        with _server(proxy_url, proxy, to_checksum_address("0x" + secrets.token_hex(20))) as server:
            unpaid = httpx.get(server.url + "/metered", timeout=30)
            with pytest.raises(FailedPrecondition, match=re.escape(f"escrow {proxy.escrow} on {chain.network} "
                                                                   "is not one Teller trusts")) as refused:
                client.sign(status=402, headers=list(unpaid.headers.items()), body=unpaid.content,
                            url=server.url + "/metered", wallet_id=t.wallet_id)
        assert refused.value.reason == "escrow_untrusted"
    finally:
        running.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db(request, tmp_path, testbed):
    """A Teller on SQLite, or on PostgreSQL (whose batch writes the channel through async psycopg)."""
    chain, proxy_url, proxy = testbed
    url = f"sqlite:///{tmp_path / 'teller.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    short = request.node.get_closest_marker("short_validity")  # how long an open stays minable, when it matters
    running = RunningTeller(make_settings(url, tmp_path, rpc_urls={chain.network: proxy_url},
                                          reconcile_interval_seconds=0,
                                          max_authorization_seconds=short.args[0] if short else 3600,
                                          session_escrows={chain.network: proxy.escrow}))
    yield running
    running.stop()


def _sign(client, t, url: str, key: str | None = None):
    unpaid = HTTP.get(url)
    assert unpaid.status_code == 402, unpaid.text
    return client.sign(status=402, headers=list(unpaid.headers.items()), body=unpaid.content, url=url,
                       wallet_id=t.wallet_id, idempotency_key=key)


def test_a_retry_under_the_same_key_gets_the_same_open_or_voucher(any_db, testbed):
    """A Sign retried with its key (a lost answer) never signs one more unit: the
    open's retry is the open, a voucher's retry is that voucher, each under a
    fresh challenge; mppx accepts what the retry carries."""
    chain, proxy_url, proxy = testbed
    t = _tenant(any_db, chain)
    client = any_db.client(t.token)
    with _server(proxy_url, proxy, to_checksum_address("0x" + secrets.token_hex(20))) as server:
        url = server.url + "/metered"
        first = _sign(client, t, url, "open-1")
        again = _sign(client, t, url, "open-1")
        assert again.payment_id == first.payment_id and _decode(again.header_value)["payload"]["action"] == "open"
        assert _decode(again.header_value)["payload"] == _decode(first.header_value)["payload"]
        assert HTTP.get(url, headers=again.retry_headers()).status_code == 200, server.log()[-2000:]
        lost = _sign(client, t, url, "v-1")  # its answer never reaches the server
        retried = _sign(client, t, url, "v-1")
        assert retried.payment_id == "" and retried.requirement.amount == PRICE
        a, b = (_decode(s.header_value)["payload"] for s in (lost, retried))
        assert (a["action"], a["cumulativeAmount"], a["signature"]) == ("voucher", str(2 * PRICE), b["signature"])
        assert b["cumulativeAmount"] == str(2 * PRICE)
        assert HTTP.get(url, headers=retried.retry_headers()).status_code == 200, server.log()[-2000:]
        nxt = _decode(_sign(client, t, url, "v-2").header_value)["payload"]
        assert nxt["cumulativeAmount"] == str(3 * PRICE)
    (channel,) = any_db.app.channels.of_tenant(t.tenant_id)
    assert channel.cumulative == 3 * PRICE
    assert [total for total, _ in any_db.app.channels.vouchers(t.tenant_id, channel.id)] == [PRICE, 2 * PRICE,
                                                                                             3 * PRICE]


@pytest.mark.short_validity(10)
@pytest.mark.parametrize("any_db", ["sqlite"], indirect=True)  # the expiry is the reconciler's, not a driver's
def test_an_open_never_sent_expires_and_closes_its_channel(any_db, testbed):
    """The open transaction's credential never reaches the server: once it can no
    longer be mined, the reconciler releases the deposit and closes the channel in
    Teller, and the next challenge opens a new one."""
    import time

    chain, proxy_url, proxy = testbed
    t = _tenant(any_db, chain)
    client = any_db.client(t.token)
    with _server(proxy_url, proxy, to_checksum_address("0x" + secrets.token_hex(20))) as server:
        url = server.url + "/metered"
        lost = _sign(client, t, url)
        assert _decode(lost.header_value)["payload"]["action"] == "open"
        assert _day(client).reserved > DEPOSIT
        # A voucher for it is still signed (the channel may yet open) ...
        assert _decode(_sign(client, t, url).header_value)["payload"]["action"] == "voucher"
        time.sleep(11)  # short_validity(10): the open's valid_before has passed
        for _ in range(20):
            any_db.app.reconciler.run_once()
            if client.get_payment(lost.payment_id).state == "expired":
                break
            time.sleep(1)
        assert client.get_payment(lost.payment_id).state == "expired"
        assert _day(client).reserved == 0
        (closed,) = any_db.app.channels.of_tenant(t.tenant_id)
        assert closed.state == "closed"
        # ... and after it, a new channel.
        reopened = _sign(client, t, url)
        assert _decode(reopened.header_value)["payload"]["action"] == "open"
        assert HTTP.get(url, headers=reopened.retry_headers()).status_code == 200, server.log()[-2000:]


def test_pay_opens_then_pays_each_request_with_a_voucher(live, testbed):
    """Through Pay (Teller makes the call): the first request opens the channel and
    is recorded as the channel's payment; the next ones go out with vouchers."""
    chain, proxy_url, proxy = testbed
    t = _tenant(live, chain)
    client = live.client(t.token)
    with _server(proxy_url, proxy, to_checksum_address("0x" + secrets.token_hex(20))) as server:
        url = server.url + "/metered"
        first = client.pay(url, wallet_id=t.wallet_id)
        assert first.status == 200 and json.loads(first.body)["paid"] is True, server.log()[-2000:]
        assert first.payment is not None and (first.payment.protocol, first.payment.amount) == ("mpp", DEPOSIT)
        later = [client.pay(url, wallet_id=t.wallet_id) for _ in range(5)]
        assert all(r.status == 200 and r.payment is None for r in later)
        receipts = [r.receipt for r in later]
        assert [int(r["acceptedCumulative"]) for r in receipts] == [PRICE * n for n in range(2, 7)]
    (channel,) = live.app.channels.of_tenant(t.tenant_id)
    assert channel.cumulative == 6 * PRICE


def test_close_channel_pays_the_payee_the_last_voucher_and_refunds_the_rest(live, testbed):
    """CloseChannel sends the final voucher; mppx closes on chain: the payee gets
    exactly the last voucher's total, the wallet the rest of the deposit, and no
    voucher is signed on the channel afterwards."""
    chain, proxy_url, proxy = testbed
    payee = to_checksum_address("0x" + secrets.token_hex(20))
    t = _tenant(live, chain)
    client = live.client(t.token)
    with _server(proxy_url, proxy, payee) as server:
        url = server.url + "/metered"
        for _ in range(12):
            _paid_request(client, t, url, server)
        (channel,) = live.app.channels.of_tenant(t.tenant_id)
        assert channel.cumulative == 12 * PRICE
        closed = client.close_channel(channel.id, url)
        assert (closed.id, closed.cumulative, closed.status) == (channel.id, 12 * PRICE, 204), server.log()[-2000:]
        assert closed.receipt is not None and closed.receipt["txHash"], closed
        assert live.app.channels.get(t.tenant_id, channel.id).state == "closing"
        # No more vouchers on it: the next challenge opens another channel.
        reopened = _sign(client, t, url)
        assert _decode(reopened.header_value)["payload"]["action"] == "open"
    (event,) = _events(chain.w3, proxy.escrow, "ChannelClosed", channel.channel_id)
    assert (event["settledToPayee"], event["refundedToPayer"]) == (12 * PRICE, DEPOSIT - 12 * PRICE)
    assert chain.balance(payee) == 12 * PRICE
    # The refund reached the wallet (read from the token's Transfer logs: the testbed's
    # emulated allowance costs the wallet fees of its own, docs/sessions-testbed.md).
    assert _received(chain.w3, proxy.escrow, t.address) == DEPOSIT - 12 * PRICE


def test_a_close_the_server_refuses_leaves_the_channel_open(live, testbed):
    chain, proxy_url, proxy = testbed
    t = _tenant(live, chain)
    client = live.client(t.token)
    with _server(proxy_url, proxy, to_checksum_address("0x" + secrets.token_hex(20))) as server:
        url = server.url + "/metered"
        _paid_request(client, t, url, server)
        (channel,) = live.app.channels.of_tenant(t.tenant_id)
    # Another payee's server: its challenge is not this channel's.
    with _server(proxy_url, proxy, to_checksum_address("0x" + secrets.token_hex(20))) as other:
        with pytest.raises(FailedPrecondition, match="no session challenge for channel") as refused:
            client.close_channel(channel.id, other.url + "/metered")
    assert refused.value.reason == "no_session_challenge"
    assert live.app.channels.get(t.tenant_id, channel.id).state == "closing"


def test_the_policy_judges_each_unit_caps_the_deposit_and_still_holds_after_the_open(live, testbed):
    """per_payment_max judges one unit (the open's first voucher and each later one),
    max_channel_deposit the deposit; a payee denied after the channel opened gets no
    more vouchers, although its deposit is already out."""
    chain, proxy_url, proxy = testbed
    payee = to_checksum_address("0x" + secrets.token_hex(20))
    assets = (Asset(chain.network, PATH_USD, 6),)
    t = _tenant(live, chain)
    client = live.client(t.token)
    admin = live.admin()
    with _server(proxy_url, proxy, payee) as server:
        url = server.url + "/metered"
        admin.set_policy(t.tenant_id, Policy(assets=assets, per_payment_max=PRICE, max_channel_deposit=DEPOSIT - 1,
                                             daily_budget=50_000_000))
        unpaid = HTTP.get(url)
        with pytest.raises(LimitExceeded) as capped:
            client.sign(status=402, headers=list(unpaid.headers.items()), body=unpaid.content, url=url,
                        wallet_id=t.wallet_id)
        assert capped.value.reason == "max_channel_deposit"
        admin.set_policy(t.tenant_id, Policy(assets=assets, per_payment_max=PRICE, max_channel_deposit=DEPOSIT,
                                             daily_budget=50_000_000))
        for _ in range(3):
            _paid_request(client, t, url, server)  # a deposit of 2,000 units, each unit within per_payment_max
        admin.set_policy(t.tenant_id, Policy(assets=assets, per_payment_max=PRICE, daily_budget=50_000_000,
                                             payees_deny=(payee,)))
        unpaid = HTTP.get(url)
        with pytest.raises(PermissionDenied) as denied:
            client.sign(status=402, headers=list(unpaid.headers.items()), body=unpaid.content, url=url,
                        wallet_id=t.wallet_id)
        assert denied.value.reason == "payee_not_allowed"
    (channel,) = live.app.channels.of_tenant(t.tenant_id)
    assert channel.cumulative == 3 * PRICE
    # Each refusal audited, the voucher's as the open's: payment.deny with its reason.
    events, _ = admin.audit_events(tenant_id=t.tenant_id, action="payment.deny")
    assert sorted(e.reason for e in events) == ["max_channel_deposit", "payee_not_allowed"]
    voucher_denial = next(e for e in events if e.reason == "payee_not_allowed")
    assert voucher_denial.payee.lower() == payee.lower() and json.loads(voucher_denial.details_json)["voucher"]


def test_a_cooperative_close_leaves_counted_only_what_the_payee_got_and_the_fee(any_db, testbed):
    """The payee closes the channel with Teller's last voucher (mppx closes on chain
    when it gets a close credential); the reconciler reads the escrow's
    ChannelClosed, closes the channel in Teller and stops counting the refunded
    part of the deposit: the day's spend is what the payee got plus the open's fee,
    to the unit, as the chain's balances show."""
    chain, proxy_url, proxy = testbed
    payee = to_checksum_address("0x" + secrets.token_hex(20))
    t = _tenant(any_db, chain)
    client = any_db.client(t.token)
    funded = chain.balance(t.address)
    requests = 25
    with _server(proxy_url, proxy, payee) as server:
        url = server.url + "/metered"
        opened = _sign(client, t, url)
        open_payload = _decode(opened.header_value)["payload"]
        assert open_payload["action"] == "open"
        assert HTTP.get(url, headers=opened.retry_headers()).status_code == 200, server.log()[-2000:]
        for _ in range(requests - 1):
            _paid_request(client, t, url, server)
        (channel,) = any_db.app.channels.of_tenant(t.tenant_id)
        total, signature = any_db.app.channels.vouchers(t.tenant_id, channel.id)[-1]
        assert total == requests * PRICE
        # The close: Teller's highest voucher, under a fresh challenge, POSTed without a body.
        unpaid = HTTP.get(url)
        (challenge,) = [c for c in mpp_challenge.parse(list(unpaid.headers.items()), 64 * 1024)
                        if c.intent == "session"]
        request = mpp_session.parse_request(challenge)
        descriptor = mpp_session.parse_descriptor(open_payload["descriptor"], "open credential")
        payload = mpp_session.close_payload(descriptor, bytes.fromhex(channel.channel_id[2:]), total,
                                            bytes.fromhex(signature[2:]))
        closing = HTTP.post(url, headers={challenge.header: mpp_session.credential(challenge, request, payload,
                                                                                  t.address)})
        # mppx answers a close with no content and its receipt, naming the close transaction.
        assert closing.status_code == 204, f"{closing.status_code} {closing.text[:300]}\n{server.log()[-3000:]}"
        close_tx = _decode(closing.headers["payment-receipt"])["txHash"]
    (closed,) = _events(chain.w3, proxy.escrow, "ChannelClosed", channel.channel_id)
    settled_before = sum(e["deltaPaid"] for e in _events(chain.w3, proxy.escrow, "Settled", channel.channel_id))
    payee_got = settled_before + closed["settledToPayee"]
    assert payee_got == total and closed["refundedToPayer"] == DEPOSIT - total
    # Before the reconciler: open in Teller, the whole deposit and the most the fee could be reserved.
    assert any_db.app.channels.get(t.tenant_id, channel.id).state == "open"
    assert _day(client).reserved > DEPOSIT
    result = any_db.app.reconciler.run_once()
    assert not result.errors, result.errors
    assert result.transitions["channel.closed"] == 1 and result.transitions["settled"] == 1, result.transitions
    assert any_db.app.channels.get(t.tenant_id, channel.id).state == "closed"
    (audited,) = client.audit_events(action="channel.closed")[0]
    assert audited.payment_id == opened.payment_id and audited.actor == "reconciler"
    details = json.loads(audited.details_json)
    assert (details["tx_hash"], details["settled_to_payee"], details["refunded_to_payer"]) == (
        close_tx.lower(), str(closed["settledToPayee"]), str(closed["refundedToPayer"]))
    payment = any_db.app.lifecycle.get(opened.payment_id, t.tenant_id)
    assert payment.state == "settled" and payment.fee_paid is not None and payment.fee_paid > 0
    day = _day(client)
    assert (day.reserved, day.spent) == (0, payee_got + payment.fee_paid)
    # The chain agrees: the payee holds what it got, the wallet paid that and the fee, the channel is gone.
    assert chain.balance(payee) == payee_got
    assert chain.balance(t.address) == funded - payee_got - payment.fee_paid - _emulation_fees(chain.w3, t.address)
    state = chain.w3.eth.contract(address=proxy.escrow, abi=escrow_abi()).functions.getChannelState(
        bytes.fromhex(channel.channel_id[2:])).call()
    assert tuple(state) == (0, 0, 0)
    # Another pass finds nothing more to do.
    again = any_db.app.reconciler.run_once()
    assert "channel.closed" not in again.transitions and _day(client).spent == payee_got + payment.fee_paid


def _sse(body: bytes) -> list[tuple[str, str]]:
    """(event type, data) of each event of an SSE body, as mppx writes them (LF lines)."""
    out = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        kind, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        out.append((kind, "\n".join(data)))
    return out


def _stream_vouchers(server) -> list[tuple[dict, str]]:
    """The vouchers POSTed to the stream (mppx's trace of each credential), with how mppx answered."""
    lines = server.log().splitlines()
    posted = [(json.loads(line.split("credential ", 1)[1]), lines[i + 1] if i + 1 < len(lines) else "")
              for i, line in enumerate(lines) if "mppx-session: credential " in line and '"method":"POST"' in line]
    return posted


def _paid_stream(client, t, server, tokens: int, deposit: int) -> tuple[list[tuple[dict, str]], list[dict], dict]:
    """Pay streams ``/stream/<tokens>`` (its request paid by an open of ``deposit``) and every token
    arrives, in order: what was POSTed to the stream (``_stream_vouchers``), the stream's voucher
    requests and its receipt."""
    with client.pay_stream(server.url + f"/stream/{tokens}", wallet_id=t.wallet_id) as r:
        assert r.response.status == 200, server.log()[-2000:]
        assert dict(r.response.headers)["content-type"].startswith("text/event-stream")
        assert r.response.payment is not None and r.response.payment.amount == deposit  # the open
        body = b"".join(r.chunks)
    events = _sse(body)
    assert [d for k, d in events if k == "message"] == [f"token {i}" for i in range(1, tokens + 1)]
    (receipt,) = [json.loads(d) for k, d in events if k == "payment-receipt"]
    return _stream_vouchers(server), [json.loads(d) for k, d in events if k == "payment-need-voucher"], receipt


def test_pay_streams_a_metered_sse_response_and_pays_each_voucher_the_stream_asks_for(live, testbed):
    """mppx's metered SSE route: one tick per event, a payment-need-voucher event
    whenever the vouchers it holds run short. Pay relays the stream as it comes and
    POSTs the next voucher each time; the caller gets every token, in order, and
    the channel ends at exactly what the server charged."""
    chain, proxy_url, proxy = testbed
    t = _tenant(live, chain)
    client = live.client(t.token)
    tokens = 30
    with _server(proxy_url, proxy, to_checksum_address("0x" + secrets.token_hex(20))) as server:
        posted, asked, receipt = _paid_stream(client, t, server, tokens, DEPOSIT)
    assert len(asked) >= tokens - 1 and len(posted) == len(asked), (len(asked), len(posted))
    # Every voucher went to the stream's channel, for exactly the total asked, and mppx took each.
    (channel,) = live.app.channels.of_tenant(t.tenant_id)
    assert all(p["channelId"] == channel.channel_id and p["action"] == "voucher" for p, _ in posted)
    assert [int(p["cumulativeAmount"]) for p, _ in posted] == [int(a["requiredCumulative"]) for a in asked]
    assert all("with 200" in answer or "with 204" in answer for _, answer in posted), posted[:3]
    assert channel.cumulative == tokens * PRICE == int(receipt["spent"]) == int(receipt["acceptedCumulative"])
    assert [total for total, _ in live.app.channels.vouchers(t.tenant_id, channel.id)] == \
        [PRICE * n for n in range(1, tokens + 1)]


def test_max_stream_amount_stops_the_stream_at_the_cap(live, testbed):
    """The caller's per-stream cap: the stream runs until the next voucher would
    pass it, then ends with stream_cap; no voucher above the cap is ever signed,
    and the caller got every token paid for."""
    chain, proxy_url, proxy = testbed
    t = _tenant(live, chain)
    client = live.client(t.token)
    cap = 5 * PRICE
    with _server(proxy_url, proxy, to_checksum_address("0x" + secrets.token_hex(20))) as server:
        got = bytearray()
        with pytest.raises(LimitExceeded, match="max_stream_amount") as stopped, \
                client.pay_stream(server.url + "/stream/20", wallet_id=t.wallet_id, max_stream_amount=cap) as r:
            for chunk in r.chunks:
                got += chunk
        posted = _stream_vouchers(server)
    assert stopped.value.reason == "stream_cap"
    (channel,) = live.app.channels.of_tenant(t.tenant_id)
    # The open paid the first token; the stream's vouchers added exactly the cap.
    assert channel.cumulative == PRICE + cap
    assert max(total for total, _ in live.app.channels.vouchers(t.tenant_id, channel.id)) == PRICE + cap
    assert [int(p["cumulativeAmount"]) for p, _ in posted] == [PRICE * n for n in range(2, 7)]
    assert [d for k, d in _sse(bytes(got)) if k == "message"] == [f"token {i}" for i in range(1, 7)]


def test_a_stream_that_outgrows_its_deposit_is_topped_up_mid_stream(live, testbed):
    """A deposit of ten units (the server's suggestion) and a stream of thirty tokens:
    each time the stream asks past the deposit, Pay signs a top-up through the Sign
    batch (reserved with its fee), POSTs it to mppx, which broadcasts it, then POSTs
    the voucher; every token arrives. The chain's deposit is Teller's, and once the
    reconciler has seen them mined Teller counts what the wallet paid, to the unit."""
    from sqlalchemy import select

    from teller.db.models import Channel, ChannelTopUp

    chain, proxy_url, proxy = testbed
    t = _tenant(live, chain)
    client = live.client(t.token)
    funded = chain.balance(t.address)
    small, tokens = 10 * PRICE, 30
    with mppx_session_server(proxy_url, TEMPO_CHAIN_ID, proxy.escrow, PATH_USD, FACILITATOR_KEY,
                             to_checksum_address("0x" + secrets.token_hex(20)), "0.0001",
                             suggested_deposit="0.001") as server:
        posted, asked, receipt = _paid_stream(client, t, server, tokens, small)
    # mppx took every credential: the top-ups (broadcast, 204) and the vouchers.
    assert all("with 200" in answer or "with 204" in answer for _, answer in posted), posted
    top_ups = [p for p, _ in posted if p["action"] == "topUp"]
    vouchers = [int(p["cumulativeAmount"]) for p, _ in posted if p["action"] == "voucher"]
    assert vouchers == [int(a["requiredCumulative"]) for a in asked]
    assert len(top_ups) == 2 and {int(p["additionalDeposit"]) for p in top_ups} == {small}
    (channel,) = live.app.channels.of_tenant(t.tenant_id)
    assert channel.cumulative == tokens * PRICE == int(receipt["spent"])
    assert channel.deposit == 3 * small
    on_chain = chain.w3.eth.contract(address=proxy.escrow, abi=escrow_abi()).functions.getChannelState(
        bytes.fromhex(channel.channel_id[2:])).call()
    assert on_chain[1] == channel.deposit
    assert [e["newDeposit"] for e in _events(chain.w3, proxy.escrow, "TopUp", channel.channel_id)] == \
        [2 * small, 3 * small]
    # Reserved while in flight: the open's and each top-up's deposit, and each one's most expensive fee.
    with live.app.db.read() as s:
        ids = [str(s.scalar(select(Channel.open_payment_id).where(Channel.id == channel.id))),
               *s.scalars(select(ChannelTopUp.payment_id).where(ChannelTopUp.channel == channel.id)
                          .order_by(ChannelTopUp.deposit_before))]
    held = [live.app.lifecycle.get(p, t.tenant_id) for p in ids]
    assert [p.amount for p in held] == [small, small, small]
    assert _day(client).reserved == sum(p.amount + p.fee_max for p in held)
    signed = [json.loads(e.details_json) for e in client.audit_events(action="payment.sign")[0]]
    assert sorted(d["deposit"] for d in signed if d.get("action") == "topUp") == [2 * small, 3 * small]
    result = live.app.reconciler.run_once()
    assert not result.errors, result.errors
    settled = [live.app.lifecycle.get(p, t.tenant_id) for p in ids]
    assert all(p.state == "settled" and p.fee_paid for p in settled), settled
    wallet_paid = funded - chain.balance(t.address) - _emulation_fees(chain.w3, t.address)
    assert wallet_paid == channel.deposit + sum(p.fee_paid for p in settled)
    day = _day(client)
    assert (day.reserved, day.spent) == (0, wallet_paid)


def test_the_httpx_pay_transport_streams_a_metered_response_as_it_arrives(live, testbed):
    """teller_client's TellerPayTransport: a plain httpx client streams mppx's metered
    SSE route through Pay, token by token, Teller paying the vouchers under the
    transport's max_stream_amount."""
    from teller_client.integrations import TellerPayTransport

    chain, proxy_url, proxy = testbed
    t = _tenant(live, chain)
    tokens = 8
    transport = TellerPayTransport(live.client(t.token), t.wallet_id, max_stream_amount=tokens * PRICE)
    with _server(proxy_url, proxy, to_checksum_address("0x" + secrets.token_hex(20))) as server, \
            httpx.Client(transport=transport) as http, http.stream("GET", server.url + f"/stream/{tokens}") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.extensions["teller_pay"].payment.amount == DEPOSIT  # the open
        pieces = list(r.iter_bytes())
    assert len(pieces) > tokens  # handed on as they came, not gathered
    assert [d for k, d in _sse(b"".join(pieces)) if k == "message"] == [f"token {i}" for i in range(1, tokens + 1)]
    (channel,) = live.app.channels.of_tenant(t.tenant_id)
    assert channel.cumulative == tokens * PRICE
