"""Budget windows are summed from per-minute buckets; the buckets must always
agree with the payments themselves, through every lifecycle transition."""

from __future__ import annotations

import random

from sqlalchemy import select, text

from teller import lifecycle
from teller.db import Database, make_engine, upgrade
from teller.db.models import Payment
from teller.spend.ledger import WINDOWS_PG_SQL, bucket_delta
from teller.spend.rules import Budget
from teller.spend.store import _windows_statement, measure, measure_by_scan
from teller.states import PaymentState
from tests.support.harness import RunningTeller, make_settings
from tests.support.x402_server import sdk_v2_challenge


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


BUDGETS = [Budget("r90s", 10**12, rolling_ms=90_000), Budget("r1h", 10**12, rolling_ms=3_600_000),
           Budget("hour", 10**12, calendar="hour"), Budget("day", 10**12, calendar="day")]


def _agree(db: Database, tenant_id: str, wallet_id: str, now_ms: int) -> None:
    with db.transaction() as s:
        for column, scope_id in (("tenant", tenant_id), ("wallet", wallet_id)):
            assert measure(s, column, scope_id, BUDGETS, now_ms) == \
                measure_by_scan(s, column, scope_id, BUDGETS, now_ms), (column, now_ms)


def test_buckets_follow_every_transition(db_url, tmp_path):
    clock = Clock(1_795_000_000.0)
    running = RunningTeller(make_settings(db_url, tmp_path), clock=clock)
    db = Database(make_engine(db_url, 2))
    rng = random.Random(7)
    try:
        t = running.setup_tenant()
        client = running.client(t.token)
        for i in range(40):
            clock.t += rng.uniform(0.5, 20.0)  # spread over minute boundaries
            c = sdk_v2_challenge(amount=str(rng.randint(1, 5000)))
            client.sign(status=c.status, headers=c.headers, body=c.body, url=c.url, wallet_id=t.wallet_id)
            if i % 7 == 0:
                _agree(db, t.tenant_id, t.wallet_id, int(clock.t * 1000))
        with db.transaction() as s:
            rows = list(s.scalars(select(Payment).order_by(Payment.created_ms)))
            for s_row in rows:
                s.expunge(s_row)
        now = int(clock.t * 1000)
        for i, p in enumerate(rows):
            with db.transaction() as s:
                kind = i % 5
                if kind == 0:
                    lifecycle.advance(s, p, lifecycle.Change("settled", release=False, tx_hash="0x" + "1" * 64),
                                      from_states=lifecycle.LIVE, now_ms=now, actor="test")
                elif kind == 1:
                    lifecycle.advance(s, p, lifecycle.Change("expired", release=True), from_states=lifecycle.LIVE,
                                      now_ms=now, actor="test")
                elif kind == 2:
                    lifecycle.advance(s, p, lifecycle.Change("failed", release=False, reason="refused"),
                                      from_states=lifecycle.LIVE, now_ms=now, actor="test")
        # failed ones later proven unusable, one settled after failing
        with db.transaction() as s:
            failed = list(s.scalars(select(Payment).where(Payment.state == "failed")))
            for s_row in failed:
                s.expunge(s_row)
        for j, p in enumerate(failed):
            with db.transaction() as s:
                change = lifecycle.Change("settled", release=False) if j == 0 else lifecycle.Change(
                    "failed", release=True, reason="refused")
                lifecycle.advance(s, p, change, from_states=lifecycle.LIVE, now_ms=now, actor="test")
        for offset in (0, 30_000, 75_000, 600_000, 3_000_000):
            _agree(db, t.tenant_id, t.wallet_id, now + offset)
        # A second transition of the same payment changes nothing, buckets included.
        with db.transaction() as s:
            assert not lifecycle.advance(s, rows[1], lifecycle.Change("expired", release=True),
                                         from_states=lifecycle.LIVE, now_ms=now, actor="test")
        _agree(db, t.tenant_id, t.wallet_id, now)
    finally:
        db.engine.dispose()
        running.stop()


def test_migration_fills_buckets_from_existing_payments(db_url):
    upgrade(db_url, "0004")
    engine = make_engine(db_url, 2)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, name, state, created_ms) VALUES ('t1', 'old', 'active', 1)"))
        conn.execute(text("INSERT INTO wallets (id, tenant_id, label, address, state, kek_version, wrapped_data_key, "
                          "key_ciphertext, created_ms) VALUES ('w1', 't1', '', '0x1', 'active', 'k', :b, :b, 1)"),
                     {"b": b"x"})
        base = 1_795_000_000_000
        for i, (state, released) in enumerate([("signed", None), ("settled", None), ("expired", 5), ("failed", None),
                                               ("signed", None), ("failed", 7)]):
            conn.execute(text(
                "INSERT INTO payments (id, tenant_id, wallet_id, protocol, version, scheme, network, asset, pay_to, "
                "amount, amount_common, resource_url, nonce, valid_before, state, header_name, header_value, "
                "request_hash, created_ms, released_ms) VALUES (:id, 't1', 'w1', 'x402', 2, 'exact', 'eip155:1', "
                "'0xa', '0xb', :a, :a, '', :id, 1, :state, 'h', 'v', 'r', :c, :rel)"),
                {"id": f"p{i}", "a": 100 * (i + 1), "state": state, "c": base + i * 45_000, "rel": released})
    upgrade(db_url)
    db = Database(engine)
    try:
        for offset in (0, 60_000, 200_000):
            _agree(db, "t1", "w1", base + 300_000 + offset)
        with db.transaction() as s:
            use = measure(s, "tenant", "t1", [Budget("day", 10**12, calendar="day")], base + 300_000)
        assert (use["day"].reserved, use["day"].spent) == (100 + 400 + 500, 200)
    finally:
        engine.dispose()


def test_window_cost_does_not_grow_with_history():
    """Sums read buckets, not payments: in both forms of the window query (any
    database, and PostgreSQL's) every read of payments is bounded to the edge
    minute (created_ms < the edge's end)."""
    for sql in (WINDOWS_PG_SQL, str(_windows_statement(2))):
        reads = sql.split("FROM payments")[1:]
        assert len(reads) == 4  # reserved and spent, tenant and wallet scope
        assert all("p.created_ms >= v.st AND p.created_ms < v.ed" in r.split(")")[0] for r in reads)


def test_one_delta_rule_reserves_settles_and_releases():
    """Reserving, settling (at a trued-up amount) and releasing all use bucket_delta;
    whatever path a payment takes, what it moved nets to what it still holds."""
    signed, settled, failed = PaymentState.SIGNED, PaymentState.SETTLED, PaymentState.FAILED
    assert bucket_delta(None, 0, signed, 700) == (700, 0)
    assert bucket_delta(None, 0, settled, 0) == (0, 0)  # a zero-amount proof, spent at once
    assert bucket_delta(signed, 700, settled, 650) == (-700, 650)  # the fee trued up on settling
    assert bucket_delta(failed, 700, settled, 700) == (-700, 700)
    assert bucket_delta(signed, 700, failed, 700) == (0, 0)  # still reserved
    assert bucket_delta(failed, 700, None, 0) == (-700, 0)
    assert bucket_delta(settled, 650, None, 0) == (0, -650)
    for path in ([signed, settled], [signed, failed, None], [signed, failed, settled], [signed, None]):
        held, state, moved = 700, None, (0, 0)
        for new in path:
            amount = 650 if new == settled else held
            step = bucket_delta(state, held if state else 0, new, amount)
            moved = (moved[0] + step[0], moved[1] + step[1])
            state, held = new, amount
        assert moved == ((0, 0) if state is None else bucket_delta(None, 0, state, held)), path
