"""Two builds of Teller side by side in one run: Sign/s and p99 of the same points
(default: MPP and x402, one worker, hot tenant, 32 callers) for an earlier commit
and for this tree, alternating, against one PostgreSQL server and one Tempo chain.

    .venv/bin/python bench/compare_builds.py --base 6da6e40 [--seconds 6] [--repeats 3]

The machines this runs on vary in speed by 2x over an afternoon; only a ratio
measured in one run, with the builds interleaved, says whether a change made
Teller slower. The base build's service code is taken with ``git archive`` and
its workers run with it first on ``PYTHONPATH``; the database each build runs on
is migrated by that build. Writes bench/results/compare-<base>.json and .md.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run as bench  # noqa: E402

from testbed import pg  # noqa: E402
from testbed.procs import Cluster, Worker, free_port, wait_healthy  # noqa: E402
from testbed.tempo import tempo_chain  # noqa: E402
from testbed.x402_server import sdk_v2_challenge  # noqa: E402


def checkout(rev: str, into: Path) -> Path:
    """``rev``'s service code, unpacked (no work tree of git's is touched)."""
    archive = subprocess.run(["git", "archive", rev, "service"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "service"


def start(build: Path | None, db_url: str, tmp: Path, **extra: str) -> Cluster:
    """One worker of ``build`` (None: this tree) on a database that build migrated."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELLER_")}
    if build is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(build), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    subprocess.run([sys.executable, "-m", "teller.cli", "migrate", "--database-url", db_url], env=env, check=True,
                   capture_output=True)
    admin_token = "op_" + secrets.token_urlsafe(16)
    env.update({"TELLER_DATABASE_URL": db_url, "TELLER_KEK": "b1:" + base64.b64encode(os.urandom(32)).decode(),
                "TELLER_ADMIN_TOKEN": admin_token, "TELLER_DATA_DIR": str(tmp), "TELLER_LOG_LEVEL": "WARNING",
                "TELLER_METRICS_LISTEN": f"127.0.0.1:{free_port()}", **extra})
    port = free_port()
    log = tmp / f"worker-{'base' if build else 'head'}-{time.time_ns()}.log"
    proc = subprocess.Popen([sys.executable, "-m", "teller.cli", "serve", "--listen", f"127.0.0.1:{port}"],
                            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    cluster = Cluster([Worker(f"127.0.0.1:{port}", proc, log, env["TELLER_METRICS_LISTEN"])], admin_token)
    try:
        wait_healthy(cluster.workers[0].target, proc, log)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the earlier commit to compare with")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each point per build, interleaved")
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--protocols", default="mpp,x402")
    parser.add_argument("--driver", default="auto", choices=("auto", "node", "h2load", "grpc-python"))
    parser.add_argument("--out", type=Path, default=bench.RESULTS)
    args = parser.parse_args()
    base_rev = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout.strip()
    head_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout.strip()
    x402 = sdk_v2_challenge(amount="1000")
    protocols = [p for p in args.protocols.split(",") if p]
    runs: dict[str, dict[str, list[dict]]] = {p: {"base": [], "head": []} for p in protocols}
    # The machine's two gauges, measured in this run (neither depends on Teller's
    # build): each build's Sign/s is also given as a ratio to them.
    limit = bench.in_process_limit_fresh(3.0)
    floor = bench.grpc_floor(x402, args.callers, args.seconds, args.warmup, args.repeats)["throughput"]
    print(f"in-process limit {limit}, gRPC floor {floor:.0f}/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp, bench.bench_server() as server, tempo_chain() as chain:
        base_code = checkout(base_rev, Path(tmp) / "base")
        for protocol in protocols:
            driver = bench.driver_for(args.driver, protocol)
            for i in range(args.repeats):
                # Interleaved, and the order flipped each round, so a drift in the
                # machine's speed falls on both builds alike.
                order = ("base", "head") if i % 2 == 0 else ("head", "base")
                for build in order:
                    bench.settle(server)
                    with pg.fresh_database(server) as url:
                        cluster = start(base_code if build == "base" else None, url, Path(tmp),
                                        TELLER_RPC_URLS=f"{chain.network}={chain.rpc_url}", TELLER_DB_POOL_SIZE="16",
                                        TELLER_RECONCILE_INTERVAL_SECONDS="0")
                        try:
                            seat = bench.setup_tenants(cluster.workers[0].target, cluster.admin_token, 1,
                                                       fund=lambda a: chain.fund(a, 10**9))[0]
                            if protocol == "x402":
                                jobs = [{"token": seat[0], "wallet_id": seat[1], "headers": x402.headers,
                                         "body": x402.body.decode("latin-1"), "url": x402.url}]
                            else:
                                jobs = [{"token": seat[0], "wallet_id": seat[1], "headers": h, "body": "",
                                         "url": "https://bench.local/item"} for h in bench.mpp_challenges(10_000)]
                            r = bench.drive(cluster, args.callers, jobs, args.seconds, args.warmup, driver)
                        finally:
                            cluster.stop()
                    runs[protocol][build].append(r)
                    print(f"{protocol:4} {build}: {r['throughput']:7.0f} Sign/s p50 {r['p50_ms']:5.1f} "
                          f"p99 {r['p99_ms']:5.1f} ms errors {r['errors']}", flush=True)
    summary = {}
    lines = [f"# {head_rev} against {base_rev}: {args.callers} callers, 1 worker, hot tenant", "",
             f"{args.repeats} runs per build, interleaved; median of the runs. Gauges of this run: in-process "
             f"limit {limit['x402']:.0f} x402 / {limit['mpp']:.0f} MPP signatures/s, gRPC floor {floor:.0f} calls/s.",
             "",
             "| protocol | base Sign/s | head Sign/s | head/base | base / head vs in-process | "
             "base / head vs gRPC floor | base p99 ms | head p99 ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for protocol, by_build in runs.items():
        med = {b: {k: statistics.median(r[k] for r in rs) for k in ("throughput", "p99_ms")}
               for b, rs in by_build.items()}
        ratio = med["head"]["throughput"] / med["base"]["throughput"]
        summary[protocol] = {"base": med["base"], "head": med["head"], "ratio": ratio, "runs": by_build}
        vs_limit = [med[b]["throughput"] / limit[protocol] for b in ("base", "head")]
        vs_floor = [med[b]["throughput"] / floor for b in ("base", "head")]
        summary[protocol].update(vs_in_process=vs_limit, vs_grpc_floor=vs_floor)
        lines.append(f"| {protocol} | {med['base']['throughput']:.0f} | {med['head']['throughput']:.0f} | "
                     f"{ratio:.0%} | {vs_limit[0]:.0%} / {vs_limit[1]:.0%} | {vs_floor[0]:.1%} / {vs_floor[1]:.1%} | "
                     f"{med['base']['p99_ms']:.1f} | {med['head']['p99_ms']:.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"compare-{base_rev}"
    stem.with_suffix(".json").write_text(json.dumps({"base": base_rev, "head": head_rev, "callers": args.callers,
                                                     "seconds": args.seconds, "in_process_per_s": limit,
                                                     "grpc_floor_per_s": floor, "summary": summary}, indent=1))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
