"""What the MPP charge schemes share: reading a charge challenge into an offer,
and what an idempotency key binds to."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from teller.mpp.challenge import MppChallenge
from teller.mpp.charge import ChargeRequest, ChargeTerms
from teller.schemes.base import Offer, Scheme


def expired(ch: MppChallenge, now: datetime) -> str | None:
    """Why a challenge is skipped for its expiry, if it has passed."""
    if ch.expires_at is not None and ch.expires_at <= now:
        return f"Payment challenge {ch.id[:40]!r} expired at {ch.expires}"
    return None


def charge_offer(scheme: Scheme[ChargeTerms], ch: MppChallenge, req: ChargeRequest) -> Offer[ChargeTerms]:
    return Offer(scheme, req.network, req.currency, req.amount, req.recipient, ChargeTerms(ch, req),
                 tuple(s.recipient for s in req.splits))


def purchase_terms(offer: Offer[ChargeTerms]) -> object:
    ch = offer.terms.challenge
    # id, expires, digest and opaque belong to one challenge; the request is the price.
    return {"method": ch.method, "intent": ch.intent, "realm": ch.realm, "request": dict(ch.request)}


def not_pushed(offer: Offer[Any], tx_hash: str, payer: str) -> str:
    raise NotImplementedError(f"a {offer.scheme.id} payment is never pushed: it sends no transaction")


__all__ = ["charge_offer", "expired", "not_pushed", "purchase_terms"]
