"""The protocol between a Sign batch's plan and the driver that answers it.

``teller.sign.plan`` decides a batch without doing any I/O: it yields requests
(``Read``, ``Measure``, ``Write``, and the rare ``ReleaseKey`` and
``FindNonce``), each a ``Request[A]`` for the type ``A`` of its answer, and a
driver (``Driver``, ``AsyncDriver``) answers them: ``drivers.sqla`` through a SQLAlchemy
session on any database (the embedded SQLite default), ``drivers.pg`` through
async psycopg on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, Protocol, TypeAlias, TypeVar, cast

from teller.errors import TellerError, Unavailable
from teller.spend.ledger import WindowUse
from teller.spend.rules import Budget

T = TypeVar("T")
A = TypeVar("A")


class TenantRow(NamedTuple):
    id: str
    state: str
    frozen: bool


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


class TokenRow(NamedTuple):
    id: str
    tenant_id: str
    secret_hash: str
    revoked_ms: int | None


class PaymentRow(NamedTuple):
    """The columns of a recorded payment a batch reads (an idempotency claim, a
    nonce already used): both drivers select exactly these."""

    id: str
    tenant_id: str
    wallet_id: str
    protocol: str
    version: int
    scheme: str
    network: str
    asset: str
    pay_to: str
    amount: int
    nonce: str
    valid_before: int
    state: str
    state_reason: str
    released_ms: int | None
    header_name: str
    header_value: str
    idempotency_key: str | None
    idempotency_expires_ms: int | None
    request_hash: str


class ChannelRow(NamedTuple):
    """A session channel that is not closed (open or closing), read with its
    tenant locked: what ``max_open_channels`` counts, and what tells a first
    challenge that another call has just opened its channel."""

    id: str
    tenant_id: str
    wallet_id: str
    network: str
    escrow: str
    channel_id: str
    payee: str
    token: str
    descriptor: str
    state: str


class TopUpChannel(NamedTuple):
    """A session channel as a top-up reads it, locked."""

    id: str
    wallet_id: str
    state: str
    deposit: int
    cumulative: int


#: Per (scope, id) measured, each budget's use of its window.
Windows: TypeAlias = dict[tuple[str, str], dict[str, WindowUse]]


@dataclass(slots=True)
class Snapshot:
    """What a batch read with its tenants locked (locked tenants are in ``heads``)."""

    tenants: dict[str, TenantRow]
    heads: dict[str, tuple[int, str]]
    wallets: dict[str, WalletRow]
    tokens: dict[str, TokenRow]
    claims: dict[tuple[str, str], PaymentRow]  # (tenant, idempotency key) -> its payment
    windows: Windows | None = None  # Read.measure's answer
    nonces: dict[tuple[str, str], PaymentRow] = field(default_factory=dict)  # (wallet, nonce) -> its payment
    #: Per tenant of ``Read.channel_tenants``, its channels that are not closed.
    channels: dict[str, list[ChannelRow]] = field(default_factory=dict)


class Request(Generic[A]):
    """A plan's request, answered with an ``A``: each request calls its own method
    of the driver (one call, no dispatch on its type), so mypy checks that every
    driver answers every request with the type the plan expects."""

    __slots__ = ()

    def answer(self, driver: Driver) -> A:
        raise NotImplementedError

    def answer_async(self, driver: AsyncDriver) -> Awaitable[A]:
        raise NotImplementedError


#: A batch plan: it yields requests, is sent their answers, and returns a ``T``.
Plan: TypeAlias = Generator[Request[Any], Any, T]


@dataclass(frozen=True, slots=True)
class Read(Request[Snapshot]):
    """Lock these tenants and their chain heads; read wallets, tokens, claims and
    the payments holding these (wallet, nonce) pairs; and (once the locks are
    granted) measure these windows."""

    tenant_ids: Sequence[str]
    wallet_ids: Sequence[str]
    token_ids: Sequence[str]
    keys: Sequence[str]
    measure: Measure | None = None
    nonces: Sequence[tuple[str, str]] = ()
    #: Tenants whose channels that are not closed to read (those with a session
    #: challenge in the batch): read after the lock, so every open committed
    #: before it is counted.
    channel_tenants: Sequence[str] = ()

    def answer(self, driver: Driver) -> Snapshot:
        return driver.read(self)

    def answer_async(self, driver: AsyncDriver) -> Awaitable[Snapshot]:
        return driver.read(self)


@dataclass(frozen=True, slots=True)
class Measure(Request[Windows]):
    scopes: Mapping[tuple[str, str], Sequence[Budget]]
    now_ms: int

    def answer(self, driver: Driver) -> Windows:
        return driver.measure(self)

    def answer_async(self, driver: AsyncDriver) -> Awaitable[Windows]:
        return driver.measure(self)


@dataclass(frozen=True, slots=True)
class ReleaseKey(Request[None]):
    """An expired idempotency key, released before its new claim is written."""

    payment_id: str

    def answer(self, driver: Driver) -> None:
        return driver.release_key(self)

    def answer_async(self, driver: AsyncDriver) -> Awaitable[None]:
        return driver.release_key(self)


@dataclass(frozen=True, slots=True)
class FindNonce(Request[PaymentRow | None]):
    """The payment already holding a deterministic (MPP) nonce, if any."""

    wallet_id: str
    nonce: str

    def answer(self, driver: Driver) -> PaymentRow | None:
        return driver.find_nonce(self)

    def answer_async(self, driver: AsyncDriver) -> Awaitable[PaymentRow | None]:
        return driver.find_nonce(self)


@dataclass(frozen=True, slots=True)
class LockChannel(Request[TopUpChannel | None]):
    """Lock a tenant's channel (a top-up is decided on it) and read it: a second
    top-up of the same channel waits here, then finds the deposit raised. Asked
    before ``Read``: a channel's lock comes before its tenant's audit chain head."""

    tenant_id: str
    channel: str

    def answer(self, driver: Driver) -> TopUpChannel | None:
        return driver.lock_channel(self)

    def answer_async(self, driver: AsyncDriver) -> Awaitable[TopUpChannel | None]:
        return driver.lock_channel(self)


@dataclass(frozen=True, slots=True)
class RaiseDeposit(Request[bool]):
    """Raise an open channel's deposit from ``before`` to ``after`` (compare-and-set:
    True when it was still ``before``), in the transaction that reserves the top-up."""

    channel: str
    before: int
    after: int
    now_ms: int

    def answer(self, driver: Driver) -> bool:
        return driver.raise_deposit(self)

    def answer_async(self, driver: AsyncDriver) -> Awaitable[bool]:
        return driver.raise_deposit(self)


@dataclass(frozen=True, slots=True)
class Write(Request[None]):
    """The batch's rows, written at its end (the last request; it commits)."""

    payments: Sequence[dict[str, Any]]
    buckets: Sequence[dict[str, Any]]
    events: Sequence[dict[str, Any]]
    heads: Mapping[str, tuple[int, str]]
    #: (table, row) of other tables written with the payments: a session's channel
    #: and its first voucher, in the transaction that reserves its deposit.
    rows: Sequence[tuple[str, dict[str, Any]]] = ()

    def answer(self, driver: Driver) -> None:
        return driver.write(self)

    def answer_async(self, driver: AsyncDriver) -> Awaitable[None]:
        return driver.write(self)


class Driver(Protocol):
    """Answers a plan's requests inside one transaction."""

    def read(self, request: Read) -> Snapshot: ...
    def measure(self, request: Measure) -> Windows: ...
    def release_key(self, request: ReleaseKey) -> None: ...
    def find_nonce(self, request: FindNonce) -> PaymentRow | None: ...
    def lock_channel(self, request: LockChannel) -> TopUpChannel | None: ...
    def raise_deposit(self, request: RaiseDeposit) -> bool: ...
    def write(self, request: Write) -> None: ...


class AsyncDriver(Protocol):
    """``Driver`` on an event loop."""

    def read(self, request: Read) -> Awaitable[Snapshot]: ...
    def measure(self, request: Measure) -> Awaitable[Windows]: ...
    def release_key(self, request: ReleaseKey) -> Awaitable[None]: ...
    def find_nonce(self, request: FindNonce) -> Awaitable[PaymentRow | None]: ...
    def lock_channel(self, request: LockChannel) -> Awaitable[TopUpChannel | None]: ...
    def raise_deposit(self, request: RaiseDeposit) -> Awaitable[bool]: ...
    def write(self, request: Write) -> Awaitable[None]: ...


class Contended(Unavailable):
    """The batch's transaction lost a lock wait (timeout, deadlock, serialization):
    nothing was written, and each call may well succeed on its own."""


def _resume(plan: Plan[T], got: tuple[bool, Any] | None) -> tuple[bool, Any]:
    """Start the plan (``got`` None), or send it an answer ``(True, value)`` or throw
    an error ``(False, exc)`` into it where it asked. Returns ``(True, its result)``
    once it has returned, else ``(False, its next request)``."""
    try:
        if got is None:
            return False, next(plan)
        return False, plan.send(got[1]) if got[0] else plan.throw(got[1])
    except StopIteration as done:
        return True, done.value


def drive(plan: Plan[T], driver: Driver) -> T:
    """Run a plan, each request answered by ``driver``; TellerErrors it raises
    go back into the plan, where the request was made."""
    done, value = _resume(plan, None)
    while not done:
        try:
            got = (True, value.answer(driver))
        except TellerError as exc:
            got = (False, exc)
        done, value = _resume(plan, got)
    return cast(T, value)


async def drive_async(plan: Plan[T], driver: AsyncDriver) -> T:
    done, value = _resume(plan, None)
    while not done:
        try:
            got = (True, await value.answer_async(driver))
        except TellerError as exc:
            got = (False, exc)
        done, value = _resume(plan, got)
    return cast(T, value)


__all__ = [
    "AsyncDriver",
    "ChannelRow",
    "Contended",
    "Driver",
    "FindNonce",
    "LockChannel",
    "Measure",
    "PaymentRow",
    "Plan",
    "RaiseDeposit",
    "Read",
    "ReleaseKey",
    "Request",
    "Snapshot",
    "TenantRow",
    "TokenRow",
    "TopUpChannel",
    "WalletRow",
    "Windows",
    "Write",
    "drive",
    "drive_async",
]
