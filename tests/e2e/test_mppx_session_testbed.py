"""The local counterparty for MPP sessions, proved with mppx's OWN session client as the
payer: contracts/TestChannelEscrow.sol behind testbed/escrow_proxy.py, in front of
``anvil --network tempo --hardfork t4 --block-time 1``, with mppx's session server
(tests/support/mppx_session_server.mjs) as the payee side. When mppx's reference client
and server complete a channel's life on it and the chain shows the right money moved,
the testbed is a fair counterparty for Teller's session payer.

Keys are anvil's public development keys."""

from __future__ import annotations

import base64
import json
import re
import secrets
from typing import Any

import httpx
import pytest
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.exceptions import ContractCustomError

from testbed.chain import FACILITATOR_KEY
from testbed.escrow_proxy import escrow_abi, escrow_proxy
from testbed.tempo import TEMPO_CHAIN_ID, tempo_chain
from tests.support.mpp_live import MPPX_CHAIN_ARGS, PATH_USD
from tests.support.mppx_session import mppx_session_server, run_mppx_session_client

pytestmark = pytest.mark.slow

PAYER_KEY = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"  # anvil dev account 3
FORCED_PAYER_KEY = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a"  # anvil dev account 4
STREAM_PAYER_KEY = "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba"  # anvil dev account 5
PRICE = 10_000  # raw units per paid request: "0.01" at 6 decimals
TRANSFER = "0x" + keccak(text="Transfer(address,address,uint256)").hex()


@pytest.fixture(scope="module")
def testbed():
    with tempo_chain(*MPPX_CHAIN_ARGS) as chain, escrow_proxy(chain.rpc_url) as (proxy_url, proxy):
        yield chain, proxy_url, proxy


@pytest.fixture
def own_testbed():
    """A chain of the test's own: one that travels in time leaves its clock ahead of the
    wall clock that mppx's client sets ``validBefore`` from."""
    with tempo_chain(*MPPX_CHAIN_ARGS) as chain, escrow_proxy(chain.rpc_url) as (proxy_url, proxy):
        yield chain, proxy_url, proxy


def _escrow(w3: Web3, escrow: str) -> Any:
    return w3.eth.contract(address=escrow, abi=escrow_abi())


def _events(w3: Web3, escrow: str, name: str, channel_id: str) -> list[dict[str, Any]]:
    logs = getattr(_escrow(w3, escrow).events, name)().get_logs(from_block=0)
    return [dict(e["args"]) for e in logs if "0x" + bytes(e["args"]["channelId"]).hex() == channel_id.lower()]


def _received(w3: Web3, sender: str, to: str) -> int:
    """TIP-20 (pathUSD) sent from ``sender`` to ``to``, summed from the Transfer logs."""
    topic = lambda a: "0x" + "00" * 12 + a[2:].lower()  # noqa: E731
    logs = w3.eth.get_logs({"fromBlock": 0, "address": to_checksum_address(PATH_USD),
                            "topics": [TRANSFER, topic(sender), topic(to)]})
    return sum(int.from_bytes(bytes(log["data"])[:32], "big") for log in logs)


def _pay(server: Any, proxy_url: str, escrow: str, payer_key: str, **kw: Any) -> dict[str, Any]:
    try:
        return run_mppx_session_client({"rpcUrl": proxy_url, "chainId": TEMPO_CHAIN_ID, "escrowContract": escrow,
                                        "payerKey": payer_key, "url": server.url + "/metered", **kw})
    except RuntimeError as exc:
        raise AssertionError(f"{exc}\n--- mppx session server ---\n{server.log()}") from None


def _challenge(url: str) -> dict[str, Any]:
    """The session challenge mppx's server answers an unpaid request with, decoded."""
    response = httpx.get(url)
    assert response.status_code == 402
    header = response.headers["www-authenticate"]
    assert header.startswith("Payment ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', header))
    raw = params["request"]
    params["request"] = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    return params


def _credentials(log: str) -> list[dict[str, Any]]:
    """The credentials mppx's session server received, as its script traces them."""
    prefix = "mppx-session: credential "
    return [json.loads(line[len(prefix):]) for line in log.splitlines() if line.startswith(prefix)]


def _server(proxy_url: str, proxy: Any, payee: str) -> Any:
    return mppx_session_server(proxy_url, TEMPO_CHAIN_ID, proxy.escrow, PATH_USD, FACILITATOR_KEY, payee,
                               "0.01", suggested_deposit="0.03")


def test_open_vouchers_top_up_and_cooperative_close(testbed):
    chain, proxy_url, proxy = testbed
    w3 = chain.w3
    payee = to_checksum_address("0x" + secrets.token_hex(20))
    payer = w3.eth.account.from_key(PAYER_KEY).address
    server_address = w3.eth.account.from_key(FACILITATOR_KEY).address
    with _server(proxy_url, proxy, payee) as server:
        out = _pay(server, proxy_url, proxy.escrow, PAYER_KEY, requests=5, maxDeposit="1", topUp="0.5")
        challenge = _challenge(server.url + "/metered")
        actions = _credentials(server.log())
    channel_id = out["channelId"]
    assert out["statuses"] == [200] * 10
    # What mppx's payer sent, in order: one open, vouchers (one per paid request after the
    # open), top-ups (its own, when the deposit ran short, and the explicit one), a close.
    assert (challenge["method"], challenge["intent"]) == ("tempo", "session")
    assert challenge["request"] == {
        "amount": str(PRICE), "currency": PATH_USD, "recipient": payee, "suggestedDeposit": str(3 * PRICE),
        "unitType": "request", "methodDetails": {"chainId": TEMPO_CHAIN_ID, "escrowContract": proxy.escrow,
                                                 "operator": server_address, "sessionProtocol": "v2"}}
    kinds = [a["action"] for a in actions]
    assert kinds[0] == "open" and kinds[-1] == "close" and kinds.count("open") == 1, kinds
    assert kinds.count("voucher") == 9 and kinds.count("topUp") >= 1, kinds
    vouchers = [int(a["cumulativeAmount"]) for a in actions if a["action"] in ("open", "voucher", "close")]
    assert vouchers == sorted(vouchers) and vouchers[-1] == 10 * PRICE, vouchers
    (opened,) = _events(w3, proxy.escrow, "ChannelOpened", channel_id)
    assert (opened["payer"], opened["payee"], opened["deposit"]) == (payer, payee, 3 * PRICE)
    # The proxy primed the hash mppx computed from the signed open transaction, and
    # mppx's server accepted the channel only because ChannelOpened carried it.
    assert (payer, "0x" + bytes(opened["expiringNonceHash"]).hex()) in proxy.primed
    top_ups = [e["additionalDeposit"] for e in _events(w3, proxy.escrow, "TopUp", channel_id)]
    assert 500_000 in top_ups  # the explicit one; mppx's client also tops up by itself when the deposit runs out
    deposit = opened["deposit"] + sum(top_ups)
    cumulative = int(out["cumulative"])
    assert cumulative == 10 * PRICE
    (closed,) = _events(w3, proxy.escrow, "ChannelClosed", channel_id)
    settled_before = sum(e["deltaPaid"] for e in _events(w3, proxy.escrow, "Settled", channel_id))
    assert closed["settledToPayee"] + settled_before == cumulative
    assert closed["refundedToPayer"] == deposit - cumulative
    # On chain: the payee holds exactly the last voucher's cumulative amount, the payer
    # got the rest of the deposit back, and the escrow keeps nothing.
    assert chain.balance(payee) == cumulative
    assert _received(w3, proxy.escrow, payer) == deposit - cumulative
    assert chain.balance(proxy.escrow) == 0
    assert _escrow(w3, proxy.escrow).functions.getChannelState(bytes.fromhex(channel_id[2:])).call() == (0, 0, 0)


def test_forced_close_after_the_grace_period(own_testbed):
    chain, proxy_url, proxy = own_testbed
    w3 = chain.w3
    payee = to_checksum_address("0x" + secrets.token_hex(20))
    payer = w3.eth.account.from_key(FORCED_PAYER_KEY)
    with _server(proxy_url, proxy, payee) as server:
        out = _pay(server, proxy_url, proxy.escrow, FORCED_PAYER_KEY, requests=2, maxDeposit="1", closeAfter=False)
    channel_id = out["channelId"]
    (opened,) = _events(w3, proxy.escrow, "ChannelOpened", channel_id)
    descriptor = (opened["payer"], opened["payee"], opened["operator"], opened["token"], opened["salt"],
                  opened["authorizedSigner"], opened["expiringNonceHash"])
    escrow = _escrow(w3, proxy.escrow)
    grace = escrow.functions.CLOSE_GRACE_PERIOD().call()

    def send(fn: Any) -> dict[str, Any]:
        tx = fn.build_transaction({"from": payer.address, "nonce": w3.eth.get_transaction_count(payer.address)})
        return dict(w3.eth.wait_for_transaction_receipt(
            w3.eth.send_raw_transaction(payer.sign_transaction(tx).raw_transaction), timeout=30))

    assert send(escrow.functions.requestClose(descriptor))["status"] == 1
    grace_not_over = "0x" + keccak(text="GracePeriodNotOver()")[:4].hex()
    with pytest.raises(ContractCustomError, match=grace_not_over):
        escrow.functions.withdraw(descriptor).call({"from": payer.address})
    w3.provider.make_request("evm_increaseTime", [grace + 1])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    assert send(escrow.functions.withdraw(descriptor))["status"] == 1
    (closed,) = _events(w3, proxy.escrow, "ChannelClosed", channel_id)
    # The payee never settled its vouchers, so after the grace period the payer takes the deposit back.
    assert (closed["settledToPayee"], closed["refundedToPayer"]) == (0, opened["deposit"])
    assert _received(w3, proxy.escrow, payer.address) == opened["deposit"]
    assert chain.balance(payee) == 0


def test_metered_sse_stream_then_cooperative_close(testbed):
    chain, proxy_url, proxy = testbed
    w3 = chain.w3
    payee = to_checksum_address("0x" + secrets.token_hex(20))
    with _server(proxy_url, proxy, payee) as server:
        out = _pay(server, proxy_url, proxy.escrow, STREAM_PAYER_KEY, stream=server.url + "/stream/12",
                   requests=0, maxDeposit="1")
        actions = _credentials(server.log())
    assert out["events"] == [f"token {i}" for i in range(1, 13)]
    # The stream asked for vouchers in-band; the payer POSTed them (bodiless, to the
    # stream's URL) while the stream ran, topping up when the deposit ran short.
    kinds = [a["action"] for a in actions]
    assert kinds[0] == "open" and kinds[-1] == "close" and "topUp" in kinds, kinds
    assert all(a["method"] == "POST" for a in actions if a["action"] != "open"), actions
    cumulative = int(out["cumulative"])
    assert cumulative == 12 * PRICE
    channel_id = out["channelId"]
    (opened,) = _events(w3, proxy.escrow, "ChannelOpened", channel_id)
    deposit = opened["deposit"] + sum(e["additionalDeposit"] for e in _events(w3, proxy.escrow, "TopUp", channel_id))
    (closed,) = _events(w3, proxy.escrow, "ChannelClosed", channel_id)
    assert (closed["settledToPayee"], closed["refundedToPayer"]) == (cumulative, deposit - cumulative)
    assert chain.balance(payee) == cumulative


def test_the_test_escrow_agrees_with_tellers_channel_encoding(testbed):
    """Channel ids and voucher digests as Teller computes them (teller.mpp.channel) are the
    ones the test escrow computes on chain, so what Teller signs is what it verifies."""
    from teller.mpp.channel import ChannelDescriptor, channel_id, voucher_typed_data

    chain, _proxy_url, proxy = testbed
    escrow = _escrow(chain.w3, proxy.escrow)
    descriptor = ChannelDescriptor(
        payer=chain.w3.eth.account.from_key(PAYER_KEY).address, payee=to_checksum_address("0x" + "ab" * 20),
        operator=chain.w3.eth.account.from_key(FACILITATOR_KEY).address, token=PATH_USD, salt=secrets.token_bytes(32),
        authorized_signer="0x" + "00" * 20, expiring_nonce_hash=secrets.token_bytes(32))
    ours = channel_id(descriptor, proxy.escrow, TEMPO_CHAIN_ID)
    d = descriptor
    assert escrow.functions.computeChannelId(d.payer, d.payee, d.operator, d.token, d.salt, d.authorized_signer,
                                             d.expiring_nonce_hash).call() == ours
    for amount in (1, PRICE, 2**96 - 1):
        digest = voucher_typed_data(ours, amount, escrow=proxy.escrow, chain_id=TEMPO_CHAIN_ID).digest()
        assert escrow.functions.getVoucherDigest(ours, amount).call() == digest
