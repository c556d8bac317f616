"""x402 settled for real: Teller's proofs accepted by the official x402 middleware
and facilitator, moving the deployed EIP-3009 token on a local anvil chain."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from teller_client import Asset, Policy
from tests.support.chain import anvil, deploy_token
from tests.support.x402_live import resource_server

PAYEE = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
PRICE = 12_345


@pytest.fixture(scope="module")
def chain():
    with anvil() as url:
        yield deploy_token(url)


def test_v2_payment_settles_on_chain(teller, chain):
    t = teller.setup_tenant(policy=Policy(assets=(Asset(chain.network, chain.token.address, 6),)))
    chain.mint(t.address, 1_000_000)
    payer_before, payee_before = chain.balance(t.address), chain.balance(PAYEE)
    with resource_server(chain, PAYEE, PRICE) as base, httpx.Client(timeout=60) as http:
        unpaid = http.get(f"{base}/weather")
        assert unpaid.status_code == 402
        signed = teller.client(t.token).sign(status=402, headers=list(unpaid.headers.items()), body=unpaid.content,
                                             url=f"{base}/weather", wallet_id=t.wallet_id)
        paid = http.get(f"{base}/weather", headers={signed.header_name: signed.header_value})
    assert paid.status_code == 200, paid.text
    assert paid.json() == {"weather": "sunny"}
    receipt = json.loads(base64.b64decode(paid.headers["payment-response"]))
    assert receipt["success"] is True and receipt["transaction"].startswith("0x")
    assert receipt["payer"].lower() == t.address.lower()
    assert chain.balance(t.address) == payer_before - PRICE
    assert chain.balance(PAYEE) == payee_before + PRICE
