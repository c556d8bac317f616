"""What the chain does to a channel after it opens: the escrow's events
(``teller.mpp.channel_events``), applied by the reconciler one at a time, each
in one transaction with its audit row.

    open    --CloseRequested--------> closing   (no more vouchers: rules.next_cumulative; its grace_end
                                                kept: the reconciler withdraws after it, teller.channels.forced)
    closing --CloseRequestCancelled-> open
    open|closing --ChannelClosed----> closed    (the refunded part of the deposit stops counting)
    Settled: audited only (the payee took what a voucher promised; the deposit counted it already)
    TopUp: audited, confirming the top-up payment of that transaction (its receipt settles it)

A channel's open payment counts its whole deposit (and its fee) from the Sign
that opened it; once the chain shows the channel closed, the part of the
deposit refunded to the wallet stops counting (``rules.counted_after_close``),
in the buckets of the payment's minute (``teller.spend.store.move_buckets``).
If that payment is not settled yet (its transaction's receipt not processed),
it is settled first, as ``teller.reconciler`` would have, in the same
transaction: the chain cannot close a channel whose open was not mined.

Each event applies to its channel once, in chain order: the channel keeps the
position of the last one applied (``channels.last_event``) and ignores any at
or before it, so a pass that reads a block range again, or two workers that
read the same logs, change nothing twice, and a late worker cannot undo a
newer event with an older one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from teller.audit import events as audit
from teller.chain import Mined
from teller.channels.rules import ChannelState, counted_after_close
from teller.channels.store import Channels
from teller.db.models import Channel, ChannelTopUp, Payment
from teller.lifecycle import LIVE, Change, advance, mined_change
from teller.mpp.channel_events import (
    ChannelClosed,
    ChannelEvent,
    CloseRequestCancelled,
    CloseRequested,
    Settled,
    TopUp,
)
from teller.spend.store import move_buckets
from teller.states import PaymentState

#: The states in which the chain may still move a channel's money.
FOLLOWED = (ChannelState.OPEN.value, ChannelState.CLOSING.value)


@dataclass(frozen=True, slots=True)
class Followed:
    """The channels of a network the reconciler reads escrow events for."""

    escrows: tuple[str, ...]
    channel_ids: tuple[str, ...]


def followed(s: Session, network: str) -> Followed:
    """The escrows and ids of the network's open and closing channels."""
    rows = s.execute(select(Channel.escrow, Channel.channel_id).where(
        Channel.network == network, Channel.state.in_(FOLLOWED))).all()
    return Followed(tuple(sorted({e for e, _ in rows})), tuple(sorted({c for _, c in rows})))


def _where(network: str, event: ChannelEvent) -> Any:
    return ((Channel.network == network) & (Channel.escrow == event.log.escrow)
            & (Channel.channel_id == event.log.channel_id))


def open_to_settle(s: Session, network: str, event: ChannelEvent) -> str | None:
    """The hash of the transaction that opened ``event``'s channel, when the event
    closes the channel and that open's payment is not settled yet: the
    reconciler reads its receipt before ``apply``, which settles it first."""
    if not isinstance(event, ChannelClosed):
        return None
    row = s.execute(select(Payment.nonce).join(Channel, Channel.open_payment_id == Payment.id).where(
        _where(network, event), Channel.state.in_(FOLLOWED), Payment.state.in_(LIVE),
        Payment.released_ms.is_(None))).first()
    return None if row is None else str(row[0])


def top_ups_to_settle(s: Session, network: str, event: ChannelEvent) -> list[str]:
    """The hashes of the top-up transactions of ``event``'s channel whose
    payments are still live, when the event closes the channel: the reconciler
    reads their receipts before ``apply``. A top-up not mined by the close never
    added to what the chain refunded or paid, so it is no holder of the deposit."""
    if not isinstance(event, ChannelClosed):
        return []
    rows = s.scalars(select(Payment.nonce).join(ChannelTopUp, ChannelTopUp.payment_id == Payment.id)
                     .join(Channel, Channel.id == ChannelTopUp.channel)
                     .where(_where(network, event), Channel.state.in_(FOLLOWED), Payment.state.in_(LIVE),
                            Payment.released_ms.is_(None)))
    return [str(n) for n in rows]


#: The audit action of each event applied.
ACTIONS: dict[type, str] = {Settled: "channel.settled", CloseRequested: "channel.close_requested",
                            CloseRequestCancelled: "channel.close_cancelled", ChannelClosed: "channel.closed",
                            TopUp: "channel.topped_up"}


def apply(s: Session, network: str, event: ChannelEvent, *, now_ms: int, actor: str,
          open_mined: Mined | None = None, top_ups_mined: Mapping[str, Mined | None] | None = None) -> str | None:
    """Apply one escrow event to the channel it names, in the caller's
    transaction; returns the audit action recorded. Returns None, having written
    nothing, when the channel is not Teller's, is closed already, or has seen
    this event or a later one. ``open_mined``: the receipt of the channel's open
    transaction, when ``open_to_settle`` named it; ``top_ups_mined``: the
    receipts (None: not mined) of the live top-ups ``top_ups_to_settle`` named."""
    payment: Payment | None = None
    top_ups: list[Payment] = []
    if isinstance(event, ChannelClosed):
        # The payments' rows before the channel's: the lifecycle's transitions lock a
        # payment, then (an open or top-up that failed) its channel; one order for all.
        found = s.execute(select(Channel.id, Channel.open_payment_id).where(_where(network, event))).first()
        if found is not None:
            handle, opened_by = found
            if opened_by is not None:
                payment = s.execute(select(Payment).where(Payment.id == opened_by)
                                    .with_for_update()).scalar_one_or_none()
            top_ups = list(s.scalars(select(Payment).join(ChannelTopUp, ChannelTopUp.payment_id == Payment.id)
                                     .where(ChannelTopUp.channel == handle)
                                     .order_by(Payment.created_ms, Payment.id).with_for_update(of=Payment)))
    c = s.execute(select(Channel).where(_where(network, event)).with_for_update()).scalar_one_or_none()
    if c is None or c.state not in FOLLOWED:
        return None
    if c.last_event is not None and event.log.position <= c.last_event:
        return None
    action = ACTIONS[type(event)]
    c.last_event = event.log.position
    c.updated_ms = now_ms
    details: dict[str, object] = {"channel": c.id, "channel_id": c.channel_id, "escrow": c.escrow,
                                  "tx_hash": event.log.tx_hash, "block": event.log.block,
                                  "log_index": event.log.log_index, "from": c.state}
    fields: dict[str, Any] = {"tenant_id": c.tenant_id, "wallet_id": c.wallet_id, "asset": c.token,
                              "network": c.network, "payee": c.payee, "payment_id": c.open_payment_id or ""}
    if isinstance(event, Settled):
        audit.record(s, at_ms=now_ms, actor=actor, action=action, amount=str(event.delta_paid),
                     details={**details, "cumulative_amount": str(event.cumulative_amount),
                              "delta_paid": str(event.delta_paid), "new_settled": str(event.new_settled)},
                     **fields)
    elif isinstance(event, TopUp):
        # Teller's own top-up is the payment whose transaction emitted it; the chain's
        # deposit is what the escrow now holds (Teller's may still count a top-up pending).
        ours = s.execute(select(Payment.id, ChannelTopUp.added).join(ChannelTopUp, ChannelTopUp.payment_id == Payment.id)
                         .where(ChannelTopUp.channel == c.id, Payment.nonce == event.log.tx_hash)).first()
        if ours is not None:
            Channels.mark_delivered(s, ours[0], now_ms)  # on chain: the server knows its deposit
        audit.record(s, at_ms=now_ms, actor=actor, action=action, amount=str(event.additional_deposit),
                     details={**details, "added": str(event.additional_deposit),
                              "deposit_on_chain": str(event.new_deposit), "deposit": str(c.deposit),
                              "top_up_payment": None if ours is None else ours[0],
                              "confirmed": ours is not None and ours[1] == event.additional_deposit},
                     **{**fields, "payment_id": "" if ours is None else ours[0]})
    elif isinstance(event, CloseRequested):
        if c.state == ChannelState.OPEN:
            c.state = ChannelState.CLOSING.value
        # From then on the wallet may withdraw (teller.channels.forced): only the payer
        # can request a close, so the request is Teller's own, whichever worker sent it.
        c.grace_end = event.grace_end
        audit.record(s, at_ms=now_ms, actor=actor, action=action,
                     details={**details, "to": c.state, "grace_end": event.grace_end}, **fields)
    elif isinstance(event, CloseRequestCancelled):
        if c.state == ChannelState.CLOSING:
            c.state = ChannelState.OPEN.value
        # Nothing to withdraw; a later forced close sends a requestClose of its own.
        c.grace_end = c.force_payment_id = None
        audit.record(s, at_ms=now_ms, actor=actor, action=action,
                     details={**details, "to": c.state}, **fields)
    else:
        c.state = ChannelState.CLOSED.value
        _closed(s, c, payment, top_ups, event, now_ms=now_ms, actor=actor, open_mined=open_mined,
                top_ups_mined=top_ups_mined or {}, details=details, fields=fields)
    s.flush()
    return action


def _closed(s: Session, c: Channel, p: Payment | None, top_ups: list[Payment], event: ChannelClosed, *,
            now_ms: int, actor: str, open_mined: Mined | None, top_ups_mined: Mapping[str, Mined | None],
            details: dict[str, object], fields: dict[str, Any]) -> None:
    """The channel is closed on chain: settle its open payment (and any top-up)
    if it was not yet, then count only the part of the deposit that did not
    come back. The deposit is held by several payments once topped up: the
    refund releases the newest first (a top-up's whole amount before the one
    before it, the open's last), so together they count exactly what the
    payee got, and each its own fee. A top-up whose transaction the chain shows
    no receipt of never reached the escrow: it holds none of the deposit and
    stays as it is, released when it can no longer be mined (and a later mined
    one reverts on the closed channel)."""
    holders: list[Payment] = []
    for q in ([p] if p is not None else []) + top_ups:
        if q.released_ms is None and q.state in LIVE:
            # The close proves the open was mined; a top-up only its receipt proves.
            change = Change(PaymentState.SETTLED, release=False, reason="channel_closed_on_chain")
            if q is p and open_mined is not None and open_mined.succeeded and open_mined.tx_hash == q.nonce.lower():
                change = mined_change(open_mined)
            elif q is not p:
                receipt = top_ups_mined.get(q.nonce.lower())
                if receipt is None:
                    continue
                change = mined_change(receipt)
            advance(s, q, change, from_states=LIVE, now_ms=now_ms, actor=actor,
                    details={"channel": c.id, "seen": "ChannelClosed", "block": event.log.block})
            s.refresh(q)
        if q.released_ms is None and q.state == PaymentState.SETTLED:
            holders.append(q)
    counts: list[tuple[Payment, int, int]] = []
    left = max(event.refunded_to_payer, 0)
    for q in reversed(holders):
        back = min(left, q.amount)
        left -= back
        counts.append((q, q.amount_common, counted_after_close(amount_common=q.amount_common,
                                                               fee_common=q.fee_common, deposit=q.amount,
                                                               refunded=back)))
    counts.reverse()
    refunded = min(event.refunded_to_payer, c.deposit)
    before = sum(b for _, b, _ in counts)
    after = sum(a for _, _, a in counts)
    # The audit chain head before the spend buckets, as everywhere.
    audit.record(s, at_ms=now_ms, actor=actor, action=ACTIONS[ChannelClosed], amount=str(c.deposit - refunded),
                 details={**details, "to": c.state, "settled_to_payee": str(event.settled_to_payee),
                          "refunded_to_payer": str(event.refunded_to_payer),
                          **({"counted_before": before, "counted_after": after} if counts else {}),
                          **({"top_ups": len(top_ups)} if top_ups else {})},
                 **fields)
    for q, was, now in counts:
        if now == was:
            continue
        moved = s.execute(update(Payment).where(Payment.id == q.id, Payment.state == PaymentState.SETTLED,
                                                Payment.released_ms.is_(None), Payment.amount_common == was)
                          .values(amount_common=now, updated_ms=now_ms)
                          .execution_options(synchronize_session=False))
        if moved.rowcount == 1:  # type: ignore[attr-defined]
            # The row object still reads as it was (settled, counting ``was``):
            # the buckets move by the difference.
            move_buckets(s, q, PaymentState.SETTLED, now)


__all__ = ["ACTIONS", "FOLLOWED", "Followed", "apply", "followed", "open_to_settle"]
