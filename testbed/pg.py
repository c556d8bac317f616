"""Real PostgreSQL for tests, found in this order:

1. ``TELLER_TEST_DATABASE_URL`` (a server we may create databases on);
2. testcontainers, where a Docker engine answers;
3. a throwaway cluster started from the installed PostgreSQL binaries.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bindir() -> Path:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and Path(out, "initdb").exists():
            return Path(out)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        raise RuntimeError("no PostgreSQL binaries: install postgresql or set TELLER_TEST_DATABASE_URL")
    return Path(candidates[-1]).parent


class LocalCluster:
    """A PostgreSQL cluster of our own, from the installed binaries; it can be
    stopped and started again (failure drills)."""

    def __init__(self, durable: bool = False) -> None:
        # Test clusters skip fsync and synchronous commit for speed; a drill that
        # crashes the server needs commits that survive it, as in production.
        self.durable = durable
        self.bindir = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="teller-pg-"))
        self.data = self.root / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            shutil.chown(self.root, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = _free_port()
        subprocess.run([*self.as_user, str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                        "-A", "trust", "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        speed = "" if self.durable else "-c fsync=off -c synchronous_commit=off "
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 {speed}-c max_connections=400"
        subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
                        str(self.root / "log"), "-w", "-t", "60", "start"], check=True, capture_output=True)

    def stop(self, mode: str = "immediate") -> None:
        subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                        "stop"], check=False, capture_output=True)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def local_cluster(durable: bool = False) -> Iterator[LocalCluster]:
    cluster = LocalCluster(durable)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.remove()


@contextlib.contextmanager
def _throwaway_cluster() -> Iterator[str]:
    with local_cluster() as cluster:
        yield cluster.url


def _docker_available() -> bool:
    sock = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not sock.startswith("unix://"):
        return True
    path = sock[len("unix://"):]
    if not os.path.exists(path):
        return False
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        return True
    return False


@contextlib.contextmanager
def server_url() -> Iterator[str]:
    """A URL of a PostgreSQL server on which we may create databases."""
    given = os.environ.get("TELLER_TEST_DATABASE_URL")
    if given:
        yield given
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver="psycopg") as pg:
            yield pg.get_connection_url()
        return
    with _throwaway_cluster() as url:
        yield url


@contextlib.contextmanager
def fresh_database(server: str) -> Iterator[str]:
    """A new empty database on ``server``, dropped afterwards."""
    url = make_url(server)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    name = f"teller_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        admin.dispose()  # the server may have restarted meanwhile (failure drills): fresh connections
        with admin.connect() as conn:
            conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"
            ), {"n": name})
            time.sleep(0.05)
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
