"""Teller's Sign throughput and latency, beside the in-process signing limit.

    ./run bench            (or: .venv/bin/python bench/run.py [--quick])

Starts PostgreSQL-backed `teller serve` workers (1 and 2 processes), drives
Sign from 1, 8, 32 and 128 concurrent gRPC callers with real x402 v2
challenges (built by the x402 SDK's middleware) and real MPP Tempo challenges
(built by pympp's server), for one hot tenant and for many tenants, and signs
the same payments in-process with the official SDKs and eth-account for the
ratio. Writes bench/results/results.json, results.md and throughput.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testbed import pg  # noqa: E402
from testbed.procs import Cluster, start_cluster  # noqa: E402
from testbed.tempo import PATH_USD, tempo_chain  # noqa: E402
from testbed.x402_server import sdk_v2_challenge  # noqa: E402

RESULTS = ROOT / "bench" / "results"
RECIPIENT = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
BIG = str(10**15)


def mpp_challenges(n: int) -> list[list[tuple[str, str]]]:
    """n distinct 402s exactly as pympp's server builds them."""
    from mpp.methods.tempo import server as tempo
    from mpp.server import Mpp, PaymentRequired, Request

    methods = tempo.charge(recipient=RECIPIENT, chain_id=31337, rpc_url="http://127.0.0.1:9", currencies=[PATH_USD])
    mpp = Mpp(methods=methods, realm="bench.local", secret_key="bench-secret")
    handler = mpp.charge(amount="0.01")

    async def make() -> list[list[tuple[str, str]]]:
        out = []
        for i in range(n):
            result = await handler(Request("GET", f"https://bench.local/item/{i}", headers={}))
            assert isinstance(result, PaymentRequired)
            out.append(list(result.challenge.headers.items()))
        return out

    return asyncio.run(make())


def setup_tenants(target: str, admin_token: str, count: int,
                  fund: Callable[[str], None] | None = None) -> list[tuple[str, str]]:
    """``fund``: gives a wallet tokens first. Tempo Sign estimates its gas from
    the chain, and a wallet that cannot cover amount + fee is refused."""
    from teller_client import AdminClient, Budget, Policy

    out = []
    with AdminClient(target, admin_token) as admin:
        for i in range(count):
            tenant = admin.create_tenant(f"bench-{i}-{time.time_ns()}")
            _, token = admin.issue_token(tenant.id)
            wallet = admin.create_wallet(tenant.id)
            if fund is not None:
                fund(wallet.address)
            # Limits stay on (the check is what is being measured), set high enough not to bind.
            admin.set_policy(tenant.id, Policy(allow_unknown_assets=True, budgets=(
                Budget(10**15, "day", name="day"), Budget(10**15, "1h", kind="rolling", name="hour"))))
            out.append((token, wallet.id))
    return out


def driver_for(choice: str, protocol: str) -> str:
    """The load generator for a protocol's points. h2load (the cheapest client)
    repeats one request per process: fine for x402, whose every proof is new (a
    random nonce), but an MPP Tempo transaction signed again within its second is
    the same transaction, and Teller answers the repeats with the payment it
    already made. MPP points take bench/h2node.js, which sends every call the
    next challenge of the list (and costs ~3x h2load's CPU, which Teller then lacks)."""
    if choice != "auto":
        return choice
    return "h2load" if protocol == "x402" else "node"


def drive(cluster: Cluster, callers: int, jobs: list[dict], seconds: float, warmup: float, driver: str) -> dict:
    from cpu import CpuSplit

    cpu = CpuSplit(w.proc.pid for w in cluster.workers)
    result = _drive(cluster, callers, jobs, seconds, warmup, driver)
    return {**result, "cpu_cores": cpu.stop()}


def drive_repeated(cluster: Cluster, callers: int, jobs: list[dict], seconds: float, warmup: float, driver: str,
                   repeats: int) -> dict:
    """``repeats`` runs of one point, summed up by ``median_run``."""
    runs = [drive(cluster, callers, jobs, seconds, warmup, driver) for _ in range(max(1, repeats))]
    return runs[0] if len(runs) == 1 else median_run(runs)


def median_run(runs: list[dict]) -> dict:
    """The median run by p99 (its figures, not a mix of runs), every run's
    throughput and p99 beside it, and the errors of all."""
    median = sorted(runs, key=lambda r: r["p99_ms"])[len(runs) // 2]
    errors: dict[str, int] = {}
    for r in runs:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    return {**median, "errors": errors,
            "runs": [{"throughput": r["throughput"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"]} for r in runs]}


def _drive(cluster: Cluster, callers: int, jobs: list[dict], seconds: float, warmup: float, driver: str) -> dict:
    targets = [w.target for w in cluster.workers]
    if driver == "h2load":
        import h2load
        from driver import sign_request

        h2_jobs = [h2load.Job(j["token"], sign_request(j).SerializeToString()) for j in jobs]
        return h2load.drive(targets, [w.metrics for w in cluster.workers], callers, h2_jobs, seconds, warmup)
    if driver == "node":
        return drive_node(targets, callers, jobs, seconds, warmup)
    spec = {"targets": targets, "callers": callers, "seconds": seconds, "warmup": warmup, "jobs": jobs}
    out = run_driver([sys.executable, str(ROOT / "bench" / "driver.py")], spec,
                     env={**os.environ, "PYTHONPATH": str(ROOT / "clients" / "python")})
    return {**out, "driver": "grpc-python"}


def run_driver(command: list[str], spec: dict, env: dict[str, str] | None = None) -> dict:
    """A load generator process: ``spec`` in a JSON file (its last argument), its
    results as JSON on stdout."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        out = subprocess.run([*command, f.name], capture_output=True, text=True, check=True, env=env)
    finally:
        os.unlink(f.name)
    return json.loads(out.stdout)


def drive_node(targets: list[str], callers: int, jobs: list[dict], seconds: float, warmup: float) -> dict:
    """``bench/h2node.js``: every call takes the next job's request (h2load repeats one)."""
    import base64

    from driver import sign_request

    spec = {"targets": targets, "callers": callers, "seconds": seconds, "warmup": warmup,
            "jobs": [{"token": j["token"], "request": base64.b64encode(sign_request(j).SerializeToString()).decode()}
                     for j in jobs]}
    return run_driver(["node", "--expose-gc", str(ROOT / "bench" / "h2node.js")], spec)


def grpc_floor(x402, callers: int, seconds: float, warmup: float, repeats: int) -> dict:  # type: ignore[no-untyped-def]
    """The same load against ``bench/floor.py``: a worker's gRPC server alone
    (same event loop, acceptors and options) answering Sign with a fixed
    response. What Teller does on top of it is the gap."""
    import h2load
    from cpu import CpuSplit
    from driver import sign_request

    from testbed.procs import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "floor.py"), str(port)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", "bench/floor.py did not start"
        job = h2load.Job("floor", sign_request({"wallet_id": "floor", "headers": x402.headers,
                                                "body": x402.body.decode("latin-1"), "url": x402.url}
                                               ).SerializeToString())
        runs = []
        for _ in range(max(1, repeats)):
            cpu = CpuSplit([proc.pid])
            r = h2load.drive([f"127.0.0.1:{port}"], None, callers, [job], seconds, warmup)
            runs.append({**r, "cpu_cores": cpu.stop()})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {**median_run(runs), "callers": callers}


def in_process_limit_fresh(seconds: float) -> dict[str, float]:
    """``in_process_limit`` in a new interpreter: this one has grown a large heap
    over the run, and its collector made in-process MPP signing look ~45% slower."""
    code = f"import json, run; print(json.dumps(run.in_process_limit({seconds!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT / "bench")
    return json.loads(out.stdout.strip().splitlines()[-1])


def in_process_limit(seconds: float) -> dict[str, float]:
    """Signatures per second with the official SDKs in this process, no Teller."""
    from eth_account import Account
    from mpp import Challenge, Credential
    from pytempo import TempoTransaction
    from pytempo.contracts import TIP20
    from x402 import x402ClientSync
    from x402.http.utils import decode_payment_required_header, encode_payment_signature_header
    from x402.mechanisms.evm import EthAccountSigner
    from x402.mechanisms.evm.exact import register_exact_evm_client

    account = Account.create()
    client = x402ClientSync()
    register_exact_evm_client(client, EthAccountSigner(account))
    c = sdk_v2_challenge(amount="1000")
    required = decode_payment_required_header(dict(c.headers)["payment-required"])
    rates = {}
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        encode_payment_signature_header(client.create_payment_payload(required))
        n += 1
    rates["x402"] = n / (time.perf_counter() - t0)

    challenge = Challenge.from_www_authenticate({k.lower(): v for k, v in mpp_challenges(1)[0]}["www-authenticate"])
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tx = TempoTransaction.create(chain_id=31337, gas_limit=250_000, max_fee_per_gas=10**10,
                                     max_priority_fee_per_gas=10**10, nonce_key=2**256 - 1, nonce=0,
                                     valid_before=int(time.time()) + 25, fee_token=PATH_USD,
                                     calls=(TIP20(PATH_USD).transfer_with_memo(to=RECIPIENT, amount=10_000,
                                                                               memo=b"\x01" * 32),))
        raw = tx.sign(account.key.hex()).encode()
        Credential(challenge=challenge.to_echo(), payload={"type": "transaction", "signature": "0x" + raw.hex()},
                   source=f"did:pkh:eip155:31337:{account.address}").to_authorization()
        n += 1
    rates["mpp"] = n / (time.perf_counter() - t0)
    return rates


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer points, shorter runs (a smoke test)")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--driver", choices=("auto", "node", "h2load", "grpc-python"), default="auto",
                        help="load generator: auto (default: h2load for x402, bench/h2node.js for MPP), h2load (C; "
                             "each process repeats one request), node (bench/h2node.js, Node's HTTP/2 client: every "
                             "call the next request) or grpc-python (bench/driver.py, grpc.aio)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results.{json,md} and the plot go")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each 32-caller point, the latency target's (this shared VM varies by up to "
                             "30%% from one run to the next): the table shows the median run by p99 and the range")
    args = parser.parse_args()
    if args.driver in ("auto", "h2load"):
        import h2load

        if not h2load.available():
            parser.error("h2load is not installed (Debian: nghttp2-client; ./run bench installs it)")
    if args.driver in ("auto", "node") and shutil.which("node") is None:
        parser.error("node is not installed (bench/h2node.js needs Node.js 18 or later)")
    callers_list = [1, 8, 32] if args.quick else [1, 8, 32, 128]
    workers_list = [1] if args.quick else [1, 2]
    seconds, warmup = (2.0, 1.0) if args.quick else (args.seconds, 2.0)

    # The in-process limit is measured before the load (nothing else running) and
    # again after it; the ratio is taken to the higher of the two. (Measured only
    # at the end, it once ran while PostgreSQL was still writing out the history
    # phase, and came out 25% low.)
    limit_seconds = 2.0 if args.quick else 5.0
    limit_before = in_process_limit_fresh(limit_seconds)
    print(f"in-process limit before the load: {limit_before}", flush=True)
    x402 = sdk_v2_challenge(amount="1000")
    floor = grpc_floor(x402, 32, seconds, warmup, 1 if args.quick else args.repeats)
    print(f"gRPC floor, 32 callers: {floor['throughput']:.0f}/s p50 {floor['p50_ms']:.1f} p99 {floor['p99_ms']:.1f} ms",
          flush=True)
    rows: list[dict] = []
    history_rows: list[dict] = []
    with bench_server() as server, tempo_chain() as chain, tempfile.TemporaryDirectory() as tmp:
        durability = server_settings(server)
        print(f"PostgreSQL: {durability}", flush=True)
        for workers in workers_list:
            settle(server)
            with pg.fresh_database(server) as url:
                cluster = start_cluster(url, workers, Path(tmp), metrics=True, TELLER_RPC_URLS=f"{chain.network}={chain.rpc_url}",
                                        TELLER_DB_POOL_SIZE="16", TELLER_RECONCILE_INTERVAL_SECONDS="0")
                try:
                    targets = [w.target for w in cluster.workers]
                    for protocol in ("x402", "mpp"):
                        for shape in ("hot tenant", "many tenants"):
                            # Fresh tenants per phase: each starts with an empty payment history.
                            tenants = setup_tenants(targets[0], cluster.admin_token, 64,
                                                    fund=None if protocol == "x402" else
                                                    lambda address: chain.fund(address, 10**9))
                            chosen = tenants[:1] if shape == "hot tenant" else tenants
                            if protocol == "x402":
                                jobs = [{"token": tok, "wallet_id": wid, "headers": x402.headers,
                                         "body": x402.body.decode("latin-1"), "url": x402.url}
                                        for tok, wid in chosen]
                            else:
                                # Fresh challenges per phase: pympp's expire after five minutes.
                                # Distinct enough that none is paid twice within a second.
                                mpp = mpp_challenges(10_000 if not args.quick else 2_000)
                                jobs = [{"token": chosen[i % len(chosen)][0], "wallet_id": chosen[i % len(chosen)][1],
                                         "headers": h, "body": "", "url": "https://bench.local/item"}
                                        for i, h in enumerate(mpp)]
                            for callers in callers_list:
                                repeats = args.repeats if callers == 32 and not args.quick else 1
                                r = drive_repeated(cluster, callers, jobs, seconds, warmup,
                                                   driver_for(args.driver, protocol), repeats)
                                r.update(workers=workers, protocol=protocol, shape=shape, callers=callers)
                                rows.append(r)
                                print(f"{workers}w {protocol:4} {shape:12} {callers:3} callers: "
                                      f"{r['throughput']:7.0f}/s p50 {r['p50_ms']:6.1f} p95 {r['p95_ms']:6.1f} "
                                      f"p99 {r['p99_ms']:6.1f} ms errors {r['errors']} cpu {r['cpu_cores']}",
                                      flush=True)
                    if workers == workers_list[-1] and not args.quick:
                        # Last: its bulk inserts leave the server busy writing for a while.
                        history_rows.extend(history_cost(url, cluster, x402, seconds, warmup,
                                                         driver_for(args.driver, "x402")))
                finally:
                    cluster.stop()
    limit_after = in_process_limit_fresh(limit_seconds)
    limit = {k: max(limit_before[k], limit_after[k]) for k in limit_before}
    for r in rows:
        r["in_process_per_s"] = limit[r["protocol"]]
        r["ratio"] = r["throughput"] / limit[r["protocol"]]
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
               "processor": platform.processor() or platform.machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine, "postgresql": durability, "driver": args.driver, "in_process_per_s": limit,
           "in_process_runs": {"before": limit_before, "after": limit_after}, "grpc_floor": floor, "rows": rows,
           "history": history_rows, "quick": args.quick, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (args.out / "results.json").write_text(json.dumps(doc, indent=2))
    (args.out / "results.md").write_text(markdown(doc))
    plot(doc, args.out / "throughput.png")
    print(markdown(doc))
    return 0


@contextlib.contextmanager
def bench_server() -> Iterator[str]:
    """The PostgreSQL the benchmark runs on: ``TELLER_BENCH_DATABASE_URL`` when
    given, else a cluster of its own with production durability (fsync and
    synchronous commit on). Not the test suite's server: test clusters skip
    fsync, and a Sign is only done when its reservation is on disk."""
    given = os.environ.get("TELLER_BENCH_DATABASE_URL")
    if given:
        yield given
        return
    with pg.local_cluster(durable=True) as cluster:
        warm_wal(cluster.url)
        yield cluster.url


def warm_wal(server: str, segments: int = 64) -> None:
    """Give a new cluster the pool of used WAL segments a running server has.

    A fresh cluster creates each 16 MB WAL segment at first use and fills it with
    zeroes while every commit waits: at the benchmark's write rate (~6 MB/s) that
    stalled all in-flight calls for ~50 ms every two or three seconds, and those
    stalls were most of the 32-caller p99. A server that has been running renames
    old segments for reuse at each checkpoint instead. So: keep up to 1 GB of them
    (``min_wal_size``), write ``segments`` of them once here, and checkpoint, so
    the run reuses them. Durability settings stay as they are."""
    import psycopg

    with psycopg.connect(server.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET min_wal_size = '1GB'")
        conn.execute("ALTER SYSTEM SET max_wal_size = '2GB'")
        conn.execute("SELECT pg_reload_conf()")
        conn.execute("CREATE TABLE bench_wal_warmup (n int)")
        for i in range(segments):
            conn.execute("INSERT INTO bench_wal_warmup VALUES (%s)", (i,))
            conn.execute("SELECT pg_switch_wal()")
        conn.execute("DROP TABLE bench_wal_warmup")
        conn.execute("CHECKPOINT")
        kept = conn.execute("SELECT count(*) FROM pg_ls_waldir()").fetchone()
    print(f"PostgreSQL WAL: {kept[0] if kept else '?'} segments ready for reuse", flush=True)


def server_settings(server: str) -> dict[str, str]:
    """The settings that decide what a commit costs, for the report."""
    from sqlalchemy import create_engine, text

    engine = create_engine(server.replace("postgresql://", "postgresql+psycopg://", 1)
                           if server.startswith("postgresql://") else server)
    try:
        with engine.connect() as conn:
            out = {name: conn.execute(text(f"SHOW {name}")).scalar_one()
                   for name in ("server_version", "fsync", "synchronous_commit", "wal_sync_method")}
    finally:
        engine.dispose()
    if out["fsync"] != "on" or out["synchronous_commit"] != "on":
        print(f"warning: the benchmark server is not durable ({out}); its figures overstate a production setup",
              flush=True)
    return out


def settle(server: str) -> None:
    """Flush what earlier phases left dirty, so one phase's writes do not slow the next."""
    from sqlalchemy import create_engine, text

    engine = create_engine(server.replace("postgresql://", "postgresql+psycopg://", 1)
                           if server.startswith("postgresql://") else server, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("CHECKPOINT"))
    except Exception as exc:  # noqa: BLE001 - needs superuser; the run goes on without it
        print(f"(no CHECKPOINT between phases: {type(exc).__name__})", flush=True)
    finally:
        engine.dispose()


def history_cost(url: str, cluster: Cluster, x402, seconds: float, warmup: float,  # type: ignore[no-untyped-def]
                 driver: str) -> list[dict]:
    """What a tenant's payment history in its budget windows costs each Sign:
    window sums are computed from the payments themselves."""
    from sqlalchemy import create_engine, text

    out = []
    for history in (0, 20_000, 100_000):
        (tenant,) = setup_tenants(cluster.workers[0].target, cluster.admin_token, 1)
        token, wallet_id = tenant
        if history:
            engine = create_engine(url)
            now = int(time.time() * 1000)
            with engine.begin() as conn:
                tenant_id = conn.execute(text("SELECT tenant_id FROM wallets WHERE id = :w"),
                                         {"w": wallet_id}).scalar_one()
                conn.execute(text(
                    "INSERT INTO payments (id, tenant_id, wallet_id, protocol, version, scheme, network, asset, "
                    "pay_to, amount, amount_common, resource_url, nonce, valid_before, state, header_name, "
                    "header_value, request_hash, created_ms, updated_ms, state_reason, tx_hash, asset_name, "
                    "asset_version) SELECT md5(random()::text || g::text), :t, :w, 'x402', 2, 'exact', 'eip155:1', "
                    "'0x0', '0x0', 1, 1, '', '0x' || md5(g::text) || md5(g::text), 0, 'settled', 'h', 'v', 'r', "
                    ":now - (g % 3000000), :now, '', '', '', '' FROM generate_series(1, :n) g"),
                    {"t": tenant_id, "w": wallet_id, "now": now, "n": history})
                # A database that grew to this size has been analysed by autovacuum;
                # measure that, not plans made while the table was empty.
                conn.execute(text("ANALYZE payments"))
            engine.dispose()
        jobs = [{"token": token, "wallet_id": wallet_id, "headers": x402.headers,
                 "body": x402.body.decode("latin-1"), "url": x402.url}]
        r = drive(cluster, 8, jobs, seconds, warmup, driver)
        r.update(history=history)
        out.append(r)
        print(f"history {history:6}: {r['throughput']:7.0f}/s p50 {r['p50_ms']:6.1f} p99 {r['p99_ms']:6.1f} ms",
              flush=True)
    return out


_DRIVERS = {
    "auto": "h2load for x402 (each h2load process repeats one request: every x402 proof is new anyway, with its "
            "random nonce), bench/h2node.js for MPP (every call the next of 10,000 challenges: a Tempo challenge "
            "paid again within its second is the same payment, which Teller returns instead of signing anew)",
    "h2load": "h2load (each process repeats one request)",
    "node": "bench/h2node.js (Node's HTTP/2 client; every call the next request)",
    "grpc-python": "bench/driver.py (grpc.aio)",
}


def markdown(doc: dict) -> str:
    m = doc["machine"]
    db = doc.get("postgresql", {})
    measured = ""
    if "in_process_runs" in doc:
        before, after = doc["in_process_runs"]["before"], doc["in_process_runs"]["after"]
        measured = (f" (before: {before['x402']:.0f} / {before['mpp']:.0f}, "
                    f"after: {after['x402']:.0f} / {after['mpp']:.0f})")
    lines = [f"Teller Sign benchmark, {doc['when']}: {m['cpus']} CPUs, {m['processor']}, Python {m['python']}, "
             f"PostgreSQL {db.get('server_version', '?')} on the same machine (fsync {db.get('fsync', '?')}, "
             f"synchronous_commit {db.get('synchronous_commit', '?')}), audit log and limits on. "
             f"Load generator{'s' if doc.get('driver') == 'auto' else ''}, on the same machine: "
             f"{_DRIVERS.get(doc.get('driver', 'grpc-python'), doc.get('driver'))}.", "",
             "In-process signing limit (official SDKs + eth-account, one process; the higher of a measurement "
             "before and one after the load): " + ", ".join(
                 f"{k} {v:.0f}/s" for k, v in doc["in_process_per_s"].items()) + measured, "",
             *_floor_lines(doc),
             "CPU is in cores (2.0 = both busy) for the whole phase, warm-up included: Teller's workers / "
             "PostgreSQL / the load generator.", "",
             "Points run more than once show the median run by p99; 'runs' gives every run's Sign/s and p99.", "",
             "| workers | protocol | tenants | callers | Sign/s | p50 ms | p95 ms | p99 ms | vs in-process | errors "
             "| CPU: Teller / PG / load | runs: Sign/s, p99 ms |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in doc["rows"]:
        c = r.get("cpu_cores") or {}
        split = f"{c['teller']:.2f} / {c['postgres']:.2f} / {c['load_generator']:.2f}" if c else "-"
        runs = "; ".join(f"{x['throughput']:.0f}, {x['p99_ms']:.1f}" for x in r.get("runs", ())) or "-"
        lines.append(f"| {r['workers']} | {r['protocol']} | {r['shape']} | {r['callers']} | {r['throughput']:.0f} | "
                     f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['ratio']:.0%} | "
                     f"{sum(r['errors'].values())} | {split} | {runs} |")
    if doc.get("history"):
        lines += ["", "Cost of payment history inside the budget windows (2 workers, x402, one tenant, 8 callers):", "",
                  "| payments already in the window | Sign/s | p50 ms | p99 ms |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['history']:,} | {r['throughput']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
                  for r in doc["history"]]
    return "\n".join(lines) + "\n"


def _floor_lines(doc: dict) -> list[str]:
    f = doc.get("grpc_floor")
    if not f:
        return []
    runs = "; ".join(f"{x['throughput']:.0f}, {x['p99_ms']:.1f}" for x in f.get("runs", ()))
    cpu = (f.get("cpu_cores") or {}).get("teller")
    return [f"gRPC floor (bench/floor.py: one worker's grpc.aio server, same loop, acceptors and load, answering "
            f"Sign with a fixed response; no Teller work): {f['callers']} callers {f['throughput']:.0f}/s, "
            f"p50 {f['p50_ms']:.1f} / p99 {f['p99_ms']:.1f} ms"
            + (f", {cpu:.2f} cores" if cpu is not None else "") + (f" (runs: {runs})" if runs else ""), ""]


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, protocol in zip(axes, ("x402", "mpp"), strict=True):
        for workers in sorted({r["workers"] for r in doc["rows"]}):
            for shape, style in (("hot tenant", "-o"), ("many tenants", "--s")):
                pts = [r for r in doc["rows"] if r["protocol"] == protocol and r["workers"] == workers
                       and r["shape"] == shape]
                ax.plot([r["callers"] for r in pts], [r["throughput"] for r in pts], style,
                        label=f"{workers} worker(s), {shape}")
        ax.axhline(doc["in_process_per_s"][protocol], color="grey", linestyle=":", label="in-process SDK limit")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent callers")
        ax.set_ylabel("Sign calls / s")
        ax.set_title(f"{protocol}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Teller Sign throughput ({doc['machine']['cpus']} CPUs, PostgreSQL, audit on)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
