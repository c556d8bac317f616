"""A forced close on SQLite and PostgreSQL: the wallet's requestClose and withdraw
each hold their fee against the budgets as a payment of amount 0, and each is
sent once per channel however many workers try at the same moment. The chain
is a reader that records what is broadcast (the e2e test in
tests/e2e/test_teller_forced_close.py sends them to mppx's testbed)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from sqlalchemy import select

from teller.app import build
from teller.chain import Block, ChainReader, Mined
from teller.channels import lifecycle as channel_lifecycle
from teller.channels.forced import ForcedClose
from teller.db.models import AuditEvent, Channel, Payment
from teller.errors import LimitExceeded, Unavailable
from teller.mpp import gas as tempo_gas
from teller.mpp.channel import _REQUEST_CLOSE, _WITHDRAW
from teller.mpp.channel_events import CloseRequestCancelled, CloseRequested, EventLog
from teller.reconciler import Reconciler
from teller.schemes.mpp_tempo import tx_hash
from teller.spend.rules import Budget
from teller.spend.store import measure
from tests.support.channels import ESCROW, NETWORK, OpenedWithPayment, open_with_payment
from tests.support.harness import make_settings

GRACE_END = 1_800_000_000
GAS_LIMIT, GAS_PRICE, GAS_USED = 100_000, 20_000_000_000, 60_000
FEE_MAX = tempo_gas.max_fee(GAS_LIMIT, GAS_PRICE)
FEE = tempo_gas.fee(GAS_USED, GAS_PRICE)
DAY = [Budget("day", 10**12, calendar="day")]


class ForcingChain(ChainReader):
    """Estimates, broadcasts (mined after a moment, so racing workers overlap) and
    the CloseRequested of each requestClose broadcast."""

    def __init__(self) -> None:
        super().__init__({NETWORK: "http://127.0.0.1:9"})
        self.sent: list[bytes] = []
        self.lock = threading.Lock()
        self.lose_next = False

    def head(self, network: str) -> Block:
        return Block(100, GRACE_END + 1)

    def gas_price(self, network: str, cached_only: bool = False) -> int:
        return GAS_PRICE

    def tempo_gas_limit(self, network, sender, key, build, cached_only=False, fresh=True) -> int:
        assert not fresh  # requestClose and withdraw name the payer first: no fresh recipient
        build()
        return GAS_LIMIT

    def authorization_events(self, *args, **kw):
        return []

    def mined(self, network: str, tx: str) -> Mined | None:
        return None  # a transaction the broadcast lost: never mined

    def broadcast(self, network: str, raw: bytes, wait_s: float = 30.0) -> Mined:
        if self.lose_next:
            self.lose_next = False
            raise Unavailable("broadcast on eip155:31337 failed: the node went away")
        time.sleep(0.3)
        with self.lock:
            self.sent.append(raw)
            block = 100 + len(self.sent)
        return Mined(tx_hash(raw), True, block, GAS_USED, GAS_PRICE)

    def channel_events(self, network, escrows, channel_ids, from_block, to_block):
        out = []
        for i, raw in enumerate(self.sent):
            if 101 + i in range(from_block, to_block + 1) and _calls(raw, _REQUEST_CLOSE):
                log = EventLog(ESCROW, channel_ids[0], "0x" + "00" * 19 + "01", "0x" + "00" * 19 + "02",
                               tx_hash(raw), 101 + i, 0)
                out.append(CloseRequested(log, GRACE_END))
        return out

    def of(self, selector: bytes) -> list[bytes]:
        return [raw for raw in self.sent if _calls(raw, selector)]


def _calls(raw: bytes, selector: bytes) -> bool:
    """Whether the signed transaction calls ``selector`` (its calldata is in the raw bytes)."""
    return selector in raw


@pytest.fixture
def app(db_url, tmp_path):
    built = build(make_settings(db_url, tmp_path), migrate=True)
    yield built
    built.close()


def _opened(app, day_limit: int = 10**12) -> OpenedWithPayment:
    o = open_with_payment(app, 200_000, fee_max=20_000, fee_common=20_000, created_ms=int(time.time() * 1000))
    app.admin.set_policy(o.channel.tenant_id, {"allow_unknown_assets": True,
                                              "budgets": [{"name": "day", "limit": day_limit, "window": "day"}]})
    return o


def _day(app, o: OpenedWithPayment) -> tuple[int, int]:
    with app.db.read() as s:
        use = measure(s, "tenant", o.channel.tenant_id, DAY, int(time.time() * 1000))["day"]
    return use.reserved, use.spent


def _audit(app, o: OpenedWithPayment, action: str) -> list[dict]:
    with app.db.read() as s:
        rows = s.scalars(select(AuditEvent.details).where(AuditEvent.tenant_id == o.channel.tenant_id,
                                                          AuditEvent.action == action).order_by(AuditEvent.seq))
        return [json.loads(d) for d in rows]


def _channel(app, o: OpenedWithPayment) -> Channel:
    with app.db.read() as s:
        c = s.get(Channel, o.channel.handle)
        s.expunge(c)
        return c


def test_racing_reconcilers_send_one_withdraw(app):
    chain = ForcingChain()
    o = _opened(app)
    tenant, handle = o.channel.tenant_id, o.channel.handle
    forced = ForcedClose(app.db, app.vault, chain).request(tenant, handle, actor="test")
    assert (forced.grace_end, forced.fee_paid) == (GRACE_END, FEE)
    assert len(chain.of(_REQUEST_CLOSE)) == 1 and _channel(app, o).state == "closing"
    # The open's deposit and fee are still held; the request's fee is spent at what it cost.
    assert _day(app, o) == (200_000 + 20_000, FEE)
    # Asked again: the same request; nothing is sent twice.
    assert ForcedClose(app.db, app.vault, chain).request(tenant, handle) == forced
    assert len(chain.of(_REQUEST_CLOSE)) == 1

    workers = 4
    barrier = threading.Barrier(workers)
    sent: list[list[str]] = []
    errors: list[object] = []

    def replica(skew: int) -> None:
        # Each worker is a reconciler replica of its own (its own ForcedClose), on one
        # database, its head a second apart: each signs a transaction of its own (two
        # signed in one second would be one, which the payments' nonce key refuses twice).
        mine = ForcedClose(app.db, app.vault, chain)
        try:
            barrier.wait()
            sent.append(mine.withdraw_due(NETWORK, Block(100, GRACE_END + 1 + skew), errors.append))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(len(s) for s in sent) == [0] * (workers - 1) + [1]
    assert len(chain.of(_WITHDRAW)) == 1
    c = _channel(app, o)
    with app.db.read() as s:
        fee_rows = list(s.scalars(select(Payment).where(Payment.tenant_id == tenant, Payment.amount == 0)))
    assert sorted(p.id for p in fee_rows) == sorted([c.force_payment_id, c.withdraw_payment_id])
    assert {(p.state, p.fee_max, p.fee_paid, p.pay_to) for p in fee_rows} == {("settled", FEE_MAX, FEE, ESCROW)}
    assert _day(app, o) == (200_000 + 20_000, 2 * FEE)
    (withdraw,) = _audit(app, o, "channel.withdraw")
    assert (withdraw["tx_hash"], withdraw["fee_max"], withdraw["from"]) == (
        tx_hash(chain.of(_WITHDRAW)[0]), FEE_MAX, "closing")
    assert len(_audit(app, o, "channel.force_close")) == 1
    # A later pass finds the withdraw mined and sends nothing more.
    assert ForcedClose(app.db, app.vault, chain).withdraw_due(NETWORK, chain.head(NETWORK), errors.append) == []
    assert len(chain.of(_WITHDRAW)) == 1 and not errors


def test_a_fee_the_budget_cannot_hold_sends_nothing(app):
    chain = ForcingChain()
    o = _opened(app, day_limit=200_000 + 20_000 + FEE_MAX - 1)
    with pytest.raises(LimitExceeded, match="day") as refused:
        ForcedClose(app.db, app.vault, chain).request(o.channel.tenant_id, o.channel.handle, actor="test")
    assert refused.value.reason == "budget_exhausted:day"
    assert chain.sent == [] and _channel(app, o).state == "open"
    (audited,) = _audit(app, o, "channel.force_close_refused")
    assert audited["fee_max"] == FEE_MAX and audited["remaining"] == str(FEE_MAX - 1)
    assert _day(app, o) == (200_000 + 20_000, 0)


def test_no_withdraw_before_the_grace_period_ends_or_after_a_cancellation(app):
    chain = ForcingChain()
    o = _opened(app)
    ForcedClose(app.db, app.vault, chain).request(o.channel.tenant_id, o.channel.handle)
    errors: list[str] = []
    early = Block(100, GRACE_END - 1)  # withdraw reverts before the grace end: not even estimated
    assert ForcedClose(app.db, app.vault, chain).withdraw_due(NETWORK, early, errors.append) == []
    assert chain.of(_WITHDRAW) == [] and not errors


def test_a_request_lost_in_the_broadcast_expires_and_may_be_sent_again_and_a_cancellation_reopens(app):
    chain = ForcingChain()
    o = _opened(app)
    tenant, handle = o.channel.tenant_id, o.channel.handle
    chain.lose_next = True
    with pytest.raises(Unavailable, match="was sent, not seen mined"):
        ForcedClose(app.db, app.vault, chain).request(tenant, handle)
    lost = _channel(app, o).force_payment_id
    assert _channel(app, o).state == "closing" and chain.sent == []
    # Its fate is unknown: asked again meanwhile, the same request, nothing sent.
    again = ForcedClose(app.db, app.vault, chain).request(tenant, handle)
    assert (again.payment_id, again.grace_end) == (lost, None) and chain.sent == []
    assert _day(app, o) == (200_000 + 20_000 + FEE_MAX, 0)
    # The reconciler sees its deadline pass unmined (the head's time is past it): released.
    result = Reconciler(app.db, chain, use_lease=False, forced=ForcedClose(app.db, app.vault, chain)).run_once()
    assert result.transitions["expired"] == 1 and not result.errors, result
    assert _day(app, o) == (200_000 + 20_000, 0)
    # Now a new request may go out.
    sent = ForcedClose(app.db, app.vault, chain).request(tenant, handle)
    assert sent.payment_id != lost and sent.grace_end == GRACE_END and len(chain.of(_REQUEST_CLOSE)) == 1
    # A top-up on chain cancels the request: open again, nothing to withdraw, vouchers again.
    log = EventLog(ESCROW, o.channel.channel_id, o.channel.address, "0x" + "00" * 19 + "02", "0x" + "ab" * 32,
                   500, 0)
    with app.db.transaction() as s:
        assert channel_lifecycle.apply(s, NETWORK, CloseRequestCancelled(log), now_ms=int(time.time() * 1000),
                                       actor="test") == "channel.close_cancelled"
    c = _channel(app, o)
    assert (c.state, c.grace_end, c.force_payment_id) == ("open", None, None)
    assert ForcedClose(app.db, app.vault, chain).withdraw_due(NETWORK, chain.head(NETWORK), print) == []
    assert app.channels.sign_voucher(tenant, handle, 10).cumulative == 10
