"""Teller closes a session channel without the payee: TIP-1034's forced close,
against mppx's session server on a local Tempo chain with the project's escrow
behind the escrow proxy (docs/sessions-testbed.md). The wallet sends the
escrow's requestClose itself (its fee reserved like a payment's); the chain
travels past the grace period; the reconciler sends withdraw, exactly once, and
marks the channel closed when the chain shows it. The wallet gets back the
deposit minus what the payee settled; mppx refuses the channel's vouchers from
the request on. A payee that closes during the grace period wins instead.

Each test has a chain of its own: it travels in time (evm_increaseTime), and
mppx's server and Teller set deadlines from the wall clock."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import time
from typing import Any

import httpx
import pytest
from eth_utils import keccak, to_checksum_address
from sqlalchemy import select

from teller.db.models import AuditEvent, Channel
from teller.mpp import challenge as mpp_challenge
from teller.mpp import gas as tempo_gas
from teller.mpp import session as mpp_session
from teller.mpp.channel import voucher_typed_data
from teller_client import Asset, Budget, FailedPrecondition, Policy
from testbed.chain import FACILITATOR_KEY
from testbed.escrow_proxy import escrow_abi, escrow_proxy
from testbed.tempo import TEMPO_CHAIN_ID, tempo_chain
from tests.integration.test_cli import TELLER, _env
from tests.support.harness import RunningTeller, make_settings
from tests.support.mpp_live import MPPX_CHAIN_ARGS, PATH_USD
from tests.support.mppx_session import mppx_session_server

pytestmark = pytest.mark.slow

PRICE = 100
DEPOSIT = 200_000
TRANSFER = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
HTTP = httpx.Client(timeout=60)


@pytest.fixture
def own(tmp_path):
    with tempo_chain(*MPPX_CHAIN_ARGS) as chain, escrow_proxy(chain.rpc_url) as (proxy_url, proxy):
        running = RunningTeller(make_settings(
            f"sqlite:///{tmp_path / 'teller.db'}", tmp_path, rpc_urls={chain.network: proxy_url},
            reconcile_interval_seconds=0, session_escrows={chain.network: proxy.escrow},
            outbound_allow=("127.0.0.1",)))
        try:
            yield chain, proxy_url, proxy, running
        finally:
            running.stop()


def _decode(value: str) -> dict:
    encoded = value.split(" ", 1)[-1]
    return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))


def _sign(client, t, url: str):
    unpaid = HTTP.get(url)
    assert unpaid.status_code == 402, unpaid.text
    return client.sign(status=402, headers=list(unpaid.headers.items()), body=unpaid.content, url=url,
                       wallet_id=t.wallet_id)


def _paid(client, t, url: str, server) -> dict:
    signed = _sign(client, t, url)
    paid = HTTP.get(url, headers=signed.retry_headers())
    assert paid.status_code == 200, f"mppx answered {paid.status_code} {paid.text[:300]}\n{server.log()[-3000:]}"
    return _decode(signed.header_value)["payload"]


def _events(w3, escrow: str, name: str, channel_id: str) -> list[dict]:
    logs = getattr(w3.eth.contract(address=escrow, abi=escrow_abi()).events, name)().get_logs(from_block=0)
    return [dict(e["args"]) for e in logs if "0x" + bytes(e["args"]["channelId"]).hex() == channel_id.lower()]


def _received(w3, sender: str, to: str) -> int:
    topic = lambda a: "0x" + "00" * 12 + a[2:].lower()  # noqa: E731
    logs = w3.eth.get_logs({"fromBlock": 0, "address": to_checksum_address(PATH_USD),
                            "topics": [TRANSFER, topic(sender), topic(to)]})
    return sum(int.from_bytes(bytes(log["data"])[:32], "big") for log in logs)


def _emulation_fees(w3, owner: str) -> int:
    """What the escrow proxy's emulated allowance (``approve`` from the wallet)
    cost it: docs/sessions-testbed.md, deviation 2; no Tempo node charges it."""
    approval = "0x" + keccak(text="Approval(address,address,uint256)").hex()
    logs = w3.eth.get_logs({"fromBlock": 0, "address": to_checksum_address(PATH_USD),
                            "topics": [approval, "0x" + "00" * 12 + owner[2:].lower()]})
    receipts = [w3.eth.get_transaction_receipt(h) for h in {log["transactionHash"] for log in logs}]
    return sum(tempo_gas.fee(r["gasUsed"], r["effectiveGasPrice"]) for r in receipts)


def _day(client):
    return next(w for w in client.spend() if w.scope == "tenant" and w.window == "day")


def _row(teller, handle: str) -> Channel:
    with teller.app.db.read() as s:
        c = s.get(Channel, handle)
        s.expunge(c)
        return c


def _payee_side(w3, escrow: str, descriptor: dict, fn: str, *args: Any) -> dict:
    """The payee's operator (mppx's server key) calling the escrow itself, as a payee
    watching the chain would: ``settle`` or ``close`` with a voucher Teller signed."""
    operator = w3.eth.account.from_key(FACILITATOR_KEY)
    d = (descriptor["payer"], descriptor["payee"], descriptor["operator"], descriptor["token"],
         bytes.fromhex(descriptor["salt"][2:]), descriptor["authorizedSigner"],
         bytes.fromhex(descriptor["expiringNonceHash"][2:]))
    call = getattr(w3.eth.contract(address=escrow, abi=escrow_abi()).functions, fn)(d, *args)
    tx = call.build_transaction({"from": operator.address, "nonce": w3.eth.get_transaction_count(operator.address)})
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(operator.sign_transaction(tx).raw_transaction), timeout=30)
    assert receipt["status"] == 1
    return dict(receipt)


def _voucher_bypassing_teller(teller, t, url: str, channel: Channel, total: int) -> httpx.Response:
    """A voucher on ``channel`` that Teller would refuse to sign, signed with the
    wallet's key straight through the vault (test only), sent to mppx: what mppx
    itself does with a voucher on a channel whose close was requested or done."""
    from teller.db.models import Wallet
    from teller.vault import SealedKey

    with teller.app.db.read() as s:
        w = s.get(Wallet, t.wallet_id)
        signer = teller.app.vault.signer(t.tenant_id, w.id, w.address,
                                         SealedKey(w.kek_version, w.wrapped_data_key, w.key_ciphertext))
    signature = signer.sign_typed_data(voucher_typed_data(bytes.fromhex(channel.channel_id[2:]), total,
                                                          escrow=channel.escrow, chain_id=TEMPO_CHAIN_ID))
    unpaid = HTTP.get(url)
    (challenge,) = [c for c in mpp_challenge.parse(list(unpaid.headers.items()), 64 * 1024) if c.intent == "session"]
    request = mpp_session.parse_request(challenge)
    descriptor = mpp_session.parse_descriptor(json.loads(channel.descriptor), "stored")
    payload = mpp_session.voucher_payload(descriptor, bytes.fromhex(channel.channel_id[2:]), total, signature)
    return HTTP.get(url, headers={challenge.header: mpp_session.credential(challenge, request, payload,
                                                                           t.address)})


def _travel_past(w3, grace_end: int) -> None:
    now = w3.eth.get_block("latest")["timestamp"]
    w3.provider.make_request("evm_increaseTime", [grace_end - now + 2])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    assert w3.eth.get_block("latest")["timestamp"] >= grace_end


def test_forced_close_after_the_grace_period(own):
    chain, proxy_url, proxy, teller = own
    w3 = chain.w3
    payee = to_checksum_address("0x" + secrets.token_hex(20))
    t = teller.setup_tenant(policy=Policy(assets=(Asset(chain.network, PATH_USD, 6),),
                                          budgets=(Budget(50_000_000, "day", name="day"),)))
    chain.fund(t.address, 1_000_000)
    funded = chain.balance(t.address)
    client = teller.client(t.token)
    with mppx_session_server(proxy_url, TEMPO_CHAIN_ID, proxy.escrow, PATH_USD, FACILITATOR_KEY, payee,
                             "0.0001", suggested_deposit="0.2") as server:
        url = server.url + "/metered"
        opened = _sign(client, t, url)
        assert _decode(opened.header_value)["payload"]["action"] == "open"
        assert HTTP.get(url, headers=opened.retry_headers()).status_code == 200, server.log()[-2000:]
        for _ in range(9):
            assert _paid(client, t, url, server)["action"] == "voucher"
        (channel,) = teller.app.channels.of_tenant(t.tenant_id)
        assert channel.cumulative == 10 * PRICE
        vouchers = dict(teller.app.channels.vouchers(t.tenant_id, channel.id))
        row = _row(teller, channel.id)
        descriptor = json.loads(row.descriptor)
        # The payee takes what the 6th voucher promised, and never settles the last four.
        settled = 6 * PRICE
        _payee_side(w3, proxy.escrow, descriptor, "settle", settled, bytes.fromhex(vouchers[settled][2:]))

        reserved_before = _day(client).reserved
        forced = client.close_channel(channel.id, force=True)
        request_tx = w3.eth.get_transaction_receipt(forced.tx_hash)
        (requested,) = _events(w3, proxy.escrow, "CloseRequested", channel.channel_id)
        grace = w3.eth.contract(address=proxy.escrow, abi=escrow_abi()).functions.CLOSE_GRACE_PERIOD().call()
        assert forced.grace_end == requested["closeGraceEnd"] == w3.eth.get_block(request_tx["blockNumber"])[
            "timestamp"] + grace
        assert (forced.id, forced.cumulative, forced.status, forced.receipt) == (channel.id, 10 * PRICE, 0, None)
        request_fee = teller.app.lifecycle.get(forced.payment_id, t.tenant_id)
        assert (request_fee.state, request_fee.amount, request_fee.tx_hash) == ("settled", 0, forced.tx_hash)
        assert request_fee.fee_paid == tempo_gas.fee(request_tx["gasUsed"], request_tx["effectiveGasPrice"]) > 0
        # Its fee went through the budget: reserved at its most, spent at what it cost.
        assert _day(client).reserved == reserved_before
        # Asked again: the same request, nothing sent twice.
        again = client.close_channel(channel.id, force=True)
        assert (again.tx_hash, again.payment_id, again.grace_end) == (forced.tx_hash, forced.payment_id,
                                                                      forced.grace_end)
        assert len(_events(w3, proxy.escrow, "CloseRequested", channel.channel_id)) == 1

        # Closing: Teller signs no voucher on it ...
        assert teller.app.channels.get(t.tenant_id, channel.id).state == "closing"
        with pytest.raises(Exception, match="closing: it takes no more vouchers") as refused:
            teller.app.channels.sign_voucher(t.tenant_id, channel.id, PRICE)
        assert refused.value.reason == "channel_not_open"
        # ... and mppx takes none once it reads the chain (it trusts its view of a
        # channel's state for channelStateTtl, 5 s by default).
        time.sleep(5.5)
        pending = _voucher_bypassing_teller(teller, t, url, row, 11 * PRICE)
        assert pending.status_code == 410, pending.text
        assert pending.json()["detail"] == "Channel closed: channel has a pending close request."
        # The next challenge for this payee opens a new channel (its open is not sent:
        # it expires, and the reconciler releases its deposit).
        reopened = _sign(client, t, url)
        assert _decode(reopened.header_value)["payload"]["action"] == "open"

        # Before the grace period ends, the reconciler withdraws nothing.
        early = teller.app.reconciler.run_once()
        assert "channel.withdraw" not in early.transitions and not early.errors, early
        assert early.transitions["channel.close_requested"] == 1 and early.transitions["channel.settled"] == 1
        assert _row(teller, channel.id).grace_end == forced.grace_end

        _travel_past(w3, forced.grace_end)
        first = teller.app.reconciler.run_once()
        assert first.transitions["channel.withdraw"] == 1 and not first.errors, first
        second = teller.app.reconciler.run_once()
        assert second.transitions["channel.closed"] == 1 and "channel.withdraw" not in second.transitions, second
        third = teller.app.reconciler.run_once()
        assert not third.transitions and not third.errors, third

        closed = _row(teller, channel.id)
        assert closed.state == "closed"
        time.sleep(5.5)
        # mppx refuses a voucher on the withdrawn channel too.
        gone = _voucher_bypassing_teller(teller, t, url, closed, 11 * PRICE)
        assert gone.status_code == 410, gone.text
        assert gone.json()["detail"] == "Channel not found: channel not funded on-chain.", gone.text
    # Exactly one withdraw, and the chain's word: deposit minus what was settled came back.
    (event,) = _events(w3, proxy.escrow, "ChannelClosed", channel.channel_id)
    assert (event["settledToPayee"], event["refundedToPayer"]) == (0, DEPOSIT - settled)
    assert _received(w3, proxy.escrow, t.address) == DEPOSIT - settled
    assert chain.balance(payee) == settled
    state = w3.eth.contract(address=proxy.escrow, abi=escrow_abi()).functions.getChannelState(
        bytes.fromhex(channel.channel_id[2:])).call()
    assert tuple(state) == (0, 0, 0)
    withdraw = teller.app.lifecycle.get(closed.withdraw_payment_id, t.tenant_id)
    withdraw_tx = w3.eth.get_transaction_receipt(withdraw.tx_hash)
    assert (withdraw.state, withdraw.amount) == ("settled", 0)
    assert withdraw.fee_paid == tempo_gas.fee(withdraw_tx["gasUsed"], withdraw_tx["effectiveGasPrice"]) > 0
    open_payment = teller.app.lifecycle.get(opened.payment_id, t.tenant_id)
    fees = open_payment.fee_paid + request_fee.fee_paid + withdraw.fee_paid
    # Spend equals the chain: the payee's share plus the three fees, to the unit.
    day = _day(client)
    assert day.spent == settled + fees
    assert funded - chain.balance(t.address) - _emulation_fees(w3, t.address) == settled + fees
    assert day.reserved == 0  # the unsent open expired past the chain's time
    with teller.app.db.read() as s:
        actions = list(s.scalars(select(AuditEvent.action).where(AuditEvent.tenant_id == t.tenant_id)))
    assert actions.count("channel.force_close") == 1 and actions.count("channel.withdraw") == 1
    assert actions.count("channel.closed") == 1


def test_a_payee_that_closes_during_the_grace_period_wins(own):
    chain, proxy_url, proxy, teller = own
    w3 = chain.w3
    payee = to_checksum_address("0x" + secrets.token_hex(20))
    t = teller.setup_tenant(policy=Policy(assets=(Asset(chain.network, PATH_USD, 6),),
                                          budgets=(Budget(50_000_000, "day", name="day"),)))
    chain.fund(t.address, 1_000_000)
    client = teller.client(t.token)
    with mppx_session_server(proxy_url, TEMPO_CHAIN_ID, proxy.escrow, PATH_USD, FACILITATOR_KEY, payee,
                             "0.0001", suggested_deposit="0.2") as server:
        url = server.url + "/metered"
        for _ in range(5):
            _paid(client, t, url, server)
        (channel,) = teller.app.channels.of_tenant(t.tenant_id)
        # This time an operator forces it: `teller admin channel close --force`.
        done = subprocess.run([*TELLER, "admin", "channel", "close", channel.id, "--tenant", t.tenant_id, "--force",
                               "-o", "json", "--target", teller.admin_target, "--token", teller.settings.admin_token],
                              env=_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        forced = json.loads(done.stdout)
        assert forced["grace_end"] and forced["tx_hash"] and forced["cumulative"] == 5 * PRICE
        with teller.app.db.read() as s:
            actors = list(s.scalars(select(AuditEvent.actor).where(AuditEvent.action == "channel.force_close")))
        assert actors == ["operator:bootstrap"]
        # mppx's own close credential is refused while a close request is pending ...
        with pytest.raises(FailedPrecondition, match=r"pending close request|refused"):
            client.close_channel(channel.id, url)
        # ... but the payee may still close on chain with the last voucher.
        total, signature = teller.app.channels.vouchers(t.tenant_id, channel.id)[-1]
        _payee_side(w3, proxy.escrow, json.loads(_row(teller, channel.id).descriptor), "close", total, total,
                    bytes.fromhex(signature[2:]))
    teller.app.reconciler.run_once()
    assert _row(teller, channel.id).state == "closed"
    _travel_past(w3, forced["grace_end"])
    after = teller.app.reconciler.run_once()
    assert "channel.withdraw" not in after.transitions and not after.errors, after
    assert _row(teller, channel.id).withdraw_payment_id is None
    (event,) = _events(w3, proxy.escrow, "ChannelClosed", channel.channel_id)
    assert (event["settledToPayee"], event["refundedToPayer"]) == (5 * PRICE, DEPOSIT - 5 * PRICE)
    assert chain.balance(payee) == 5 * PRICE
