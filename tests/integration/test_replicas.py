"""Limits hold exactly across replicas: several `teller serve` processes on one
PostgreSQL, many concurrent callers, budgets that allow a known number."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from teller_client import (
    AdminClient,
    Budget,
    LimitExceeded,
    PermissionDenied,
    Policy,
    TellerClient,
    TellerError,
)
from testbed.procs import start_cluster
from testbed.x402_server import sdk_v2_challenge

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WORKERS = 3
CALLERS = 64
CALLS_PER_TENANT = 1000
PRICE = 1000
ALLOWED = 317  # payments each budget admits


@pytest.fixture
def cluster(pg_url, tmp_path):
    c = start_cluster(pg_url, WORKERS, tmp_path)
    yield c
    c.stop()


def _tenant(admin: AdminClient, name: str, budget: Budget):
    tenant = admin.create_tenant(name)
    _, token = admin.issue_token(tenant.id)
    wallet = admin.create_wallet(tenant.id)
    admin.set_policy(tenant.id, Policy(per_payment_max=PRICE, budgets=(budget,), allow_unknown_assets=True))
    return tenant.id, token, wallet.id


def test_budgets_hold_exactly_across_three_workers(cluster):
    admin = AdminClient(cluster.workers[0].target, cluster.admin_token)
    tenants = {
        "rolling": _tenant(admin, "rolling", Budget(ALLOWED * PRICE, "1h", "rolling", "hour")),
        "calendar": _tenant(admin, "calendar", Budget(ALLOWED * PRICE, "month", "calendar", "month")),
    }
    chall = sdk_v2_challenge(amount=str(PRICE))
    jobs = [kind for _ in range(CALLS_PER_TENANT) for kind in tenants]
    local = threading.local()

    def call(i: int) -> tuple[str, str]:
        kind = jobs[i]
        wallet_id = tenants[kind][2]
        clients = getattr(local, "clients", None)
        if clients is None:
            clients = local.clients = {
                (k, w.target): TellerClient(w.target, tenants[k][1]) for k in tenants for w in cluster.workers
            }
        worker = cluster.workers[i % WORKERS]
        try:
            clients[(kind, worker.target)].sign(status=402, headers=chall.headers, body=chall.body, url=chall.url,
                                                wallet_id=wallet_id)
            return kind, "signed"
        except LimitExceeded as exc:
            return kind, exc.reason
        except TellerError as exc:  # kept, so a failure shows what else happened
            return kind, f"error:{exc.code.name}:{exc.message[:120]}"

    with ThreadPoolExecutor(max_workers=CALLERS) as pool:
        outcomes = Counter(pool.map(call, range(len(jobs))))

    assert sum(outcomes.values()) == 2 * CALLS_PER_TENANT
    assert not [o for o in outcomes if o[1].startswith("error:")], outcomes
    assert outcomes[("rolling", "signed")] == ALLOWED
    assert outcomes[("rolling", "budget_exhausted:hour")] == CALLS_PER_TENANT - ALLOWED
    assert outcomes[("calendar", "signed")] == ALLOWED
    assert outcomes[("calendar", "budget_exhausted:month")] == CALLS_PER_TENANT - ALLOWED

    for kind, (tenant_id, _, _) in tenants.items():
        (window,) = admin.spend(tenant_id)
        assert (window.reserved, window.remaining) == (ALLOWED * PRICE, 0), kind
        counted = Counter()
        token = ""
        while True:
            events, token = admin.audit_events(tenant_id=tenant_id, page_size=1000, page_token=token)
            counted.update(e.action for e in events)
            if not token:
                break
        assert counted["payment.sign"] == ALLOWED
        assert counted["payment.deny"] == CALLS_PER_TENANT - ALLOWED


def test_freeze_through_one_replica_stops_every_replica(cluster):
    admin = AdminClient(cluster.workers[1].target, cluster.admin_token)
    tenant = admin.create_tenant("freezer")
    _, token = admin.issue_token(tenant.id)
    wallet = admin.create_wallet(tenant.id)
    admin.set_policy(tenant.id, Policy(allow_unknown_assets=True))
    chall = sdk_v2_challenge()
    clients = [TellerClient(w.target, token) for w in cluster.workers]

    def sign(client: TellerClient):
        return client.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url, wallet_id=wallet.id)

    for c in clients:
        sign(c)
    admin.set_frozen(tenant.id, True, reason="drill")
    for c in clients:
        with pytest.raises(PermissionDenied) as info:
            sign(c)
        assert info.value.reason == "frozen"
    admin.set_frozen(tenant.id, False)
    admin.set_frozen(tenant.id, True, wallet_id=wallet.id)
    for c in clients:
        with pytest.raises(PermissionDenied):
            sign(c)
    admin.set_frozen(tenant.id, False, wallet_id=wallet.id)
    for c in clients:
        sign(c)
    events, _ = admin.audit_events(tenant_id=tenant.id, action="payment.deny", page_size=100)
    assert len(events) == 6 and {e.reason for e in events} == {"frozen"}
