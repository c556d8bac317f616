"""Vouchers signed under the channel's lock, on SQLite and PostgreSQL: strictly
increasing totals that never pass the deposit, each signed by the channel's
wallet and audited; the database refuses what the lock should have prevented."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from teller.app import build
from teller.channels.rules import ChannelState
from teller.channels.store import Ask, TopUpWanted, Wanted
from teller.db.models import AuditEvent, Channel, Voucher
from teller.errors import (
    AlreadyExists,
    FailedPrecondition,
    LimitExceeded,
    NotFound,
    PermissionDenied,
)
from teller.mpp.channel import voucher_typed_data
from tests.support.channels import CHAIN_ID, ESCROW, open_channel
from tests.support.harness import make_settings


@pytest.fixture
def app(db_url, tmp_path):
    built = build(make_settings(db_url, tmp_path), migrate=True)
    yield built
    built.close()


def _signer(channel_id: str, total: int, signature: str) -> str:
    typed = voucher_typed_data(bytes.fromhex(channel_id[2:]), total, escrow=ESCROW, chain_id=CHAIN_ID)
    message = encode_typed_data(full_message={"types": {"EIP712Domain": [
        {"name": "name", "type": "string"}, {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
        **typed.types}, "primaryType": typed.primary_type, "domain": typed.domain, "message": typed.message})
    return Account.recover_message(message, signature=bytes.fromhex(signature[2:]))


def test_vouchers_rise_to_the_deposit_and_no_further(app):
    ch = open_channel(app, deposit=100)
    totals = [app.channels.sign_voucher(ch.tenant_id, ch.handle, step, actor="t").cumulative
              for step in (10, 25, 65)]
    assert totals == [10, 35, 100]
    with pytest.raises(LimitExceeded, match=r"deposit of 100 \(0 left\)"):
        app.channels.sign_voucher(ch.tenant_id, ch.handle, 1)
    view = app.channels.get(ch.tenant_id, ch.handle)
    assert (view.cumulative, view.remaining, view.state) == (100, 0, "open")
    vouchers = app.channels.vouchers(ch.tenant_id, ch.handle)
    assert [t for t, _ in vouchers] == [10, 35, 100]
    # Each voucher is the wallet's signature over Voucher(channelId, total) in the escrow's domain.
    assert {_signer(ch.channel_id, t, sig) for t, sig in vouchers} == {ch.address}
    with app.db.read() as s:
        events = s.execute(select(AuditEvent.action, AuditEvent.amount, AuditEvent.details)
                           .where(AuditEvent.tenant_id == ch.tenant_id, AuditEvent.action == "channel.voucher")
                           .order_by(AuditEvent.seq)).all()
    assert [(a, amt) for a, amt, _ in events] == [("channel.voucher", "10"), ("channel.voucher", "25"),
                                                  ("channel.voucher", "65")]
    assert '"cumulative":"100"' in events[-1][2]


def test_a_refused_voucher_leaves_nothing_behind(app):
    ch = open_channel(app, deposit=50)
    app.channels.sign_voucher(ch.tenant_id, ch.handle, 40)
    with pytest.raises(LimitExceeded, match="increment 20 is above the cap of 15"):
        app.channels.sign_voucher(ch.tenant_id, ch.handle, 20, max_increment=15)
    with pytest.raises(LimitExceeded):
        app.channels.sign_voucher(ch.tenant_id, ch.handle, 11)
    assert [t for t, _ in app.channels.vouchers(ch.tenant_id, ch.handle)] == [40]
    assert app.channels.get(ch.tenant_id, ch.handle).cumulative == 40


def test_another_tenants_channel_is_not_found(app):
    ch = open_channel(app, deposit=50)
    other = open_channel(app, deposit=50)
    for call in (lambda: app.channels.sign_voucher(other.tenant_id, ch.handle, 1),
                 lambda: app.channels.get(other.tenant_id, ch.handle),
                 lambda: app.channels.vouchers(other.tenant_id, ch.handle)):
        with pytest.raises(NotFound, match="not found"):
            call()
    assert app.channels.vouchers(ch.tenant_id, ch.handle) == []


def test_a_closing_channel_or_a_frozen_wallet_signs_nothing(app):
    ch = open_channel(app, deposit=50)
    app.admin.set_frozen(ch.tenant_id, True, ch.wallet_id, "lost laptop")
    with pytest.raises(FailedPrecondition, match=f"wallet {ch.wallet_id} is frozen"):
        app.channels.sign_voucher(ch.tenant_id, ch.handle, 1)
    app.admin.set_frozen(ch.tenant_id, False, ch.wallet_id)
    app.admin.set_frozen(ch.tenant_id, True, reason="incident")
    with pytest.raises(FailedPrecondition, match=f"tenant {ch.tenant_id} is frozen"):
        app.channels.sign_voucher(ch.tenant_id, ch.handle, 1)
    app.admin.set_frozen(ch.tenant_id, False)
    assert app.channels.sign_voucher(ch.tenant_id, ch.handle, 1).cumulative == 1
    with app.db.transaction() as s:
        s.execute(text("UPDATE channels SET state = :s WHERE id = :id"),
                  {"s": ChannelState.CLOSING.value, "id": ch.handle})
    with pytest.raises(FailedPrecondition, match="the channel is closing") as e:
        app.channels.sign_voucher(ch.tenant_id, ch.handle, 1)
    assert e.value.reason == "channel_not_open"


def test_the_database_refuses_a_second_voucher_for_a_total_and_a_total_past_the_deposit(app):
    """The backstops below the lock: what a bug that skipped it would write."""
    ch = open_channel(app, deposit=50)
    signed = app.channels.sign_voucher(ch.tenant_id, ch.handle, 30)
    with pytest.raises(IntegrityError), app.db.transaction() as s:
        s.add(Voucher(channel=ch.handle, cumulative=30, signature=signed.signature, created_ms=2))
    with pytest.raises(IntegrityError), app.db.transaction() as s:
        s.execute(text("UPDATE channels SET cumulative = 51 WHERE id = :id"), {"id": ch.handle})
    with app.db.read() as s:
        assert s.scalar(select(Channel.cumulative).where(Channel.id == ch.handle)) == 30


def test_concurrent_callers_on_one_channel_sign_one_increasing_sequence(app):
    """16 threads race for one channel's deposit: every increment granted is in
    the final total, no total is signed twice, and the deposit is met exactly."""
    ch = open_channel(app, deposit=1_000)
    granted: list[int] = []
    refused: list[Exception] = []
    lock = threading.Lock()

    def caller() -> None:
        while True:
            try:
                v = app.channels.sign_voucher(ch.tenant_id, ch.handle, 7)
            except LimitExceeded as exc:
                with lock:
                    refused.append(exc)
                return
            with lock:
                granted.append(v.cumulative)

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(granted) == list(range(7, 1_000, 7))  # 142 vouchers, 994 in all
    assert [t for t, _ in app.channels.vouchers(ch.tenant_id, ch.handle)] == sorted(granted)
    assert app.channels.get(ch.tenant_id, ch.handle).cumulative == 994 and len(refused) == 16


def _wanted(app, ch) -> Wanted:
    view = app.channels.get(ch.tenant_id, ch.handle)
    return Wanted(ch.tenant_id, ch.wallet_id, view.network, view.escrow, view.payee, view.token, "0x" + "00" * 20)


def test_the_next_voucher_goes_on_the_open_channel_until_it_runs_out_then_it_is_to_be_topped_up(app):
    ch = open_channel(app, deposit=25)
    want = _wanted(app, ch)
    assert [app.channels.sign_next(want, 10).cumulative for _ in range(2)] == [10, 20]
    # Not a second channel beside it: this one is to be topped up (the Sign batch does it).
    wanted = app.channels.sign_next(want, 10)
    assert isinstance(wanted, TopUpWanted)
    assert (wanted.channel, wanted.deposit, wanted.cumulative, wanted.opened_with) == (ch.handle, 25, 20, 25)
    # Another payee, or another operator: no channel of theirs is open, so one is opened.
    assert app.channels.sign_next(dataclasses.replace(want, payee="0x" + "ab" * 20), 10) is None
    assert app.channels.sign_next(dataclasses.replace(want, operator="0x" + "cd" * 20), 10) is None


def test_a_voucher_key_replays_its_voucher_and_a_payment_key_is_left_to_the_payment(app):
    ch = open_channel(app, deposit=100)
    want = _wanted(app, ch)
    first = app.channels.sign_next(want, 10, idempotency_key="k-1")
    again = app.channels.sign_next(want, 10, idempotency_key="k-1")
    assert (again.cumulative, again.signature, again.increment) == (first.cumulative, first.signature, 10)
    assert app.channels.sign_next(want, 10, idempotency_key="k-2").cumulative == 20
    with pytest.raises(AlreadyExists, match="'k-1' was already used for a different request"):
        app.channels.sign_next(dataclasses.replace(want, token="0x" + "ef" * 20), 10, idempotency_key="k-1")
    assert [t for t, _ in app.channels.vouchers(ch.tenant_id, ch.handle)] == [10, 20]


def test_a_batch_signs_each_ask_in_turn_under_one_lock_and_one_audit_event(app):
    ch = open_channel(app, deposit=100)
    want = _wanted(app, ch)
    checks: list[str] = []

    def check(name: str):
        def run(s) -> None:
            checks.append(name)
            if name == "denied":
                raise PermissionDenied("payee denied by the test")
        return run

    asks = [Ask(10, idempotency_key="a", check=check("ok"), check_key="ok"),
            Ask(30, max_increment=20),  # above its own cap: refused alone
            Ask(20, check=check("ok"), check_key="ok"),  # the same check: run once per batch
            Ask(5, idempotency_key="a"),  # the same key as the first: the same voucher
            Ask(5, check=check("denied"), check_key="denied"),
            Ask(80),  # past the deposit (30 signed, 70 left): to be topped up, alone
            Ask(70)]
    out = app.channels.sign_next_many(want, asks, actor="t")
    assert [type(o).__name__ if isinstance(o, Exception | TopUpWanted) else o.cumulative for o in out] == [
        10, "LimitExceeded", 30, 10, "PermissionDenied", "TopUpWanted", 100]
    assert out[0].signature == out[3].signature and checks == ["ok", "denied"]
    assert out[1].reason == "voucher_increment_cap" and (out[5].channel, out[5].deposit) == (ch.handle, 100)
    assert [t for t, _ in app.channels.vouchers(ch.tenant_id, ch.handle)] == [10, 30, 100]
    assert {_signer(ch.channel_id, t, sig) for t, sig in app.channels.vouchers(ch.tenant_id, ch.handle)} == {
        ch.address}
    with app.db.read() as s:
        events = s.execute(select(AuditEvent.amount, AuditEvent.details).where(
            AuditEvent.tenant_id == ch.tenant_id, AuditEvent.action == "channel.voucher")).all()
    # One event for the batch: three vouchers, from 0 to 100.
    assert [(amt, json.loads(d)["vouchers"], json.loads(d)["from"], json.loads(d)["cumulative"]) for amt, d in events] == [("100", 3, "0", "100")]
    # The key answers its voucher again in a later batch.
    assert app.channels.sign_next(want, 5, idempotency_key="a").cumulative == 10


def test_a_batch_with_no_open_channel_answers_each_ask_none(app):
    ch = open_channel(app, deposit=10)
    want = dataclasses.replace(_wanted(app, ch), payee="0x" + "ab" * 20)
    assert app.channels.sign_next_many(want, [Ask(1), Ask(2)]) == [None, None]


def test_a_key_used_elsewhere_while_a_batch_ran_fails_no_other_ask_of_the_batch(app, monkeypatch):
    """Another worker commits a voucher under key K between this batch's key
    look-up and its insert: the vouchers' unique key refuses the batch, and each
    ask is answered alone, K's caller with K's voucher, the others with theirs."""
    from teller.channels.store import Channels

    ch = open_channel(app, deposit=100)
    want = _wanted(app, ch)
    real = Channels._replays
    raced: list[bool] = []

    def racing(self, s, w, keys):
        found = real(self, s, w, keys)
        if not raced:  # the first look-up only: the other worker commits K just after it
            raced.append(True)
            app.channels.sign_next(want, 10, idempotency_key="K")
        return found

    if app.db.is_postgres:
        monkeypatch.setattr(Channels, "_replays", racing)
        out = app.channels.sign_next_many(want, [Ask(5, idempotency_key="K"), Ask(7), Ask(3)])
    else:
        # SQLite's single writer cannot commit inside the batch's transaction: the
        # look-up is made to miss K instead, which the insert then meets.
        app.channels.sign_next(want, 10, idempotency_key="K")

        def missing(self, s, w, keys):
            if not raced:
                raced.append(True)
                return {}, {}
            return real(self, s, w, keys)

        monkeypatch.setattr(Channels, "_replays", missing)
        out = app.channels.sign_next_many(want, [Ask(5, idempotency_key="K"), Ask(7), Ask(3)])
    assert [o.cumulative for o in out] == [10, 17, 20]
    assert [t for t, _ in app.channels.vouchers(ch.tenant_id, ch.handle)] == [10, 17, 20]
