from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    with pg.fresh_database(pg_server) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'teller.db'}"
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
