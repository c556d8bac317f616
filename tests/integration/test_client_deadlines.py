"""A Teller that does not answer fails the call within its deadline; idempotent
calls are retried inside that deadline; the async client pays; a missing extra
names itself."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from teller_client import (
    NO_RETRY,
    AsyncTellerClient,
    Cancelled,
    DeadlineExceeded,
    LimitExceeded,
    Policy,
    RetryPolicy,
    TellerClient,
    Unavailable,
)
from teller_client._proto.teller.v1 import payment_pb2, payment_pb2_grpc
from teller_client.integrations import AsyncTellerTransport, TellerTransport
from testbed.loopback import serve
from testbed.procs import free_port
from testbed.x402_server import sdk_v2_challenge
from tests.support.harness import RunningTeller, make_settings


@contextlib.contextmanager
def black_hole() -> Iterator[str]:
    """A port that accepts connections and never says a word (a hung Teller)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(sock.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        for c in held:
            c.close()
        sock.close()


def _timed(fn) -> tuple[BaseException | None, float]:
    start = time.monotonic()
    try:
        fn()
    except BaseException as exc:
        return exc, time.monotonic() - start
    return None, time.monotonic() - start


CHALLENGE = sdk_v2_challenge(amount="1000")


def _app() -> Starlette:
    async def paid(request: Request) -> Response:
        return Response(CHALLENGE.body, status_code=402, headers=dict(CHALLENGE.headers))

    async def free(request: Request) -> PlainTextResponse:
        return PlainTextResponse("free")

    async def chunked(request: Request) -> StreamingResponse:
        async def parts():
            for i in range(3):
                yield f"part{i};".encode()
        return StreamingResponse(parts())

    return Starlette(routes=[Route("/paid", paid), Route("/free", free), Route("/chunked", chunked)])


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with serve(_app()) as base:
        yield base


def test_a_hung_teller_fails_each_call_within_its_deadline(site):
    with black_hole() as target:
        client = TellerClient(target, "tok", timeout=1.0)
        for call in (client.list_wallets,
                     lambda: client.sign(status=402, headers=CHALLENGE.headers, body=b"", url=CHALLENGE.url,
                                         wallet_id="w", idempotency_key="k"),
                     lambda: client.pay(f"{site}/free", wallet_id="w", timeout=1.0)):
            error, took = _timed(call)
            assert isinstance(error, DeadlineExceeded), error
            assert 0.9 <= took < 2.0, took
        # A per-call deadline overrides the client's.
        error, took = _timed(lambda: client.spend(timeout=0.3))
        assert isinstance(error, DeadlineExceeded) and took < 1.0
        # The httpx transport: the 402's Sign is bounded by the same deadline.
        with httpx.Client(transport=TellerTransport(client, "w")) as http:
            error, took = _timed(lambda: http.get(f"{site}/paid"))
        assert isinstance(error, DeadlineExceeded) and took < 2.0, (error, took)
        client.close()
        # The caller's own HTTP timeout bounds the Sign its request makes, when it is the shorter.
        patient = TellerClient(target, "tok", timeout=30.0)
        with httpx.Client(transport=TellerTransport(patient, "w"), timeout=1.0) as http:
            error, took = _timed(lambda: http.get(f"{site}/paid"))
        assert isinstance(error, DeadlineExceeded) and took < 2.0, (error, took)
        import requests

        from teller_client.integrations import TellerAdapter

        session = requests.Session()
        session.mount("http://", TellerAdapter(patient, "w"))
        error, took = _timed(lambda: session.get(f"{site}/paid", timeout=(0.5, 1.0)))
        assert isinstance(error, DeadlineExceeded) and took < 2.0, (error, took)
        patient.close()


def test_a_hung_teller_fails_async_calls_within_their_deadline(site):
    async def scenario() -> list[tuple[BaseException | None, float]]:
        out = []
        with black_hole() as target:
            async with AsyncTellerClient(target, "tok", timeout=1.0, pay_timeout=1.0) as client:
                for coro in (client.list_wallets, lambda: client.pay(f"{site}/free", wallet_id="w")):
                    start = time.monotonic()
                    try:
                        await coro()
                        out.append((None, time.monotonic() - start))
                    except Exception as exc:
                        out.append((exc, time.monotonic() - start))
                async with httpx.AsyncClient(transport=AsyncTellerTransport(client, "w")) as http:
                    start = time.monotonic()
                    try:
                        await http.get(f"{site}/paid")
                    except Exception as exc:
                        out.append((exc, time.monotonic() - start))
        return out

    results = asyncio.run(scenario())
    assert len(results) == 3
    for error, took in results:
        assert isinstance(error, DeadlineExceeded) and took < 2.0, (error, took)


def test_no_teller_at_all_is_unavailable_after_retries_within_the_deadline():
    target = f"127.0.0.1:{free_port()}"  # nothing listens
    client = TellerClient(target, "tok", timeout=3.0, retry=RetryPolicy(max_attempts=3, initial_backoff=0.2))
    error, took = _timed(client.list_wallets)
    assert isinstance(error, Unavailable) and 0.2 <= took < 3.0, (error, took)  # tried again after a pause
    once = TellerClient(target, "tok", timeout=3.0, retry=RetryPolicy(max_attempts=1))
    error, took = _timed(once.list_wallets)
    assert isinstance(error, Unavailable) and took < 0.2, took
    # Sign is repeated too: it always carries a key (see the next test).
    error, took = _timed(lambda: client.sign(status=402, headers=CHALLENGE.headers, body=b"", url=CHALLENGE.url,
                                             wallet_id="w"))
    assert isinstance(error, Unavailable) and 0.2 <= took < 3.0, took
    client.close()
    once.close()


class _StoppingTeller(payment_pb2_grpc.PaymentServiceServicer):
    """A PaymentService whose first answer to each key is CANCELLED, as a worker
    that stops cancels the calls it holds (grpc/grpc#41785); it records every key."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def Sign(self, request, context):
        self.keys.append(request.idempotency_key)
        if self.keys.count(request.idempotency_key) == 1:
            context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
        return payment_pb2.SignResponse(header_name="X-PAYMENT", header_value="proof", payment_id="pay_1")


def test_a_sign_cancelled_by_a_stopping_worker_is_retried_under_one_key_per_call():
    """Two sign calls without a key: each is retried once under its own key, so the
    retry is answered with that call's payment and the two calls stay two payments."""
    fake = _StoppingTeller()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    payment_pb2_grpc.add_PaymentServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with TellerClient(f"127.0.0.1:{port}", "tok", timeout=5.0) as client:
            for _ in range(2):
                signed = client.sign(status=402, headers=CHALLENGE.headers, body=CHALLENGE.body, url=CHALLENGE.url,
                                     wallet_id="w")
                assert signed.payment_id == "pay_1"
            kept = client.sign(status=402, headers=CHALLENGE.headers, body=CHALLENGE.body, url=CHALLENGE.url,
                               wallet_id="w", idempotency_key="order-7")
            assert kept.payment_id == "pay_1"
        first, first_retry, second, second_retry, own, own_retry = fake.keys
        assert first == first_retry and second == second_retry and first != second
        assert first.startswith("call_") and len(first) == 37
        assert own == own_retry == "order-7"
        # A caller's own NO_RETRY still means one attempt.
        with TellerClient(f"127.0.0.1:{port}", "tok", timeout=5.0, retry=NO_RETRY) as once:
            error, _ = _timed(lambda: once.sign(status=402, headers=CHALLENGE.headers, body=CHALLENGE.body,
                                                url=CHALLENGE.url, wallet_id="w"))
        assert isinstance(error, Cancelled), error
    finally:
        server.stop(0)


def test_a_restarted_teller_is_reached_by_a_retried_call(tmp_path):
    """An idempotent call made while Teller is starting succeeds once it listens,
    within the call's deadline."""
    port = free_port()
    settings = make_settings(f"sqlite:///{tmp_path / 'r.db'}", tmp_path, listen=f"127.0.0.1:{port}")
    client = TellerClient(f"127.0.0.1:{port}", "tok", timeout=8.0,
                          retry=RetryPolicy(max_attempts=20, initial_backoff=0.1, max_backoff=0.3))
    holder: list[RunningTeller] = []
    starter = threading.Timer(0.5, lambda: holder.append(RunningTeller(settings)))
    starter.start()
    try:
        error, took = _timed(client.list_wallets)
        # Reached: the token is rejected by a live Teller, not by the network.
        assert error is not None and type(error).__name__ == "Unauthenticated", error
        assert took < 8.0
    finally:
        starter.join()
        client.close()
        for r in holder:
            r.stop()


def test_async_client_pays_and_streams(tmp_path, site):
    running = RunningTeller(make_settings(f"sqlite:///{tmp_path / 'a.db'}", tmp_path,
                                          outbound_allow=("127.0.0.1", "localhost")))
    try:
        t = running.setup_tenant(policy=Policy(per_payment_max=999))

        async def scenario():
            async with AsyncTellerClient(running.target, t.token) as client:
                free = await client.pay(f"{site}/free", wallet_id=t.wallet_id)
                async with client.pay_stream(f"{site}/chunked", wallet_id=t.wallet_id) as r:
                    head = r.response
                    parts = [c async for c in r.chunks]
                with pytest.raises(LimitExceeded) as info:
                    await client.pay(f"{site}/paid", wallet_id=t.wallet_id)
                return free, head, parts, info.value

        free, head, parts, denial = asyncio.run(scenario())
        assert (free.status, free.body, free.payment) == (200, b"free", None)
        assert head.status == 200 and b"".join(parts) == b"part0;part1;part2;"
        assert denial.reason == "per_payment_max" and denial.limit == 999
    finally:
        running.stop()


@pytest.mark.parametrize("name, extra", [("TellerTransport", "httpx"), ("AsyncTellerTransport", "httpx"),
                                         ("TellerAdapter", "requests")])
def test_a_missing_extra_is_named(name, extra):
    code = (f"import sys; sys.modules[{extra!r}] = None\n"
            "if {extra!r} == 'requests': sys.modules['requests.adapters'] = None\n".replace("{extra!r}", repr(extra)) +
            "import teller_client.integrations as i\n"
            f"try:\n    i.{name}\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f'pip install "teller-client[{extra}]"' in out.stdout and name in out.stdout
