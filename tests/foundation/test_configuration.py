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
        [sys.executable, "-m", "app.cli", *args],
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


def environment_names(field_name: str) -> list[str]:
    """The documented environment names of a Settings field (its validation aliases)."""
    from pydantic import AliasChoices

    from infra.settings import Settings

    alias = Settings.model_fields[field_name].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(c) for c in alias.choices]
    return [alias] if isinstance(alias, str) else []


def test_every_setting_has_a_documented_environment_name() -> None:
    from infra.settings import Settings

    unnamed = [name for name in Settings.model_fields if not environment_names(name)]
    assert not unnamed, f"fields read from the environment by their bare name: {unnamed}"


def test_only_documented_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Unrelated HOME, DATABASE_URL, LAKE_URI, API_PORT, ... (every field's bare name) change nothing."""
    from infra.settings import Settings

    monkeypatch.chdir(tmp_path)  # no stray .env, and `.optibid` resolves under a known folder
    for name in Settings.model_fields:
        for env_name in environment_names(name):
            monkeypatch.delenv(env_name, raising=False)
    baseline = Settings().model_dump()
    for name in Settings.model_fields:
        if name.upper() in environment_names(name):
            continue  # KAFKA_BOOTSTRAP_SERVERS and the like: the bare name is the documented one
        # A leak would either change the value or fail validation (int, JSON fields): both fail the test.
        monkeypatch.setenv(name.upper(), "leaked-from-an-unrelated-variable")
    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone-else@127.0.0.1:1/theirs")
    monkeypatch.setenv("LAKE_URI", "s3://someone-elses-bucket")
    settings = Settings()
    assert settings.model_dump() == baseline
    assert settings.home == Path(".optibid")
    for state in (settings.pg_data_dir, settings.dagster_home, Path(settings.resolved_lake_uri)):
        assert state.is_relative_to(tmp_path / ".optibid"), state
    assert settings.resolved_landing_dir == tmp_path / ".optibid" / "landing"
    assert settings.database_url is None and settings.lake_uri is None and settings.api_port == 8000


def test_documented_variables_and_field_names_in_code_still_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from infra.settings import Settings

    monkeypatch.setenv("OPTIBID_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("OPTIBID_API_PORT", "8123")
    monkeypatch.setenv("SPARK_MASTER", "local[1]")
    from_env = Settings()
    assert from_env.home == tmp_path / "state" and from_env.api_port == 8123 and from_env.spark_master == "local[1]"
    in_code = Settings(home=tmp_path / "given", clickhouse_url="clickhouse://h:9000/x", spark_master="local[2]")
    assert in_code.home == tmp_path / "given"
    assert in_code.clickhouse_url == "clickhouse://h:9000/x" and in_code.spark_master == "local[2]"
    with pytest.raises(TypeError, match="hme"):
        Settings(hme=tmp_path)
