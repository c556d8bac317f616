"""The escrow's channel events applied to Teller's channels, on SQLite and PostgreSQL:
a close trues the open payment down to what the chain kept (its buckets with it),
a close request stops vouchers and its cancellation resumes them, a settlement is
audited; each event applies once and in chain order, however often it is seen and
by however many workers. The events are made here (the e2e test in
tests/e2e/test_teller_sessions.py reads them off a chain); the reconciler's scan
runs against a chain reader that serves them."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import func, select

from teller import lifecycle
from teller.app import build
from teller.chain import Block, ChainReader, Mined
from teller.channels import lifecycle as channel_lifecycle
from teller.db.models import AuditEvent, ChainCursor, Channel, Payment
from teller.errors import FailedPrecondition
from teller.mpp import gas as tempo_gas
from teller.mpp.channel_events import (
    ChannelClosed,
    ChannelEvent,
    CloseRequestCancelled,
    CloseRequested,
    EventLog,
    Settled,
)
from teller.reconciler import CHANNEL_CURSOR, Reconciler
from teller.spend.rules import Budget
from teller.spend.store import measure, measure_by_scan
from tests.support.channels import ESCROW, NETWORK, OpenedWithPayment, open_with_payment
from tests.support.harness import make_settings

T0 = 1_795_000_000_000  # when the channels open (ms)
NOW = T0 + 5_000
DAY = [Budget("day", 10**15, calendar="day")]
BUDGETS = [*DAY, Budget("r90s", 10**15, rolling_ms=90_000), Budget("hour", 10**15, calendar="hour")]
DEPOSIT = 200_000
FEE_MAX = 20_000


@pytest.fixture
def app(db_url, tmp_path):
    built = build(make_settings(db_url, tmp_path), migrate=True)
    yield built
    built.close()


def _opened(app, **kw) -> OpenedWithPayment:
    return open_with_payment(app, DEPOSIT, fee_max=FEE_MAX, fee_common=FEE_MAX, created_ms=T0, **kw)


def _log(o: OpenedWithPayment, block: int, index: int = 0) -> EventLog:
    return EventLog(ESCROW, o.channel.channel_id, o.channel.address, "0x" + "00" * 19 + "01", "0x" + f"{block:064x}",
                    block, index)


def _apply(app, event: ChannelEvent, mined: Mined | None = None) -> str | None:
    with app.db.transaction() as s:
        return channel_lifecycle.apply(s, NETWORK, event, now_ms=NOW, actor="test", open_mined=mined)


def _day(app, o: OpenedWithPayment) -> tuple[int, int]:
    """(reserved, spent) of the tenant's day, from the buckets, held to the payments themselves."""
    with app.db.transaction() as s:
        for column, scope_id in (("tenant", o.channel.tenant_id), ("wallet", o.channel.wallet_id)):
            assert measure(s, column, scope_id, BUDGETS, NOW) == measure_by_scan(s, column, scope_id, BUDGETS, NOW)
        use = measure(s, "tenant", o.channel.tenant_id, DAY, NOW)["day"]
    return use.reserved, use.spent


def _payment(app, o: OpenedWithPayment) -> Payment:
    with app.db.read() as s:
        p = s.get(Payment, o.payment_id)
        s.expunge(p)
        return p


def _channel(app, o: OpenedWithPayment) -> Channel:
    with app.db.read() as s:
        c = s.get(Channel, o.channel.handle)
        s.expunge(c)
        return c


def _audit(app, o: OpenedWithPayment, action: str) -> list[dict]:
    with app.db.read() as s:
        rows = s.scalars(select(AuditEvent.details).where(AuditEvent.tenant_id == o.channel.tenant_id,
                                                          AuditEvent.action == action).order_by(AuditEvent.seq))
        return [json.loads(d) for d in rows]


def _mined(o: OpenedWithPayment, gas_used: int = 500_000, gas_price: int = 20_000_000_000) -> Mined:
    return Mined(o.open_tx, True, 3, gas_used, gas_price)


def _settle_open(app, o: OpenedWithPayment, mined: Mined) -> None:
    with app.db.transaction() as s:
        p = s.get(Payment, o.payment_id)
        assert lifecycle.advance(s, p, lifecycle.mined_change(mined), from_states=lifecycle.LIVE, now_ms=NOW,
                                 actor="test")


def test_a_close_stops_counting_what_came_back_once(app):
    o = _opened(app)
    assert _day(app, o) == (DEPOSIT + FEE_MAX, 0)
    mined = _mined(o)
    fee = tempo_gas.fee(mined.gas_used, mined.gas_price)
    assert 0 < fee < FEE_MAX
    _settle_open(app, o, mined)
    assert _day(app, o) == (0, DEPOSIT + fee)  # the whole deposit spent, the fee trued up
    # The payee took 30,000 by settling, 20,000 more at the close; 150,000 came back.
    closed = ChannelClosed(_log(o, 10), settled_to_payee=20_000, refunded_to_payer=150_000)
    assert _apply(app, Settled(_log(o, 9), 30_000, 30_000, 30_000)) == "channel.settled"
    assert _apply(app, closed) == "channel.closed"
    assert _day(app, o) == (0, 50_000 + fee)
    p = _payment(app, o)
    assert (p.state, p.amount, p.amount_common, p.fee_common, p.fee_paid) == ("settled", DEPOSIT, 50_000 + fee,
                                                                             fee, fee)
    c = _channel(app, o)
    assert (c.state, c.last_event) == ("closed", closed.log.position)
    (audited,) = _audit(app, o, "channel.closed")
    assert audited["settled_to_payee"] == "20000" and audited["refunded_to_payer"] == "150000"
    assert audited["tx_hash"] == closed.log.tx_hash and (audited["from"], audited["to"]) == ("open", "closed")
    assert (audited["counted_before"], audited["counted_after"]) == (DEPOSIT + fee, 50_000 + fee)
    assert [a["delta_paid"] for a in _audit(app, o, "channel.settled")] == ["30000"]
    # Seen again (another pass, another worker): nothing moves, nothing more is audited.
    assert _apply(app, closed) is None
    assert _apply(app, Settled(_log(o, 9), 30_000, 30_000, 30_000)) is None
    assert _apply(app, ChannelClosed(_log(o, 11), 0, 200_000)) is None  # closed is closed
    assert _day(app, o) == (0, 50_000 + fee)
    assert len(_audit(app, o, "channel.closed")) == 1 and len(_audit(app, o, "channel.settled")) == 1
    with pytest.raises(FailedPrecondition, match="closed: it takes no more vouchers"):
        app.channels.sign_voucher(o.channel.tenant_id, o.channel.handle, 1)


def test_a_close_seen_before_the_open_settles_settles_it_from_its_receipt(app):
    o = _opened(app)
    closed = ChannelClosed(_log(o, 10), settled_to_payee=DEPOSIT, refunded_to_payer=0)
    with app.db.read() as s:
        assert channel_lifecycle.open_to_settle(s, NETWORK, closed) == o.open_tx
        assert channel_lifecycle.open_to_settle(s, NETWORK, Settled(_log(o, 9), 1, 1, 1)) is None
    mined = _mined(o, gas_used=300_000)
    fee = tempo_gas.fee(mined.gas_used, mined.gas_price)
    assert _apply(app, closed, mined) == "channel.closed"
    p = _payment(app, o)
    assert (p.state, p.tx_hash, p.fee_paid, p.amount_common) == ("settled", o.open_tx, fee, DEPOSIT + fee)
    assert _day(app, o) == (0, DEPOSIT + fee)  # nothing came back: all of it spent
    assert _audit(app, o, "payment.settled") and _audit(app, o, "channel.closed")
    with app.db.read() as s:
        assert channel_lifecycle.open_to_settle(s, NETWORK, closed) is None
    # The receipt, processed late, finds the payment settled already: it moves nothing.
    _p = _payment(app, o)
    with app.db.transaction() as s:
        assert not lifecycle.advance(s, _p, lifecycle.mined_change(mined), from_states=lifecycle.LIVE, now_ms=NOW,
                                     actor="test")
    assert _day(app, o) == (0, DEPOSIT + fee)


def test_a_close_whose_open_receipt_is_not_found_keeps_the_reserved_fee(app):
    o = _opened(app)
    assert _apply(app, ChannelClosed(_log(o, 10), settled_to_payee=1, refunded_to_payer=DEPOSIT - 1)) \
        == "channel.closed"
    p = _payment(app, o)
    assert (p.state, p.state_reason, p.fee_paid) == ("settled", "channel_closed_on_chain", None)
    # 1 of 200,000 spent is counted as one whole unit, and the fee as reserved (its most).
    assert _day(app, o) == (0, 1 + FEE_MAX) and p.amount_common == 1 + FEE_MAX


def test_a_close_request_stops_vouchers_until_cancelled_and_older_events_never_undo_newer(app):
    o = _opened(app)
    tenant, handle = o.channel.tenant_id, o.channel.handle
    app.channels.sign_voucher(tenant, handle, 10)
    requested = CloseRequested(_log(o, 20, 1), grace_end=1_800_000_000)
    assert _apply(app, requested) == "channel.close_requested"
    assert _channel(app, o).state == "closing"
    with pytest.raises(FailedPrecondition, match="closing: it takes no more vouchers") as refused:
        app.channels.sign_voucher(tenant, handle, 10)
    assert refused.value.reason == "channel_not_open"
    assert _apply(app, requested) is None
    cancelled = CloseRequestCancelled(_log(o, 21))
    assert _apply(app, cancelled) == "channel.close_cancelled"
    assert _channel(app, o).state == "open"
    assert app.channels.sign_voucher(tenant, handle, 10).cumulative == 20
    # A late worker re-applying the request (older than the cancellation) changes nothing.
    assert _apply(app, requested) is None
    assert _channel(app, o).state == "open"
    # A cancellation older than a newer request does not reopen the channel either.
    again = CloseRequested(_log(o, 30), grace_end=1_800_000_100)
    assert _apply(app, again) == "channel.close_requested"
    assert _apply(app, CloseRequestCancelled(_log(o, 25))) is None
    assert _channel(app, o).state == "closing"
    assert [a["to"] for a in _audit(app, o, "channel.close_requested")] == ["closing", "closing"]
    assert _day(app, o) == (DEPOSIT + FEE_MAX, 0)  # none of this moves money


def test_events_of_channels_teller_does_not_hold_change_nothing(app):
    o = _opened(app)
    stranger = EventLog(ESCROW, "0x" + "ee" * 32, o.channel.address, o.channel.address, "0x" + "01" * 32, 5, 0)
    assert _apply(app, ChannelClosed(stranger, 0, DEPOSIT)) is None
    elsewhere = EventLog("0x" + "00" * 19 + "02", o.channel.channel_id, o.channel.address, o.channel.address,
                         "0x" + "01" * 32, 5, 0)
    assert _apply(app, ChannelClosed(elsewhere, 0, DEPOSIT)) is None
    assert _channel(app, o).state == "open" and _day(app, o) == (DEPOSIT + FEE_MAX, 0)


def test_workers_applying_one_close_at_once_apply_it_once(app):
    o = _opened(app)
    _settle_open(app, o, _mined(o))
    fee = _payment(app, o).fee_paid
    closed = ChannelClosed(_log(o, 10), settled_to_payee=70_000, refunded_to_payer=130_000)
    barrier = threading.Barrier(4)
    results: list[str | None] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            results.append(_apply(app, closed))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(results, key=str) == [None, None, None, "channel.closed"]
    assert _day(app, o) == (0, 70_000 + fee)


class EscrowChain(ChainReader):
    """A chain reader that serves made-up escrow events and open receipts (no node)."""

    def __init__(self, head: int) -> None:
        super().__init__({NETWORK: "http://127.0.0.1:9"})
        self.block = head
        self.events: list[ChannelEvent] = []
        self.receipts: dict[str, Mined] = {}
        self.asked: list[tuple[tuple[str, ...], tuple[str, ...], int, int]] = []

    def head(self, network: str) -> Block:
        return Block(self.block, T0 // 1000)

    def authorization_events(self, *args, **kw):
        return []

    def mined(self, network: str, tx_hash: str) -> Mined | None:
        return self.receipts.get(tx_hash)

    def channel_events(self, network, escrows, channel_ids, from_block, to_block):
        self.asked.append((tuple(escrows), tuple(channel_ids), from_block, to_block))
        return [e for e in self.events if from_block <= e.log.block <= to_block
                and e.log.channel_id in channel_ids and e.log.escrow in escrows]


def test_the_reconciler_follows_channels_from_a_cursor_of_their_own(app):
    chain = EscrowChain(head=100)
    reconciler = Reconciler(app.db, chain, lookback_blocks=50, chunk_blocks=20, use_lease=False)
    o, gone = _opened(app), _opened(app)
    with app.db.transaction() as s:
        s.get(Channel, gone.channel.handle).state = "closed"
    chain.receipts[o.open_tx] = _mined(o)
    chain.events = [Settled(_log(o, 60), 5_000, 5_000, 5_000), CloseRequested(_log(o, 70), 1),
                    ChannelClosed(_log(o, 95), settled_to_payee=15_000, refunded_to_payer=180_000)]
    first = reconciler.run_once()
    assert not first.errors
    assert dict(first.transitions) == {"settled": 1, "channel.settled": 1, "channel.close_requested": 1,
                                       "channel.closed": 1}
    fee = _payment(app, o).fee_paid
    assert _day(app, o) == (0, 20_000 + fee)
    # Only Teller's open and closing channels are asked for, in chunks from the lookback on.
    assert {ids for _, ids, _, _ in chain.asked} == {(o.channel.channel_id,)}
    assert [(a, b) for _, _, a, b in chain.asked] == [(51, 70), (71, 90), (91, 100)]
    with app.db.read() as s:
        cursors = dict(s.execute(select(ChainCursor.network, ChainCursor.block)).all())
    assert cursors == {NETWORK: 100, CHANNEL_CURSOR + NETWORK: 100}
    # The next pass reads from its cursor on, and finds nothing left to follow.
    chain.block = 130
    chain.asked.clear()
    second = reconciler.run_once()
    assert not second.errors and not second.transitions
    assert chain.asked == []  # no channel is open or closing
    with app.db.read() as s:
        assert s.scalar(select(ChainCursor.block).where(ChainCursor.network == CHANNEL_CURSOR + NETWORK)) == 130
        assert s.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "channel.closed")) == 1
