"""Several real `teller serve` processes sharing one PostgreSQL."""

from __future__ import annotations

import base64
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from teller.db import upgrade


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Worker:
    target: str
    proc: subprocess.Popen[bytes]
    log: Path
    metrics: str = ""  # host:port of its Prometheus endpoint, when started with metrics=True


@dataclass(frozen=True)
class TenantSeat:
    tenant_id: str
    token: str
    wallet_id: str


@dataclass
class Cluster:
    workers: list[Worker]
    admin_token: str

    def stop(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.terminate()
        for w in self.workers:
            try:
                w.proc.wait(20)
            except subprocess.TimeoutExpired:
                w.proc.kill()


def stop(proc: subprocess.Popen[Any], grace: float = 10) -> None:
    """Stop a helper process: SIGTERM, ``grace`` seconds to exit, then SIGKILL."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_healthy(target: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    with grpc.insecure_channel(target) as ch:
        while True:
            try:
                status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"worker {target} did not become healthy:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)


def start_cluster(db_url: str, n: int, tmp: Path, *, metrics: bool = False, **env_extra: str) -> Cluster:
    upgrade(db_url)  # `teller migrate` once, never by each replica
    admin_token = "op_" + secrets.token_urlsafe(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELLER_")}
    env.update({
        "TELLER_DATABASE_URL": db_url,
        "TELLER_KEK": "test1:" + base64.b64encode(os.urandom(32)).decode(),
        "TELLER_ADMIN_TOKEN": admin_token,
        "TELLER_DATA_DIR": str(tmp),
        "TELLER_LOG_LEVEL": "WARNING",
        **env_extra,
    })
    workers = []
    for i in range(n):
        port = free_port()
        log = tmp / f"worker{i}.log"
        worker_env = {**env, "TELLER_METRICS_LISTEN": f"127.0.0.1:{free_port()}"} if metrics else env
        proc = subprocess.Popen([sys.executable, "-m", "teller.cli", "serve", "--listen", f"127.0.0.1:{port}"],
                                env=worker_env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        workers.append(Worker(f"127.0.0.1:{port}", proc, log, worker_env.get("TELLER_METRICS_LISTEN", "")))
    cluster = Cluster(workers, admin_token)
    try:
        for w in workers:
            wait_healthy(w.target, w.proc, w.log)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def seat_tenant(cluster: Cluster, name: str, policy: object | None = None) -> TenantSeat:
    """A new tenant on a running cluster, with an API token and a wallet (and the
    policy, when given; without one the tenant may pay nothing)."""
    from teller_client import AdminClient

    with AdminClient(cluster.workers[0].target, cluster.admin_token) as admin:
        tenant = admin.create_tenant(name)
        _, token = admin.issue_token(tenant.id)
        wallet = admin.create_wallet(tenant.id)
        if policy is not None:
            admin.set_policy(tenant.id, policy)  # type: ignore[arg-type]
    return TenantSeat(tenant.id, token, wallet.id)
