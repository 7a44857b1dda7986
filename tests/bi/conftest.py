"""Fixtures of the BI tests: a real ClickHouse server, a private Postgres database with gold tables.

ClickHouse: `CLICKHOUSE_URL` when set, else a local server started once per session by
`infra.clickhouse.start_clickhouse` (skipped with the install command when the binary is absent; Debian's
is 18.16); each test gets a fresh ClickHouse database. `ch_chdb` is the current ClickHouse engine
in-process (chdb, `tests/bi/chdb_client.py`) behind the same client interface, so the replication and
analytics tests run on both engines (`engine_client`) and `test_engine_parity.py` compares them on the same
data. Postgres: a database of its own on the run's server (from the session `database_url` fixture),
because the tests create `gold.*` tables and cluster-wide roles.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pandas as pd
import psycopg
import pytest
from psycopg import sql

from ingestion.bi.tables import TABLES, TableSpec


@pytest.fixture
def ch_server(clickhouse_url: str) -> Iterator:
    """A clickhouse-driver Client of the ClickHouse server whose current database is fresh and dropped after
    the test."""
    from clickhouse_driver import Client

    admin = Client.from_url(clickhouse_url)
    name = f"bi_test_{uuid.uuid4().hex[:10]}"
    admin.execute(f"CREATE DATABASE {name}")
    client = Client.from_url(urlsplit(clickhouse_url)._replace(path=f"/{name}").geturl())
    try:
        yield client
    finally:
        client.disconnect()
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.disconnect()


@pytest.fixture(scope="session")
def chdb_session(tmp_path_factory: pytest.TempPathFactory):
    """The run's one chdb session (the engine lives in this process; one session at a time)."""
    from tests.bi.chdb_client import open_session

    session = open_session(str(tmp_path_factory.mktemp("chdb")))
    yield session
    session.close()


@pytest.fixture
def ch_chdb(chdb_session) -> Iterator:
    """The current ClickHouse engine (chdb) as a client like `ch_server`, on a fresh database dropped after the test."""
    from tests.bi.chdb_client import ChdbClient

    client = ChdbClient(chdb_session, f"bi_test_{uuid.uuid4().hex[:10]}")
    try:
        yield client
    finally:
        client.drop()


ENGINES = ["clickhouse-server", "chdb"]


def engine_client(request: pytest.FixtureRequest):
    """`ch_server` (Debian's is 18.16) or `ch_chdb` (the current engine), by the test's parameter: for a
    module's `ch` fixture with `params=ENGINES`, so its tests run on both."""
    return request.getfixturevalue("ch_chdb" if request.param == "chdb" else "ch_server")


@pytest.fixture(scope="session")
def bi_pg_url(database_url: str) -> Iterator[str]:
    from infra import db

    name = f"optibid_bi_test_{os.getpid()}"
    url = db.create_database(database_url, name, drop_existing=True)
    yield url
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def create_gold_table(conn: psycopg.Connection, spec: TableSpec) -> None:
    """The gold table of `spec` with the registry's column types (what dbt builds, minus constraints)."""
    cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.pg_type)) for c in spec.columns)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(spec.pg_schema)))
    conn.execute(
        sql.SQL("CREATE TABLE {}.{} ({})").format(sql.Identifier(spec.pg_schema), sql.Identifier(spec.pg_table), cols)
    )


@pytest.fixture
def pg(bi_pg_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the BI test database with empty gold tables of the registry."""
    with psycopg.connect(bi_pg_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS gold CASCADE")
        conn.execute("DROP SCHEMA IF EXISTS bi CASCADE")
        for spec in TABLES.values():
            create_gold_table(conn, spec)
        yield conn


def expected_realtime_kpis(df: pd.DataFrame, now: dt.datetime, minutes: int) -> pd.DataFrame:
    """The real-time KPI oracle in pandas: per zone over (now - minutes, now], the last price averaged over the
    zone's rows at its latest timestamp."""
    win = df[(df["ts_utc"] > now - dt.timedelta(minutes=minutes)) & (df["ts_utc"] <= now)]
    last = win[win["ts_utc"] == win.groupby("zone")["ts_utc"].transform("max")]
    return (
        win.groupby("zone")
        .agg(
            n_obs=("price", "size"),
            n_nodes=("node", "nunique"),
            price_avg=("price", "mean"),
            price_min=("price", "min"),
            price_max=("price", "max"),
            price_std=("price", lambda s: s.std(ddof=0)),
        )
        .join(last.groupby("zone")["price"].mean().rename("price_last"))
    )
