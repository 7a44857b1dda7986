"""COPY from Arrow (the binary format where the column types allow, CSV otherwise, the same rows either way), and
first loads of empty tables that build their indexes after their rows."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from infra.db import connect
from ingestion.silver import pg_writer
from ingestion.silver.pg_writer import (
    BINARY_COPY_TYPES,
    ReplaceWhere,
    TableWrite,
    binary_copyable,
    column_types,
    copy_arrow,
    merge_dataframes,
)

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


# A table shaped like a silver one: a key constraint whose key holds a nullable column, and a date index.
PROBE = "public.bulk_probe"
PROBE_DDL = (
    "CREATE TABLE public.bulk_probe (k integer NOT NULL, org_id text, day date NOT NULL, v double precision, "
    "CONSTRAINT bulk_probe_key UNIQUE NULLS NOT DISTINCT (k, org_id)); "
    "CREATE INDEX bulk_probe_day ON public.bulk_probe (day)"
)
DAY = date(2025, 3, 1)


@pytest.fixture
def probe(silver_db, monkeypatch):
    """An empty probe table, and first loads from 4 rows on (a few hundred thousand in production)."""
    monkeypatch.setattr(pg_writer, "BULK_LOAD_ROWS", 4)
    with connect(silver_db) as conn:
        conn.execute("DROP TABLE IF EXISTS public.bulk_probe")
        conn.execute(PROBE_DDL)
    yield silver_db
    with connect(silver_db) as conn:
        conn.execute("DROP TABLE IF EXISTS public.bulk_probe")


def _indexes(database_url: str) -> list[tuple]:
    with connect(database_url) as conn:
        return conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'bulk_probe' ORDER BY 1"
        ).fetchall() + conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'public.bulk_probe'::regclass ORDER BY 1"
        ).fetchall()


def _day_write(spark, first: int, days: int, value: float, keys_per_day: int = 5) -> TableWrite:
    rows = [
        (first * keys_per_day + i, None if i % 2 else "org-a", DAY + timedelta(days=first + i // keys_per_day), value)
        for i in range(days * keys_per_day)
    ]
    df = spark.createDataFrame(rows, "k int, org_id string, day date, v double")
    window = ReplaceWhere("day >= %s AND day < %s", (DAY + timedelta(days=first), DAY + timedelta(days=first + days)))
    return TableWrite(df, PROBE, ("k", "org_id"), window, conflict_constraint="bulk_probe_key")


def _rows(database_url: str) -> list[tuple]:
    with connect(database_url) as conn:
        return conn.execute("SELECT k, org_id, day, v FROM public.bulk_probe ORDER BY k").fetchall()


def test_a_first_load_builds_the_tables_indexes_once_after_its_rows(spark, probe):
    before = _indexes(probe)
    result = merge_dataframes(probe, [_day_write(spark, 0, 2, 1.0), _day_write(spark, 2, 3, 1.0)])
    assert result.inserted[PROBE] == 25
    assert PROBE in result.index_build_s  # the bare-heap path ran
    assert _indexes(probe) == before  # the same indexes and constraints, by name and definition
    assert [r[0] for r in _rows(probe)] == list(range(25))
    # A later build of a loaded table merges as before: the rebuilt constraint is the upsert's arbiter.
    again = merge_dataframes(probe, [_day_write(spark, 0, 2, 2.0)])
    assert (again.updated[PROBE], again.index_build_s) == (10, {})


def test_a_duplicate_key_in_a_first_load_fails_and_leaves_the_table_as_it_was(spark, probe):
    before = _indexes(probe)
    # Rows 0-9 again in a second window: a key outside its own window, caught when the key's index is built.
    duplicate = _day_write(spark, 0, 2, 1.0)
    shifted = TableWrite(duplicate.df, PROBE, duplicate.key_columns,
                         ReplaceWhere("day >= %s AND day < %s", (DAY + timedelta(days=5), DAY + timedelta(days=7))),
                         conflict_constraint="bulk_probe_key")
    with pytest.raises(psycopg.errors.UniqueViolation, match="bulk_probe_key"):
        merge_dataframes(probe, [_day_write(spark, 0, 2, 1.0), shifted])
    assert _rows(probe) == []
    assert _indexes(probe) == before


def test_a_merge_into_a_table_first_loaded_in_the_same_run_rebuilds_its_indexes_first(spark, probe):
    result = merge_dataframes(probe, [_day_write(spark, 0, 2, 1.0), _day_write(spark, 0, 2, 3.0)])
    assert (result.inserted[PROBE], result.updated[PROBE]) == (10, 10)
    assert {r[3] for r in _rows(probe)} == {3.0}


def test_a_table_a_reader_is_using_loads_row_by_row_without_waiting_for_the_reader(spark, probe, monkeypatch):
    monkeypatch.setattr(pg_writer, "BULK_LOCK_TIMEOUT", "300ms")
    reader = psycopg.connect(probe)
    reader.execute("SELECT count(*) FROM public.bulk_probe")  # its open transaction holds ACCESS SHARE
    try:
        result = merge_dataframes(probe, [_day_write(spark, 0, 2, 1.0)])
    finally:
        reader.close()
    assert result.inserted[PROBE] == 10
    assert result.index_build_s == {}  # the lock was not granted: indexes kept and maintained row by row
    assert len(_rows(probe)) == 10


def test_an_identical_re_run_of_a_window_neither_writes_nor_locks_its_rows(spark, probe):
    merge_dataframes(probe, [_day_write(spark, 0, 2, 1.0)])

    def row_versions() -> list[tuple]:
        with connect(probe) as conn:
            versions = "SELECT ctid::text, xmin::text, xmax::text FROM public.bulk_probe ORDER BY k"
            return conn.execute(versions).fetchall()

    before = row_versions()
    result = merge_dataframes(probe, [_day_write(spark, 0, 2, 1.0)])
    assert (result.deleted[PROBE], result.inserted[PROBE], result.updated[PROBE]) == (0, 0, 0)
    # ON CONFLICT DO UPDATE locks every row it compares, even where its WHERE leaves the row as it is (xmax set).
    assert row_versions() == before
