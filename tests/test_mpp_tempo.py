"""MPP on Tempo, end to end: Teller's credentials against the official pympp
server on ``anvil --network tempo``, with balances read from the chain."""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import UTC, timedelta

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mpp import Challenge, Credential

from teller_client import Asset, Budget, FailedPrecondition, LimitExceeded, Policy
from tests.support.harness import RunningTeller, make_settings
from tests.support.mpp_live import PATH_USD, REALM, tempo_chain, tempo_server

RECIPIENT = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
PLATFORM = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
MEMO = "0x" + "00" * 28 + "deadbeef"


@pytest.fixture(scope="module")
def chain():
    with tempo_chain() as c:
        yield c


def _teller(db_url, tmp_path, chain) -> RunningTeller:
    return RunningTeller(make_settings(db_url, tmp_path, rpc_urls={chain.network: chain.rpc_url},
                                       reconcile_interval_seconds=0))


@pytest.fixture
def live(tmp_path, chain):
    running = _teller(f"sqlite:///{tmp_path / 'teller.db'}", tmp_path, chain)
    yield running
    running.stop()


def _tenant(teller, chain, *, fund: int = 5_000_000, **policy_kw):
    t = teller.setup_tenant(policy=Policy(assets=(Asset(chain.network, PATH_USD, 6),),
                                          budgets=(Budget(50_000_000, "day", name="day"),), **policy_kw))
    if fund:
        chain.fund(t.address, fund)
    return t


def _sign(client, t, url: str):
    unpaid = httpx.get(url, timeout=30)
    assert unpaid.status_code == 402, unpaid.text
    return unpaid, client.sign(status=402, headers=list(unpaid.headers.items()), body=unpaid.content, url=url,
                               wallet_id=t.wallet_id)


def _credential(value: str) -> dict:
    scheme, encoded = value.split(" ", 1)
    assert scheme == "Payment"
    return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))


def _receipt(response: httpx.Response) -> dict:
    value = response.headers["payment-receipt"]
    return json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))


def _day(windows):
    (day,) = [w for w in windows if w.scope == "tenant" and w.window == "day"]
    return day


def test_pull_mode_pays_the_pympp_server(live, chain):
    t = _tenant(live, chain)
    client = live.client(t.token)
    with tempo_server(chain, RECIPIENT, {"/paid": {"amount": "0.25"}}) as base:
        before_recipient, before_payer = chain.balance(RECIPIENT), chain.balance(t.address)
        _, signed = _sign(client, t, f"{base}/paid")
        assert signed.header_name == "Authorization"
        assert (signed.requirement.protocol, signed.requirement.scheme) == ("mpp", "tempo/charge")
        cred = _credential(signed.header_value)
        assert cred["payload"]["type"] == "transaction" and cred["payload"]["signature"].startswith("0x76")
        paid = httpx.get(f"{base}/paid", headers={signed.header_name: signed.header_value}, timeout=60)
    assert paid.status_code == 200, paid.text
    receipt = _receipt(paid)
    assert receipt["status"] == "success" and receipt["method"] == "tempo"
    assert chain.balance(RECIPIENT) == before_recipient + 250_000
    fee = before_payer - 250_000 - chain.balance(t.address)
    assert 0 < fee < 10_000  # the wallet paid its own fee, in pathUSD
    record = client.record_outcome(signed.payment_id, status=200, headers=list(paid.headers.items()))
    assert (record.state, record.tx_hash) == ("settled", receipt["reference"].lower())
    assert _day(client.spend()).spent == 250_000 + fee  # the price and the fee it really cost
    events, _ = client.audit_events(action="payment.sign")
    details = json.loads(events[0].details_json)
    assert (details["protocol"], details["scheme"], details["mode"]) == ("mpp", "tempo/charge", "pull")


def test_credential_echo_and_source_are_what_pympp_expects(live, chain):
    t = _tenant(live, chain)
    client = live.client(t.token)
    with tempo_server(chain, RECIPIENT, {"/paid": {"amount": "0.01", "description": "weather \"now\""}}) as base:
        unpaid, signed = _sign(client, t, f"{base}/paid")
    challenge = Challenge.from_www_authenticate(unpaid.headers["www-authenticate"])
    parsed = Credential.from_authorization(signed.header_value)
    assert parsed.challenge == challenge.to_echo()
    assert parsed.source == f"did:pkh:eip155:31337:{t.address}"
    assert _credential(signed.header_value)["challenge"]["realm"] == REALM


def test_push_mode_broadcasts_and_records_the_fee(live, chain):
    t = _tenant(live, chain, mpp_mode="push")
    client = live.client(t.token)
    with tempo_server(chain, RECIPIENT, {"/paid": {"amount": "0.5"}}) as base:
        before = chain.balance(RECIPIENT)
        _, signed = _sign(client, t, f"{base}/paid")
        # Teller broadcast it before answering: the money has moved already.
        assert chain.balance(RECIPIENT) == before + 500_000
        cred = _credential(signed.header_value)
        assert cred["payload"]["type"] == "hash"
        record = client.get_payment(signed.payment_id)
        assert record.state == "settled" and record.tx_hash == cred["payload"]["hash"]
        paid = httpx.get(f"{base}/paid", headers={signed.header_name: signed.header_value}, timeout=60)
    assert paid.status_code == 200, paid.text
    assert _receipt(paid)["reference"].lower() == record.tx_hash
    assert chain.balance(RECIPIENT) == before + 500_000
    gas, _ = client.audit_events(action="payment.gas")
    assert len(gas) == 1 and int(gas[0].amount) > 0 and gas[0].payment_id == signed.payment_id


def test_splits_with_a_memo_set_by_the_challenge(live, chain):
    t = _tenant(live, chain)
    client = live.client(t.token)
    route = {"amount": "1", "splits": [{"amount": "100000", "recipient": PLATFORM, "memo": MEMO}]}
    with tempo_server(chain, RECIPIENT, {"/split": route}) as base:
        before_r, before_p = chain.balance(RECIPIENT), chain.balance(PLATFORM)
        _, signed = _sign(client, t, f"{base}/split")
        paid = httpx.get(f"{base}/split", headers={signed.header_name: signed.header_value}, timeout=60)
    assert paid.status_code == 200, paid.text
    assert chain.balance(RECIPIENT) == before_r + 900_000
    assert chain.balance(PLATFORM) == before_p + 100_000
    # The split's memo is on chain, as TransferWithMemo's indexed memo.
    receipt = chain.w3.eth.get_transaction_receipt(_receipt(paid)["reference"])
    topics = {t.hex().removeprefix("0x") for log in receipt["logs"] for t in log["topics"]}
    assert MEMO[2:] in topics
    assert signed.requirement.amount == 1_000_000  # the budget counts the whole charge


def test_payee_lists_cover_split_recipients(live, chain):
    t = _tenant(live, chain, fund=0, payees_deny=(PLATFORM,))
    client = live.client(t.token)
    route = {"amount": "1", "splits": [{"amount": "100000", "recipient": PLATFORM}]}
    with tempo_server(chain, RECIPIENT, {"/split": route}) as base:
        from teller_client import PermissionDenied

        with pytest.raises(PermissionDenied, match="payee"):
            _sign(client, t, f"{base}/split")


def test_a_wallet_holding_too_little(live, chain):
    """The chain's gas estimate refuses a payment the wallet cannot cover: Sign
    says so by reason before anything is signed or reserved, and the wallet pays
    no fee for a transaction that would only revert (before, it was signed,
    broadcast, reverted, and cost the wallet its fee)."""
    t = _tenant(live, chain, fund=100_000)
    client = live.client(t.token)
    for mode in ("pull", "push"):
        live.admin().set_policy(t.tenant_id, Policy(assets=(Asset(chain.network, PATH_USD, 6),), mpp_mode=mode,
                                                     budgets=(Budget(50_000_000, "day", name="day"),)))
        with tempo_server(chain, RECIPIENT, {"/paid": {"amount": "0.25"}}) as base:
            before, held = chain.balance(RECIPIENT), chain.balance(t.address)
            with pytest.raises(FailedPrecondition, match="cannot cover") as refused:
                _sign(client, t, f"{base}/paid")
        assert refused.value.reason == "insufficient_balance"
        assert (chain.balance(RECIPIENT), chain.balance(t.address)) == (before, held)
        assert live.admin().list_payments(t.tenant_id)[0] == []
        assert _day(client.spend()).reserved == 0


def test_an_unused_tempo_payment_expires_and_is_released(live, chain):
    t = _tenant(live, chain)
    client = live.client(t.token)
    route = {"amount": "0.3", "expires_in": timedelta(seconds=7)}
    with tempo_server(chain, RECIPIENT, {"/soon": route}) as base:
        _, signed = _sign(client, t, f"{base}/soon")
    record = client.get_payment(signed.payment_id)
    assert record.valid_before <= time.time() + 8  # no later than the challenge's expiry
    events, _ = client.audit_events(action="payment.sign")
    fee_max = json.loads(events[0].details_json)["fee_max"]
    assert fee_max > 0
    assert _day(client.spend()).reserved == 300_000 + fee_max  # the price and the most the fee can be
    while time.time() <= record.valid_before + 1:
        time.sleep(0.5)
    chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    assert live.admin().reconcile() == ({"expired": 1}, [])
    assert client.get_payment(signed.payment_id).state == "expired"
    assert _day(client.spend()).reserved == 0


def test_mpp_and_x402_share_one_budget(live, chain):
    t = _tenant(live, chain, fund=0)
    live.admin().set_policy(t.tenant_id, Policy(assets=(Asset(chain.network, PATH_USD, 6),
                                                        Asset("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", 6)),
                                                budgets=(Budget(400_000, "day", name="day"),)))
    client = live.client(t.token)
    from tests.support.x402_server import sdk_v2_challenge

    x = sdk_v2_challenge(amount="250000")
    client.sign(status=x.status, headers=x.headers, body=x.body, url=x.url, wallet_id=t.wallet_id)
    with tempo_server(chain, RECIPIENT, {"/paid": {"amount": "0.25"}}) as base:
        with pytest.raises(LimitExceeded) as info:
            _sign(client, t, f"{base}/paid")
    assert info.value.remaining == 150_000
    events, _ = client.audit_events(action="payment.deny")
    assert json.loads(events[0].details_json)["protocol"] == "mpp"


@pytest.mark.postgres
def test_twenty_concurrent_payments_from_one_wallet_all_settle(pg_url, tmp_path, chain):
    running = _teller(pg_url, tmp_path, chain)
    try:
        t = _tenant(running, chain, fund=20_000_000)
        client = running.client(t.token)
        with tempo_server(chain, RECIPIENT, {"/paid": {"amount": "0.1"}}) as base:
            unpaid = [httpx.get(f"{base}/paid", timeout=30) for _ in range(20)]
            signed: list = [None] * 20
            barrier = threading.Barrier(20)

            def sign(i: int) -> None:
                barrier.wait()
                signed[i] = client.sign(status=402, headers=list(unpaid[i].headers.items()), body=unpaid[i].content,
                                        url=f"{base}/paid", wallet_id=t.wallet_id)

            threads = [threading.Thread(target=sign, args=(i,)) for i in range(20)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(60)
            before = chain.balance(RECIPIENT)
            results: list = [None] * 20

            def pay(i: int) -> None:
                results[i] = httpx.get(f"{base}/paid", headers={signed[i].header_name: signed[i].header_value},
                                       timeout=60)

            threads = [threading.Thread(target=pay, args=(i,)) for i in range(20)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(90)
        assert [r.status_code for r in results] == [200] * 20, [r.text for r in results if r.status_code != 200]
        assert chain.balance(RECIPIENT) == before + 20 * 100_000
        assert len({_receipt(r)["reference"] for r in results}) == 20
    finally:
        running.stop()


def _hand_built(request_doc: dict, challenge_id: str) -> list[tuple[str, str]]:
    """A challenge pympp 0.16 cannot produce (it has no methodDetails.memo or
    supportedModes yet), written as the tempo charge spec defines it."""
    from datetime import datetime

    encoded = base64.urlsafe_b64encode(json.dumps(request_doc).encode()).decode().rstrip("=")
    expires = datetime.fromtimestamp(time.time() + 60, UTC).isoformat().replace("+00:00", "Z")
    return [("WWW-Authenticate", f'Payment id="{challenge_id}", realm="spec.example", method="tempo", '
                                 f'intent="charge", request="{encoded}", expires="{expires}"')]


@pytest.mark.parametrize("database, driver", [
    ("sqlite", "session"), pytest.param("postgres", "session", marks=pytest.mark.postgres),
    pytest.param("postgres", "async", marks=pytest.mark.postgres)])
def test_a_tempo_payment_signed_again_within_its_second_is_the_same_payment(database, driver, request, tmp_path,
                                                                           chain, monkeypatch):
    """A Tempo transaction signed twice within one second is the same bit for
    bit, and the chain takes it once: a second Sign returns the first payment
    and reserves nothing more. Whether a presigned transaction is already
    recorded is read with the batch's lock, not in a round trip of its own."""
    from types import SimpleNamespace

    from sqlalchemy import func, select

    from teller.db.models import AuditEvent, Payment
    from teller.sign import batch_io
    from tests.support.batches import commit, prepare

    looked_up: list[str] = []

    class CountedFindNonce(batch_io.FindNonce):
        def __init__(self, wallet_id: str, nonce: str) -> None:
            looked_up.append(nonce)
            super().__init__(wallet_id, nonce)

    monkeypatch.setattr(batch_io, "FindNonce", CountedFindNonce)
    url = f"sqlite:///{tmp_path / 'teller.db'}" if database == "sqlite" else request.getfixturevalue("pg_url")
    frozen = time.time()
    running = RunningTeller(make_settings(url, tmp_path, rpc_urls={chain.network: chain.rpc_url},
                                          reconcile_interval_seconds=0), clock=lambda: frozen)
    try:
        t = _tenant(running, chain)
        doc = {"amount": "40000", "currency": PATH_USD, "recipient": RECIPIENT, "methodDetails": {"chainId": 31337}}
        one, two = (SimpleNamespace(headers=_hand_built(doc, f"dup-{i}"), body=b"", url="https://spec.example/d")
                    for i in (1, 2))
        (first,) = commit(running, [prepare(running, t, one)], driver)
        # A later batch finds it with its reads; in one batch, the second call finds the first's.
        again, again_too, fresh, fresh_again = commit(
            running, [prepare(running, t, one), prepare(running, t, one), prepare(running, t, two),
                      prepare(running, t, two)], driver)
        assert again.payment_id == again_too.payment_id == first.payment_id
        assert again.header_value == first.header_value
        assert fresh.payment_id == fresh_again.payment_id != first.payment_id
        assert looked_up == []
        with running.app.db.read() as s:
            assert s.scalar(select(func.count()).select_from(Payment).where(Payment.tenant_id == t.tenant_id)) == 2
            assert s.scalar(select(func.sum(Payment.amount)).where(Payment.tenant_id == t.tenant_id)) == 80_000
            assert s.scalar(select(func.count()).select_from(AuditEvent).where(
                AuditEvent.tenant_id == t.tenant_id, AuditEvent.action == "payment.sign")) == 2
    finally:
        running.stop()


def test_a_memo_in_method_details_goes_on_the_primary_transfer(live, chain):
    t = _tenant(live, chain)
    doc = {"amount": "70000", "currency": PATH_USD, "recipient": RECIPIENT,
           "methodDetails": {"chainId": 31337, "memo": MEMO}}
    signed = live.client(t.token).sign(status=402, headers=_hand_built(doc, "memo-1"), body=b"",
                                       url="https://spec.example/x", wallet_id=t.wallet_id)
    raw = bytes.fromhex(_credential(signed.header_value)["payload"]["signature"][2:])
    before = chain.balance(RECIPIENT)
    receipt = chain.w3.eth.wait_for_transaction_receipt(chain.w3.eth.send_raw_transaction(raw), timeout=30)
    assert receipt["status"] == 1
    assert chain.balance(RECIPIENT) == before + 70_000
    topics = {t.hex().removeprefix("0x") for log in receipt["logs"] for t in log["topics"]}
    assert MEMO[2:] in topics


def test_a_push_only_challenge_is_paid_by_push(live, chain):
    t = _tenant(live, chain)  # the tenant prefers pull (the default)
    doc = {"amount": "60000", "currency": PATH_USD, "recipient": RECIPIENT,
           "methodDetails": {"chainId": 31337, "supportedModes": ["push"]}}
    before = chain.balance(RECIPIENT)
    signed = live.client(t.token).sign(status=402, headers=_hand_built(doc, "push-1"), body=b"",
                                       url="https://spec.example/y", wallet_id=t.wallet_id)
    assert _credential(signed.header_value)["payload"]["type"] == "hash"
    assert chain.balance(RECIPIENT) == before + 60_000


@settings(max_examples=300, deadline=None)
@given(to=st.binary(min_size=20, max_size=20), amount=st.integers(min_value=0, max_value=2**256 - 1),
       memo=st.none() | st.binary(min_size=0, max_size=32), checksummed=st.booleans())
def test_tip20_calls_are_the_bytes_pytempos_encoder_makes(to, amount, memo, checksummed):
    """Teller encodes TIP-20 transfer calls itself (web3's encoder was a third of
    an MPP Sign's CPU): the same bytes as pytempo's TIP20 helper, for any
    recipient, amount and memo."""
    from eth_utils import to_checksum_address
    from pytempo.contracts import TIP20

    from teller.mpp.charge import Transfer, tip20_transfer

    recipient = to_checksum_address(to) if checksummed else "0x" + to.hex()
    ours = tip20_transfer(PATH_USD, Transfer(recipient, amount, memo))
    theirs = (TIP20(PATH_USD).transfer_with_memo(to=recipient, amount=amount, memo=memo) if memo is not None
              else TIP20(PATH_USD).transfer(to=recipient, amount=amount))
    assert ours.data == bytes(theirs.data) and ours.to == bytes(theirs.to)


_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # low-s signatures only
_calls = st.lists(st.tuples(st.binary(min_size=20, max_size=20), st.binary(max_size=120)), min_size=1, max_size=11)


@settings(max_examples=300, deadline=None)
@given(chain_id=st.integers(1, 2**64), gas_limit=st.integers(1, 2**64), gas_price=st.integers(0, 2**128),
       valid_before=st.integers(1, 2**64), fee_token=st.binary(min_size=20, max_size=20), calls=_calls,
       r=st.integers(1, _SECP256K1_N - 1), s=st.integers(1, _SECP256K1_N // 2), v=st.sampled_from([27, 28]))
def test_tempo_transactions_are_the_bytes_pytempo_makes(chain_id, gas_limit, gas_price, valid_before, fee_token,
                                                        calls, r, s, v):
    """Teller encodes its Tempo transactions itself (pytempo's general model and
    pyrlp's type inference were a tenth of an MPP Sign): the signing hash and
    the signed transaction are pytempo's bytes, for any fields and calls in
    the shape Teller signs (expiring nonce, fees in a token, no fee payer)."""
    import attrs
    from pytempo import Call, Signature
    from pytempo import TempoTransaction as Theirs

    from teller.mpp.tempo_tx import EXPIRING_NONCE_KEY, TempoCall, TempoTransaction

    ours = TempoTransaction(chain_id=chain_id, gas_limit=gas_limit, gas_price=gas_price, valid_before=valid_before,
                            fee_token=fee_token, calls=tuple(TempoCall(to, data) for to, data in calls))
    theirs = Theirs.create(chain_id=chain_id, gas_limit=gas_limit, max_fee_per_gas=gas_price,
                           max_priority_fee_per_gas=gas_price, nonce_key=EXPIRING_NONCE_KEY, nonce=0,
                           valid_before=valid_before, fee_token=fee_token,
                           calls=tuple(Call.create(to=to, data=data) for to, data in calls))
    assert ours.signing_hash() == theirs.get_signing_hash()
    signature = Signature(r=r, s=s, v=v)
    assert ours.signed(signature.to_bytes()) == attrs.evolve(theirs, sender_signature=signature).encode()


def test_tempo_transactions_refuse_what_does_not_fit():
    from teller.mpp.tempo_tx import TempoCall, TempoTransaction, rlp

    call = TempoCall(b"\x11" * 20, b"")
    ok = {"chain_id": 1, "gas_limit": 1, "gas_price": 0, "valid_before": 1, "fee_token": b"\x22" * 20,
          "calls": (call,)}
    TempoTransaction(**ok)
    for change, needle in (({"calls": ()}, "at least one call"), ({"fee_token": b"\x22" * 19}, "20 bytes"),
                           ({"calls": (TempoCall(b"\x11" * 21, b""),)}, "20 bytes"),
                           ({"chain_id": 0}, "must be positive"), ({"gas_price": -1}, "not negative")):
        with pytest.raises(ValueError, match=needle):
            TempoTransaction(**{**ok, **change})
    with pytest.raises(ValueError, match="65 bytes"):
        TempoTransaction(**ok).signed(b"\x01" * 64)
    with pytest.raises(ValueError, match="negative"):
        rlp(-1)


def test_tip20_calls_refuse_what_does_not_fit():
    from teller.mpp.charge import Transfer, tip20_transfer

    ok = "0x" + "11" * 20
    with pytest.raises(ValueError, match="20 bytes"):
        tip20_transfer(PATH_USD, Transfer("0x" + "11" * 19, 1, None))
    with pytest.raises(ValueError, match="uint256"):
        tip20_transfer(PATH_USD, Transfer(ok, 2**256, None))
    with pytest.raises(ValueError, match="32 bytes"):
        tip20_transfer(PATH_USD, Transfer(ok, 1, b"\x01" * 33))
