"""Channels and vouchers in the database; each voucher signed under its channel's lock.

One transaction per voucher: lock the channel's row, compute the next total
(``rules.next_cumulative``), sign it through the vault, insert the voucher,
raise the channel's total and audit the voucher, then commit. A worker that
dies anywhere before the commit leaves nothing: the voucher it may have
signed was never handed out. Three backstops hold even if the lock slipped:
the vouchers' primary key (one voucher per total), the total's
compare-and-set update (only upwards), and the table's check (never past the
deposit).

A voucher uses only the deposit the server knows: the channel's, less what
its top-ups still on their way to the server add (signed, not yet taken by
the server nor mined, nor released). A voucher that needs that part is not
signed: its caller is answered ``Unavailable`` ``top_up_in_flight`` and waits
for the delivery (``teller.channels.top_up``). The sum is a subquery of the
statement that locks the channel, so it costs no round trip.

On PostgreSQL the lock is ``SELECT ... FOR UPDATE`` on the channel's row, so
vouchers of different channels are signed in parallel; SQLite's writers take
the database's write lock at ``BEGIN IMMEDIATE`` (``teller.db.engine``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, ScalarSelect, and_, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from teller.audit import events as audit
from teller.channels.rules import ChannelState, check_amount, next_cumulative
from teller.clock import Clock, ms, system_clock
from teller.db.engine import Database
from teller.db.models import Channel, ChannelTopUp, Payment, Tenant, Voucher, Wallet
from teller.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    TellerError,
    Unavailable,
)
from teller.mpp.channel import ChannelDescriptor, voucher_typed_data
from teller.states import PaymentState
from teller.vault import SealedKey, Vault

#: The reason of a voucher that needs the deposit of a top-up not yet delivered.
TOP_UP_IN_FLIGHT = "top_up_in_flight"
#: A top-up payment in these states, not released, may still be mined.
_UNMINED = (PaymentState.SIGNED.value, PaymentState.FAILED.value)


def _undelivered(channel: object) -> ColumnElement[bool]:
    """The condition on ``ChannelTopUp`` (joined to its ``Payment``) of ``channel``'s
    top-ups the server may not know of: not delivered, not mined, not released."""
    return and_(ChannelTopUp.channel == channel, ChannelTopUp.delivered_ms.is_(None),
                Payment.state.in_(_UNMINED), Payment.released_ms.is_(None))


def _in_flight_sum() -> ScalarSelect[int]:
    """What ``Channel``'s undelivered top-ups add, as a scalar subquery of the statement that locks it."""
    return (select(func.coalesce(func.sum(ChannelTopUp.added), 0))
            .join(Payment, Payment.id == ChannelTopUp.payment_id)
            .where(_undelivered(Channel.id)).scalar_subquery())


def _deposit_seen() -> ScalarSelect[int]:
    """``Channel``'s deposit as the locking statement's snapshot has it. On
    PostgreSQL a ``FOR UPDATE`` that waited returns the row as the transaction it
    waited for committed it, but its subqueries still read the snapshot taken
    before the wait: when the two deposits differ (that transaction topped the
    channel up, or let a top-up go), the in-flight sum is read again."""
    seen = aliased(Channel)
    return select(seen.deposit).where(seen.id == Channel.id).scalar_subquery()


@dataclass(frozen=True, slots=True)
class ChannelView:
    """A channel as callers and operators see it."""

    id: str
    tenant_id: str
    wallet_id: str
    network: str
    escrow: str
    channel_id: str
    token: str
    payee: str
    deposit: int
    cumulative: int
    state: str
    created_ms: int
    updated_ms: int

    @property
    def remaining(self) -> int:
        return self.deposit - self.cumulative


@dataclass(frozen=True, slots=True)
class SignedVoucher:
    """A voucher Teller signed: the payee may take ``cumulative`` in total."""

    channel: str  # Teller's handle
    channel_id: str  # the escrow's id, 0x-hex
    cumulative: int
    increment: int
    signature: str  # 0x + r, s, v
    deposit: int
    descriptor: str  # the channel's descriptor as stored (JSON)
    payer: str  # the wallet's address
    network: str
    token: str
    payee: str


@dataclass(frozen=True, slots=True)
class TopUpWanted:
    """No open channel has the unit left (or a metered stream's total is past its
    channel's deposit): the one to top up, as it stood when read (the batch that
    tops it up reads it again under its lock)."""

    channel: str  # Teller's handle
    channel_id: str
    descriptor: str  # as stored (JSON)
    escrow: str
    deposit: int
    cumulative: int
    opened_with: int  # the deposit it was opened with
    #: The total of the voucher waiting for it, when fixed (a metered stream's request, ``sign_to``).
    total: int | None = None


@dataclass(frozen=True, slots=True)
class Ask:
    """One caller's request for the next voucher."""

    increment: int
    max_increment: int | None = None  # the caller's cap per voucher
    idempotency_key: str | None = None
    #: Run first in the transaction (the caller's token, the policy as it stands).
    check: Callable[[Session], None] | None = None
    #: Asks of one batch with the same key share one run of ``check``.
    check_key: Hashable | None = None


class _Unset:
    """An ask not answered yet."""


_UNSET = _Unset()
#: What each ask of a batch gets: its voucher, None (no channel open: the caller
#: opens one), the channel to top up (none has the unit left), or the error that
#: refused it alone.
Answer = SignedVoucher | TellerError | TopUpWanted | None


@dataclass(frozen=True, slots=True)
class Wanted:
    """The channel a session challenge asks vouchers on: one of the wallet's open
    channels with this escrow, payee, token and operator on this network."""

    tenant_id: str
    wallet_id: str
    network: str
    escrow: str
    payee: str
    token: str
    operator: str
    channel_id: str | None = None  # the one the server names, preferred when it is ours


def view_of(c: Channel) -> ChannelView:
    """A channel row as callers and operators see it."""
    return ChannelView(c.id, c.tenant_id, c.wallet_id, c.network, c.escrow, c.channel_id, c.token, c.payee, c.deposit,
                       c.cumulative, c.state, c.created_ms, c.updated_ms)


def chain_id_of(network: str) -> int:
    namespace, _, reference = network.partition(":")
    if namespace != "eip155" or not reference.isdigit():
        raise InvalidArgument(f"channel network {network!r} is not an eip155 chain")
    return int(reference)


class Channels:
    """The channels of every tenant; each method is one transaction."""

    def __init__(self, db: Database, vault: Vault, clock: Clock = system_clock) -> None:
        self.db = db
        self.vault = vault
        self.clock = clock

    # -- open ------------------------------------------------------------------------------------------------

    @staticmethod
    def record_open(s: Session, *, tenant_id: str, wallet_id: str, network: str, escrow: str, channel_id: bytes,
                    descriptor: ChannelDescriptor, deposit: int, now_ms: int) -> str:
        """Add an opened channel inside the caller's transaction (the one that
        reserves its deposit); returns Teller's handle for it."""
        check_amount(deposit, "deposit")
        if deposit == 0:
            raise InvalidArgument("a channel's deposit must be positive")
        handle = str(uuid.uuid4())
        s.add(Channel(id=handle, tenant_id=tenant_id, wallet_id=wallet_id, network=network, escrow=escrow,
                      channel_id="0x" + channel_id.hex(), token=descriptor.token, payee=descriptor.payee,
                      descriptor=json.dumps(descriptor.to_json(), sort_keys=True), deposit=deposit, cumulative=0,
                      state=ChannelState.OPEN.value, created_ms=now_ms, updated_ms=now_ms))
        return handle

    @staticmethod
    def open_failed(s: Session, payment_id: str, now_ms: int) -> None:
        """The open transaction will never be mined (expired, reverted): the channel
        does not exist on chain, so it takes no more vouchers. Inside the
        transaction that releases the payment's reservation."""
        s.execute(update(Channel).where(Channel.open_payment_id == payment_id)
                  .values(state=ChannelState.CLOSED.value, updated_ms=now_ms)
                  .execution_options(synchronize_session=False))

    @staticmethod
    def top_up_failed(s: Session, payment_id: str, now_ms: int) -> int | None:
        """A top-up's transaction will never be mined: the channel's deposit goes
        back down by what it added, inside the transaction that releases the
        payment's reservation. Vouchers already signed into it stay signed (the
        escrow pays none past the real deposit); the deposit goes no lower than
        them, and the channel then takes no more. Returns the deposit now, or
        None when the payment is no top-up."""
        top = s.get(ChannelTopUp, payment_id)
        if top is None:
            return None
        c = s.execute(select(Channel).where(Channel.id == top.channel).with_for_update()).scalar_one()
        c.deposit = max(c.deposit - top.added, c.cumulative)
        c.updated_ms = now_ms
        s.flush()
        return c.deposit

    # -- top-ups on their way to the server ------------------------------------------------------------------

    @staticmethod
    def mark_delivered(s: Session, payment_id: str, now_ms: int) -> None:
        """The server knows top-up ``payment_id``'s deposit (it took the credential,
        or the transaction is mined): vouchers may use it. In the caller's transaction."""
        s.execute(update(ChannelTopUp).where(ChannelTopUp.payment_id == payment_id,
                                             ChannelTopUp.delivered_ms.is_(None))
                  .values(delivered_ms=now_ms).execution_options(synchronize_session=False))

    def top_up_delivered(self, payment_id: str) -> None:
        """The server took top-up ``payment_id`` (it answered its POST with 2xx)."""
        with self.db.transaction() as s:
            self.mark_delivered(s, payment_id, ms(self.clock))

    def top_up_in_flight(self, payment_id: str) -> bool:
        """Whether top-up ``payment_id`` is still on its way: neither delivered, mined nor released."""
        with self.db.read() as s:  # one statement: waiting callers ask this every POLL_S
            return s.scalar(
                select(ChannelTopUp.payment_id).join(Payment, Payment.id == ChannelTopUp.payment_id)
                .where(ChannelTopUp.payment_id == payment_id, _undelivered(ChannelTopUp.channel))) is not None

    def own_top_up(self, tenant_id: str, payment_id: str, key: str | None,
                   request_hash: str) -> tuple[str, str] | None:
        """The credential (header name, value) of top-up ``payment_id`` when a call
        under ``key`` made it and it is still on its way: that call's delivery
        failed, and a retry under its key is the one to hand it over again (no other
        caller has its credential to send). None otherwise. The key sent with
        another request (``request_hash``: another URL, say) is ALREADY_EXISTS:
        the credential goes to no server but its own request's."""
        if not key:
            return None
        with self.db.read() as s:
            row = s.execute(select(Payment.header_name, Payment.header_value, Payment.request_hash)
                            .join(ChannelTopUp, ChannelTopUp.payment_id == Payment.id)
                            .where(Payment.id == payment_id, Payment.tenant_id == tenant_id,
                                   Payment.idempotency_key == key, _undelivered(ChannelTopUp.channel))).one_or_none()
        if row is None:
            return None
        if row[2] != request_hash:
            raise AlreadyExists(f"idempotency_key {key!r} was already used for a different request")
        return row[0], row[1]

    @staticmethod
    def _undelivered_now(s: Session, channel: str) -> list[tuple[str, int]]:
        """``channel``'s top-ups on their way (payment, added), oldest first, read by a
        statement of their own: under the channel's lock, as committed now."""
        return [(p, a) for p, a in s.execute(
            select(ChannelTopUp.payment_id, ChannelTopUp.added).join(Payment, Payment.id == ChannelTopUp.payment_id)
            .where(_undelivered(channel)).order_by(ChannelTopUp.created_ms, ChannelTopUp.payment_id))]

    @staticmethod
    def _in_flight(c: Channel, known: int, first: tuple[str, int]) -> Unavailable:
        """The refusal of a voucher past ``known``, the deposit the server knows of ``c``
        (``first``: its oldest top-up on its way)."""
        return Unavailable(f"channel {c.id} ({c.channel_id}): the voucher needs the deposit its top-up {first[0]} "
                           f"(+{first[1]}) adds, which is still on its way to the server (it knows {known} of "
                           f"{c.deposit}): retry once it is delivered", reason=TOP_UP_IN_FLIGHT,
                           metadata={"channel": c.id, "top_up_payment": first[0], "deposit": str(c.deposit),
                                     "deposit_delivered": str(known)})

    # -- vouchers --------------------------------------------------------------------------------------------

    def sign_voucher(self, tenant_id: str, channel: str, increment: int, *, max_increment: int | None = None,
                     actor: str = "", idempotency_key: str | None = None) -> SignedVoucher:
        """The next voucher on ``channel``: its total raised by ``increment``,
        signed by the channel's wallet, recorded and audited in one transaction.
        A key already used returns the voucher it signed."""
        check_amount(increment, "increment")
        with self.db.transaction() as s:
            if idempotency_key:
                replay = self._replay(s, tenant_id, idempotency_key)
                if replay is not None:
                    if replay.channel != channel:
                        raise AlreadyExists(f"idempotency_key {idempotency_key!r} was already used for a "
                                            "different request")
                    return replay
            out = self._sign_many(s, tenant_id, channel, [Ask(increment, max_increment, idempotency_key)], actor)[0]
            if isinstance(out, TellerError):
                raise out
            return out

    def sign_next(self, want: Wanted, increment: int, *, max_increment: int | None = None, actor: str = "",
                  idempotency_key: str | None = None,
                  check: Callable[[Session], None] | None = None) -> SignedVoucher | TopUpWanted | None:
        """The next voucher on the wallet's open channel that ``want`` names and
        that has ``increment`` left; None when there is none (the caller opens
        one); the channel to top up when one is open but none has the unit left.
        ``check`` runs first in the transaction (the caller's token)."""
        out = self.sign_next_many(want, [Ask(increment, max_increment, idempotency_key, check)], actor=actor)[0]
        if isinstance(out, TellerError):
            raise out
        return out

    def sign_next_many(self, want: Wanted, asks: Sequence[Ask], *, actor: str = "") -> list[Answer]:
        """``sign_next`` for several callers of one channel at once, in one
        transaction: the channel is locked once, each ask gets the next total in
        turn, and the vouchers are written and audited together. Each ask gets
        its own answer (a voucher, None to open a channel, or the error that
        refused it alone); an error of the database fails them all, but one: a
        key that another worker used between this batch's look-up and its insert
        (the vouchers' unique key refuses it). Then each ask is answered in a
        transaction of its own, so that key's caller gets its replay and the
        others their vouchers."""
        try:
            return self._sign_batch(want, asks, actor)
        except IntegrityError:
            if len(asks) == 1:
                raise
        answers: list[Answer] = []
        for ask in asks:
            try:
                answers.extend(self._sign_batch(want, [ask], actor))
            except IntegrityError:
                answers.append(Unavailable(f"idempotency_key {ask.idempotency_key!r} is being used by another call "
                                           "at the same time: retry"))
        return answers

    def _sign_batch(self, want: Wanted, asks: Sequence[Ask], actor: str) -> list[Answer]:
        for ask in asks:
            check_amount(ask.increment, "increment")
        out: list[Answer | _Unset] = [_UNSET] * len(asks)
        with self.db.transaction() as s:
            checked: dict[Hashable, TellerError | None] = {}
            by_key: dict[str, int] = {}  # an idempotency key's first ask in this batch
            pending: list[int] = []
            replays, topped = self._replays(s, want, [a.idempotency_key for a in asks if a.idempotency_key])
            for i, ask in enumerate(asks):
                try:
                    self._check(s, ask, checked)
                    if ask.idempotency_key:
                        if ask.idempotency_key in by_key:
                            continue  # answered as the first ask with its key is (below)
                        by_key[ask.idempotency_key] = i
                        if ask.idempotency_key in replays:
                            out[i] = replays[ask.idempotency_key]
                            continue
                        if ask.idempotency_key in topped:
                            # The key's top-up is made: the voucher it was made for, on its channel
                            # (no second top-up: out of room there, it is refused).
                            out[i] = self._sign_many(s, want.tenant_id, topped[ask.idempotency_key], [ask],
                                                     actor)[0]
                            continue
                    pending.append(i)
                except TellerError as exc:
                    out[i] = exc
            if pending:
                self._sign_pending(s, want, asks, pending, out, actor)
        for i, ask in enumerate(asks):
            if out[i] is _UNSET and ask.idempotency_key:
                out[i] = out[by_key[ask.idempotency_key]]  # the same key twice in one batch: one voucher
        return [o for o in out if not isinstance(o, _Unset)]

    @staticmethod
    def _check(s: Session, ask: Ask, checked: dict[Hashable, TellerError | None]) -> None:
        """Run ``ask``'s check, once per ``check_key`` in a batch (callers of one
        token and one policy question share its answer)."""
        if ask.check is None:
            return
        if ask.check_key is not None and ask.check_key in checked:
            earlier = checked[ask.check_key]
            if earlier is not None:
                raise earlier
            return
        try:
            ask.check(s)
        except TellerError as exc:
            if ask.check_key is not None:
                checked[ask.check_key] = exc
            raise
        if ask.check_key is not None:
            checked[ask.check_key] = None

    def _replays(self, s: Session, want: Wanted, keys: list[str]) -> tuple[dict[str, Answer], dict[str, str]]:
        """What keys already used answer, in two queries for a whole batch: None
        for a key that names the open's payment (a retry of the open: its own
        answer), else the voucher it signed. Keys never used are not in the
        result. Second, the keys that name a top-up whose voucher is not signed
        yet, with its channel."""
        if not keys:
            return {}, {}
        found: dict[str, Answer] = {}
        topped: dict[str, str] = {}
        ours = (want.wallet_id, want.network, want.escrow.lower(), want.payee, want.token)

        def other(key: str) -> AlreadyExists:
            return AlreadyExists(f"idempotency_key {key!r} was already used for a different request")

        for key, top_up_of, *theirs in s.execute(
                select(Payment.idempotency_key, ChannelTopUp.channel, Channel.wallet_id, Channel.network,
                       Channel.escrow, Channel.payee, Channel.token)
                .outerjoin(ChannelTopUp, ChannelTopUp.payment_id == Payment.id)
                .outerjoin(Channel, Channel.id == ChannelTopUp.channel)
                .where(Payment.tenant_id == want.tenant_id, Payment.idempotency_key.in_(keys))):
            if key is None:
                continue
            if top_up_of is None:
                found[key] = None
            elif (theirs[0], theirs[1], theirs[2].lower(), theirs[3], theirs[4]) != ours:
                # A top-up of another channel (wallet, payee, ...): never a voucher on it for this request.
                found[key] = other(key)
            else:
                topped[key] = top_up_of
        used = s.execute(select(Voucher.idempotency_key, Channel.wallet_id, Channel.escrow)
                         .join(Channel, Channel.id == Voucher.channel)
                         .where(Voucher.tenant_id == want.tenant_id,
                                Voucher.idempotency_key.in_([k for k in keys if k not in found])))
        for key, wallet_id, escrow in used:
            if key is None:
                continue
            replay = self._replay(s, want.tenant_id, key)
            if replay is not None and (wallet_id, replay.network, escrow.lower(), replay.payee, replay.token) != ours:
                found[key] = other(key)
            else:
                found[key] = replay
            topped.pop(key, None)
        return found, topped

    def _sign_pending(self, s: Session, want: Wanted, asks: Sequence[Ask], pending: list[int],
                      out: list[Answer | _Unset], actor: str) -> None:
        candidates = s.execute(
            select(Channel.id, Channel.channel_id, Channel.descriptor, Channel.deposit - Channel.cumulative)
            .where(Channel.tenant_id == want.tenant_id, Channel.wallet_id == want.wallet_id,
                   Channel.network == want.network, Channel.escrow == want.escrow, Channel.payee == want.payee,
                   Channel.token == want.token, Channel.state == ChannelState.OPEN.value)
            .order_by(Channel.created_ms, Channel.id)).all()
        mine = [(handle, cid, left) for handle, cid, descriptor, left in candidates
                if json.loads(descriptor)["operator"].lower() == want.operator.lower()]
        if not mine:
            for i in pending:
                out[i] = None  # none open: the caller opens one
            return
        first = asks[pending[0]].increment
        roomy = [(handle, cid) for handle, cid, left in mine if left >= first]
        if not roomy:
            # Not another channel beside it: each would hold a deposit of its own until
            # closed, and callers racing at the end of one would open one each. It is
            # topped up (by the Sign batch, once however many callers ask at once).
            ours = [m for m in mine if m[1] == want.channel_id]
            wanted = self._top_up_wanted(s, (ours[0] if ours else mine[0])[0])
            for i in pending:
                out[i] = wanted
            return
        named = [handle for handle, cid in roomy if cid == want.channel_id]
        handle = named[0] if named else roomy[0][0]
        answers = self._sign_many(s, want.tenant_id, handle, [asks[i] for i in pending], actor)
        wanted_later: TopUpWanted | None = None
        for i, answer in zip(pending, answers, strict=True):
            if isinstance(answer, LimitExceeded) and answer.reason == "channel_deposit_exhausted":
                # The ones before it in this batch used the room up: it is topped up too.
                wanted_later = wanted_later or self._top_up_wanted(s, handle)
                out[i] = wanted_later
            else:
                out[i] = answer

    @staticmethod
    def _top_up_wanted(s: Session, handle: str, total: int | None = None) -> TopUpWanted:
        c = s.execute(select(Channel.channel_id, Channel.descriptor, Channel.escrow, Channel.deposit,
                             Channel.cumulative, Channel.open_payment_id).where(Channel.id == handle)).one()
        opened = s.scalar(select(Payment.amount).where(Payment.id == c.open_payment_id))
        return TopUpWanted(handle, c.channel_id, c.descriptor, c.escrow, c.deposit, c.cumulative,
                           opened if opened is not None else c.deposit, total)

    def sign_to(self, want: Wanted, total: int, *, max_increment: int | None = None, actor: str = "",
                check: Callable[[Session, int], None] | None = None) -> SignedVoucher | TopUpWanted:
        """A voucher for ``total`` on the channel ``want.channel_id`` names (a metered
        stream's request for the next voucher), signed under the channel's lock: the
        increment is what ``total`` adds to the channel's total as it stands under
        the lock, judged by ``check(session, increment)`` before it is signed. A total
        the channel already reached gets its highest voucher again, nothing new. A
        total past the deposit that everything else allows gets the channel to top
        up (nothing signed): judged first, so no deposit is added for a voucher the
        caps or the policy would refuse."""
        check_amount(total, "total")
        with self.db.transaction() as s:
            handle = s.scalar(select(Channel.id).where(
                Channel.tenant_id == want.tenant_id, Channel.wallet_id == want.wallet_id,
                Channel.network == want.network, Channel.escrow == want.escrow, Channel.payee == want.payee,
                Channel.token == want.token, Channel.channel_id == want.channel_id))
            if handle is None:
                raise FailedPrecondition(f"channel {want.channel_id} is not one of wallet {want.wallet_id}'s channels "
                                         f"with escrow {want.escrow}, payee {want.payee} and token {want.token}",
                                         reason="stream_channel_mismatch")
            # Locked here first: the increment is what ``total`` adds to the total as it stands.
            c = s.execute(select(Channel).where(Channel.id == handle).with_for_update()).scalar_one()
            increment = total - c.cumulative
            if increment <= 0:
                # Already promised (another call on the channel went further): the same voucher again.
                last = s.execute(select(Voucher.signature, Wallet.address).join(Wallet, Wallet.id == c.wallet_id)
                                 .where(Voucher.channel == c.id, Voucher.cumulative == c.cumulative)).one_or_none()
                if last is None:
                    raise TellerError(f"channel {c.id}: its total {c.cumulative} has no voucher")
                return SignedVoucher(c.id, c.channel_id, c.cumulative, 0, last[0], c.deposit, c.descriptor,
                                     last[1], c.network, c.token, c.payee)
            if check is not None:
                check(s, increment)
            if (total > c.deposit and c.state == ChannelState.OPEN
                    and (max_increment is None or increment <= max_increment)):
                return self._top_up_wanted(s, handle, total)
            out = self._sign_many(s, want.tenant_id, handle, [Ask(increment, max_increment)], actor)[0]
            if isinstance(out, TellerError):
                raise out
            return out

    def _replay(self, s: Session, tenant_id: str, key: str) -> SignedVoucher | None:
        found = s.execute(select(Voucher, Channel, Wallet.address).join(Channel, Channel.id == Voucher.channel)
                          .join(Wallet, Wallet.id == Channel.wallet_id)
                          .where(Voucher.tenant_id == tenant_id, Voucher.idempotency_key == key)).one_or_none()
        if found is None:
            return None
        v, c, payer = found
        below = s.scalar(select(func.max(Voucher.cumulative)).where(Voucher.channel == c.id,
                                                                   Voucher.cumulative < v.cumulative)) or 0
        return SignedVoucher(c.id, c.channel_id, v.cumulative, v.cumulative - below, v.signature, c.deposit,
                             c.descriptor, payer, c.network, c.token, c.payee)

    def _sign_many(self, s: Session, tenant_id: str, channel: str, asks: Sequence[Ask],
                   actor: str) -> list[SignedVoucher | TellerError]:
        """Each ask's voucher on ``channel``, in order, under one lock of its row:
        every total is the one before raised by the ask's increment (an ask the
        rules refuse gets its error and moves nothing). The vouchers are inserted
        together, the total moved once (compare-and-set) and the batch audited as
        one event."""
        row = s.execute(select(Channel, Wallet, Tenant, _in_flight_sum(), _deposit_seen())
                        .join(Wallet, Wallet.id == Channel.wallet_id)
                        .join(Tenant, Tenant.id == Channel.tenant_id)
                        .where(Channel.id == channel, Channel.tenant_id == tenant_id)
                        .with_for_update(of=Channel)
                        # The row as locked, even when this session already holds the channel
                        # (a replay read it before the lock): never an older deposit or total.
                        .execution_options(populate_existing=True)).one_or_none()
        if row is None:
            raise NotFound(f"channel {channel!r} not found")
        c, wallet, tenant, in_flight, seen = row
        # The statement's subqueries read its snapshot: if its lock waited for a transaction that
        # moved the deposit (a top-up), the top-ups as committed now, read again under the lock.
        fresh = self._undelivered_now(s, c.id) if seen != c.deposit else None
        known = c.deposit - (int(in_flight) if fresh is None else sum(a for _, a in fresh))  # the server's
        for what, holder in ((f"tenant {tenant.id}", tenant), (f"wallet {wallet.id}", wallet)):
            if holder.frozen or holder.state != "active":
                raise FailedPrecondition(f"{what} is {'frozen' if holder.frozen else holder.state}: "
                                         "it signs no vouchers", reason="frozen" if holder.frozen else "disabled")
        signer = self.vault.signer(tenant_id, wallet.id, wallet.address,
                                   SealedKey(wallet.kek_version, wallet.wrapped_data_key, wallet.key_ciphertext))
        chain_id = chain_id_of(c.network)
        now_ms = ms(self.clock)
        answers: list[SignedVoucher | TellerError] = []
        rows: list[dict[str, object]] = []
        total = c.cumulative
        for ask in asks:
            try:
                nxt = next_cumulative(state=c.state, current=total, deposit=c.deposit, increment=ask.increment,
                                      max_increment=ask.max_increment)
            except TellerError as exc:
                answers.append(exc)
                continue
            if nxt > known and fresh is None:
                # The snapshot may count a top-up delivered while the lock waited: as committed now.
                fresh = self._undelivered_now(s, c.id)
                known = c.deposit - sum(a for _, a in fresh)
            if nxt > known:
                # Within the deposit Teller recorded, past the one the server knows: it would refuse it.
                assert fresh  # known < deposit: a top-up is on its way
                answers.append(self._in_flight(c, known, fresh[0]))
                continue
            typed = voucher_typed_data(bytes.fromhex(c.channel_id[2:]), nxt, escrow=c.escrow, chain_id=chain_id)
            signature = "0x" + signer.sign_typed_data(typed).hex()
            rows.append({"channel": c.id, "cumulative": nxt, "signature": signature, "tenant_id": tenant_id,
                         "idempotency_key": ask.idempotency_key or None, "created_ms": now_ms})
            answers.append(SignedVoucher(c.id, c.channel_id, nxt, ask.increment, signature, c.deposit, c.descriptor,
                                         wallet.address, c.network, c.token, c.payee))
            total = nxt
        if not rows:
            return answers
        s.connection().execute(insert(Voucher), rows)
        # Only upwards, even if two transactions both got past the lock: the
        # second finds the total moved and writes nothing.
        moved = s.execute(update(Channel).where(Channel.id == c.id, Channel.cumulative == c.cumulative)
                          .values(cumulative=total, updated_ms=now_ms)
                          .execution_options(synchronize_session=False))
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise TellerError(f"channel {c.id}: its total moved while locked")
        # One event per batch: the vouchers table holds each voucher; the event says
        # how many were signed, from which total to which, and who asked.
        audit.record(s, at_ms=now_ms, actor=actor, action="channel.voucher", tenant_id=tenant_id,
                     wallet_id=c.wallet_id, amount=total - c.cumulative, asset=c.token, network=c.network,
                     payee=c.payee, details={"channel": c.id, "channel_id": c.channel_id, "cumulative": str(total),
                                             "vouchers": len(rows), "from": str(c.cumulative)})
        return answers

    # -- cooperative close ----------------------------------------------------------------------------------

    def begin_close(self, tenant_id: str, channel: str, *, actor: str = "") -> SignedVoucher:
        """Stop signing vouchers on ``channel`` (state ``closing``) and return its
        final voucher: the highest total signed, which the close hands the payee.
        A channel already closing returns it again (a close may be sent twice)."""
        with self.db.transaction() as s:
            row = s.execute(select(Channel, Wallet.address).join(Wallet, Wallet.id == Channel.wallet_id)
                            .where(Channel.id == channel, Channel.tenant_id == tenant_id)
                            .with_for_update(of=Channel)).one_or_none()
            if row is None:
                raise NotFound(f"channel {channel!r} not found")
            c, payer = row
            if c.state == ChannelState.CLOSED:
                raise FailedPrecondition(f"channel {channel} is closed already", reason="channel_not_open")
            last = s.execute(select(Voucher.cumulative, Voucher.signature).where(Voucher.channel == c.id)
                             .order_by(Voucher.cumulative.desc()).limit(1)).one_or_none()
            if c.state == ChannelState.OPEN:
                now_ms = ms(self.clock)
                c.state, c.updated_ms = ChannelState.CLOSING.value, now_ms
                audit.record(s, at_ms=now_ms, actor=actor, action="channel.close_requested", tenant_id=tenant_id,
                             wallet_id=c.wallet_id, amount=c.cumulative, asset=c.token, network=c.network,
                             payee=c.payee, details={"channel": c.id, "channel_id": c.channel_id,
                                                     "deposit": str(c.deposit), "cumulative": str(c.cumulative)})
            total, signature = last if last is not None else (0, "")
            if total != c.cumulative:
                raise TellerError(f"channel {c.id}: its total {c.cumulative} has no voucher")
            return SignedVoucher(c.id, c.channel_id, total, 0, signature, c.deposit, c.descriptor, payer,
                                 c.network, c.token, c.payee)

    def cancel_close(self, tenant_id: str, channel: str, why: str, *, actor: str = "") -> None:
        """The server did not take the close: the channel is open again (the final
        voucher it was sent adds nothing to what it already held)."""
        with self.db.transaction() as s:
            c = s.scalars(select(Channel).where(Channel.id == channel, Channel.tenant_id == tenant_id)
                          .with_for_update()).one_or_none()
            if c is None or c.state != ChannelState.CLOSING or c.force_payment_id is not None:
                return  # a forced close under way keeps it closing (teller.channels.forced)
            now_ms = ms(self.clock)
            c.state, c.updated_ms = ChannelState.OPEN.value, now_ms
            audit.record(s, at_ms=now_ms, actor=actor, action="channel.close_refused", tenant_id=tenant_id,
                         wallet_id=c.wallet_id, asset=c.token, network=c.network, payee=c.payee,
                         reason=why[:100], details={"channel": c.id, "channel_id": c.channel_id})

    # -- reads -----------------------------------------------------------------------------------------------

    def get(self, tenant_id: str, channel: str) -> ChannelView:
        with self.db.read() as s:
            c = s.scalars(select(Channel).where(Channel.id == channel, Channel.tenant_id == tenant_id)).one_or_none()
            if c is None:
                raise NotFound(f"channel {channel!r} not found")
            return view_of(c)

    def of_tenant(self, tenant_id: str, *, state: str | None = None) -> list[ChannelView]:
        with self.db.read() as s:
            q = select(Channel).where(Channel.tenant_id == tenant_id)
            if state is not None:
                q = q.where(Channel.state == state)
            return [view_of(c) for c in s.scalars(q.order_by(Channel.created_ms, Channel.id))]

    def vouchers(self, tenant_id: str, channel: str) -> list[tuple[int, str]]:
        """The channel's vouchers as (total, signature), in increasing order."""
        with self.db.read() as s:
            owned = s.scalar(select(Channel.id).where(Channel.id == channel, Channel.tenant_id == tenant_id))
            if owned is None:
                raise NotFound(f"channel {channel!r} not found")
            rows = s.execute(select(Voucher.cumulative, Voucher.signature).where(Voucher.channel == channel)
                             .order_by(Voucher.cumulative))
            return [(total, sig) for total, sig in rows]
