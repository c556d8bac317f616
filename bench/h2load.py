"""Load generator: h2load (nghttp2, C) as N closed-loop gRPC callers.

Why not a Python gRPC client: on this shared 2-core machine grpc.aio's client
spends about as much CPU per call as the server it measures, and its own
event loop queues calls, so its cost showed up as Teller's latency (the same
worker measured 829 Sign/s at 32 callers with it and 1,100-1,300/s with this).
Production callers run on their own machines; h2load costs ~0.05 of a core at
1,500 calls/s. ``bench/driver.py`` (grpc.aio) stays as ``--driver grpc-python``.

Each caller is one HTTP/2 connection with one call in flight (``-m 1``): it
sends the next call when the last one answered. Callers are spread over one
h2load process per job (a job is one tenant's token and one challenge; h2load
repeats a fixed request), and over the workers.

h2load reads HTTP status, not gRPC's status trailer, so the outcome of every
call comes from the workers themselves: ``teller_rpc_calls_total`` for Sign,
by status code, read before and after the run.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SIGN = "/teller.v1.PaymentService/Sign"
_CALLS = re.compile(r'^teller_rpc_calls_total\{(?P<labels>[^}]*)\}\s+(?P<n>[0-9.e+]+)$', re.M)


@dataclass(frozen=True)
class Job:
    token: str
    request: bytes  # a serialized SignRequest


def available() -> bool:
    return shutil.which("h2load") is not None


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed, 4-byte big-endian length."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def sign_outcomes(metrics: list[str]) -> Counter[str]:
    """Sign calls answered so far by these workers, by gRPC status code."""
    out: Counter[str] = Counter()
    for address in metrics:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
            text = r.read().decode()
        for m in _CALLS.finditer(text):
            labels = dict(kv.split("=", 1) for kv in m["labels"].split(","))
            if labels.get("method", "").strip('"') == SIGN:
                out[labels["code"].strip('"')] += int(float(m["n"]))
    return out


def spread(callers: int, jobs: int, targets: int) -> list[tuple[int, int, int]]:
    """(job index, target index, connections) per h2load process: one process
    per job (cycling) for up to ``callers`` processes, at least one per target."""
    processes = max(targets, min(callers, jobs))
    plan = []
    for k in range(processes):
        connections = callers // processes + (1 if k < callers % processes else 0)
        if connections:
            plan.append((k % jobs, k % targets, connections))
    return plan


def percentile(sorted_ms: list[float], p: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(p * len(sorted_ms)))] if sorted_ms else 0.0


def drive(targets: list[str], metrics: list[str] | None, callers: int, jobs: list[Job], seconds: float,
          warmup: float) -> dict:
    """``metrics``: the workers' metrics addresses, for every call's gRPC status;
    None for a server that answers every call OK (``bench/floor.py``)."""
    before = sign_outcomes(metrics or [])
    with tempfile.TemporaryDirectory(prefix="teller-h2load-") as tmp:
        procs, logs = [], []
        for i, (job_i, target_i, connections) in enumerate(spread(callers, len(jobs), len(targets))):
            body = Path(tmp, f"body{i}")
            body.write_bytes(grpc_frame(jobs[job_i].request))
            log = Path(tmp, f"log{i}")
            logs.append(log)
            procs.append(subprocess.Popen(
                ["h2load", "-c", str(connections), "-m", "1", "-t", "1", "-D", f"{seconds:g}",
                 f"--warm-up-time={warmup:g}", "-d", str(body), "-H", "content-type: application/grpc",
                 "-H", "te: trailers", "-H", f"authorization: Bearer {jobs[job_i].token}",
                 "--log-file", str(log), f"http://{targets[target_i]}{SIGN}"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [p.communicate()[0] for p in procs]
        for p, output in zip(procs, outputs, strict=True):
            if p.returncode != 0:
                raise RuntimeError(f"h2load failed ({p.returncode}):\n{output[-2000:]}")
        latencies, http_errors = [], 0
        for log in logs:
            # One line per call of the measured period: start (us since epoch), HTTP status, elapsed (us).
            for line in log.read_text().splitlines():
                _, status, elapsed = line.split()[:3]
                if status == "200":
                    latencies.append(int(elapsed) / 1000)
                else:
                    http_errors += 1
    answered = sign_outcomes(metrics) - before if metrics is not None else Counter({"OK": len(latencies)})
    errors = {code: n for code, n in answered.items() if code != "OK"}
    if http_errors:
        errors["HTTP"] = http_errors
    latencies.sort()
    if sum(answered.values()) < len(latencies):
        raise RuntimeError(f"h2load timed {len(latencies)} calls but the workers answered {sum(answered.values())}")
    # A gRPC error is an HTTP 200 to h2load: count every error the workers gave
    # during the run (warm-up included) against the calls it timed.
    ok = max(0, len(latencies) - sum(errors.values()))
    return {"calls": ok, "errors": errors, "seconds": seconds, "throughput": ok / seconds,
            "p50_ms": percentile(latencies, 0.50), "p95_ms": percentile(latencies, 0.95),
            "p99_ms": percentile(latencies, 0.99), "driver": "h2load"}
