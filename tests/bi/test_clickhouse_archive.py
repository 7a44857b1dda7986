"""Archived gold days in the ClickHouse replica: a day retention moved to the cold tier
(`infra.retention.archive_day`, the nightly job's own function) keeps its rows, value for value, when its export
is re-run; a day rebuilt in hot storage after it was archived is replicated from the hot rows; parity compares
with that same source, so an archived day cannot vanish from ClickHouse behind a passing 0 == 0."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psycopg
import pyarrow as pa
import pytest

from infra.retention import archive_day, policy_for, read_archive
from ingestion.bi.clickhouse import (
    ArchiveSourceError,
    duplicate_key_count,
    replicate_partition,
    rollup_select_sql,
    row_count_parity,
)
from ingestion.bi.tables import FCT_PRICES_HOURLY, KPI_VALUES, TABLES, TableSpec
from tests.bi.conftest import ENGINES, create_gold_table, engine_client
from tests.bi.test_clickhouse_replication import D1, D2, insert_hourly
from tests.conftest import private_database


@pytest.fixture(params=ENGINES)
def ch(request: pytest.FixtureRequest):
    """Every test here runs on the ClickHouse server and on the current engine (chdb)."""
    return engine_client(request)


@pytest.fixture(scope="module")
def warehouse_url(database_url: str) -> Iterator[str]:
    """A migrated database of the module's own: archiving records days in `ops.archived_partitions`, which the
    shared BI test database (gold tables only) does not have."""
    yield from private_database(database_url, f"optibid_bi_archive_{os.getpid()}")


@pytest.fixture
def pg(warehouse_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection with empty registry-shaped gold tables and nothing archived."""
    with psycopg.connect(warehouse_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS gold CASCADE")
        for spec in TABLES.values():
            create_gold_table(conn, spec)
        conn.execute("TRUNCATE ops.archived_partitions")
        yield conn


@pytest.fixture
def archive_uri(tmp_path: Path) -> str:
    return str(tmp_path / "archive")


def archive(url: str, uri: str, settings, spec: TableSpec, day: dt.date) -> int:
    outcome = archive_day(url, uri, policy_for(settings, spec.qualified_pg_name), day)
    assert outcome.action == "archive" and outcome.archive_uri
    return outcome.rows


def ch_rows(ch, spec: TableSpec, day: dt.date) -> list[tuple]:
    """The day's rows in ClickHouse in a stable order (every column, nulls as None)."""
    cols = ", ".join(spec.column_names)
    return sorted(
        ch.execute(f"SELECT {cols} FROM {spec.ch_table} WHERE market_date = %(d)s", {"d": day}),
        key=lambda r: tuple((v is None, "" if v is None else str(v)) for v in r),
    )


def rollup_rows(ch, spec: TableSpec) -> pd.DataFrame:
    rows, cols = ch.execute(rollup_select_sql(spec.rollups[0]), with_column_types=True)
    frame = pd.DataFrame(rows, columns=[c for c, _ in cols])
    return frame.sort_values(list(frame.columns[: len(spec.rollups[0].keys)])).reset_index(drop=True)


def utc_naive(value: dt.datetime) -> dt.datetime:
    """The server's client returns aware UTC datetimes, chdb's naive ones, psycopg the session's zone."""
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value


def hot_count(pg: psycopg.Connection, spec: TableSpec, day: dt.date) -> int:
    query = f"SELECT count(*) FROM {spec.qualified_pg_name} WHERE market_date = %s"
    return pg.execute(query, (day,)).fetchone()[0]  # type: ignore[index]


def test_archived_day_is_replicated_from_the_archive_value_for_value(pg, ch, warehouse_url, archive_uri, settings):
    spec = FCT_PRICES_HOURLY
    insert_hourly(pg, D1, ["NO1", "NO2"], 10.0 + 1 / 7)  # fractional prices: any rounding would show
    insert_hourly(pg, D1, ["NO1"], 70.0 + 1 / 3, org_id="acme")  # a private series: org_id set, not NULL
    insert_hourly(pg, D2, ["NO1"], 20.0)
    for day in (D1, D2):
        replicate_partition(pg, ch, spec, day)
    before = {day: ch_rows(ch, spec, day) for day in (D1, D2)}
    rollup_before = rollup_rows(ch, spec)
    assert len(before[D1]) == 72 and any(r[5] == "acme" for r in before[D1]) and any(r[5] is None for r in before[D1])

    assert archive(warehouse_url, archive_uri, settings, spec, D1) == 72
    assert hot_count(pg, spec, D1) == 0
    # parity counts the archived day's rows: ClickHouse still has them all
    assert row_count_parity(pg, ch, spec, D1) == (72, 72)

    # without the cold tier's location the export refuses, rather than emptying the day in ClickHouse
    with pytest.raises(ArchiveSourceError, match="archive_uri"):
        replicate_partition(pg, ch, spec, D1)
    assert ch_rows(ch, spec, D1) == before[D1]

    # the export re-runs (a backfill): the day comes from the archive, unchanged, twice over
    for _ in range(2):
        result = replicate_partition(pg, ch, spec, D1, archive_uri=archive_uri)
        assert (result.source, result.rows_loaded, result.pg_count, result.ch_count) == ("archive", 72, 72, 72)
        assert result.as_metadata()["source"] == "archive"
    assert ch_rows(ch, spec, D1) == before[D1]
    assert ch_rows(ch, spec, D2) == before[D2]  # the month's other day is untouched
    assert duplicate_key_count(ch, spec, D1) == 0
    pd.testing.assert_frame_equal(rollup_rows(ch, spec), rollup_before)  # the rollup is rebuilt the same
    # a hot day of the table still comes from Postgres
    assert replicate_partition(pg, ch, spec, D2, archive_uri=archive_uri).source == "hot"


def test_a_day_rebuilt_after_its_archive_is_replicated_from_hot_rows(pg, ch, warehouse_url, archive_uri, settings):
    spec = FCT_PRICES_HOURLY
    insert_hourly(pg, D1, ["NO1", "NO2"], 10.0)
    replicate_partition(pg, ch, spec, D1)
    assert archive(warehouse_url, archive_uri, settings, spec, D1) == 48

    # gold rebuilds the archived day (a backfill upstream): other zones and values; the archive is superseded
    insert_hourly(pg, D1, ["SE3"], 50.0 + 1 / 9)
    result = replicate_partition(pg, ch, spec, D1, archive_uri=archive_uri)
    assert (result.source, result.rows_loaded, result.pg_count, result.ch_count) == ("hot", 24, 24, 24)
    assert row_count_parity(pg, ch, spec, D1) == (24, 24)  # the hot build's count, not the archive's 48
    want = pg.execute(
        "SELECT zone, ts_utc, price_avg, price_min, price_max, n_obs FROM gold.fct_prices_hourly "
        "WHERE market_date = %s ORDER BY zone, ts_utc",
        (D1,),
    ).fetchall()
    got = ch.execute(
        "SELECT zone, ts_utc, price_avg, price_min, price_max, n_obs FROM fct_prices_hourly "
        "WHERE market_date = %(d)s ORDER BY zone, ts_utc",
        {"d": D1},
    )
    assert [(r[0], utc_naive(r[1]), *r[2:]) for r in want] == [(r[0], utc_naive(r[1]), *r[2:]) for r in got]

    # the rebuild is archived in its turn (nightly pass): the replica keeps it, from the new archive
    assert archive(warehouse_url, archive_uri, settings, spec, D1) == 24
    before = ch_rows(ch, spec, D1)
    again = replicate_partition(pg, ch, spec, D1, archive_uri=archive_uri)
    assert (again.source, again.ch_count) == ("archive", 24)
    assert ch_rows(ch, spec, D1) == before


def test_archive_values_convert_like_the_copy_path(pg, ch, warehouse_url, archive_uri, settings):
    """A `numeric` gold column is kept as text in the archive (`infra.retention.Column.as_text`) where the COPY
    path casts it to float8: both give ClickHouse the same doubles."""
    spec = KPI_VALUES
    pg.execute("ALTER TABLE gold.kpi_values ALTER COLUMN value TYPE numeric")
    pg.execute(
        """INSERT INTO gold.kpi_values (kpi_code, grain, zone, org_id, period_start, market_date, value)
           VALUES ('price_spread', 'day', 'PJM', NULL, '2024-03-30 04:00+00', %(d)s, 1::numeric / 3),
                  ('price_spread', 'hour', 'PJM', NULL, '2024-03-30 04:00:00.5+00', %(d)s, 0.1),
                  ('revenue', 'day', 'PJM', 'acme', '2024-03-29 23:00-05', %(d)s,
                   123456789.123456789012345678901234567890),
                  ('revenue', 'hour', 'PJM', 'acme', '2024-03-30 05:00+00', %(d)s, -2.5e-7)""",
        {"d": D1},
    )
    hot = replicate_partition(pg, ch, spec, D1)
    before = ch_rows(ch, spec, D1)
    assert hot.source == "hot" and len(before) == 4
    assert archive(warehouse_url, archive_uri, settings, spec, D1) == 4
    assert read_archive(archive_uri, spec.qualified_pg_name, D1).schema.field("value").type == pa.string()
    cold = replicate_partition(pg, ch, spec, D1, archive_uri=archive_uri)
    assert (cold.source, cold.ch_count) == ("archive", 4)
    assert ch_rows(ch, spec, D1) == before
