"""MPP on Tempo against mppx, the TypeScript reference implementation, on
``anvil --network tempo --hardfork t4 --block-time 1``: Teller's Tempo charges
must be accepted by every MPP server, not only by pympp's (which broadcasts
without simulating). Balances are read from the chain.

mppx simulates a pull credential's transaction at its own gas limit before it
broadcasts, and answers any failure with a bare 500: its log is in each
assertion message."""

from __future__ import annotations

import base64
import json
import secrets
import time

import httpx
import pytest
from eth_utils import to_checksum_address

from teller_client import Asset, Budget, FailedPrecondition, LimitExceeded, Policy
from testbed.tempo import tempo_chain
from tests.support.harness import RunningTeller, make_settings
from tests.support.mpp_live import MPPX_CHAIN_ARGS, PATH_USD, MppxServer, mppx_server

EXISTING = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"  # anvil dev account 2: holds pathUSD
PRICE = 250_000


def fresh_address() -> str:
    """An address that has never held anything: a new one on every run."""
    return to_checksum_address("0x" + secrets.token_hex(20))


@pytest.fixture(scope="module")
def chain():
    with tempo_chain(*MPPX_CHAIN_ARGS) as c:
        yield c


@pytest.fixture
def live(tmp_path, chain):
    running = RunningTeller(make_settings(f"sqlite:///{tmp_path / 'teller.db'}", tmp_path,
                                          rpc_urls={chain.network: chain.rpc_url}, reconcile_interval_seconds=0,
                                          outbound_allow=("127.0.0.1",)))
    yield running
    running.stop()


def _tenant(teller, chain, *, fund: int = 5_000_000, **policy_kw):
    t = teller.setup_tenant(policy=Policy(assets=(Asset(chain.network, PATH_USD, 6),),
                                          budgets=(Budget(50_000_000, "day", name="day"),), **policy_kw))
    if fund:
        chain.fund(t.address, fund)
    return t


def _route(recipient: str, amount: str = "0.25", **kw) -> dict:
    return {"method": "tempo", "amount": amount, "recipient": recipient, **kw}


def _decode(value: str) -> dict:
    encoded = value.split(" ", 1)[-1]
    return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))


def _sign(client, t, url: str):
    unpaid = httpx.get(url, timeout=30)
    assert unpaid.status_code == 402, unpaid.text
    return client.sign(status=402, headers=list(unpaid.headers.items()), body=unpaid.content, url=url,
                       wallet_id=t.wallet_id)


def _retry(server: MppxServer, url: str, signed) -> httpx.Response:
    paid = httpx.get(url, headers={signed.header_name: signed.header_value}, timeout=60)
    assert paid.status_code == 200, f"mppx answered {paid.status_code} {paid.text[:300]}\n{server.log()}"
    return paid


def _day(client):
    (day,) = [w for w in client.spend() if w.scope == "tenant" and w.window == "day"]
    return day


def _signed_details(client, payment_id: str) -> dict:
    events, _ = client.audit_events(action="payment.sign")
    (event,) = [e for e in events if e.payment_id == payment_id]
    return json.loads(event.details_json)


def _fee_of(chain, tx_hash: str) -> int:
    """The fee a mined transaction cost its sender, in fee-token base units (rounded up)."""
    receipt = chain.w3.eth.get_transaction_receipt(tx_hash)
    return -(-int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"]) // 10**12)


@pytest.mark.parametrize("recipient", ["fresh", "existing"])
def test_pull_mode_pays_mppx(live, chain, recipient):
    payee = fresh_address() if recipient == "fresh" else EXISTING
    t = _tenant(live, chain)
    client = live.client(t.token)
    with mppx_server(chain, {"/paid": _route(payee)}) as server:
        before_payee, before_payer = chain.balance(payee), chain.balance(t.address)
        signed = _sign(client, t, f"{server.url}/paid")
        assert _decode(signed.header_value)["payload"]["type"] == "transaction"
        details = _signed_details(client, signed.payment_id)
        # The fee is reserved at its most (gas limit x max fee per gas) with the payment.
        assert details["fee_max"] == -(-details["gas_limit"] * details["max_fee_per_gas"] // 10**12) > 0
        assert (_day(client).reserved, _day(client).spent) == (PRICE + details["fee_max"], 0)
        paid = _retry(server, f"{server.url}/paid", signed)
    receipt = _decode(paid.headers["payment-receipt"])
    assert receipt["status"] == "success" and receipt["method"] == "tempo"
    fee = _fee_of(chain, receipt["reference"])
    assert 0 < fee <= details["fee_max"]
    assert chain.balance(payee) == before_payee + PRICE
    assert chain.balance(t.address) == before_payer - PRICE - fee
    record = client.record_outcome(signed.payment_id, status=200, headers=list(paid.headers.items()))
    assert (record.state, record.tx_hash) == ("settled", receipt["reference"].lower())
    # Trued up to the real fee once the chain shows what the transaction cost.
    assert (_day(client).reserved, _day(client).spent) == (0, PRICE + fee)


def test_push_mode_pays_a_fresh_recipient(live, chain):
    payee = fresh_address()
    t = _tenant(live, chain, mpp_mode="push")
    client = live.client(t.token)
    with mppx_server(chain, {"/paid": _route(payee)}) as server:
        before_payer = chain.balance(t.address)
        signed = _sign(client, t, f"{server.url}/paid")
        cred = _decode(signed.header_value)
        assert cred["payload"]["type"] == "hash"
        paid = _retry(server, f"{server.url}/paid", signed)
    assert _decode(paid.headers["payment-receipt"])["reference"].lower() == cred["payload"]["hash"].lower()
    fee = _fee_of(chain, cred["payload"]["hash"])
    assert chain.balance(payee) == PRICE
    assert chain.balance(t.address) == before_payer - PRICE - fee
    assert 0 < fee <= _signed_details(client, signed.payment_id)["fee_max"]
    assert (_day(client).reserved, _day(client).spent) == (0, PRICE + fee)


def test_splits_to_new_addresses_with_a_memo(live, chain):
    payee, first, second = fresh_address(), fresh_address(), fresh_address()
    memo = "0x" + secrets.token_hex(32)
    splits = [{"amount": "0.05", "recipient": first, "memo": memo}, {"amount": "0.02", "recipient": second}]
    t = _tenant(live, chain)
    client = live.client(t.token)
    with mppx_server(chain, {"/split": _route(payee, "1", splits=splits)}) as server:
        before_payer = chain.balance(t.address)
        signed = _sign(client, t, f"{server.url}/split")
        paid = _retry(server, f"{server.url}/split", signed)
    reference = _decode(paid.headers["payment-receipt"])["reference"]
    assert (chain.balance(payee), chain.balance(first), chain.balance(second)) == (930_000, 50_000, 20_000)
    assert chain.balance(t.address) == before_payer - 1_000_000 - _fee_of(chain, reference)
    # Nobody reported the outcome: the reconciler sees the transaction mined and trues the fee up.
    assert live.admin().reconcile() == ({"settled": 1}, [])
    assert (_day(client).reserved, _day(client).spent) == (0, 1_000_000 + _fee_of(chain, reference))
    logs = chain.w3.eth.get_transaction_receipt(reference)["logs"]
    assert any(memo[2:] in bytes(log["data"]).hex() or any(memo[2:] == bytes(tp).hex() for tp in log["topics"])
               for log in logs), "the split's memo is on chain"


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_pay_and_the_httpx_transport_pay_mppx(live, chain, mode):
    """Teller's own ``Pay`` and the client library's httpx transport, each paying a
    fresh recipient: the request, the payment and the paid retry in one call."""
    from teller_client import payment_info
    from teller_client.integrations import TellerTransport

    payee, other = fresh_address(), fresh_address()
    t = _tenant(live, chain, mpp_mode=mode)
    client = live.client(t.token)
    with mppx_server(chain, {"/a": _route(payee), "/b": _route(other)}) as server:
        before = chain.balance(t.address)
        r = client.pay(f"{server.url}/a", wallet_id=t.wallet_id)
        assert r.status == 200, f"{r.status} {r.body[:300]!r}\n{server.log()}"
        assert r.payment is not None and r.payment.state == "settled"
        with httpx.Client(transport=TellerTransport(client, t.wallet_id, max_amount=1_000_000), timeout=60) as http:
            via = http.get(f"{server.url}/b")
        assert via.status_code == 200, f"{via.status_code} {via.text[:300]}\n{server.log()}"
        info = payment_info(via)
        assert info is not None and info.receipt is not None
    fees = _fee_of(chain, r.payment.tx_hash) + _fee_of(chain, info.receipt["reference"])
    assert (chain.balance(payee), chain.balance(other)) == (PRICE, PRICE)
    assert chain.balance(t.address) == before - 2 * PRICE - fees
    assert (_day(client).reserved, _day(client).spent) == (0, 2 * PRICE + fees)


def test_a_credential_is_paid_once(live, chain):
    """mppx refuses a pull credential it has already broadcast: money moves once."""
    payee = fresh_address()
    t = _tenant(live, chain)
    client = live.client(t.token)
    with mppx_server(chain, {"/paid": _route(payee)}) as server:
        signed = _sign(client, t, f"{server.url}/paid")
        _retry(server, f"{server.url}/paid", signed)
        after_first = chain.balance(t.address)
        again = httpx.get(f"{server.url}/paid", headers={signed.header_name: signed.header_value}, timeout=60)
    assert again.status_code != 200
    assert (chain.balance(payee), chain.balance(t.address)) == (PRICE, after_first)


@pytest.mark.slow
def test_a_credential_past_its_expiry_moves_nothing(live, chain):
    """The transaction's valid_before is no later than the challenge's expiry: once
    it passed, mppx refuses the credential and the chain would too."""
    payee = fresh_address()
    t = _tenant(live, chain)
    client = live.client(t.token)
    with mppx_server(chain, {"/paid": _route(payee, expiresInS=7)}) as server:
        unpaid = httpx.get(f"{server.url}/paid", timeout=30)
        signed = client.sign(status=402, headers=list(unpaid.headers.items()), body=unpaid.content,
                             url=f"{server.url}/paid", wallet_id=t.wallet_id)
        before = chain.balance(t.address)
        time.sleep(8)
        late = httpx.get(f"{server.url}/paid", headers={signed.header_name: signed.header_value}, timeout=60)
    assert late.status_code != 200
    assert (chain.balance(payee), chain.balance(t.address)) == (0, before)
    assert live.admin().reconcile()[1] == []
    assert (_day(client).reserved, _day(client).spent) == (0, 0)


@pytest.mark.parametrize("held", [0, 100_000])
def test_a_wallet_that_cannot_pay_is_refused_before_signing(live, chain, held):
    """The chain's estimate refuses it: insufficient_balance, nothing signed,
    reserved or burned in fees."""
    payee = fresh_address()
    t = _tenant(live, chain, fund=held)
    client = live.client(t.token)
    with mppx_server(chain, {"/paid": _route(payee)}) as server:
        with pytest.raises(FailedPrecondition) as refused:
            _sign(client, t, f"{server.url}/paid")
    assert refused.value.reason == "insufficient_balance"
    assert (chain.balance(payee), chain.balance(t.address)) == (0, held)
    assert live.admin().list_payments(t.tenant_id)[0] == []
    assert _day(client).reserved == 0


def test_the_fee_counts_against_budgets_and_max_fee(live, chain):
    """Issue 17: every cost of a payment is within the budget. A budget that holds
    the price but not the fee refuses it, and so does a max_fee below what the
    transaction can cost; both are limit denials, audited, with nothing reserved."""
    payee = fresh_address()
    t = _tenant(live, chain)
    client, admin = live.client(t.token), live.admin()
    assets = (Asset(chain.network, PATH_USD, 6),)
    with mppx_server(chain, {"/paid": _route(payee)}) as server:
        admin.set_policy(t.tenant_id, Policy(assets=assets, budgets=(Budget(PRICE, "day", name="day"),)))
        with pytest.raises(LimitExceeded) as over_budget:
            _sign(client, t, f"{server.url}/paid")
        assert over_budget.value.reason == "budget_exhausted:day"
        admin.set_policy(t.tenant_id, Policy(assets=assets, max_fee=1, budgets=(Budget(10 * PRICE, "day", name="day"),)))
        with pytest.raises(LimitExceeded) as over_fee:
            _sign(client, t, f"{server.url}/paid")
        assert over_fee.value.reason == "max_fee" and over_fee.value.metadata["limit"] == "1"
        admin.set_policy(t.tenant_id, Policy(assets=assets, max_fee=100_000,
                                             budgets=(Budget(10 * PRICE, "day", name="day"),)))
        signed = _sign(client, t, f"{server.url}/paid")
        _retry(server, f"{server.url}/paid", signed)
    denials, _ = client.audit_events(action="payment.deny")
    assert sorted(e.reason for e in denials) == ["budget_exhausted:day", "max_fee"]
    assert chain.balance(payee) == PRICE


def test_a_cached_gas_limit_still_covers_a_recipient_whose_balance_dropped_to_zero(live, chain, monkeypatch):
    """The gas limit is estimated once per sender, fee token and call shape and
    then reused; it covers each recipient as if it held nothing, so a recipient
    that emptied its balance since (a transfer to it creates the balance again,
    ~250k gas more) is still paid, from the cache, without a revert."""
    from eth_account import Account
    from pytempo import TempoTransaction
    from pytempo.contracts import ALPHA_USD, TIP20

    recipient = Account.create()
    estimates: list[dict] = []
    original = type(live.app.chain)._estimate
    monkeypatch.setattr(type(live.app.chain), "_estimate",
                        lambda self, network, request: estimates.append(request) or original(self, network, request))
    t = _tenant(live, chain)
    client = live.client(t.token)
    chain.fund(recipient.address, 1_000)  # it holds pathUSD when the limit is estimated
    chain.fund(recipient.address, 1_000_000, token=ALPHA_USD)  # and AlphaUSD to pay its own fee below
    with mppx_server(chain, {"/paid": _route(recipient.address)}) as server:
        _retry(server, f"{server.url}/paid", _sign(client, t, f"{server.url}/paid"))
        assert estimates, "the first payment asks the chain"
        estimated = len(estimates)
        # The recipient moves all its pathUSD away (fees in AlphaUSD): its balance is zero again.
        held = chain.balance(recipient.address)
        price = int(chain.w3.eth.gas_price)
        drain = TempoTransaction.create(
            chain_id=31337, gas_limit=1_000_000, max_fee_per_gas=price, max_priority_fee_per_gas=price,
            nonce_key=2**256 - 1, nonce=0, valid_before=int(time.time()) + 20, fee_token=ALPHA_USD,
            calls=(TIP20(PATH_USD).transfer(to=EXISTING, amount=held),))
        tx_hash = chain.w3.eth.send_raw_transaction(drain.sign(recipient.key.hex()).encode())
        assert chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)["status"] == 1
        assert chain.balance(recipient.address) == 0
        before_payer = chain.balance(t.address)
        signed = _sign(client, t, f"{server.url}/paid")
        assert len(estimates) == estimated, "the second payment uses the cached limit"
        paid = _retry(server, f"{server.url}/paid", signed)
    fee = _fee_of(chain, _decode(paid.headers["payment-receipt"])["reference"])
    assert chain.balance(recipient.address) == PRICE
    assert chain.balance(t.address) == before_payer - PRICE - fee
