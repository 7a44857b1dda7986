"""Gold fixtures: the hand-computable silver rows loaded once, then one real `dbt build` for the session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def dbt_target_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A per-session dbt target folder, so parallel runs never share artifacts."""
    return tmp_path_factory.mktemp("dbt_target")


@pytest.fixture(scope="session")
def dbt_connection_env(database_url: str) -> Iterator[dict[str, str]]:
    """OPTIBID_DBT_* for the test database, exported the way the gold assets export them before running dbt."""
    from infra.dbt import dbt_env

    env = dbt_env(database_url)
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def gold_built(database_url: str, dbt_target_dir: Path, dbt_connection_env: dict[str, str]) -> str:
    """The fixture silver rows plus a full `dbt build` (models, seeds, tests) of gold; the database URL."""
    from infra.dbt import run_dbt
    from tests.gold.silver_fixture import load_fixture

    load_fixture(database_url)
    run_dbt(["build"], database_url=database_url, target_path=dbt_target_dir)
    return database_url


@pytest.fixture(scope="session")
def database_url(database_url: str) -> Iterator[str]:
    """This area's own database: its gold tables must be exactly what dbt builds (see private_database)."""
    from tests.conftest import private_database

    yield from private_database(database_url, "optibid_test_gold")
