"""The payment-scheme interface: what every way of paying a 402 implements.

A scheme is one way a 402 can be paid: x402 ``exact`` (an EIP-3009
authorization), MPP ``tempo/charge`` (a signed Tempo transaction, or for an
amount of zero an EIP-712 proof), MPP ``evm/charge`` (an EIP-3009
authorization bound to the challenge). The Sign path knows only this
interface: it asks an offer's own scheme for the chain facts it needs, its
proof (signed through the vault's narrow signer) and its credential; it asks
a stored payment's scheme how to read the server's receipt and how to follow
the payment on chain. The protocol code a scheme drives lives in
``teller.x402`` and ``teller.mpp``; the table of schemes in ``teller.schemes``.
Adding a scheme adds a module and a line in that table, not branches.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from teller.signing import Context, NewPayment, Prepared, Presigned

if TYPE_CHECKING:
    from teller.chain import ChainReader
    from teller.clock import Clock
    from teller.mpp.challenge import MppChallenge
    from teller.outcome import Outcome
    from teller.vault.signer import WalletSigner
    from teller.x402.challenge import Requirement, X402Challenge


class SchemeId(StrEnum):
    """A scheme as ``payments.scheme`` and audit details spell it: x402's
    ``scheme``, MPP's ``method/intent`` (stored strings; never respell one)."""

    EXACT = "exact"
    TEMPO_CHARGE = "tempo/charge"
    EVM_CHARGE = "evm/charge"
    TEMPO_SESSION = "tempo/session"


class Follow(Enum):
    """How the reconciler learns a payment's fate on chain."""

    #: An EIP-3009 authorization (nonce = its nonce): AuthorizationUsed /
    #: AuthorizationCanceled events, ``authorizationState`` at the head.
    AUTHORIZATION = "authorization"
    #: A signed transaction (nonce = its hash): mined, or past its
    #: valid_before at the head and so never minable.
    TRANSACTION = "transaction"
    #: Nothing on chain: settled as it is signed (a zero-amount proof).
    NONE = "none"


P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class Offer(Generic[P]):
    """One way this 402 lets Teller pay, in protocol-neutral terms (what the
    policy decides on), with the scheme that pays it and that scheme's own
    reading of what the server asked (``terms``)."""

    scheme: Scheme[P]
    network: str  # CAIP-2
    asset: str
    amount: int
    pay_to: str
    terms: P
    other_payees: tuple[str, ...] = ()  # MPP split recipients
    #: An MPP session's open: the channel's deposit (``amount`` is then one unit's price).
    deposit: int | None = None
    #: An MPP session's top-up: the channel's whole deposit once topped up
    #: (``deposit`` is then what the top-up adds).
    channel_deposit: int | None = None

    @property
    def moves(self) -> int:
        """What paying it takes out of the wallet: the deposit of a channel's open, else the amount."""
        return self.amount if self.deposit is None else self.deposit


class Scheme(Protocol[P]):
    """One payment scheme. Implementations are stateless singletons."""

    #: As stored in ``payments.scheme`` and audit details.
    @property
    def id(self) -> SchemeId: ...

    #: "x402" or "mpp": what the tenant's ``protocols`` preference names.
    @property
    def protocol(self) -> str: ...

    #: How the reconciler follows its payments on chain.
    @property
    def follow(self) -> Follow: ...

    #: Whether a payment moves ``amount`` of the offer's asset out of the wallet
    #: (so a balance read can tell that the wallet cannot cover it).
    @property
    def moves_amount(self) -> bool: ...

    #: Whether signing one offer twice gives the same nonce (the chain takes one
    #: of them): a batch then returns the payment already made for it.
    @property
    def deterministic(self) -> bool: ...

    def purchase_terms(self, offer: Offer[P]) -> object:
        """What an idempotency key binds to: the offer without what changes from
        one 402 to the next (see ``teller.idempotency``)."""
        ...

    def chain_facts(self, offer: Offer[P], prepared: Prepared, chain: ChainReader, *, payer: str | None,
                    clock: Clock, cached_only: bool) -> None:
        """Add to ``prepared`` the chain facts ``offer`` needs before it can be
        signed (read before the tenant lock; ``NotCached`` with ``cached_only``)."""
        ...

    def max_fee(self, offer: Offer[P], prepared: Prepared) -> int:
        """The most the payment's own transaction can cost its wallet in fees
        (the charged token's base units); 0 when Teller sends no transaction."""
        ...

    def presign(self, offer: Offer[P], signer: WalletSigner, prepared: Prepared, *, wallet_id: str, now_s: int,
                max_valid_for_s: int) -> Presigned | None:
        """The proof signed before the lock, or None when it must wait for it."""
        ...

    def sign(self, offer: Offer[P], signer: WalletSigner, ctx: Context, prepared: Prepared, *,
             max_valid_for_s: int) -> tuple[NewPayment, dict[str, Any], bytes | None]:
        """The chosen offer signed: its payment row, what its audit event adds,
        and for a push payment the transaction still to broadcast."""
        ...

    def pushed(self, offer: Offer[P], tx_hash: str, payer: str) -> str:
        """The credential of a push payment once the chain has its transaction."""
        ...

    def decode_receipt(self, status: int, headers: Sequence[tuple[str, str]], body: bytes,
                       max_bytes: int) -> Outcome:
        """What the server said about the payment in its answer to the paid retry."""
        ...


class X402Scheme(Scheme[P], Protocol[P]):
    """A scheme an x402 requirement names in its ``scheme`` field."""

    def offer(self, requirement: Requirement, challenge: X402Challenge,
              networks: Mapping[str, int] | None) -> Offer[P]:
        """The offer of one requirement; raises the TellerError that says why
        Teller cannot pay it."""
        ...


class MppScheme(Scheme[P], Protocol[P]):
    """A scheme an MPP challenge names by its ``method`` and ``intent``."""

    @property
    def method(self) -> str: ...

    @property
    def intent(self) -> str: ...

    def offer(self, challenge: MppChallenge, now: datetime) -> Offer[Any] | str:
        """The offer of one challenge, or why it is skipped (malformed requests
        raise, naming the field)."""
        ...


# -- for implementations -----------------------------------------------------


def new_payment(offer: Offer[Any], ctx: Context, *, version: int, nonce: str, valid_before: int, header_name: str,
                header_value: str, token_domain: tuple[str, str] = ("", "")) -> NewPayment:
    """The row of ``offer`` signed in ``ctx``, as a scheme fills it in. The Sign
    flow sets what is its own (the idempotency key's expiry)."""
    req = ctx.req
    scheme = offer.scheme
    return NewPayment(
        id=str(uuid.uuid4()), tenant_id=ctx.caller.tenant_id, wallet_id=ctx.wallet.id, protocol=scheme.protocol,
        version=version, scheme=scheme.id, network=offer.network, asset=offer.asset,
        asset_name=token_domain[0], asset_version=token_domain[1], pay_to=offer.pay_to, amount=offer.amount,
        amount_common=ctx.decision.amount_common, fee_max=0, fee_common=0, fee_paid=None, resource_url=req.url,
        nonce=nonce, valid_before=valid_before,
        state="signed", state_reason="", tx_hash="", released_ms=None, header_name=header_name,
        header_value=header_value,
        idempotency_key=req.idempotency_key, idempotency_expires_ms=None,
        request_hash=ctx.request_hash, created_ms=ctx.now_ms, updated_ms=ctx.now_ms,
    )


__all__ = ["Follow", "MppScheme", "Offer", "Scheme", "SchemeId", "X402Scheme", "new_payment"]
