"""Decoding what a server answered to the paid retry (pure)."""

from __future__ import annotations

import base64
import json

import pytest

from teller.errors import InvalidArgument
from teller.x402 import receipt
from testbed.x402_server import sdk_v1_challenge, sdk_v2_challenge

TX = "0x" + "12" * 32


def _b64(doc: object) -> str:
    return base64.b64encode(json.dumps(doc).encode()).decode()


@pytest.mark.parametrize("name", ["PAYMENT-RESPONSE", "X-PAYMENT-RESPONSE", "payment-response"])
def test_a_successful_settlement(name):
    out = receipt.decode(200, [(name, _b64({"success": True, "transaction": TX, "network": "eip155:8453",
                                            "payer": "0xabc"}))], b"", 4096)
    assert (out.kind, out.tx_hash, out.payer) == ("settled", TX, "0xabc")


def test_a_failed_settlement_names_the_servers_reason():
    out = receipt.decode(402, [("PAYMENT-RESPONSE", _b64({"success": False, "errorReason": "insufficient_funds",
                                                          "transaction": ""}))], b"", 4096)
    assert (out.kind, out.reason, out.tx_hash) == ("refused", "insufficient_funds", "")


def test_success_with_an_error_status_is_not_a_settlement():
    out = receipt.decode(500, [("PAYMENT-RESPONSE", _b64({"success": True, "transaction": TX}))], b"", 4096)
    assert out.kind == "refused"


def test_a_second_402_carries_the_challenge_error():
    c = sdk_v2_challenge()
    out = receipt.decode(402, c.headers, c.body, 256 * 1024)
    assert out.kind == "refused" and out.reason
    v1 = sdk_v1_challenge()
    assert receipt.decode(402, v1.headers, v1.body, 4096).reason == "X-PAYMENT header is required"
    assert receipt.decode(402, [], b"not json", 4096).reason == "payment_refused"


def test_other_answers_are_unknown():
    assert receipt.decode(503, [], b"", 4096).kind == "unknown"
    assert receipt.decode(200, [], b"{}", 4096).kind == "unknown"


@pytest.mark.parametrize("value, match", [
    ("%%%", "PAYMENT-RESPONSE header is not valid base64"),
    (base64.b64encode(b"[1]").decode(), "success must be true or false"),
    ("A" * 5000, "larger than 4096 bytes"),
])
def test_malformed_receipts_are_named(value, match):
    with pytest.raises(InvalidArgument, match=match):
        receipt.decode(200, [("PAYMENT-RESPONSE", value)], b"", 4096)


def test_a_transaction_field_that_is_not_a_hash_is_dropped():
    out = receipt.decode(200, [("PAYMENT-RESPONSE", _b64({"success": True, "transaction": "DROP TABLE"}))], b"", 4096)
    assert out.kind == "settled" and out.tx_hash == ""
