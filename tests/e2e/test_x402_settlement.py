"""x402 settled for real: Teller's proofs accepted by the official x402 middleware
and facilitator, moving the deployed EIP-3009 token on a local anvil chain."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from teller_client import Asset, Policy
from testbed.chain import anvil, deploy_token
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


@pytest.fixture(scope="module")
def base_sepolia_chain():
    # x402 v1 names networks ("base-sepolia"); the SDK's facilitator knows no name
    # for chain 31337, so v1 runs on an anvil that presents Base Sepolia's chain id.
    with anvil("--chain-id", "84532") as url:
        yield deploy_token(url)


def test_v1_payment_verified_and_settled_by_the_sdk_facilitator(teller, base_sepolia_chain):
    import asyncio

    from x402 import x402Facilitator
    from x402.http.utils import decode_payment_signature_header
    from x402.mechanisms.evm import FacilitatorWeb3Signer
    from x402.mechanisms.evm.exact import register_exact_evm_facilitator
    from x402.schemas.v1 import PaymentRequiredV1, PaymentRequirementsV1

    from testbed.chain import FACILITATOR_KEY, TOKEN_NAME, TOKEN_VERSION

    chain = base_sepolia_chain
    t = teller.setup_tenant(policy=Policy(assets=(Asset("eip155:84532", chain.token.address, 6),)))
    chain.mint(t.address, 1_000_000)
    requirements = PaymentRequirementsV1(
        scheme="exact", network="base-sepolia", max_amount_required=str(PRICE), resource="http://127.0.0.1/v1",
        description="weather", mime_type="application/json", pay_to=PAYEE, max_timeout_seconds=120,
        asset=chain.token.address, extra={"name": TOKEN_NAME, "version": TOKEN_VERSION},
    )
    body = PaymentRequiredV1(error="X-PAYMENT header is required", accepts=[requirements]).model_dump_json(
        by_alias=True, exclude_none=True).encode()
    signed = teller.client(t.token).sign(status=402, headers={"content-type": "application/json"}, body=body,
                                         url="http://127.0.0.1/v1", wallet_id=t.wallet_id)
    assert signed.header_name == "X-PAYMENT"

    facilitator = x402Facilitator()
    register_exact_evm_facilitator(facilitator, FacilitatorWeb3Signer(private_key=FACILITATOR_KEY,
                                                                      rpc_url=chain.rpc_url), networks="eip155:84532")
    payload = decode_payment_signature_header(signed.header_value)
    payer_before, payee_before = chain.balance(t.address), chain.balance(PAYEE)
    verified = asyncio.run(facilitator.verify(payload, requirements))
    assert verified.is_valid, verified.invalid_reason
    settled = asyncio.run(facilitator.settle(payload, requirements))
    assert settled.success, settled.error_reason
    assert chain.balance(t.address) == payer_before - PRICE
    assert chain.balance(PAYEE) == payee_before + PRICE
    # The same header again: the chain refuses the used nonce.
    replay = asyncio.run(facilitator.settle(payload, requirements))
    assert not replay.success
    assert chain.balance(PAYEE) == payee_before + PRICE
