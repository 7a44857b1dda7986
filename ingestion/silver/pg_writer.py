"""Spark DataFrame -> Postgres: COPY from every Spark partition into staging, then one set-based merge.

Belongs here: the reusable write path of every silver table. Each Spark partition streams its Arrow batches as
CSV through psycopg 3 `cursor.copy` into an UNLOGGED staging table (schema `stage`, created like the target);
afterwards the driver runs, in ONE transaction, each write's replacement delete, an
`INSERT ... ON CONFLICT DO UPDATE` from staging, and an optional `finalize` step (e.g. a watermark), so readers
see either the old or the new state of every table in the write. No JDBC and no row-by-row inserts.

The executors connect to Postgres themselves, with the URL they are handed: on a cluster it must name a host
they can reach, not a Unix socket of the driver's machine (`check_reachable_from_executors`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pyspark.sql import DataFrame, SparkSession

from infra.db import connect


@dataclass(frozen=True)
class ReplaceWhere:
    """Delete the target rows matching `predicate` (SQL with %s placeholders) before inserting."""

    predicate: str
    params: tuple[object, ...] = ()


@dataclass(frozen=True)
class ReplaceKeys:
    """Delete the target rows whose `columns` match a row of `keys` (a DataFrame) before inserting."""

    keys: DataFrame
    columns: tuple[str, ...]


@dataclass(frozen=True)
class TableWrite:
    """One DataFrame to merge into `target` (schema.table), upserting on `key_columns`; `df` None = no rows."""

    df: DataFrame | None
    target: str
    key_columns: tuple[str, ...]
    replace: ReplaceWhere | ReplaceKeys | None = None
    # Postgres UNIQUE constraint to upsert on, when the key has nullable columns (NULLS NOT DISTINCT).
    conflict_constraint: str | None = None


@dataclass
class WriteResult:
    """Rows staged and inserted per target, and rows deleted by replacement."""

    staged: dict[str, int] = field(default_factory=dict)
    staged_keys: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    upserted: dict[str, int] = field(default_factory=dict)


def _qualified(name: str) -> sql.Composed:
    schema, _, table = name.rpartition(".")
    return sql.SQL(".").join([sql.Identifier(schema or "public"), sql.Identifier(table)])


def _copy_partition_function(
    database_url: str, staging_table: str, columns: Sequence[str]
) -> Callable[[Iterator], Iterator]:
    """The mapInArrow function that COPYs one Spark partition's batches into `staging_table`."""
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        _qualified(staging_table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )

    def copy_partition(batches: Iterator) -> Iterator:
        import itertools

        import pyarrow as pa
        import pyarrow.csv as pacsv

        batches = iter(batches)
        first = next((b for b in batches if b.num_rows), None)
        rows = 0
        if first is not None:  # empty partitions never open a connection
            with psycopg.connect(database_url) as conn, conn.cursor() as cursor, cursor.copy(copy_sql) as copy:
                for batch in itertools.chain([first], batches):
                    buffer = pa.BufferOutputStream()
                    # Strings are always quoted and NULLs are bare empty fields, so '' and NULL stay distinct.
                    pacsv.write_csv(batch, buffer, write_options=pacsv.WriteOptions(include_header=False))
                    copy.write(buffer.getvalue())
                    rows += batch.num_rows
        yield pa.RecordBatch.from_pydict({"rows": pa.array([rows], pa.int64())})

    return copy_partition


def copy_dataframe_to_staging(df: DataFrame, database_url: str, like: str, columns: Sequence[str]) -> tuple[str, int]:
    """Name of a new staging table shaped like `like` (those columns) filled from `df`, and its row count."""
    check_reachable_from_executors(_session_master(df.sparkSession), database_url)
    staging = f"stage.{like.rpartition('.')[2][:40]}_{uuid.uuid4().hex[:12]}"
    with connect(database_url) as conn:
        conn.execute(
            sql.SQL("CREATE UNLOGGED TABLE {} AS SELECT {} FROM {} WITH NO DATA").format(
                _qualified(staging), sql.SQL(", ").join(map(sql.Identifier, columns)), _qualified(like)
            )
        )
    frame = df.select(*columns)
    parallelism = _copy_streams(df)
    if parallelism:
        # One COPY stream per core is what the database can absorb; more (tiny) partitions only add tasks.
        frame = frame.coalesce(parallelism)
    counts = frame.mapInArrow(
        _copy_partition_function(database_url, staging, list(columns)), "rows long"
    ).collect()
    return staging, sum(row["rows"] for row in counts)


def check_reachable_from_executors(master: str | None, database_url: str) -> None:
    """Fail clearly when executors of `master` could not open `database_url`: a Unix socket seen from other hosts.

    A socket is a file of the driver's machine, so only executors on that machine can use it: a `local` master,
    or a standalone master on the loopback address (its workers are then on this machine too). `master` None
    (a Connect server that does not say) is not checked.
    """
    hosts = str(conninfo_to_dict(database_url).get("host") or "")
    if not any(host == "" or host.startswith(("/", "@")) for host in hosts.split(",")):
        return  # TCP hosts: the executors get the same answer as the driver
    if master is None or master.startswith("local"):
        return
    if any(master.startswith(f"spark://{loopback}") for loopback in ("127.0.0.1", "localhost", "[::1]")):
        return
    raise ValueError(
        f"the Spark master {master} runs executors on other machines, which write to Postgres themselves, but "
        "OPTIBID_DATABASE_URL names a Unix socket of this machine: set it to a host and port they can reach"
    )


def _session_master(spark: SparkSession) -> str | None:
    try:
        return spark.conf.get("spark.master")
    except Exception:  # a Connect server need not expose its master
        return None


def _copy_streams(df: DataFrame) -> int | None:
    """Cores of the cluster, or None where the session does not expose them (Spark Connect)."""
    try:
        return max(1, df.sparkSession.sparkContext.defaultParallelism)
    except Exception:  # Spark Connect sessions have no SparkContext
        return None


def drop_staging(database_url: str, tables: Sequence[str]) -> None:
    with connect(database_url) as conn:
        for table in tables:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(_qualified(table)))


def _merge_statement(write: TableWrite, staging: str, columns: Sequence[str]) -> sql.Composed:
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    conflict = (
        sql.SQL("ON CONSTRAINT {}").format(sql.Identifier(write.conflict_constraint))
        if write.conflict_constraint
        else sql.SQL("({})").format(sql.SQL(", ").join(map(sql.Identifier, write.key_columns)))
    )
    updates = [c for c in columns if c not in write.key_columns]
    action = (
        sql.SQL("DO UPDATE SET {}").format(
            sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates)
        )
        if updates
        else sql.SQL("DO NOTHING")
    )
    return sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT {} {}").format(
        _qualified(write.target), cols, cols, _qualified(staging), conflict, action
    )


def merge_dataframes(
    database_url: str,
    writes: Sequence[TableWrite],
    finalize: Callable[[psycopg.Connection], None] | None = None,
) -> WriteResult:
    """Stage every write by COPY from Spark partitions, then apply all of them (and `finalize`) in one transaction.

    Replacement deletes run before the inserts, so a re-run of the same window or keys is idempotent.
    """
    result = WriteResult()
    staged_tables: list[str] = []
    try:
        plans: list[tuple[TableWrite, str | None, list[str], str | None]] = []
        keys_staged: dict[tuple[int, tuple[str, ...]], tuple[str, int]] = {}
        for write in writes:
            staging, columns = None, []
            result.staged[write.target] = 0
            if write.df is not None:
                columns = list(write.df.columns)
                staging, rows = copy_dataframe_to_staging(write.df, database_url, write.target, columns)
                staged_tables.append(staging)
                result.staged[write.target] = rows
            keys_staging = None
            if isinstance(write.replace, ReplaceKeys):
                # Writes replacing the same keys (a history and its current table) share one staged key set.
                reuse = (id(write.replace.keys), write.replace.columns)
                if reuse not in keys_staged:
                    name, rows = copy_dataframe_to_staging(
                        write.replace.keys.select(*write.replace.columns).distinct(),
                        database_url,
                        write.target,
                        list(write.replace.columns),
                    )
                    staged_tables.append(name)
                    keys_staged[reuse] = (name, rows)
                keys_staging, result.staged_keys[write.target] = keys_staged[reuse]
            plans.append((write, staging, columns, keys_staging))

        with connect(database_url) as conn:
            for write, staging, columns, keys_staging in plans:
                deleted = 0
                if isinstance(write.replace, ReplaceWhere):
                    cur = conn.execute(
                        sql.SQL("DELETE FROM {} WHERE ").format(_qualified(write.target))
                        + sql.SQL(write.replace.predicate),  # type: ignore[arg-type]  # predicates are code constants
                        write.replace.params,
                    )
                    deleted = cur.rowcount
                elif isinstance(write.replace, ReplaceKeys):
                    match = sql.SQL(" AND ").join(
                        sql.SQL("t.{0} = k.{0}").format(sql.Identifier(c)) for c in write.replace.columns
                    )
                    cur = conn.execute(
                        sql.SQL("DELETE FROM {} t USING {} k WHERE {}").format(
                            _qualified(write.target), _qualified(keys_staging or ""), match
                        )
                    )
                    deleted = cur.rowcount
                result.deleted[write.target] = deleted
                result.upserted[write.target] = 0
                if staging is not None:
                    cur = conn.execute(_merge_statement(write, staging, columns))
                    result.upserted[write.target] = cur.rowcount
            if finalize is not None:
                finalize(conn)
    finally:
        if staged_tables:
            drop_staging(database_url, staged_tables)
    return result
