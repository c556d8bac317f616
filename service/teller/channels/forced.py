"""Closing a channel without the payee: TIP-1034's forced close.

A payer that gets no cooperative close (the server is gone, or refuses) calls
``requestClose`` on the escrow, which starts the grace period; once the chain's
time passes its end, ``withdraw`` refunds the deposit minus what the payee has
settled. During the grace period the payee may still settle or close with the
last voucher it holds; such a close wins, and there is nothing to withdraw.

Teller's wallet sends both transactions itself (0x76, expiring nonce, fees in
the channel's token), so each costs a fee that must fit the budgets like any
payment's: it is reserved before the transaction leaves, as a payment row of
amount 0 holding the transaction's most expensive fee (``fee_max``), and trued
up to the fee paid once mined (``teller.lifecycle.advance``, or the
reconciler's receipt check if this worker dies first). The row, the channel's
change and the audit event are written in one transaction, under the channel's
row lock (then the tenant's, then the audit head: the order vouchers use).

Exactly once: a channel holds at most one live ``requestClose`` and one live
``withdraw`` payment (``force_payment_id``, ``withdraw_payment_id``). A worker
claims the transaction by writing its payment there under the lock; another
worker finds it live (or settled) and sends nothing. A claim whose transaction
can no longer be mined (expired, reverted: released) may be claimed again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from teller.audit import events as audit
from teller.chain import Block, ChainReader, Mined
from teller.channels.rules import ChannelState
from teller.channels.store import chain_id_of
from teller.clock import Clock, ms, system_clock
from teller.db import Database
from teller.db.models import Channel, Payment, Tenant, Wallet
from teller.errors import FailedPrecondition, NotFound, TellerError, Unavailable
from teller.lifecycle import LIVE, advance, mined_change
from teller.mpp import gas as tempo_gas
from teller.mpp import session as mpp_session
from teller.mpp.channel import (
    ChannelDescriptor,
    channel_transaction,
    request_close_call,
    withdraw_call,
)
from teller.mpp.channel_events import CloseRequested
from teller.mpp.charge import MAX_VALID_FOR_S
from teller.mpp.tempo_tx import TempoCall, TempoTransaction
from teller.schemes.base import SchemeId
from teller.schemes.mpp_tempo import signed_transaction, tx_hash
from teller.spend import store as spend_store
from teller.spend.evaluate import evaluate_scope
from teller.spend.ledger import BUCKET_ROW_SQL, MINUTE_MS, bucket_delta
from teller.spend.rules import Charge, Lists, Policy
from teller.states import PaymentState
from teller.vault import SealedKey, Vault

log = logging.getLogger("teller.channels")

#: The two payer transactions of a forced close: the audit action of each, and
#: the channel column that holds its claim.
REQUEST_CLOSE, WITHDRAW = "channel.force_close", "channel.withdraw"
_CLAIM = {REQUEST_CLOSE: "force_payment_id", WITHDRAW: "withdraw_payment_id"}


@dataclass(frozen=True, slots=True)
class Forced:
    """A forced close as it stands after ``request``."""

    channel: str
    payment_id: str  # the requestClose's fee payment
    tx_hash: str
    grace_end: int | None  # unix seconds (chain time) from which the wallet may withdraw; None until mined
    fee_paid: int | None


@dataclass(frozen=True, slots=True)
class _Facts:
    """What building a channel transaction needs, read without a lock."""

    tenant_id: str
    wallet_id: str
    address: str
    sealed: SealedKey
    network: str
    escrow: str
    token: str
    channel_id: str
    descriptor: str


def _fee_policy(p: Policy) -> Policy:
    """The rules that judge a close's fee: only what limits spending (budgets,
    ``max_fee``). A close pays no payee and no host, and it is how a channel's
    deposit comes back: lists that judge payments (a payee denied since the
    open) must not keep that money in the escrow."""
    return dataclasses.replace(p, payees=Lists(), hosts=Lists(), networks=Lists(), denied_assets=frozenset(),
                               per_payment_max=None, max_channel_deposit=None)


class ForcedClose:
    """``requestClose`` (asked for by a caller) and ``withdraw`` (sent by the reconciler)."""

    def __init__(self, db: Database, vault: Vault, chain: ChainReader, clock: Clock = system_clock) -> None:
        self.db = db
        self.vault = vault
        self.chain = chain
        self.clock = clock

    # -- requestClose ----------------------------------------------------------------------------------------

    def request(self, tenant_id: str, channel: str, *, actor: str = "") -> Forced:
        """Stop vouchers on ``channel`` and send the wallet's ``requestClose``.
        Asked again while one is live or mined, it answers with that one."""
        facts, existing = self._facts(tenant_id, channel, REQUEST_CLOSE)
        if existing is not None:
            return existing
        mined = self._send(facts, request_close_call, REQUEST_CLOSE, channel, actor)
        if mined is None:
            raise Unavailable(f"channel {channel}: another worker is sending its requestClose; ask again shortly")
        payment_id, found = mined
        grace_end = self._grace_end(facts, found, channel) if found.succeeded else None
        fee = tempo_gas.fee(found.gas_used, found.gas_price)
        if not found.succeeded:
            raise FailedPrecondition(f"channel {channel}: requestClose {found.tx_hash} reverted on {facts.network} "
                                     f"(fee {fee} paid); the channel is closing in Teller", reason="payment_failed")
        return Forced(channel, payment_id, found.tx_hash, grace_end, fee)

    def _facts(self, tenant_id: str, channel: str, action: str) -> tuple[_Facts, Forced | None]:
        with self.db.read() as s:
            row = s.execute(select(Channel, Wallet).join(Wallet, Wallet.id == Channel.wallet_id)
                            .where(Channel.id == channel, Channel.tenant_id == tenant_id)).one_or_none()
            if row is None:
                raise NotFound(f"channel {channel!r} not found")
            c, w = row
            if c.state == ChannelState.CLOSED:
                raise FailedPrecondition(f"channel {channel} is closed already", reason="channel_not_open")
            facts = _Facts(c.tenant_id, c.wallet_id, w.address,
                           SealedKey(w.kek_version, w.wrapped_data_key, w.key_ciphertext), c.network, c.escrow,
                           c.token, c.channel_id, c.descriptor)
            held = _held(s, c, action)
            existing = None
            if held is not None:
                p = held
                existing = Forced(c.id, p.id, p.nonce, c.grace_end, p.fee_paid)
            return facts, existing

    def _grace_end(self, facts: _Facts, mined: Mined, channel: str) -> int | None:
        """The grace period's end, from the CloseRequested the transaction emitted,
        written on the channel (the reconciler's scan writes it too)."""
        try:
            events = self.chain.channel_events(facts.network, [facts.escrow], [facts.channel_id], mined.block,
                                               mined.block)
        except Unavailable as exc:
            log.warning("channel %s: CloseRequested not read (%s); the reconciler will", channel, exc)
            return None
        ends = [e.grace_end for e in events if isinstance(e, CloseRequested) and e.log.tx_hash == mined.tx_hash]
        if not ends:
            return None
        with self.db.transaction() as s:
            c = s.execute(select(Channel).where(Channel.id == channel).with_for_update()).scalar_one()
            if c.state == ChannelState.CLOSING and c.grace_end is None:
                c.grace_end, c.updated_ms = ends[0], ms(self.clock)
        return ends[0]

    # -- withdraw (the reconciler) ---------------------------------------------------------------------------

    def withdraw_due(self, network: str, head: Block, on_error: Callable[[str], None]) -> list[str]:
        """Send ``withdraw`` for each of the network's closing channels whose grace
        period ended at or before ``head``'s time; the channels' handles sent for.
        A withdraw the chain would refuse (the payee closed it meanwhile: its
        estimate reverts) or the budgets refuse is reported to ``on_error`` and
        tried again on the next pass."""
        with self.db.read() as s:
            due = list(s.execute(select(Channel.id, Channel.tenant_id).where(
                Channel.network == network, Channel.state == ChannelState.CLOSING.value,
                Channel.grace_end.is_not(None), Channel.grace_end <= head.timestamp)
                .order_by(Channel.grace_end, Channel.id)).all())
        sent = []
        for handle, tenant_id in due:
            try:
                facts, existing = self._facts(tenant_id, handle, WITHDRAW)
                if existing is not None:
                    continue
                # Its deadline from the chain's clock, where the grace period is measured.
                got = self._send(facts, withdraw_call, WITHDRAW, handle, "reconciler",
                                 now_s=max(int(self.clock()), head.timestamp))
            except TellerError as exc:
                on_error(f"channel {handle}: withdraw: {exc.message}")
                continue
            if got is not None:
                sent.append(handle)
        return sent

    # -- one payer transaction, fee reserved -----------------------------------------------------------------

    def _send(self, facts: _Facts, build: Callable[[str, ChannelDescriptor], TempoCall], action: str,
              channel: str, actor: str, now_s: int | None = None) -> tuple[str, Mined] | None:
        """Estimate, sign, claim (reserve the fee, record, audit) and broadcast one
        escrow call from the wallet; None when another worker holds the claim."""
        descriptor = mpp_session.parse_descriptor(json.loads(facts.descriptor), "stored channel")
        call = build(facts.escrow, descriptor)
        chain_id = chain_id_of(facts.network)
        price = self.chain.gas_price(facts.network)
        now_s = int(self.clock()) if now_s is None else now_s
        # A random past second, as mppx gives its top-ups: a transaction sent again in the
        # second its lost predecessor was (expired, reverted) is then not the same one,
        # which the payments' (wallet, nonce) key would refuse.
        valid_after = max(now_s - 1 - secrets.randbelow(600), 0)

        def tx(limit: int) -> TempoTransaction:
            return channel_transaction(call, chain_id=chain_id, fee_token=facts.token, gas_limit=limit,
                                       gas_price=price, valid_before=now_s + MAX_VALID_FOR_S,
                                       valid_after=valid_after)
        # Estimated each time (key None), and as it is: the call's first argument is
        # the payer, not a recipient. A channel the escrow would refuse the call on
        # (closed by the payee, grace period not over) fails here, before any fee.
        limit = self.chain.tempo_gas_limit(facts.network, facts.address, None, lambda: tx(1), fresh=False)
        unsigned = tx(limit)
        signer = self.vault.signer(facts.tenant_id, facts.wallet_id, facts.address, facts.sealed)
        raw = signed_transaction(unsigned, signer)
        fee_max = tempo_gas.max_fee(limit, price)
        payment_id = self._claim(facts, channel, action, actor, tx_hash(raw), unsigned.valid_before, fee_max,
                                 {"gas_limit": limit, "max_fee_per_gas": price})
        if payment_id is None:
            return None
        try:
            mined = self.chain.broadcast(facts.network, raw)
        except Unavailable as exc:
            # Its fate is the chain's: the reconciler settles or expires the payment from its receipt.
            raise Unavailable(f"channel {channel}: {action.split('.')[1]} {tx_hash(raw)} was sent, not seen mined "
                              f"({exc.message}); the reconciler follows it") from exc
        with self.db.transaction() as s:
            p = s.get(Payment, payment_id)
            assert p is not None
            advance(s, p, mined_change(mined), from_states=LIVE, now_ms=ms(self.clock), actor=actor,
                    details={"channel": channel, "call": action.split(".")[1]})
        return payment_id, mined

    def _claim(self, facts: _Facts, channel: str, action: str, actor: str, tx: str, valid_before: int,
               fee_max: int, details: dict[str, object]) -> str | None:
        """The claim: under the channel's lock, no live or mined claim of this kind,
        the fee within every budget; then the payment, the channel's change and the
        audit event. A refusal by the policy is audited and raised."""
        try:
            return self._claim_once(facts, channel, action, actor, tx, valid_before, fee_max, details)
        except IntegrityError:
            # The backstop: this very transaction already holds a payment (the same
            # one signed twice). Nothing was written; it is someone's claim already.
            return None

    def _claim_once(self, facts: _Facts, channel: str, action: str, actor: str, tx: str, valid_before: int,
                    fee_max: int, details: dict[str, object]) -> str | None:
        column = _CLAIM[action]
        refused: TellerError | None = None
        with self.db.transaction() as s:
            c = s.execute(select(Channel).where(Channel.id == channel).with_for_update()).scalar_one()
            if c.state == ChannelState.CLOSED or (action == WITHDRAW and c.state != ChannelState.CLOSING):
                return None
            if _held(s, c, action) is not None:
                return None
            now_ms = ms(self.clock)
            tenant = s.execute(select(Tenant).where(Tenant.id == c.tenant_id).with_for_update()).scalar_one()
            wallet = s.get(Wallet, c.wallet_id)
            assert wallet is not None
            charge = Charge(c.network, c.token, 0, c.escrow, "", fee=fee_max)
            tenant_policy, wallets = spend_store.policies(s, c.tenant_id, [c.wallet_id])
            scopes = [("tenant", c.tenant_id, tenant_policy, tenant.frozen or tenant.state != "active")]
            if c.wallet_id in wallets or wallet.frozen:
                scopes.append(("wallet", c.wallet_id, wallets.get(c.wallet_id, tenant_policy), wallet.frozen))
            used = spend_store.measure_many(s, {(n, i): p.budgets for n, i, p, _ in scopes}, now_ms)
            fields = {"tenant_id": c.tenant_id, "wallet_id": c.wallet_id, "asset": c.token, "network": c.network,
                      "payee": c.payee}
            base = {"channel": c.id, "channel_id": c.channel_id, "escrow": c.escrow, "tx_hash": tx,
                    "fee_max": fee_max, **details}
            decision = None
            for name, scope_id, policy, frozen in scopes:
                d = evaluate_scope(_fee_policy(policy), name, charge,
                                   {b: w.used for b, w in used[(name, scope_id)].items()}, frozen)
                if not d.allowed:
                    decision = d
                    break
                decision = decision or d
            assert decision is not None
            if not decision.allowed:
                refused = decision.error(charge)
                audit.record(s, at_ms=now_ms, actor=actor, action=action + "_refused", outcome="denied",
                             reason=decision.reason, amount=0, details={**base, **refused.metadata}, **fields)
            else:
                p = Payment(id=str(uuid.uuid4()), tenant_id=c.tenant_id, wallet_id=c.wallet_id, protocol="mpp",
                            version=1, scheme=SchemeId.TEMPO_SESSION.value, network=c.network, asset=c.token,
                            pay_to=c.escrow, amount=0, amount_common=decision.amount_common, fee_max=fee_max,
                            fee_common=decision.fee_common, resource_url="", nonce=tx, valid_before=valid_before,
                            state=PaymentState.SIGNED.value, header_name="", header_value="", request_hash="",
                            created_ms=now_ms, updated_ms=now_ms)
                s.add(p)
                frm = c.state
                setattr(c, column, p.id)
                c.state, c.updated_ms = ChannelState.CLOSING.value, now_ms
                s.flush()
                # The audit chain head before the spend buckets, as everywhere.
                audit.record(s, at_ms=now_ms, actor=actor, action=action, payment_id=p.id, amount=0,
                             details={**base, "from": frm, "to": c.state, "deposit": str(c.deposit),
                                      "cumulative": str(c.cumulative), "grace_end": c.grace_end}, **fields)
                reserved, spent = bucket_delta(None, 0, p.state, p.amount_common)
                s.execute(text(BUCKET_ROW_SQL), [
                    {"scope": scope, "scope_id": sid, "minute": now_ms // MINUTE_MS, "reserved": reserved,
                     "spent": spent} for scope, sid in (("tenant", c.tenant_id), ("wallet", c.wallet_id))])
                return p.id
        assert refused is not None
        raise refused


def _held(s: Session, c: Channel, action: str) -> Payment | None:
    """The channel's claim of ``action``'s kind while it can still be (or was)
    mined: unreleased, signed or settled."""
    pid = getattr(c, _CLAIM[action])
    if pid is None:
        return None
    p = s.get(Payment, pid)
    if p is None or p.released_ms is not None or p.state not in (PaymentState.SIGNED, PaymentState.SETTLED,
                                                                 PaymentState.FAILED):
        return None
    return p


__all__ = ["REQUEST_CLOSE", "WITHDRAW", "Forced", "ForcedClose"]
