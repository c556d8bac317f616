from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from teller.db import upgrade
from testbed import pg
from tests.support.harness import RunningTeller, make_settings

# Each layer is a folder, and its marker follows from the folder, so that
# `-m unit` (or integration, e2e, drills) selects a layer without a decorator
# on every test, and a test cannot sit in one layer and be marked for another.
LAYERS = ("unit", "integration", "e2e", "drills")
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        relative = item.path.resolve().relative_to(TESTS).parts
        if len(relative) < 2 or relative[0] not in LAYERS:
            raise pytest.UsageError(f"{item.nodeid}: every test lives in one of tests/{{{','.join(LAYERS)}}}")
        item.add_marker(relative[0])


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    with pg.server_url() as url:
        yield url


# A test that starts a Teller on its database first thing (these fixtures) gets it
# already migrated, copied from one made once per session (migrating took a
# second a test on PostgreSQL); the schema is the same, and `build` still runs
# the migrations, which find nothing to do. Tests of the migrations themselves
# ask for db_url or pg_url alone, and get an empty database.
STARTS_A_TELLER = frozenset({"teller", "pg_teller", "frozen_teller", "live"})


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> Iterator[str]:
    with pg.migrated_template(pg_server) as name:
        yield name


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "teller.db"
    upgrade(f"sqlite:///{path}")
    assert not path.with_name("teller.db-wal").exists(), "the template must be whole in one file to copy"
    return path


@pytest.fixture(scope="session")
def pg_databases(pg_server: str) -> Iterator[pg.Databases]:
    databases = pg.Databases(pg_server)
    yield databases
    databases.close()


@pytest.fixture
def pg_url(request: pytest.FixtureRequest, pg_databases: pg.Databases) -> Iterator[str]:
    migrated = not STARTS_A_TELLER.isdisjoint(request.fixturenames)
    with pg_databases.fresh(template=request.getfixturevalue("pg_template") if migrated else None) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    migrated = not STARTS_A_TELLER.isdisjoint(request.fixturenames)
    if request.param == "sqlite":
        path = tmp_path / "teller.db"
        if migrated:
            shutil.copy2(request.getfixturevalue("sqlite_template"), path)  # copy2: its owner-only mode too
        return f"sqlite:///{path}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def teller(db_url: str, tmp_path: Path) -> Iterator[RunningTeller]:
    running = RunningTeller(make_settings(db_url, tmp_path))
    yield running
    running.stop()


@pytest.fixture
def pg_teller(pg_url: str, tmp_path: Path) -> Iterator[RunningTeller]:
    running = RunningTeller(make_settings(pg_url, tmp_path))
    yield running
    running.stop()
