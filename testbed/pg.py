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
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url


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
def fresh_database(server: str, template: str | None = None) -> Iterator[str]:
    """A new database on ``server``, dropped afterwards: empty, or a copy of
    ``template`` (a database made by ``migrated_template``)."""
    url = _server_url(server)
    name = f"teller_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        _drop(admin, name)


class Databases:
    """Fresh databases on one server for a test session, each made before it is
    asked for: CREATE DATABASE costs the server ~0.3 s, which it spends on a
    second core while the test before runs (and the drop after it, likewise).
    One thread does all of it, in order."""

    def __init__(self, server: str) -> None:
        self._url = _server_url(server)
        self._admin = create_engine(self._url, isolation_level="AUTOCOMMIT")
        self._work = ThreadPoolExecutor(1, thread_name_prefix="teller-test-databases")
        self._ready: dict[str | None, Future[str]] = {}  # by template: the next one, being made

    def _create(self, template: str | None) -> str:
        name = f"teller_test_{uuid.uuid4().hex[:12]}"
        with self._admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
        return name

    @contextlib.contextmanager
    def fresh(self, template: str | None = None) -> Iterator[str]:
        """A new database, empty or a copy of ``template``, dropped afterwards."""
        ready = self._ready.pop(template, None)
        name = (ready or self._work.submit(self._create, template)).result()
        self._ready[template] = self._work.submit(self._create, template)
        try:
            yield self._url.set(database=name).render_as_string(hide_password=False)
        finally:
            self._work.submit(_drop, self._admin, name)

    def close(self) -> None:
        for ready in self._ready.values():
            self._work.submit(_drop, self._admin, ready.result())
        self._work.shutdown(wait=True)
        self._admin.dispose()


@contextlib.contextmanager
def migrated_template(server: str) -> Iterator[str]:
    """The name of a database on ``server`` migrated to this tree's head, to copy
    with ``fresh_database(server, template=...)``: PostgreSQL copies it in a fifth
    of the time the migrations take, and a test that starts a Teller on its own
    database would otherwise run them all."""
    from teller.db import upgrade

    with fresh_database(server) as url:
        upgrade(url)
        name = make_url(url).database
        assert name is not None
        admin = create_engine(_server_url(server), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:  # a template must have no one connected when it is copied
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                         {"n": name})
        admin.dispose()
        yield name


def _server_url(server: str) -> URL:
    url = make_url(server)
    return url.set(drivername="postgresql+psycopg") if url.drivername == "postgresql" else url


def _drop(admin: Engine, name: str) -> None:
    admin.dispose()  # the server may have restarted meanwhile (failure drills): fresh connections
    with admin.connect() as conn:
        conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"
        ), {"n": name})
        time.sleep(0.05)
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()
