"""Every way a 402 lets Teller pay, in protocol-neutral terms.

A response may carry an x402 challenge (``PAYMENT-REQUIRED`` or a v1 body),
MPP ``Payment`` challenges in ``WWW-Authenticate``, or both. The caller does
not need to know which: ``collect`` reads them all and orders them by the
tenant's protocol preference, then by the server's own order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from teller.errors import FailedPrecondition, InvalidArgument, TellerError
from teller.mpp import challenge as mpp_challenge
from teller.mpp.charge import ChargeRequest, parse_request
from teller.x402 import challenge as x402_challenge
from teller.x402 import proof as x402_proof

#: (method, intent) pairs Teller pays.
MPP_SUPPORTED = {("tempo", "charge"), ("evm", "charge")}


@dataclass(frozen=True, slots=True)
class Offer:
    protocol: str  # "x402" | "mpp"
    scheme: str  # "exact" | "tempo/charge" | "evm/charge"
    network: str  # CAIP-2
    asset: str
    amount: int
    pay_to: str
    other_payees: tuple[str, ...] = ()  # MPP split recipients
    x402: x402_proof.Payable | None = None
    x402_challenge: x402_challenge.X402Challenge | None = None
    mpp: mpp_challenge.MppChallenge | None = None
    charge: ChargeRequest | None = None

    def request_fingerprint(self) -> object:
        """What identifies this offer for idempotency: the server's own words."""
        if self.x402 is not None:
            return dict(self.x402.offer.raw)
        assert self.mpp is not None
        return self.mpp.echo()


@dataclass(frozen=True, slots=True)
class Collected:
    offers: tuple[Offer, ...]
    x402: x402_challenge.X402Challenge | None
    mpp: tuple[mpp_challenge.MppChallenge, ...]


def by_preference(offers: Sequence[Offer], preference: Sequence[str]) -> list[Offer]:
    """The offers of the protocols the tenant pays, most preferred protocol first."""
    return [o for p in preference for o in offers if o.protocol == p]


def _x402_offers(chall: x402_challenge.X402Challenge, networks: Mapping[str, int]) -> list[Offer]:
    return [
        Offer("x402", p.offer.scheme, p.network, p.token.address, p.amount, p.pay_to, x402=p, x402_challenge=chall)
        for p in x402_proof.payable_offers(chall, networks)
    ]


# The offers of a remembered PAYMENT-REQUIRED header (x402_challenge keeps the
# parsed challenge of a repeated header): the same challenge object and networks
# always give the same offers (frozen), so they are worked out once. Keyed by
# identity; each entry holds its challenge and networks, so neither id can be
# reused while the entry lives. Refusals are not kept.
_OFFERS: dict[tuple[int, int], tuple[x402_challenge.X402Challenge, Mapping[str, int], tuple[Offer, ...]]] = {}
_OFFERS_MAX = 256


def _remembered_x402_offers(chall: x402_challenge.X402Challenge, networks: Mapping[str, int]) -> list[Offer]:
    key = (id(chall), id(networks))
    hit = _OFFERS.get(key)
    if hit is not None and hit[0] is chall and hit[1] is networks:
        return list(hit[2])
    offers = _x402_offers(chall, networks)
    if len(_OFFERS) >= _OFFERS_MAX:
        _OFFERS.clear()
    _OFFERS[key] = (chall, networks, tuple(offers))
    return offers


def _mpp_offers(challenges: Sequence[mpp_challenge.MppChallenge], now: datetime) -> tuple[list[Offer], list[str]]:
    found: list[Offer] = []
    skipped: list[str] = []
    for ch in challenges:
        if (ch.method, ch.intent) not in MPP_SUPPORTED:
            skipped.append(f"Payment challenge {ch.id[:40]!r}: {ch.method}/{ch.intent} is not supported "
                           "(Teller pays tempo/charge and evm/charge)")
            continue
        req = parse_request(ch)  # malformed: INVALID_ARGUMENT naming the field
        if ch.expires_at is not None and ch.expires_at <= now:
            skipped.append(f"Payment challenge {ch.id[:40]!r} expired at {ch.expires}")
            continue
        if ch.method == "evm" and req.credential_types and "authorization" not in req.credential_types:
            skipped.append(f"Payment challenge {ch.id[:40]!r}: no credential type Teller can sign "
                           f"({', '.join(req.credential_types)})")
            continue
        found.append(Offer("mpp", f"{ch.method}/{ch.intent}", req.network, req.currency, req.amount,
                           req.recipient, tuple(s.recipient for s in req.splits), mpp=ch, charge=req))
    return found, skipped


def collect(headers: Sequence[tuple[str, str]], body: bytes, *, networks: Mapping[str, int], max_bytes: int,
            now: datetime) -> Collected:
    """Every payable offer (x402 first, then MPP, each in the server's order);
    if there is none, the error that says why."""
    x402 = x402_challenge.parse(headers, body, max_bytes)
    mpp = mpp_challenge.parse(headers, max_bytes)
    if x402 is None and not mpp:
        raise InvalidArgument(
            "challenge carries no payment requirements (no x402 PAYMENT-REQUIRED header or x402Version body, "
            "no WWW-Authenticate: Payment challenge)"
        )
    by_protocol: dict[str, list[Offer]] = {"x402": [], "mpp": []}
    reasons: list[TellerError] = []
    if x402 is not None:
        try:
            by_protocol["x402"] = (_remembered_x402_offers(x402, networks) if x402_challenge.remembered(headers)
                                   else _x402_offers(x402, networks))
        except TellerError as exc:
            reasons.append(exc)
    mpp_found, skipped = _mpp_offers(mpp, now)
    by_protocol["mpp"] = mpp_found
    reasons.extend(FailedPrecondition(s) for s in skipped)
    ordered = by_protocol["x402"] + by_protocol["mpp"]
    if not ordered:
        detail = "; ".join(e.message for e in reasons)
        if all(isinstance(e, FailedPrecondition) for e in reasons):
            raise FailedPrecondition(f"nothing in this 402 is payable: {detail}")
        raise InvalidArgument(f"nothing in this 402 is payable: {detail}")
    return Collected(tuple(ordered), x402, tuple(mpp))


__all__ = ["Collected", "Offer", "by_preference", "collect"]
