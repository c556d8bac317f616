"""What happens to a payment after its proof leaves Teller.

    signed --(used on chain)----------------------> settled   (spent; tx hash kept)
    signed --(server refused it)------------------> failed    (still reserved)
    signed|failed --(validBefore passed, unused)--> expired / failed+released
    signed|failed --(cancelAuthorization mined)---> voided    (released)
    failed --(used on chain after all)------------> settled

Budgets count every payment whose ``released_ms`` is NULL. Only the chain can
release one: a server's refusal says nothing about whether someone holding the
signed authorization will submit it before ``validBefore``.

A payment whose proof Teller sent (``Pay``) but whose answer never arrived
stays ``signed`` (the server may hold and use the proof; the reconciler
follows it on chain) with a ``state_reason`` saying what happened:

    answer_lost: <what>       the proof was sent; the answer timed out, broke
                              off, was too large or could not be decoded
    redirect_refused: <what>  the server answered the paid request with a
                              redirect to a destination Teller refuses
    not_sent: <what>          signed, but the call's deadline passed before the
                              proof left (nobody holds it; it expires unused)
    receipt_unreadable: <what> the server answered, but its receipt was malformed
                              (its word is not recorded; the chain decides)

A server's refusal reason is kept whatever the payment's state.

Every change is a guarded ``UPDATE ... WHERE state IN (...) AND released_ms IS
NULL`` with its audit row in the same transaction, so two workers observing
the same event change the payment once and release its amount once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from teller import evm_tx, refusal
from teller.audit import events as audit
from teller.chain import AuthorizationEvent, ChainReader, Mined
from teller.channels.store import Channels
from teller.clock import Clock, ms, system_clock
from teller.db import Database
from teller.db.models import PaidResponse, Payment, Wallet
from teller.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from teller.mpp import gas as tempo_gas
from teller.schemes import REGISTRY, Follow, SchemeId
from teller.spend.decision import DenialReason
from teller.spend.store import move_buckets
from teller.states import PaymentState
from teller.vault import SealedKey, Vault
from teller.x402 import eip3009

log = logging.getLogger("teller.lifecycle")

#: States whose authorization may still move money on chain.
LIVE = (PaymentState.SIGNED, PaymentState.FAILED)
#: Payments made of an EIP-3009 authorization (nonce = the authorization nonce).
EIP3009_SCHEMES = REGISTRY.following(Follow.AUTHORIZATION)
#: Payments made of a signed transaction (nonce = the transaction hash).
TRANSACTION_SCHEMES = REGISTRY.following(Follow.TRANSACTION)
STATES = tuple(PaymentState)
#: Why a payment Pay sent the proof of is still ``signed`` (see the module docstring).
ANSWER_LOST, REDIRECT_REFUSED, NOT_SENT = "answer_lost", "redirect_refused", "not_sent"
RECEIPT_UNREADABLE = "receipt_unreadable"


@dataclass(frozen=True, slots=True)
class Change:
    to: str
    release: bool
    reason: str = ""
    tx_hash: str = ""
    #: What the mined transaction cost the wallet in fees (fee-token base units),
    #: when Teller's wallet sent it (Tempo): the reservation is trued up to it.
    fee: int | None = None


def mined_change(mined: Mined) -> Change:
    """A mined Tempo payment: settled, or reverted (its expiring nonce is spent, so it
    can never move money), with the fee it cost either way."""
    fee = tempo_gas.fee(mined.gas_used, mined.gas_price)
    if mined.succeeded:
        return Change(PaymentState.SETTLED, release=False, tx_hash=mined.tx_hash, fee=fee)
    return Change(PaymentState.FAILED, release=True, reason="transaction reverted", tx_hash=mined.tx_hash, fee=fee)


def _trued_up(p: Payment, fee: int) -> tuple[int, int]:
    """(amount_common, fee_common) once the real fee is known: the reserved fee's
    share of amount_common becomes the real fee's, in the same common unit (the
    ratio fee_common / fee_max is that unit's scale; rounded up)."""
    if p.fee_max <= 0:
        return p.amount_common, p.fee_common
    real = min(-(-fee * p.fee_common // p.fee_max), p.fee_common)
    return p.amount_common - p.fee_common + real, real


def advance(s: Session, p: Payment, change: Change, *, from_states: tuple[str, ...], now_ms: int, actor: str,
            details: dict[str, object] | None = None) -> bool:
    """Apply ``change`` if the payment is still unreleased in one of ``from_states``.
    Returns False (and writes nothing) when another worker got there first."""
    values: dict[str, object] = {"state": change.to, "updated_ms": now_ms}
    if change.reason:
        values["state_reason"] = change.reason[:200]
    if change.tx_hash:
        values["tx_hash"] = change.tx_hash
    if change.release:
        values["released_ms"] = now_ms
    amount_common = p.amount_common
    if change.fee is not None:
        values["fee_paid"] = change.fee
        if change.to == PaymentState.SETTLED and p.state != PaymentState.SETTLED:
            amount_common, values["fee_common"] = _trued_up(p, change.fee)
            values["amount_common"] = amount_common
    result = s.execute(
        update(Payment)
        .where(Payment.id == p.id, Payment.state.in_(from_states), Payment.released_ms.is_(None))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    if p.scheme == SchemeId.TEMPO_SESSION and change.to == PaymentState.SETTLED:
        # A top-up mined: the server reads the chain, so it knows the deposit it added.
        Channels.mark_delivered(s, p.id, now_ms)
    if p.scheme == SchemeId.TEMPO_SESSION and change.to != PaymentState.SETTLED:
        # The open transaction will never be mined: no channel exists to sign vouchers on.
        # Its row is locked before the audit chain head, as a voucher locks them.
        Channels.open_failed(s, p.id, now_ms)
        if change.release:
            # A top-up never mined: the deposit it raised goes back down with its reservation.
            lowered = Channels.top_up_failed(s, p.id, now_ms)
            if lowered is not None:
                details = {**(details or {}), "top_up": True, "channel_deposit": lowered}
    action = f"payment.{change.to}" if not (change.to == PaymentState.FAILED and change.release) else "payment.released"
    # The audit chain head is locked before the spend buckets, as in Sign: one lock order.
    audit.record(
        s, at_ms=now_ms, actor=actor, action=action, tenant_id=p.tenant_id, reason=change.reason[:100],
        wallet_id=p.wallet_id, payment_id=p.id, amount=p.amount, asset=p.asset, network=p.network,
        payee=p.pay_to, resource_url=p.resource_url,
        details={"from": p.state, "to": change.to, "tx_hash": change.tx_hash, "released": change.release,
                 **({"fee_paid": change.fee, "fee_reserved": p.fee_max} if change.fee is not None else {}),
                 **(details or {})},
    )
    # Released, it holds nothing; settled, it is spent at what its fee was (it was
    # reserved at the most the fee could be); otherwise it holds what it held.
    move_buckets(s, p, None if change.release else change.to, amount_common)
    return True


def from_event(event: AuthorizationEvent) -> Change:
    if event.kind == "used":
        return Change(PaymentState.SETTLED, release=False, tx_hash=event.tx_hash)
    return Change(PaymentState.VOIDED, release=True, reason="canceled_on_chain", tx_hash=event.tx_hash)


def expiry(p: Payment) -> Change:
    # A failed payment keeps its state (the server's reason stays readable);
    # it only stops holding budget.
    if p.state == PaymentState.FAILED:
        return Change(PaymentState.FAILED, release=True, reason=p.state_reason)
    return Change(PaymentState.EXPIRED, release=True, reason="valid_before_passed")


def apply_event(s: Session, p: Payment, event: AuthorizationEvent, now_ms: int, actor: str) -> bool:
    return advance(s, p, from_event(event), from_states=LIVE, now_ms=now_ms, actor=actor,
                   details={"block": event.block})


def payment_for(s: Session, payment_id: str, tenant_id: str | None) -> tuple[Payment, Wallet]:
    row = s.execute(
        select(Payment, Wallet).join(Wallet, Wallet.id == Payment.wallet_id).where(Payment.id == payment_id)
    ).first()
    # Another tenant's payment is reported exactly like a missing one.
    if row is None or (tenant_id is not None and row[0].tenant_id != tenant_id):
        raise NotFound(f"payment {payment_id!r} not found")
    return row[0], row[1]


class Lifecycle:
    """Outcome reports and operator voids: the request-driven transitions.
    The chain-driven ones run in ``teller.reconciler``."""

    def __init__(self, db: Database, chain: ChainReader, vault: Vault, clock: Clock = system_clock,
                 max_void_fee_wei: int | None = None) -> None:
        self.db = db
        #: The most native gas a void may cost (Settings.max_void_fee_wei).
        self.max_void_fee_wei = max_void_fee_wei
        self.chain = chain
        self.vault = vault
        self.clock = clock

    def now_ms(self) -> int:
        return ms(self.clock)

    def get(self, payment_id: str, tenant_id: str | None) -> Payment:
        with self.db.transaction() as s:
            p, _ = payment_for(s, payment_id, tenant_id)
            s.expunge(p)
            return p

    def list(self, tenant_id: str, state: str = "", page_size: int = 100,
             page_token: str = "") -> tuple[list[Payment], str]:
        """Newest first; ``page_token`` is the cursor from the previous page."""
        if not tenant_id:
            raise InvalidArgument("tenant_id is required")
        if state and state not in STATES:
            raise InvalidArgument(f"state must be one of {', '.join(STATES)}, got {state[:40]!r}")
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        size = min(page_size or 100, 1000)
        q = select(Payment).where(Payment.tenant_id == tenant_id)
        if state:
            q = q.where(Payment.state == state)
        if page_token:
            created_text, _, pid = page_token.partition(":")
            if not pid:
                raise InvalidArgument("page_token is not a token this server issued")
            created = audit.page_cursor(created_text, "page_token")
            q = q.where(or_(Payment.created_ms < created,
                            and_(Payment.created_ms == created, Payment.id < pid)))
        with self.db.transaction() as s:
            rows = list(s.scalars(q.order_by(Payment.created_ms.desc(), Payment.id.desc()).limit(size + 1)))
            for r in rows:
                s.expunge(r)
        more = len(rows) > size
        rows = rows[:size]
        return rows, (f"{rows[-1].created_ms}:{rows[-1].id}" if more and rows else "")

    def record_outcome(self, payment_id: str, tenant_id: str | None, status: int,
                       headers: Sequence[tuple[str, str]], body: bytes, actor: str,
                       max_bytes: int = 256 * 1024) -> Payment:
        """Record what the resource server answered to the paid retry."""
        with self.db.transaction() as s:
            p, wallet = payment_for(s, payment_id, tenant_id)
            network, asset, nonce, address = p.network, p.asset, p.nonce, wallet.address
        scheme = REGISTRY[p.scheme]
        outcome = scheme.decode_receipt(status, headers, body, max_bytes)
        # A 402 or 403 to a paid request is a refusal whatever the protocol; its
        # reason is wherever this server put it (refusal.reason), else the decoder's.
        refused = outcome.kind == "refused" or (outcome.kind == "unknown" and status in (402, 403))
        said = ""
        if refused:
            generic = outcome.reason in ("", "payment_refused", "settlement_failed") or outcome.kind == "unknown"
            said = (refusal.reason(headers, body) if generic else "") or (
                outcome.reason if outcome.kind == "refused" else "") or "payment_refused"
        confirmed: AuthorizationEvent | None = None
        tempo_mined: Mined | None = None
        if outcome.kind == "settled" and outcome.tx_hash and network in self.chain.networks:
            # The server's word is checked against the chain before it is recorded as settled.
            try:
                if scheme.follow is Follow.TRANSACTION:
                    mined = self.chain.mined(network, outcome.tx_hash)
                    if mined is not None and mined.succeeded and mined.tx_hash == nonce.lower():
                        confirmed = AuthorizationEvent("used", asset, address, nonce, mined.tx_hash, mined.block)
                        tempo_mined = mined
                else:
                    for event in self.chain.events_in_transaction(network, outcome.tx_hash):
                        if (event.asset.lower(), event.authorizer.lower(), event.nonce) == (
                                asset.lower(), address.lower(), nonce.lower()):
                            confirmed = event
            except Unavailable as exc:
                log.warning("could not confirm settlement of %s now (%s); the reconciler will", payment_id, exc)
        with self.db.transaction() as s:
            p, _ = payment_for(s, payment_id, tenant_id)
            now = self.now_ms()
            audit.record(
                s, at_ms=now, actor=actor, action="payment.outcome",
                outcome="error" if refused else "ok", tenant_id=p.tenant_id,
                reason=(said or outcome.reason)[:100], wallet_id=p.wallet_id, payment_id=p.id, amount=p.amount,
                asset=p.asset, network=p.network, payee=p.pay_to, resource_url=p.resource_url,
                details={"reported": outcome.kind, "tx_hash": outcome.tx_hash, "state": p.state},
            )
            if tempo_mined is not None:
                advance(s, p, mined_change(tempo_mined), from_states=LIVE, now_ms=now, actor=actor,
                        details={"block": tempo_mined.block})
            elif confirmed is not None:
                apply_event(s, p, confirmed, now, actor)
            elif refused:
                # Still reserved: the authorization stays usable until validBefore.
                if not advance(s, p, Change(PaymentState.FAILED, release=False, reason=said), from_states=(PaymentState.SIGNED,),
                               now_ms=now, actor=actor) and said != p.state_reason:
                    # Whatever the state, the server's latest word is kept.
                    s.execute(update(Payment).where(Payment.id == p.id).values(state_reason=said[:200])
                              .execution_options(synchronize_session=False))
            s.flush()
            s.refresh(p)
            s.expunge(p)
            return p

    def note_unanswered(self, payment_id: str, tenant_id: str, why: str, detail: str, actor: str) -> None:
        """Say why a payment Pay sent the proof of is still ``signed`` (``ANSWER_LOST``,
        ``REDIRECT_REFUSED``, ``NOT_SENT`` or ``RECEIPT_UNREADABLE``). Only a payment still signed is changed:
        anything the server or the chain said already is better than this."""
        reason = f"{why}: {detail}"[:200]
        with self.db.transaction() as s:
            p, _ = payment_for(s, payment_id, tenant_id)
            result = s.execute(update(Payment).where(Payment.id == p.id, Payment.state == PaymentState.SIGNED)
                               .values(state_reason=reason, updated_ms=self.now_ms())
                               .execution_options(synchronize_session=False))
            if result.rowcount == 1:  # type: ignore[attr-defined]
                audit.record(s, at_ms=self.now_ms(), actor=actor, action="payment.unanswered", outcome="error",
                             tenant_id=p.tenant_id, reason=why, wallet_id=p.wallet_id, payment_id=p.id,
                             amount=p.amount, asset=p.asset, network=p.network, payee=p.pay_to,
                             resource_url=p.resource_url, details={"detail": detail[:200]})

    def by_idempotency_key(self, tenant_id: str, key: str) -> Payment | None:
        """The tenant's payment claimed with ``key``, while the key is still in force."""
        with self.db.read() as s:
            p = s.execute(select(Payment).where(Payment.tenant_id == tenant_id, Payment.idempotency_key == key)
                          ).scalar_one_or_none()
            if p is None or (p.idempotency_expires_ms is not None and p.idempotency_expires_ms <= self.now_ms()):
                return None
            s.expunge(p)
            return p

    def keep_response(self, payment_id: str, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        with self.db.transaction() as s:
            if s.get(PaidResponse, payment_id) is None:
                s.add(PaidResponse(payment_id=payment_id, status=status, body=body, created_ms=self.now_ms(),
                                   headers_json=json.dumps([list(h) for h in headers])))

    def kept_response(self, payment_id: str) -> tuple[int, Sequence[tuple[str, str]], bytes] | None:
        with self.db.read() as s:
            kept = s.get(PaidResponse, payment_id)
            if kept is None:
                return None
            return kept.status, [(str(k), str(v)) for k, v in json.loads(kept.headers_json)], bytes(kept.body)

    def void(self, payment_id: str, actor: str, reason: str = "") -> Payment:
        """Cancel an unused authorization on chain (``cancelAuthorization``, gas
        paid by the wallet) and release its budget."""
        with self.db.transaction() as s:
            p, wallet = payment_for(s, payment_id, None)
            if p.state not in LIVE or p.released_ms is not None:
                raise FailedPrecondition(f"payment {payment_id} is {p.state}: only an unused authorization "
                                         "can be voided")
            if p.scheme not in EIP3009_SCHEMES or not p.asset_name:
                raise FailedPrecondition(f"payment {payment_id} has no EIP-3009 token domain recorded; "
                                         "it cannot be canceled on chain")
            if p.network not in self.chain.networks:
                raise FailedPrecondition(f"no RPC endpoint configured for network {p.network!r}: "
                                         "cannot void on chain (set rpc_urls)")
            audit.record(s, at_ms=self.now_ms(), actor=actor, action="payment.void_requested",
                         tenant_id=p.tenant_id, reason=reason[:100], wallet_id=p.wallet_id, payment_id=p.id,
                         amount=p.amount, asset=p.asset, network=p.network, payee=p.pay_to)
            s.expunge(p)
            s.expunge(wallet)
        chain_id = int(p.network.split(":", 1)[1])
        token = eip3009.Token(chain_id, p.asset, p.asset_name, p.asset_version)
        signer = self.vault.signer(p.tenant_id, wallet.id, wallet.address,
                                   SealedKey(wallet.kek_version, wallet.wrapped_data_key, wallet.key_ciphertext))
        nonce = bytes.fromhex(p.nonce.removeprefix("0x"))
        signature = signer.sign_typed_data(eip3009.cancel_typed_data(token, wallet.address, nonce))
        if self.chain.native_balance(p.network, wallet.address) == 0:
            raise FailedPrecondition(f"wallet {wallet.address} holds no gas on {p.network}: fund it to send "
                                     "cancelAuthorization")
        try:
            sent = self.chain.send_cancel_authorization(p.network, p.asset, p.nonce, signature,
                                                        lambda tx: evm_tx.signed(tx, signer.address,
                                                                                 signer.unsafe_sign_hash),
                                                        wallet.address,
                                                        max_fee_wei=self.max_void_fee_wei)
        except FailedPrecondition as exc:
            if exc.reason == "max_void_fee":
                with self.db.transaction() as s:
                    audit.record(s, at_ms=self.now_ms(), actor=actor, action="payment.void_refused",
                                 outcome="denied", tenant_id=p.tenant_id, reason=DenialReason.MAX_VOID_FEE,
                                 wallet_id=p.wallet_id, payment_id=p.id, network=p.network,
                                 details={"message": exc.message})
                raise
            sent = None  # it would revert: used (or canceled) already; the chain says which below
        events = self.chain.events_in_transaction(p.network, sent.tx_hash) if sent and sent.succeeded else []
        if not events:
            head = self.chain.head(p.network)
            events = self.chain.authorization_events(p.network, [p.asset], 0, head.number,
                                                     authorizer=wallet.address, nonce=p.nonce)
        with self.db.transaction() as s:
            current, _ = payment_for(s, payment_id, None)
            for event in events:
                if event.nonce == p.nonce.lower():
                    apply_event(s, current, event, self.now_ms(), actor)
                    if sent is not None and event.tx_hash == sent.tx_hash:
                        audit.record(s, at_ms=self.now_ms(), actor=actor, action="payment.gas",
                                     tenant_id=p.tenant_id, wallet_id=p.wallet_id, payment_id=p.id,
                                     network=p.network, amount=sent.fee_wei,
                                     details={"tx_hash": sent.tx_hash, "unit": "wei"})
            s.flush()
            s.refresh(current)
            s.expunge(current)
        # Raised only after the transaction above committed what the chain showed.
        if current.state == PaymentState.SETTLED:
            raise FailedPrecondition(f"payment {payment_id} was already settled on chain in {current.tx_hash}")
        if current.state != PaymentState.VOIDED:
            raise Unavailable(f"cancelAuthorization for payment {payment_id} was not confirmed on chain")
        return current


__all__ = ["ANSWER_LOST", "LIVE", "NOT_SENT", "RECEIPT_UNREADABLE", "REDIRECT_REFUSED", "STATES", "Change", "Lifecycle",
           "advance", "apply_event", "expiry", "mined_change"]
