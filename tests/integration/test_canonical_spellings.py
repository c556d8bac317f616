"""Two spellings of one thing are never two things to the policy and one to the signature.

Through the real ``Sign`` and ``Pay`` RPCs (in-process gRPC on port 0, SQLite):
for every spelling the generators in ``tests.support.spellings`` draw of a
denied network, asset, payee or host, nothing is signed and no budget is
reserved: the call is refused (INVALID_ARGUMENT naming the field) or denied
by the policy. Controls show the same tenants pay the canonical allowed values.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from teller.db.models import Payment
from teller_client import FailedPrecondition, InvalidArgument, PermissionDenied, TellerError
from testbed.loopback import serve
from tests.support import spellings
from tests.support.harness import RunningTeller, TenantSetup, make_settings

BASE = 8453
SEPOLIA = "eip155:84532"
USDC_BASE = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
USDC_SEPOLIA = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
DENIED_TOKEN = "0x6B175474E89094C44Da98b954EedeAC495271d0F"
OK_PAYEE = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
DENIED_PAYEE = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
OK_URL = "https://api.example.com/paid"

#: A tenant counting in 12 decimals, USDC registered at 6, unknown assets admitted
#: (at the common unit's 12 decimals), $1 per payment, and one denied value of each class.
POLICY: dict[str, Any] = {
    "unit_decimals": 12,
    "per_payment_max": str(10**12),
    "assets": [{"network": f"eip155:{BASE}", "address": USDC_BASE, "decimals": 6},
               {"network": SEPOLIA, "address": USDC_SEPOLIA, "decimals": 6}],
    "allow_unknown_assets": True,
    "networks": {"deny": [f"eip155:{BASE}"]},
    "deny_assets": [{"network": SEPOLIA, "address": DENIED_TOKEN}],
    "payees": {"deny": [DENIED_PAYEE]},
    "hosts": {"deny": ["127.0.0.1", "evil.example"]},
}
REFUSALS = (InvalidArgument, PermissionDenied, FailedPrecondition)
DENIALS = {"network_not_allowed", "asset_not_allowed", "payee_not_allowed", "host_not_allowed"}


def x402_v2(*, network: Any = SEPOLIA, asset: Any = USDC_SEPOLIA, pay_to: Any = OK_PAYEE,
            amount: Any = "1000") -> list[tuple[str, str]]:
    doc = {"x402Version": 2, "resource": {"url": OK_URL}, "accepts": [{
        "scheme": "exact", "network": network, "amount": amount, "asset": asset, "payTo": pay_to,
        "maxTimeoutSeconds": 60, "extra": {"name": "USDC", "version": "2"}}]}
    return [("PAYMENT-REQUIRED", base64.b64encode(json.dumps(doc).encode()).decode())]


def x402_v1(*, network: Any = "base-sepolia", asset: Any = USDC_SEPOLIA, pay_to: Any = OK_PAYEE,
            amount: Any = "1000") -> bytes:
    return json.dumps({"x402Version": 1, "error": "X-PAYMENT header is required", "accepts": [{
        "scheme": "exact", "network": network, "maxAmountRequired": amount, "resource": OK_URL,
        "description": "weather", "mimeType": "application/json", "payTo": pay_to, "maxTimeoutSeconds": 60,
        "asset": asset, "extra": {"name": "USDC", "version": "2"}}]}).encode()


def mpp_evm(*, chain_id: Any = 84532, currency: Any = USDC_SEPOLIA, recipient: Any = OK_PAYEE,
            amount: Any = "1000", splits: list[dict[str, Any]] | None = None) -> list[tuple[str, str]]:
    details: dict[str, Any] = {"chainId": chain_id, "credentialTypes": ["authorization"]}
    if splits is not None:
        details["splits"] = splits
    request = {"amount": amount, "currency": currency, "recipient": recipient, "methodDetails": details,
               "extra": {"name": "USDC", "version": "2"}}
    encoded = base64.urlsafe_b64encode(json.dumps(request).encode()).decode().rstrip("=")
    expires = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [("WWW-Authenticate", f'Payment id="{uuid.uuid4()}", realm="api.example.com", method="evm", '
                                 f'intent="charge", request="{encoded}", expires="{expires}"')]


class Canon:
    def __init__(self, teller: RunningTeller) -> None:
        self.teller = teller
        self.denying = teller.setup_tenant()
        teller.admin().set_policy(self.denying.tenant_id, POLICY)
        self.client = teller.client(self.denying.token)

    def sign(self, headers: list[tuple[str, str]], body: bytes = b"", url: str = OK_URL) -> Any:
        return self.client.sign(status=402, headers=headers, body=body, url=url, wallet_id=self.denying.wallet_id)

    def payments(self, t: TenantSetup | None = None) -> int:
        with self.teller.app.db.read() as s:
            return int(s.scalar(select(func.count()).select_from(Payment).where(
                Payment.tenant_id == (t or self.denying).tenant_id)) or 0)

    def refused(self, headers: list[tuple[str, str]], body: bytes = b"", url: str = OK_URL) -> TellerError:
        before = self.payments()
        with pytest.raises(TellerError) as info:
            self.sign(headers, body, url)
        err = info.value
        assert isinstance(err, REFUSALS), f"{type(err).__name__}: {err}"
        if isinstance(err, PermissionDenied):
            assert err.reason in DENIALS, err.reason
        assert self.payments() == before, "a refused Sign reserved budget"
        return err


@pytest.fixture(scope="module")
def canon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Canon]:
    tmp = tmp_path_factory.mktemp("canon")
    teller = RunningTeller(make_settings(f"sqlite:///{tmp / 'teller.db'}", tmp))
    try:
        yield Canon(teller)
    finally:
        teller.stop()


FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_control_the_canonical_allowed_values_are_paid(canon):
    before = canon.payments()
    assert canon.sign(x402_v2()).payment_id
    assert canon.sign([], x402_v1()).payment_id
    assert canon.sign(mpp_evm()).payment_id
    assert canon.payments() == before + 3


def test_leading_zeros_cannot_move_a_payment_out_of_the_registry(canon):
    """The report's example: eip155:08453 was another string to the deny list and the
    asset registry (so USDC counted at the 12-decimal common unit), the same chain to
    the EIP-712 domain: 1,000,000 USDC signed against a $1 per-payment maximum."""
    err = canon.refused(x402_v2(network="eip155:08453", asset=USDC_BASE, amount=str(10**12)))
    assert isinstance(err, InvalidArgument) and "accepts[0].network" in err.message


def test_a_v1_network_name_is_its_chain(canon):
    err = canon.refused([], x402_v1(network="base", asset=USDC_BASE))
    assert isinstance(err, PermissionDenied) and err.reason == "network_not_allowed"


@pytest.mark.parametrize("field", ["asset", "pay_to"])
def test_addresses_without_0x_are_refused_by_name(canon, field):
    bare = (DENIED_TOKEN if field == "asset" else DENIED_PAYEE)[2:].lower()
    err = canon.refused(x402_v2(**{field: bare}))
    assert isinstance(err, InvalidArgument)
    assert ("accepts[0].asset" if field == "asset" else "accepts[0].payTo") in err.message


@FAST
@given(network=spellings.networks(BASE, names=("base",)))
@example(network="eip155:08453")
@example(network="eip155:\uff18\uff14\uff15\uff13")
def test_a_denied_network_is_never_signed(canon, network):
    canon.refused(x402_v2(network=network, asset=USDC_BASE))


@FAST
@given(network=spellings.networks(BASE, names=("base",)))
def test_a_denied_network_is_never_signed_v1(canon, network):
    canon.refused([], x402_v1(network=network, asset=USDC_BASE))


@FAST
@given(chain=st.one_of(st.sampled_from([float(BASE), str(BASE), f"0{BASE}", hex(BASE), BASE + 2**64, BASE + 2**256,
                                        -BASE, BASE * 10**30, [BASE], {"id": BASE}])))
def test_a_denied_mpp_chain_is_never_signed(canon, chain):
    canon.refused(mpp_evm(chain_id=chain))


@FAST
@given(asset=spellings.addresses(DENIED_TOKEN))
@example(asset=DENIED_TOKEN[2:].lower())
@example(asset="0X" + DENIED_TOKEN[2:].upper())
def test_a_denied_asset_is_never_signed(canon, asset):
    canon.refused(x402_v2(asset=asset))


@FAST
@given(asset=spellings.addresses(DENIED_TOKEN))
def test_a_denied_mpp_currency_is_never_signed(canon, asset):
    canon.refused(mpp_evm(currency=asset))


@FAST
@given(payee=spellings.addresses(DENIED_PAYEE))
@example(payee=DENIED_PAYEE[2:].lower())
@example(payee="0X" + DENIED_PAYEE[2:].upper())
def test_a_denied_payee_is_never_signed(canon, payee):
    canon.refused(x402_v2(pay_to=payee))


@FAST
@given(payee=spellings.addresses(DENIED_PAYEE), split=st.booleans())
def test_a_denied_mpp_recipient_is_never_signed(canon, payee, split):
    if split:
        canon.refused(mpp_evm(splits=[{"recipient": payee, "amount": "10"}]))
    else:
        canon.refused(mpp_evm(recipient=payee))


@FAST
@given(host=st.one_of(st.sampled_from(spellings.IPV4_LOOPBACK), spellings.hosts("evil.example")),
       userinfo=st.sampled_from(["", "api.example.com@"]))
@example(host="127.1", userinfo="")
@example(host="EVIL.example.", userinfo="")
def test_a_denied_host_is_never_signed(canon, host, userinfo):
    canon.refused(x402_v2(), url=f"https://{userinfo}{host}/paid")


@FAST
@given(amount=st.one_of(spellings.numbers(1000), st.just(str(2**256)), st.just("9" * 5000)))
def test_amounts_are_canonical_uint256(canon, amount):
    err = canon.refused(x402_v2(amount=amount))
    assert "accepts[0].amount" in err.message
    # Not a uint256 in canonical decimal: INVALID_ARGUMENT; a canonical one past the ledger: by reason.
    assert isinstance(err, InvalidArgument) or "exceeds the largest amount Teller accounts" in err.message


def test_an_amount_the_ledger_cannot_count_is_refused_by_name(canon):
    # 10**13 atomic USDC (6 decimals) is 10**25 in an 18-decimal common unit: more than the
    # 64-bit ledger holds, while the raw amount fits. Refused by name, nothing reserved.
    t = canon.teller.setup_tenant()
    canon.teller.admin().set_policy(t.tenant_id, {"unit_decimals": 18, "allow_unknown_assets": True,
                                                  "assets": [{"network": SEPOLIA, "address": USDC_SEPOLIA,
                                                              "decimals": 6}]})
    client = canon.teller.client(t.token)
    with pytest.raises(FailedPrecondition) as info:
        client.sign(status=402, headers=x402_v2(amount=str(10**13)), body=b"", url=OK_URL, wallet_id=t.wallet_id)
    assert info.value.reason == "amount_out_of_range" and "common unit" in info.value.message
    assert canon.payments(t) == 0


# --- Pay: the host Teller fetches is the host the policy compared -------------------

def _paid_app(seen: list[str]) -> Starlette:
    async def paid(request: Request) -> JSONResponse:
        if "payment-signature" in request.headers:
            seen.append(request.headers["host"])
            return JSONResponse({"weather": "sunny"})
        return JSONResponse({}, status_code=402, headers=dict(x402_v2()))

    return Starlette(routes=[Route("/paid", paid)])


@pytest.fixture(scope="module")
def pay_server() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    with serve(_paid_app(seen)) as url:
        yield url.rsplit(":", 1)[1], seen


@pytest.fixture(scope="module")
def payer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Canon]:
    tmp = tmp_path_factory.mktemp("payer")
    teller = RunningTeller(make_settings(f"sqlite:///{tmp / 'teller.db'}", tmp, outbound_allow=("127.0.0.0/8",)))
    try:
        yield Canon(teller)
    finally:
        teller.stop()


def test_pay_control_a_tenant_without_the_host_rule_pays_the_same_server(payer, pay_server):
    port, seen = pay_server
    t = payer.teller.setup_tenant()
    head = payer.teller.client(t.token).pay(f"http://127.0.0.1:{port}/paid", wallet_id=t.wallet_id)
    assert head.status == 200 and payer.payments(t) == 1 and seen


@settings(max_examples=len(spellings.IPV4_LOOPBACK) * 2, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(host=st.sampled_from(spellings.IPV4_LOOPBACK))
def test_pay_never_pays_a_denied_host_in_any_spelling(payer, pay_server, host):
    port, seen = pay_server
    paid_before, before = len(seen), payer.payments()
    with pytest.raises(TellerError) as info:
        payer.client.pay(f"http://{host}:{port}/paid", wallet_id=payer.denying.wallet_id)
    err = info.value
    assert isinstance(err, REFUSALS), f"{type(err).__name__}: {err}"
    if isinstance(err, PermissionDenied):
        assert err.reason == "host_not_allowed", err.reason
    assert payer.payments() == before and len(seen) == paid_before


@pytest.fixture
def frozen_teller(db_url: str, tmp_path: Path) -> Iterator[RunningTeller]:
    # One minute for the whole test, so every payment lands in one bucket.
    now = (time.time() // 60) * 60 + 1
    running = RunningTeller(make_settings(db_url, tmp_path), clock=lambda: now)
    yield running
    running.stop()


def test_a_minutes_spend_past_the_ledger_is_refused_on_both_databases(frozen_teller):
    """Each payment fits, their sum in one minute's bucket does not: PostgreSQL raises,
    SQLite would have turned the sum into a float (migration 0006's trigger refuses it)."""
    teller = frozen_teller
    t = teller.setup_tenant()
    teller.admin().set_policy(t.tenant_id, {"unit_decimals": 6, "allow_unknown_assets": True})
    client = teller.client(t.token)
    sign = lambda amount: client.sign(status=402, headers=x402_v2(amount=str(amount)), body=b"",  # noqa: E731
                                      url=OK_URL, wallet_id=t.wallet_id)
    assert sign(2**62).payment_id
    with pytest.raises(FailedPrecondition) as info:
        sign(2**62 + 1)
    assert info.value.reason == "amount_out_of_range"
    with teller.app.db.read() as s:
        assert s.scalar(select(func.count()).select_from(Payment).where(Payment.tenant_id == t.tenant_id)) == 1
    assert sign(1).payment_id  # the bucket still counts exactly
