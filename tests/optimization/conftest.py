"""Fixtures for the optimization tests: a scratch Postgres database and the shared EPF prices."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from infra.db import create_database, migrate
from infra.settings import get_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_EPF = REPO_ROOT.parent / "shared" / "data" / "epf"
# The system PostgreSQL of the development machines; CI sets OPTIBID_DATABASE_URL instead.
LOCAL_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def optimization_db_url() -> Iterator[str]:
    """A fresh migrated database on the configured (or local) server, dropped afterwards; skip if none."""
    admin = get_settings().database_url or LOCAL_ADMIN_URL
    try:
        with psycopg.connect(admin, connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server reachable at the configured/local URL: {exc}")
    name = f"test_optimization_{uuid.uuid4().hex[:8]}"
    url = create_database(admin, name)
    migrate(url)
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def epf_dir() -> Path:
    if not SHARED_EPF.is_dir():
        pytest.skip(f"shared EPF prices not found at {SHARED_EPF} (../shared is absent on this machine)")
    return SHARED_EPF
