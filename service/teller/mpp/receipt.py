"""Reading what an MPP server answered to a paid retry. Pure.

Success carries ``Payment-Receipt: <base64url JSON {status, method, reference,
timestamp}>``, where ``reference`` is the settlement transaction (or, for a
zero-amount proof, the challenge id). Failures are RFC 9457 problem details
with a 402 (retry may help) or 403 (the payment was final but unusable).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from teller import untrusted_json
from teller.errors import InvalidArgument
from teller.mpp.challenge import b64url_json
from teller.outcome import Outcome, text
from teller.x402.challenge import header

RECEIPT = "payment-receipt"
_TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")


def decode(status: int, headers: Sequence[tuple[str, str]], body: bytes, max_bytes: int) -> Outcome:
    value = header(headers, RECEIPT)
    if value is not None and 200 <= status < 300:
        if len(value) > max_bytes:
            raise InvalidArgument(f"Payment-Receipt header is larger than {max_bytes} bytes")
        doc = b64url_json(value.strip(), "Payment-Receipt header")
        if not isinstance(doc, dict) or not isinstance(doc.get("status"), str):
            raise InvalidArgument("Payment-Receipt header: status must be a string")
        ref = doc.get("reference")
        tx_hash = ref.lower() if isinstance(ref, str) and _TX_HASH.match(ref) else ""
        if doc["status"] == "success":
            return Outcome("settled", tx_hash, "", "", doc)
        return Outcome("refused", tx_hash, text(doc["status"]), "", doc)
    if status in (402, 403):
        reason = "payment_refused"
        if body and len(body) <= max_bytes:
            try:
                problem = untrusted_json.loads(body, "problem details", max_bytes=max_bytes)
            except InvalidArgument:
                problem = None
            if isinstance(problem, dict):
                reason = text(problem.get("detail")) or text(problem.get("title")) or reason
        return Outcome("refused", reason=reason)
    return Outcome("unknown", reason=f"http_{status}")


__all__ = ["decode"]
