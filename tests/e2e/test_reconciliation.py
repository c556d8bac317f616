"""Spend follows the chain: payment outcomes, the reconciler, operator voids.

Everything runs against anvil, Teller's deployed EIP-3009 token and the official
x402 SDK's middleware and facilitator; the reconciler reads the real chain.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import httpx
import pytest
from web3 import Web3
from x402.http.utils import decode_payment_signature_header

from teller import cli
from teller.chain import ChainReader
from teller.db import Database, make_engine
from teller.reconciler import Reconciler
from teller_client import Asset, Budget, FailedPrecondition, PermissionDenied, Policy
from testbed.chain import TOKEN_NAME, TOKEN_VERSION, anvil, deploy_token
from testbed.x402_server import sdk_v2_challenge
from tests.support.harness import RunningTeller, make_settings
from tests.support.x402_live import resource_server

PAYEE = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
PRICE = 25_000


@pytest.fixture(scope="module")
def chain():
    with anvil() as url:
        yield deploy_token(url)


def _teller(db_url, tmp_path, chain, **kw) -> RunningTeller:
    kw.setdefault("reconcile_interval_seconds", 0)
    return RunningTeller(make_settings(db_url, tmp_path, rpc_urls={chain.network: chain.rpc_url}, **kw))


@pytest.fixture
def live(db_url, tmp_path, chain):
    running = _teller(db_url, tmp_path, chain)
    yield running
    running.stop()


def _tenant(teller, chain, *, mint: int = 1_000_000):
    t = teller.setup_tenant(policy=Policy(assets=(Asset(chain.network, chain.token.address, 6),),
                                          budgets=(Budget(10_000_000, "day", name="day"),)))
    if mint:
        chain.mint(t.address, mint)
    return t


def _sign(client, t, base: str):
    unpaid = httpx.get(f"{base}/weather", timeout=30)
    assert unpaid.status_code == 402
    return client.sign(status=402, headers=list(unpaid.headers.items()), body=unpaid.content,
                       url=f"{base}/weather", wallet_id=t.wallet_id)


def _retry(base: str, signed) -> httpx.Response:
    return httpx.get(f"{base}/weather", headers={signed.header_name: signed.header_value}, timeout=60)


def _day(windows):
    (day,) = [w for w in windows if w.scope == "tenant" and w.window == "day"]
    return day


def _actions(teller, payment_id: str) -> list[str]:
    events, _ = teller.admin().audit_events(page_size=1000)
    return sorted(e.action for e in events if e.payment_id == payment_id)


def test_settlement_is_confirmed_on_chain_and_a_replay_is_not_counted_twice(live, chain):
    t = _tenant(live, chain)
    client = live.client(t.token)
    payer_before, payee_before = chain.balance(t.address), chain.balance(PAYEE)
    with resource_server(chain, PAYEE, PRICE) as base:
        signed = _sign(client, t, base)
        assert client.get_payment(signed.payment_id).state == "signed"
        paid = _retry(base, signed)
        assert paid.status_code == 200, paid.text
        receipt = json.loads(base64.b64decode(paid.headers["payment-response"]))
        record = client.record_outcome(signed.payment_id, status=paid.status_code, headers=list(paid.headers.items()))
        assert (record.state, record.tx_hash) == ("settled", receipt["transaction"].lower())
        assert not record.released
        replay = _retry(base, signed)
    assert replay.status_code == 402  # the chain has used the nonce: the facilitator refuses
    after = client.record_outcome(signed.payment_id, status=replay.status_code, headers=list(replay.headers.items()))
    assert after.state == "settled"  # a refusal never rewrites a settlement
    assert chain.balance(t.address) == payer_before - PRICE
    assert chain.balance(PAYEE) == payee_before + PRICE
    day = _day(client.spend())
    assert (day.spent, day.reserved) == (PRICE, 0)
    assert live.admin().reconcile()[0] == {}  # nothing left to change
    assert _actions(live, signed.payment_id) == ["payment.outcome", "payment.outcome", "payment.settled",
                                                 "payment.sign"]


def test_a_settlement_claim_the_chain_does_not_show_is_not_believed(live, chain):
    t = _tenant(live, chain)
    client = live.client(t.token)
    with resource_server(chain, PAYEE, PRICE) as base:
        signed = _sign(client, t, base)
    fake = base64.b64encode(json.dumps({"success": True, "transaction": "0x" + "ab" * 32,
                                        "network": chain.network, "payer": t.address}).encode()).decode()
    record = client.record_outcome(signed.payment_id, status=200, headers={"PAYMENT-RESPONSE": fake})
    assert record.state == "signed" and record.tx_hash == ""
    assert _day(client.spend()).reserved == PRICE


def test_insufficient_balance_is_recorded_as_failed_not_spent(live, chain):
    t = _tenant(live, chain, mint=PRICE - 1)
    client = live.client(t.token)
    payer_before, payee_before = chain.balance(t.address), chain.balance(PAYEE)
    with resource_server(chain, PAYEE, PRICE) as base:
        signed = _sign(client, t, base)
        refused = _retry(base, signed)
    assert refused.status_code == 402
    record = client.record_outcome(signed.payment_id, status=402, headers=list(refused.headers.items()))
    assert record.state == "failed"
    assert "insufficient" in record.state_reason
    assert chain.balance(t.address) == payer_before and chain.balance(PAYEE) == payee_before
    day = _day(client.spend())
    # Not spent. Still held: the signed authorization stays valid until validBefore
    # and could be submitted once the wallet is topped up.
    assert (day.spent, day.reserved) == (0, PRICE)
    assert not record.released


def test_a_challenge_that_expires_before_use_is_refused_then_released(live, chain):
    t = _tenant(live, chain)
    client = live.client(t.token)
    payer_before = chain.balance(t.address)
    with resource_server(chain, PAYEE, PRICE, timeout_s=2) as base:
        signed = _sign(client, t, base)
        time.sleep(3)
        refused = _retry(base, signed)
    assert refused.status_code == 402
    record = client.record_outcome(signed.payment_id, status=402, headers=list(refused.headers.items()))
    assert record.state == "failed" and not record.released
    chain.mine()  # a block stamped after validBefore: from here on the authorization can never be used
    transitions, errors = live.admin().reconcile()
    assert (transitions, errors) == ({"released": 1}, [])
    record = client.get_payment(signed.payment_id)
    assert record.state == "failed" and record.released
    assert (_day(client.spend()).spent, _day(client.spend()).reserved) == (0, 0)
    assert chain.balance(t.address) == payer_before


def test_policy_denies_an_asset_or_network_before_signing(live, chain):
    t = _tenant(live, chain)
    client = live.client(t.token)
    other_token = deploy_token(chain.rpc_url)
    with resource_server(chain, PAYEE, PRICE, asset=other_token.token.address) as base:
        with pytest.raises(PermissionDenied, match="asset"):
            _sign(client, t, base)
    live.admin().set_policy(t.tenant_id, Policy(assets=(Asset(chain.network, chain.token.address, 6),),
                                                networks_allow=("eip155:8453",)))
    with resource_server(chain, PAYEE, PRICE) as base:
        with pytest.raises(PermissionDenied, match="network"):
            _sign(client, t, base)
    assert live.admin().list_payments(t.tenant_id)[0] == []
    events, _ = live.admin().audit_events(tenant_id=t.tenant_id, action="payment.deny")
    assert sorted(e.reason for e in events) == ["asset_not_allowed", "network_not_allowed"]


def test_reconciler_settles_expires_and_voids(live, chain, capsys):
    """Sign three: one settles through the server, one expires unused, one is
    voided by an operator. Spend ends equal to exactly the settled amount."""
    t = _tenant(live, chain)
    chain.fund(t.address, 10**17)  # gas for cancelAuthorization
    client, admin = live.client(t.token), live.admin()
    with resource_server(chain, PAYEE, PRICE) as base:
        to_settle = _sign(client, t, base)
        to_void = _sign(client, t, base)
        paid = _retry(base, to_settle)  # the caller never reports it: the reconciler must find it
        assert paid.status_code == 200
    with resource_server(chain, PAYEE, PRICE + 1, timeout_s=2) as base:
        to_expire = _sign(client, t, base)
    assert _day(client.spend()).reserved == 3 * PRICE + 1

    voided = admin.void_payment(to_void.payment_id, "caller gave up")
    assert voided.state == "voided" and voided.released and voided.tx_hash.startswith("0x")
    assert chain.authorization_used(t.address, voided.nonce)
    with pytest.raises(FailedPrecondition, match="only an unused authorization"):
        admin.void_payment(to_void.payment_id)

    chain.mine(at=int(time.time()) + 3)  # a block stamped after the 2 s authorization's validBefore
    transitions, errors = admin.reconcile()
    assert errors == []
    assert transitions == {"settled": 1, "expired": 1}
    states = {p.id: p for p in admin.list_payments(t.tenant_id)[0]}
    receipt = json.loads(base64.b64decode(paid.headers["payment-response"]))
    assert states[to_settle.payment_id].state == "settled"
    assert states[to_settle.payment_id].tx_hash == receipt["transaction"].lower()
    assert states[to_expire.payment_id].state == "expired" and states[to_expire.payment_id].released
    assert states[to_void.payment_id].state == "voided"
    day = _day(client.spend())
    assert (day.spent, day.reserved) == (PRICE, 0)
    with pytest.raises(FailedPrecondition, match="only an unused authorization"):
        admin.void_payment(to_settle.payment_id)
    assert admin.reconcile() == ({}, [])  # a second pass changes nothing
    assert "payment.gas" in _actions(live, to_void.payment_id)

    # `teller admin payment show` tells an operator the state.
    code = cli.main(["admin", "--target", live.target, "--token", live.settings.admin_token,
                     "payment", "show", to_expire.payment_id])
    shown = json.loads(capsys.readouterr().out)
    assert code == 0 and shown["state"] == "expired" and shown["released"] is True
    cli.main(["admin", "--target", live.target, "--token", live.settings.admin_token,
              "payment", "list", t.tenant_id])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["ID", "STATE"] and len(table) == 4


def test_void_needs_gas_and_says_so(live, chain):
    t = _tenant(live, chain)
    client = live.client(t.token)
    with resource_server(chain, PAYEE, PRICE) as base:
        signed = _sign(client, t, base)
    with pytest.raises(FailedPrecondition, match="holds no gas"):
        live.admin().void_payment(signed.payment_id)
    record = client.get_payment(signed.payment_id)
    assert record.state == "signed" and not record.released


def test_background_reconciler_in_the_worker(db_url, tmp_path, chain):
    running = _teller(db_url, tmp_path, chain, reconcile_interval_seconds=0.2)
    try:
        t = _tenant(running, chain)
        client = running.client(t.token)
        with resource_server(chain, PAYEE, PRICE) as base:
            signed = _sign(client, t, base)
            assert _retry(base, signed).status_code == 200
        deadline = time.time() + 20
        while client.get_payment(signed.payment_id).state != "settled":
            assert time.time() < deadline, "the worker's reconciler did not settle the payment"
            time.sleep(0.2)
        assert _day(client.spend()).spent == PRICE
    finally:
        running.stop()


def _settle_directly(chain, header_value: str) -> None:
    """Submit a signed authorization the way any facilitator would."""
    payload = decode_payment_signature_header(header_value).payload
    a = payload["authorization"]
    chain._transact(chain.token.functions.transferWithAuthorization(
        Web3.to_checksum_address(a["from"]), Web3.to_checksum_address(a["to"]), int(a["value"]),
        int(a["validAfter"]), int(a["validBefore"]), bytes.fromhex(a["nonce"][2:]),
        bytes.fromhex(payload["signature"][2:])))


@pytest.mark.postgres
def test_several_reconcilers_change_each_payment_once(pg_url, tmp_path, chain):
    running = _teller(pg_url, tmp_path, chain)
    try:
        t = _tenant(running, chain)
        client = running.client(t.token)
        extra = {"name": TOKEN_NAME, "version": TOKEN_VERSION}
        settle, expire = [], []
        for i in range(16):
            c = sdk_v2_challenge(amount=str(1000 + i), network=chain.network, asset=chain.token.address,
                                 extra=extra, timeout=120 if i % 2 else 2)
            s = client.sign(status=c.status, headers=c.headers, body=c.body, url=c.url, wallet_id=t.wallet_id)
            (settle if i % 2 else expire).append(s)
        for s in settle:
            _settle_directly(chain, s.header_value)
        chain.mine(at=int(time.time()) + 3)  # a block stamped after the 2 s authorizations' validBefore

        engines = [make_engine(pg_url, 4) for _ in range(4)]
        reconcilers = [Reconciler(Database(e), ChainReader({chain.network: chain.rpc_url}), use_lease=False)
                       for e in engines]
        results = [None] * len(reconcilers)
        barrier = threading.Barrier(len(reconcilers))

        def run(i: int) -> None:
            barrier.wait()
            results[i] = reconcilers[i].run_once()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(reconcilers))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        for e in engines:
            e.dispose()
        assert all(r is not None and r.errors == [] for r in results)
        total = {"settled": 0, "expired": 0}
        for r in results:
            for k, v in r.transitions.items():
                total[k] += v
        assert total == {"settled": 8, "expired": 8}  # each change applied by exactly one worker
        for s in settle + expire:
            actions = _actions(running, s.payment_id)
            assert actions.count("payment.settled") + actions.count("payment.expired") == 1, actions
        day = _day(client.spend())
        assert (day.spent, day.reserved) == (sum(1000 + i for i in range(1, 16, 2)), 0)
    finally:
        running.stop()


@pytest.mark.postgres
def test_lease_keeps_a_second_worker_from_repeating_the_scan(pg_url, chain):
    from teller.db import upgrade

    upgrade(pg_url)
    db = Database(make_engine(pg_url, 2))
    try:
        reader = ChainReader({chain.network: chain.rpc_url})
        now = [time.time()]  # both workers' clock: the lease runs out when the test moves it
        first, second = (Reconciler(db, reader, lambda: now[0], lease_s=0.5),
                         Reconciler(db, reader, lambda: now[0], lease_s=0.5))
        assert first.run_once().skipped == []
        assert second.run_once().skipped == [chain.network]
        assert first.run_once().skipped == []  # the holder renews its own lease
        now[0] += 0.6  # the holder died: its lease runs out and another worker takes over
        assert second.run_once().skipped == []
        assert first.run_once().skipped == [chain.network]
    finally:
        db.engine.dispose()
