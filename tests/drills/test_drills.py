"""Failure drills: faults under load lose nothing and never overspend.

- PostgreSQL stopped under load: calls fail closed with UNAVAILABLE, no proof
  leaves without its reservation and audit row, and Teller recovers on its own.
- A worker killed with SIGKILL under load: no overspend, no lost audit row, and
  idempotent retries on another worker return the same proof.
- A slow or failing chain RPC: the reconciler backs off and catches up.
- Untrusted input fuzzed through Sign: only INVALID_ARGUMENT / FAILED_PRECONDITION.
- Oversized input is refused quickly with bounded memory.
"""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from teller.audit import tools as audit_tools
from teller.db import Database, make_engine
from teller.errors import FailedPrecondition, InvalidArgument
from teller.x402 import challenge as x402_challenge
from teller_client import AdminClient, Budget, Policy, TellerClient, TellerError
from testbed import pg
from testbed.chain import anvil, deploy_token
from testbed.procs import start_cluster
from testbed.x402_server import sdk_v2_challenge
from tests.support.harness import RunningTeller, make_settings

CHALLENGE = sdk_v2_challenge(amount="1")


def _sign(client: TellerClient, wallet_id: str, key: str | None = None):
    return client.sign(status=CHALLENGE.status, headers=CHALLENGE.headers, body=CHALLENGE.body, url=CHALLENGE.url,
                       wallet_id=wallet_id, idempotency_key=key)


def _verify_ledger(url: str, proofs: dict[str, str]) -> None:
    """Every proof a caller received has its payment row and its audit row; the chain verifies."""
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT id, header_value FROM payments")).all())
        audited = {r[0] for r in conn.execute(text("SELECT payment_id FROM audit_events "
                                                   "WHERE action = 'payment.sign'"))}
    engine.dispose()
    for payment_id, header in proofs.items():
        assert rows.get(payment_id) == header, f"proof {payment_id} has no reservation"
        assert payment_id in audited, f"proof {payment_id} has no audit row"
    assert set(rows) == audited  # and no reservation without its audit row
    db = Database(make_engine(url, 2))
    try:
        assert audit_tools.verify_database(db) == []
    finally:
        db.engine.dispose()


@pytest.mark.postgres
def test_postgres_stopped_under_load_fails_closed_and_recovers(tmp_path):
    with pg.local_cluster(durable=True) as cluster, pg.fresh_database(cluster.url) as url:
        running = RunningTeller(make_settings(url, tmp_path))
        try:
            t = running.setup_tenant()
            proofs: dict[str, str] = {}
            codes: list[str] = []
            lock = threading.Lock()
            stop = threading.Event()
            phase = {"down": False}
            down_codes: list[str] = []

            def hammer() -> None:
                with TellerClient(running.target, t.token, timeout=20) as client:
                    while not stop.is_set():
                        try:
                            r = _sign(client, t.wallet_id)
                            with lock:
                                proofs[r.payment_id] = r.header_value
                                codes.append("OK")
                        except TellerError as exc:
                            with lock:
                                codes.append(exc.code.name)
                                if phase["down"]:
                                    down_codes.append(exc.code.name)
                            time.sleep(0.05)

            threads = [threading.Thread(target=hammer) for _ in range(6)]
            for th in threads:
                th.start()
            time.sleep(1.0)
            cluster.stop()
            phase["down"] = True
            time.sleep(2.0)
            phase["down"] = False
            signed_before_restart = len(proofs)
            cluster.start()
            deadline = time.time() + 30
            while len(proofs) < signed_before_restart + 20:
                assert time.time() < deadline, "Teller did not recover after PostgreSQL came back"
                time.sleep(0.2)
            stop.set()
            for th in threads:
                th.join(30)
            assert down_codes and set(down_codes) == {"UNAVAILABLE"}
            assert set(codes) <= {"OK", "UNAVAILABLE"}, set(codes)
            _verify_ledger(url, proofs)
        finally:
            running.stop()


@pytest.mark.postgres
def test_a_worker_killed_under_load(pg_url, tmp_path):
    cluster = start_cluster(pg_url, 2, tmp_path)
    a, b = cluster.workers
    budget = 400
    try:
        with AdminClient(a.target, cluster.admin_token) as admin:
            tenant = admin.create_tenant("drill")
            _, token = admin.issue_token(tenant.id)
            wallet = admin.create_wallet(tenant.id)
            admin.set_policy(tenant.id, Policy(allow_unknown_assets=True,
                                               budgets=(Budget(budget, "day", name="day"),)))
        answered: dict[str, tuple[str, str]] = {}  # idempotency key -> (payment id, proof)
        unanswered: list[str] = []
        lock = threading.Lock()
        counter = iter(range(10**6))

        def hammer() -> None:
            with TellerClient(a.target, token, timeout=20) as client:
                while True:
                    key = f"order-{next(counter)}"
                    try:
                        r = _sign(client, wallet.id, key)
                    except TellerError as exc:
                        with lock:
                            if exc.code.name == "RESOURCE_EXHAUSTED":
                                continue
                            unanswered.append(key)  # the worker died mid-call
                        return
                    with lock:
                        answered[key] = (r.payment_id, r.header_value)

        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for th in threads:
            th.start()
        time.sleep(1.5)
        a.proc.send_signal(signal.SIGKILL)
        for th in threads:
            th.join(30)
        assert unanswered, "the kill did not interrupt any call"
        # Retries with the same keys on the surviving worker: completed ones return the very
        # same proof; interrupted ones are either the proof that did commit, or a new one.
        with TellerClient(b.target, token, timeout=20) as client:
            for key, (payment_id, proof) in list(answered.items())[-25:]:
                again = _sign(client, wallet.id, key)
                assert (again.payment_id, again.header_value) == (payment_id, proof)
            for key in unanswered:
                try:
                    r = _sign(client, wallet.id, key)
                    answered[key] = (r.payment_id, r.header_value)
                except TellerError as exc:
                    assert exc.code.name == "RESOURCE_EXHAUSTED"
        engine = create_engine(pg_url)
        with engine.connect() as conn:
            spent = conn.execute(text("SELECT COALESCE(SUM(amount_common), 0) FROM payments")).scalar_one()
        engine.dispose()
        assert spent <= budget  # no overspend, even across the kill
        _verify_ledger(pg_url, dict(answered.values()))
    finally:
        cluster.stop()


class _FlakyRpc:
    """A JSON-RPC proxy in front of anvil that can fail or stall, recording when it was called."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode = "ok"
        self.calls: list[float] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.calls.append(time.monotonic())
                if proxy.mode == "fail":
                    self.send_response(503)
                    self.end_headers()
                    return
                if proxy.mode == "slow":
                    time.sleep(1.0)
                reply = httpx.post(proxy.upstream, content=body, headers={"content-type": "application/json"})
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_failing_chain_rpc_makes_the_reconciler_back_off_then_catch_up(tmp_path):
    from tests.e2e.test_reconciliation import _settle_directly

    with anvil() as url:
        chain = deploy_token(url)
        rpc = _FlakyRpc(url)
        running = RunningTeller(make_settings(f"sqlite:///{tmp_path / 't.db'}", tmp_path,
                                              rpc_urls={chain.network: rpc.url}, reconcile_interval_seconds=0.2))
        try:
            t = running.setup_tenant()
            client = running.client(t.token)
            extra = {"name": "Teller Test USD", "version": "2"}
            signed = [client.sign(status=c.status, headers=c.headers, body=c.body, url=c.url, wallet_id=t.wallet_id)
                      for c in (sdk_v2_challenge(amount=str(10 + i), network=chain.network,
                                                 asset=chain.token.address, extra=extra) for i in range(3))]
            chain.mint(t.address, 1000)
            rpc.mode = "fail"
            for s in signed:
                _settle_directly(chain, s.header_value)
            rpc.calls.clear()
            time.sleep(4.0)
            gaps = [b - a for a, b in zip(rpc.calls, rpc.calls[1:], strict=False)]
            # Backing off: a failing pass is retried after 0.4 s, then 0.8, 1.6, ... (not every 0.2 s).
            assert 1 <= len(rpc.calls) <= 6, rpc.calls
            assert all(g >= 0.35 for g in gaps) and (len(gaps) < 2 or gaps[-1] > gaps[0] * 1.5), gaps
            assert {client.get_payment(s.payment_id).state for s in signed} == {"signed"}
            rpc.mode = "slow"  # slow but working: still catches up
            deadline = time.time() + 30
            while {client.get_payment(s.payment_id).state for s in signed} != {"settled"}:
                assert time.time() < deadline, "the reconciler did not catch up"
                time.sleep(0.3)
        finally:
            running.stop()
            rpc.server.shutdown()


# -- untrusted input ------------------------------------------------------------------

def _b64(doc: object) -> str:
    return base64.b64encode(json.dumps(doc).encode()).decode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)
offer = st.fixed_dictionaries({}, optional={
    "scheme": st.sampled_from(["exact", "upto", ""]) | st.text(max_size=5),
    "network": st.sampled_from(["eip155:84532", "base-sepolia", "eip155:x", "solana"]) | st.text(max_size=8),
    "amount": st.sampled_from(["1", "0", "-1", "1.5", str(2**70)]) | st.text(max_size=6),
    "maxAmountRequired": st.sampled_from(["1", "abc"]),
    "asset": st.sampled_from(["0x036CbD53842c5426634e7929541eC2318f3dCF7e", "0x12", ""]),
    "payTo": st.sampled_from(["0x209693Bc6afc0C5328bA36FaF03C514EF312287C", "nope"]),
    "maxTimeoutSeconds": st.integers(-5, 10**6),
    "extra": st.dictionaries(st.sampled_from(["name", "version", "assetTransferMethod"]), json_values, max_size=3),
})
x402_docs = st.fixed_dictionaries({"x402Version": st.sampled_from([1, 2, 3, "2", None])},
                                  optional={"accepts": st.lists(offer, max_size=3) | json_values,
                                            "resource": json_values, "error": json_values})
challenges = st.one_of(
    x402_docs.map(lambda d: ([("PAYMENT-REQUIRED", _b64(d))], b"")),
    x402_docs.map(lambda d: ([("content-type", "application/json")], json.dumps(d).encode())),
    st.text(max_size=200).map(lambda s: ([("PAYMENT-REQUIRED", s)], b"")),
    st.binary(max_size=200).map(lambda b: ([], b)),
    st.text(max_size=300).map(lambda s: ([("WWW-Authenticate", s)], b"")),
    st.builds(lambda p, r: ([("WWW-Authenticate", f'Payment id="x", realm="r", method="{p}", intent="charge", '
                                                    f'request="{base64.urlsafe_b64encode(json.dumps(r).encode()).decode()}"')], b""),
              st.sampled_from(["tempo", "evm", "other"]), json_values),
)


@pytest.fixture(scope="module")
def fuzz_teller(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    running = RunningTeller(make_settings(f"sqlite:///{tmp / 't.db'}", Path(tmp)))
    t = running.setup_tenant()
    yield running, t
    running.stop()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(challenges)
def test_fuzzed_challenges_get_clear_errors_never_internal(fuzz_teller, challenge):
    running, t = fuzz_teller
    headers, body = challenge
    client = running.client(t.token)
    try:
        client.sign(status=402, headers=headers, body=body, url="https://fuzz.example/x", wallet_id=t.wallet_id)
    except TellerError as exc:
        assert exc.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), exc
    finally:
        client.close()


@settings(max_examples=300, deadline=None)
@given(challenges)
def test_fuzzed_parsers_raise_only_named_errors(challenge):
    from teller import offers
    from teller.mpp import receipt as mpp_receipt
    from teller.x402 import receipt as x402_receipt

    headers, body = challenge
    for parse in (lambda: offers.collect(headers, body, networks={}, max_bytes=65536,
                                         now=__import__("datetime").datetime.now(__import__("datetime").UTC)),
                  lambda: x402_receipt.decode(402, headers, body, 65536),
                  lambda: mpp_receipt.decode(200, [("Payment-Receipt", v) for _, v in headers], body, 65536)):
        try:
            parse()
        except (InvalidArgument, FailedPrecondition):
            pass


def test_oversized_input_is_refused_quickly_with_bounded_memory(fuzz_teller):
    running, t = fuzz_teller
    client = running.client(t.token)
    huge = "A" * (10 * 1024 * 1024)
    started = time.monotonic()
    with pytest.raises(TellerError) as info:
        client.sign(status=402, headers=[("PAYMENT-REQUIRED", huge)], body=b"", url="https://x.example/",
                    wallet_id=t.wallet_id)
    assert time.monotonic() - started < 2
    assert info.value.code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)

    many = {"x402Version": 2, "resource": {"url": "https://x.example/"},
            "accepts": [{"scheme": "exact", "network": "eip155:84532", "amount": "1",
                         "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                         "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C", "maxTimeoutSeconds": 60,
                         "extra": {"name": "USDC", "version": "2"}}] * 10_000}
    body = json.dumps(many).encode()
    encoded = base64.b64encode(body).decode()
    started = time.monotonic()
    for headers, payload in (([("content-type", "application/json")], body), ([("PAYMENT-REQUIRED", encoded)], b"")):
        with pytest.raises(TellerError) as info:
            client.sign(status=402, headers=headers, body=payload, url="https://x.example/", wallet_id=t.wallet_id)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "larger than" in info.value.message
    assert time.monotonic() - started < 2
    # Refused before decoding: parsing the 10,000-entry document allocates next to nothing.
    tracemalloc.start()
    with pytest.raises(InvalidArgument, match="larger than"):
        x402_challenge.parse([("PAYMENT-REQUIRED", encoded)], b"", 256 * 1024)
    # Even when an operator raises the byte limit: refused by the count of values
    # (untrusted_json) before the count of entries would be.
    with pytest.raises(InvalidArgument, match="402 body has more than 20000 values"):
        x402_challenge.parse([], body, len(body) + 1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 40 * len(body)  # bounded: the JSON is decoded once, offers are never validated
    client.close()


@pytest.fixture(scope="module")
def pg_fuzz_teller(pg_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pgfuzz")
    with pg.fresh_database(pg_server) as url:
        running = RunningTeller(make_settings(url, Path(tmp)))
        t = running.setup_tenant()
        yield running, t
        running.stop()


@pytest.mark.postgres
@settings(max_examples=150, deadline=None)
@given(url=st.text(max_size=60), key=st.text(max_size=30), wallet=st.none() | st.text(max_size=40))
def test_fuzzed_request_fields_get_clear_errors_never_internal(pg_fuzz_teller, url, key, wallet):
    """The caller's own fields (URL, idempotency key, wallet id) reach PostgreSQL
    through Sign's batches: whatever text they hold, the answer is a proof or a
    named error, never INTERNAL."""
    running, t = pg_fuzz_teller
    c = sdk_v2_challenge(amount="1000")
    client = running.client(t.token)
    try:
        client.sign(status=402, headers=c.headers, body=c.body, url=url, wallet_id=t.wallet_id if wallet is None
                    else wallet, idempotency_key=key)
    except TellerError as exc:
        assert exc.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                            grpc.StatusCode.ALREADY_EXISTS), exc
    finally:
        client.close()


def test_a_nul_in_any_request_field_is_named_not_internal(teller):
    """PostgreSQL text cannot hold NUL: every RPC refuses it by field name
    (nested and repeated fields too) before it reaches a query."""
    from teller_client import InvalidArgument as ClientInvalidArgument

    t = teller.setup_tenant()
    admin, client = teller.admin(), teller.client(t.token)
    c = sdk_v2_challenge(amount="1000")
    attempts = {
        "name": lambda: admin.create_tenant("a\x00b"),
        "tenant_id": lambda: admin.list_payments(tenant_id="t\x00"),
        "payment_id": lambda: client.get_payment("p\x00"),
        "challenge.headers[1].value": lambda: client.sign(
            status=402, headers=[c.headers[0], ("x-note", "a\x00b")], body=c.body, url=c.url, wallet_id=t.wallet_id),
        "idempotency_key": lambda: client.sign(status=402, headers=c.headers, body=c.body, url=c.url,
                                               wallet_id=t.wallet_id, idempotency_key="k\x00"),
    }
    for field, attempt in attempts.items():
        with pytest.raises(ClientInvalidArgument) as info:
            attempt()
        assert info.value.message == f"{field} contains a NUL character"
    # Nothing was written for any of them.
    payments, _ = admin.list_payments(tenant_id=t.tenant_id)
    assert payments == []
