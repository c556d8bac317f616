"""The local counterparty for MPP sessions, proved with mppx's OWN session client as the
payer: contracts/TestChannelEscrow.sol behind testbed/escrow_proxy.py, in front of
``anvil --network tempo --hardfork t4 --block-time 1``, with mppx's session server
(tests/support/mppx_session_server.mjs) as the payee. When mppx's reference client and
server complete a channel's life on it and the chain shows the right money moved, the
testbed is a fair counterparty for Teller's session payer.

Keys are anvil's public development keys."""

from __future__ import annotations

import secrets

import pytest
from eth_utils import to_checksum_address
from web3 import Web3

from scripts.build_contracts import artifact
from testbed.chain import FACILITATOR_KEY
from testbed.escrow_proxy import escrow_proxy
from testbed.tempo import TEMPO_CHAIN_ID, tempo_chain
from tests.support.mpp_live import MPPX_CHAIN_ARGS, PATH_USD
from tests.support.mppx_session import mppx_session_server, run_mppx_session_client

pytestmark = pytest.mark.slow

PAYER_KEY = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"  # anvil dev account 3
PRICE = 10_000  # raw units per paid request ("0.01")


@pytest.fixture(scope="module")
def testbed():
    with tempo_chain(*MPPX_CHAIN_ARGS) as chain, escrow_proxy(chain.rpc_url) as (proxy_url, proxy):
        yield chain, proxy_url, proxy


def _events(w3: Web3, escrow: str, name: str) -> list:
    contract = w3.eth.contract(address=escrow, abi=artifact("TestChannelEscrow")["abi"])
    return list(getattr(contract.events, name)().get_logs(from_block=0))


def test_open_vouchers_top_up_and_cooperative_close(testbed):
    chain, proxy_url, proxy = testbed
    payee = to_checksum_address("0x" + secrets.token_hex(20))
    payer = chain.w3.eth.account.from_key(PAYER_KEY).address
    with mppx_session_server(proxy_url, TEMPO_CHAIN_ID, proxy.escrow, PATH_USD, FACILITATOR_KEY, payee,
                             "0.01") as server:
        try:
            out = run_mppx_session_client({
                "rpcUrl": proxy_url, "chainId": TEMPO_CHAIN_ID, "escrowContract": proxy.escrow,
                "payerKey": PAYER_KEY, "url": server.url + "/metered", "requests": 5, "maxDeposit": "1",
                "topUp": "0.5"})
        except RuntimeError as exc:
            raise AssertionError(f"{exc}\n--- mppx session server ---\n{server.log()}") from None
    w3 = chain.w3
    (opened,) = _events(w3, proxy.escrow, "ChannelOpened")
    channel_id = "0x" + bytes(opened["args"]["channelId"]).hex()
    assert channel_id == out["channelId"].lower()
    assert opened["args"]["payer"] == payer
    # The proxy primed exactly the hash mppx computed from the signed transaction.
    assert proxy.primed[-1] == (payer, "0x" + bytes(opened["args"]["expiringNonceHash"]).hex())
    (topped,) = _events(w3, proxy.escrow, "TopUp")
    deposit = topped["args"]["newDeposit"]
    assert deposit == opened["args"]["deposit"] + 500_000
    (closed,) = _events(w3, proxy.escrow, "ChannelClosed")
    cumulative = int(out["cumulative"])
    assert cumulative == 10 * PRICE
    assert closed["args"]["settledToPayee"] + sum(e["args"]["deltaPaid"] for e in _events(w3, proxy.escrow, "Settled")) \
        == cumulative
    assert closed["args"]["refundedToPayer"] == deposit - cumulative
    # On chain: the payee holds exactly the last voucher's amount, the escrow nothing.
    assert chain.balance(payee) == cumulative
    assert chain.balance(proxy.escrow) == 0
