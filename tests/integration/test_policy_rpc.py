"""The policy engine through the gRPC API, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from x402.http.types import PaymentOption
from x402.schemas import AssetAmount

from teller_client import (
    Asset,
    Budget,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    Policy,
)
from testbed.x402_server import PAYEE, USDC_BASE_SEPOLIA, sdk_v2_challenge

DAI_LIKE = "0x6B175474E89094C44Da98b954EedeAC495271d0F"
OTHER_PAYEE = "0x1111111111111111111111111111111111111111"
USDC_ASSET = Asset("eip155:84532", USDC_BASE_SEPOLIA, 6)


def _sign(teller, t, chall, url=None):
    return teller.client(t.token).sign(status=402, headers=chall.headers, body=chall.body,
                                       url=url or chall.url, wallet_id=t.wallet_id)


@pytest.mark.parametrize(
    ("policy", "url", "reason"),
    [
        (Policy(assets=(USDC_ASSET,), networks_allow=("eip155:8453",)), None, "network_not_allowed"),
        (Policy(assets=(Asset("eip155:84532", DAI_LIKE, 18),)), None, "asset_not_allowed"),
        (Policy(assets=(USDC_ASSET,), payees_allow=(OTHER_PAYEE,)), None, "payee_not_allowed"),
        (Policy(assets=(USDC_ASSET,), payees_deny=(PAYEE,)), None, "payee_not_allowed"),
        (Policy(assets=(USDC_ASSET,), hosts_allow=("*.example.com",)), "https://evil.test/x", "host_not_allowed"),
    ],
)
def test_allowlist_denials_are_permission_denied_and_audited(teller, policy, url, reason):
    t = teller.setup_tenant(policy=policy)
    with pytest.raises(PermissionDenied) as info:
        _sign(teller, t, sdk_v2_challenge(), url)
    assert info.value.reason == reason and info.value.metadata["scope"] == "tenant"
    (event,) = teller.admin().audit_events(tenant_id=t.tenant_id, action="payment.deny")[0]
    assert (event.reason, event.outcome) == (reason, "denied")


def test_host_allowlist_admits_subdomains(teller):
    t = teller.setup_tenant(policy=Policy(assets=(USDC_ASSET,), hosts_allow=("*.example.com",)))
    assert _sign(teller, t, sdk_v2_challenge(), "https://api.example.com/weather").payment_id


def test_policy_decides_which_offer_is_paid(teller):
    t = teller.setup_tenant(policy=Policy(assets=(Asset("eip155:8453", USDC_BASE_SEPOLIA, 6),),
                                          networks_allow=("eip155:8453",)))
    options = [
        PaymentOption(scheme="exact", pay_to=PAYEE, network=n, max_timeout_seconds=60,
                      price=AssetAmount(amount="1000", asset=USDC_BASE_SEPOLIA, extra={"name": "USDC", "version": "2"}))
        for n in ("eip155:84532", "eip155:8453")
    ]
    signed = _sign(teller, t, sdk_v2_challenge(options=options))
    assert signed.requirement.network == "eip155:8453"


def test_stablecoins_share_budgets_in_the_common_unit(teller):
    dai = Asset("eip155:84532", DAI_LIKE, 18)
    t = teller.setup_tenant(policy=Policy(assets=(USDC_ASSET, dai), daily_budget=2_000_000))
    _sign(teller, t, sdk_v2_challenge(amount="1000000"))  # 1 USDC
    extra = {"name": "Dai", "version": "1"}
    _sign(teller, t, sdk_v2_challenge(amount=str(10**18 // 2), asset=DAI_LIKE, extra=extra))  # 0.5 DAI
    with pytest.raises(LimitExceeded) as info:
        _sign(teller, t, sdk_v2_challenge(amount=str(10**18 // 2 + 10**12), asset=DAI_LIKE, extra=extra))
    assert info.value.remaining == 500_000
    (day,) = teller.client(t.token).spend()
    assert (day.reserved, day.remaining) == (1_500_000, 500_000)


def test_several_windows_at_once_with_visibility(teller):
    t = teller.setup_tenant(policy=Policy(assets=(USDC_ASSET,), budgets=(
        Budget(5000, "1h", "rolling", "hour"), Budget(3000, "day", "calendar", "day"))))
    for _ in range(3):
        _sign(teller, t, sdk_v2_challenge(amount="1000"))
    with pytest.raises(LimitExceeded) as info:
        _sign(teller, t, sdk_v2_challenge(amount="1000"))
    assert info.value.reason == "budget_exhausted:day"
    report = {w.window: w for w in teller.admin().spend(t.tenant_id)}
    assert (report["hour"].kind, report["hour"].limit, report["hour"].reserved, report["hour"].remaining) == (
        "rolling", 5000, 3000, 2000)
    assert (report["day"].kind, report["day"].reserved, report["day"].remaining) == ("calendar", 3000, 0)
    assert report["day"].window_end_ms - report["day"].window_start_ms == 86_400_000


def test_wallet_policy_is_stricter_and_reported(teller):
    t = teller.setup_tenant(policy=Policy(assets=(USDC_ASSET,), daily_budget=10_000))
    admin = teller.admin()
    admin.set_policy(t.tenant_id, Policy(per_payment_max=2000, budgets=(Budget(2500, "1d", "rolling", "w"),)),
                     wallet_id=t.wallet_id)
    with pytest.raises(LimitExceeded) as info:
        _sign(teller, t, sdk_v2_challenge(amount="2001"))
    assert (info.value.reason, info.value.metadata["scope"]) == ("per_payment_max", "wallet")
    _sign(teller, t, sdk_v2_challenge(amount="2000"))
    with pytest.raises(LimitExceeded) as info:
        _sign(teller, t, sdk_v2_challenge(amount="1000"))
    assert (info.value.reason, info.value.remaining) == ("budget_exhausted:w", 500)
    scopes = {w.scope: w for w in admin.spend(t.tenant_id)}
    assert scopes["tenant"].reserved == 2000 and scopes[f"wallet:{t.wallet_id}"].reserved == 2000
    # a second wallet of the tenant is bound only by the tenant policy
    other = admin.create_wallet(t.tenant_id)
    teller.client(t.token).sign(status=402, headers=sdk_v2_challenge(amount="5000").headers, body=b"{}",
                                url="https://x.test/", wallet_id=other.id)


def test_invalid_policy_names_the_field_and_changes_nothing(teller):
    t = teller.setup_tenant(policy=Policy(assets=(USDC_ASSET,), per_payment_max=10))
    admin = teller.admin()
    before = admin.get_policy(t.tenant_id)
    with pytest.raises(InvalidArgument) as info:
        admin.set_policy(t.tenant_id, {"networks": {"allow": ["base-mainnet"]}})
    assert "policy.networks.allow[0]" in info.value.message
    with pytest.raises(InvalidArgument):
        admin.set_policy(t.tenant_id, "{not json")
    with pytest.raises(InvalidArgument) as info:
        admin.set_policy(t.tenant_id, {"assets": []}, wallet_id=t.wallet_id)
    assert "only be set on the tenant policy" in info.value.message
    assert admin.get_policy(t.tenant_id) == before


def test_policy_scope_must_belong_to_the_tenant(teller):
    a, b = teller.setup_tenant(), teller.setup_tenant()
    with pytest.raises(NotFound):
        teller.admin().set_policy(a.tenant_id, Policy(per_payment_max=1), wallet_id=b.wallet_id)
    with pytest.raises(NotFound):
        teller.admin().set_frozen(a.tenant_id, True, wallet_id=b.wallet_id)


def test_freezes_are_audited_with_old_and_new(teller):
    t = teller.setup_tenant()
    admin = teller.admin()
    admin.set_frozen(t.tenant_id, True, reason="incident 42")
    with pytest.raises(PermissionDenied) as info:
        _sign(teller, t, sdk_v2_challenge())
    assert info.value.reason == "frozen"
    admin.set_frozen(t.tenant_id, False)
    _sign(teller, t, sdk_v2_challenge())
    events, _ = admin.audit_events(tenant_id=t.tenant_id, action="tenant.freeze")
    details = [json.loads(e.details_json) for e in reversed(events)]
    assert details == [{"old": False, "new": True, "reason": "incident 42"}, {"old": True, "new": False, "reason": ""}]


def test_tenant_without_policy_pays_nothing(teller):
    admin = teller.admin()
    tenant = admin.create_tenant("bare")
    _, token = admin.issue_token(tenant.id)
    wallet = admin.create_wallet(tenant.id)
    chall = sdk_v2_challenge()
    with pytest.raises(PermissionDenied) as info:
        teller.client(token).sign(status=402, headers=chall.headers, body=chall.body, url=chall.url,
                                  wallet_id=wallet.id)
    assert info.value.reason == "asset_not_allowed"


def test_rolling_window_counts_payments_stamped_by_a_clock_ahead_of_ours(tmp_path):
    """Workers' clocks differ a little: a payment another worker stamped a moment
    'later' than our clock still counts against the rolling budget."""
    from tests.support.harness import RunningTeller, make_settings

    now = [1_800_000_000.0]
    running = RunningTeller(make_settings(f"sqlite:///{tmp_path / 'r.db'}", tmp_path), clock=lambda: now[0])
    try:
        t = running.setup_tenant(policy=Policy(budgets=(Budget(1000, "1h", "rolling", "hour"),)))
        _sign(running, t, sdk_v2_challenge(amount="1000"))
        now[0] -= 0.5  # the next call lands on a worker whose clock is half a second behind
        with pytest.raises(LimitExceeded) as info:
            _sign(running, t, sdk_v2_challenge(amount="1000"))
        assert info.value.reason == "budget_exhausted:hour"
    finally:
        running.stop()
