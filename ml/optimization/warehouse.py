"""Writes of optimization: run records into ml.optimization_runs and result rows into gold.storage_schedules,
gold.bid_curves and gold.unit_commitment.

What belongs here: the SQL that writes (plain psycopg 3 connections in, in the caller's transaction), with
results replaced per delivery day so a re-run never duplicates rows, and the INSERT the API's on-demand
solves share. What does not: reads (`ml.warehouse_reads`), problem assembly and the solve loop
(`ml.optimization.delivery_day`). No Dagster here.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import psycopg
from psycopg import sql

from infra.db import db_value, insert_frame
from infra.signals import bump_table_version
from ml.optimization.embedding import EMBEDDING_VERSION, run_embedding
from ml.optimization.runs import (
    JSONB_RUN_COLUMNS,
    OPTIMIZATION_RUNS_COLUMNS,
    bid_curves_frame,
    optimization_runs_frame,
    record_input,
    storage_schedules_frame,
    unit_commitment_frame,
)

EMBEDDING_INSERT = (
    "INSERT INTO ml.optimization_run_embeddings (run_id, org_id, problem, embedding_version, features) "
    "VALUES (%s, %s, %s, %s, %s)"
)


def embedding_params(record: dict[str, Any]) -> tuple[Any, ...]:
    """The ml.optimization_run_embeddings row of one run record (see `ml.optimization.embedding`)."""
    features = run_embedding(record_input(record))
    return (record["run_id"], record["org_id"], record["problem"], EMBEDDING_VERSION, features)


def insert_runs(conn: psycopg.Connection, records: list[dict[str, Any]]) -> int:
    """Insert run records into ml.optimization_runs, each with its input's embedding."""
    written = insert_frame(conn, "ml.optimization_runs", optimization_runs_frame(records), JSONB_RUN_COLUMNS)
    with conn.cursor() as cur:
        cur.executemany(EMBEDDING_INSERT, [embedding_params(r) for r in records])
    return written


# (result table, frame builder, time column, identity column) per problem.
RESULT_TABLES = {
    "storage_dispatch": ("gold.storage_schedules", storage_schedules_frame, "interval_start", "asset_id"),
    "bid_curves": ("gold.bid_curves", bid_curves_frame, "delivery_start", "zone"),
    "unit_commitment": ("gold.unit_commitment", unit_commitment_frame, "hour_start", "unit_id"),
}


def result_frame(record: dict[str, Any]) -> pd.DataFrame:
    """The gold rows of one run record."""
    return RESULT_TABLES[record["problem"]][1](record)


def replace_delivery_day(
    conn: psycopg.Connection,
    problem: str,
    org_id: str,
    identities: list[str],
    window: tuple[datetime, datetime],
    records: list[dict[str, Any]],
) -> int:
    """Delete the org's rows of `identities` (assets, zones or units) in `window`, then insert `records`.

    Runs in the caller's transaction, so a delivery day is replaced atomically and re-running it never
    duplicates rows. Runs stay in ml.optimization_runs (every run is kept); only results are replaced. The
    delivery day's version of the result table is bumped in the same transaction, so the API follows.
    Returns the number of result rows inserted.
    """
    table, _, time_col, id_col = RESULT_TABLES[problem]
    conn.execute(
        sql.SQL("DELETE FROM {t} WHERE org_id = %s AND {i} = ANY(%s) AND {c} >= %s AND {c} < %s").format(
            t=sql.Identifier(*table.split(".")), i=sql.Identifier(id_col), c=sql.Identifier(time_col)
        ),
        (org_id, identities, window[0], window[1]),
    )
    insert_runs(conn, records)
    written = sum(insert_frame(conn, table, result_frame(r)) for r in records)
    bump_table_version(conn, table, delivery_date(window))
    return written


def delivery_date(window: tuple[datetime, datetime]) -> date:
    """The local delivery day of a UTC window [first hour start, last hour end) of one zone-local day.

    The UTC date of its midpoint (local noon), which is the local date for every offset from UTC-11 to
    UTC+12, so for every zone of the reference data.
    """
    start, end = window
    return (start + (end - start) / 2).astimezone(ZoneInfo("UTC")).date()


def run_insert_statement() -> sql.Composed:
    """INSERT of one ml.optimization_runs row and its input's embedding in one statement; parameters from
    `run_params` (sync or async connections)."""
    return sql.SQL(
        "WITH run AS (INSERT INTO ml.optimization_runs ({c}) VALUES ({v}) RETURNING run_id, org_id, problem) "
        "INSERT INTO ml.optimization_run_embeddings (run_id, org_id, problem, embedding_version, features) "
        "SELECT run_id, org_id, problem, %s, %s FROM run"
    ).format(
        c=sql.SQL(", ").join(map(sql.Identifier, OPTIMIZATION_RUNS_COLUMNS)),
        v=sql.SQL(", ").join(
            sql.SQL("%s::jsonb" if c in JSONB_RUN_COLUMNS else "%s") for c in OPTIMIZATION_RUNS_COLUMNS
        ),
    )


def run_params(record: dict[str, Any]) -> tuple[Any, ...]:
    """The parameters of `run_insert_statement` for one run record."""
    frame = optimization_runs_frame([record])
    return (*(db_value(v) for v in frame.astype(object).iloc[0]), *embedding_params(record)[3:])
