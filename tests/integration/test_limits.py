"""The first spend policy: per-payment maximum and a UTC-day budget, exact under
concurrency because check, reservation and audit commit in one transaction."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from teller_client import InvalidArgument, LimitExceeded, Policy
from testbed.x402_server import sdk_v2_challenge


def _sign(client, chall, wallet_id, **kw):
    return client.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url, wallet_id=wallet_id, **kw)


def test_fifty_concurrent_calls_against_a_budget_for_ten(teller):
    t = teller.setup_tenant(policy=Policy(per_payment_max=1000, daily_budget=10_000))
    chall = sdk_v2_challenge(amount="1000")
    clients = [teller.client(t.token) for _ in range(10)]

    def attempt(i: int):
        try:
            return _sign(clients[i % len(clients)], chall, t.wallet_id)
        except LimitExceeded as exc:
            return exc

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(attempt, range(50)))

    signed = [r for r in results if not isinstance(r, Exception)]
    denied = [r for r in results if isinstance(r, LimitExceeded)]
    assert len(signed) == 10 and len(denied) == 40
    assert len({s.payment_id for s in signed}) == 10
    for d in denied:
        assert d.reason == "budget_exhausted:day"
        assert d.limit == 10_000 and d.remaining == 0

    admin = teller.admin()
    (day,) = admin.spend(t.tenant_id)
    assert (day.reserved, day.spent, day.remaining, day.limit) == (10_000, 0, 0, 10_000)
    signs, _ = admin.audit_events(tenant_id=t.tenant_id, action="payment.sign", page_size=1000)
    denials, _ = admin.audit_events(tenant_id=t.tenant_id, action="payment.deny", page_size=1000)
    assert len(signs) == 10 and len(denials) == 40
    assert {e.payment_id for e in signs} == {s.payment_id for s in signed}
    assert all(e.reason == "budget_exhausted:day" and e.outcome == "denied" for e in denials)


def test_per_payment_maximum_denies_with_the_limit(teller):
    t = teller.setup_tenant(policy=Policy(per_payment_max=999))
    with pytest.raises(LimitExceeded) as info:
        _sign(teller.client(t.token), sdk_v2_challenge(amount="1000"), t.wallet_id)
    assert info.value.reason == "per_payment_max"
    assert info.value.limit == 999
    assert "above the tenant per-payment maximum 999" in info.value.message
    events, _ = teller.admin().audit_events(tenant_id=t.tenant_id, action="payment.deny")
    assert events[0].reason == "per_payment_max" and events[0].amount == "1000"


def test_denial_reports_what_is_left(teller):
    t = teller.setup_tenant(policy=Policy(daily_budget=2500))
    client = teller.client(t.token)
    _sign(client, sdk_v2_challenge(amount="1000"), t.wallet_id)
    _sign(client, sdk_v2_challenge(amount="1000"), t.wallet_id)
    with pytest.raises(LimitExceeded) as info:
        _sign(client, sdk_v2_challenge(amount="1000"), t.wallet_id)
    assert (info.value.limit, info.value.remaining) == (2500, 500)
    assert info.value.metadata["window"] == "day"
    (day,) = client.spend()
    assert (day.reserved, day.remaining) == (2000, 500)


def test_caller_cap_is_honoured(teller):
    t = teller.setup_tenant()
    with pytest.raises(LimitExceeded) as info:
        _sign(teller.client(t.token), sdk_v2_challenge(amount="1000"), t.wallet_id, max_amount=999)
    assert info.value.reason == "caller_max_amount"
    signed = _sign(teller.client(t.token), sdk_v2_challenge(amount="1000"), t.wallet_id, max_amount=1000)
    assert signed.requirement.amount == 1000


def test_budget_resets_on_the_next_utc_day(tmp_path):
    from tests.support.harness import RunningTeller, make_settings

    now = [1_800_000_000.0 - 1_800_000_000.0 % 86400 + 86400 - 5]  # 5 s before midnight UTC
    running = RunningTeller(make_settings(f"sqlite:///{tmp_path / 'd.db'}", tmp_path), clock=lambda: now[0])
    try:
        t = running.setup_tenant(policy=Policy(daily_budget=1000))
        client = running.client(t.token)
        _sign(client, sdk_v2_challenge(amount="1000"), t.wallet_id)
        with pytest.raises(LimitExceeded):
            _sign(client, sdk_v2_challenge(amount="1000"), t.wallet_id)
        now[0] += 10
        _sign(client, sdk_v2_challenge(amount="1000"), t.wallet_id)
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("policy", "needle"),
    [
        (Policy(per_payment_max=500, daily_budget=100), "policy.budgets[0].limit: 100 is smaller than per_payment_max"),
        (Policy(per_payment_max=2**63), "policy.per_payment_max: must be at most"),
    ],
)
def test_bad_policies_are_refused(teller, policy, needle):
    t = teller.setup_tenant()
    with pytest.raises(InvalidArgument) as info:
        teller.admin().set_policy(t.tenant_id, policy)
    assert needle in info.value.message


def test_policy_changes_are_audited_with_old_and_new(teller):
    import json

    t = teller.setup_tenant(policy=Policy(per_payment_max=10))
    admin = teller.admin()
    stored = admin.set_policy(t.tenant_id, Policy(per_payment_max=20, daily_budget=100))
    assert admin.get_policy(t.tenant_id) == stored
    assert stored["per_payment_max"] == "20" and stored["budgets"][0]["limit"] == "100"
    events, _ = admin.audit_events(tenant_id=t.tenant_id, action="policy.set")
    details = json.loads(events[0].details_json)
    assert details["old"]["per_payment_max"] == "10" and details["old"]["budgets"] == []
    assert details["new"] == stored
