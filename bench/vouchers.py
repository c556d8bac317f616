"""MPP session vouchers per second through ``Channels.sign_voucher`` (issue 22),
beside signing the same vouchers in process.

    .venv/bin/python bench/vouchers.py [--seconds 4]      (or: ./run bench vouchers)

On PostgreSQL (a fresh database on the benchmark's durable server, as
bench/run.py) and on SQLite (a file, WAL, Teller's own settings), callers
being threads of this process unless said otherwise:

1. the in-process floor: ``WalletSigner.sign_typed_data(voucher_typed_data(...))``
   for totals 1, 2, 3, ... in one thread, no database;
2. one channel with 1, 8 and 32 caller threads, each voucher an increment of 1;
3. 32 channels of 32 tenants, one caller thread each;
4. 32 channels of one tenant, one caller thread each (every voucher's audit
   event locks its tenant's audit chain head);
5. the 32-caller cases again with the threads spread over two processes, a
   Teller each: one process's threads share its GIL;
6. through ``Sign`` over gRPC (PostgreSQL): a worker serving session
   challenges, its callers threads of another process using the Python
   client, one channel with 1 and 32 callers and 32 channels with one each.
   Vouchers asked of one channel meanwhile are signed together
   (``teller.rpc.batcher.ChannelBatchers``); direct ``sign_voucher`` calls
   (1-5) are not.

Every rate is also given as a ratio to (1). Writes bench/results/vouchers.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path

from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from run import bench_server, server_settings, settle  # noqa: E402

from teller.app import App, build  # noqa: E402
from teller.config import Settings  # noqa: E402
from teller.db.models import AuditEvent  # noqa: E402
from teller.errors import TellerError  # noqa: E402
from teller.mpp.channel import voucher_typed_data  # noqa: E402
from teller.vault.signer import WalletSigner, address_of  # noqa: E402
from testbed import pg  # noqa: E402
from testbed.channels import CHAIN_ID, ESCROW, open_channel  # noqa: E402
from testbed.settings import make_settings  # noqa: E402

RESULTS = ROOT / "bench" / "results"
#: Far more than any run signs: no case ends because a deposit ran out.
DEPOSIT = 2**62
#: (case, caller threads, channels, the channels share one tenant, processes the threads are spread over)
CASES = [("one channel", 1, 1, False, 1), ("one channel", 8, 1, False, 1), ("one channel", 32, 1, False, 1),
         ("32 channels, 32 tenants", 32, 32, False, 1), ("32 channels, one tenant", 32, 32, True, 1),
         ("one channel", 32, 1, False, 2), ("32 channels, 32 tenants", 32, 32, False, 2),
         ("32 channels, one tenant", 32, 32, True, 2)]


def in_process(seconds: float) -> float:
    """Vouchers per second signed by the vault's signer alone, totals 1, 2, 3, ...:
    what ``sign_voucher`` does besides the database."""
    key = secrets.token_bytes(32)
    # Made directly, not through a Vault: the key cache hands sign_voucher this same object.
    signer = WalletSigner(key, address_of(key))
    channel_id = secrets.token_bytes(32)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += 1
        signer.sign_typed_data(voucher_typed_data(channel_id, n, escrow=ESCROW, chain_id=CHAIN_ID))
    return n / (time.perf_counter() - t0)


def call_loop(app: App, targets: list[tuple[str, str]], begin: float, end: float) -> dict:
    """One closed-loop caller thread per (tenant, channel) in ``targets``, each
    signing vouchers of increment 1 back to back until ``end`` (``time.monotonic``,
    one clock for every process on the machine). Calls that end after ``begin``
    count, so a slow call in flight at the window's edges is not lost."""
    lock = threading.Lock()
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    signed: Counter[str] = Counter()  # every voucher per channel, warm-up included: the check in drive

    def caller(tenant_id: str, handle: str) -> None:
        mine: list[float] = []
        failed: Counter[str] = Counter()
        n = 0
        while (t0 := time.monotonic()) < end:
            try:
                app.channels.sign_voucher(tenant_id, handle, 1, actor="bench")
            except TellerError as exc:
                failed[type(exc).__name__] += 1
                continue
            t1 = time.monotonic()
            n += 1
            if begin <= t1 <= end:
                mine.append(t1 - t0)
        with lock:
            latencies.extend(mine)
            errors.update(failed)
            signed[handle] += n

    threads = [threading.Thread(target=caller, args=target) for target in targets]
    cpu = time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies": latencies, "errors": errors, "signed": signed, "cpu": time.process_time() - cpu}


def worker(settings: Settings, conn: Connection) -> None:
    """A caller process with its own Teller on the same database, as another
    server worker would be: runs ``call_loop`` for each job it is sent."""
    app = build(settings, migrate=False)
    conn.send("ready")
    while (job := conn.recv()) is not None:
        conn.send(call_loop(app, *job))
    app.close()


@contextlib.contextmanager
def caller_processes(settings: Settings, n: int) -> Iterator[list[Connection]]:
    """``n`` worker processes, started once per database: each takes seconds to
    import Teller, and must not do so while a case is measured."""
    spawn = multiprocessing.get_context("spawn")
    pipes = [spawn.Pipe() for _ in range(n)]
    procs = [spawn.Process(target=worker, args=(settings, theirs)) for _, theirs in pipes]
    for proc in procs:
        proc.start()
    try:
        for mine, _ in pipes:
            assert mine.recv() == "ready"
        yield [mine for mine, _ in pipes]
    finally:
        for mine, _ in pipes:
            mine.send(None)
        for proc in procs:
            proc.join(30)


def drive(app: App, workers: list[Connection], targets: list[tuple[str, str]], processes: int, seconds: float,
          warmup: float) -> dict:
    """``targets``' callers in this process (threads), or spread over
    ``processes`` of ``workers``: threads of one process share its GIL, and a
    voucher costs Teller's Python far more CPU than its signature."""
    start = time.monotonic()
    window = (start + warmup, start + warmup + seconds)
    if processes == 1:
        results = [call_loop(app, targets, *window)]
    else:
        for i, conn in enumerate(workers[:processes]):
            conn.send((targets[i::processes], *window))
        results = [conn.recv() for conn in workers[:processes]]
    latencies = sorted(x for r in results for x in r["latencies"])
    signed: Counter[str] = sum((r["signed"] for r in results), Counter())
    errors: Counter[str] = sum((r["errors"] for r in results), Counter())
    # Every voucher signed raised its channel's total by exactly 1: none lost, none twice.
    tenants = {h: t for t, h in targets}
    for handle, n in signed.items():
        total = app.channels.get(tenants[handle], handle).cumulative
        assert total == n, f"channel {handle}: total {total}, {n} vouchers signed"
    return {"vouchers_per_s": len(latencies) / seconds, "calls": len(latencies),
            "p50_ms": 1000 * latencies[len(latencies) // 2], "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
            "cores": sum(r["cpu"] for r in results) / (time.monotonic() - start), "errors": dict(errors)}


def channels_for(app: App, callers: int, channels: int, one_tenant: bool) -> list[tuple[str, str]]:
    """(tenant, channel) per caller thread; new channels per case, so each starts with no vouchers."""
    tenant = app.admin.create_tenant(f"bench-{secrets.token_hex(3)}").id if one_tenant else None
    opened = [open_channel(app, DEPOSIT, tenant) for _ in range(channels)]
    return [(opened[i % channels].tenant_id, opened[i % channels].handle) for i in range(callers)]


@contextlib.contextmanager
def teller(url: str, tmp: Path) -> Iterator[tuple[App, Settings]]:
    # A connection for every caller thread (32, twice that with overflow): the
    # pool is not what is measured. SQLite's pool is SQLAlchemy's own.
    tmp.mkdir()
    settings = make_settings(url, tmp, db_pool_size=32)
    app = build(settings, migrate=True)
    try:
        yield app, settings
    finally:
        app.close()


def run_cases(name: str, app: App, settings: Settings, seconds: float, warmup: float,
              between: Callable[[], None] | None = None) -> list[dict]:
    rows = []
    with caller_processes(settings, max(c[-1] for c in CASES)) as workers:
        for case, callers, channels, one_tenant, processes in CASES:
            targets = channels_for(app, callers, channels, one_tenant)
            if between is not None:
                between()
            r = {"database": name, "case": case, "callers": callers, "processes": processes,
                 **drive(app, workers, targets, processes, seconds, warmup)}
            rows.append(r)
            print(f"{name:10} {case:24} {callers:2} callers in {processes} process(es): "
                  f"{r['vouchers_per_s']:6.0f}/s p50 {r['p50_ms']:6.1f} p99 {r['p99_ms']:6.1f} ms, "
                  f"{r['cores']:.2f} cores, errors {r['errors']}", flush=True)
    return rows


#: (case, caller threads, channels) through Sign over gRPC.
SIGN_CASES = [("Sign, one channel", 1, 1), ("Sign, one channel", 32, 1), ("Sign, 32 channels, 32 tenants", 32, 32)]


def session_challenge(payee: str, token: str, unit: int = 1) -> str:
    """An MPP session challenge for a channel's payee and token on the test escrow."""
    import base64

    request = {"amount": str(unit), "currency": token, "recipient": payee, "unitType": "token",
               "methodDetails": {"escrowContract": ESCROW, "chainId": CHAIN_ID, "sessionProtocol": "v2"}}
    encoded = base64.urlsafe_b64encode(json.dumps(request).encode()).decode().rstrip("=")
    return f'Payment id="bench", realm="bench", method="tempo", intent="session", request="{encoded}"'


def sign_callers(target: str, jobs: list[tuple[str, str, str]], warmup: float, seconds: float,
                 conn: Connection) -> None:
    """A caller process: a thread per (token, wallet, challenge) in ``jobs``,
    each calling Sign back to back; the window opens ``warmup`` seconds after
    every thread's first call returned (the first call of a wallet unwraps its
    key) and lasts ``seconds``. Sends what ``call_loop`` returns."""
    from teller_client import TellerClient
    from teller_client import TellerError as ClientError

    lock = threading.Lock()
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    first = threading.Barrier(len(jobs) + 1)
    window: list[float] = []

    def caller(token: str, wallet_id: str, challenge: str) -> None:
        client = TellerClient(target, token)
        mine: list[float] = []

        def sign() -> None:
            client.sign(status=402, headers=[("WWW-Authenticate", challenge)], body=b"",
                        url="http://bench.test/stream", wallet_id=wallet_id)
        sign()
        first.wait()
        first.wait()  # the window is set
        begin, end = window
        while (t0 := time.monotonic()) < end:
            try:
                sign()
            except ClientError as exc:
                with lock:
                    errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
                time.sleep(0.01)
                continue
            t1 = time.monotonic()
            if begin <= t1 <= end:
                mine.append(t1 - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=caller, args=job) for job in jobs]
    for th in threads:
        th.start()
    first.wait()
    window.extend((time.monotonic() + warmup, time.monotonic() + warmup + seconds))
    cpu = time.process_time()
    first.wait()
    for th in threads:
        th.join()
    conn.send({"latencies": latencies, "errors": errors, "signed": Counter(), "cpu": time.process_time() - cpu})


def run_sign_cases(app: App, seconds: float, warmup: float, between: Callable[[], None]) -> list[dict]:
    """The Sign cases (6): a gRPC server on ``app``, callers in a process of their own."""
    from teller.rpc.server import BackgroundServer

    server = BackgroundServer(app, "127.0.0.1:0")
    rows = []
    try:
        for case, callers, channels in SIGN_CASES:
            jobs = []
            opened = [open_channel(app, DEPOSIT) for _ in range(channels)]
            tokens = {o.tenant_id: app.admin.issue_token(o.tenant_id, "bench")[1] for o in opened}
            for o in opened:
                app.admin.set_policy(o.tenant_id, {"allow_unknown_assets": True})
            for i in range(callers):
                o = opened[i % channels]
                view = app.channels.get(o.tenant_id, o.handle)
                jobs.append((tokens[o.tenant_id], o.wallet_id, session_challenge(view.payee, view.token)))
            between()
            mine, theirs = multiprocessing.get_context("spawn").Pipe()
            proc = multiprocessing.get_context("spawn").Process(
                target=sign_callers, args=(f"127.0.0.1:{server.port}", jobs, warmup, seconds, theirs))
            proc.start()
            result = mine.recv()
            proc.join(30)
            latencies = sorted(result["latencies"]) or [float("nan")]
            signed = sum(app.channels.get(o.tenant_id, o.handle).cumulative for o in opened)
            with app.db.read() as s:
                batches = s.scalar(select(func.count()).select_from(AuditEvent).where(
                    AuditEvent.action == "channel.voucher", AuditEvent.tenant_id.in_([o.tenant_id for o in opened])))
            r = {"database": "PostgreSQL", "case": case, "callers": callers, "processes": 1,
                 "vouchers_per_s": len(latencies) / seconds, "calls": len(latencies),
                 "p50_ms": 1000 * latencies[len(latencies) // 2],
                 "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)], "cores": result["cpu"] / seconds,
                 "errors": dict(result["errors"]), "vouchers_per_batch": signed / max(batches or 0, 1)}
            rows.append(r)
            print(f"PostgreSQL {case:30} {callers:2} callers: {r['vouchers_per_s']:6.0f}/s p50 {r['p50_ms']:6.1f} "
                  f"p99 {r['p99_ms']:6.1f} ms, {r['vouchers_per_batch']:.1f} vouchers per batch, "
                  f"errors {r['errors']}", flush=True)
    finally:
        server.stop()
    return rows


def git_revision() -> str:
    out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=ROOT, capture_output=True,
                         text=True, check=False).stdout.strip()
    return out or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per case (after a warm-up)")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where vouchers.{json,md} go")
    args = parser.parse_args()

    # Before and after the load, as bench/run.py: the ratio is to the higher.
    floor_before = in_process(args.seconds)
    print(f"in-process floor: {floor_before:.0f} vouchers/s", flush=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        with bench_server() as server:
            durability = server_settings(server)
            print(f"PostgreSQL: {durability}", flush=True)
            with pg.fresh_database(server) as url, teller(url, Path(tmp, "pg")) as (app, settings):
                # A CHECKPOINT before each case: one case's writes do not slow the next.
                rows = run_cases("PostgreSQL", app, settings, args.seconds, args.warmup, lambda: settle(server))
                rows += run_sign_cases(app, args.seconds, args.warmup, lambda: settle(server))
        lite = Path(tmp, "lite")
        with teller(f"sqlite:///{lite / 'teller.db'}", lite) as (app, settings):
            rows += run_cases("SQLite", app, settings, args.seconds, args.warmup)
    floor_after = in_process(args.seconds)
    floor = max(floor_before, floor_after)
    for r in rows:
        r["ratio"] = r["vouchers_per_s"] / floor
    doc = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                       "processor": platform.processor() or platform.machine(),
                       "load_average_before": load_before, "load_average_after": os.getloadavg()},
           "revision": git_revision(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "postgresql": durability, "sqlite": sqlite3.sqlite_version, "seconds": args.seconds,
           "warmup": args.warmup, "in_process_per_s": floor,
           "in_process_runs": {"before": floor_before, "after": floor_after}, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vouchers.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "vouchers.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


def markdown(doc: dict) -> str:
    m, db = doc["machine"], doc["postgresql"]
    lines = [f"Teller voucher signing benchmark (bench/vouchers.py), {doc['when']}, revision {doc['revision']}: "
             f"{m['cpus']} CPUs, {m['processor']}, Python {m['python']} (load average "
             f"{m['load_average_before'][0]:.1f} before, {m['load_average_after'][0]:.1f} after: a shared machine). "
             f"PostgreSQL {db.get('server_version', '?')} on the same machine (fsync {db.get('fsync', '?')}, "
             f"synchronous_commit {db.get('synchronous_commit', '?')}); SQLite {doc['sqlite']} (a file, WAL). "
             f"Callers are threads calling `Channels.sign_voucher` directly (no gRPC), in the benchmark's "
             f"process or spread over processes with a Teller each; {doc['seconds']:g} s measured per case after "
             f"{doc['warmup']:g} s of warm-up.", "",
             f"In-process floor (`WalletSigner.sign_typed_data(voucher_typed_data(...))`, one thread, no "
             f"database; the higher of a measurement before and one after): {doc['in_process_per_s']:.0f} vouchers/s "
             f"(before {doc['in_process_runs']['before']:.0f}, after {doc['in_process_runs']['after']:.0f}).", "",
             "CPU: the caller processes' (callers and Teller's code), in cores; PostgreSQL's is not in it.", "",
             "| database | case | caller threads | processes | vouchers/s | p50 ms | p99 ms | vs in-process | CPU "
             "| errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['database']} | {r['case']} | {r['callers']} | {r['processes']} | {r['vouchers_per_s']:.0f} | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['ratio']:.1%} | {r['cores']:.2f} | "
              f"{sum(r['errors'].values())} |" for r in doc["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
