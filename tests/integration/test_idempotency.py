"""Idempotency keys: a retried Sign returns the same proof and spends nothing more."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from teller_client import AlreadyExists, Policy
from testbed.x402_server import sdk_v2_challenge
from tests.support.harness import RunningTeller, make_settings


def _sign(client, chall, wallet_id, key):
    return client.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url, wallet_id=wallet_id,
                       idempotency_key=key)


def test_retry_returns_the_same_proof_and_spends_once(teller):
    t = teller.setup_tenant(policy=Policy(daily_budget=100_000))
    client = teller.client(t.token)
    chall = sdk_v2_challenge(amount="1000")
    first = _sign(client, chall, t.wallet_id, "order-1")
    again = _sign(client, chall, t.wallet_id, "order-1")
    assert again == first
    assert client.spend()[0].reserved == 1000
    other = _sign(client, chall, t.wallet_id, "order-2")
    assert other.header_value != first.header_value
    assert client.spend()[0].reserved == 2000


def test_same_key_different_request_is_refused(teller):
    t = teller.setup_tenant()
    client = teller.client(t.token)
    _sign(client, sdk_v2_challenge(amount="1000"), t.wallet_id, "k")
    with pytest.raises(AlreadyExists) as info:
        _sign(client, sdk_v2_challenge(amount="2000"), t.wallet_id, "k")
    assert "already used for a different request" in info.value.message


def test_concurrent_retries_yield_one_signature(teller):
    t = teller.setup_tenant(policy=Policy(daily_budget=100_000))
    chall = sdk_v2_challenge(amount="1000")
    clients = [teller.client(t.token) for _ in range(5)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda i: _sign(clients[i % 5], chall, t.wallet_id, "same"), range(20)))
    assert len({r.header_value for r in results}) == 1
    assert len({r.payment_id for r in results}) == 1
    signs, _ = teller.admin().audit_events(tenant_id=t.tenant_id, action="payment.sign")
    assert len(signs) == 1
    assert teller.client(t.token).spend()[0].reserved == 1000


def test_keys_expire_after_the_configured_time(tmp_path: Path):
    now = [1_800_000_000.0]
    running = RunningTeller(make_settings(f"sqlite:///{tmp_path / 'i.db'}", tmp_path, idempotency_ttl_seconds=60),
                            clock=lambda: now[0])
    try:
        t = running.setup_tenant()
        client = running.client(t.token)
        chall = sdk_v2_challenge(amount="1000")
        first = _sign(client, chall, t.wallet_id, "k")
        now[0] += 30
        assert _sign(client, chall, t.wallet_id, "k") == first
        now[0] += 31
        fresh = _sign(client, chall, t.wallet_id, "k")
        assert fresh.payment_id != first.payment_id
    finally:
        running.stop()
