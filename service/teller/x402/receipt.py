"""Reading what a resource server answered to a paid retry. Pure: headers in,
an ``Outcome`` out.

x402 servers report settlement in ``PAYMENT-RESPONSE`` (v2) or
``X-PAYMENT-RESPONSE`` (v1): base64 JSON with ``success``, ``transaction``,
``network``, ``payer`` and, on failure, ``errorReason``. A refused payment comes
back as another 402 whose challenge carries an ``error``.

An outcome is the server's word only. It names what to record, never what to
release: a refused authorization may still be submitted by whoever holds it
until its ``validBefore``, so only the chain can free its budget.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from teller.errors import InvalidArgument
from teller.outcome import Outcome, text
from teller.x402 import challenge as x402_challenge

SETTLEMENT_HEADERS = ("payment-response", "x-payment-response")
_TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")


def decode(status: int, headers: Sequence[tuple[str, str]], body: bytes, max_bytes: int) -> Outcome:
    """What the server said about the payment. Malformed receipts are
    ``InvalidArgument`` naming the header."""
    for name in SETTLEMENT_HEADERS:
        value = x402_challenge.header(headers, name)
        if value is None:
            continue
        if len(value) > max_bytes:
            raise InvalidArgument(f"{name.upper()} header is larger than {max_bytes} bytes")
        doc = x402_challenge.b64_json(value, name.upper())
        if not isinstance(doc, dict) or not isinstance(doc.get("success"), bool):
            raise InvalidArgument(f"{name.upper()} header: success must be true or false")
        tx = doc.get("transaction")
        tx_hash = tx if isinstance(tx, str) and _TX_HASH.match(tx) else ""
        if doc["success"] and 200 <= status < 300:
            return Outcome("settled", tx_hash, "", text(doc.get("payer")), doc)
        return Outcome("refused", tx_hash, text(doc.get("errorReason")) or "settlement_failed",
                       text(doc.get("payer")), doc)
    if status == 402:
        try:
            chall = x402_challenge.parse(headers, body, max_bytes)
        except InvalidArgument:
            chall = None
        reason = (chall.error if chall is not None else None) or "payment_refused"
        return Outcome("refused", reason=text(reason))
    return Outcome("unknown", reason=f"http_{status}")


__all__ = ["Outcome", "decode"]
