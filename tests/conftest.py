from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import pg
from tests.support.harness import RunningTeller, make_settings


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
