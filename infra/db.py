"""Warehouse connections and schema migrations.

Migrations are the SQL files in `infra/sql/`, applied once each in file-name order and recorded in
`ops.schema_migrations`; a migration is never edited after it has landed — add a new file instead.
Everything that needs a table the platform owns calls `migrate` first (it is cheap when up to date).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg

MIGRATIONS_DIR = Path(__file__).parent / "sql"
# The trading systems' tables the platform captures (Debezium topics, bronze `cdc__<t>`, silver
# `trading__<t>` in sql/050_silver.sql): every layer takes the list from here.
TRADING_TABLES = ("bids", "trades", "assets", "market_orders")
# Serialises concurrent `migrate` calls (Dagster run workers, API start-up, tests) on one server.
_MIGRATION_LOCK_KEY = 7_310_245_001


@contextmanager
def connect(database_url: str, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """A psycopg 3 connection that is committed on success, rolled back on error, and closed."""
    with psycopg.connect(database_url, autocommit=autocommit) as conn:
        yield conn


def migration_files() -> list[Path]:
    """Every migration, in the order it is applied."""
    return sorted(MIGRATIONS_DIR.glob("*.sql"))


def migrate(database_url: str) -> list[str]:
    """Apply the migrations this database has not seen; names of those applied now."""
    applied_now: list[str] = []
    with connect(database_url) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
        conn.execute("CREATE SCHEMA IF NOT EXISTS ops")
        conn.execute(
            """CREATE TABLE IF NOT EXISTS ops.schema_migrations (
                   name text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {row[0] for row in conn.execute("SELECT name FROM ops.schema_migrations")}
        for path in migration_files():
            if path.name in done:
                continue
            sql = path.read_text()
            conn.execute(sql)  # type: ignore[arg-type]  # trusted SQL shipped with the project
            conn.execute(
                "INSERT INTO ops.schema_migrations (name, checksum) VALUES (%s, %s)",
                (path.name, hashlib.sha256(sql.encode()).hexdigest()),
            )
            applied_now.append(path.name)
    return applied_now


def create_database(admin_url: str, name: str, *, drop_existing: bool = False) -> str:
    """Create database `name` on the server of `admin_url`; the new database's URL."""
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    with psycopg.connect(admin_url, autocommit=True) as conn:
        if drop_existing:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = conninfo_to_dict(admin_url)
    params["dbname"] = name
    return _as_url(make_conninfo(**params))


def drop_database(admin_url: str, name: str) -> None:
    """Drop database `name` (closing its sessions) if it exists."""
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _as_url(conninfo: str) -> str:
    """A libpq key=value string as a postgresql:// URL (dbt, Dagster and SQLAlchemy want URLs)."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(conninfo)
    user = quote(str(params.pop("user", "postgres")), safe="")
    password = params.pop("password", None)
    host = str(params.pop("host", ""))
    port = params.pop("port", None)
    dbname = params.pop("dbname", "postgres")
    auth = f"{user}:{quote(str(password), safe='')}" if password else user
    if host.startswith("/"):  # unix socket directory: goes in the query string
        params["host"] = host
        netloc = auth + "@"
    else:
        netloc = f"{auth}@{host}" + (f":{port}" if port else "")
    query = "&".join(f"{k}={quote(str(v), safe='/')}" for k, v in params.items())
    return f"postgresql://{netloc}/{dbname}" + (f"?{query}" if query else "")


def url_parts(database_url: str) -> dict[str, str]:
    """host, port, user, password, dbname of a URL (for dbt profiles and other libpq-less clients)."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(database_url)
    return {
        "host": str(params.get("host", "localhost")),
        "port": str(params.get("port", "5432")),
        "user": str(params.get("user", "postgres")),
        "password": str(params.get("password", "")),
        "dbname": str(params.get("dbname", "postgres")),
    }


def db_value(value: Any) -> Any:
    """A pandas/numpy cell as the Python value psycopg adapts (NaN and NaT as NULL)."""
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.generic):
        return value.item()
    return value


def insert_frame(conn: psycopg.Connection, table: str, frame: pd.DataFrame, jsonb: Iterable[str] = ()) -> int:
    """Insert every row of `frame` into `table` (columns by name; NaN -> NULL); rows inserted.

    For the small result frames of ML and optimization runs; bulk loads use COPY (see ingestion/silver).
    """
    from psycopg import sql

    if frame.empty:
        return 0
    jsonb = set(jsonb)
    cols = list(frame.columns)
    statement = sql.SQL("INSERT INTO {t} ({c}) VALUES ({v})").format(
        t=sql.Identifier(*table.split(".")),
        c=sql.SQL(", ").join(map(sql.Identifier, cols)),
        v=sql.SQL(", ").join(sql.SQL("%s::jsonb" if c in jsonb else "%s") for c in cols),
    )
    rows = [tuple(db_value(v) for v in row) for row in frame.astype(object).itertuples(index=False, name=None)]
    with conn.cursor() as cur:
        cur.executemany(statement, rows)
    return len(rows)
