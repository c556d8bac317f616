"""The protocol between a Sign batch's plan and the driver that answers it.

``teller.sign.plan`` decides a batch without doing any I/O: it yields requests
(``Read``, ``Measure``, ``Write``, and the rare ``Missing``, ``ReleaseKey``,
``FindNonce``) and a driver answers them: ``drivers.sqla`` through a SQLAlchemy
session on any database (the embedded SQLite default), ``drivers.pg`` through
async psycopg on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar, cast

from teller import policy, spend
from teller.errors import TellerError, Unavailable

T = TypeVar("T")


class WalletRow(NamedTuple):
    id: str
    tenant_id: str
    address: str
    state: str
    frozen: bool
    kek_version: str
    wrapped_data_key: bytes
    key_ciphertext: bytes
    tenant_doc: str | None
    wallet_doc: str | None


@dataclass(slots=True)
class Snapshot:
    """What a batch read with its tenants locked (locked tenants are in ``heads``)."""

    tenants: dict[str, Any]  # id -> (id, state, frozen)
    heads: dict[str, tuple[int, str]]
    wallets: dict[str, WalletRow]
    tokens: dict[str, Any]  # id -> (id, tenant_id, secret_hash, revoked_ms)
    claims: dict[tuple[str, str], Any]  # (tenant, idempotency key) -> payment row
    windows: dict[tuple[str, str], dict[str, spend.WindowUse]] | None = None  # Read.measure's answer
    nonces: dict[tuple[str, str], Any] = field(default_factory=dict)  # (wallet, nonce) -> payment row


@dataclass(frozen=True, slots=True)
class Read:
    """Lock these tenants and their chain heads; read wallets, tokens, claims and
    the payments holding these (wallet, nonce) pairs; and (once the locks are
    granted) measure these windows."""

    tenant_ids: Sequence[str]
    wallet_ids: Sequence[str]
    token_ids: Sequence[str]
    keys: Sequence[str]
    measure: Measure | None = None
    nonces: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True, slots=True)
class Missing:
    """A tenant the lock did not find (or whose chain has no head): answered with
    (frozen, head) after locking it, or its error thrown into the plan."""

    tenant_id: str


@dataclass(frozen=True, slots=True)
class Measure:
    scopes: Mapping[tuple[str, str], Sequence[policy.Budget]]
    now_ms: int


@dataclass(frozen=True, slots=True)
class ReleaseKey:
    """An expired idempotency key, released before its new claim is written."""

    payment_id: str


@dataclass(frozen=True, slots=True)
class FindNonce:
    """The payment already holding a deterministic (MPP) nonce, if any."""

    wallet_id: str
    nonce: str


@dataclass(frozen=True, slots=True)
class Write:
    payments: Sequence[dict[str, Any]]
    buckets: Sequence[dict[str, Any]]
    events: Sequence[dict[str, Any]]
    heads: Mapping[str, tuple[int, str]]


Request = Read | Missing | Measure | ReleaseKey | FindNonce | Write


class Contended(Unavailable):
    """The batch's transaction lost a lock wait (timeout, deadlock, serialization):
    nothing was written, and each call may well succeed on its own."""


class NeedsSession(Exception):
    """The async path does not answer this request (it is rare): run the batch
    through a SQLAlchemy session instead. Nothing was written."""


def _resume(plan: Generator[Request, Any, T], got: tuple[bool, Any] | None) -> tuple[bool, Any]:
    """Start the plan (``got`` None), or send it an answer ``(True, value)`` or throw
    an error ``(False, exc)`` into it where it asked. Returns ``(True, its result)``
    once it has returned, else ``(False, its next request)``."""
    try:
        if got is None:
            return False, next(plan)
        return False, plan.send(got[1]) if got[0] else plan.throw(got[1])
    except StopIteration as done:
        return True, done.value


def drive(plan: Generator[Request, Any, T], answer: Callable[[Request], Any]) -> T:
    """Run a plan, answering each request with ``answer``; TellerErrors it raises
    go back into the plan, where the request was made."""
    done, value = _resume(plan, None)
    while not done:
        try:
            got = (True, answer(value))
        except TellerError as exc:
            got = (False, exc)
        done, value = _resume(plan, got)
    return cast(T, value)


async def drive_async(plan: Generator[Request, Any, T], answer: Callable[[Request], Awaitable[Any]]) -> T:
    done, value = _resume(plan, None)
    while not done:
        try:
            got = (True, await answer(value))
        except TellerError as exc:
            got = (False, exc)
        done, value = _resume(plan, got)
    return cast(T, value)


__all__ = ["Contended", "FindNonce", "Measure", "Missing", "NeedsSession", "Read", "ReleaseKey", "Request",
           "Snapshot", "WalletRow", "Write", "drive", "drive_async"]
