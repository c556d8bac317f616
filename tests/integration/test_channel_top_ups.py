"""Topping up a session channel through the Sign path, on SQLite and PostgreSQL:
one top-up however many callers find the channel exhausted at once; the
policy's max_channel_deposit bounds it (or refuses it: channel_deposit_exhausted);
a top-up never mined lowers the deposit again; a retry under its key is the
same top-up. The chain's part (gas price, estimate) is stubbed here: the proof
against mppx and the chain is tests/e2e/test_teller_session_top_up.py."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from teller import lifecycle
from teller.app import build
from teller.callers import Caller
from teller.db.models import AuditEvent, ChannelTopUp, Payment
from teller.errors import FailedPrecondition, LimitExceeded, Unavailable
from teller.sign.call import sign_input
from teller.states import PaymentState
from testbed.channels import CHAIN_ID, ESCROW, NETWORK, TOKEN
from tests.support.harness import make_settings

PRICE = 100
DEPOSIT = 1_000  # the server's suggested deposit: ten units
PAYEE = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
URL = "http://payee.test/metered"
GAS = 900_000
GAS_PRICE = 20_000_000_000  # 18 fee-token units of fee per 900,000 gas


@pytest.fixture
def app(db_url, tmp_path):
    built = build(make_settings(db_url, tmp_path, session_escrows={NETWORK: ESCROW}), migrate=True)
    chain = built.payments.chain
    chain.gas_price = lambda network, cached_only=False: GAS_PRICE  # type: ignore[method-assign]
    chain.tempo_gas_limit = lambda *a, **k: GAS  # type: ignore[method-assign]
    delivered: list[str] = []
    built.payments.deliver_top_up = lambda url, name, value: delivered.append(value)
    built.delivered = delivered  # type: ignore[attr-defined]
    yield built
    built.close()


def _b64(doc: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def _challenge() -> tuple[tuple[str, str], ...]:
    request = {"amount": str(PRICE), "currency": TOKEN, "recipient": PAYEE, "unitType": "request",
               "suggestedDeposit": str(DEPOSIT),
               "methodDetails": {"escrowContract": ESCROW, "chainId": CHAIN_ID, "sessionProtocol": "v2"}}
    return (("WWW-Authenticate", f'Payment id="c{threading.get_ident()}", realm="payee.test", method="tempo", '
                                 f'intent="session", request="{_b64(request)}", expires="2999-01-01T00:00:00Z"'),)


class Tenant:
    def __init__(self, app, policy: dict | None = None) -> None:
        self.app = app
        self.tenant_id = app.admin.create_tenant("top-up").id
        self.wallet_id = app.admin.create_wallet(self.tenant_id, "main").id
        app.admin.set_policy(self.tenant_id, {"allow_unknown_assets": True, **(policy or {})})

    def sign(self, key: str = ""):
        req = sign_input(status=402, headers=_challenge(), body=b"", url=URL, method="GET",
                         wallet_id=self.wallet_id, max_amount="", idempotency_key=key)
        return self.app.payments.sign(Caller(self.tenant_id, "tok"), req)

    def call(self, key: str = ""):
        req = sign_input(status=402, headers=_challenge(), body=b"", url=URL, method="GET",
                         wallet_id=self.wallet_id, max_amount="", idempotency_key=key)
        return self.app.payments.prepare(Caller(self.tenant_id, "tok"), req)

    def channel(self):
        (c,) = self.app.channels.of_tenant(self.tenant_id)
        return c

    def top_ups(self) -> list[tuple[str, int, int]]:
        with self.app.db.read() as s:
            return [tuple(r) for r in s.execute(select(ChannelTopUp.payment_id, ChannelTopUp.deposit_before,
                                                       ChannelTopUp.added).order_by(ChannelTopUp.deposit_before))]

    def exhaust(self) -> None:
        """Open the channel (ten units' deposit) and spend all of it."""
        opened = self.sign()
        assert opened.payment_id and opened.amount == DEPOSIT
        for _ in range(9):
            assert self.sign().payment_id == ""
        c = self.channel()
        assert (c.deposit, c.cumulative) == (DEPOSIT, DEPOSIT)


def _payload(result) -> dict:
    encoded = result.header_value.split(" ", 1)[1]
    return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))["payload"]


def test_an_exhausted_channel_is_topped_up_reserved_and_audited_then_the_voucher_fits(app):
    t = Tenant(app, {"budgets": [{"name": "day", "window": "day", "limit": "100000"}]})
    t.exhaust()
    held = app.admin.spend(t.tenant_id)[0].reserved
    voucher = t.sign()
    # The caller's answer is the voucher; the top-up went to the server first.
    assert _payload(voucher)["action"] == "voucher" and _payload(voucher)["cumulativeAmount"] == str(DEPOSIT + PRICE)
    (sent,) = app.delivered
    top = json.loads(base64.urlsafe_b64decode(sent.split(" ", 1)[1] + "=="))["payload"]
    assert (top["action"], top["additionalDeposit"], top["transaction"][:4]) == ("topUp", str(DEPOSIT), "0x76")
    c = t.channel()
    assert (c.deposit, c.cumulative) == (2 * DEPOSIT, DEPOSIT + PRICE)
    ((payment_id, before, added),) = t.top_ups()
    assert (before, added) == (DEPOSIT, DEPOSIT)
    # Reserved like the open: what it adds and its most expensive fee.
    fee = -(-GAS * GAS_PRICE // 10**12)
    assert app.admin.spend(t.tenant_id)[0].reserved == held + DEPOSIT + fee
    with app.db.read() as s:
        p = s.get(Payment, payment_id)
        assert (p.amount, p.fee_max, p.amount_common, p.state) == (DEPOSIT, fee, DEPOSIT + fee, "signed")
        details = json.loads(s.scalar(select(AuditEvent.details).where(AuditEvent.payment_id == payment_id,
                                                                       AuditEvent.action == "payment.sign")))
    assert (details["action"], details["channel"], details["deposit"]) == ("topUp", c.id, 2 * DEPOSIT)


def test_callers_that_find_the_channel_exhausted_at_once_top_it_up_once(app):
    t = Tenant(app)
    t.exhaust()
    totals: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def caller() -> None:
        start.wait()
        try:
            got = int(_payload(t.sign())["cumulativeAmount"])
        except BaseException as exc:  # the test reads it
            with lock:
                errors.append(exc)
            return
        with lock:
            totals.append(got)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    assert sorted(totals) == [DEPOSIT + PRICE * n for n in range(1, 9)]
    assert len(t.top_ups()) == 1 and len(app.delivered) == 1
    c = t.channel()
    assert (c.deposit, c.cumulative) == (2 * DEPOSIT, DEPOSIT + 8 * PRICE)


def test_a_cap_bounds_the_top_up_and_a_cap_with_no_room_refuses_it(app):
    t = Tenant(app, {"max_channel_deposit": "1500"})
    t.exhaust()
    t.sign()
    ((_, before, added),) = t.top_ups()
    assert (before, added, t.channel().deposit) == (DEPOSIT, 500, 1500)  # the cap, not the 1,000 suggested
    for _ in range(4):
        t.sign()
    assert t.channel().cumulative == 1500
    with pytest.raises(LimitExceeded, match="max_channel_deposit leaves no room") as refused:
        t.sign()
    assert refused.value.reason == "channel_deposit_exhausted"
    assert len(t.top_ups()) == 1 and t.channel().deposit == 1500
    with app.db.read() as s:
        denied = s.scalar(select(AuditEvent.reason).where(AuditEvent.tenant_id == t.tenant_id,
                                                          AuditEvent.action == "payment.deny"))
    assert denied == "channel_deposit_exhausted"


def test_a_top_up_never_mined_lowers_the_deposit_again(app):
    t = Tenant(app, {"budgets": [{"name": "day", "window": "day", "limit": "100000"}]})
    t.exhaust()
    held = app.admin.spend(t.tenant_id)[0].reserved
    call = t.call()
    assert app.payments.voucher(call) is None and call.top_up is not None
    app.payments.open_facts(call)
    topped = app.payments.finish(app.payments.commit([call])[0])
    assert t.channel().deposit == 2 * DEPOSIT
    assert app.admin.spend(t.tenant_id)[0].reserved > held + DEPOSIT
    with app.db.transaction() as s:
        p = s.get(Payment, topped.payment_id)
        assert lifecycle.advance(s, p, lifecycle.Change(PaymentState.EXPIRED, release=True, reason="expired"),
                                 from_states=lifecycle.LIVE, now_ms=1, actor="test")
    c = t.channel()
    assert (c.deposit, c.cumulative) == (DEPOSIT, DEPOSIT)
    assert app.admin.spend(t.tenant_id)[0].reserved == held  # its reservation released with it
    with app.db.read() as s:
        released = json.loads(s.scalar(select(AuditEvent.details).where(
            AuditEvent.payment_id == topped.payment_id, AuditEvent.action == "payment.expired")))
    assert (released["top_up"], released["channel_deposit"]) == (True, DEPOSIT)
    # The next challenge tops it up again.
    assert _payload(t.sign())["cumulativeAmount"] == str(DEPOSIT + PRICE)
    assert len(t.top_ups()) == 2 and t.channel().deposit == 2 * DEPOSIT


def test_a_retry_under_the_key_is_the_same_top_up_and_the_same_voucher(app):
    t = Tenant(app)
    t.exhaust()
    # The top-up is committed but its caller never got the voucher (its answer was lost).
    call = t.call("retry-1")
    assert app.payments.voucher(call) is None and call.top_up is not None
    app.payments.open_facts(call)
    first = app.payments.finish(app.payments.commit([call])[0])
    # A retry racing into it while the top-up is on its way to the server: no voucher yet ...
    again = t.call("retry-1")
    with pytest.raises(Unavailable) as waiting:
        app.payments.voucher(again)
    assert waiting.value.reason == "top_up_in_flight"
    assert waiting.value.metadata["top_up_payment"] == first.payment_id
    assert t.channel().cumulative == DEPOSIT
    # ... the same top-up again from the batch ...
    app.payments.open_facts(again)
    assert app.payments.finish(app.payments.commit([again])[0]).payment_id == first.payment_id
    app.channels.top_up_delivered(first.payment_id)  # its caller handed it to the server
    # ... and, delivered, the Sign retry gets the voucher the top-up was for, and no second top-up.
    voucher = t.sign("retry-1")
    replay = t.sign("retry-1")
    assert _payload(voucher)["cumulativeAmount"] == str(DEPOSIT + PRICE)
    assert _payload(replay) == _payload(voucher)
    assert [p for p, _, _ in t.top_ups()] == [first.payment_id]
    assert t.channel().deposit == 2 * DEPOSIT


def _top_up_payment(app, o, added: int, fee: int, created_ms: int) -> tuple[str, str]:
    """A top-up of ``o``'s channel as the Sign batch records it: its payment
    (what it adds and the most its fee can be), its row, the deposit raised."""
    import os
    import uuid

    from sqlalchemy import text, update

    from teller.db.models import Channel
    from teller.spend.ledger import BUCKET_ROW_SQL, MINUTE_MS, bucket_delta

    tx = "0x" + os.urandom(32).hex()
    p = Payment(id=str(uuid.uuid4()), tenant_id=o.channel.tenant_id, wallet_id=o.channel.wallet_id, protocol="mpp",
                version=1, scheme="tempo/session", network=NETWORK, asset=TOKEN, pay_to=PAYEE, amount=added,
                amount_common=added + fee, fee_max=fee, fee_common=fee, resource_url=URL, nonce=tx,
                valid_before=2**40, state="signed", header_name="Authorization", header_value="Payment x",
                request_hash="0" * 64, created_ms=created_ms, updated_ms=created_ms)
    with app.db.transaction() as s:
        c = s.get(Channel, o.channel.handle)
        s.add(p)
        s.add(ChannelTopUp(payment_id=p.id, channel=c.id, added=added, deposit_before=c.deposit,
                           created_ms=created_ms))
        s.execute(update(Channel).where(Channel.id == c.id).values(deposit=c.deposit + added))
        reserved, spent = bucket_delta(None, 0, "signed", p.amount_common)
        s.execute(text(BUCKET_ROW_SQL), [{"scope": scope, "scope_id": sid, "minute": created_ms // MINUTE_MS,
                                          "reserved": reserved, "spent": spent}
                                         for scope, sid in (("tenant", o.channel.tenant_id),
                                                            ("wallet", o.channel.wallet_id))])
    return p.id, tx


def test_a_close_counts_exactly_what_the_payee_got_across_the_open_and_its_top_ups(app):
    """The refund comes back to the newest deposits first: the last top-up whole,
    then part of the one before; together the payments count the payee's share
    and each its own fee, to the unit."""
    from teller.chain import Mined
    from teller.channels import lifecycle as channel_lifecycle
    from teller.mpp import gas as tempo_gas
    from teller.mpp.channel_events import ChannelClosed, EventLog
    from teller.spend.rules import Budget
    from teller.spend.store import measure
    from tests.support.channels import open_with_payment

    t0 = 1_795_000_000_000
    o = open_with_payment(app, 1_000, fee_max=50, fee_common=50, created_ms=t0)
    tops = [_top_up_payment(app, o, 1_000, 40, t0 + 1_000), _top_up_payment(app, o, 1_000, 40, t0 + 2_000)]
    fees = {}
    for pid, tx, gas in [(o.payment_id, o.open_tx, 2_000_000), *[(p, x, 1_500_000) for p, x in tops]]:
        mined = Mined(tx, True, 3, gas, 2 * 10**7)
        fees[pid] = tempo_gas.fee(gas, 2 * 10**7)  # below the fee reserved: trued down
        with app.db.transaction() as s:
            assert lifecycle.advance(s, s.get(Payment, pid), lifecycle.mined_change(mined),
                                     from_states=lifecycle.LIVE, now_ms=t0 + 3_000, actor="test")
    # The payee got 1,300 of the 3,000 deposited; 1,700 came back.
    log = EventLog(ESCROW, o.channel.channel_id, o.channel.address, PAYEE,
                   "0x" + "77" * 32, 10, 0)
    with app.db.transaction() as s:
        assert channel_lifecycle.apply(s, NETWORK, ChannelClosed(log, 1_300, 1_700), now_ms=t0 + 4_000,
                                       actor="test") == "channel.closed"
    with app.db.read() as s:
        counted = {pid: s.get(Payment, pid).amount_common for pid in fees}
        day = measure(s, "tenant", o.channel.tenant_id, [Budget("day", 10**15, calendar="day")], t0 + 4_000)["day"]
    # The last top-up came back whole, the first top-up 700 of its 1,000, the open none.
    assert counted == {o.payment_id: 1_000 + fees[o.payment_id], tops[0][0]: 300 + fees[tops[0][0]],
                       tops[1][0]: fees[tops[1][0]]}
    assert (day.reserved, day.spent) == (0, 1_300 + sum(fees.values()))


def test_a_top_up_not_mined_by_the_close_holds_none_of_the_deposit(app):
    """The channel closes on chain while a top-up of it was never mined (its POST
    failed): the close counts what the payee got and the open's fee, and the
    top-up stays reserved, not spent, until it can no longer be mined. With its
    receipt (mined), it holds its share like any other."""
    from teller.chain import Mined
    from teller.channels import lifecycle as channel_lifecycle
    from teller.mpp.channel_events import ChannelClosed, EventLog
    from teller.spend.rules import Budget
    from teller.spend.store import measure
    from tests.support.channels import open_with_payment

    t0 = 1_795_000_000_000
    o = open_with_payment(app, 1_000, fee_max=50, fee_common=50, created_ms=t0)
    top, top_tx = _top_up_payment(app, o, 1_000, 40, t0 + 1_000)
    with app.db.transaction() as s:
        assert lifecycle.advance(s, s.get(Payment, o.payment_id), lifecycle.mined_change(
            Mined(o.open_tx, True, 3, 2_000_000, 2 * 10**7)), from_states=lifecycle.LIVE, now_ms=t0 + 2_000,
            actor="test")
        assert channel_lifecycle.top_ups_to_settle(s, NETWORK, ChannelClosed(
            EventLog(ESCROW, o.channel.channel_id, o.channel.address, PAYEE, "0x" + "77" * 32, 10, 0), 300, 700)) \
            == [top_tx]
    log = EventLog(ESCROW, o.channel.channel_id, o.channel.address, PAYEE, "0x" + "77" * 32, 10, 0)
    with app.db.transaction() as s:
        assert channel_lifecycle.apply(s, NETWORK, ChannelClosed(log, 300, 700), now_ms=t0 + 4_000, actor="test",
                                       top_ups_mined={top_tx.lower(): None}) == "channel.closed"
    with app.db.read() as s:
        opened, topped = s.get(Payment, o.payment_id), s.get(Payment, top)
        day = measure(s, "tenant", o.channel.tenant_id, [Budget("day", 10**15, calendar="day")], t0 + 4_000)["day"]
    # The open counts the payee's 300 and its fee; the top-up is still only reserved.
    assert opened.amount_common == 300 + opened.fee_common
    assert (topped.state, topped.released_ms) == ("signed", None)
    assert (day.spent, day.reserved) == (opened.amount_common, topped.amount_common)


def test_a_top_up_key_sent_with_another_request_is_refused_not_a_voucher_on_its_channel(app):
    """A key that made a top-up of one channel, sent again for another payee or
    wallet, gets ALREADY_EXISTS: never a voucher on the topped-up channel for a
    request that did not ask for it (that wallet's policy never judged it)."""
    import dataclasses

    from sqlalchemy import update

    from teller.channels.store import Ask, Wanted
    from teller.errors import AlreadyExists
    from tests.support.channels import open_with_payment

    o = open_with_payment(app, 1_000, fee_max=50, fee_common=50, created_ms=1_795_000_000_000)
    top, _ = _top_up_payment(app, o, 1_000, 40, 1_795_000_001_000)
    with app.db.transaction() as s:
        s.execute(update(Payment).where(Payment.id == top).values(idempotency_key="K"))
    view = app.channels.get(o.channel.tenant_id, o.channel.handle)
    want = Wanted(o.channel.tenant_id, o.channel.wallet_id, view.network, view.escrow, view.payee, view.token,
                  "0x" + "00" * 20)
    before = [t for t, _ in app.channels.vouchers(o.channel.tenant_id, o.channel.handle)]
    for other in (dataclasses.replace(want, payee="0x" + "ab" * 20), dataclasses.replace(want, wallet_id="w-2")):
        (answer,) = app.channels.sign_next_many(other, [Ask(7, idempotency_key="K")])
        assert isinstance(answer, AlreadyExists), answer
    assert [t for t, _ in app.channels.vouchers(o.channel.tenant_id, o.channel.handle)] == before
    # The request it was made for gets the voucher the top-up was for.
    (answer,) = app.channels.sign_next_many(want, [Ask(7, idempotency_key="K")])
    assert answer.channel == o.channel.handle and answer.increment == 7


def _cumulatives(app, t) -> list[int]:
    return [total for total, _ in app.channels.vouchers(t.tenant_id, t.channel().id)]


def test_a_second_call_waits_for_the_top_up_another_is_delivering(app):
    """Two calls find the channel exhausted at once: one tops it up; the other finds the
    room made (Revisit) but the server does not know it until the top-up is delivered, so
    its voucher is signed only once the top-up is recorded as delivered."""
    t = Tenant(app)
    t.exhaust()
    during: list[list[int]] = []
    b_done: list[tuple[float, object]] = []

    def b() -> None:
        try:
            got: object = t.sign()
        except Exception as exc:  # asserted below
            got = exc
        b_done.append((time.monotonic(), got))

    second = threading.Thread(target=b)

    def deliver(url: str, name: str, value: str) -> None:
        app.delivered.append(value)
        second.start()  # the other call, now that the top-up is committed (its deposit recorded)
        time.sleep(0.6)  # the server broadcasts it and reads the deposit back
        during.append(_cumulatives(app, t))
        handed.append(time.monotonic())  # recorded as delivered once this returns

    handed: list[float] = []
    app.payments.deliver_top_up = deliver
    a = t.sign()
    second.join()
    assert during == [[PRICE * i for i in range(1, 11)]]  # nothing signed past the old deposit meanwhile
    ((b_at, b_result),) = b_done
    assert not isinstance(b_result, BaseException), b_result
    assert b_at > handed[0]  # it waited for the delivery
    totals = sorted(int(_payload(r)["cumulativeAmount"]) for r in (a, b_result))
    assert totals == [DEPOSIT + PRICE, DEPOSIT + 2 * PRICE]
    assert len(t.top_ups()) == 1 and len(app.delivered) == 1


def test_a_top_up_the_server_never_took_holds_vouchers_until_it_expires(app):
    """Its delivery failed: the deposit it added is Teller's record only. Later vouchers that
    need it are UNAVAILABLE top_up_in_flight, nothing signed, until it expires and the
    deposit goes back down; then the next call tops up again."""
    t = Tenant(app)
    t.exhaust()

    def refused(url: str, name: str, value: str) -> None:
        raise FailedPrecondition("the server did not take the channel's top-up: HTTP 409", reason="top_up_refused")

    app.payments.deliver_top_up = refused
    with pytest.raises(FailedPrecondition) as failed:
        t.sign()
    assert failed.value.reason == "top_up_refused"
    ((payment_id, _, _),) = t.top_ups()
    app.payments.deliver_top_up = lambda url, name, value: app.delivered.append(value)
    app.payments.top_up_wait_s = 0.3
    started = time.monotonic()
    with pytest.raises(Unavailable) as waiting:
        t.sign()
    assert time.monotonic() - started >= 0.3  # it waited for the delivery first
    assert waiting.value.reason == "top_up_in_flight"
    assert (waiting.value.metadata["channel"], waiting.value.metadata["top_up_payment"]) == (t.channel().id,
                                                                                            payment_id)
    assert (t.channel().deposit, t.channel().cumulative) == (2 * DEPOSIT, DEPOSIT)
    assert len(t.top_ups()) == 1 and app.delivered == []
    with app.db.transaction() as s:
        p = s.get(Payment, payment_id)
        assert lifecycle.advance(s, p, lifecycle.Change(PaymentState.EXPIRED, release=True, reason="expired"),
                                 from_states=lifecycle.LIVE, now_ms=1, actor="test")
    assert t.channel().deposit == DEPOSIT
    assert _payload(t.sign())["cumulativeAmount"] == str(DEPOSIT + PRICE)
    assert len(t.top_ups()) == 2 and len(app.delivered) == 1


def test_a_top_up_seen_mined_counts_as_delivered(app):
    t = Tenant(app)
    t.exhaust()
    call = t.call()
    assert app.payments.voucher(call) is None and call.top_up is not None
    app.payments.open_facts(call)
    topped = app.payments.finish(app.payments.commit([call])[0])
    assert app.payments.top_up_in_flight(topped.payment_id)
    with app.db.transaction() as s:
        p = s.get(Payment, topped.payment_id)
        assert lifecycle.advance(s, p, lifecycle.Change(PaymentState.SETTLED, release=False, reason=""),
                                 from_states=lifecycle.LIVE, now_ms=1, actor="test")
    assert not app.payments.top_up_in_flight(topped.payment_id)
    assert _payload(t.sign())["cumulativeAmount"] == str(DEPOSIT + PRICE)


def _top_up_signed(app, t: Tenant):
    """The exhausted channel of ``t`` topped up by a Sign batch (signed, not yet delivered)."""
    call = t.call()
    assert app.payments.voucher(call) is None and call.top_up is not None
    app.payments.open_facts(call)
    return app.payments.finish(app.payments.commit([call])[0])


def _voucher_behind_lock(app, t: Tenant, channel: str, holding: Callable[[Session], None]) -> object:
    """A voucher of one unit asked while another transaction holds ``channel``'s lock
    and runs ``holding`` in it once the voucher's statement is waiting: its answer."""
    from teller.db.models import Channel

    got: list[object] = []

    def voucher() -> None:
        try:
            got.append(app.channels.sign_voucher(t.tenant_id, channel, PRICE))
        except Exception as exc:  # the caller asserts on it
            got.append(exc)

    other = threading.Thread(target=voucher)
    with app.db.transaction() as s:
        s.execute(select(Channel).where(Channel.id == channel).with_for_update())
        other.start()
        time.sleep(0.5)  # the voucher's statement waits for the lock (PostgreSQL; SQLite: for BEGIN)
        holding(s)
    other.join()
    (answer,) = got
    return answer


def test_a_voucher_waiting_on_the_lock_of_the_batch_that_tops_up_sees_the_top_up_in_flight(app):
    """A voucher whose locking statement waits while the Sign batch tops the channel up
    (its lock held, the deposit raised and the top-up's row written in one commit): on
    PostgreSQL the lock returns the channel's row as committed, but a subquery of that
    statement reads the snapshot taken before it waited. The top-up must count as on its
    way all the same: nothing signed past the deposit the server knows."""
    from sqlalchemy import delete, update

    from teller.db.models import Channel

    t = Tenant(app)
    t.exhaust()
    topped = _top_up_signed(app, t)
    c = t.channel()
    with app.db.transaction() as s:  # as it stood before the batch: no top-up, the old deposit
        top = s.get(ChannelTopUp, topped.payment_id)
        row = {k: getattr(top, k) for k in ("payment_id", "channel", "added", "deposit_before", "created_ms")}
        s.execute(delete(ChannelTopUp).where(ChannelTopUp.payment_id == topped.payment_id))
        s.execute(update(Channel).where(Channel.id == c.id).values(deposit=DEPOSIT))

    def batch(s: Session) -> None:  # the batch: the channel locked, topped up, committed
        s.add(ChannelTopUp(**row))
        s.execute(update(Channel).where(Channel.id == c.id).values(deposit=2 * DEPOSIT))

    answer = _voucher_behind_lock(app, t, c.id, batch)
    assert isinstance(answer, Unavailable) and answer.reason == "top_up_in_flight", answer
    assert t.channel().cumulative == DEPOSIT


# PostgreSQL only: SQLite's writers wait at BEGIN, before any snapshot, so there the
# delivery waits for the lock too and the race cannot happen.
@pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_a_top_up_delivered_while_a_voucher_waits_for_the_lock_lets_it_through(app):
    """A voucher's locking statement waits for the channel's lock while the top-up it needs is
    delivered (recorded without that lock). On PostgreSQL its subquery still counts the top-up as
    on its way (the snapshot from before the wait): the voucher must be judged on the top-ups as
    they stand under the lock, not fail reading a refusal whose top-up is no longer on its way."""
    assert "postgresql" in app.db.engine.url.drivername
    t = Tenant(app)
    t.exhaust()
    topped = _top_up_signed(app, t)
    # Another batch holds the channel's lock meanwhile; the server takes the top-up.
    answer = _voucher_behind_lock(app, t, t.channel().id, lambda s: app.channels.top_up_delivered(topped.payment_id))
    assert not isinstance(answer, BaseException), answer
    assert answer.cumulative == DEPOSIT + PRICE


def test_a_retry_under_the_key_of_a_top_up_the_server_did_not_take_delivers_it_again(app):
    """The first call's top-up POST failed (the server down a moment): its caller retries under
    the same key. Nobody else will deliver that top-up; the retry is the one to hand it over."""
    t = Tenant(app)
    t.exhaust()

    sent: list[str] = []

    def down(url: str, name: str, value: str) -> None:
        sent.append(value)
        raise Unavailable("the server did not answer the top-up's POST")

    app.payments.deliver_top_up = down
    with pytest.raises(Unavailable):
        t.sign("K")
    app.payments.deliver_top_up = lambda url, name, value: app.delivered.append(value)
    app.payments.top_up_wait_s = 0.3
    # Another key's call does not hand over a top-up it did not make: it waits, then is told.
    with pytest.raises(Unavailable) as waited:
        t.sign("other")
    assert waited.value.reason == "top_up_in_flight" and app.delivered == []
    voucher = t.sign("K")
    assert _payload(voucher)["cumulativeAmount"] == str(DEPOSIT + PRICE)
    # The same credential (the same signed transaction) handed over again: nothing new signed or reserved.
    assert app.delivered == sent and len(sent) == 1 and len(t.top_ups()) == 1
    assert _payload(t.sign("K")) == _payload(voucher)  # and the key's retry after that is the same voucher
    assert _payload(t.sign("other"))["cumulativeAmount"] == str(DEPOSIT + 2 * PRICE)


def test_a_retry_under_the_key_of_an_undelivered_top_up_with_another_url_is_refused_not_handed_over(app):
    """The key of a top-up whose POST failed, sent again for another URL (the same
    payee, wallet and challenge): ALREADY_EXISTS, as any key reused for a different
    request is; the top-up's credential goes to no URL but its own request's."""
    from teller.errors import AlreadyExists

    t = Tenant(app)
    t.exhaust()

    def down(url: str, name: str, value: str) -> None:
        raise Unavailable("the server did not answer the top-up's POST")

    app.payments.deliver_top_up = down
    with pytest.raises(Unavailable):
        t.sign("K")
    posted: list[str] = []
    app.payments.deliver_top_up = lambda url, name, value: posted.append(url)
    app.payments.top_up_wait_s = 0.3
    req = sign_input(status=402, headers=_challenge(), body=b"", url="http://elsewhere.test/collect", method="GET",
                     wallet_id=t.wallet_id, max_amount="", idempotency_key="K")
    with pytest.raises(AlreadyExists):
        app.payments.sign(Caller(t.tenant_id, "tok"), req)
    assert posted == []
    # The request it was made for still hands it over, to its own URL.
    assert _payload(t.sign("K"))["cumulativeAmount"] == str(DEPOSIT + PRICE)
    assert posted == [URL]
