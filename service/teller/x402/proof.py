"""x402 ``exact`` proofs on EVM: choosing what is payable and encoding the header.

Pure: the caller supplies the clock, the nonce and the signature.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass

from teller import eip3009, idempotency, values
from teller.errors import FailedPrecondition, InvalidArgument, TellerError
from teller.jsontext import compact
from teller.x402.challenge import Offer, X402Challenge
from teller.x402.networks import caip2

HEADER_V1 = "X-PAYMENT"
HEADER_V2 = "PAYMENT-SIGNATURE"
MAX_TIMEOUT_S = 24 * 3600


@dataclass(frozen=True, slots=True)
class Payable:
    """An offer Teller is able to pay, with its fields checked and typed."""

    offer: Offer
    token: eip3009.Token
    network: str  # CAIP-2
    amount: int
    pay_to: str
    timeout_s: int


def payable(offer: Offer, networks: Mapping[str, int] | None = None) -> Payable:
    """Check one offer; raise the TellerError that says why Teller cannot pay it."""
    where = f"accepts[{offer.index}]"
    if offer.scheme != "exact":
        raise FailedPrecondition(f"{where}: unknown scheme {offer.scheme!r} (Teller pays 'exact')")
    try:
        network = caip2(offer.network, networks, f"{where}.network")
    except FailedPrecondition as exc:
        raise FailedPrecondition(f"{where}: {exc.message}") from None
    cid = values.eip155_chain(network)
    assert cid is not None
    if offer.extra.get("assetTransferMethod", "eip3009") != "eip3009":
        raise FailedPrecondition(
            f"{where}: assetTransferMethod {offer.extra.get('assetTransferMethod')!r} is not supported (eip3009 only)"
        )
    amount_field = "maxAmountRequired" if offer.version == 1 else "amount"
    amount = eip3009.parse_amount(offer.amount, f"{where}.{amount_field}")
    pay_to = eip3009.parse_address(offer.pay_to, f"{where}.payTo")
    token = eip3009.token_from_extra(cid, offer.asset, offer.extra, where)
    if not 0 < offer.max_timeout_seconds <= MAX_TIMEOUT_S:
        raise InvalidArgument(f"{where}.maxTimeoutSeconds must be between 1 and {MAX_TIMEOUT_S}")
    return Payable(offer, token, network, amount, pay_to, offer.max_timeout_seconds)


def payable_offers(challenge: X402Challenge, networks: Mapping[str, int] | None = None) -> list[Payable]:
    """Every offer Teller can pay, in the server's order; if none, the reasons why."""
    found: list[Payable] = []
    errors: list[TellerError] = []
    for offer in challenge.offers:
        try:
            found.append(payable(offer, networks))
        except TellerError as exc:
            errors.append(exc)
    if found:
        return found
    detail = "; ".join(e.message for e in errors)
    if all(isinstance(e, FailedPrecondition) for e in errors):
        raise FailedPrecondition(f"no payable x402 requirement: {detail}")
    raise InvalidArgument(f"no payable x402 requirement: {detail}")


def payment_header(
    challenge: X402Challenge, chosen: Payable, auth: eip3009.Authorization, signature: bytes,
    payment_id: str | None = None,
) -> tuple[str, str]:
    """The header name and base64 value to send on the retry. ``payment_id`` goes
    into the ``payment-identifier`` extension when the server declared it."""
    inner = {"signature": "0x" + signature.hex(), "authorization": auth.to_json()}
    doc: dict[str, object]
    if challenge.version == 1:
        doc = {
            "x402Version": 1,
            "scheme": chosen.offer.scheme,
            "network": chosen.offer.network,
            "payload": inner,
        }
        name = HEADER_V1
    else:
        # `accepted` is the server's own JSON, unchanged: servers compare it field by field.
        doc = {"x402Version": 2, "accepted": dict(chosen.offer.raw), "payload": inner}
        if challenge.resource is not None:
            doc["resource"] = dict(challenge.resource)
        extensions = idempotency.with_payment_identifier(challenge.extensions, payment_id)
        if extensions:
            doc["extensions"] = extensions
        name = HEADER_V2
    return name, base64.b64encode(compact(doc)).decode("ascii")

