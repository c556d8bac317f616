"""The values one Sign call carries from step to step: what the caller asked
(``SignInput``), the chain facts its offers need (``Prepared``), the proof
signed before the tenant lock (``Presigned``), what the locked part decided
(``Context``) and the payment row a batch inserts (``NewPayment``).

Both the Sign path (``teller.sign``) and the schemes (``teller.schemes``)
use them; they import neither, nor the database: the caller and the wallet row
are named by what a proof reads of them (``Payer``, ``WalletKey``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

from teller.errors import TellerError

if TYPE_CHECKING:
    from teller.spend.decision import Decision


class Payer(Protocol):
    """Who pays (``teller.callers.Caller``)."""

    @property
    def tenant_id(self) -> str: ...

    @property
    def actor(self) -> str: ...


class WalletKey(Protocol):
    """The wallet that pays, as its row holds it (``teller.sign.batch_io.WalletRow``):
    its address and its sealed key."""

    @property
    def id(self) -> str: ...

    @property
    def address(self) -> str: ...

    @property
    def kek_version(self) -> str: ...

    @property
    def wrapped_data_key(self) -> bytes: ...

    @property
    def key_ciphertext(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class SignInput:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    url: str
    method: str
    wallet_id: str
    max_amount: int | None = None
    idempotency_key: str | None = None
    #: This call's protocol preference; only protocols the tenant's policy pays are used.
    protocols: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Prepared:
    """Chain facts an offer needs before it can be signed, read before the
    tenant lock is taken so no RPC runs while other calls wait on it."""

    gas_price: dict[str, int]
    domains: dict[tuple[str, str], tuple[str, str]]
    #: Per offer (by identity: the call's own offers) whose transaction Teller
    #: signs, its gas limit from the chain's estimate, or why the chain refused
    #: to estimate it.
    gas_limits: dict[int, int | TellerError] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Presigned:
    """A proof signed before the lock for the offer the tenant most likely pays."""

    #: The offer it was signed for (compared by identity: one call's own offers).
    offer: object
    wallet_id: str
    address: str
    #: What the offer's scheme signed, in its own form (only it reads this).
    proof: Any
    #: A nonce the batch looks up with its reads (a Tempo transaction's hash):
    #: set when signing the offer again would give the same one.
    nonce: str | None = None

    def fits(self, offer: object, wallet: WalletKey) -> bool:
        return offer is self.offer and wallet.id == self.wallet_id and wallet.address == self.address


@dataclass(frozen=True, slots=True)
class Context:
    """What the locked part decided for one call: who pays, from which wallet,
    how much (in the policy's terms), and when (the batch's time)."""

    caller: Payer
    req: SignInput
    wallet: WalletKey
    decision: Decision
    now_ms: int
    request_hash: str
    mpp_mode: str
    presigned: Presigned | None = None


class NewPayment(SimpleNamespace):
    """A payment row a batch is about to insert: the payments table's columns as
    plain attributes (an ORM instance costs several times more to build)."""


__all__ = ["Context", "NewPayment", "Payer", "Prepared", "Presigned", "SignInput", "WalletKey"]
