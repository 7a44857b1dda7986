"""Configuration: a real server is used when its URL is set, and bad settings fail with one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from infra import db

REPO = Path(__file__).resolve().parents[2]
SYSTEM_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def run_cli(*args: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def system_postgres_or_skip() -> str:
    try:
        with psycopg.connect(SYSTEM_POSTGRES, connect_timeout=3):
            return SYSTEM_POSTGRES
    except psycopg.OperationalError:
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432 to prove the configured-server path against")


def test_configured_database_url_is_used_instead_of_the_embedded_one(tmp_path: Path, broker_bootstrap: str) -> None:
    url = db.create_database(system_postgres_or_skip(), "optibid_real_server_test", drop_existing=True)
    result = run_cli("seed", env={"OPTIBID_HOME": str(tmp_path), "OPTIBID_DATABASE_URL": url})
    assert result.returncode == 0, result.stdout + result.stderr
    with psycopg.connect(url) as conn:
        zones = conn.execute("select count(*) from silver.ref__zones").fetchone()[0]
    assert zones >= 9
    assert not (tmp_path / "pg").exists(), "the embedded Postgres must not start when a URL is configured"


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"OPTIBID_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere"}, "OPTIBID_DATABASE_URL"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({"OPTIBID_LAKE_URI": "/proc/optibid-lake"}, "OPTIBID_LAKE_URI"),
    ],
    ids=["database-unreachable", "broker-down", "lake-not-writable"],
)
def test_bad_configuration_names_the_setting(
    tmp_path: Path, database_url: str, env: dict[str, str], setting: str
) -> None:
    env = {"OPTIBID_HOME": str(tmp_path), "OPTIBID_DATABASE_URL": database_url, **env}
    result = run_cli("services", "up", env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert setting in output
    assert "Traceback" not in output
