"""Sign end to end over gRPC: SDK-made 402 in, SDK-decodable proof out, the
signature recovering to the tenant's wallet."""

from __future__ import annotations

import base64
import json
import time

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from x402.http.utils import decode_payment_required_header, decode_payment_signature_header
from x402.schemas import PaymentPayload
from x402.schemas.v1 import PaymentPayloadV1

from teller_client import FailedPrecondition, InvalidArgument, NotFound
from testbed.x402_server import PAYEE, USDC_BASE_SEPOLIA, sdk_v1_challenge, sdk_v2_challenge


def recover(domain: dict, authorization: dict, signature: str) -> str:
    message = {
        "from": authorization["from"],
        "to": authorization["to"],
        "value": int(authorization["value"]),
        "validAfter": int(authorization["validAfter"]),
        "validBefore": int(authorization["validBefore"]),
        "nonce": bytes.fromhex(authorization["nonce"][2:]),
    }
    full = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "TransferWithAuthorization": [
                {"name": "from", "type": "address"},
                {"name": "to", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "validAfter", "type": "uint256"},
                {"name": "validBefore", "type": "uint256"},
                {"name": "nonce", "type": "bytes32"},
            ],
        },
        "primaryType": "TransferWithAuthorization",
        "domain": domain,
        "message": message,
    }
    return Account.recover_message(encode_typed_data(full_message=full), signature=signature)


def test_v2_challenge_from_sdk_server_signed_and_decodable(teller):
    t = teller.setup_tenant()
    chall = sdk_v2_challenge(amount="1500", extra={"name": "USDC", "version": "2"}, timeout=120)
    assert chall.status == 402
    offered = decode_payment_required_header(dict(chall.headers)["payment-required"])

    before = int(time.time())
    signed = teller.client(t.token).sign(status=chall.status, headers=chall.headers, body=chall.body,
                                         url=chall.url, wallet_id=t.wallet_id)
    assert signed.header_name == "PAYMENT-SIGNATURE"
    r = signed.requirement
    assert (r.protocol, r.version, r.scheme, r.network, r.amount) == ("x402", 2, "exact", "eip155:84532", 1500)
    assert r.asset.lower() == USDC_BASE_SEPOLIA.lower() and r.pay_to == PAYEE

    payload = decode_payment_signature_header(signed.header_value)
    assert isinstance(payload, PaymentPayload)
    # `accepted` is the server's requirement, unchanged, and the SDK's own matcher agrees.
    assert payload.accepted == offered.accepts[0]
    raw = json.loads(base64.b64decode(signed.header_value))
    raw_offered = json.loads(base64.b64decode(dict(chall.headers)["payment-required"]))
    assert raw["accepted"] == raw_offered["accepts"][0]
    assert payload.resource == offered.resource

    auth = payload.payload["authorization"]
    assert auth["from"] == t.address
    assert auth["to"] == PAYEE and auth["value"] == "1500"
    assert len(bytes.fromhex(auth["nonce"][2:])) == 32
    assert int(auth["validAfter"]) <= before
    assert before + 120 <= int(auth["validBefore"]) <= int(time.time()) + 121
    domain = {"name": "USDC", "version": "2", "chainId": 84532, "verifyingContract": USDC_BASE_SEPOLIA}
    assert recover(domain, auth, payload.payload["signature"]) == t.address


def test_v1_challenge_signed_with_x_payment(teller):
    t = teller.setup_tenant()
    chall = sdk_v1_challenge(amount="2500", extra={"name": "USD Coin", "version": "2"})
    signed = teller.client(t.token).sign(status=402, headers=chall.headers, body=chall.body, url=chall.url,
                                         wallet_id=t.wallet_id)
    assert signed.header_name == "X-PAYMENT"
    assert signed.requirement.version == 1 and signed.requirement.network == "eip155:84532"
    payload = decode_payment_signature_header(signed.header_value)
    assert isinstance(payload, PaymentPayloadV1)
    assert (payload.scheme, payload.network) == ("exact", "base-sepolia")
    auth = payload.payload["authorization"]
    assert auth["value"] == "2500" and auth["to"] == PAYEE
    domain = {"name": "USD Coin", "version": "2", "chainId": 84532, "verifyingContract": USDC_BASE_SEPOLIA}
    assert recover(domain, auth, payload.payload["signature"]) == t.address


def test_each_signature_uses_a_fresh_nonce(teller):
    t = teller.setup_tenant()
    chall = sdk_v2_challenge()
    client = teller.client(t.token)
    nonces = set()
    for _ in range(5):
        signed = client.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url, wallet_id=t.wallet_id)
        nonces.add(decode_payment_signature_header(signed.header_value).payload["authorization"]["nonce"])
    assert len(nonces) == 5


@pytest.mark.parametrize(
    ("extra", "error", "needle"),
    [
        ({"version": "2"}, InvalidArgument, "extra.name is missing"),
        ({"name": "USDC"}, InvalidArgument, "extra.version is missing"),
    ],
)
def test_unpayable_requirement_names_the_reason(teller, extra, error, needle):
    t = teller.setup_tenant()
    chall = sdk_v1_challenge(extra=extra)
    with pytest.raises(error) as info:
        teller.client(t.token).sign(status=402, headers=chall.headers, body=chall.body, url=chall.url,
                                    wallet_id=t.wallet_id)
    assert needle in info.value.message


def _v1_body(**overrides) -> bytes:
    req = {
        "scheme": "exact", "network": "base-sepolia", "maxAmountRequired": "100", "resource": "http://x/y",
        "payTo": PAYEE, "maxTimeoutSeconds": 60, "asset": USDC_BASE_SEPOLIA, "extra": {"name": "USDC", "version": "2"},
    }
    req.update(overrides)
    return json.dumps({"x402Version": 1, "error": "pay", "accepts": [req]}).encode()


@pytest.mark.parametrize(
    ("overrides", "error", "needle"),
    [
        ({"scheme": "upto"}, FailedPrecondition, "unknown scheme 'upto'"),
        ({"network": "atlantis"}, FailedPrecondition, "unknown network 'atlantis'"),
        ({"network": "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"}, FailedPrecondition, "only eip155"),
        ({"maxAmountRequired": "1.5"}, InvalidArgument, "maxAmountRequired must be an integer"),
        ({"maxAmountRequired": "-3"}, InvalidArgument, "maxAmountRequired must be an integer"),
        ({"payTo": "0x1234"}, InvalidArgument, "payTo is not a valid EVM address"),
        ({"maxTimeoutSeconds": "soon"}, InvalidArgument, "maxTimeoutSeconds"),
    ],
)
def test_bad_requirements_are_refused_with_named_reason(teller, overrides, error, needle):
    t = teller.setup_tenant()
    with pytest.raises(error) as info:
        teller.client(t.token).sign(status=402, headers={}, body=_v1_body(**overrides), url="http://x/y",
                                    wallet_id=t.wallet_id)
    assert needle in info.value.message


def test_first_payable_requirement_is_chosen(teller):
    t = teller.setup_tenant()
    body = json.loads(_v1_body(scheme="upto"))
    good = dict(body["accepts"][0], scheme="exact", maxAmountRequired="77")
    body["accepts"].append(good)
    signed = teller.client(t.token).sign(status=402, headers={}, body=json.dumps(body).encode(),
                                         url="http://x/y", wallet_id=t.wallet_id)
    assert signed.requirement.amount == 77


@pytest.mark.parametrize(
    ("status", "headers", "body", "needle"),
    [
        (200, {}, b"{}", "challenge.status must be 402"),
        (402, {}, b"<html>pay me</html>", "carries no payment requirements"),
        (402, {"PAYMENT-REQUIRED": "%%%"}, b"", "PAYMENT-REQUIRED header is not valid base64"),
        (402, {"PAYMENT-REQUIRED": base64.b64encode(b"[1,2").decode()}, b"", "does not decode to JSON"),
        (402, {}, b'{"x402Version": 3, "accepts": []}', "x402Version must be 1 or 2"),
        (402, {}, b'{"x402Version": 1, "accepts": []}', "accepts must be a non-empty list"),
        (402, {}, b'{"x402Version": 1, "accepts": [{"scheme": "exact"}]}', "accepts[0].network"),
    ],
)
def test_malformed_challenges_are_invalid_argument(teller, status, headers, body, needle):
    t = teller.setup_tenant()
    with pytest.raises(InvalidArgument) as info:
        teller.client(t.token).sign(status=status, headers=headers, body=body, url="http://x/y",
                                    wallet_id=t.wallet_id)
    assert needle in info.value.message


def test_unknown_wallet_is_not_found(teller):
    t = teller.setup_tenant()
    chall = sdk_v2_challenge()
    with pytest.raises(NotFound):
        teller.client(t.token).sign(status=402, headers=chall.headers, body=chall.body, url=chall.url,
                                    wallet_id="no-such-wallet")


def test_a_repeated_challenge_is_parsed_once_and_signing_leaves_it_unchanged(teller):
    """A paid API sends the same PAYMENT-REQUIRED on every call (x402 has no
    server nonce), so parsed headers are remembered: the same text gives the
    same parsed challenge. It is shared by every later call, so a Sign must not
    change it: after two Signs (one with a cap, one idempotent) it still equals
    a fresh parse of the same text."""
    from teller.x402 import challenge as x402_challenge

    t = teller.setup_tenant()
    chall = sdk_v2_challenge(amount="1500", extra={"name": "USDC", "version": "2"})
    headers = tuple(chall.headers)
    encoded = dict(chall.headers)["payment-required"]
    first = x402_challenge.parse(headers, chall.body, 256 * 1024)
    assert x402_challenge.parse(headers, chall.body, 256 * 1024) is first

    client = teller.client(t.token)
    args = {"status": 402, "headers": chall.headers, "body": chall.body, "url": chall.url, "wallet_id": t.wallet_id}
    client.sign(**args)
    client.sign(**args, max_amount=1500, idempotency_key="k1")

    assert x402_challenge.parse(headers, chall.body, 256 * 1024) is first
    assert first == x402_challenge._parse_header(encoded)  # uncached: what the text says


def test_a_remembered_challenges_offers_are_worked_out_once(monkeypatch):
    """The offers of a remembered PAYMENT-REQUIRED are kept with it: the same
    header and networks give the same offers without checking them again;
    other networks, a body-form challenge and a refused one are worked out
    (or refused) every time."""
    from datetime import UTC, datetime

    from teller import offers
    from teller.errors import FailedPrecondition

    counted = []
    real = offers._x402_offers

    def counting(chall, networks=None):
        counted.append(chall)
        return real(chall, networks)

    monkeypatch.setattr(offers, "_x402_offers", counting)
    monkeypatch.setattr(offers, "_OFFERS", {})
    now = datetime.now(UTC)
    nets, other_nets = {"anvil": 31337}, {"anvil": 31337}
    chall = sdk_v2_challenge(amount="1234")

    def collect(headers, body=b"", networks=nets):
        return offers.collect(tuple(headers), body, networks=networks, max_bytes=256 * 1024, now=now)

    first = collect(chall.headers)
    again = collect(chall.headers)
    assert len(counted) == 1 and again.offers == first.offers and again.offers[0].amount == 1234
    collect(chall.headers, networks=other_nets)  # equal but not the same mapping: worked out again
    assert len(counted) == 2
    # A body-form challenge is parsed afresh each time, so it is never kept.
    body = json.dumps({"x402Version": 1, "accepts": [{
        "scheme": "exact", "network": "base-sepolia", "maxAmountRequired": "99", "resource": "https://x/y",
        "description": "", "mimeType": "", "payTo": PAYEE, "maxTimeoutSeconds": 60,
        "asset": USDC_BASE_SEPOLIA, "extra": {"name": "USDC", "version": "2"}}]}).encode()
    collect([], body)
    collect([], body)
    assert len(counted) == 4 and not any(key[0] == id(counted[-1]) for key in offers._OFFERS)
    # A refused challenge (no offer Teller can pay) is refused every time.
    unpayable = sdk_v2_challenge(amount="5", extra={"name": "USDC", "version": "2",
                                                    "assetTransferMethod": "permit2"})
    for _ in range(2):
        with pytest.raises(FailedPrecondition):
            collect(unpayable.headers)
    assert len(counted) == 6


def test_the_proof_echoes_the_servers_json_exactly_even_with_large_numbers(teller):
    """``accepted`` is the server's own JSON, echoed field for field: an extra
    field holding an integer past 64 bits, or non-ASCII text, comes back as sent."""
    t = teller.setup_tenant()
    chall = sdk_v2_challenge(amount="1500", extra={"name": "USDC", "version": "2", "big": 2**70, "note": "naïve ☃"})
    offered = json.loads(base64.b64decode(dict(chall.headers)["payment-required"]))["accepts"][0]
    signed = teller.client(t.token).sign(status=402, headers=chall.headers, body=chall.body, url=chall.url,
                                         wallet_id=t.wallet_id)
    payload = json.loads(base64.b64decode(signed.header_value))
    assert payload["accepted"] == offered
    assert payload["accepted"]["extra"]["big"] == 2**70 and payload["accepted"]["extra"]["note"] == "naïve ☃"
