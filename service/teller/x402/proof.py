"""x402 ``exact`` proofs on EVM: checking what is payable and encoding the header.

Pure: the caller supplies the clock, the nonce and the signature.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass

from teller import idempotency, values
from teller.errors import FailedPrecondition, InvalidArgument
from teller.jsontext import compact
from teller.x402 import eip3009
from teller.x402.challenge import Requirement, X402Challenge
from teller.x402.networks import caip2

HEADER_V1 = "X-PAYMENT"
HEADER_V2 = "PAYMENT-SIGNATURE"
MAX_TIMEOUT_S = 24 * 3600


@dataclass(frozen=True, slots=True)
class Payable:
    """A requirement Teller is able to pay, with its fields checked and typed,
    and the challenge it came in (echoed in the payload)."""

    requirement: Requirement
    challenge: X402Challenge
    token: eip3009.Token
    network: str  # CAIP-2
    amount: int
    pay_to: str
    timeout_s: int


def payable(requirement: Requirement, challenge: X402Challenge, networks: Mapping[str, int] | None = None) -> Payable:
    """Check one ``exact`` requirement; raise the TellerError that says why Teller cannot pay it."""
    where = f"accepts[{requirement.index}]"
    try:
        network = caip2(requirement.network, networks, f"{where}.network")
    except FailedPrecondition as exc:
        raise FailedPrecondition(f"{where}: {exc.message}") from None
    cid = values.eip155_chain(network)
    assert cid is not None
    if requirement.extra.get("assetTransferMethod", "eip3009") != "eip3009":
        raise FailedPrecondition(
            f"{where}: assetTransferMethod {requirement.extra.get('assetTransferMethod')!r} is not supported "
            "(eip3009 only)"
        )
    amount_field = "maxAmountRequired" if requirement.version == 1 else "amount"
    amount = eip3009.parse_amount(requirement.amount, f"{where}.{amount_field}")
    pay_to = eip3009.parse_address(requirement.pay_to, f"{where}.payTo")
    token = eip3009.token_from_extra(cid, requirement.asset, requirement.extra, where)
    if not 0 < requirement.max_timeout_seconds <= MAX_TIMEOUT_S:
        raise InvalidArgument(f"{where}.maxTimeoutSeconds must be between 1 and {MAX_TIMEOUT_S}")
    return Payable(requirement, challenge, token, network, amount, pay_to, requirement.max_timeout_seconds)


def payment_header(chosen: Payable, auth: eip3009.Authorization, signature: bytes,
                   payment_id: str | None = None) -> tuple[str, str]:
    """The header name and base64 value to send on the retry. ``payment_id`` goes
    into the ``payment-identifier`` extension when the server declared it."""
    challenge = chosen.challenge
    inner = {"signature": "0x" + signature.hex(), "authorization": auth.to_json()}
    doc: dict[str, object]
    if challenge.version == 1:
        doc = {
            "x402Version": 1,
            "scheme": chosen.requirement.scheme,
            "network": chosen.requirement.network,
            "payload": inner,
        }
        name = HEADER_V1
    else:
        # `accepted` is the server's own JSON, unchanged: servers compare it field by field.
        doc = {"x402Version": 2, "accepted": dict(chosen.requirement.raw), "payload": inner}
        if challenge.resource is not None:
            doc["resource"] = dict(challenge.resource)
        extensions = idempotency.with_payment_identifier(challenge.extensions, payment_id)
        if extensions:
            doc["extensions"] = extensions
        name = HEADER_V2
    return name, base64.b64encode(compact(doc)).decode("ascii")

