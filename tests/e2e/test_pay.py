"""Pay and the client integrations, end to end: the official x402 middleware and
facilitator on anvil, and pympp's server on a Tempo anvil; plus the outbound
safety rules (SSRF, redirects, timeouts, size limits)."""

from __future__ import annotations

import asyncio
import json

import grpc
import httpx
import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, StreamingResponse
from starlette.routing import Route

from teller_client import (
    AsyncTellerClient,
    FailedPrecondition,
    LimitExceeded,
    PermissionDenied,
    Policy,
    Unavailable,
    payment_info,
)
from teller_client._proto.teller.v1 import payment_pb2, payment_pb2_grpc
from teller_client.integrations import AsyncTellerTransport, TellerAdapter, TellerTransport
from testbed.chain import anvil, deploy_token
from testbed.loopback import serve
from testbed.tempo import tempo_chain
from tests.support.harness import RunningTeller, make_settings
from tests.support.hostile import hostile, respond
from tests.support.mpp_live import PATH_USD, tempo_server
from tests.support.x402_live import resource_server

PAYEE = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
RECIPIENT = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
PRICE = 7_000
LOOPBACK = ("127.0.0.1", "localhost")


@pytest.fixture(scope="module")
def evm():
    # Both local chains default to id 31337; give the EVM one its own so each
    # CAIP-2 network has one RPC endpoint.
    with anvil("--chain-id", "31338") as url:
        yield deploy_token(url)


@pytest.fixture(scope="module")
def tempo():
    with tempo_chain() as c:
        yield c


def _teller(tmp_path, evm, tempo, **kw) -> RunningTeller:
    kw.setdefault("outbound_allow", LOOPBACK)  # the counterparties here listen on loopback
    return RunningTeller(make_settings(f"sqlite:///{tmp_path / 't.db'}", tmp_path, reconcile_interval_seconds=0,
                                       rpc_urls={evm.network: evm.rpc_url, tempo.network: tempo.rpc_url}, **kw))


@pytest.fixture
def live(tmp_path, evm, tempo):
    running = _teller(tmp_path, evm, tempo)
    yield running
    running.stop()


def _tenant(teller, evm, tempo, *, mint: int = 1_000_000, **policy):
    t = teller.setup_tenant(policy=Policy(allow_unknown_assets=True, **policy))
    if mint:
        evm.mint(t.address, mint)
        tempo.fund(t.address, 5_000_000)
    return t


def _plain_app() -> Starlette:
    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("free")

    async def missing(request: Request) -> JSONResponse:
        return JSONResponse({"error": "nope"}, status_code=404)

    async def host(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.headers.get("host", ""))

    async def to_metadata(request: Request) -> RedirectResponse:
        return RedirectResponse("http://169.254.169.254/latest/meta-data/", status_code=302)

    async def loop(request: Request) -> RedirectResponse:
        return RedirectResponse("/loop", status_code=302)

    async def hop(request: Request) -> RedirectResponse:
        return RedirectResponse("/plain", status_code=307)

    async def big(request: Request) -> StreamingResponse:
        async def chunks():
            for _ in range(20 * 16):  # 20 MiB in 64 KiB chunks
                yield b"x" * 65536
        return StreamingResponse(chunks())

    async def slow(request: Request) -> PlainTextResponse:
        await asyncio.sleep(3)
        return PlainTextResponse("late")

    return Starlette(routes=[Route("/plain", plain), Route("/missing", missing), Route("/host", host),
                             Route("/to-metadata", to_metadata), Route("/loop", loop), Route("/hop", hop),
                             Route("/big", big), Route("/slow", slow)])


@pytest.fixture(scope="module")
def plain():
    with serve(_plain_app()) as base:
        yield base


# -- Pay, end to end ----------------------------------------------------------


def test_pay_x402(live, evm, tempo):
    t = _tenant(live, evm, tempo)
    payer_before, payee_before = evm.balance(t.address), evm.balance(PAYEE)
    with resource_server(evm, PAYEE, PRICE) as base:
        r = live.client(t.token).pay(f"{base}/weather", wallet_id=t.wallet_id)
    assert r.status == 200 and json.loads(r.body) == {"weather": "sunny"}
    assert r.payment is not None and r.payment.state == "settled" and r.payment.protocol == "x402"
    assert r.receipt is not None and r.receipt["success"] is True
    assert r.payment.tx_hash == r.receipt["transaction"].lower()
    assert r.payment_header == "PAYMENT-SIGNATURE"
    assert evm.balance(t.address) == payer_before - PRICE and evm.balance(PAYEE) == payee_before + PRICE


def test_pay_mpp_tempo(live, evm, tempo):
    t = _tenant(live, evm, tempo)
    before = tempo.balance(RECIPIENT)
    with tempo_server(tempo, RECIPIENT, {"/paid": {"amount": "0.04"}}) as base:
        r = live.client(t.token).pay(f"{base}/paid", wallet_id=t.wallet_id)
    assert r.status == 200, r.body
    assert r.receipt is not None and r.receipt["status"] == "success" and r.receipt["method"] == "tempo"
    assert r.payment is not None and r.payment.state == "settled" and r.payment.tx_hash == r.receipt["reference"].lower()
    assert tempo.balance(RECIPIENT) == before + 40_000


def test_a_response_that_is_not_402_comes_back_as_it_is(live, evm, tempo, plain):
    t = _tenant(live, evm, tempo, mint=0)
    client = live.client(t.token)
    ok = client.pay(f"{plain}/plain", wallet_id=t.wallet_id)
    assert (ok.status, ok.body, ok.payment, ok.receipt) == (200, b"free", None, None)
    missing = client.pay(f"{plain}/missing", wallet_id=t.wallet_id)
    assert missing.status == 404 and json.loads(missing.body) == {"error": "nope"} and missing.payment is None
    assert live.admin().list_payments(t.tenant_id)[0] == []


def test_a_second_402_is_a_failure_with_the_servers_reason(live, evm, tempo):
    t = _tenant(live, evm, tempo, mint=PRICE - 1)
    with resource_server(evm, PAYEE, PRICE) as base, pytest.raises(FailedPrecondition) as info:
        live.client(t.token).pay(f"{base}/weather", wallet_id=t.wallet_id)
    assert info.value.reason == "payment_refused" and "insufficient" in info.value.message
    (payment,), _ = live.admin().list_payments(t.tenant_id)
    assert payment.state == "failed" and info.value.metadata["payment_id"] == payment.id


def _raw_pay(teller: RunningTeller, token: str, **fields) -> list[payment_pb2.PayResponse]:
    """Pay through the bare gRPC stub: the whole stream, fields the client does not surface included."""
    with grpc.insecure_channel(teller.target) as channel:
        stub = payment_pb2_grpc.PaymentServiceStub(channel)
        return list(stub.Pay(payment_pb2.PayRequest(**fields), metadata=(("authorization", f"Bearer {token}"),),
                             timeout=60))


def test_a_reused_key_of_a_settled_payment_is_answered_already_paid(tmp_path, evm, tempo):
    running = _teller(tmp_path, evm, tempo, keep_paid_response_bytes=4096)
    try:
        t = _tenant(running, evm, tempo)
        with resource_server(evm, PAYEE, PRICE) as base:
            url = f"{base}/weather"
            first = running.client(t.token).pay(url, wallet_id=t.wallet_id, idempotency_key="order-1")
        assert first.status == 200 and first.payment is not None and first.payment.state == "settled"
        payer, payee = evm.balance(t.address), evm.balance(PAYEE)
        # The server is gone: had Teller paid, sent the proof or even asked again, this would fail.
        head, *body = _raw_pay(running, t.token, url=url, wallet_id=t.wallet_id, idempotency_key="order-1")
        assert head.head.already_paid and head.head.status == 200
        assert json.loads(b"".join(part.body_chunk for part in body)) == {"weather": "sunny"}
        assert head.head.payment.id == first.payment.id and head.head.payment.state == "settled"
        assert head.head.payment.tx_hash == first.payment.tx_hash and head.head.payment_header == "PAYMENT-SIGNATURE"
        assert (evm.balance(t.address), evm.balance(PAYEE)) == (payer, payee)
        assert len(running.admin().list_payments(t.tenant_id)[0]) == 1
        # The plain client sees the settled payment and the kept response.
        again = running.client(t.token).pay(url, wallet_id=t.wallet_id, idempotency_key="order-1")
        assert again.payment.id == first.payment.id and json.loads(again.body) == {"weather": "sunny"}
    finally:
        running.stop()


def test_a_reused_key_reached_through_a_redirect_is_already_paid_without_resending(live, evm, tempo):
    t = _tenant(live, evm, tempo)
    with resource_server(evm, PAYEE, PRICE) as base:
        async def redirector(request, writer):
            await respond(writer, 302, [("Location", f"{base}/weather")], b"")

        with hostile(redirector) as front:
            first = live.client(t.token).pay(f"{front.base}/go", wallet_id=t.wallet_id, idempotency_key="order-3")
            assert first.payment is not None and first.payment.state == "settled"
            payee = evm.balance(PAYEE)
            # The URL asked for is not the one paid for: Teller follows the redirect again and
            # reads the 402 (that costs nothing), finds the key's payment settled, and stops there.
            (head,) = _raw_pay(live, t.token, url=f"{front.base}/go", wallet_id=t.wallet_id,
                               idempotency_key="order-3")
            # One unpaid request per call (the paid retry goes to where the redirect led).
            assert [r.header("payment-signature") for r in front.requests] == [None, None]
    assert head.head.already_paid and head.head.payment.id == first.payment.id
    assert evm.balance(PAYEE) == payee and len(live.admin().list_payments(t.tenant_id)[0]) == 1
    # A re-sent proof would have had its answer recorded a second time.
    outcomes, _ = live.client(t.token).audit_events(action="payment.outcome")
    assert len(outcomes) == 1


def test_without_kept_responses_an_already_paid_answer_has_no_body(live, evm, tempo):
    t = _tenant(live, evm, tempo)
    with resource_server(evm, PAYEE, PRICE) as base:
        url = f"{base}/weather"
        first = live.client(t.token).pay(url, wallet_id=t.wallet_id, idempotency_key="order-2")
        assert first.payment is not None and first.payment.state == "settled"
        payee = evm.balance(PAYEE)
        (head,) = _raw_pay(live, t.token, url=url, wallet_id=t.wallet_id, idempotency_key="order-2")
    assert head.head.already_paid and head.head.status == 0 and not head.head.headers
    assert head.head.payment.id == first.payment.id and head.head.payment.tx_hash == first.payment.tx_hash
    assert evm.balance(PAYEE) == payee


def test_pay_with_a_protocol_preference_and_a_denial(live, evm, tempo):
    t = _tenant(live, evm, tempo, per_payment_max=PRICE - 1)
    with resource_server(evm, PAYEE, PRICE) as base:
        with pytest.raises(LimitExceeded):
            live.client(t.token).pay(f"{base}/weather", wallet_id=t.wallet_id)
        with pytest.raises(PermissionDenied, match="protocol"):
            live.client(t.token).pay(f"{base}/weather", wallet_id=t.wallet_id, protocols=["mpp"])


# -- client integrations --------------------------------------------------------


def test_httpx_transport_pays_x402_and_mpp(live, evm, tempo):
    t = _tenant(live, evm, tempo)
    teller = live.client(t.token)
    with httpx.Client(transport=TellerTransport(teller, t.wallet_id), timeout=60) as http:
        with resource_server(evm, PAYEE, PRICE) as base:
            before = evm.balance(PAYEE)
            r = http.get(f"{base}/weather")
            assert r.status_code == 200 and r.json() == {"weather": "sunny"}
            info = payment_info(r)
            assert info is not None and info.receipt is not None and info.receipt["success"] is True
            assert info.record is not None and info.record.state == "settled"
            assert evm.balance(PAYEE) == before + PRICE
        with tempo_server(tempo, RECIPIENT, {"/paid": {"amount": "0.02"}}) as base:
            before = tempo.balance(RECIPIENT)
            r = http.get(f"{base}/paid")
            assert r.status_code == 200
            info = payment_info(r)
            assert info is not None and info.requirement.protocol == "mpp" and info.receipt["status"] == "success"
            assert tempo.balance(RECIPIENT) == before + 20_000


def test_async_httpx_transport(live, evm, tempo):
    t = _tenant(live, evm, tempo)

    async def run(base: str) -> httpx.Response:
        async with AsyncTellerClient(live.target, t.token) as teller:
            async with httpx.AsyncClient(transport=AsyncTellerTransport(teller, t.wallet_id), timeout=60) as http:
                return await http.get(f"{base}/weather")

    with resource_server(evm, PAYEE, PRICE) as base:
        before = evm.balance(PAYEE)
        r = asyncio.run(run(base))
    assert r.status_code == 200 and payment_info(r).receipt["success"] is True
    assert evm.balance(PAYEE) == before + PRICE


def test_requests_adapter_pays_x402_and_mpp_and_raises_typed_denials(live, evm, tempo):
    t = _tenant(live, evm, tempo)
    teller = live.client(t.token)
    session = requests.Session()
    session.mount("http://", TellerAdapter(teller, t.wallet_id))
    with resource_server(evm, PAYEE, PRICE) as base:
        before = evm.balance(PAYEE)
        r = session.get(f"{base}/weather", timeout=60)
        assert r.status_code == 200 and r.json() == {"weather": "sunny"}
        assert payment_info(r).receipt["success"] is True
        assert evm.balance(PAYEE) == before + PRICE
    with tempo_server(tempo, RECIPIENT, {"/paid": {"amount": "0.03"}}) as base:
        before = tempo.balance(RECIPIENT)
        r = session.get(f"{base}/paid", timeout=60)
        assert r.status_code == 200 and payment_info(r).receipt["reference"]
        assert tempo.balance(RECIPIENT) == before + 30_000
    capped = requests.Session()
    capped.mount("http://", TellerAdapter(teller, t.wallet_id, max_amount=1))
    with resource_server(evm, PAYEE, PRICE) as base, pytest.raises(LimitExceeded):
        capped.get(f"{base}/weather", timeout=60)


# -- outbound safety --------------------------------------------------------------


@pytest.fixture
def strict(tmp_path, evm, tempo):
    running = _teller(tmp_path, evm, tempo, outbound_allow=(), max_response_bytes=1024 * 1024,
                      outbound_read_timeout_seconds=0.5)
    yield running
    running.stop()


@pytest.mark.parametrize("url, address", [
    ("http://127.0.0.1:9/x", "127.0.0.1"),
    ("http://10.0.0.1/x", "10.0.0.1"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
    ("http://[::1]:9/x", "::1"),
    ("http://localhost:9/x", "127.0.0.1"),
])
def test_pay_refuses_non_public_destinations(strict, evm, tempo, url, address):
    t = _tenant(strict, evm, tempo, mint=0)
    with pytest.raises(PermissionDenied, match="refusing to fetch") as info:
        strict.client(t.token).pay(url, wallet_id=t.wallet_id)
    assert info.value.reason == "destination_not_allowed" and info.value.metadata["address"] == address


def test_a_hostname_resolving_to_a_private_address_is_refused(strict, evm, tempo):
    async def resolver(host: str, port: int) -> list[str]:
        return {"api.example.com": ["93.184.216.34", "10.1.2.3"]}[host]

    strict.app.fetcher.resolver = resolver
    t = _tenant(strict, evm, tempo, mint=0)
    with pytest.raises(PermissionDenied, match=r"api.example.com \(resolves to 10.1.2.3\)"):
        strict.client(t.token).pay("https://api.example.com/data", wallet_id=t.wallet_id)


def test_the_checked_address_is_the_one_connected_to(live, evm, tempo, plain):
    # DNS rebinding: Teller connects to the address it checked, never re-resolving.
    answers = iter([["127.0.0.1"]])

    async def resolver(host: str, port: int) -> list[str]:
        return next(answers)  # a second lookup would raise StopIteration

    live.app.fetcher.resolver = resolver
    t = _tenant(live, evm, tempo, mint=0)
    port = plain.rsplit(":", 1)[1]
    r = live.client(t.token).pay(f"http://localhost:{port}/host", wallet_id=t.wallet_id)
    assert r.status == 200 and r.body == f"localhost:{port}".encode()


def test_redirects_are_rechecked_and_limited(live, evm, tempo, plain):
    t = _tenant(live, evm, tempo, mint=0)
    client = live.client(t.token)
    with pytest.raises(PermissionDenied, match=r"169\.254\.169\.254"):
        client.pay(f"{plain}/to-metadata", wallet_id=t.wallet_id)
    with pytest.raises(FailedPrecondition, match="redirected more than 3 times"):
        client.pay(f"{plain}/loop", wallet_id=t.wallet_id)
    assert client.pay(f"{plain}/hop", wallet_id=t.wallet_id).body == b"free"


def test_a_large_response_is_cut_off_not_buffered(tmp_path, evm, tempo, plain):
    running = _teller(tmp_path, evm, tempo, max_response_bytes=1024 * 1024)
    try:
        t = _tenant(running, evm, tempo, mint=0)
        received = 0
        with running.client(t.token).pay_stream(f"{plain}/big", wallet_id=t.wallet_id) as r:
            assert r.response.status == 200
            with pytest.raises(FailedPrecondition, match="larger than 1048576 bytes") as info:
                for chunk in r.chunks:
                    received += len(chunk)
        assert info.value.reason == "response_too_large"
        # Chunks reached the caller before the cut: streamed, never held whole.
        assert 0 < received <= 1024 * 1024
    finally:
        running.stop()


def test_slow_servers_time_out(tmp_path, evm, tempo, plain):
    running = _teller(tmp_path, evm, tempo, outbound_read_timeout_seconds=0.5)
    try:
        t = _tenant(running, evm, tempo, mint=0)
        with pytest.raises(Unavailable, match="timed out"):
            running.client(t.token).pay(f"{plain}/slow", wallet_id=t.wallet_id)
    finally:
        running.stop()


def test_pay_input_is_validated(live, evm, tempo):
    from teller_client import InvalidArgument

    t = _tenant(live, evm, tempo, mint=0)
    client = live.client(t.token)
    with pytest.raises(InvalidArgument, match="http or https"):
        client.pay("ftp://example.com/x", wallet_id=t.wallet_id)
    with pytest.raises(InvalidArgument, match="method"):
        client.pay("https://example.com/x", wallet_id=t.wallet_id, method="TRACE")
    with pytest.raises(InvalidArgument, match="credentials"):
        client.pay("https://user:pw@example.com/x", wallet_id=t.wallet_id)
    with pytest.raises(InvalidArgument, match="protocols"):
        client.pay("https://example.com/x", wallet_id=t.wallet_id, protocols=["carrier-pigeon"])


__all__ = ["PATH_USD"]
