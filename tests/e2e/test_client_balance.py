"""Where an RPC endpoint is configured, Sign refuses up front a payment the
wallet cannot cover (its token balance minus what its payments still hold
reserved), so no budget is held for a proof that can only fail."""

from __future__ import annotations

import httpx
import pytest

from teller_client import FailedPrecondition, Policy
from testbed.chain import anvil, deploy_token
from tests.support.harness import RunningTeller, make_settings
from tests.support.x402_live import resource_server

PAYEE = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
PRICE = 7_000

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def evm():
    with anvil("--chain-id", "31338") as url:
        yield deploy_token(url)


def _running(tmp_path, evm, **kw) -> RunningTeller:
    return RunningTeller(make_settings(f"sqlite:///{tmp_path / 'b.db'}", tmp_path, reconcile_interval_seconds=0,
                                       outbound_allow=("127.0.0.1",), **kw))


def _challenge(base: str) -> httpx.Response:
    r = httpx.get(f"{base}/weather")
    assert r.status_code == 402
    return r


def _sign(client, r: httpx.Response, wallet_id: str, key: str):
    return client.sign(status=402, headers=list(r.headers.multi_items()), body=r.content, url=str(r.url),
                       wallet_id=wallet_id, idempotency_key=key)


def test_a_payment_the_wallet_cannot_cover_is_refused_before_anything_is_reserved(tmp_path, evm):
    running = _running(tmp_path, evm, rpc_urls={evm.network: evm.rpc_url}, balance_check_seconds=5.0)
    try:
        t = running.setup_tenant(policy=Policy(allow_unknown_assets=True, daily_budget=1_000_000))
        evm.mint(t.address, PRICE + 3_000)
        client = running.client(t.token)
        with resource_server(evm, PAYEE, PRICE) as base:
            r = _challenge(base)
            first = _sign(client, r, t.wallet_id, "a")
            # The balance covers one: the second purchase would leave the wallet short.
            with pytest.raises(FailedPrecondition) as info:
                _sign(client, r, t.wallet_id, "b")
            # A retry of the first purchase is not a new payment: it still gets its proof.
            assert _sign(client, r, t.wallet_id, "a") == first
        err = info.value
        assert err.reason == "insufficient_balance"
        assert (err.metadata["balance"], err.metadata["reserved"], err.metadata["amount"]) == (
            str(PRICE + 3_000), str(PRICE), str(PRICE))
        assert err.metadata["asset"].lower() == evm.token.address.lower() and err.metadata["network"] == evm.network
        # Nothing was held for the refused proof.
        assert client.spend()[0].reserved == PRICE
        denials, _ = running.admin().audit_events(tenant_id=t.tenant_id, action="payment.deny")
        assert [e.reason for e in denials] == ["insufficient_balance"]
        assert len(running.admin().list_payments(t.tenant_id)[0]) == 1
    finally:
        running.stop()


def test_an_empty_wallet_is_refused_and_funding_it_lets_it_pay(tmp_path, evm):
    # A short staleness bound, so the test sees the new balance soon.
    running = _running(tmp_path, evm, rpc_urls={evm.network: evm.rpc_url}, balance_check_seconds=0.2)
    try:
        t = running.setup_tenant(policy=Policy(allow_unknown_assets=True))
        client = running.client(t.token)
        with resource_server(evm, PAYEE, PRICE) as base:
            r = _challenge(base)
            with pytest.raises(FailedPrecondition, match="cannot cover this payment"):
                _sign(client, r, t.wallet_id, "x")
            evm.mint(t.address, PRICE)
            import time

            time.sleep(0.3)  # past the staleness bound
            assert _sign(client, r, t.wallet_id, "x").requirement.amount == PRICE
    finally:
        running.stop()


@pytest.mark.parametrize("settings", [{"balance_check_seconds": 5.0}, {"rpc_urls": "evm"}])
def test_without_an_rpc_endpoint_or_the_setting_there_is_no_pre_check(tmp_path, evm, settings):
    # No rpc_urls: Teller cannot know the balance. No balance_check_seconds: the check is off.
    kw = {k: ({evm.network: evm.rpc_url} if v == "evm" else v) for k, v in settings.items()}
    running = _running(tmp_path, evm, **kw)
    try:
        t = running.setup_tenant(policy=Policy(allow_unknown_assets=True))
        with resource_server(evm, PAYEE, PRICE) as base:
            r = _challenge(base)
            assert _sign(running.client(t.token), r, t.wallet_id, "k").requirement.amount == PRICE
    finally:
        running.stop()
