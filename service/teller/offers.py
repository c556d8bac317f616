"""Every way a 402 lets Teller pay, as offers of the schemes Teller pays.

A response may carry an x402 challenge (``PAYMENT-REQUIRED`` or a v1 body),
MPP ``Payment`` challenges in ``WWW-Authenticate``, or both. The caller does
not need to know which: ``collect`` reads them all, hands each requirement or
challenge to the scheme it names (``teller.schemes``), and orders the offers
by the tenant's protocol preference, then by the server's own order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from teller.errors import FailedPrecondition, InvalidArgument, TellerError
from teller.mpp import challenge as mpp_challenge
from teller.schemes import REGISTRY, Offer
from teller.x402 import challenge as x402_challenge

#: What the refusals of an unknown scheme say Teller pays.
_X402_PAID = ", ".join(repr(str(name)) for name in REGISTRY.x402)  # the ids as text, not enum reprs
_MPP_PAID = " and ".join(f"{method}/{intent}" for method, intent in REGISTRY.mpp)


@dataclass(frozen=True, slots=True)
class Collected:
    offers: tuple[Offer[Any], ...]
    x402: x402_challenge.X402Challenge | None
    mpp: tuple[mpp_challenge.MppChallenge, ...]


def by_preference(offers: Sequence[Offer[Any]], preference: Sequence[str]) -> list[Offer[Any]]:
    """The offers of the protocols the tenant pays, most preferred protocol first."""
    return [o for p in preference for o in offers if o.scheme.protocol == p]


def _x402_offers(chall: x402_challenge.X402Challenge, networks: Mapping[str, int]) -> list[Offer[Any]]:
    """Every requirement Teller can pay, in the server's order; if none, the reasons why."""
    found: list[Offer[Any]] = []
    errors: list[TellerError] = []
    for requirement in chall.accepts:
        scheme = REGISTRY.x402.get(requirement.scheme)
        try:
            if scheme is None:
                raise FailedPrecondition(f"accepts[{requirement.index}]: unknown scheme {requirement.scheme!r} "
                                         f"(Teller pays {_X402_PAID})")
            found.append(scheme.offer(requirement, chall, networks))
        except TellerError as exc:
            errors.append(exc)
    if found:
        return found
    detail = "; ".join(e.message for e in errors)
    if all(isinstance(e, FailedPrecondition) for e in errors):
        raise FailedPrecondition(f"no payable x402 requirement: {detail}")
    raise InvalidArgument(f"no payable x402 requirement: {detail}")


# The offers of a remembered PAYMENT-REQUIRED header (x402_challenge keeps the
# parsed challenge of a repeated header): the same challenge object and networks
# always give the same offers (frozen), so they are worked out once. Keyed by
# identity; each entry holds its challenge and networks, so neither id can be
# reused while the entry lives. Refusals are not kept.
_OFFERS: dict[tuple[int, int], tuple[x402_challenge.X402Challenge, Mapping[str, int], tuple[Offer[Any], ...]]] = {}
_OFFERS_MAX = 256


def _remembered_x402_offers(chall: x402_challenge.X402Challenge, networks: Mapping[str, int]) -> list[Offer[Any]]:
    key = (id(chall), id(networks))
    hit = _OFFERS.get(key)
    if hit is not None and hit[0] is chall and hit[1] is networks:
        return list(hit[2])
    offers = _x402_offers(chall, networks)
    if len(_OFFERS) >= _OFFERS_MAX:
        _OFFERS.clear()
    _OFFERS[key] = (chall, networks, tuple(offers))
    return offers


def _mpp_offers(challenges: Sequence[mpp_challenge.MppChallenge],
                now: datetime) -> tuple[list[Offer[Any]], list[str]]:
    found: list[Offer[Any]] = []
    skipped: list[str] = []
    for ch in challenges:
        scheme = REGISTRY.mpp.get((ch.method, ch.intent))
        if scheme is None:
            skipped.append(f"Payment challenge {ch.id[:40]!r}: {ch.method}/{ch.intent} is not supported "
                           f"(Teller pays {_MPP_PAID})")
            continue
        offer = scheme.offer(ch, now)
        if isinstance(offer, str):
            skipped.append(offer)
        else:
            found.append(offer)
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
    x402_found: list[Offer[Any]] = []
    reasons: list[TellerError] = []
    if x402 is not None:
        try:
            x402_found = (_remembered_x402_offers(x402, networks) if x402_challenge.remembered(headers)
                          else _x402_offers(x402, networks))
        except TellerError as exc:
            reasons.append(exc)
    mpp_found, skipped = _mpp_offers(mpp, now)
    reasons.extend(FailedPrecondition(s) for s in skipped)
    ordered = x402_found + mpp_found
    if not ordered:
        detail = "; ".join(e.message for e in reasons)
        if all(isinstance(e, FailedPrecondition) for e in reasons):
            raise FailedPrecondition(f"nothing in this 402 is payable: {detail}")
        raise InvalidArgument(f"nothing in this 402 is payable: {detail}")
    return Collected(tuple(ordered), x402, tuple(mpp))


__all__ = ["Collected", "by_preference", "collect"]
