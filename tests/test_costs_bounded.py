"""Issue 17 point 4: every cost of a payment within a bound the operator chose.
Authorization lifetimes (x402 exact, MPP evm) are capped by
``Settings.max_authorization_seconds``, and an operator's void (native gas the
wallet pays) by ``Settings.max_void_fee_wei``. (Tempo fees against budgets and
``max_fee``: ``tests/test_mppx.py``; the fee reservation's arithmetic below.)"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest

from teller.errors import InvalidArgument
from teller.spend.evaluate import evaluate
from teller.spend.parse import parse, to_document
from teller.spend.rules import Charge, Scope
from teller_client import Asset, FailedPrecondition, Policy
from tests.support.chain import anvil, deploy_token
from tests.support.harness import RunningTeller, make_settings
from tests.support.x402_server import PAYEE, USDC_BASE_SEPOLIA

CAP_S = 600


@pytest.fixture
def capped(tmp_path):
    running = RunningTeller(make_settings(f"sqlite:///{tmp_path / 't.db'}", tmp_path, max_authorization_seconds=CAP_S,
                                          networks={"base-sepolia": 84532}))
    yield running
    running.stop()


def _decode(value: str) -> dict:
    encoded = value.split(" ", 1)[-1]
    return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))


def test_an_x402_authorization_lives_no_longer_than_the_cap(capped):
    t = capped.setup_tenant()
    req = {"scheme": "exact", "network": "base-sepolia", "maxAmountRequired": "100", "resource": "http://x/y",
           "payTo": PAYEE, "maxTimeoutSeconds": 86400, "asset": USDC_BASE_SEPOLIA,
           "extra": {"name": "USDC", "version": "2"}}
    body = json.dumps({"x402Version": 1, "error": "pay", "accepts": [req]}).encode()
    signed = capped.client(t.token).sign(status=402, headers=[], body=body, url="http://x/y", wallet_id=t.wallet_id)
    auth = json.loads(base64.b64decode(signed.header_value))["payload"]["authorization"]
    assert int(auth["validBefore"]) <= time.time() + CAP_S + 1
    assert capped.client(t.token).get_payment(signed.payment_id).valid_before == int(auth["validBefore"])


def test_an_mpp_evm_authorization_expiring_in_2099_lives_no_longer_than_the_cap(capped):
    t = capped.setup_tenant()
    doc = {"amount": "1000", "currency": USDC_BASE_SEPOLIA, "recipient": PAYEE,
           "methodDetails": {"chainId": 84532}, "extra": {"name": "USDC", "version": "2"}}
    encoded = base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")
    expires = datetime(2099, 1, 1, tzinfo=UTC).isoformat().replace("+00:00", "Z")
    headers = [("WWW-Authenticate", f'Payment id="evm-2099", realm="spec.example", method="evm", intent="charge", '
                                    f'request="{encoded}", expires="{expires}"')]
    signed = capped.client(t.token).sign(status=402, headers=headers, body=b"", url="https://spec.example/e",
                                         wallet_id=t.wallet_id)
    payload = _decode(signed.header_value)["payload"]
    assert payload["type"] == "authorization"
    assert int(payload["validBefore"]) <= time.time() + CAP_S + 1


def test_max_authorization_seconds_must_be_positive(tmp_path):
    from teller.config import ConfigError, finalize_for_serving, load

    settings = load(env={"TELLER_MAX_AUTHORIZATION_SECONDS": "0"}, dev_mode=True, data_dir=tmp_path,
                    database_url="sqlite://")
    assert settings.max_authorization_seconds == 0
    with pytest.raises(ConfigError, match="max_authorization_seconds"):
        finalize_for_serving(settings)


def test_a_void_that_could_cost_more_native_gas_than_the_cap_is_refused_and_audited(tmp_path):
    import httpx

    from tests.support.chain import TOKEN_NAME, TOKEN_VERSION
    from tests.support.mpp_live import evm_server

    with anvil() as url:
        chain = deploy_token(url)
        running = RunningTeller(make_settings(f"sqlite:///{tmp_path / 't.db'}", tmp_path, max_void_fee_wei=1,
                                              rpc_urls={chain.network: chain.rpc_url}, reconcile_interval_seconds=0))
        try:
            t = running.setup_tenant(policy=Policy(assets=(Asset(chain.network, chain.token.address, 6),),
                                                   protocols=("mpp",)))
            chain.mint(t.address, 1_000_000)
            chain.fund(t.address, 10**17)
            with evm_server(chain.rpc_url, chain.token, chain.chain_id, PAYEE, "0.03",
                            (TOKEN_NAME, TOKEN_VERSION)) as base:
                unpaid = httpx.get(f"{base}/evm", timeout=30)
                signed = running.client(t.token).sign(status=402, headers=list(unpaid.headers.items()),
                                                      body=unpaid.content, url=f"{base}/evm", wallet_id=t.wallet_id)
            native = chain.w3.eth.get_balance(t.address)
            with pytest.raises(FailedPrecondition) as refused:
                running.admin().void_payment(signed.payment_id)
            assert refused.value.reason == "max_void_fee"
            assert chain.w3.eth.get_balance(t.address) == native  # nothing sent
            assert running.client(t.token).get_payment(signed.payment_id).state == "signed"
            events, _ = running.admin().audit_events(tenant_id=t.tenant_id, action="payment.void_refused")
            assert [e.reason for e in events] == ["max_void_fee"]
        finally:
            running.stop()


def test_the_fee_is_reserved_in_the_common_unit_and_counts_against_budgets():
    """Pure policy: the fee (in the paid token's units) is converted like the
    amount; max_fee and the budgets see it; per_payment_max is the price."""
    usd18 = parse({"unit_decimals": 6, "per_payment_max": "1000000", "max_fee": "5000",
                          "budgets": [{"name": "day", "window": "day", "limit": "1004000"}],
                          "assets": [{"network": "eip155:1", "address": "0x" + "11" * 20, "decimals": 18}]})
    pay = Charge("eip155:1", "0x" + "11" * 20, 10**18, "0x" + "22" * 20, "https://a.example/", fee=3 * 10**15)
    scope = Scope("tenant", usd18, False, {"day": 0})
    ok = evaluate([scope], pay)
    assert (ok.allowed, ok.amount_common, ok.fee_common) == (True, 1_003_000, 3_000)
    over_budget = evaluate([Scope("tenant", usd18, False, {"day": 2_000})], pay)
    assert over_budget.reason == "budget_exhausted:day"
    pricey = Charge("eip155:1", "0x" + "11" * 20, 10**18, "0x" + "22" * 20, "https://a.example/",
                            fee=6 * 10**15)
    denied = evaluate([scope], pricey)
    assert (denied.reason, denied.limit, denied.fee_common) == ("max_fee", 5_000, 6_000)
    error = denied.error(pricey)
    assert error.code.name == "RESOURCE_EXHAUSTED" and error.reason == "max_fee"
    assert parse(to_document(usd18)).max_fee == 5_000
    with pytest.raises(InvalidArgument, match=r"policy\.max_fee"):
        parse({"max_fee": "-1"})
