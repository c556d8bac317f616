"""One Sign call as it crosses the two layers: the call prepared for its batch
(``Call``, with what the caller asked, ``teller.signing.SignInput``), and what
the batch decided for it (``Verdict``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from teller import idempotency, signing
from teller import offers as offers_mod
from teller.callers import Caller
from teller.errors import FailedPrecondition, InvalidArgument
from teller.schemes import Offer
from teller.signing import SignInput
from teller.spend.rules import PROTOCOLS


@dataclass(frozen=True, slots=True)
class SignResult:
    header_name: str
    header_value: str
    payment_id: str
    protocol: str
    version: int
    scheme: str
    network: str
    asset: str
    amount: int
    pay_to: str
    #: Headers besides the proof to set on the paid retry (MPP's Idempotency-Key).
    headers: tuple[tuple[str, str], ...] = ()


#: Digits of the largest uint256.
MAX_CAP_DIGITS = 78


def _parse_cap(text: str) -> int | None:
    if not text:
        return None
    if not text.isdigit() or not text.isascii():
        raise InvalidArgument(f"max_amount must be an integer string of atomic units, got {text[:40]!r}")
    if len(text) > MAX_CAP_DIGITS:
        # Checked before int(): Python refuses strings past 4,300 digits with a ValueError.
        raise InvalidArgument(f"max_amount has {len(text)} digits; a uint256 has at most {MAX_CAP_DIGITS}")
    return int(text)


def sign_input(
    *, status: int, headers: tuple[tuple[str, str], ...], body: bytes, url: str, method: str,
    wallet_id: str, max_amount: str, idempotency_key: str, protocols: Sequence[str] = (),
) -> SignInput:
    if len(idempotency_key) > 200:
        raise InvalidArgument("idempotency_key must be at most 200 characters")
    for name, value in (("challenge.url", url), ("wallet_id", wallet_id), ("idempotency_key", idempotency_key),
                        ("challenge.method", method)):
        if "\x00" in value:
            # PostgreSQL text cannot hold it: refuse it here rather than fail the write.
            raise InvalidArgument(f"{name} contains a NUL character")
    for p in protocols:
        if p not in PROTOCOLS:
            raise InvalidArgument(f"protocols: unknown protocol {p[:20]!r} (x402 or mpp)")
    return SignInput(status, headers, body, url, method, wallet_id, _parse_cap(max_amount), idempotency_key or None,
                     tuple(protocols))


@dataclass(slots=True)
class Call:
    """One Sign call, validated, parsed and (for its likely offer) already signed,
    waiting for the transaction that reserves it."""

    caller: Caller
    req: SignInput
    secret: str | None
    collected: offers_mod.Collected
    request_hash: str
    prepared: signing.Prepared
    presigned: signing.Presigned | None
    #: Offers the wallet cannot cover (by ``id``), with their refusal: skipped when deciding.
    short: Mapping[int, FailedPrecondition] = field(default_factory=dict)
    #: An MPP session whose open channel has no room left: the offer that tops it
    #: up (``teller.schemes.mpp_session.top_up_offer``), which the batch pays instead.
    top_up: Offer | None = None


@dataclass(frozen=True, slots=True)
class PushPending:
    """A push payment whose reservation committed: its transaction is still to be
    broadcast (``Payments.finish``), outside any batch."""

    caller: Caller
    payment: signing.NewPayment
    raw: bytes
    offer: Offer


class Revisit(Exception):
    """The batch found the channel it was to top up changed (topped up by another
    call, or no longer open): nothing was signed; ask for the voucher again."""


Verdict = SignResult | PushPending | BaseException


def sign_result(p: Any) -> SignResult:
    return SignResult(p.header_name, p.header_value, p.id, p.protocol, p.version, p.scheme, p.network,
                      p.asset, p.amount, p.pay_to,
                      idempotency.retry_headers(p.protocol, p.tenant_id, p.idempotency_key))


__all__ = ["MAX_CAP_DIGITS", "Call", "PushPending", "Revisit", "SignResult", "Verdict", "sign_input", "sign_result"]
