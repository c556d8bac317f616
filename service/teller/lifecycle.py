"""What happens to a payment after its proof leaves Teller.

    signed --(used on chain)----------------------> settled   (spent; tx hash kept)
    signed --(server refused it)------------------> failed    (still reserved)
    signed|failed --(validBefore passed, unused)--> expired / failed+released
    signed|failed --(cancelAuthorization mined)---> voided    (released)
    failed --(used on chain after all)------------> settled

Budgets count every payment whose ``released_ms`` is NULL. Only the chain can
release one: a server's refusal says nothing about whether someone holding the
signed authorization will submit it before ``validBefore``.

Every change is a guarded ``UPDATE ... WHERE state IN (...) AND released_ms IS
NULL`` with its audit row in the same transaction, so two workers observing
the same event change the payment once and release its amount once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from teller import audit, eip3009, spend
from teller.chain import AuthorizationEvent, ChainReader
from teller.clock import Clock, ms, system_clock
from teller.db import Database
from teller.db.models import Payment, Wallet
from teller.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from teller.vault import SealedKey, Vault

log = logging.getLogger("teller.lifecycle")

SIGNED, SETTLED, FAILED, EXPIRED, VOIDED = "signed", "settled", "failed", "expired", "voided"
#: States whose authorization may still move money on chain.
LIVE = (SIGNED, FAILED)
#: Payments made of an EIP-3009 authorization (nonce = the authorization nonce).
EIP3009_SCHEMES = ("exact", "evm/charge")
#: Payments made of a signed Tempo transaction (nonce = the transaction hash).
TEMPO_SCHEMES = ("tempo/charge",)
STATES = (SIGNED, SETTLED, FAILED, EXPIRED, VOIDED)


@dataclass(frozen=True, slots=True)
class Change:
    to: str
    release: bool
    reason: str = ""
    tx_hash: str = ""


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
    result = s.execute(
        update(Payment)
        .where(Payment.id == p.id, Payment.state.in_(from_states), Payment.released_ms.is_(None))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    action = f"payment.{change.to}" if not (change.to == FAILED and change.release) else "payment.released"
    # The audit chain head is locked before the spend buckets, as in Sign: one lock order.
    audit.record(
        s, at_ms=now_ms, actor=actor, action=action, tenant_id=p.tenant_id, reason=change.reason[:100],
        wallet_id=p.wallet_id, payment_id=p.id, amount=p.amount, asset=p.asset, network=p.network,
        payee=p.pay_to, resource_url=p.resource_url,
        details={"from": p.state, "to": change.to, "tx_hash": change.tx_hash, "released": change.release,
                 **(details or {})},
    )
    was_spent = p.state == SETTLED
    if change.release:
        spend.add_to_buckets(s, p.tenant_id, p.wallet_id, p.created_ms,
                             0 if was_spent else -p.amount_common, -p.amount_common if was_spent else 0)
    elif change.to == SETTLED and not was_spent:
        spend.add_to_buckets(s, p.tenant_id, p.wallet_id, p.created_ms, -p.amount_common, p.amount_common)
    return True


def from_event(event: AuthorizationEvent) -> Change:
    if event.kind == "used":
        return Change(SETTLED, release=False, tx_hash=event.tx_hash)
    return Change(VOIDED, release=True, reason="canceled_on_chain", tx_hash=event.tx_hash)


def expiry(p: Payment) -> Change:
    # A failed payment keeps its state (the server's reason stays readable);
    # it only stops holding budget.
    if p.state == FAILED:
        return Change(FAILED, release=True, reason=p.state_reason)
    return Change(EXPIRED, release=True, reason="valid_before_passed")


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

    def __init__(self, db: Database, chain: ChainReader, vault: Vault, clock: Clock = system_clock) -> None:
        self.db = db
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
        from teller.mpp import receipt as mpp_receipt
        from teller.x402 import receipt as x402_receipt

        with self.db.transaction() as s:
            p, wallet = payment_for(s, payment_id, tenant_id)
            network, asset, nonce, address, scheme = p.network, p.asset, p.nonce, wallet.address, p.scheme
        decoder = mpp_receipt.decode if p.protocol == "mpp" else x402_receipt.decode
        outcome = decoder(status, headers, body, max_bytes)
        confirmed: AuthorizationEvent | None = None
        if outcome.kind == "settled" and outcome.tx_hash and network in self.chain.networks:
            # The server's word is checked against the chain before it is recorded as settled.
            try:
                if scheme in TEMPO_SCHEMES:
                    mined = self.chain.mined(network, outcome.tx_hash)
                    if mined is not None and mined.succeeded and mined.tx_hash == nonce.lower():
                        confirmed = AuthorizationEvent("used", asset, address, nonce, mined.tx_hash, mined.block)
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
                outcome="error" if outcome.kind == "refused" else "ok", tenant_id=p.tenant_id,
                reason=outcome.reason[:100], wallet_id=p.wallet_id, payment_id=p.id, amount=p.amount,
                asset=p.asset, network=p.network, payee=p.pay_to, resource_url=p.resource_url,
                details={"reported": outcome.kind, "tx_hash": outcome.tx_hash, "state": p.state},
            )
            if confirmed is not None:
                apply_event(s, p, confirmed, now, actor)
            elif outcome.kind == "refused":
                # Still reserved: the authorization stays usable until validBefore.
                advance(s, p, Change(FAILED, release=False, reason=outcome.reason or "refused"),
                        from_states=(SIGNED,), now_ms=now, actor=actor)
            s.flush()
            s.refresh(p)
            s.expunge(p)
            return p

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
                                                        signer.sign_evm_transaction, wallet.address)
        except FailedPrecondition:
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
        if current.state == SETTLED:
            raise FailedPrecondition(f"payment {payment_id} was already settled on chain in {current.tx_hash}")
        if current.state != VOIDED:
            raise Unavailable(f"cancelAuthorization for payment {payment_id} was not confirmed on chain")
        return current


__all__ = ["LIVE", "STATES", "Change", "Lifecycle", "advance", "apply_event", "expiry"]
