"""The background reconciler: moves payments along their lifecycle from what
the chain shows (see ``teller.lifecycle`` for the states).

Per network, one pass
1. scans ``AuthorizationUsed`` / ``AuthorizationCanceled`` logs of the tokens
   that live payments use, from a cursor stored in the database, in chunks:
   one ``eth_getLogs`` per chunk however many payments are in flight;
2. expires payments whose ``validBefore`` lies at or before the head block's
   timestamp and whose nonce is unused at that block. Block timestamps never
   decrease, so such an authorization can never be used again;
3. follows Tempo payments (signed transactions) by their receipts;
4. scans the escrow events of the open and closing MPP session channels
   (settled, close requested or cancelled, closed) from a cursor of their own
   (``channels:<network>``), applying each in its own transaction
   (``teller.channels.lifecycle``);
5. sends the wallet's ``withdraw`` for each forced close whose grace period
   ended at or before the head block's time (``teller.channels.forced``); the
   next pass sees its ``ChannelClosed``.

Several workers may run this at once. A lease on each cursor row keeps them
from repeating each other's RPC calls; correctness rests on the guarded
updates in ``teller.lifecycle`` and ``teller.channels.lifecycle`` alone.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from teller import observe
from teller.chain import AuthorizationEvent, Block, ChainReader
from teller.channels import lifecycle as channel_lifecycle
from teller.channels.forced import ForcedClose
from teller.clock import Clock, ms, system_clock
from teller.db import Database
from teller.db.models import ChainCursor, Payment, Wallet
from teller.errors import Unavailable
from teller.lifecycle import (
    EIP3009_SCHEMES,
    LIVE,
    TRANSACTION_SCHEMES,
    Change,
    advance,
    apply_event,
    expiry,
    from_event,
    mined_change,
)
from teller.mpp.channel_events import ChannelEvent
from teller.states import PaymentState

log = logging.getLogger("teller.reconciler")
ACTOR = "reconciler"
#: The escrow event scan's cursor is ``chain_cursors`` row ``channels:<network>``,
#: apart from the authorization scan's (``<network>``): each moves at its own pace.
CHANNEL_CURSOR = "channels:"


@dataclass
class PassResult:
    transitions: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # networks another worker holds the lease for


class Reconciler:
    def __init__(
        self, db: Database, chain: ChainReader, clock: Clock = system_clock, *,
        lookback_blocks: int = 10_000, chunk_blocks: int = 2_000, lease_s: float = 30.0,
        use_lease: bool = True, forced: ForcedClose | None = None,
    ) -> None:
        self.db = db
        self.chain = chain
        self.clock = clock
        self.owner = uuid.uuid4().hex
        self.lookback_blocks = lookback_blocks
        self.chunk_blocks = chunk_blocks
        self.lease_ms = int(lease_s * 1000)
        self.use_lease = use_lease
        #: Sends the withdraw of forced closes whose grace period is over (None: not this worker's job).
        self.forced = forced

    def run_once(self) -> PassResult:
        result = PassResult()
        for network in self.chain.networks:
            try:
                self._network(network, result)
            except Unavailable as exc:
                log.warning("reconciler: %s", exc)
                result.errors.append(f"{network}: {exc}")
        return result

    # -- cursor and lease -------------------------------------------------

    def _claim(self, cursor: str, head: int) -> int | None:
        """The last scanned block, if this worker holds the cursor's lease
        (a cursor is a network's, or ``CHANNEL_CURSOR`` + a network's)."""
        now = ms(self.clock)
        try:
            with self.db.transaction() as s:
                row = s.execute(select(ChainCursor).where(ChainCursor.network == cursor).with_for_update()
                                ).scalar_one_or_none()
                if row is None:
                    row = ChainCursor(network=cursor, block=max(head - self.lookback_blocks, -1), updated_ms=now)
                    s.add(row)
                elif self.use_lease and row.lease_owner != self.owner and row.lease_until_ms > now:
                    return None
                row.lease_owner = self.owner
                row.lease_until_ms = now + self.lease_ms
                return row.block
        except IntegrityError:
            return None  # another worker created the cursor a moment ago

    def _advance_cursor(self, cursor: str, block: int) -> None:
        with self.db.transaction() as s:
            row = s.execute(select(ChainCursor).where(ChainCursor.network == cursor).with_for_update()).scalar_one()
            if block > row.block:
                row.block = block
            row.updated_ms = ms(self.clock)

    # -- one network ------------------------------------------------------

    def _live(self, s: Session, network: str, valid_before_max: int | None = None) -> list[tuple[Payment, str]]:
        q = (select(Payment, Wallet.address).join(Wallet, Wallet.id == Payment.wallet_id)
             .where(Payment.released_ms.is_(None), Payment.state.in_(LIVE), Payment.network == network,
                    Payment.scheme.in_(EIP3009_SCHEMES)))
        if valid_before_max is not None:
            q = q.where(Payment.valid_before <= valid_before_max)
        return [(p, addr) for p, addr in s.execute(q).all()]

    def _network(self, network: str, result: PassResult) -> None:
        head = self.chain.head(network)
        cursor = self._claim(network, head.number)
        if cursor is None:
            result.skipped.append(network)
            return
        with self.db.transaction() as s:
            assets = sorted({p.asset for p, _ in self._live(s, network)})
        start = cursor + 1
        observe.RECONCILER_LAG.labels(network).set(max(head.number - cursor, 0))
        while start <= head.number:
            end = min(start + self.chunk_blocks - 1, head.number)
            if assets:
                events = self.chain.authorization_events(network, assets, start, end)
                if events:
                    self._apply(network, events, result)
            self._advance_cursor(network, end)
            observe.RECONCILER_LAG.labels(network).set(head.number - end)
            start = end + 1
        self._expire(network, head.number, head.timestamp, result)
        self._transactions(network, head.timestamp, result)
        self._channels(network, head, result)
        if self.forced is not None:
            # After the event scan: a payee's close during the grace period, once seen, wins.
            # Not under the cursor's lease: each withdraw is claimed in the database.
            for _ in self.forced.withdraw_due(network, head, lambda why: result.errors.append(f"{network}: {why}")):
                result.transitions["channel.withdraw"] += 1
        observe.RECONCILER_LAG.labels(network).set(0)
        observe.RECONCILER_LAST.labels(network).set(time.time())

    def _channels(self, network: str, head: Block, result: PassResult) -> None:
        """Escrow events of the network's open and closing channels, up to ``head``.
        The channels are read after the head: a channel recorded later opens in a
        later block, so the scan misses none of its events."""
        key = CHANNEL_CURSOR + network
        cursor = self._claim(key, head.number)
        if cursor is None:
            result.skipped.append(key)
            return
        with self.db.read() as s:
            channels = channel_lifecycle.followed(s, network)
        start = cursor + 1
        while start <= head.number:
            end = min(start + self.chunk_blocks - 1, head.number)
            if channels.channel_ids:
                for event in self.chain.channel_events(network, channels.escrows, channels.channel_ids, start, end):
                    self._apply_channel_event(network, event, result)
            self._advance_cursor(key, end)
            start = end + 1

    def _apply_channel_event(self, network: str, event: ChannelEvent, result: PassResult) -> None:
        with self.db.read() as s:
            open_tx = channel_lifecycle.open_to_settle(s, network, event)
            top_up_txs = channel_lifecycle.top_ups_to_settle(s, network, event)
        # A close seen before the open's receipt was: the open is settled first, from its receipt;
        # a top-up counts only if its receipt shows it mined.
        mined = self.chain.mined(network, open_tx) if open_tx is not None else None
        top_ups_mined = {tx.lower(): self.chain.mined(network, tx) for tx in top_up_txs}
        with self.db.transaction() as s:
            action = channel_lifecycle.apply(s, network, event, now_ms=ms(self.clock), actor=ACTOR,
                                             open_mined=mined, top_ups_mined=top_ups_mined)
        if action is not None:
            result.transitions[action] += 1

    def _transactions(self, network: str, head_ts: int, result: PassResult) -> None:
        """Tempo payments are transactions: mined (settled, or reverted and so
        unusable), or past their valid_before at the head and never minable."""
        with self.db.transaction() as s:
            rows = list(s.scalars(select(Payment).where(
                Payment.released_ms.is_(None), Payment.state.in_(LIVE), Payment.network == network,
                Payment.scheme.in_(TRANSACTION_SCHEMES))))
            for p in rows:
                s.expunge(p)
        for p in rows:
            mined = self.chain.mined(network, p.nonce)
            if mined is not None:
                change = mined_change(mined)
            elif p.valid_before <= head_ts:
                change = expiry(p)
            else:
                continue
            with self.db.transaction() as s:
                if advance(s, p, change, from_states=LIVE, now_ms=ms(self.clock), actor=ACTOR,
                           details={"head_timestamp": head_ts}):
                    result.transitions[_label(change)] += 1

    def _apply(self, network: str, events: list[AuthorizationEvent], result: PassResult) -> None:
        by_key = {(e.authorizer.lower(), e.nonce): e for e in events}
        nonces = {e.nonce for e in events}
        with self.db.transaction() as s:
            rows = s.execute(
                select(Payment, Wallet.address).join(Wallet, Wallet.id == Payment.wallet_id)
                .where(Payment.network == network, Payment.nonce.in_(nonces), Payment.released_ms.is_(None),
                       Payment.state.in_(LIVE))
                # One order for every writer: no two reconcilers wait on each other's rows.
                .order_by(Payment.created_ms, Payment.id)
            ).all()
            now = ms(self.clock)
            for p, address in rows:
                event = by_key.get((address.lower(), p.nonce.lower()))
                if event is not None and event.asset.lower() == p.asset.lower():
                    if apply_event(s, p, event, now, ACTOR):
                        result.transitions[_label(from_event(event))] += 1

    def _expire(self, network: str, head_number: int, head_ts: int, result: PassResult) -> None:
        with self.db.transaction() as s:
            candidates = self._live(s, network, valid_before_max=head_ts)
            for p, _ in candidates:
                s.expunge(p)
        for p, address in candidates:
            used = self.chain.authorization_used(network, p.asset, address, p.nonce, block=head_number)
            change: Change
            if not used:
                change = expiry(p)
            else:
                # Used, but the log scan has not seen it (it predates the cursor):
                # look for its event once, and count it as spent either way.
                events = self.chain.authorization_events(
                    network, [p.asset], max(head_number - self.lookback_blocks, 0), head_number,
                    authorizer=address, nonce=p.nonce)
                if events:
                    with self.db.transaction() as s:
                        if apply_event(s, p, events[0], ms(self.clock), ACTOR):
                            result.transitions[_label(from_event(events[0]))] += 1
                    continue
                change = Change(PaymentState.SETTLED, release=False, reason="used_on_chain_tx_not_found")
            with self.db.transaction() as s:
                if advance(s, p, change, from_states=LIVE, now_ms=ms(self.clock), actor=ACTOR,
                           details={"head_block": head_number, "head_timestamp": head_ts}):
                    result.transitions[_label(change)] += 1


def _label(change: Change) -> str:
    """How a pass reports a transition: a failed payment that stops holding budget is "released"."""
    return "released" if change.to == PaymentState.FAILED and change.release else str(change.to)


__all__ = ["PassResult", "Reconciler"]
