"""The client integrations pay exactly once, against the official counterparties:
the x402 SDK's middleware and facilitator on anvil, and both MPP servers on a
Tempo anvil, pympp's and mppx's (the TypeScript reference). A retried request
(the same request object, or the same ``Idempotency-Key``), even several at
once, each meeting a fresh challenge, moves the payer's balance once; a paid
response survives a failing ``RecordOutcome``. Balances are read from the chains."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
import requests
from eth_utils import to_checksum_address

from teller_client import DeadlineExceeded, Policy, TellerClient, Unavailable, payment_info
from teller_client.integrations import TellerAdapter, TellerTransport
from testbed.chain import anvil, deploy_token
from testbed.tempo import tempo_chain
from tests.support.harness import RunningTeller, make_settings
from tests.support.mpp_live import MPPX_CHAIN_ARGS, mppx_server, tempo_server
from tests.support.x402_live import resource_server

PAYEE = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
RECIPIENT = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
PRICE = 7_000
RETRIES = 4
#: Who is paid: the x402 SDK's server, and the two MPP servers.
COUNTERPARTIES = ["x402", "pympp", "mppx"]
MPP_SERVERS = ["pympp", "mppx"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def evm():
    with anvil("--chain-id", "31338") as url:
        yield deploy_token(url)


@pytest.fixture(scope="module")
def tempo():
    # One Tempo chain for both MPP servers (they share its network, so Teller's rpc_urls
    # name one of them), mining every second as mppx needs.
    with tempo_chain(*MPPX_CHAIN_ARGS) as c:
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


@dataclass
class Server:
    base: str
    payee_balance: Callable[[], int]
    log: Callable[[], str]  # mppx answers a failed verification with a bare 500; why is in its log


@contextlib.contextmanager
def _server(counterparty: str, evm, tempo) -> Iterator[Server]:
    """A paid ``/weather`` at PRICE: the x402 SDK's server, pympp's or mppx's (paying a recipient new to the chain)."""
    if counterparty == "x402":
        with resource_server(evm, PAYEE, PRICE) as base:
            yield Server(base, lambda: evm.balance(PAYEE), lambda: "")
    elif counterparty == "pympp":
        with tempo_server(tempo, RECIPIENT, {"/weather": {"amount": "0.007"}}) as base:
            yield Server(base, lambda: tempo.balance(RECIPIENT), lambda: "")
    else:
        payee = to_checksum_address("0x" + secrets.token_hex(20))
        with mppx_server(tempo, {"/weather": {"method": "tempo", "amount": "0.007", "recipient": payee}}) as mppx:
            yield Server(mppx.url, lambda: tempo.balance(payee), mppx.log)


def _payer_balance(counterparty, evm, tempo, address):
    return evm.balance(address) if counterparty == "x402" else tempo.balance(address)


def _settled(live, t):
    """The tenant's payments, once a reconciler pass has followed each on its chain."""
    live.admin().reconcile()
    return live.admin().list_payments(t.tenant_id)[0]


def _fees(counterparty, tempo, payments) -> int:
    """What the payer paid beside the prices: on Tempo, the fee of each payment's
    one transaction (in pathUSD, rounded up); for x402 nothing (the facilitator pays gas)."""
    if counterparty == "x402":
        return 0
    receipts = [tempo.w3.eth.get_transaction_receipt(p.tx_hash) for p in payments]
    return sum(-(-int(r["gasUsed"]) * int(r["effectiveGasPrice"]) // 10**12) for r in receipts)


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


@pytest.mark.parametrize("counterparty", COUNTERPARTIES)
def test_a_paid_response_survives_a_failing_record_outcome(live, evm, tempo, counterparty):
    t = _tenant(live, evm, tempo)
    teller = TellerClient(live.target, t.token, timeout=2)
    payer_before = _payer_balance(counterparty, evm, tempo, t.address)
    with _server(counterparty, evm, tempo) as server, \
            httpx.Client(transport=TellerTransport(teller, t.wallet_id, inner=_StopTellerAfterRetry(live)),
                         timeout=60) as http:
        r = http.get(f"{server.base}/weather")
        # The 200 that was paid for reaches the caller; why the report failed rides along.
        assert r.status_code == 200, f"{r.status_code} {r.text[:300]}\n{server.log()}"
    info = payment_info(r)
    assert info is not None and info.record is None
    assert isinstance(info.outcome_error, Unavailable | DeadlineExceeded)
    assert info.receipt is not None
    payer_after = _payer_balance(counterparty, evm, tempo, t.address)
    assert payer_before - payer_after >= PRICE
    teller.close()


@pytest.mark.parametrize("counterparty", COUNTERPARTIES)
def test_concurrent_retries_of_one_request_pay_once_httpx(live, evm, tempo, counterparty):
    t = _tenant(live, evm, tempo)
    teller = live.client(t.token)
    payer_before = _payer_balance(counterparty, evm, tempo, t.address)
    with _server(counterparty, evm, tempo) as server, \
            httpx.Client(transport=TellerTransport(teller, t.wallet_id), timeout=60) as http:
        url = f"{server.base}/weather"
        payee_before = server.payee_balance()
        # The caller's retries of one purchase: the same Idempotency-Key, sent at once.
        with ThreadPoolExecutor(RETRIES) as pool:
            answers = list(pool.map(lambda _: http.get(url, headers={"Idempotency-Key": "order-77"}),
                                    range(RETRIES)))
        # And the same request object sent again afterwards.
        request = http.build_request("GET", url)
        first = http.send(request)
        again = http.send(request)
        payee_after = server.payee_balance()
        log = server.log()
    assert any(a.status_code == 200 for a in answers), f"{[a.status_code for a in answers]}\n{log}"
    infos = [payment_info(a) for a in answers]
    assert len({i.payment_id for i in infos if i is not None}) == 1
    assert first.status_code == 200, f"{first.status_code} {first.text[:300]}\n{log}"
    assert payment_info(again).payment_id == payment_info(first).payment_id
    assert payment_info(first).idempotency_key == payment_info(again).idempotency_key
    # Two logical requests (the key "order-77" and the request object): two payments, no more.
    assert payee_after - payee_before == 2 * PRICE
    payments = _settled(live, t)
    assert len(payments) == 2 and {p.state for p in payments} == {"settled"}
    payer_after = _payer_balance(counterparty, evm, tempo, t.address)
    assert payer_before - payer_after == 2 * PRICE + _fees(counterparty, tempo, payments)


@pytest.mark.parametrize("counterparty", COUNTERPARTIES)
def test_retries_through_the_requests_adapter_pay_once(live, evm, tempo, counterparty):
    t = _tenant(live, evm, tempo)
    session = requests.Session()
    session.mount("http://", TellerAdapter(live.client(t.token), t.wallet_id))
    payer_before = _payer_balance(counterparty, evm, tempo, t.address)
    with _server(counterparty, evm, tempo) as server:
        payee_before = server.payee_balance()
        with ThreadPoolExecutor(RETRIES) as pool:
            answers = list(pool.map(lambda _: session.get(f"{server.base}/weather",
                                                          headers={"Idempotency-Key": "order-9"}, timeout=60),
                                    range(RETRIES)))
        payee_after = server.payee_balance()
        log = server.log()
    assert any(a.status_code == 200 for a in answers), f"{[a.status_code for a in answers]}\n{log}"
    assert payee_after - payee_before == PRICE
    (payment,) = _settled(live, t)
    assert payment.state == "settled"
    payer_after = _payer_balance(counterparty, evm, tempo, t.address)
    assert payer_before - payer_after == PRICE + _fees(counterparty, tempo, [payment])


def _challenge_id(response: httpx.Response) -> str:
    found = re.search(r'\bid="([^"]+)"', response.headers["www-authenticate"])
    assert found, response.headers["www-authenticate"]
    return found.group(1)


@pytest.mark.parametrize("counterparty", MPP_SERVERS)
def test_a_retry_meeting_a_fresh_challenge_gets_the_payment_already_made(live, evm, tempo, counterparty):
    """An MPP server mints a challenge per 402, so a retry of one purchase (the
    same idempotency key) meets a new one: Sign answers with the payment already
    made, before and after the server took it, and the payer's balance moves once."""
    t = _tenant(live, evm, tempo)
    client = live.client(t.token)
    payer_before = tempo.balance(t.address)

    def sign(challenge: httpx.Response):
        assert challenge.status_code == 402, challenge.text
        return client.sign(status=402, headers=list(challenge.headers.multi_items()), body=challenge.content,
                           url=url, wallet_id=t.wallet_id, idempotency_key="order-5")

    with _server(counterparty, evm, tempo) as server:
        url = f"{server.base}/weather"
        payee_before = server.payee_balance()
        challenges = [httpx.get(url, timeout=30) for _ in range(3)]
        assert len({_challenge_id(c) for c in challenges}) == 3, "each 402 is a fresh challenge"
        first, retry = sign(challenges[0]), sign(challenges[1])
        assert (retry.payment_id, retry.header_value) == (first.payment_id, first.header_value)
        paid = httpx.get(url, headers=first.retry_headers(), timeout=60)
        assert paid.status_code == 200, f"{paid.status_code} {paid.text[:300]}\n{server.log()}"
        client.record_outcome(first.payment_id, status=200, headers=list(paid.headers.multi_items()))
        # The caller retries after all (its answer was lost): the challenge it met
        # before paying, and one minted after, both get the payment already made.
        for late in (sign(challenges[2]), sign(httpx.get(url, timeout=30))):
            assert (late.payment_id, late.header_value) == (first.payment_id, first.header_value)
        payee_after = server.payee_balance()
    assert payee_after - payee_before == PRICE
    (payment,) = _settled(live, t)
    assert payment.id == first.payment_id and payment.state == "settled"
    assert payer_before - tempo.balance(t.address) == PRICE + _fees(counterparty, tempo, [payment])


@pytest.mark.parametrize("counterparty", MPP_SERVERS)
def test_the_key_reaches_the_server(live, evm, tempo, counterparty):
    """MPP: the retry carries an Idempotency-Key (derived from the tenant and the
    key); x402: the proof carries it as the payment-identifier extension when the
    server declares it (test_payment_identifier_only_when_declared)."""
    t = _tenant(live, evm, tempo)
    seen: list[httpx.Request] = []

    class Spy(httpx.BaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.HTTPTransport()

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return self.inner.handle_request(request)

    with _server(counterparty, evm, tempo) as server, \
            httpx.Client(transport=TellerTransport(live.client(t.token), t.wallet_id, inner=Spy()), timeout=60) as http:
        r = http.get(f"{server.base}/weather", headers={"Idempotency-Key": "k-1"})
        assert r.status_code == 200, f"{r.status_code} {r.text[:300]}\n{server.log()}"
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
