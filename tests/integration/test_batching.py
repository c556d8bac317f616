"""Group commit for Sign: many calls in one transaction, each decided in order
against the windows the calls before it left, each with its own outcome."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from teller.audit.chain import verify
from teller.db.models import AuditEvent, AuditHead, Payment, SpendBucket
from teller.errors import (
    AlreadyExists,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from teller.rpc.batcher import SignBatcher
from teller.sign.call import SignResult
from teller_client import Budget, Policy
from testbed.x402_server import sdk_v2_challenge
from tests.support.batches import commit as _commit
from tests.support.batches import prepare as _call


@pytest.fixture(params=["sqlite/session", pytest.param("postgres/session", marks=pytest.mark.postgres),
                        pytest.param("postgres/async", marks=pytest.mark.postgres)])
def setup(request, tmp_path):
    """Every way a batch reaches the database: a SQLAlchemy session (any
    database) and, on PostgreSQL, async psycopg on the event loop (what the
    server uses)."""
    from tests.support.harness import RunningTeller, make_settings

    database, driver = request.param.split("/")
    url = f"sqlite:///{tmp_path / 'teller.db'}" if database == "sqlite" else request.getfixturevalue("pg_url")
    running = RunningTeller(make_settings(url, tmp_path))
    yield running, driver
    running.stop()


def _rows(teller, model, **where):
    from sqlalchemy import select

    with teller.app.db.read() as s:
        query = select(model)
        for k, v in where.items():
            query = query.where(getattr(model, k) == v)
        return list(s.scalars(query))


def _chain_ok(teller, tenant_id: str) -> None:
    events = sorted(_rows(teller, AuditEvent, tenant_id=tenant_id), key=lambda e: e.id)
    (head,) = _rows(teller, AuditHead, chain=tenant_id)
    docs = [{c.key: getattr(e, c.key) for c in AuditEvent.__table__.columns} for e in events]
    assert verify(docs, {tenant_id: (head.seq, head.hash)}) == []


def test_one_batch_holds_a_budget_exactly(setup):
    """Twelve calls of one tenant in one transaction against a budget for five:
    the first five are signed, the other seven denied, as if one by one."""
    teller, driver = setup
    t = teller.setup_tenant(policy=Policy(daily_budget=5000))
    chall = sdk_v2_challenge(amount="1000")
    outcomes = _commit(teller, [_call(teller, t, chall) for _ in range(12)], driver)

    assert [type(o).__name__ for o in outcomes] == ["SignResult"] * 5 + ["LimitExceeded"] * 7
    assert all(o.reason == "budget_exhausted:day" and o.metadata["remaining"] == "0"
               for o in outcomes[5:] if isinstance(o, LimitExceeded))
    payments = _rows(teller, Payment, tenant_id=t.tenant_id)
    assert {p.id for p in payments} == {o.payment_id for o in outcomes if isinstance(o, SignResult)}
    (day,) = teller.admin().spend(t.tenant_id)
    assert (day.reserved, day.remaining) == (5000, 0)
    buckets = _rows(teller, SpendBucket, scope_id=t.tenant_id)
    assert sum(b.reserved for b in buckets) == 5000
    actions = [e.action for e in sorted(_rows(teller, AuditEvent, tenant_id=t.tenant_id), key=lambda e: e.seq)]
    assert actions.count("payment.sign") == 5 and actions.count("payment.deny") == 7
    _chain_ok(teller, t.tenant_id)


def test_each_call_in_a_batch_gets_its_own_outcome(setup):
    """Bad token, another tenant's wallet, a disabled tenant and a policy denial
    sit in one batch with good calls of two tenants: nothing of the failed calls
    is written, the good ones commit, each chain stays whole."""
    teller, driver = setup
    a = teller.setup_tenant()
    b = teller.setup_tenant(policy=Policy(per_payment_max=500))
    c = teller.setup_tenant()
    off = teller.setup_tenant()
    teller.admin().disable_tenant(off.tenant_id)
    chall = sdk_v2_challenge(amount="1000")
    calls = [
        _call(teller, a, chall),
        _call(teller, a, chall, secret="wrong-secret"),
        _call(teller, b, chall),  # above b's per-payment maximum
        _call(teller, c, chall, wallet_id=a.wallet_id),  # a's wallet, asked for by c
        _call(teller, off, chall),
        _call(teller, c, chall),
        _call(teller, a, chall),
    ]
    outcomes = _commit(teller, calls, driver)

    assert isinstance(outcomes[0], SignResult) and isinstance(outcomes[6], SignResult)
    assert isinstance(outcomes[1], Unauthenticated)
    assert isinstance(outcomes[2], LimitExceeded) and outcomes[2].reason == "per_payment_max"
    assert isinstance(outcomes[3], NotFound)
    assert isinstance(outcomes[4], PermissionDenied) and outcomes[4].reason == "tenant_disabled"
    assert isinstance(outcomes[5], SignResult)
    assert len(_rows(teller, Payment, tenant_id=a.tenant_id)) == 2
    assert len(_rows(teller, Payment, tenant_id=c.tenant_id)) == 1
    assert _rows(teller, Payment, tenant_id=b.tenant_id) == []
    (deny,) = _rows(teller, AuditEvent, tenant_id=b.tenant_id, action="payment.deny")
    assert deny.reason == "per_payment_max"
    for tenant in (a, b, c):
        _chain_ok(teller, tenant.tenant_id)


def test_idempotency_keys_inside_one_batch(setup):
    teller, driver = setup
    t = teller.setup_tenant()
    chall = sdk_v2_challenge(amount="1000")
    other = sdk_v2_challenge(amount="2000")
    outcomes = _commit(teller, [
        _call(teller, t, chall, key="k1"), _call(teller, t, chall, key="k1"), _call(teller, t, other, key="k1")], driver)
    first, again, conflict = outcomes
    assert isinstance(first, SignResult) and isinstance(again, SignResult)
    assert again.payment_id == first.payment_id and again.header_value == first.header_value
    assert isinstance(conflict, AlreadyExists)
    assert len(_rows(teller, Payment, tenant_id=t.tenant_id)) == 1
    # And in the next batch, from the database.
    (later,) = _commit(teller, [_call(teller, t, chall, key="k1")], driver)
    assert isinstance(later, SignResult) and later.payment_id == first.payment_id


def test_a_failing_batch_is_retried_call_by_call(setup, monkeypatch):
    """An unexpected error inside the transaction rolls all of it back; the calls
    are then committed one per transaction, so only the faulty one fails."""
    teller, driver = setup
    t = teller.setup_tenant()
    chall = sdk_v2_challenge(amount="1000")
    calls = [_call(teller, t, chall) for _ in range(4)]
    planner = teller.app.payments.planner
    original = planner._decide
    poisoned = calls[2]

    def decide(call, *args):
        if call is poisoned:
            raise RuntimeError("boom")
        return (yield from original(call, *args))

    monkeypatch.setattr(planner, "_decide", decide)
    outcomes = _commit(teller, calls, driver)
    assert [type(o).__name__ for o in outcomes] == ["SignResult", "SignResult", "RuntimeError", "SignResult"]
    assert len(_rows(teller, Payment, tenant_id=t.tenant_id)) == 3
    _chain_ok(teller, t.tenant_id)


def test_the_batcher_groups_concurrent_calls_and_delivers_each_outcome():
    seen: list[int] = []

    async def main():
        gate = asyncio.Event()

        async def commit(calls):
            seen.append(len(calls))
            await gate.wait()  # hold the first batch so the others queue behind it
            return [c if c != "bad" else ValueError("bad") for c in calls]

        batcher = SignBatcher(commit, max_batch=8, in_flight=1)
        first = asyncio.create_task(batcher.submit("first"))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(batcher.submit(x)) for x in ["a", "bad", *map(str, range(10))]]  # type: ignore
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(main())
    assert results[0] == "first" and results[1] == "a" and isinstance(results[2], ValueError)
    assert results[3:] == [str(i) for i in range(10)]
    assert seen == [1, 8, 4]  # the queue went in batches of at most max_batch


@pytest.mark.parametrize("linger", [True, False])
def test_with_a_backlog_calls_ready_to_run_join_the_next_batch(linger):
    """When a batch commits with calls waiting, the next one waits one turn of
    the event loop, so calls whose requests are already in join it instead of
    starting a batch of their own; without a backlog a call starts at once."""
    seen: list[list[str]] = []
    gate = asyncio.Event()

    async def commit(calls):
        seen.append(list(calls))
        if len(seen) == 1:
            await gate.wait()
        return list(calls)

    async def main():
        batcher = SignBatcher(commit, max_batch=64, in_flight=1, linger=linger)
        tasks = [asyncio.create_task(batcher.submit("first"))]  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        tasks += [asyncio.create_task(batcher.submit(x)) for x in ("q1", "q2")]  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()

        def release():
            gate.set()
            # Requests read while the batch was committing: their handlers' tasks
            # exist and are ready to run (as grpc starts them), after the batch's.
            tasks.extend(asyncio.ensure_future(batcher.submit(x)) for x in ("r1", "r2"))  # type: ignore

        loop.call_soon(release)
        await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)
        alone = await batcher.submit("alone")  # type: ignore[arg-type]
        return alone

    assert asyncio.run(main()) == "alone"
    if linger:
        assert seen == [["first"], ["q1", "q2", "r1", "r2"], ["alone"]]
    else:
        assert seen == [["first"], ["q1", "q2"], ["r1", "r2"], ["alone"]]


def test_a_commit_that_raises_fails_every_call_of_its_batch():
    async def commit(calls):
        raise ConnectionError("database gone")

    async def main():
        batcher = SignBatcher(commit, max_batch=8, in_flight=1)
        return await asyncio.gather(*(batcher.submit(i) for i in range(3)))  # type: ignore[arg-type]

    assert all(isinstance(r, ConnectionError) for r in asyncio.run(main()))


@pytest.mark.postgres
def test_concurrent_sign_rpcs_share_transactions_and_stay_exact(pg_teller):
    """Forty concurrent Sign RPCs against a budget for 25 on one server: they go
    in batches (fewer transactions than calls), and exactly 25 are signed."""
    from teller import observe
    from teller_client import LimitExceeded

    t = pg_teller.setup_tenant(policy=Policy(daily_budget=25_000))
    chall = sdk_v2_challenge(amount="1000")
    client = pg_teller.client(t.token)
    before = observe.SIGN_BATCH._sum.get(), sum(b.get() for b in observe.SIGN_BATCH._buckets)

    def attempt(_):
        try:
            return client.sign(status=402, headers=chall.headers, body=chall.body, url=chall.url,
                               wallet_id=t.wallet_id)
        except LimitExceeded as exc:
            return exc

    with ThreadPoolExecutor(max_workers=40) as pool:
        results = list(pool.map(attempt, range(40)))
    signed = [r for r in results if not isinstance(r, LimitExceeded)]
    assert len(signed) == 25 and len({r.payment_id for r in signed}) == 25
    calls = observe.SIGN_BATCH._sum.get() - before[0]
    batches = sum(b.get() for b in observe.SIGN_BATCH._buckets) - before[1]
    assert calls == 40 and batches < 40
    (day,) = pg_teller.admin().spend(t.tenant_id)
    assert (day.reserved, day.remaining) == (25_000, 0)
    _chain_ok(pg_teller, t.tenant_id)


def test_a_policy_change_between_batches_is_measured_anew(setup):
    """Windows are measured with the lock for the budgets a tenant's last batch
    had; a batch that finds other budgets under its lock measures those."""
    teller, driver = setup
    t = teller.setup_tenant(policy=Policy(daily_budget=10_000))
    chall = sdk_v2_challenge(amount="1000")
    first = _commit(teller, [_call(teller, t, chall) for _ in range(3)], driver)
    assert all(isinstance(o, SignResult) for o in first)
    # Another window altogether: a rolling hour, which the guessed day window does not measure.
    teller.admin().set_policy(t.tenant_id, Policy(allow_unknown_assets=True, budgets=(
        Budget(4000, "1h", kind="rolling", name="hour"),)))
    outcomes = _commit(teller, [_call(teller, t, chall) for _ in range(3)], driver)
    assert [type(o).__name__ for o in outcomes] == ["SignResult", "LimitExceeded", "LimitExceeded"]
    assert outcomes[1].reason == "budget_exhausted:hour"
    assert outcomes[1].metadata["remaining"] == "0" and outcomes[1].metadata["limit"] == "4000"
    teller.admin().set_policy(t.tenant_id, Policy(allow_unknown_assets=True, daily_budget=6000))
    again = _commit(teller, [_call(teller, t, chall) for _ in range(3)], driver)
    assert [type(o).__name__ for o in again] == ["SignResult", "SignResult", "LimitExceeded"]


@pytest.mark.postgres
def test_text_array_literals_round_trip_through_postgresql(pg_url):
    """Batch ids travel as text[] literals built by Teller: any text must come
    back unchanged (quotes, backslashes, commas, braces, NULL, spaces)."""
    import psycopg
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from teller.sign.drivers.pg import _text_array, conninfo

    with psycopg.connect(conninfo(pg_url)) as conn:
        @settings(max_examples=200, deadline=None)
        @given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))))
        def round_trip(values):
            assert conn.execute("SELECT %s::text[]", (_text_array(values),)).fetchone()[0] == values

        round_trip()


@pytest.mark.postgres
def test_a_tenant_locked_elsewhere_does_not_stall_the_batch(pg_teller):
    """Another transaction holds tenant A's lock: the batch gives up waiting after
    its lock timeout and its calls go one by one: B is signed, A is UNAVAILABLE
    (retry), and nothing of A is written; once A is free it signs again."""
    import time

    import psycopg

    from teller.sign.drivers.pg import AsyncPgBatchIO, conninfo

    teller = pg_teller
    a, b = teller.setup_tenant(), teller.setup_tenant()
    chall = sdk_v2_challenge(amount="1000")
    url = conninfo(teller.app.db.engine.url.render_as_string(hide_password=False))

    async def commit(calls):
        aio = AsyncPgBatchIO(url, lock_timeout_ms=300)
        loop = asyncio.get_running_loop()
        try:
            return await teller.app.payments.commit_async(calls, aio, lambda fn, c: loop.run_in_executor(None, fn, c))
        finally:
            await aio.close()

    with psycopg.connect(url) as holder:
        holder.execute("SELECT id FROM tenants WHERE id = %s FOR UPDATE", (a.tenant_id,))
        started = time.monotonic()
        first, second = asyncio.run(commit([_call(teller, a, chall), _call(teller, b, chall)]))
        elapsed = time.monotonic() - started
        holder.rollback()
    assert isinstance(second, SignResult)
    assert isinstance(first, Unavailable) and "busy" in first.message
    assert elapsed < 3
    assert _rows(teller, Payment, tenant_id=a.tenant_id) == []
    (again,) = asyncio.run(commit([_call(teller, a, chall)]))
    assert isinstance(again, SignResult)
    _chain_ok(teller, a.tenant_id)


@pytest.mark.postgres
def test_statement_literals_round_trip_through_postgresql(pg_url):
    """A batch's arguments travel as literals in its query string (escaped by
    libpq): any text in an id list or a JSON document comes back unchanged."""
    import json

    import psycopg
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from teller.sign.drivers.pg import _Statements, _text_array, conninfo

    text = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))

    async def run(cases):
        conn = await psycopg.AsyncConnection.connect(conninfo(pg_url), autocommit=True)
        try:
            await conn.execute(b"PREPARE t_echo (text[], json) AS SELECT $1, $2::text", prepare=False)
            for values, doc in cases:
                statements = _Statements(conn)
                statements.add("t_echo", _text_array(values), json.dumps(doc))
                statements.add("t_echo", _text_array(values[::-1]), json.dumps(doc))
                # Planned where it runs (the lookups of payments): the same literals, spliced into its text.
                statements.add_planned("SELECT %s::text[] AS ids, %s::json::text AS doc", _text_array(values), json.dumps(doc))
                cur = await statements.send()
                first = await cur.fetchone()
                cur.nextset()
                second = await cur.fetchone()
                cur.nextset()
                third = await cur.fetchone()
                assert first[0] == values and json.loads(first[1]) == doc
                assert second[0] == values[::-1]
                assert third[0] == values and json.loads(third[1]) == doc
        finally:
            await conn.close()

    @settings(max_examples=150, deadline=None)
    @given(st.lists(text), st.dictionaries(text, text))
    def round_trip(values, doc):
        asyncio.run(run([(values, doc)]))

    round_trip()


@pytest.mark.postgres
def test_batch_statements_keep_using_indexes_as_their_tables_grow(pg_teller):
    """A prepared statement runs a generic plan made once; one made while a table
    was empty reads all of it on every batch as it grows. So the lookups of
    ``payments`` (which grows fastest) are planned where they run, and the
    prepared statements are prepared anew after ``replan_after_s``: either way
    the planner sees the tables as they are now (ANALYZE or not)."""
    import psycopg

    from teller.sign.drivers.pg import (
        _PG_CLAIMS,
        _PG_NONCES,
        AsyncPgBatchIO,
        _Statements,
        _text_array,
        conninfo,
    )

    teller = pg_teller
    t = teller.setup_tenant()
    url = conninfo(teller.app.db.engine.url.render_as_string(hide_password=False))

    async def scenario() -> dict[str, str]:
        aio = AsyncPgBatchIO(url, replan_after_s=3600)
        loop = asyncio.get_running_loop()
        try:
            await teller.app.payments.commit_async([_call(teller, t, sdk_v2_challenge(amount="1000"))], aio,
                                                   lambda fn, c: loop.run_in_executor(None, fn, c))
            (conn, _), = aio._idle

            async def explain(sql: bytes | str) -> str:
                cur = await conn.execute(b"EXPLAIN " + (sql if isinstance(sql, bytes) else sql.encode()))
                return " ".join(r[0] for r in await cur.fetchall())

            def planned(template: str, *args: str) -> bytes:
                st = _Statements(conn)
                st.add_planned(template, *args)
                return st._parts[0]

            lock = f"EXECUTE teller_lock('{{{t.tenant_id}}}')"
            plans = {"lock on empty tables": await explain(lock)}  # the generic plan is made here
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as other:
                await other.execute(
                    "INSERT INTO payments (id, tenant_id, wallet_id, protocol, version, scheme, network, asset, pay_to, "
                    "amount, nonce, valid_before, state, header_name, header_value, request_hash, created_ms, "
                    "resource_url, idempotency_key) SELECT 'p' || g, %s, %s, 'mpp', 1, 'tempo/charge', 'n', 'a', 'p', "
                    "1, md5(g::text), 0, 'signed', 'h', repeat('x', 600), 'r', g, '', 'k' || g "
                    "FROM generate_series(1, 20000) g", (t.tenant_id, t.wallet_id))
                await other.execute("INSERT INTO tenants (id, name, state, frozen, created_ms) "
                                    "SELECT 't' || g, 'n' || g, 'active', false, 0 FROM generate_series(1, 20000) g")
            plans["nonces"] = await explain(planned(_PG_NONCES, _text_array([t.wallet_id]), "{0xab}"))
            plans["claims"] = await explain(planned(_PG_CLAIMS, _text_array([t.tenant_id]), "{k1,k2}"))
            plans["stale lock"] = await explain(lock)
            aio._replan_after_s = 0.0
            await teller.app.payments.commit_async([_call(teller, t, sdk_v2_challenge(amount="1000"))], aio,
                                                   lambda fn, c: loop.run_in_executor(None, fn, c))
            assert aio._idle[0][0] is conn  # the same connection, its statements prepared anew
            plans["lock prepared anew"] = await explain(lock)
            return plans
        finally:
            await aio.close()

    plans = asyncio.run(scenario())
    assert "Seq Scan on tenants" in plans["lock on empty tables"] and "Seq Scan on tenants" in plans["stale lock"]
    assert "Seq Scan on tenants" not in plans["lock prepared anew"] and "pk_tenants" in plans["lock prepared anew"]
    assert "Seq Scan on payments" not in plans["nonces"] and "uq_payments_wallet_id_nonce" in plans["nonces"]
    assert "Seq Scan on payments" not in plans["claims"] and "uq_payments_tenant_id_idempotency_key" in plans["claims"]


@pytest.mark.postgres
def test_a_failed_or_cancelled_batch_leaves_no_transaction_open(pg_teller):
    """A batch that fails after its locks rolls back before its connection is
    reused; one cancelled while it waits is closed rather than reused. Either
    way the tenant is free at once and the next batch signs."""
    import psycopg

    from teller.sign.batch_io import Read
    from teller.sign.drivers.pg import AsyncPgBatchIO, conninfo

    teller = pg_teller
    t = teller.setup_tenant()
    chall = sdk_v2_challenge(amount="1000")
    url = conninfo(teller.app.db.engine.url.render_as_string(hide_password=False))

    def failing_plan():
        yield Read([t.tenant_id], [t.wallet_id], [], [])
        raise RuntimeError("the plan broke after its locks")

    def tenant_is_free() -> bool:
        with psycopg.connect(url) as other:
            try:
                other.execute("SELECT id FROM tenants WHERE id = %s FOR UPDATE NOWAIT", (t.tenant_id,))
                return True
            except psycopg.errors.LockNotAvailable:
                return False

    async def scenario():
        aio = AsyncPgBatchIO(url)
        loop = asyncio.get_running_loop()
        try:
            with pytest.raises(RuntimeError):
                await aio.run(failing_plan())
            assert len(aio._idle) == 1
            assert aio._idle[0][0].info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            # Batch connections run the prepared statements' generic plans (see AsyncPgBatchIO._connect).
            assert (await (await aio._idle[0][0].execute("SHOW plan_cache_mode")).fetchone())[0] == "force_generic_plan"
            # ... and no JIT (see teller.db.engine.PG_OPTIONS), nor on the SQLAlchemy engine's connections.
            assert (await (await aio._idle[0][0].execute("SHOW jit")).fetchone())[0] == "off"
            with teller.app.db.read() as s:
                assert s.execute(text("SHOW jit")).scalar_one() == "off"
            assert await loop.run_in_executor(None, tenant_is_free)

            # Cancelled while waiting for a lock another transaction holds.
            holder = await psycopg.AsyncConnection.connect(url)
            await holder.execute("SELECT id FROM tenants WHERE id = %s FOR UPDATE", (t.tenant_id,))
            task = asyncio.ensure_future(aio.run(teller.app.payments.planner.plan([_call(teller, t, chall)])))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await holder.rollback()
            await holder.close()
            assert all(c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE for c, _ in aio._idle)
            assert await loop.run_in_executor(None, tenant_is_free)
            return await teller.app.payments.commit_async([_call(teller, t, chall)], aio,
                                                          lambda fn, c: loop.run_in_executor(None, fn, c))
        finally:
            await aio.close()

    (signed,) = asyncio.run(scenario())
    assert isinstance(signed, SignResult)
    _chain_ok(teller, t.tenant_id)


def test_batch_rows_as_json_keep_integers_of_any_size():
    """orjson stops at 64-bit integers. Amounts are capped at int64 before they
    reach a batch, but a row with a larger integer must still be encoded exactly."""
    import json

    from teller.jsontext import compact

    rows = [{"amount": 10**30, "id": "p1", "note": "naïve \u2603", "n": None}, {"amount": 5, "id": "p2"}]
    assert json.loads(compact(rows)) == rows
    assert json.loads(compact(rows[1:])) == rows[1:]


@pytest.mark.postgres
def test_the_largest_amount_is_signed_and_recorded_exactly(pg_teller):
    """The largest amount Teller accounts (2**63 - 1 atomic units) through the
    server's own batch path, in one batch with another tenant's small one."""
    from teller.sign.drivers.pg import AsyncPgBatchIO, conninfo

    teller = pg_teller
    big, small = teller.setup_tenant(), teller.setup_tenant()
    url = conninfo(teller.app.db.engine.url.render_as_string(hide_password=False))

    async def commit(calls):
        aio = AsyncPgBatchIO(url)
        loop = asyncio.get_running_loop()
        try:
            return await teller.app.payments.commit_async(calls, aio, lambda fn, c: loop.run_in_executor(None, fn, c))
        finally:
            await aio.close()

    outcomes = asyncio.run(commit([_call(teller, big, sdk_v2_challenge(amount=str(2**63 - 1))),
                                   _call(teller, small, sdk_v2_challenge(amount="7"))]))
    assert [o.amount for o in outcomes] == [2**63 - 1, 7]
    assert [int(p.amount) for p in _rows(teller, Payment, tenant_id=big.tenant_id)] == [2**63 - 1]
    assert [int(p.amount) for p in _rows(teller, Payment, tenant_id=small.tenant_id)] == [7]
    _chain_ok(teller, big.tenant_id)


@pytest.mark.postgres
@pytest.mark.parametrize("driver", ["session", "async"])
def test_a_minutes_spend_past_64_bits_is_refused_by_name(pg_teller, driver):
    """A minute's spend bucket holds a 64-bit sum: a payment that would take it
    past that is FAILED_PRECONDITION (amount_out_of_range), not INTERNAL, and the
    payment before it stays signed and counted exactly."""
    from teller.errors import FailedPrecondition

    teller = pg_teller
    t = teller.setup_tenant()
    first, second = _commit(teller, [_call(teller, t, sdk_v2_challenge(amount=str(2**63 - 1))),
                                     _call(teller, t, sdk_v2_challenge(amount="7"))], driver)
    assert isinstance(first, SignResult) and first.amount == 2**63 - 1
    assert isinstance(second, FailedPrecondition) and second.reason == "amount_out_of_range"
    assert [int(p.amount) for p in _rows(teller, Payment, tenant_id=t.tenant_id)] == [2**63 - 1]
    assert [int(b.reserved) + int(b.spent) for b in _rows(teller, SpendBucket, scope_id=t.tenant_id)] == [2**63 - 1]
    _chain_ok(teller, t.tenant_id)
