"""Pay against a hostile metered stream: a fake session server (a fake is fine here;
the proof against mppx's own server is tests/e2e/test_teller_sessions.py) whose
SSE stream asks for vouchers it should not get. Each case ends the call with an
error naming what the server did, and the channel shows no voucher past what an
honest request would have earned. The stream's bytes reach the caller unchanged."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from eth_account import Account
from sqlalchemy import select

from teller.db.models import ChannelTopUp
from teller.mpp.channel import ChannelDescriptor, channel_id
from teller_client import (
    Asset,
    Budget,
    FailedPrecondition,
    LimitExceeded,
    PermissionDenied,
    Policy,
    SignedPayment,
    Unauthenticated,
)
from testbed.channels import CHAIN_ID, ESCROW, NETWORK, TOKEN
from tests.support.harness import RunningTeller, make_settings

PRICE = 100
DEPOSIT = 10_000
MAX_EVENT = 4096  # the Teller's max_challenge_bytes: the bound on a payment event


def _b64(doc: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def _need(channel: str, total: int, deposit: int = DEPOSIT) -> bytes:
    doc = {"channelId": channel, "requiredCumulative": str(total), "acceptedCumulative": str(total - PRICE),
           "deposit": str(deposit)}
    return f"event: payment-need-voucher\ndata: {json.dumps(doc)}\n\n".encode()


def _message(text: str) -> bytes:
    return f"event: message\ndata: {text}\n\n".encode()


class FakeSession:
    """GET without a credential: a tempo session challenge for ``payee``; GET with one:
    ``stream(self)`` as text/event-stream; POST: the voucher, recorded, answered
    ``post_status`` (or what ``post_status(credential)`` says)."""

    def __init__(self, payee: str, channel: str, stream: Callable[[FakeSession], list[bytes]],
                 post_status: int | list[int] | Callable[[dict], int] = 200) -> None:
        self.payee, self.channel, self.stream = payee, channel, stream
        self.post_statuses = post_status if isinstance(post_status, list) else None
        self.post_status = post_status if isinstance(post_status, int) else 200
        self.post_answer = post_status if callable(post_status) else None
        self.posted: list[dict] = []
        self.challenges: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def challenge(self) -> None:
                request = {"amount": str(PRICE), "unitType": "token", "currency": TOKEN, "recipient": fake.payee,
                           "suggestedDeposit": str(DEPOSIT),
                           "methodDetails": {"chainId": CHAIN_ID, "sessionProtocol": "v2", "channelId": fake.channel}}
                expires = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
                fake.challenges.append(f"c{os.urandom(4).hex()}")
                self.send_response(402)
                self.send_header("WWW-Authenticate", f'Payment id="{fake.challenges[-1]}", realm="fake.test", '
                                 f'method="tempo", intent="session", request="{_b64(request)}", expires="{expires}"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                if not self.headers.get("Authorization"):
                    self.challenge()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                self.send_header("Connection", "close")
                self.end_headers()
                for part in fake.stream(fake):
                    self.wfile.write(part)
                    self.wfile.flush()

            def do_POST(self) -> None:
                auth = self.headers.get("Authorization", "")
                encoded = auth.split(" ", 1)[-1]
                fake.posted.append(json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))))
                status = (fake.post_answer(fake.posted[-1]) if fake.post_answer is not None
                          else fake.post_statuses.pop(0) if fake.post_statuses else fake.post_status)
                if status == 402:
                    self.challenge()
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def later() -> list[float]:
    """Seconds the Teller's clock runs ahead of the fake's (a test moves it mid-stream)."""
    return [0.0]


@pytest.fixture
def teller(tmp_path, later):
    running = RunningTeller(make_settings(f"sqlite:///{tmp_path / 'teller.db'}", tmp_path,
                                          outbound_allow=("127.0.0.1",), max_challenge_bytes=MAX_EVENT),
                            lambda: time.time() + later[0])
    yield running
    running.stop()


@pytest.fixture
def channel(teller):
    """A tenant whose wallet has an open channel (deposit 10,000) to a new payee."""
    t = teller.setup_tenant(policy=Policy(assets=(Asset(NETWORK, TOKEN, 6),)))
    payee = Account.create().address
    descriptor = ChannelDescriptor(payer=t.address, payee=payee, operator="0x" + "00" * 20, token=TOKEN,
                                   salt=os.urandom(32), authorized_signer=t.address,
                                   expiring_nonce_hash=os.urandom(32))
    cid = channel_id(descriptor, ESCROW, CHAIN_ID)
    with teller.app.db.transaction() as s:
        handle = teller.app.channels.record_open(s, tenant_id=t.tenant_id, wallet_id=t.wallet_id, network=NETWORK,
                                                 escrow=ESCROW, channel_id=cid, descriptor=descriptor,
                                                 deposit=DEPOSIT, now_ms=1)
    return t, payee, "0x" + cid.hex(), handle


def _run(teller, t, fake: FakeSession, **kw: object) -> tuple[bytes, BaseException | None]:
    got = bytearray()
    try:
        with teller.client(t.token).pay_stream(fake.url, wallet_id=t.wallet_id, **kw) as r:
            assert r.response.status == 200
            for chunk in r.chunks:
                got += chunk
    except (FailedPrecondition, LimitExceeded, PermissionDenied, Unauthenticated) as exc:
        return bytes(got), exc
    finally:
        fake.close()
    return bytes(got), None


def _total(teller, t, handle) -> int:
    return teller.app.channels.get(t.tenant_id, handle).cumulative


def test_an_honest_stream_is_relayed_byte_for_byte_with_its_payment_events(teller, channel):
    t, payee, cid, handle = channel
    big = "x" * (MAX_EVENT * 3)  # an application event past the payment-event bound passes untouched
    sent = [b": a comment\r\n\r\n", _message("one"), _need(cid, 200), _message(big),
            _need(cid, 300)[:30], _need(cid, 300)[30:], b"event: message\r\ndata: three\r\n\r\n",
            b'event: payment-receipt\ndata: {"method":"tempo"}\n\n']
    fake = FakeSession(payee, cid, lambda f: sent)
    body, error = _run(teller, t, fake)
    assert error is None and body == b"".join(sent)
    assert [int(p["payload"]["cumulativeAmount"]) for p in fake.posted] == [200, 300]
    assert {p["payload"]["action"] for p in fake.posted} == {"voucher"}
    assert _total(teller, t, handle) == 300


@pytest.mark.parametrize(("case", "reason", "total"), [
    ("another channel", "stream_channel_mismatch", PRICE),
    ("a smaller total", "stream_voucher_not_increasing", 2 * PRICE),
    ("the same total again", "stream_voucher_not_increasing", 2 * PRICE),
    ("past uint96", "stream_event_invalid", PRICE),
    ("a payment event too large", "stream_event_too_large", PRICE),
    ("vouchers without data", "stream_voucher_loop", 9 * PRICE),
])
def test_a_hostile_stream_gets_a_clear_error_and_no_overpayment(teller, channel, case, reason, total):
    t, payee, cid, handle = channel
    other = "0x" + os.urandom(32).hex()
    scripts = {
        "another channel": [_message("one"), _need(other, 200)],
        "a smaller total": [_message("one"), _need(cid, 200), _message("two"), _need(cid, 150)],
        "the same total again": [_message("one"), _need(cid, 200), _message("two"), _need(cid, 200)],
        "past uint96": [_message("one"), _need(cid, 2**96)],
        "a payment event too large": [_message("one"), b"event: payment-need-voucher\ndata: "
                                      + b"1" * MAX_EVENT + b"\n\n"],
        "vouchers without data": [_message("one"), *(_need(cid, PRICE * n) for n in range(2, 20))],
    }
    fake = FakeSession(payee, cid, lambda f: scripts[case])
    body, error = _run(teller, t, fake)
    assert error is not None and error.reason == reason, (case, error)
    assert body.startswith(_message("one"))  # what came before the refusal reached the caller
    assert _total(teller, t, handle) == total
    assert max(t for t, _ in teller.app.channels.vouchers(t.tenant_id, handle)) == total


def test_a_voucher_post_the_server_refuses_ends_the_stream(teller, channel):
    t, payee, cid, handle = channel
    fake = FakeSession(payee, cid, lambda f: [_message("one"), _need(cid, 200), _message("two"), _need(cid, 300)],
                       post_status=500)
    _, error = _run(teller, t, fake)
    assert isinstance(error, FailedPrecondition) and error.reason == "payment_refused", error
    assert "voucher for 200 with 500" in str(error)
    assert len(fake.posted) == 1 and _total(teller, t, handle) == 200


def test_the_per_voucher_cap_and_the_stream_cap_hold(teller, channel):
    t, payee, cid, handle = channel
    # max_amount bounds each voucher's increment: a request for three units at once is refused.
    fake = FakeSession(payee, cid, lambda f: [_message("one"), _need(cid, 4 * PRICE)])
    _, error = _run(teller, t, fake, max_amount=PRICE)
    assert isinstance(error, LimitExceeded) and error.reason == "voucher_increment_cap"
    assert _total(teller, t, handle) == PRICE
    # max_stream_amount bounds the call's stream vouchers: two units, then the third is refused.
    script = [m for n in range(2, 6) for m in (_message(f"t{n}"), _need(cid, PRICE * (n + 1)))]
    fake = FakeSession(payee, cid, lambda f: script)
    _, error = _run(teller, t, fake, max_stream_amount=2 * PRICE)
    assert isinstance(error, LimitExceeded) and error.reason == "stream_cap", error
    assert (error.metadata["limit"], error.metadata["remaining"]) == ("200", "0")
    assert "past max_stream_amount 200" in str(error)
    # This call's own voucher raised the total to 200; its stream added 300 and 400, then stopped.
    assert _total(teller, t, handle) == 4 * PRICE


def test_a_voucher_post_answered_with_a_fresh_challenge_resends_the_same_voucher_once(teller, channel):
    """The stream's challenge expired (mppx's last five minutes): the server answers the
    voucher's POST with 402 and a fresh challenge; Teller sends the same voucher (same
    total, same signature) in the new challenge, and signs nothing more for it."""
    t, payee, cid, handle = channel
    fake = FakeSession(payee, cid, lambda f: [_message("one"), _need(cid, 200), _message("two")],
                       post_status=[402, 200])
    body, error = _run(teller, t, fake)
    assert error is None and body.endswith(_message("two"))
    first, again = fake.posted
    assert first["payload"] == again["payload"] and first["payload"]["cumulativeAmount"] == "200"
    assert (first["challenge"]["id"], again["challenge"]["id"]) == (fake.challenges[0], fake.challenges[1])
    assert [total for total, _ in teller.app.channels.vouchers(t.tenant_id, handle)] == [PRICE, 200]


def test_a_refused_fresh_challenge_ends_the_stream(teller, channel):
    t, payee, cid, handle = channel
    fake = FakeSession(payee, cid, lambda f: [_message("one"), _need(cid, 200)], post_status=[402, 402])
    _, error = _run(teller, t, fake)
    assert isinstance(error, FailedPrecondition) and error.reason == "payment_refused", error
    assert len(fake.posted) == 2 and _total(teller, t, handle) == 200


def test_each_stream_voucher_meets_the_policy_as_it_stands(teller, channel):
    """per_payment_max judges each increment; a wallet frozen, or a payee denied, after
    the stream began gets no more vouchers."""
    t, payee, cid, handle = channel
    admin = teller.admin()
    admin.set_policy(t.tenant_id, Policy(assets=(Asset(NETWORK, TOKEN, 6),), per_payment_max=PRICE))
    fake = FakeSession(payee, cid, lambda f: [_message("one"), _need(cid, 3 * PRICE)])
    _, error = _run(teller, t, fake)
    assert isinstance(error, LimitExceeded) and error.reason == "per_payment_max", error
    assert _total(teller, t, handle) == PRICE

    def freeze_then_ask(f: FakeSession) -> list[bytes]:
        admin.set_frozen(t.tenant_id, True, wallet_id=t.wallet_id, reason="drill")
        return [_message("one"), _need(cid, 3 * PRICE)]

    _, error = _run(teller, t, FakeSession(payee, cid, freeze_then_ask))
    assert isinstance(error, FailedPrecondition) and error.reason == "frozen", error
    assert _total(teller, t, handle) == 2 * PRICE  # the request's own voucher, signed before the freeze
    admin.set_frozen(t.tenant_id, False, wallet_id=t.wallet_id)

    def deny_then_ask(f: FakeSession) -> list[bytes]:
        admin.set_policy(t.tenant_id, Policy(assets=(Asset(NETWORK, TOKEN, 6),), payees_deny=(payee,)))
        return [_message("one"), _need(cid, 4 * PRICE)]

    _, error = _run(teller, t, FakeSession(payee, cid, deny_then_ask))
    assert error is not None and "payee" in str(error).lower(), error
    assert _total(teller, t, handle) == 3 * PRICE
    # Each voucher the policy refused is audited as a payment it refuses (a freeze is no policy's).
    from sqlalchemy import select

    from teller.db.models import AuditEvent
    with teller.app.db.read() as s:
        denied = s.execute(select(AuditEvent.reason, AuditEvent.amount, AuditEvent.details).where(
            AuditEvent.tenant_id == t.tenant_id, AuditEvent.action == "payment.deny")
            .order_by(AuditEvent.seq)).all()
    assert [(r, a) for r, a, _ in denied] == [("per_payment_max", str(2 * PRICE)), (denied[1][0], str(PRICE))]
    assert "payee" in denied[1][0] and all(json.loads(d)["voucher"] for _, _, d in denied)


def test_the_async_httpx_pay_transport_streams_and_stops_at_the_cap(teller, channel):
    """AsyncTellerPayTransport: httpx.AsyncClient through Pay, the body read as it comes,
    the cap ending it with LimitExceeded after the chunks paid for."""
    import asyncio

    import httpx

    from teller_client import AsyncTellerClient
    from teller_client.integrations import AsyncTellerPayTransport

    t, payee, cid, handle = channel
    script = [m for n in range(2, 6) for m in (_message(f"t{n}"), _need(cid, PRICE * n))]
    fake = FakeSession(payee, cid, lambda f: script)

    async def scenario() -> tuple[list[bytes], BaseException | None]:
        got: list[bytes] = []
        async with AsyncTellerClient(teller.target, t.token) as client:
            transport = AsyncTellerPayTransport(client, t.wallet_id, max_stream_amount=2 * PRICE)
            async with httpx.AsyncClient(transport=transport) as http, http.stream("GET", fake.url) as r:
                assert r.status_code == 200 and r.extensions["teller_pay"].payment is None  # a voucher paid it
                try:
                    async for chunk in r.aiter_raw():
                        got.append(chunk)
                except LimitExceeded as exc:
                    return got, exc
        return got, None

    try:
        got, error = asyncio.run(scenario())
    finally:
        fake.close()
    assert isinstance(error, LimitExceeded) and error.reason == "stream_cap", error
    assert b"".join(got).startswith(_message("t2") + _need(cid, 2 * PRICE) + _message("t3"))
    assert _total(teller, t, handle) == 3 * PRICE  # its own voucher, then two for the stream


# -- top-ups mid-stream: the chain's part (gas price, estimate) stubbed, as in test_channel_top_ups --------------

GAS, GAS_PRICE = 900_000, 20_000_000_000
FEE_MAX = -(-GAS * GAS_PRICE // 10**12)  # the top-up's most expensive fee, in the token's units


@pytest.fixture
def topping(teller, channel):
    """``channel``, on a Teller whose chain reader answers a top-up's gas, under a day's budget."""
    chain = teller.app.payments.chain
    chain.gas_price = lambda network, cached_only=False: GAS_PRICE
    chain.tempo_gas_limit = lambda *a, **k: GAS
    t = channel[0]
    teller.admin().set_policy(t.tenant_id, Policy(assets=(Asset(NETWORK, TOKEN, 6),),
                                                  budgets=(Budget(10**9, "day", name="day"),)))
    return channel


def _top_ups(teller, handle) -> list[tuple[int, int]]:
    with teller.app.db.read() as s:
        return [tuple(r) for r in s.execute(select(ChannelTopUp.deposit_before, ChannelTopUp.added)
                                            .where(ChannelTopUp.channel == handle)
                                            .order_by(ChannelTopUp.deposit_before))]


def _reserved(teller, t) -> int:
    return next(w.reserved for w in teller.app.admin.spend(t.tenant_id) if w.name == "day")


def test_a_stream_past_the_deposit_tops_the_channel_up_by_what_teller_knows_not_what_the_server_claims(
        teller, topping):
    """The stream asks past the deposit: Teller POSTs a top-up (the suggested deposit, reserved with its
    fee against the budget) and then the voucher, and the stream goes on. The events' ``deposit`` is the
    server's word: claiming the channel empty gets no top-up while the deposit covers the total, and
    claiming it huge does not stop one when it does not."""
    t, payee, cid, handle = topping
    script = [_message("one"), _need(cid, 2 * PRICE, deposit=0), _message("two"),
              _need(cid, DEPOSIT + PRICE, deposit=10**15), _message("three")]
    fake = FakeSession(payee, cid, lambda f: script)
    body, error = _run(teller, t, fake)
    assert error is None and body == b"".join(script), error
    assert [(p["payload"]["action"], p["payload"].get("cumulativeAmount"), p["payload"].get("additionalDeposit"))
            for p in fake.posted] == [("voucher", str(2 * PRICE), None), ("topUp", None, str(DEPOSIT)),
                                      ("voucher", str(DEPOSIT + PRICE), None)]
    assert _top_ups(teller, handle) == [(DEPOSIT, DEPOSIT)]
    c = teller.app.channels.get(t.tenant_id, handle)
    assert (c.deposit, c.cumulative) == (2 * DEPOSIT, DEPOSIT + PRICE)
    assert _reserved(teller, t) == DEPOSIT + FEE_MAX  # what the top-up adds and its fee (the open was recorded by hand)
    signed = [json.loads(e.details_json) for e in teller.client(t.token).audit_events(action="payment.sign")[0]]
    assert [(d["action"], d["channel"], d["added"], d["deposit"]) for d in signed] == \
        [("topUp", handle, DEPOSIT, 2 * DEPOSIT)]


def test_max_channel_deposit_bounds_a_stream_top_up_and_refuses_one_with_no_room(teller, topping):
    t, payee, cid, handle = topping
    admin = teller.admin()
    admin.set_policy(t.tenant_id, Policy(assets=(Asset(NETWORK, TOKEN, 6),), max_channel_deposit=DEPOSIT + 500,
                                         budgets=(Budget(10**9, "day", name="day"),)))
    script = [_message("one"), _need(cid, DEPOSIT + PRICE), _message("two"), _need(cid, DEPOSIT + 600),
              _message("three")]
    fake = FakeSession(payee, cid, lambda f: script)
    body, error = _run(teller, t, fake)
    # Cut to the cap's room (500, not the 10,000 suggested); the next total finds no room left.
    assert isinstance(error, LimitExceeded) and error.reason == "channel_deposit_exhausted", error
    assert "max_channel_deposit" in str(error) and error.metadata["stream_voucher"] == "2"
    assert body.startswith(b"".join(script[:4]))  # every byte before the refusal reached the caller
    assert _top_ups(teller, handle) == [(DEPOSIT, 500)]
    c = teller.app.channels.get(t.tenant_id, handle)
    assert (c.deposit, c.cumulative) == (DEPOSIT + 500, DEPOSIT + PRICE)
    assert _reserved(teller, t) == 500 + FEE_MAX  # the one top-up made; the refused one holds nothing
    assert [p["payload"]["action"] for p in fake.posted] == ["topUp", "voucher"]


def test_a_top_up_the_budget_refuses_ends_the_stream_with_nothing_reserved(teller, topping):
    t, payee, cid, handle = topping
    teller.admin().set_policy(t.tenant_id, Policy(assets=(Asset(NETWORK, TOKEN, 6),),
                                                  budgets=(Budget(DEPOSIT, "day", name="day"),)))
    fake = FakeSession(payee, cid, lambda f: [_message("one"), _need(cid, DEPOSIT + PRICE), _message("two")])
    body, error = _run(teller, t, fake)
    assert isinstance(error, LimitExceeded) and error.reason == "budget_exhausted:day", error
    assert body.startswith(_message("one") + _need(cid, DEPOSIT + PRICE))
    assert _top_ups(teller, handle) == [] and _reserved(teller, t) == 0
    assert teller.app.channels.get(t.tenant_id, handle).deposit == DEPOSIT
    assert fake.posted == []


def test_a_top_up_the_server_refuses_ends_the_stream_with_its_reason(teller, topping):
    t, payee, cid, handle = topping
    fake = FakeSession(payee, cid, lambda f: [_message("one"), _need(cid, DEPOSIT + PRICE), _message("two")],
                       post_status=409)
    _, error = _run(teller, t, fake)
    assert isinstance(error, FailedPrecondition) and error.reason == "top_up_refused", error
    assert error.metadata["server_reason"] == "HTTP 409"
    # Signed and reserved, it stays held until its transaction can no longer be mined; no voucher used it.
    assert _top_ups(teller, handle) == [(DEPOSIT, DEPOSIT)]
    assert teller.app.channels.get(t.tenant_id, handle).cumulative == PRICE
    assert [p["payload"]["action"] for p in fake.posted] == ["topUp"]


def test_a_capped_stream_refuses_the_voucher_before_it_tops_up(teller, topping):
    """The next total is past the deposit, but the caller's caps would refuse its voucher: nothing is
    topped up (no deposit locked for a voucher that will not be signed)."""
    t, payee, cid, handle = topping
    # max_amount, per voucher: a request for three units past the deposit at once.
    fake = FakeSession(payee, cid, lambda f: [_message("one"), _need(cid, DEPOSIT + 3 * PRICE)])
    _, error = _run(teller, t, fake, max_amount=PRICE)
    assert isinstance(error, LimitExceeded) and error.reason == "voucher_increment_cap", error
    assert fake.posted == [] and _top_ups(teller, handle) == [] and _reserved(teller, t) == 0
    # max_stream_amount, per call: the channel one unit short of the stream's second total.
    teller.app.channels.sign_voucher(t.tenant_id, handle, DEPOSIT - 3 * PRICE)  # earlier use of the channel
    script = [_message("one"), _need(cid, DEPOSIT), _message("two"), _need(cid, DEPOSIT + PRICE)]
    fake = FakeSession(payee, cid, lambda f: script)
    body, error = _run(teller, t, fake, max_stream_amount=PRICE)
    assert isinstance(error, LimitExceeded) and error.reason == "stream_cap", error
    assert body == b"".join(script)
    assert [p["payload"]["action"] for p in fake.posted] == ["voucher"]
    assert _top_ups(teller, handle) == [] and _reserved(teller, t) == 0
    c = teller.app.channels.get(t.tenant_id, handle)
    assert (c.deposit, c.cumulative) == (DEPOSIT, DEPOSIT)


def test_a_token_revoked_mid_stream_signs_no_more_vouchers_and_tops_nothing_up(teller, topping):
    """Sign checks the token in the voucher's own transaction; a stream outlives the moment Pay
    authenticated its caller, so a token revoked while it runs must stop its vouchers and, above
    all, its top-ups (a leaked token's stream would lock more of the wallet's funds)."""
    t, payee, cid, handle = topping

    def stream(f):
        teller.admin().revoke_token(t.token_id)
        return [_message("one"), _need(cid, DEPOSIT + PRICE), _message("two")]

    fake = FakeSession(payee, cid, stream)
    _, error = _run(teller, t, fake)
    assert isinstance(error, Unauthenticated), error
    assert fake.posted == [] and _top_ups(teller, handle) == [] and _reserved(teller, t) == 0
    assert _total(teller, t, handle) == PRICE  # the request's own voucher, signed before the revocation


def test_a_second_stream_waits_for_the_top_up_another_is_delivering(teller, topping):
    """Stream A tops the channel up; while the server is still taking it, stream B asks for a total the
    raised deposit covers. B's voucher must not reach the server before A's top-up has: the server
    refuses a voucher past the deposit it knows, and B's call ends with payment_refused, its voucher
    counted on the channel all the same (the next voucher the server takes pays for it)."""
    t, payee, cid, handle = topping
    known = {"deposit": DEPOSIT}  # the server's view of the channel: a top-up counts once it took it
    arrived = threading.Event()

    def answer(credential: dict) -> int:
        p = credential["payload"]
        if p["action"] == "topUp":
            arrived.set()
            time.sleep(1.0)  # mppx broadcasts it and reads the raised deposit back before it answers
            known["deposit"] += int(p["additionalDeposit"])
            return 204
        return 200 if int(p["cumulativeAmount"]) <= known["deposit"] else 409

    a = FakeSession(payee, cid, lambda f: [_message("a"), _need(cid, DEPOSIT + PRICE), _message("a2")], answer)
    later = [_message("b"), _need(cid, DEPOSIT + 3 * PRICE), _message("b2")]
    b = FakeSession(payee, cid, lambda f: (arrived.wait(10), later)[1], answer)
    out: list[tuple[bytes, BaseException | None]] = []
    threads = [threading.Thread(target=lambda fake=fake: out.append(_run(teller, t, fake))) for fake in (a, b)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert _top_ups(teller, handle) == [(DEPOSIT, DEPOSIT)]  # one top-up for both
    assert [error for _, error in out] == [None, None]


def test_a_top_up_after_the_streams_challenge_expired_is_the_servers_doing_not_an_invalid_argument(
        teller, topping, later):
    """The top-up is signed in the challenge that paid the stream's request; once that has expired
    (a long stream), the call ends naming it as a precondition the server's stream left unmet, not
    as the caller's INVALID_ARGUMENT, and nothing is signed or reserved."""
    t, payee, cid, handle = topping

    def stream(f: FakeSession) -> list[bytes]:
        later[0] = 600.0  # the fake's challenge expires in 5 minutes
        return [_message("one"), _need(cid, DEPOSIT + PRICE), _message("two")]

    fake = FakeSession(payee, cid, stream)
    _, error = _run(teller, t, fake)
    assert isinstance(error, FailedPrecondition) and error.reason == "stream_challenge_expired", error
    assert "expires at" in str(error)
    assert fake.posted == [] and _top_ups(teller, handle) == [] and _reserved(teller, t) == 0


def test_a_sign_retried_under_the_key_of_a_top_up_the_server_missed_hands_it_over_again(teller, topping):
    """Through gRPC: a Sign call tops the exhausted channel up, and the server fails the
    top-up's POST (503). The caller retries under the same key: Teller POSTs the same
    top-up credential again (nobody else has it to send), then answers with the voucher
    the raised deposit covers. One top-up signed and reserved, not two."""
    t, payee, cid, handle = topping
    teller.app.channels.sign_voucher(t.tenant_id, handle, DEPOSIT)  # the channel used up
    fake = FakeSession(payee, cid, lambda f: [], post_status=[503, 204])
    try:
        client = teller.client(t.token)
        unpaid = httpx.get(fake.url)

        def sign() -> SignedPayment:
            return client.sign(status=402, headers=list(unpaid.headers.items()), body=unpaid.content, url=fake.url,
                               wallet_id=t.wallet_id, idempotency_key="K")

        with pytest.raises(FailedPrecondition) as missed:
            sign()
        assert missed.value.reason == "top_up_refused"
        paid = sign()
    finally:
        fake.close()
    assert [p["payload"]["action"] for p in fake.posted] == ["topUp", "topUp"]
    assert fake.posted[0] == fake.posted[1]  # the same signed transaction, handed over twice
    encoded = paid.header_value.split(" ", 1)[1]
    voucher = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))["payload"]
    assert (voucher["action"], voucher["cumulativeAmount"]) == ("voucher", str(DEPOSIT + PRICE))
    assert _top_ups(teller, handle) == [(DEPOSIT, DEPOSIT)]
