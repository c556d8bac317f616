"""The client integrations pay exactly once, against the official counterparties:
the x402 SDK's middleware and facilitator on anvil, and pympp's Tempo server on
a Tempo anvil. A retried request (the same request object, or the same
``Idempotency-Key``), even several at once, moves the payer's balance once; a
paid response survives a failing ``RecordOutcome``."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import requests

from teller_client import DeadlineExceeded, Policy, TellerClient, Unavailable, payment_info
from teller_client.integrations import TellerAdapter, TellerTransport
from testbed.chain import anvil, deploy_token
from testbed.tempo import tempo_chain
from tests.support.harness import RunningTeller, make_settings
from tests.support.mpp_live import tempo_server
from tests.support.x402_live import resource_server

PAYEE = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
RECIPIENT = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
PRICE = 7_000
RETRIES = 4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def evm():
    with anvil("--chain-id", "31338") as url:
        yield deploy_token(url)


@pytest.fixture(scope="module")
def tempo():
    with tempo_chain() as c:
        yield c


@pytest.fixture
def live(tmp_path, evm, tempo):
    running = RunningTeller(make_settings(
        f"sqlite:///{tmp_path / 't.db'}", tmp_path, reconcile_interval_seconds=0,
        outbound_allow=("127.0.0.1", "localhost"), rpc_urls={evm.network: evm.rpc_url, tempo.network: tempo.rpc_url}))
    yield running
    running.stop()


def _tenant(teller, evm, tempo):
    t = teller.setup_tenant(policy=Policy(allow_unknown_assets=True))
    evm.mint(t.address, 1_000_000)
    tempo.fund(t.address, 5_000_000)
    return t


class _StopTellerAfterRetry(httpx.BaseTransport):
    """The network between the service and the resource server; once the paid
    retry's answer is in, Teller goes away (as in a deploy or a crash)."""

    def __init__(self, teller: RunningTeller) -> None:
        self.inner = httpx.HTTPTransport()
        self.teller = teller

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if any(h.lower() in ("payment-signature", "authorization") for h in request.headers):
            response.read()
            server = self.teller.server
            server.stop()
            server.stop = lambda grace=1.0: None  # type: ignore[method-assign]  # stopped once is enough
        return response


@pytest.mark.parametrize("protocol", ["x402", "mpp"])
def test_a_paid_response_survives_a_failing_record_outcome(live, evm, tempo, protocol):
    t = _tenant(live, evm, tempo)
    teller = TellerClient(live.target, t.token, timeout=2)
    server = (resource_server(evm, PAYEE, PRICE) if protocol == "x402"
              else tempo_server(tempo, RECIPIENT, {"/weather": {"amount": "0.007"}}))
    payer_before = evm.balance(t.address) if protocol == "x402" else tempo.balance(t.address)
    with server as base, httpx.Client(transport=TellerTransport(teller, t.wallet_id, inner=_StopTellerAfterRetry(live)),
                                      timeout=60) as http:
        r = http.get(f"{base}/weather")
    # The 200 that was paid for reaches the caller; why the report failed rides along.
    assert r.status_code == 200
    info = payment_info(r)
    assert info is not None and info.record is None
    assert isinstance(info.outcome_error, Unavailable | DeadlineExceeded)
    assert info.receipt is not None
    payer_after = evm.balance(t.address) if protocol == "x402" else tempo.balance(t.address)
    assert payer_before - payer_after >= PRICE
    teller.close()


def _payer_balance(protocol, evm, tempo, address):
    return evm.balance(address) if protocol == "x402" else tempo.balance(address)


def _server(protocol, evm, tempo):
    if protocol == "x402":
        return resource_server(evm, PAYEE, PRICE)
    return tempo_server(tempo, RECIPIENT, {"/weather": {"amount": "0.007"}})


def _payee_balance(protocol, evm, tempo):
    return evm.balance(PAYEE) if protocol == "x402" else tempo.balance(RECIPIENT)


@pytest.mark.parametrize("protocol", ["x402", "mpp"])
def test_concurrent_retries_of_one_request_pay_once_httpx(live, evm, tempo, protocol):
    t = _tenant(live, evm, tempo)
    teller = live.client(t.token)
    with _server(protocol, evm, tempo) as base, \
            httpx.Client(transport=TellerTransport(teller, t.wallet_id), timeout=60) as http:
        payee_before = _payee_balance(protocol, evm, tempo)
        # The caller's retries of one purchase: the same Idempotency-Key, sent at once.
        with ThreadPoolExecutor(RETRIES) as pool:
            answers = list(pool.map(lambda _: http.get(f"{base}/weather", headers={"Idempotency-Key": "order-77"}),
                                    range(RETRIES)))
        # And the same request object sent again afterwards.
        request = http.build_request("GET", f"{base}/weather")
        first = http.send(request)
        again = http.send(request)
        payee_after = _payee_balance(protocol, evm, tempo)
    assert any(a.status_code == 200 for a in answers), [a.status_code for a in answers]
    infos = [payment_info(a) for a in answers]
    assert len({i.payment_id for i in infos if i is not None}) == 1
    assert first.status_code == 200
    assert payment_info(again).payment_id == payment_info(first).payment_id
    assert payment_info(first).idempotency_key == payment_info(again).idempotency_key
    # Two logical requests (the key "order-77" and the request object): two payments, no more.
    assert payee_after - payee_before == 2 * PRICE
    payments, _ = live.admin().list_payments(t.tenant_id)
    assert len(payments) == 2


@pytest.mark.parametrize("protocol", ["x402", "mpp"])
def test_retries_through_the_requests_adapter_pay_once(live, evm, tempo, protocol):
    t = _tenant(live, evm, tempo)
    session = requests.Session()
    session.mount("http://", TellerAdapter(live.client(t.token), t.wallet_id))
    with _server(protocol, evm, tempo) as base:
        payee_before = _payee_balance(protocol, evm, tempo)
        with ThreadPoolExecutor(RETRIES) as pool:
            answers = list(pool.map(lambda _: session.get(f"{base}/weather", headers={"Idempotency-Key": "order-9"},
                                                          timeout=60), range(RETRIES)))
        payee_after = _payee_balance(protocol, evm, tempo)
    assert any(a.status_code == 200 for a in answers), [a.status_code for a in answers]
    assert payee_after - payee_before == PRICE
    assert len(live.admin().list_payments(t.tenant_id)[0]) == 1


def test_the_key_reaches_the_server(live, evm, tempo):
    """MPP: the retry carries an Idempotency-Key (derived from the tenant and the
    key); x402: the proof carries it as the payment-identifier extension when the
    server declares it."""
    t = _tenant(live, evm, tempo)
    seen: list[httpx.Request] = []

    class Spy(httpx.BaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.HTTPTransport()

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return self.inner.handle_request(request)

    with tempo_server(tempo, RECIPIENT, {"/weather": {"amount": "0.007"}}) as base, \
            httpx.Client(transport=TellerTransport(live.client(t.token), t.wallet_id, inner=Spy()), timeout=60) as http:
        assert http.get(f"{base}/weather", headers={"Idempotency-Key": "k-1"}).status_code == 200
    paid = seen[-1]
    assert paid.headers["authorization"].startswith("Payment ")
    sent = paid.headers["idempotency-key"]
    assert sent.startswith("teller_") and sent != "k-1" and 16 <= len(sent) <= 128


def test_payment_identifier_only_when_declared(teller):
    from testbed.x402_server import sdk_v2_challenge

    t = teller.setup_tenant(policy=Policy(daily_budget=100_000))
    client = teller.client(t.token)
    plain = sdk_v2_challenge(amount="1000")
    doc = json.loads(base64.b64decode(dict((k.lower(), v) for k, v in plain.headers)["payment-required"]))
    # What x402's declare_payment_identifier_extension() returns (importing it needs the SDK's extras).
    doc["extensions"] = {"payment-identifier": {"info": {"required": False}, "schema": {"type": "object"}}}
    declared = [(k, base64.b64encode(json.dumps(doc).encode()).decode() if k.lower() == "payment-required" else v)
                for k, v in plain.headers]

    def extensions(signed):
        return json.loads(base64.b64decode(signed.header_value)).get("extensions") or {}

    with_key = client.sign(status=402, headers=declared, body=b"", url=plain.url, wallet_id=t.wallet_id,
                           idempotency_key="order-1")
    pid = extensions(with_key)["payment-identifier"]["info"]["id"]
    assert pid.startswith("teller_") and 16 <= len(pid) <= 128
    # The retry (same key) carries the same id; another tenant's "order-1" a different one.
    assert client.sign(status=402, headers=declared, body=b"", url=plain.url, wallet_id=t.wallet_id,
                       idempotency_key="order-1") == with_key
    other = teller.setup_tenant(policy=Policy(daily_budget=100_000))
    theirs = teller.client(other.token).sign(status=402, headers=declared, body=b"", url=plain.url,
                                             wallet_id=other.wallet_id, idempotency_key="order-1")
    assert extensions(theirs)["payment-identifier"]["info"]["id"] != pid
    # Undeclared: nothing added.
    assert "payment-identifier" not in extensions(client.sign(
        status=402, headers=plain.headers, body=b"", url=plain.url, wallet_id=t.wallet_id, idempotency_key="o-2"))
    # Declared, and the caller gave no key: the client's key for each call, so two
    # calls are two purchases to the server too.
    ids = {extensions(client.sign(status=402, headers=declared, body=b"", url=plain.url, wallet_id=t.wallet_id))
           ["payment-identifier"]["info"]["id"] for _ in range(2)}
    assert len(ids) == 2 and pid not in ids
