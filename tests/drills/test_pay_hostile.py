"""Pay against hostile servers: real loopback HTTP servers that trickle,
compress, lie and redirect, driven through the real Pay RPC.

The 402s they send are the official x402 SDK's own (``sdk_v1_challenge`` /
``sdk_v2_challenge``); what follows the challenge is the hostile part.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import time
import zlib

import grpc
import pytest

from teller_client import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    TellerClient,
    TellerError,
    Unavailable,
)
from testbed.x402_server import sdk_v1_challenge, sdk_v2_challenge
from tests.support.harness import RunningTeller, make_settings
from tests.support.hostile import Request, hostile, respond, trickle
from tests.support.hostile import head as http_head

V2 = sdk_v2_challenge(amount="1500")
V1 = sdk_v1_challenge(amount="1500")
MIB = 1024 * 1024


def _v2_402() -> list[tuple[str, str]]:
    return [(k, v) for k, v in V2.headers if k.lower() == "payment-required"]


@pytest.fixture(scope="module")
def teller(tmp_path_factory):
    # One server for the module (each test has a tenant of its own): a start costs ~1.5 s.
    tmp_path = tmp_path_factory.mktemp("pay_hostile")
    running = RunningTeller(make_settings(
        f"sqlite:///{tmp_path / 't.db'}", tmp_path, outbound_allow=("127.0.0.1",),
        outbound_read_timeout_seconds=1.0, pay_deadline_seconds=2.0, max_response_bytes=MIB,
        max_challenge_bytes=64 * 1024))
    yield running
    running.stop()


@pytest.fixture
def tenant(teller):
    return teller.setup_tenant()


def _paid(request: Request) -> bool:
    return request.header("payment-signature") is not None or request.header("x-payment") is not None


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


def _only_payment(teller, tenant):
    (payment,), _ = teller.admin().list_payments(tenant.tenant_id)
    return payment


# -- a total deadline -----------------------------------------------------------------


def test_a_trickled_402_is_cut_at_the_calls_deadline(teller, tenant):
    async def script(request, writer):
        body = V1.body
        writer.write(http_head(402, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]))
        await trickle(writer, body, 0.25)  # every read is quick; the whole would take a minute

    with hostile(script) as srv:
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            teller.client(tenant.token).pay(f"{srv.base}/x", wallet_id=tenant.wallet_id)
        elapsed = time.monotonic() - started
    assert info.value.reason == "deadline_exceeded" and "2" in info.value.message
    assert elapsed < 3.5, elapsed
    assert teller.admin().list_payments(tenant.tenant_id)[0] == []  # nothing was paid


def test_a_trickled_paid_head_is_cut_and_the_error_names_the_payment(teller, tenant):
    async def script(request, writer):
        if not _paid(request):
            await respond(writer, 402, _v2_402(), b"{}")
            return
        await trickle(writer, http_head(200, [("Content-Length", "2")]) + b"ok", 0.25)

    with hostile(script) as srv:
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            teller.client(tenant.token).pay(f"{srv.base}/x", wallet_id=tenant.wallet_id)
        elapsed = time.monotonic() - started
    assert elapsed < 3.5, elapsed
    payment = _only_payment(teller, tenant)
    assert info.value.metadata["payment_id"] == payment.id and payment.id in info.value.message
    # The server holds a valid proof: the payment stays live (the reconciler follows it) and says why.
    assert payment.state == "signed" and not payment.released
    assert payment.state_reason.startswith("answer_lost:"), payment.state_reason


def test_a_caller_that_gives_up_after_the_proof_left_leaves_the_payment_saying_so(teller, tenant):
    async def script(request, writer):
        if not _paid(request):
            await respond(writer, 402, _v2_402(), b"{}")
            return
        await asyncio.sleep(10)  # holds the proof, answers nothing

    with hostile(script) as srv:
        # The caller's deadline (1 s) is shorter than Teller's own read timeout and deadline.
        impatient = TellerClient(teller.target, tenant.token, pay_timeout=1.0)
        try:
            with pytest.raises(TellerError) as info:
                impatient.pay(f"{srv.base}/x", wallet_id=tenant.wallet_id, timeout=1.0)
            assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            impatient.close()
        for _ in range(50):
            payment = _only_payment(teller, tenant)
            if payment.state_reason:
                break
            time.sleep(0.1)
    assert payment.state == "signed" and payment.state_reason.startswith("answer_lost:"), payment.state_reason


def test_a_steady_body_may_outlast_the_deadline_a_stalled_one_may_not(teller, tenant):
    async def script(request, writer):
        writer.write(http_head(200, [("Transfer-Encoding", "chunked")]))
        for _ in range(12 if request.target == "/steady" else 2):  # /steady: 3 s of chunks, past the 2 s deadline
            writer.write(b"4\r\ndata\r\n")
            await writer.drain()
            await asyncio.sleep(0.25)
        if request.target == "/stall":
            await asyncio.sleep(5)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    with hostile(script) as srv:
        client = teller.client(tenant.token)
        r = client.pay(f"{srv.base}/steady", wallet_id=tenant.wallet_id)
        assert r.status == 200 and r.body == b"data" * 12
        with client.pay_stream(f"{srv.base}/stall", wallet_id=tenant.wallet_id) as s:
            got = b""
            with pytest.raises(Unavailable, match="timed out"):
                for chunk in s.chunks:
                    got += chunk
        assert got == b"data" * 2


# -- content encodings ------------------------------------------------------------------


@pytest.mark.parametrize("encoding, encode", [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", _raw_deflate),  # no zlib wrapper: what some servers send as "deflate"
])
def test_a_compressed_402_and_paid_response_are_decoded(teller, tenant, encoding, encode):
    async def script(request, writer):
        if not _paid(request):
            await respond(writer, 402, [("Content-Type", "application/json"), ("Content-Encoding", encoding)],
                          encode(V1.body))
            return
        await respond(writer, 200, [("Content-Encoding", encoding)], encode(b'{"weather": "sunny"}'))

    with hostile(script) as srv:
        r = teller.client(tenant.token).pay(f"{srv.base}/x", wallet_id=tenant.wallet_id)
        sent = srv.requests[0].header("accept-encoding")
    assert r.status == 200 and json.loads(r.body) == {"weather": "sunny"}
    assert r.payment is not None and r.payment_header == "X-PAYMENT"
    # The body is handed on decoded, so the headers must not claim otherwise.
    names = {k.lower() for k, _ in r.headers}
    assert "content-encoding" not in names and "content-length" not in names
    assert sent is not None and {e.strip() for e in sent.split(",")} >= {"gzip", "deflate"}


def test_a_gzip_bomb_402_is_refused_not_inflated(teller, tenant):
    bomb = gzip.compress(b"\0" * (64 * MIB))  # ~64 KiB on the wire

    async def script(request, writer):
        await respond(writer, 402, [("Content-Type", "application/json"), ("Content-Encoding", "gzip")], bomb)

    with hostile(script) as srv, pytest.raises(FailedPrecondition) as info:
        teller.client(tenant.token).pay(f"{srv.base}/x", wallet_id=tenant.wallet_id)
    assert info.value.reason == "response_too_large" and str(64 * 1024) in info.value.message
    assert teller.admin().list_payments(tenant.tenant_id)[0] == []


def test_a_gzip_bomb_as_the_paid_response_is_cut_and_names_the_payment(teller, tenant):
    bomb = gzip.compress(b"A" * (64 * MIB))

    async def script(request, writer):
        if not _paid(request):
            await respond(writer, 402, _v2_402(), b"{}")
            return
        await respond(writer, 200, [("Content-Encoding", "gzip")], bomb)

    with hostile(script) as srv:
        received = 0
        with teller.client(tenant.token).pay_stream(f"{srv.base}/x", wallet_id=tenant.wallet_id) as s:
            assert s.response.status == 200
            with pytest.raises(FailedPrecondition) as info:
                for chunk in s.chunks:
                    received += len(chunk)
    assert info.value.reason == "response_too_large" and received <= MIB
    payment = _only_payment(teller, tenant)
    assert info.value.metadata["payment_id"] == payment.id and payment.id in info.value.message


def test_a_lying_encoding_is_an_error_naming_the_payment(teller, tenant):
    async def script(request, writer):
        if not _paid(request):
            await respond(writer, 402, _v2_402(), b"{}")
            return
        await respond(writer, 200, [("Content-Encoding", "gzip")], b"this is not gzip at all")

    with hostile(script) as srv:
        with pytest.raises(Unavailable) as info:
            teller.client(tenant.token).pay(f"{srv.base}/x", wallet_id=tenant.wallet_id)
    assert "gzip" in info.value.message
    assert info.value.metadata["payment_id"] == _only_payment(teller, tenant).id


def test_a_server_lying_about_settlement_is_not_believed(teller, tenant):
    fake = {"success": True, "transaction": "0x" + "ab" * 32, "network": "eip155:84532", "payer": tenant.address}
    receipts = {"/fake": base64.b64encode(json.dumps(fake).encode()).decode(), "/garbled": "%%% not a receipt"}

    async def script(request, writer):
        if not _paid(request):
            await respond(writer, 402, _v2_402(), b"{}")
            return
        await respond(writer, 200, [("PAYMENT-RESPONSE", receipts[request.target])], b"content")

    with hostile(script) as srv:
        client = teller.client(tenant.token)
        claimed = client.pay(f"{srv.base}/fake", wallet_id=tenant.wallet_id)
        # The receipt says settled; no chain confirms it, so the payment stays signed.
        assert claimed.status == 200 and claimed.body == b"content" and claimed.receipt == fake
        assert claimed.payment.state == "signed" and claimed.payment.tx_hash == ""
        garbled = client.pay(f"{srv.base}/garbled", wallet_id=tenant.wallet_id)
    # A malformed receipt is the server's fault, not the caller's: the paid response still comes back.
    assert garbled.status == 200 and garbled.body == b"content" and garbled.receipt is None
    assert garbled.payment.state == "signed" and garbled.payment.state_reason.startswith("receipt_unreadable:")


# -- redirects after the proof left -------------------------------------------------------


def test_a_paid_request_redirected_to_a_refused_host_names_the_payment(teller, tenant):
    async def elsewhere(request, writer):
        await respond(writer, 200, [], b"stolen")

    with hostile(elsewhere, host="127.0.0.2") as refused:
        async def script(request, writer):
            if not _paid(request):
                await respond(writer, 402, _v2_402(), b"{}")
                return
            await respond(writer, 307, [("Location", f"{refused.base}/collect")], b"")

        with hostile(script) as srv:
            with pytest.raises(PermissionDenied) as info:
                teller.client(tenant.token).pay(f"{srv.base}/x", wallet_id=tenant.wallet_id)
    assert refused.connections == 0  # the proof never went there (nor anything else)
    payment = _only_payment(teller, tenant)
    assert info.value.metadata["payment_id"] == payment.id and payment.id in info.value.message
    assert info.value.reason == "destination_not_allowed" and info.value.metadata["address"] == "127.0.0.2"
    assert payment.state == "signed" and payment.state_reason.startswith("redirect_refused:")


def test_a_paid_request_redirected_to_another_origin_does_not_carry_the_proof(tmp_path):
    running = RunningTeller(make_settings(f"sqlite:///{tmp_path / 't.db'}", tmp_path,
                                          outbound_allow=("127.0.0.1", "localhost")))
    try:
        tenant = running.setup_tenant()

        async def other(request, writer):
            await respond(writer, 200, [], b"other")

        with hostile(other) as second:
            port = second.base.rsplit(":", 1)[1]

            async def script(request, writer):
                if not _paid(request):
                    await respond(writer, 402, _v2_402(), b"{}")
                    return
                await respond(writer, 302, [("Location", f"http://localhost:{port}/next")], b"")

            with hostile(script) as srv:
                r = running.client(tenant.token).pay(f"{srv.base}/x", wallet_id=tenant.wallet_id)
        assert r.status == 200 and r.body == b"other"
        (seen,) = second.requests
        assert seen.header("payment-signature") is None and seen.header("x-payment") is None
    finally:
        running.stop()


# -- what the server said -----------------------------------------------------------------


def test_the_servers_reason_is_read_from_the_payment_required_header(teller, tenant):
    refusal = dict(json.loads(base64.b64decode(_v2_402()[0][1])), error="insufficient_funds")
    refused = [("PAYMENT-REQUIRED", base64.b64encode(json.dumps(refusal).encode()).decode())]

    async def script(request, writer):
        await respond(writer, 402, refused if _paid(request) else _v2_402(), b"{}")

    with hostile(script) as srv:
        with pytest.raises(FailedPrecondition) as info:
            teller.client(tenant.token).pay(f"{srv.base}/x", wallet_id=tenant.wallet_id, idempotency_key="k1")
        assert info.value.reason == "payment_refused" and "insufficient_funds" in info.value.message
        payment = _only_payment(teller, tenant)
        assert payment.state == "failed" and payment.state_reason == "insufficient_funds"

        # The same key again: the proof is re-sent, and the new reason is kept although
        # the payment was already failed (it used to stay the first one).
        refusal["error"] = "invalid_exact_evm_payload_authorization_valid_before"
        refused[0] = ("PAYMENT-REQUIRED", base64.b64encode(json.dumps(refusal).encode()).decode())
        with pytest.raises(FailedPrecondition) as info:
            teller.client(tenant.token).pay(f"{srv.base}/x", wallet_id=tenant.wallet_id, idempotency_key="k1")
        assert [_paid(r) for r in srv.requests] == [False, True, False, True]
    assert "valid_before" in info.value.message and info.value.metadata["payment_id"] == payment.id
    again = _only_payment(teller, tenant)
    assert again.state == "failed" and again.state_reason == refusal["error"]


def test_an_mpp_style_problem_details_refusal_is_the_reason(teller, tenant):
    problem = {"type": "https://paymentauth.org/problems/verification-failed", "title": "Verification failed",
               "status": 403, "detail": "signature does not match the payer"}

    async def script(request, writer):
        if not _paid(request):
            await respond(writer, 402, _v2_402(), b"{}")
            return
        await respond(writer, 403, [("Content-Type", "application/problem+json")], json.dumps(problem).encode())

    with hostile(script) as srv, pytest.raises(FailedPrecondition) as info:
        teller.client(tenant.token).pay(f"{srv.base}/x", wallet_id=tenant.wallet_id)
    assert "signature does not match the payer" in info.value.message
    payment = _only_payment(teller, tenant)
    assert payment.state == "failed" and payment.state_reason == "signature does not match the payer"


# -- the caller's own headers -------------------------------------------------------------


@pytest.mark.parametrize("name, value, named", [
    ("X-Note", "caf\u00e9", "X-Note"),
    ("X-Note", "a\r\nX-Injected: 1", "X-Note"),
    ("X-Note", "a\nb", "X-Note"),
    ("X-Note", "a\x00b", "headers[0].value"),
    # Whitespace around a value is not part of it (RFC 9110): the HTTP layer would refuse to send it.
    ("X-Note", " padded", "X-Note"),
    ("X-Note", "padded\t", "X-Note"),
    ("X-Nul\x00", "1", "headers[0].name"),
    ("X-Bad\r\nInjected", "1", "X-Bad"),
    ("bad name", "1", "bad name"),
    ("", "1", "header name"),
    ("X-\u00fcber", "1", "X-"),
    ("Connection", "close", "Connection"),
    ("Transfer-Encoding", "chunked", "Transfer-Encoding"),
    ("Host", "evil.example", "Host"),
    ("Content-Length", "5", "Content-Length"),
])
def test_bad_caller_headers_are_invalid_argument_naming_the_header(teller, tenant, name, value, named):
    with hostile(lambda r, w: respond(w, 200, [], b"ok")) as srv:
        with pytest.raises(InvalidArgument) as info:
            teller.client(tenant.token).pay(f"{srv.base}/x", wallet_id=tenant.wallet_id, headers=[(name, value)])
        assert srv.connections == 0
    assert "headers" in info.value.message and named in info.value.message


def test_good_caller_headers_still_reach_the_server(teller, tenant):
    with hostile(lambda r, w: respond(w, 200, [], b"ok")) as srv:
        r = teller.client(tenant.token).pay(f"{srv.base}/x", wallet_id=tenant.wallet_id,
                                            headers=[("X-Trace", "abc\t123"), ("Accept", "application/json")])
        (seen,) = srv.requests
    assert r.status == 200 and seen.header("x-trace") == "abc\t123" and seen.header("accept") == "application/json"


@pytest.mark.postgres
def test_what_pay_records_after_the_proof_left_on_postgresql(pg_url, tmp_path):
    running = RunningTeller(make_settings(pg_url, tmp_path, outbound_allow=("127.0.0.1",),
                                          keep_paid_response_bytes=1024))
    try:
        tenant = running.setup_tenant()

        async def script(request, writer):
            if not _paid(request):
                await respond(writer, 402, _v2_402(), b"{}")
            elif request.target == "/moved":
                await respond(writer, 307, [("Location", "http://127.0.0.2:9/collect")], b"")
            else:
                await respond(writer, 200, [("Content-Encoding", "gzip"), ("X-Kind", "paid")],
                              gzip.compress(b"\0paid body"))

        with hostile(script) as srv:
            client = running.client(tenant.token)
            with pytest.raises(PermissionDenied) as info:
                client.pay(f"{srv.base}/moved", wallet_id=tenant.wallet_id)
            r = client.pay(f"{srv.base}/ok", wallet_id=tenant.wallet_id)
        moved = client.get_payment(info.value.metadata["payment_id"])
        assert moved.state == "signed" and moved.state_reason.startswith("redirect_refused:")
        # The paid response is kept as the caller got it (decoded, binary intact).
        assert r.body == b"\0paid body"
        status, headers, body = running.app.lifecycle.kept_response(r.payment.id)
        assert (status, body) == (200, b"\0paid body") and ("x-kind", "paid") in headers
    finally:
        running.stop()

