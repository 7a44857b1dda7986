"""COPY from Arrow: the binary format where the column types allow, CSV otherwise, the same rows either way."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pyarrow as pa
from psycopg import sql

from infra.db import connect
from ingestion.silver.pg_writer import BINARY_COPY_TYPES, binary_copyable, column_types, copy_arrow

ROWS = pa.table(
    {
        "ts": pa.array([datetime(2024, 10, 27, 0, 30, tzinfo=UTC), None, datetime(1999, 12, 31, 23, 59, 59, 999999,
                                                                                    tzinfo=UTC)],
                       pa.timestamp("us", tz="UTC")),
        "day": pa.array([date(2024, 10, 27), date(1970, 1, 1), None], pa.date32()),
        "name": pa.array(["", None, 'zürich, "quoted"\nnew line'], pa.string()),
        "n": pa.array([1, None, -(2**31)], pa.int32()),
        "big": pa.array([2**62, 0, None], pa.int64()),
        "x": pa.array([0.1, None, float("-inf")], pa.float64()),
        "flag": pa.array([True, False, None], pa.bool_()),
    }
)
COLUMNS = "ts timestamptz, day date, name text, n integer, big bigint, x double precision, flag boolean"


def _copied(database_url: str, columns: str, data: pa.Table) -> list[tuple]:
    with connect(database_url) as conn:
        conn.execute(f"CREATE TEMP TABLE copied ({columns})")
        assert copy_arrow(conn, sql.Identifier("copied"), data) == data.num_rows
        return conn.execute("SELECT * FROM copied").fetchall()


def test_binary_copy_keeps_every_value_null_and_empty_string(silver_db):
    with connect(silver_db) as conn:
        conn.execute(f"CREATE TEMP TABLE probe ({COLUMNS})")
        types = column_types(conn, sql.Identifier("probe"))
    assert binary_copyable(ROWS.schema, types)  # so copy_arrow takes the binary path below
    assert _copied(silver_db, COLUMNS, ROWS) == [tuple(r.values()) for r in ROWS.to_pylist()]


def test_a_column_binary_cannot_carry_falls_back_to_csv_with_the_same_rows(silver_db):
    # numeric has no pgpq encoding from float64: CSV, parsed by the server
    columns = COLUMNS.replace("x double precision", "x numeric")
    assert "numeric" not in {t for kinds in BINARY_COPY_TYPES.values() for t in kinds}
    data = ROWS.set_column(5, "x", pa.array([0.1, None, 2.5]))
    rows = _copied(silver_db, columns, data)
    assert [r[5] for r in rows] == [Decimal("0.1"), None, Decimal("2.5")]
    assert [r[:5] for r in rows] == [tuple(r.values())[:5] for r in data.to_pylist()]
