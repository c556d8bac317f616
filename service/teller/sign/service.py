"""The Sign service: ``prepare`` does everything that needs no lock (parse,
chain facts, sign the likely offer); ``commit`` reserves a batch of prepared
calls in one transaction (the plan of ``teller.sign.plan``, answered by a
SQLAlchemy session or, on PostgreSQL, async psycopg); ``finish`` hands each
call its answer (broadcasting a push payment first).
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from datetime import UTC, datetime
from typing import cast

import psycopg
from sqlalchemy import select
from sqlalchemy.orm import Session as Session_

from teller import balances, idempotency, observe, signing
from teller import offers as offers_mod
from teller.audit import events as audit
from teller.callers import Caller, check_secret
from teller.chain import ChainReader, NotCached
from teller.channels import top_up
from teller.channels.store import Ask, Channels, TopUpWanted, Wanted
from teller.clock import Clock, ms, system_clock
from teller.db import Database
from teller.db.models import ApiToken, Payment, Wallet
from teller.errors import (
    FailedPrecondition,
    InvalidArgument,
    LimitExceeded,
    PermissionDenied,
    TellerError,
    Unauthenticated,
    Unavailable,
)
from teller.mpp import charge as mpp_charge
from teller.mpp.channel import ESCROW_PRECOMPILE
from teller.mpp.session import Session
from teller.schemes import Offer
from teller.schemes.mpp_session import TEMPO_SESSION, top_up_offer, voucher_credential
from teller.schemes.proofs import Proofs
from teller.sign import batch_io
from teller.sign.call import Call, PushPending, Revisit, SignResult, Verdict, sign_result
from teller.sign.drivers.pg import AsyncPgBatchIO
from teller.sign.drivers.sqla import SqlBatchIO
from teller.sign.plan import CHANNEL_OPENING, Planner
from teller.signing import SignInput
from teller.spend import store as spend_store
from teller.spend.evaluate import evaluate_scope
from teller.spend.rules import PROTOCOLS, Charge
from teller.states import PaymentState
from teller.vault import SealedKey, Vault

log = logging.getLogger("teller.payments")

#: How many times one Sign tops up a session's channel before it gives up (each
#: time, other callers used the room it made before its own voucher).
TOP_UP_ROUNDS = 3

#: How long a session challenge whose channel another call has just opened waits
#: before it takes a voucher on that channel: time for the open to reach the
#: server, which refuses a voucher on a channel whose open it has not seen (mppx:
#: "channel not found"). A voucher it refuses costs nothing: the next one covers it.
OPENING_PAUSE_S = 0.25


def channel_opening(verdict: Verdict) -> bool:
    """Whether ``verdict`` says another call has just opened this call's channel
    (the batch opened none for it): the caller is answered with a voucher on it."""
    return isinstance(verdict, Unavailable) and verdict.reason == CHANNEL_OPENING


def _check_policies(s: Session_, tenant_id: str, wallet_id: str, charge: Charge,
                    denials: dict[int, str] | None = None) -> None:
    """The tenant's and wallet's policies as they stand, budgets aside (a voucher
    spends a deposit they already hold): the error of the first that refuses,
    put in ``denials`` (id of the error -> the policy's reason) for the caller
    to audit."""
    tenant, wallets = spend_store.policies(s, tenant_id, [wallet_id])
    for name, policy in (("tenant", tenant), ("wallet", wallets.get(wallet_id))):
        if policy is None:
            continue
        decision = evaluate_scope(dataclasses.replace(policy, budgets=()), name, charge, {}, False)
        if not decision.allowed:
            error = decision.error(charge)
            if denials is not None:
                denials[id(error)] = decision.reason
            raise error


def _request_hash(req: SignInput, collected: offers_mod.Collected) -> str:
    """What the idempotency key is bound to: the purchase, not one challenge."""
    return idempotency.purchase_hash(wallet_id=req.wallet_id, url=req.url, method=req.method, cap=req.max_amount,
                                     collected=collected)


class Payments:
    """The Sign service: a call is prepared (no lock), committed with others in
    one transaction (the plan, driven by a driver) and finished."""

    def __init__(
        self, db: Database, vault: Vault, *, networks: Mapping[str, int] | None = None,
        max_challenge_bytes: int = 256 * 1024, idempotency_ttl_s: int = 86400, clock: Clock = system_clock,
        chain: ChainReader | None = None, max_authorization_s: int = 3600, balance_check_s: float = 0.0,
        session_escrows: Mapping[str, str] | None = None, channels: Channels | None = None,
    ) -> None:
        self.db = db
        self.vault = vault
        self.networks = dict(networks or {})
        self.max_challenge_bytes = max_challenge_bytes
        self.idempotency_ttl_ms = idempotency_ttl_s * 1000
        self.clock = clock
        self.chain = chain or ChainReader({})
        self._wallets: dict[str, tuple[float, str, str, SealedKey]] = {}
        self.proofs = Proofs(vault, self.chain, clock, self.idempotency_ttl_ms, max_authorization_s)
        self.balances = balances.Balances(self.chain, db, ttl_s=balance_check_s)
        self.planner = Planner(self.proofs, clock)
        self.channels = channels or Channels(db, vault, clock)
        #: Per network, the escrows a session's deposit may go to: Tempo's precompile, and the configured one.
        self.session_escrows = {n: e.lower() for n, e in (session_escrows or {}).items()}
        #: How ``sign`` hands a session's top-up credential to the server (url, header, value)
        #: before the voucher that needs it; None: not handed (the caller's concern: it is
        #: recorded as delivered when signed).
        self.deliver_top_up: Callable[[str, str, str], None] | None = None
        #: How long a voucher waits for another call's top-up of its channel to reach the server.
        self.top_up_wait_s = top_up.WAIT_S

    def sign(self, caller: Caller, req: SignInput, token_secret: str | None = None) -> SignResult:
        """Sign a payment for ``req``. With ``token_secret`` the caller's token is
        verified inside the locking transaction (the RPC path); without it the
        caller is taken as already authenticated. A session channel topped up on
        the way is delivered through ``deliver_top_up`` (the RPC path delivers
        it itself, asynchronously)."""
        call = self.prepare(caller, req, token_secret)
        if self.voucher_channel(call) is not None:
            for _ in range(TOP_UP_ROUNDS):
                voucher = top_up.waiting_sync(lambda: self.voucher(call), self.top_up_in_flight,
                                              self.top_up_wait_s, lambda p: self._hand_over_again(call, p))
                if voucher is not None:
                    return voucher
                self.open_facts(call)
                if call.top_up is None:
                    break  # none open: the batch opens one
                try:
                    topped = self.finish(self.commit([call])[0])
                except Revisit:
                    continue  # another call topped it up: the voucher now fits
                finally:
                    call.top_up = None
                if self.deliver_top_up is not None:
                    self.deliver_top_up(call.req.url, topped.header_name, topped.header_value)
                self.channels.top_up_delivered(topped.payment_id)
            else:
                raise self.top_up_gave_out(call)
        verdict = self.commit([call])[0]
        if channel_opening(verdict):
            time.sleep(OPENING_PAUSE_S)
            return top_up.waiting_sync(lambda: self.voucher(call), self.top_up_in_flight, self.top_up_wait_s,
                                       lambda p: self._hand_over_again(call, p)) or self.finish(verdict)
        return self.finish(verdict)

    # -- MPP sessions: the next voucher on an open channel, outside the batch ---------------------------------

    @staticmethod
    def _session_offer(call: Call) -> Offer | None:
        chosen = offers_mod.by_preference(call.collected.offers, call.req.protocols or PROTOCOLS)
        return chosen[0] if chosen and chosen[0].scheme is TEMPO_SESSION else None

    def voucher(self, call: Call) -> SignResult | None:
        """The next voucher for ``call``'s session on the wallet's open channel
        with that escrow, payee and token, signed under the channel's lock; None
        when there is no such channel with the unit left (the batch then opens
        one, reserving its deposit). A voucher reserves nothing: the deposit it
        spends was reserved when the channel opened."""
        answer = self.vouchers([call])[0]
        if isinstance(answer, TellerError):
            raise answer
        return answer

    def _hand_over_again(self, call: Call, payment_id: str) -> bool:
        """Top-up ``payment_id`` handed to the server again when ``call`` (a retry
        under its key) made it and it never arrived; False when it is not the call's."""
        credential = self.channels.own_top_up(call.caller.tenant_id, payment_id, call.req.idempotency_key,
                                               call.request_hash)
        if credential is None:
            return False
        if self.deliver_top_up is not None:
            self.deliver_top_up(call.req.url, *credential)
        self.channels.top_up_delivered(payment_id)
        return True

    def top_up_in_flight(self, payment_id: str) -> bool:
        """Whether top-up ``payment_id`` is still on its way to the server (a voucher waits for it)."""
        return self.channels.top_up_in_flight(payment_id)

    def voucher_channel(self, call: Call) -> Wanted | None:
        """The channel ``call``'s session asks a voucher on (pure): calls with the
        same one may be signed together (``vouchers``)."""
        offer = self._session_offer(call)
        if offer is None:
            return None
        req = offer.terms.request
        return Wanted(call.caller.tenant_id, call.req.wallet_id, offer.network, req.escrow, req.recipient,
                      req.currency, req.operator, None if req.channel_id is None else "0x" + req.channel_id.hex())

    def vouchers(self, calls: Sequence[Call]) -> list[SignResult | TellerError | None]:
        """``voucher`` for calls that share one ``voucher_channel``, in one
        transaction under one lock of the channel (``Channels.sign_next_many``):
        under load the transaction's cost is shared by every voucher in it."""
        want = self.voucher_channel(calls[0])
        actor = calls[0].caller.actor
        if want is None or any(self.voucher_channel(c) != want or c.caller.actor != actor for c in calls[1:]):
            # One transaction, one audit event: one channel and one actor.
            raise TellerError("vouchers of different channels or actors cannot be signed together")
        offers = [self._session_offer(c) for c in calls]
        asks = []
        denials: dict[int, str] = {}  # id of a policy's refusal -> its reason
        for call, offer in zip(calls, offers, strict=True):
            assert offer is not None
            asks.append(Ask(offer.terms.request.amount, call.req.max_amount, call.req.idempotency_key,
                            self._voucher_check(call, offer, denials),
                            (call.caller.token_id, call.secret, call.req.url, offer.amount)))
        answers = self.channels.sign_next_many(want, asks, actor=actor)
        refused = [(call.caller, call.req, offer, offer.amount, denials[id(a)], a)
                   for call, offer, a in zip(calls, offers, answers, strict=True)
                   if isinstance(a, TellerError) and id(a) in denials and offer is not None]
        if refused:
            self._audit_voucher_denials(refused)
        out: list[SignResult | TellerError | None] = []
        for call, offer, signed in zip(calls, offers, answers, strict=True):
            if isinstance(signed, TopUpWanted):
                # The channel has less than the unit left: the batch tops it up (``call.top_up``).
                assert offer is not None
                call.top_up = top_up_offer(offer, signed.channel, signed.channel_id, signed.descriptor,
                                           signed.escrow, signed.deposit, signed.cumulative, signed.opened_with)
                out.append(None)
                continue
            if signed is None or isinstance(signed, TellerError):
                out.append(signed)
                continue
            assert offer is not None
            session: Session = offer.terms
            value = voucher_credential(session, signed.descriptor, signed.channel_id, signed.cumulative,
                                       signed.signature, signed.payer)
            out.append(SignResult(header_name=session.challenge.header, header_value=value, payment_id="",
                                  protocol=TEMPO_SESSION.protocol, version=1, scheme=TEMPO_SESSION.id,
                                  network=offer.network, asset=offer.asset, amount=signed.increment,
                                  pay_to=offer.pay_to, headers=idempotency.retry_headers(
                                      TEMPO_SESSION.protocol, call.caller.tenant_id, call.req.idempotency_key)))
        return out

    # -- MPP sessions: a metered stream's vouchers (Pay) -----------------------------------------------------

    def session_offer(self, req: SignInput) -> Offer | None:
        """The session offer of the challenge ``req`` answers, read as Sign reads it
        (pure: no I/O), when a session is what the call would pay; kept by Pay for
        the vouchers the paid stream asks for."""
        collected = offers_mod.collect(req.headers, req.body, networks=self.networks,
                                       max_bytes=self.max_challenge_bytes,
                                       now=datetime.fromtimestamp(self.clock(), UTC))
        chosen = offers_mod.by_preference(self._trusted_escrows(collected).offers, req.protocols or PROTOCOLS)
        return chosen[0] if chosen and chosen[0].scheme is TEMPO_SESSION else None

    def stream_voucher(self, caller: Caller, offer: Offer, req: SignInput, channel_id: str, total: int,
                       stream_cap: int | None, stream_paid: int) -> tuple[str, str, int] | Call:
        """A voucher for ``total`` on ``channel_id`` (a metered stream's in-band
        request), as the header (name, value) that carries it, and what it adds to
        the channel's total. Signed under the channel's lock; the increment is
        judged as a voucher's is (the policy as it stands, ``per_payment_max``, the
        caller's ``max_amount``) and against ``stream_cap``, the caller's
        ``max_stream_amount``, of which the call's stream vouchers used ``stream_paid``;
        the caller's token must still stand (a stream outlives the moment Pay
        authenticated it, and a revoked token pays nothing more). A total past the
        deposit that all of these allow is not signed: the answer is the Sign call
        that tops the channel up for it (``call.top_up``), which the caller puts
        through the Sign batch as a Sign top-up is, then asks again."""
        session: Session = offer.terms
        sreq = session.request
        want = Wanted(caller.tenant_id, req.wallet_id, offer.network, sreq.escrow, sreq.recipient, sreq.currency,
                      sreq.operator, channel_id)

        def check(s: Session_, increment: int) -> None:
            revoked = s.execute(select(ApiToken.revoked_ms).where(
                ApiToken.id == caller.token_id, ApiToken.tenant_id == caller.tenant_id)).one_or_none()
            if revoked is None or revoked[0] is not None:
                raise Unauthenticated("token revoked")
            if stream_cap is not None and stream_paid + increment > stream_cap:
                raise LimitExceeded(
                    f"the stream's next voucher would add {increment} to the {stream_paid} its vouchers added in "
                    f"this call, past max_stream_amount {stream_cap}: the stream ends here, with everything paid "
                    "for so far delivered", reason="stream_cap",
                    metadata={"limit": str(stream_cap), "remaining": str(stream_cap - stream_paid),
                              "amount": str(increment)})
            asked.append(increment)
            _check_policies(s, caller.tenant_id, req.wallet_id,
                            Charge(offer.network, offer.asset, increment, offer.pay_to, req.url), denials)

        denials: dict[int, str] = {}
        asked: list[int] = []
        try:
            signed = self.channels.sign_to(want, total, max_increment=req.max_amount, actor=caller.actor,
                                           check=check)
        except TellerError as exc:
            if id(exc) in denials:
                self._audit_voucher_denials([(caller, req, offer, asked[-1], denials[id(exc)], exc)])
            raise
        if isinstance(signed, TopUpWanted):
            return self._stream_top_up(caller, offer, req, signed)
        value = voucher_credential(session, signed.descriptor, signed.channel_id, signed.cumulative,
                                   signed.signature, signed.payer)
        return session.challenge.header, value, signed.increment

    def _stream_top_up(self, caller: Caller, offer: Offer, req: SignInput, wanted: TopUpWanted) -> Call:
        """The Sign call that tops up a metered stream's channel for the total it
        asked: the stream's offer as Pay kept it (its challenge may have been read
        minutes ago), without the call's idempotency key (that key names the open or
        voucher that paid the request, and a top-up under it would replay that). A
        challenge that expired during the stream is the server's doing, not the
        caller's argument: ``stream_challenge_expired``, nothing signed."""
        try:
            mpp_charge.valid_before(offer.terms.challenge, int(self.clock()))
        except InvalidArgument as exc:
            raise FailedPrecondition(f"the stream's channel needs a top-up, which is signed in the challenge that "
                                     f"paid the stream's request: {exc.message}", reason="stream_challenge_expired",
                                     metadata={"expires": offer.terms.challenge.expires or ""}) from None
        req = dataclasses.replace(req, idempotency_key=None)
        collected = offers_mod.Collected((offer,), None, (offer.terms.challenge,))
        known = self._wallet_info(caller.tenant_id, req.wallet_id)
        prepared = self.proofs.chain_facts(collected.offers, payer=known[0] if known else None)
        call = Call(caller, req, None, collected, _request_hash(req, collected), prepared, None)
        call.top_up = top_up_offer(offer, wanted.channel, wanted.channel_id, wanted.descriptor, wanted.escrow,
                                   wanted.deposit, wanted.cumulative, wanted.opened_with, wanted.total)
        return call

    def open_facts(self, call: Call) -> None:
        """What opening a channel for ``call``'s session needs from the chain (its
        gas), read when no open channel could answer it with a voucher; or, when
        ``voucher`` asked for a top-up, what the top-up needs."""
        offer = self._session_offer(call)
        known = self._wallet_info(call.caller.tenant_id, call.req.wallet_id)
        if call.top_up is not None and known is not None:
            TEMPO_SESSION.top_up_facts(call.top_up, call.prepared, self.chain, payer=known[0], clock=self.clock)
        elif offer is not None and known is not None:
            TEMPO_SESSION.open_facts(offer, call.prepared, self.chain, payer=known[0], clock=self.clock)

    def _audit_voucher_denials(self, refused: Sequence[tuple[Caller, SignInput, Offer, int, str, TellerError]],
                               ) -> None:
        """Vouchers the policy refused (caller, request, offer, increment, reason,
        error), each audited as the batch audits a payment it refuses
        (``payment.deny``). In a transaction of their own, after the vouchers'
        (the channel's lock is taken before the audit chain's, never after): a
        refusal changes nothing to write it with. An audit that cannot be written
        is logged, and the callers keep their answers: vouchers signed beside a
        refusal are signed already, and must not be answered with an error."""
        now_ms = ms(self.clock)
        try:
            with self.db.transaction() as s:
                for caller, req, offer, amount, reason, error in refused:
                    audit.record(s, at_ms=now_ms, actor=caller.actor, action="payment.deny", outcome="denied",
                                 reason=reason, tenant_id=caller.tenant_id, wallet_id=req.wallet_id,
                                 amount=amount, asset=offer.asset, network=offer.network, payee=offer.pay_to,
                                 resource_url=req.url,
                                 details={"protocol": offer.scheme.protocol, "scheme": offer.scheme.id,
                                          "voucher": True, **error.metadata})
        except Exception:  # logged: the refusals themselves still reach their callers
            log.exception("could not audit %d voucher refusals by policy", len(refused))
            return
        for *_, reason, _ in refused:
            observe.child(observe.DENIALS, reason).inc()

    @staticmethod
    def top_up_gave_out(call: Call) -> LimitExceeded:
        """Topped up, yet other callers took the room each time before this one's voucher."""
        return LimitExceeded(f"the session channel for {call.req.url[:200]} was topped up {TOP_UP_ROUNDS} times "
                             "and other calls used the room each time: retry", reason="channel_deposit_exhausted")

    @staticmethod
    def _voucher_check(call: Call, offer: Offer, denials: dict[int, str]) -> Callable[[Session_], None]:
        """What the voucher's transaction checks first, as the batch does for a
        payment: the caller's token, and the tenant's and wallet's policies as
        they stand now (a payee denied since the channel opened gets no more;
        ``per_payment_max`` judges each voucher's increment). The budgets are not
        asked: the deposit the voucher spends is already held. A policy's refusal
        is put in ``denials`` (the caller audits it) before it is raised."""
        caller, secret = call.caller, call.secret
        charge = Charge(offer.network, offer.asset, offer.amount, offer.pay_to, call.req.url)

        def check(s: Session_) -> None:
            if secret is not None:
                row = s.execute(select(ApiToken.secret_hash, ApiToken.revoked_ms).where(
                    ApiToken.id == caller.token_id, ApiToken.tenant_id == caller.tenant_id)).one_or_none()
                check_secret(None if row is None else row[0], None if row is None else row[1], secret)
            _check_policies(s, caller.tenant_id, call.req.wallet_id, charge, denials)
        return check

    def _trusted_escrows(self, collected: offers_mod.Collected) -> offers_mod.Collected:
        """Session offers whose escrow Teller does not trust are dropped (the
        escrow would hold the deposit); when nothing else is left, the caller is
        told which escrow and how to trust it."""
        untrusted = [o for o in collected.offers if o.scheme is TEMPO_SESSION
                     and o.terms.request.escrow.lower() not in (ESCROW_PRECOMPILE.lower(),
                                                                self.session_escrows.get(o.network))]
        if not untrusted:
            return collected
        kept = tuple(o for o in collected.offers if all(o is not u for u in untrusted))
        if not kept:
            first = untrusted[0]
            raise FailedPrecondition(f"the session's escrow {first.terms.request.escrow} on {first.network} is not "
                                     "one Teller trusts with a deposit (Tempo's precompile, or session_escrows)",
                                     reason="escrow_untrusted")
        return dataclasses.replace(collected, offers=kept)

    def prepare(self, caller: Caller, req: SignInput, token_secret: str | None = None, *,
                cached_only: bool = False) -> Call:
        """Everything that needs no lock: validate and parse the challenge, read the
        chain facts its offers need, and sign the offer the tenant most likely pays.
        Nothing leaves unless ``commit`` reserves it. With ``cached_only`` it raises
        ``NotCached`` rather than block on the database or a chain (so an event
        loop can run it and hand only a cold call to a thread)."""
        if req.status != 402:
            raise InvalidArgument(f"challenge.status must be 402, got {req.status}")
        if not req.wallet_id:
            raise InvalidArgument("wallet_id is required")
        collected = offers_mod.collect(req.headers, req.body, networks=self.networks,
                                       max_bytes=self.max_challenge_bytes,
                                       now=datetime.fromtimestamp(self.clock(), UTC))
        collected = self._trusted_escrows(collected)
        known = self._wallet_info(caller.tenant_id, req.wallet_id, cached_only)
        prepared = self.proofs.chain_facts(collected.offers, cached_only, payer=known[0] if known else None)
        presigned = self.proofs.presign(caller.tenant_id, req, collected, prepared, *known) if known else None
        short = self._shortfalls(req.wallet_id, known[0], collected, cached_only) if known else {}
        return Call(caller, req, token_secret, collected, _request_hash(req, collected), prepared, presigned, short)

    def _shortfalls(self, wallet_id: str, address: str, collected: offers_mod.Collected,
                    cached_only: bool) -> dict[int, FailedPrecondition]:
        """The offers this wallet cannot cover, where the chain can tell (see ``balances``)."""
        out: dict[int, FailedPrecondition] = {}
        for o in collected.offers:
            if self.balances.checks(o.network, o.scheme.id, o.moves):
                refusal = self.balances.shortfall(wallet_id=wallet_id, address=address, network=o.network,
                                                  asset=o.asset, amount=o.moves, cached_only=cached_only)
                if refusal is not None:
                    out[id(o)] = refusal
        return out

    def commit(self, calls: Sequence[Call]) -> list[Verdict]:
        """Check, reserve and audit ``calls`` in one transaction (group commit: the
        transaction, the tenant locks and the writes are shared; each call is
        decided in order against the sums the calls before it left). One verdict
        per call: its result, its own error, or a push payment to finish. A
        transaction that fails is handled as ``_transactions`` says."""
        rule = _transactions(calls)
        batch = next(rule)
        while True:
            try:
                got: list[Verdict] | Exception = self._commit(batch)
            except Exception as exc:  # noqa: BLE001 - the rule's to judge, then the caller(s)' verdict
                got = exc
            try:
                batch = rule.send(got)
            except StopIteration as done:
                return cast("list[Verdict]", done.value)

    async def commit_async(self, calls: Sequence[Call], aio: AsyncPgBatchIO | None,
                           in_thread: Callable[[Callable[[Sequence[Call]], list[Verdict]], Sequence[Call]],
                                               Awaitable[list[Verdict]]]) -> list[Verdict]:
        """``commit`` on the event loop: on PostgreSQL the batch's statements go
        through an async psycopg connection, so a worker needs no thread (and no
        hand-over of the interpreter lock) per batch. Elsewhere ``in_thread(commit)``."""
        if aio is None:
            return await in_thread(self.commit, calls)
        rule = _transactions(calls)
        batch = next(rule)
        while True:
            got: list[Verdict] | Exception
            try:
                out = await aio.run(self.planner.plan(batch))
            except Exception as exc:  # noqa: BLE001 - the rule's to judge, then the caller(s)' verdict
                got = exc
            else:
                self._observe(batch, out)
                got = out
            try:
                batch = rule.send(got)
            except StopIteration as done:
                return cast("list[Verdict]", done.value)

    def finish(self, verdict: Verdict) -> SignResult:
        """The caller's answer for one verdict of ``commit`` (push payments are
        broadcast here, after their reservation committed)."""
        if isinstance(verdict, BaseException):
            raise verdict
        if isinstance(verdict, PushPending):
            return self._push(verdict.caller, verdict.payment, verdict.raw, verdict.offer)
        return verdict

    def _commit(self, calls: Sequence[Call]) -> list[Verdict]:
        with self.db.transaction() as s:
            out = batch_io.drive(self.planner.plan(calls), SqlBatchIO(s))
        self._observe(calls, out)
        return out

    def _observe(self, calls: Sequence[Call], out: Sequence[Verdict]) -> None:
        for call, o in zip(calls, out, strict=True):
            if isinstance(o, SignResult | PushPending):
                # Counted against the wallet's balance until its next read (a replay counts too: conservative).
                row = o.payment if isinstance(o, PushPending) else o
                if self.balances.checks(row.network, row.scheme, row.amount):
                    self.balances.signed(call.req.wallet_id, row.network, row.asset, row.amount)
        for o in out:
            # Policy denials (each audited as payment.deny); a disabled tenant is not one.
            if isinstance(o, PermissionDenied | LimitExceeded) and o.reason and o.reason != "tenant_disabled":
                observe.child(observe.DENIALS, o.reason).inc()
        observe.SIGN_BATCH.observe(len(calls))


    def _wallet_info(self, tenant_id: str, wallet_id: str, cached_only: bool = False) -> tuple[str, SealedKey] | None:
        """A wallet's address and sealed key, remembered briefly: they never change
        except by re-wrapping, and the locked path re-reads the row anyway."""
        now = time.monotonic()
        hit = self._wallets.get(wallet_id)
        if hit is not None and hit[0] > now and hit[1] == tenant_id:
            return hit[2], hit[3]
        if cached_only:
            raise NotCached(f"wallet {wallet_id}")
        with self.db.read() as s:
            w = s.get(Wallet, wallet_id)
            if w is None or w.tenant_id != tenant_id:
                return None
            info = (w.address, SealedKey(w.kek_version, w.wrapped_data_key, w.key_ciphertext))
        self._wallets[wallet_id] = (now + 30.0, tenant_id, *info)
        return info

    # -- push mode, after the reservation committed -------------------------

    def _push(self, caller: Caller, payment: signing.NewPayment, raw: bytes, offer: Offer) -> SignResult:
        from teller import lifecycle

        failure: str | None = None
        mined = None
        try:
            mined = self.chain.broadcast(payment.network, raw)
        except Unavailable as exc:
            failure = str(exc)
        with self.db.transaction() as s:
            row = s.get(Payment, payment.id)
            assert row is not None
            now = ms(self.clock)
            if mined is not None and mined.succeeded:
                wallet = s.get(Wallet, row.wallet_id)
                assert wallet is not None
                row.header_value = offer.scheme.pushed(offer, mined.tx_hash, wallet.address)
                change = lifecycle.mined_change(mined)
                lifecycle.advance(s, row, change, from_states=lifecycle.LIVE, now_ms=now, actor=caller.actor)
                fee = change.fee
                audit.record(s, at_ms=now, actor=caller.actor, action="payment.gas", tenant_id=row.tenant_id,
                             wallet_id=row.wallet_id, payment_id=row.id, network=row.network, asset=row.asset,
                             amount=fee, details={"tx_hash": mined.tx_hash, "gas_used": mined.gas_used,
                                                  "gas_price": mined.gas_price, "unit": "fee token base units"})
                s.flush()
                s.refresh(row)
                return sign_result(row)
            if mined is not None:
                # Mined and reverted: its expiring nonce is spent, so it can never move money.
                failure = "transaction reverted"
                lifecycle.advance(s, row, lifecycle.mined_change(mined), from_states=lifecycle.LIVE, now_ms=now,
                                  actor=caller.actor)
            else:
                # Unknown fate: reserved until the reconciler sees it mined or expired.
                lifecycle.advance(s, row, lifecycle.Change(PaymentState.FAILED, release=False, reason=(failure or "")[:200]),
                                  from_states=lifecycle.LIVE, now_ms=now, actor=caller.actor)
        raise FailedPrecondition(f"push payment {payment.id} failed on {payment.network}: {failure}",
                                 reason="payment_failed")


def _transactions(calls: Sequence[Call]) -> Generator[Sequence[Call], list[Verdict] | Exception, list[Verdict]]:
    """The one retry rule of ``commit`` and ``commit_async``: it yields the calls
    of each transaction to run and is sent their verdicts, or the exception that
    failed the transaction (nothing of which was committed). The whole batch
    first; if it fails, its calls one per transaction, so one call cannot fail
    the others. A database that is down fails them all closed."""
    got = yield calls
    if not isinstance(got, Exception):
        return got
    if isinstance(got, Unavailable) and not isinstance(got, batch_io.Contended):
        return [got] * len(calls)
    if len(calls) == 1:
        return [_out_of_range(got) or got]
    log.warning("a batch of %d Sign calls failed (%s); retrying them one by one", len(calls), got)
    out: list[Verdict] = []
    for call in calls:
        got = yield (call,)
        out.append(got[0] if not isinstance(got, Exception) else _out_of_range(got) or got)
    return out


def _out_of_range(exc: BaseException) -> TellerError | None:
    """A sum the database cannot hold (a minute's spend bucket is a 64-bit
    integer): the call is refused by name rather than failed as INTERNAL.
    Nothing of it was written."""
    cause = getattr(exc, "orig", exc)  # SQLAlchemy wraps the driver's error
    # SQLite: migration 0006's trigger refuses a bucket that would turn into a float.
    if isinstance(cause, psycopg.errors.NumericValueOutOfRange) or (
            isinstance(cause, sqlite3.IntegrityError) and str(cause).startswith("amount_out_of_range")):
        return FailedPrecondition(
            f"this payment would take a minute's spend of its tenant or wallet past {2**63 - 1} units, "
            "the most Teller accounts", reason="amount_out_of_range")
    return None


__all__ = ["OPENING_PAUSE_S", "TOP_UP_ROUNDS", "Payments", "channel_opening"]
