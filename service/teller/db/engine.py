"""Engine creation and the transaction helper every write goes through."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from teller import files
from teller.errors import Unavailable

#: Session settings for every PostgreSQL connection Teller opens. JIT off: once a
#: table has grown, the planner's cost estimate for the budget-window query (a
#: hundred assumed rows, each with index subplans) passes jit_above_cost, and
#: PostgreSQL then compiled it with LLVM on every batch: ~40 ms, where running it
#: takes ~0.05 ms. Teller's statements are all short lookups and writes, which
#: JIT does not speed up.
PG_OPTIONS = "-c jit=off"


def private_sqlite_file(url: str) -> None:
    """Create an SQLite database file owner-only before anything opens it: it
    holds sealed keys and the audit chain (SQLite gives its -wal and -shm files
    the database file's mode). A missing parent directory is made 0700."""
    if not url.startswith("sqlite"):
        return
    path = make_url(url).database or ""
    if path and path != ":memory:" and not path.startswith("file:"):
        if not Path(path).parent.exists():
            files.private_dir(Path(path).parent)
        files.private_file(Path(path))


def make_engine(url: str, pool_size: int = 10) -> Engine:
    if url.startswith("sqlite"):
        private_sqlite_file(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        # pysqlite's own BEGIN is deferred: two writers could both read the
        # remaining budget before either writes. BEGIN IMMEDIATE takes the
        # write lock first, so check-and-reserve is serialised.
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA foreign_keys=ON")
            dbapi_conn.execute("PRAGMA busy_timeout=30000")

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    options = make_url(url).query.get("options", "")
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"options": f"{options} {PG_OPTIONS}".strip()},
    )


class Database:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A one-statement read. On PostgreSQL it runs in autocommit, sparing the
        BEGIN/COMMIT round trips; SQLite reads in an ordinary transaction."""
        if not self.is_postgres:
            with self.transaction() as session:
                yield session
            return
        with _fail_closed(), self.engine.connect() as conn:
            with Session(bind=conn.execution_options(isolation_level="AUTOCOMMIT")) as session:
                yield session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One database transaction; commits on success, rolls back on any error."""
        with _fail_closed(), self._sessions.begin() as session:
            yield session


@contextmanager
def _fail_closed() -> Iterator[None]:
    """A lost or unreachable database surfaces as ``Unavailable``: callers fail
    closed (nothing is signed) and may retry."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        raise Unavailable("database unavailable") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise Unavailable("database connection lost") from exc
        raise
