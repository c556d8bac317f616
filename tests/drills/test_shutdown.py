"""SIGTERM under load: a `teller serve` process stops taking calls, lets the
calls in flight finish, and exits cleanly; no call goes unanswered and no
reservation is left without its answer and audit row."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import grpc
import pytest
from sqlalchemy import create_engine, text
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from teller.audit import tools as audit_tools
from teller.db import Database, make_engine
from teller_client import Policy, TellerClient, TellerError
from testbed.loopback import serve
from testbed.procs import seat_tenant, start_cluster
from testbed.x402_server import sdk_v2_challenge

pytestmark = pytest.mark.postgres


def _slow_app(seconds: float = 1.5) -> Starlette:
    async def slow(request):  # type: ignore[no-untyped-def]
        await asyncio.sleep(seconds)
        return PlainTextResponse("finished")

    return Starlette(routes=[Route("/slow", slow)])


def test_sigterm_under_load_loses_nothing(pg_url, tmp_path):
    cluster = start_cluster(pg_url, 1, tmp_path, TELLER_OUTBOUND_ALLOW="127.0.0.1",
                            TELLER_SHUTDOWN_GRACE_SECONDS="10", TELLER_LOG_LEVEL="INFO")
    worker = cluster.workers[0]
    try:
        seat = seat_tenant(cluster, "drain", Policy(allow_unknown_assets=True))
        token, wallet_id = seat.token, seat.wallet_id
        c = sdk_v2_challenge(amount="5")
        outcomes: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def hammer() -> None:
            with TellerClient(worker.target, token, timeout=15) as client:
                while not stop.is_set():
                    try:
                        client.sign(status=c.status, headers=c.headers, body=c.body, url=c.url,
                                    wallet_id=wallet_id)
                        result = "ok"
                    except TellerError as exc:
                        result = exc.code.name
                    with lock:
                        outcomes.append(result)
                    if result != "ok":
                        return

        slow_result: list[object] = []
        with serve(_slow_app()) as base:
            def slow_call() -> None:
                with TellerClient(worker.target, token, timeout=15) as client:
                    try:
                        slow_result.append(client.pay(f"{base}/slow", wallet_id=wallet_id))
                    except TellerError as exc:
                        slow_result.append(exc)

            threads = [threading.Thread(target=hammer) for _ in range(12)]
            for th in threads:
                th.start()
            time.sleep(1.0)
            slow = threading.Thread(target=slow_call)
            slow.start()
            time.sleep(0.5)  # the slow Pay is now in flight
            started = time.monotonic()
            worker.proc.send_signal(signal.SIGTERM)
            exit_code = worker.proc.wait(30)
            took = time.monotonic() - started
            stop.set()
            for th in [*threads, slow]:
                th.join(30)

        assert exit_code == 0, worker.log.read_text()[-2000:]
        assert took < 10, worker.log.read_text()[-3000:]  # well within the grace period
        assert "stopped after" in worker.log.read_text()
        # The call in flight at SIGTERM finished normally.
        (paid,) = slow_result
        assert not isinstance(paid, Exception), paid
        assert paid.status == 200 and paid.body == b"finished"
        # Every call got an answer: success, or refused once the worker stopped taking calls
        # (UNAVAILABLE; CANCELLED for a call that reached the port as it closed). The ledger
        # check below shows that none of the refused ones had reserved anything.
        assert set(outcomes) <= {"ok", grpc.StatusCode.UNAVAILABLE.name, grpc.StatusCode.CANCELLED.name}, \
            set(outcomes)
        assert outcomes.count("ok") > 0
        engine = create_engine(pg_url)
        with engine.connect() as conn:
            payments = conn.execute(text("SELECT count(*) FROM payments")).scalar_one()
            signed = conn.execute(text("SELECT count(*) FROM audit_events WHERE action = 'payment.sign'")
                                  ).scalar_one()
        engine.dispose()
        assert payments == signed == outcomes.count("ok")  # no reservation without its answer
        db = Database(make_engine(pg_url, 2))
        try:
            assert audit_tools.verify_database(db) == []
        finally:
            db.engine.dispose()
    finally:
        cluster.stop()


def test_a_call_that_outlasts_the_grace_is_named_in_the_log(pg_url, tmp_path):
    """A rollout held up by a call should say which call: just before the grace
    runs out the worker logs the calls still in their handlers, then stops."""
    cluster = start_cluster(pg_url, 1, tmp_path, TELLER_OUTBOUND_ALLOW="127.0.0.1",
                            TELLER_SHUTDOWN_GRACE_SECONDS="2", TELLER_LOG_LEVEL="INFO")
    worker = cluster.workers[0]
    try:
        seat = seat_tenant(cluster, "held")
        token, wallet_id = seat.token, seat.wallet_id
        result: list[object] = []
        with serve(_slow_app(seconds=30)) as base:
            def slow_call() -> None:
                with TellerClient(worker.target, token, timeout=40) as client:
                    try:
                        result.append(client.pay(f"{base}/slow", wallet_id=wallet_id))
                    except (TellerError, grpc.RpcError) as exc:
                        result.append(exc)

            th = threading.Thread(target=slow_call)
            th.start()
            time.sleep(1.0)  # the Pay is waiting on the slow server
            started = time.monotonic()
            worker.proc.send_signal(signal.SIGTERM)
            assert worker.proc.wait(30) == 0
            took = time.monotonic() - started
            th.join(30)
        log = worker.log.read_text()
        assert 1.5 < took < 10, log[-3000:]  # it waited for the grace, then stopped
        named = [line for line in log.splitlines() if "still in handlers" in line]
        assert named and "/teller.v1.PaymentService/Pay" in named[0], log[-3000:]
        assert "1 call(s) in flight" in log
        assert "stopped after" in log
        assert len(result) == 1 and isinstance(result[0], Exception)  # cancelled when the grace ran out
    finally:
        cluster.stop()
