"""Replication of gold tables from Postgres to ClickHouse, one daily partition at a time.

What belongs here: ClickHouse DDL generated from the `ingestion.bi.tables` registry, the idempotent
per-day replication (`replicate_partition`) and the parity/duplicate checks the Dagster asset checks call
(`row_count_parity`, `duplicate_key_count`). No Dagster, no FastAPI.

Archived days: ClickHouse keeps the whole history, archived days included (BI tools read full history here;
Postgres' `bi.*` views see hot days only, they cannot read the Parquet cold tier). A gold day that retention
moved to the cold tier (`infra.retention`, recorded in `ops.archived_partitions`) has no hot rows left, so
re-replicating it from Postgres alone would empty it in ClickHouse. The day's source is therefore the same as
the warehouse's own combined read (`infra.retention.read_days`): its hot rows, or its archive when the day is
archived and hot storage holds no newer build of it (the gold tables are rebuilt whole: hot rows of an
archived day supersede the archive, `hot_rows_supersede`). Archived rows go through the same conversions as
the COPY path, and parity compares ClickHouse with that same source (the archive's recorded row count).

Layout in ClickHouse (database = the client's current database):
- base table per spec: `MergeTree`, `PARTITION BY toYYYYMM(<date column>)`, `ORDER BY` the spec's keys
  (zone, market, ts first: the common filters; Nullable columns such as `org_id`/`node` stay out of it);
- per rollup: an `AggregatingMergeTree` target partitioned the same way and a materialized view
  `<rollup>_mv` from the base table, so rows appended directly to the base table are rolled up.

Idempotent re-materialisation (re-running a day replaces that day, never duplicates it): ClickHouse 18.16
has no transactions and no lightweight DELETE, `ALTER TABLE ... DELETE` mutations are asynchronous there
(no `mutations_sync` setting yet) and neither mutations nor partition operations propagate to materialized
views. So a day is replaced by rebuilding its *month* partition in private staging tables and swapping it
in with `ALTER TABLE ... REPLACE PARTITION ... FROM` (atomic per table, available since 18.x):
  1. create staging copies of the base table and of each rollup target, with staging materialized views;
  2. `INSERT INTO stage SELECT` the month's other days from the base table, then insert the day's rows
     read from Postgres (COPY, binary, cast to the registry types) with columnar inserts - the staging
     views compute the rollups of the whole month as the rows go in;
  3. `REPLACE PARTITION` the base table and every rollup target from the staging tables; drop staging.
Replications of days of the same table are serialised with a Postgres advisory lock (two concurrent
rebuilds of one month would otherwise lose one day). The cost is rewriting one month of a table per day,
which is small for gold-layer grains.

SQL kept to what ClickHouse 18.16 and current releases both accept (and why; the BI tests run every statement
on Debian's 18.16 server and on the current engine in-process, chdb, and compare the two):
- root `<yandex>` config element (18.16 does not know `<clickhouse>`), engine syntax with `ORDER BY` /
  `PARTITION BY` clauses (not the legacy `MergeTree(date, key, 8192)` form, deprecated since);
- no `LowCardinality`, `DateTime64`, codecs, TTL, `SimpleAggregateFunction`, `Nullable` in keys
  (all newer than 18.16 or not allowed there): `String`, `DateTime('UTC')`, `Float64`, `Int64`;
- no `ALTER ... DELETE` for correctness (asynchronous on 18.16, invisible to views), no `FINAL` needed;
- no window functions, `toStartOfInterval`, `WITH FILL`, `ASOF JOIN` (analytics use arrays and
  `arrayJoin` instead, see `ingestion.bi.analytics`); joins are `ALL INNER JOIN ... USING` on subqueries,
  each with an alias (current releases refuse joined subqueries without one: `joined_subquery_requires_alias`);
- no server-side query parameters (`{name:Type}` is 19.x+): values are bound by clickhouse-driver's
  client-side escaping (`%(name)s`), identifiers only ever come from the registry.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from infra.retention import hot_rows_supersede, read_archive
from ingestion.bi.tables import TABLES, Column, Rollup, TableSpec

if TYPE_CHECKING:
    from clickhouse_driver import Client

INSERT_BATCH_ROWS = 100_000
_DEFAULTS = {
    "String": "''",
    "Float64": "0",
    "Int64": "0",
    "Date": "toDate(0)",
    "DateTime('UTC')": "toDateTime(0)",
}


class ParityError(RuntimeError):
    """Postgres and ClickHouse disagree after a replication."""


class ArchiveSourceError(RuntimeError):
    """The day must be replicated from the cold tier and cannot be (no archive URI, or the archive does not
    hold what `ops.archived_partitions` recorded); ClickHouse was left as it was."""


@dataclass(frozen=True)
class DaySource:
    """Where a day of a replicated table comes from: hot rows, the archive, or both.

    `archived_rows` is the row count `ops.archived_partitions` recorded for the day (None: not archived).
    The archive is read when the day is archived and hot storage holds no newer build of it (`supersede`:
    the table's days are rebuilt whole); for a table whose rows are only appended it would hold the older
    rows and the hot ones be additions, so both are read (the rule of `infra.retention.read_days`).
    """

    hot_rows: int
    archived_rows: int | None
    supersede: bool

    @property
    def reads_archive(self) -> bool:
        return self.archived_rows is not None and not (self.hot_rows and self.supersede)

    @property
    def reads_hot(self) -> bool:
        return not self.reads_archive or not self.supersede

    @property
    def row_count(self) -> int:
        """Rows the day has in its source, i.e. what ClickHouse must hold after a replication."""
        hot = self.hot_rows if self.reads_hot else 0
        return hot + ((self.archived_rows or 0) if self.reads_archive else 0)

    @property
    def name(self) -> str:
        return "+".join(n for n, used in (("archive", self.reads_archive), ("hot", self.reads_hot)) if used)


@dataclass(frozen=True)
class ReplicationResult:
    """What `replicate_partition` did for one table and day."""

    pg_table: str
    ch_table: str
    day: dt.date
    month_partition: int
    rows_loaded: int
    rows_in_month: int
    pg_count: int  # rows of the day in its source (hot rows, or the archive's for an archived day)
    ch_count: int
    seconds: float
    source: str = "hot"  # `DaySource.name`: hot, archive (or archive+hot for an append-only table)

    def as_metadata(self) -> dict[str, Any]:
        return {
            "pg_table": self.pg_table,
            "ch_table": self.ch_table,
            "day": self.day.isoformat(),
            "month_partition": self.month_partition,
            "rows_loaded": self.rows_loaded,
            "rows_in_month": self.rows_in_month,
            "pg_count": self.pg_count,
            "ch_count": self.ch_count,
            "seconds": round(self.seconds, 3),
            "source": self.source,
        }


def q(name: str) -> str:
    """A ClickHouse identifier in backquotes (names come from the validated registry only)."""
    return f"`{name}`"


def base_table_ddl(spec: TableSpec, table: str | None = None) -> str:
    """CREATE TABLE for the replicated copy of `spec` (MergeTree, month partitions, zone/ts order)."""
    cols = ",\n  ".join(f"{q(c.name)} {c.ch_column_type}" for c in spec.columns)
    return (
        f"CREATE TABLE IF NOT EXISTS {q(table or spec.ch_table)} (\n  {cols}\n) ENGINE = MergeTree\n"
        f"PARTITION BY toYYYYMM({q(spec.date_column)})\n"
        f"ORDER BY ({', '.join(q(k) for k in spec.order_by)})"
    )


def _state_type(func: str, arg_type: str) -> str:
    return f"AggregateFunction({func}, {arg_type})" if arg_type else f"AggregateFunction({func})"


def rollup_table_ddl(rollup: Rollup, table: str | None = None) -> str:
    """CREATE TABLE for a rollup target (AggregatingMergeTree of `-State` columns)."""
    cols = [f"{q(alias)} {ch_type}" for alias, _, ch_type in rollup.keys]
    cols += [f"{q(alias)} {_state_type(func, arg_type)}" for alias, func, _, arg_type in rollup.measures]
    return (
        f"CREATE TABLE IF NOT EXISTS {q(table or rollup.name)} (\n  " + ",\n  ".join(cols) + "\n) "
        f"ENGINE = AggregatingMergeTree\nPARTITION BY toYYYYMM({q(rollup.date_key)})\n"
        f"ORDER BY ({', '.join(q(alias) for alias, _, _ in rollup.keys)})"
    )


def rollup_view_ddl(rollup: Rollup, source: str, target: str, view: str) -> str:
    """CREATE MATERIALIZED VIEW that rolls rows inserted into `source` up into `target`."""
    keys = [f"{expr} AS {q(alias)}" for alias, expr, _ in rollup.keys]
    states = [f"{func}State({arg}) AS {q(alias)}" for alias, func, arg, _ in rollup.measures]
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {q(view)} TO {q(target)} AS\n"
        f"SELECT {', '.join(keys + states)}\nFROM {q(source)}\n"
        f"GROUP BY {', '.join(q(alias) for alias, _, _ in rollup.keys)}"
    )


def rollup_select_sql(rollup: Rollup) -> str:
    """SELECT that reads a rollup target with `-Merge` combinators (finalised values per key)."""
    keys = [q(alias) for alias, _, _ in rollup.keys]
    measures = [f"{func}Merge({q(alias)}) AS {q(alias)}" for alias, func, _, _ in rollup.measures]
    return f"SELECT {', '.join(keys + measures)} FROM {q(rollup.name)} GROUP BY {', '.join(keys)}"


def ensure_clickhouse_schema(ch: Client, specs: Iterable[TableSpec] | None = None) -> list[str]:
    """Create the base tables, rollup targets and rollup views that do not exist yet; returns table names."""
    created: list[str] = []
    for spec in specs or TABLES.values():
        ch.execute(base_table_ddl(spec))
        created.append(spec.ch_table)
        for rollup in spec.rollups:
            ch.execute(rollup_table_ddl(rollup))
            ch.execute(rollup_view_ddl(rollup, spec.ch_table, rollup.name, f"{rollup.name}_mv"))
            created.append(rollup.name)
    return created


def _month_partition(day: dt.date) -> int:
    return day.year * 100 + day.month


def _advisory_key(spec: TableSpec) -> int:
    digest = hashlib.blake2b(f"optibid.clickhouse.{spec.ch_table}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _copy_statement(spec: TableSpec) -> sql.Composed:
    cols = sql.SQL(", ").join(
        sql.SQL("{}::{}").format(sql.Identifier(c.name), sql.SQL(c.pg_type)) for c in spec.columns
    )
    return sql.SQL("COPY (SELECT {} FROM {}.{} WHERE {} = {}) TO STDOUT (FORMAT BINARY)").format(
        cols,
        sql.Identifier(spec.pg_schema),
        sql.Identifier(spec.pg_table),
        sql.Identifier(spec.date_column),
        sql.Placeholder(),
    )


def _to_clickhouse_value(value: Any, ch_type: str) -> Any:
    if value is None:
        return None
    if ch_type.startswith("DateTime") and isinstance(value, dt.datetime) and value.tzinfo is not None:
        # DateTime('UTC') columns take naive UTC datetimes; aware ones would depend on the client timezone
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def pg_day_batches(
    pg_conn: psycopg.Connection, spec: TableSpec, day: dt.date, batch_rows: int = INSERT_BATCH_ROWS
) -> Iterable[list[list[Any]]]:
    """The day's rows of `spec` from Postgres as column lists of at most `batch_rows` rows (binary COPY)."""
    ncols = len(spec.columns)
    ch_types = [c.ch_type for c in spec.columns]
    date_idx = spec.column_names.index(spec.date_column)
    with pg_conn.cursor() as cur, cur.copy(_copy_statement(spec), (day,)) as copy:
        copy.set_types([c.pg_type for c in spec.columns])
        columns: list[list[Any]] = [[] for _ in range(ncols)]
        for row in copy.rows():
            if row[date_idx] != day:
                raise ValueError(f"{spec.qualified_pg_name}: row outside day {day}: {row!r}")
            for i in range(ncols):
                columns[i].append(_to_clickhouse_value(row[i], ch_types[i]))
            if len(columns[0]) >= batch_rows:
                yield columns
                columns = [[] for _ in range(ncols)]
        if columns[0]:
            yield columns


# The archive keeps a column as its Postgres text form when its type has no plain Arrow equivalent
# (`infra.retention.Column.as_text`: numeric, jsonb, ...), where the COPY path casts it to the registry's
# `pg_type`; these parsers give the value that cast gives (Python's float() and Postgres' numeric -> float8
# both round the decimal text to the nearest double).
_FROM_TEXT: dict[str, Any] = {
    "Float64": float,
    "Int64": lambda text: int(Decimal(text).to_integral_value(ROUND_HALF_UP)),  # numeric -> int8 rounds away
    "Date": dt.date.fromisoformat,
    "DateTime('UTC')": dt.datetime.fromisoformat,  # Postgres' text form (`+00` offsets) parses since 3.11
}


def _archive_value(value: Any, column: Column) -> Any:
    if isinstance(value, str) and column.ch_type != "String":
        value = _FROM_TEXT[column.ch_type](value)
    return _to_clickhouse_value(value, column.ch_type)


def archive_day_batches(
    archive_uri: str, spec: TableSpec, day: dt.date, batch_rows: int = INSERT_BATCH_ROWS
) -> Iterable[list[list[Any]]]:
    """The day's archived rows of `spec` (`infra.retention.read_archive`) as column lists of at most
    `batch_rows` rows, with the values `pg_day_batches` gives for the same rows read hot."""
    data = read_archive(archive_uri, spec.qualified_pg_name, day)
    missing = [c for c in spec.column_names if c not in data.column_names]
    if missing:
        raise ArchiveSourceError(f"{spec.qualified_pg_name} {day}: the archive has no column(s) {missing}")
    date_idx = spec.column_names.index(spec.date_column)
    for batch in data.select(list(spec.column_names)).to_batches(max_chunksize=batch_rows):
        columns = [
            [_archive_value(v, col) for v in batch.column(i).to_pylist()] for i, col in enumerate(spec.columns)
        ]
        outside = [v for v in columns[date_idx] if v != day]
        if outside:
            raise ValueError(f"{spec.qualified_pg_name}: archived row outside day {day}: {outside[0]!r}")
        if columns[0]:
            yield columns


def day_source(pg_conn: psycopg.Connection, spec: TableSpec, day: dt.date) -> DaySource:
    """Where `day` of `spec` is replicated from (see `DaySource`): its hot row count and archive record."""
    count = sql.SQL("SELECT count(*) FROM {}.{} WHERE {} = %s").format(
        sql.Identifier(spec.pg_schema), sql.Identifier(spec.pg_table), sql.Identifier(spec.date_column)
    )
    with pg_conn.cursor() as cur:
        cur.execute(count, (day,))
        (hot_rows,) = cur.fetchone()  # type: ignore[misc]
        archived_rows = None
        # A warehouse without the retention migration (a bare test database) has archived nothing.
        cur.execute("SELECT to_regclass('ops.archived_partitions') IS NOT NULL")
        if cur.fetchone() == (True,):
            cur.execute(
                """SELECT row_count FROM ops.archived_partitions
                   WHERE table_name = %s AND day = %s AND restored_at IS NULL""",
                (spec.qualified_pg_name, day),
            )
            record = cur.fetchone()
            archived_rows = int(record[0]) if record else None
    return DaySource(int(hot_rows), archived_rows, hot_rows_supersede(spec.qualified_pg_name))


def _stage_names(spec: TableSpec, day: dt.date) -> tuple[str, dict[str, tuple[str, str]]]:
    suffix = f"__stage_{day:%Y%m%d}_{uuid.uuid4().hex[:8]}"
    base = f"{spec.ch_table}{suffix}"
    rollups = {r.name: (f"{r.name}{suffix}", f"{r.name}{suffix}_mv") for r in spec.rollups}
    return base, rollups


def stale_staging_tables(ch_client: Client, spec: TableSpec) -> list[str]:
    """Staging tables/views of `spec` in the current database (views first, so they can be dropped in order).

    Only safe to drop while holding the table's replication lock: otherwise they may belong to a running
    replication.
    """
    prefixes = [f"{name}__stage_" for name in (spec.ch_table, *(r.name for r in spec.rollups))]
    rows = ch_client.execute("SELECT name, engine FROM system.tables WHERE database = currentDatabase()")
    names = [(name, engine) for name, engine in rows if any(name.startswith(p) for p in prefixes)]
    return [n for n, e in names if e == "MaterializedView"] + [n for n, e in names if e != "MaterializedView"]


def _drop_quietly(ch: Client, names: Sequence[str]) -> None:
    for name in names:
        with contextlib.suppress(Exception):  # cleanup must not hide the error that got us here
            ch.execute(f"DROP TABLE IF EXISTS {q(name)}")


def _advisory_unlock(pg_conn: psycopg.Connection, key: int) -> None:
    if pg_conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
        pg_conn.rollback()  # the failed COPY's transaction; session advisory locks survive rollback
    with pg_conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_unlock(%s)", (key,))


def row_count_parity(
    pg_conn: psycopg.Connection, ch_client: Client, table_spec: TableSpec, day: dt.date
) -> tuple[int, int]:
    """(warehouse row count, ClickHouse row count) of `table_spec` for `day`.

    The warehouse count is the day's source's (`day_source`): an archived day without a newer hot build
    counts the rows its archive holds (as recorded when it was archived and verified), so an archived day
    missing from ClickHouse fails parity instead of passing as 0 == 0.
    """
    pg_count = day_source(pg_conn, table_spec, day).row_count
    ch_count = ch_client.execute(
        f"SELECT count() FROM {q(table_spec.ch_table)} WHERE {q(table_spec.date_column)} = %(day)s",
        {"day": day},
    )[0][0]
    return int(pg_count), int(ch_count)


def duplicate_key_count(ch_client: Client, table_spec: TableSpec, day: dt.date) -> int:
    """Rows of `day` in ClickHouse beyond the first per grain key (0 when the grain is unique).

    NULL counts as a value (as in the dbt uniqueness tests): aggregate functions skip rows with a NULL
    argument, so a Nullable key column enters as (isNull(c), ifNull(c, <default>)).
    """
    parts = []
    for name in table_spec.grain_key:
        col = table_spec.column(name)
        parts += (
            [f"isNull({q(name)})", f"ifNull({q(name)}, {_DEFAULTS[col.ch_type]})"]
            if col.nullable
            else [q(name)]
        )
    key = ", ".join(parts)
    return int(
        ch_client.execute(
            f"SELECT count() - uniqExact({key}) FROM {q(table_spec.ch_table)} "
            f"WHERE {q(table_spec.date_column)} = %(day)s",
            {"day": day},
        )[0][0]
    )


def replicate_partition(
    pg_conn: psycopg.Connection,
    ch_client: Client,
    table_spec: TableSpec,
    day: dt.date,
    *,
    archive_uri: str | None = None,
    check_parity: bool = True,
) -> ReplicationResult:
    """Replace `day` of `table_spec` in ClickHouse (and its rollups) with the rows the warehouse has now: the
    day's hot rows in Postgres, or its archive in the cold tier at `archive_uri` (`OPTIBID_ARCHIVE_URI`) when
    retention archived it and no newer build is hot (`day_source`).

    Idempotent: running it again for the same day gives the same ClickHouse contents. Creates missing
    ClickHouse objects first and removes staging tables a crashed run of this table left behind.
    `pg_conn` may be in autocommit mode or not; nothing is written to Postgres (only a session advisory
    lock is taken and released). Raises `ParityError` when `check_parity` and the day's counts differ
    afterwards (e.g. the day changed in Postgres during the copy: re-run it). Raises `ArchiveSourceError`,
    ClickHouse untouched, when the day must come from the archive and `archive_uri` is None (replicating
    the empty hot day would delete it from ClickHouse) or the archive does not hold the recorded rows.
    """
    started = time.perf_counter()
    spec = table_spec
    ensure_clickhouse_schema(ch_client, [spec])
    month = _month_partition(day)
    stage, rollup_stages = _stage_names(spec, day)
    cols = ", ".join(q(c) for c in spec.column_names)
    lock_key = _advisory_key(spec)
    with pg_conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (lock_key,))
    try:
        _drop_quietly(ch_client, stale_staging_tables(ch_client, spec))  # left by a crashed earlier run
        source = day_source(pg_conn, spec, day)
        if source.reads_archive and archive_uri is None:
            raise ArchiveSourceError(
                f"{spec.qualified_pg_name} {day} is archived: pass archive_uri to replicate it from the cold tier"
            )
        ch_client.execute(base_table_ddl(spec, stage))
        for rollup in spec.rollups:
            target, view = rollup_stages[rollup.name]
            ch_client.execute(rollup_table_ddl(rollup, target))
            ch_client.execute(rollup_view_ddl(rollup, stage, target, view))
        ch_client.execute(
            f"INSERT INTO {q(stage)} ({cols}) SELECT {cols} FROM {q(spec.ch_table)} "
            f"WHERE toYYYYMM({q(spec.date_column)}) = %(month)s AND {q(spec.date_column)} != %(day)s",
            {"month": month, "day": day},
        )
        loaded = 0
        if source.reads_archive:
            assert archive_uri is not None  # checked above, before ClickHouse was touched
            for columns in archive_day_batches(archive_uri, spec, day):
                ch_client.execute(f"INSERT INTO {q(stage)} ({cols}) VALUES", columns, columnar=True)
                loaded += len(columns[0])
            if loaded != source.archived_rows:
                # Nothing swapped in yet: the replica keeps the day as it was rather than a partial archive.
                raise ArchiveSourceError(
                    f"{spec.qualified_pg_name} {day}: the archive holds {loaded} rows, "
                    f"ops.archived_partitions recorded {source.archived_rows}"
                )
        if source.reads_hot:
            for columns in pg_day_batches(pg_conn, spec, day):
                ch_client.execute(f"INSERT INTO {q(stage)} ({cols}) VALUES", columns, columnar=True)
                loaded += len(columns[0])
        rows_in_month = int(ch_client.execute(f"SELECT count() FROM {q(stage)}")[0][0])
        swaps = [(spec.ch_table, stage)] + [(r.name, rollup_stages[r.name][0]) for r in spec.rollups]
        for target, staged in swaps:
            if rows_in_month:
                ch_client.execute(f"ALTER TABLE {q(target)} REPLACE PARTITION {month} FROM {q(staged)}")
            else:
                # REPLACE from an empty partition is not portable across versions; dropping is the same result
                ch_client.execute(f"ALTER TABLE {q(target)} DROP PARTITION {month}")
    finally:
        views = [v for _, v in rollup_stages.values()]
        _drop_quietly(ch_client, [*views, *(t for t, _ in rollup_stages.values()), stage])
        _advisory_unlock(pg_conn, lock_key)
    pg_count, ch_count = row_count_parity(pg_conn, ch_client, spec, day)
    if check_parity and pg_count != ch_count:
        raise ParityError(
            f"{spec.qualified_pg_name} {day}: the warehouse has {pg_count} rows, ClickHouse {ch_count} "
            f"(loaded {loaded} from {source.name}; the day changed or was archived during the copy?)"
        )
    return ReplicationResult(
        pg_table=spec.qualified_pg_name,
        ch_table=spec.ch_table,
        day=day,
        month_partition=month,
        rows_loaded=loaded,
        rows_in_month=rows_in_month,
        pg_count=pg_count,
        ch_count=ch_count,
        seconds=time.perf_counter() - started,
        source=source.name,
    )
