"""Spark DataFrame -> Postgres: Arrow batches from Spark, COPY in one transaction, merges that touch only what changed.

Belongs here: the reusable write path of every silver table. Each write's DataFrame comes back from the JVM as
Arrow record batches (`DataFrame.toArrow`: no Python workers, no per-partition connections) and is COPied
through psycopg 3 (Postgres's binary format, encoded by pgpq, where the column types allow; else CSV) into a TEMP
staging table of the one connection that then applies, in ONE transaction, each write's replacement, its merge
and an optional `finalize` step (e.g. a watermark), so readers see either the old or the new state of every table
in the write. Spark computes the next write while the previous one is COPied.

Merges change only what differs: a window replacement whose window is still empty COPies straight into the
target (a large first load of an empty table builds the table's indexes once, after its rows: `_BulkLoads`);
otherwise rows of the window whose key is no longer produced are deleted, new keys inserted, and rows updated only
where a value differs (an unchanged day re-run writes nothing). No JDBC, no row-by-row inserts.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from pgpq import ArrowToPostgresBinaryEncoder
from psycopg import sql
from pyspark.sql import DataFrame

from infra.db import connect

# Rows per CSV chunk handed to COPY: large enough to amortise the Python call, small enough to stay cache-warm.
COPY_CHUNK_ROWS = 65_536
# A first load of at least this many rows into an empty table drops its indexes and builds them after the rows.
# Below it, maintaining them row by row costs a second or so, and the table is not locked against its readers.
BULK_LOAD_ROWS = 200_000
# Sort memory of those index builds (Postgres's default, 64 MB, sorts a year of price revisions on disk).
BULK_INDEX_MEMORY_MB = 512
# How long a bulk load waits for the table's lock (held by a reader) before it loads row by row instead.
BULK_LOCK_TIMEOUT = "2s"
# Planner settings of a write's transaction. Its merges join staged rows to a window's rows on keys of up to
# seven columns: the planner prices hash joins on that many columns high and picks merge joins, whose sorts of
# text keys under a non-C collation, spilled to disk at the default 4 MB, took 830 ms of a day's 146,000 price
# revisions where a hash join took 185 ms. JIT compiles expressions (~200 ms) for joins that run once.
MERGE_SETTINGS = {"enable_mergejoin": "off", "work_mem": "64MB", "jit": "off"}


@dataclass(frozen=True)
class ReplaceWhere:
    """Replace the target rows matching `predicate` (SQL with %s placeholders) by the write's rows."""

    predicate: str
    params: tuple[object, ...] = ()


@dataclass(frozen=True)
class ReplaceKeys:
    """Delete the target rows whose `columns` match a row of `keys` (a DataFrame) before inserting."""

    keys: DataFrame
    columns: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Derived:
    """Rows computed on the driver from Arrow rows: an earlier write's (`source` is that write's target) or a
    DataFrame's that several writes share (collected once, by the first write that names it).

    For a table that is a projection of another one (the winning rows of a revision trail), or for several small
    tables computed by one Spark job: no second job over the same rows.
    """

    source: str | DataFrame
    rows: Callable[[pa.Table], pa.Table]


@dataclass(frozen=True)
class TableWrite:
    """Rows to merge into `target` (schema.table), upserting on `key_columns`; `df` None = no rows."""

    df: DataFrame | Derived | None
    target: str
    key_columns: tuple[str, ...]
    replace: ReplaceWhere | ReplaceKeys | None = None
    # Postgres UNIQUE constraint to upsert on, when the key has nullable columns (NULLS NOT DISTINCT).
    conflict_constraint: str | None = None


@dataclass
class WriteResult:
    """Per target: rows staged (produced by Spark), rows deleted, rows inserted and rows updated.

    `replaced` is how many rows the write's replacement covered before it ran (deleted, updated or left
    identical): for a window replacement, the rows the window held.
    """

    staged: dict[str, int] = field(default_factory=dict)
    staged_keys: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    inserted: dict[str, int] = field(default_factory=dict)
    updated: dict[str, int] = field(default_factory=dict)
    replaced: dict[str, int] = field(default_factory=dict)
    # Where the time went: waiting for Spark's Arrow rows, and applying them in Postgres (COPY and merge).
    spark_wait_s: dict[str, float] = field(default_factory=dict)
    postgres_s: dict[str, float] = field(default_factory=dict)
    # Of postgres_s: building the indexes of tables first loaded into a bare heap (`_BulkLoads`).
    index_build_s: dict[str, float] = field(default_factory=dict)

    @property
    def upserted(self) -> dict[str, int]:
        """Rows inserted or updated per target."""
        return {t: self.inserted.get(t, 0) + self.updated.get(t, 0) for t in self.staged}


def _qualified(name: str) -> sql.Composed:
    schema, _, table = name.rpartition(".")
    return sql.SQL(".").join([sql.Identifier(schema or "public"), sql.Identifier(table)])


def _columns(columns: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(map(sql.Identifier, columns))


# Arrow types whose Postgres binary form pgpq writes, and the column types that read that form.
BINARY_COPY_TYPES: dict[pa.DataType, frozenset[str]] = {
    pa.int16(): frozenset({"smallint"}),
    pa.int32(): frozenset({"integer"}),
    pa.int64(): frozenset({"bigint"}),
    pa.float32(): frozenset({"real"}),
    pa.float64(): frozenset({"double precision"}),
    pa.bool_(): frozenset({"boolean"}),
    pa.string(): frozenset({"text", "character varying"}),
    pa.large_string(): frozenset({"text", "character varying"}),
    pa.date32(): frozenset({"date"}),
    pa.timestamp("us", tz="UTC"): frozenset({"timestamp with time zone"}),
    pa.timestamp("us"): frozenset({"timestamp without time zone"}),
}


def column_types(conn: psycopg.Connection, table: sql.Composable) -> dict[str, str]:
    """`table`'s columns and their Postgres types (`format_type`, e.g. 'timestamp with time zone')."""
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (table.as_string(conn),),
    ).fetchall()
    return {name: kind for name, kind in rows}


def binary_copyable(schema: pa.Schema, types: dict[str, str]) -> bool:
    """Whether every column of `schema` can be COPied in Postgres's binary format into the same-named column."""
    return all(types.get(f.name) in BINARY_COPY_TYPES.get(f.type, ()) for f in schema)


def copy_arrow(conn: psycopg.Connection, table: sql.Composable, data: pa.Table) -> int:
    """COPY `data` into `table` (its columns, by name) on `conn`; the rows written.

    In Postgres's binary format when every column's type allows (about twice the rows per second of CSV: the
    server parses no text, timestamps least of all), else as CSV.
    """
    if data.num_rows == 0:
        return 0
    columns = _columns(data.column_names)
    with conn.cursor() as cursor:
        if binary_copyable(data.schema, column_types(conn, table)):
            encoder = ArrowToPostgresBinaryEncoder(data.schema)
            statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(table, columns)
            with cursor.copy(statement) as copy:
                copy.write(encoder.write_header())
                for batch in data.to_batches(max_chunksize=COPY_CHUNK_ROWS):
                    copy.write(encoder.write_batch(batch))
                copy.write(encoder.finish())
            return data.num_rows
        # Strings are always quoted and NULLs are bare empty fields, so '' and NULL stay distinct.
        options = pacsv.WriteOptions(include_header=False)
        with cursor.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(table, columns)) as copy:
            for batch in data.to_batches(max_chunksize=COPY_CHUNK_ROWS):
                buffer = pa.BufferOutputStream()
                pacsv.write_csv(batch, buffer, write_options=options)
                copy.write(buffer.getvalue())
    return data.num_rows


def _temp_like(conn: psycopg.Connection, like: str, columns: Sequence[str]) -> sql.Identifier:
    """A TEMP table (dropped at commit) with `columns` of table `like`."""
    name = sql.Identifier(f"stage_{like.rpartition('.')[2][:40]}_{uuid.uuid4().hex[:8]}")
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
            name, _columns(columns), _qualified(like)
        )
    )
    return name


def _nullable(conn: psycopg.Connection, table: str) -> set[str]:
    schema, _, name = table.rpartition(".")
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s AND is_nullable = 'YES'",
        (schema or "public", name),
    ).fetchall()
    return {r[0] for r in rows}


def _key_match(key: Sequence[str], nullable: set[str], left: str, right: str) -> sql.Composed:
    """`left` and `right` rows have the same key, NULL equal to NULL, as a hashable join condition."""

    def side(alias: str, column: str) -> sql.Composable:
        ref = sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(column))
        # IS NOT DISTINCT FROM cannot be hashed; a text form with a NULL marker can.
        return sql.SQL("coalesce({}::text, E'\\\\N')").format(ref) if column in nullable else ref

    return sql.SQL(" AND ").join(sql.SQL("{} = {}").format(side(left, c), side(right, c)) for c in key)


def _conflict(write: TableWrite) -> sql.Composable:
    if write.conflict_constraint:
        return sql.SQL("ON CONSTRAINT {}").format(sql.Identifier(write.conflict_constraint))
    return sql.SQL("({})").format(_columns(write.key_columns))


def _aliased(alias: str, columns: Sequence[str]) -> sql.Composed:
    """`alias.c1, alias.c2, ...`"""
    return sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c)) for c in columns)


def _upsert(
    conn: psycopg.Connection,
    write: TableWrite,
    source: sql.Composable,
    columns: Sequence[str],
    params: Sequence[object] | None = None,
) -> tuple[int, int]:
    """Insert the rows of query `source` (its columns are `columns`) whose key is new, and update the rows whose
    values differ; (inserted, updated)."""
    updates = [c for c in columns if c not in write.key_columns]
    if updates:
        action = sql.SQL("DO UPDATE SET {} WHERE ({}) IS DISTINCT FROM ({})").format(
            sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates),
            _aliased("t", updates),
            _aliased("excluded", updates),
        )
    else:
        action = sql.SQL("DO NOTHING")
    # xmax is 0 on a freshly inserted row version and set on an updated one.
    row = conn.execute(
        sql.SQL(
            "WITH changed AS (INSERT INTO {} AS t ({}) {} ON CONFLICT {} {} "
            "RETURNING (t.xmax = 0) AS ins) "
            "SELECT count(*) FILTER (WHERE ins), count(*) FILTER (WHERE NOT ins) FROM changed"
        ).format(_qualified(write.target), _columns(columns), source, _conflict(write), action),
        params,
    ).fetchone()
    return int(row[0]), int(row[1])


class _BulkLoads:
    """The targets this transaction first-loads into a bare heap, and the indexes to build before it commits.

    Postgres builds an index from all of a table's rows, sorted once, several times faster than it inserts the same
    rows one by one into it (2 M price revisions: 15.5 s with the key and date indexes in place; 3.4 s into the
    bare table plus 3.9 s building both). So the first write of at least `BULK_LOAD_ROWS` rows into an empty table
    drops the table's indexes, constraints' included, every later write of the transaction COPies into the bare
    heap, and the indexes are rebuilt once before commit, as pg_restore does, and the table analyzed. A write
    that must merge with rows already there rebuilds them first. The table stays locked (ACCESS EXCLUSIVE) until
    commit: a reader of a table being first loaded waits for its rows instead of seeing none. Tables this role
    does not own, partitioned tables and tables whose keys are referenced by foreign keys load row by row.
    """

    def __init__(self) -> None:
        self._indexes: dict[str, list[sql.Composable]] = {}  # per target, the statements that rebuild them
        self.seconds: dict[str, float] = {}

    def start(self, conn: psycopg.Connection, target: str, rows: int) -> None:
        """Drop `target`'s indexes if this write is the first load of an empty table (see the class)."""
        if rows < BULK_LOAD_ROWS or target in self._indexes:
            return
        table = _qualified(target)
        if conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(table)).fetchone()[0]:
            return
        # Every index of the table, each with whether this role may drop it and rebuild it from its definition.
        indexes = conn.execute(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), con.conname, "
            "pg_get_constraintdef(con.oid), c.relkind = 'r' AND pg_has_role(c.relowner, 'USAGE') "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.conindid = i.indexrelid AND f.contype = 'f') "
            "FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
            "LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid "
            "WHERE i.indrelid = %s::regclass",
            (table.as_string(conn),),
        ).fetchall()
        if not indexes or not all(droppable for *_, droppable in indexes):
            return
        try:
            with conn.transaction():  # a savepoint: a lock that cannot be had leaves the transaction as it was
                previous = conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0]
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (BULK_LOCK_TIMEOUT,))
                conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (previous,))
        except psycopg.errors.LockNotAvailable:
            return
        # Rows another transaction committed while this one waited for the lock: no longer a first load.
        if conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(table)).fetchone()[0]:
            return
        rebuild: list[sql.Composable] = []
        for index, definition, constraint, constraint_definition, _ in indexes:
            if constraint is None:
                conn.execute(sql.SQL("DROP INDEX {}").format(sql.SQL(index)))  # regclass text: quoted as needed
                rebuild.append(sql.SQL(definition))
            else:
                conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table, sql.Identifier(constraint)))
                rebuild.append(
                    sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(table, sql.Identifier(constraint))
                    + sql.SQL(constraint_definition)
                )
        self._indexes[target] = rebuild

    def finish(self, conn: psycopg.Connection, target: str | None = None) -> dict[str, float]:
        """Build the dropped indexes of `target` (every bulk-loaded target when None); the seconds per target."""
        spent: dict[str, float] = {}
        for name in [target] if target is not None else list(self._indexes):
            statements = self._indexes.pop(name, None)
            if not statements:
                continue
            started = time.perf_counter()
            memory = conn.execute("SELECT current_setting('maintenance_work_mem')").fetchone()[0]
            conn.execute(
                "SELECT set_config('maintenance_work_mem', %s, true) "
                "WHERE pg_size_bytes(%s) < pg_size_bytes(%s)",
                (f"{BULK_INDEX_MEMORY_MB}MB", memory, f"{BULK_INDEX_MEMORY_MB}MB"),
            )
            for statement in statements:
                conn.execute(statement)  # a duplicate key fails here, and the whole transaction with it
            conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (memory,))
            # From empty to millions of rows in one transaction: the next query (often the gold build, at once)
            # should not plan on an empty table's statistics while autovacuum gets round to it.
            conn.execute(sql.SQL("ANALYZE {}").format(_qualified(name)))
            spent[name] = time.perf_counter() - started
            self.seconds[name] = self.seconds.get(name, 0.0) + spent[name]
        return spent


def _apply_replace_where(
    conn: psycopg.Connection, write: TableWrite, data: pa.Table | None, result: WriteResult, bulk: _BulkLoads
) -> None:
    assert isinstance(write.replace, ReplaceWhere)
    target = _qualified(write.target)
    where = sql.SQL(write.replace.predicate)  # type: ignore[arg-type]  # predicates are code constants
    params = write.replace.params
    before = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE ").format(target) + where, params).fetchone()[0]
    _add(result.replaced, write.target, int(before))
    if data is None or data.num_rows == 0:
        delete = sql.SQL("DELETE FROM {} WHERE ").format(target) + where
        _add(result.deleted, write.target, conn.execute(delete, params).rowcount)
        return
    if before == 0:
        # Nothing to merge with: the rows go straight in (a key outside the window is a unique violation).
        bulk.start(conn, write.target, data.num_rows)
        _add(result.inserted, write.target, copy_arrow(conn, target, data))
        return
    bulk.finish(conn, write.target)  # the merge's upsert needs the key's constraint
    staging = _temp_like(conn, write.target, data.column_names)
    copy_arrow(conn, staging, data)
    conn.execute(sql.SQL("ANALYZE {}").format(staging))
    match = _key_match(write.key_columns, _nullable(conn, write.target), "s", "t")
    deleted = conn.execute(
        sql.SQL("DELETE FROM {} AS t WHERE (").format(target)
        + where
        + sql.SQL(") AND NOT EXISTS (SELECT 1 FROM {} AS s WHERE {})").format(staging, match),
        params,
    ).rowcount
    # Rows identical to one of the window's are left out by one hash anti-join: ON CONFLICT would otherwise look up
    # and lock every row of a re-run day (a revised upload of 1,200 prices beside 144,000 unchanged ticks).
    values = [c for c in data.column_names if c not in write.key_columns]
    same_values = (
        sql.SQL(" AND ({}) IS NOT DISTINCT FROM ({})").format(_aliased("t", values), _aliased("s", values))
        if values else sql.SQL("")
    )
    changed = (
        sql.SQL("SELECT {} FROM {} AS s WHERE NOT EXISTS (SELECT 1 FROM {} AS t WHERE (").format(
            _aliased("s", data.column_names), staging, target
        )
        + where
        + sql.SQL(") AND {}{})").format(match, same_values)
    )
    inserted, updated = _upsert(conn, write, changed, data.column_names, params)
    _add(result.deleted, write.target, deleted)
    _add(result.inserted, write.target, inserted)
    _add(result.updated, write.target, updated)


def _spark_job(write: TableWrite) -> int | None:
    """Identity of the Spark job a write's rows come from; None when they need none of their own (no rows, or
    rows derived from an earlier write's)."""
    if isinstance(write.df, Derived):
        return None if isinstance(write.df.source, str) else id(write.df.source)
    return None if write.df is None else id(write.df)


class _Collector:
    """Submits writes' Spark jobs, in write order, to one worker thread, at most one job ahead of the writer.

    Spark computes the next job while the writer applies the current one. The driver holds the rows of those two
    jobs and, per target, the rows its last submitted write derived from them: a build of many slices runs in the
    memory of about three.
    """

    def __init__(self, executor: ThreadPoolExecutor, writes: Iterable[TableWrite]) -> None:
        self._executor = executor
        self._writes = iter(writes)
        self._next: TableWrite | None = next(self._writes, None)
        self.pending: deque[tuple[TableWrite, Future[pa.Table | None], Future[pa.Table | None] | None]] = deque()
        self._latest: dict[str, Future[pa.Table | None]] = {}  # per target, its last submitted write's rows
        # Memos hold their frame, so its id is not reused while the memo lives.
        self._shared: dict[int, tuple[DataFrame, Future[pa.Table | None]]] = {}
        self._keys: dict[tuple[int, tuple[str, ...]], tuple[DataFrame, Future[pa.Table | None]]] = {}

    def _jobs(self) -> set[int]:
        return {job for write, _, _ in self.pending if (job := _spark_job(write)) is not None}

    def top_up(self) -> None:
        """Submit writes until a further one would start a third Spark job beside the current and the next."""
        while self._next is not None:
            job, jobs = _spark_job(self._next), self._jobs()
            if job is not None and job not in jobs and len(jobs) >= 2:
                return
            write, self._next = self._next, next(self._writes, None)
            rows = self._submit(write.df)
            self._latest[write.target] = rows
            self.pending.append((write, rows, self._submit_keys(write.replace)))

    def release(self) -> None:
        """Forget the rows of jobs no pending write still needs."""
        jobs = self._jobs()
        self._shared = {job: memo for job, memo in self._shared.items() if job in jobs}

    def _submit(self, df: DataFrame | Derived | None) -> Future[pa.Table | None]:
        if not isinstance(df, Derived):
            return self._executor.submit(lambda: None if df is None else df.toArrow())
        if isinstance(df.source, str):
            source = self._latest[df.source]  # submitted earlier: the one worker thread has finished it first
        else:
            frame = df.source
            if id(frame) not in self._shared:
                self._shared[id(frame)] = (frame, self._executor.submit(frame.toArrow))
            source = self._shared[id(frame)][1]

        def derive() -> pa.Table | None:
            rows = source.result()
            return None if rows is None else df.rows(rows)

        return self._executor.submit(derive)

    def _submit_keys(self, replace: ReplaceWhere | ReplaceKeys | None) -> Future[pa.Table | None] | None:
        if not isinstance(replace, ReplaceKeys):
            return None
        # Writes replacing the same keys (a history and its current table) share one key set.
        reuse = (id(replace.keys), replace.columns)
        if reuse not in self._keys:
            keys = replace.keys.select(*replace.columns).distinct()
            self._keys[reuse] = (replace.keys, self._executor.submit(keys.toArrow))
        return self._keys[reuse][1]

    def cancel(self) -> None:
        for _, rows, keys in self.pending:
            rows.cancel()
            if keys is not None:
                keys.cancel()
        for _, future in [*self._shared.values(), *self._keys.values()]:
            future.cancel()


def _add(counts: dict[str, int] | dict[str, float], target: str, value: float) -> None:
    counts[target] = counts.get(target, 0) + value  # type: ignore[assignment]


def merge_dataframes(
    database_url: str,
    writes: Iterable[TableWrite],
    finalize: Callable[[psycopg.Connection], None] | None = None,
) -> WriteResult:
    """Collect every write from Spark as Arrow, stage and apply all of them (and `finalize`) in one transaction.

    Replacements make a re-run of the same window or keys idempotent; rows that did not change are not written.
    `writes` may be a generator (a backfill's slices, planned as the writer reaches them); a target written more
    than once (one write per slice) reports its figures summed.
    """
    result = WriteResult()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="silver-collect") as executor:
        collector = _Collector(executor, writes)
        try:
            with connect(database_url) as conn:
                settings = sql.SQL(", ").join(sql.SQL("set_config(%s, %s, true)") for _ in MERGE_SETTINGS)
                conn.execute(sql.SQL("SELECT ") + settings, [v for item in MERGE_SETTINGS.items() for v in item])
                staged_keys: dict[int, tuple[sql.Identifier, int]] = {}
                bulk = _BulkLoads()
                collector.top_up()
                while collector.pending:
                    write, frame, key_frame = collector.pending[0]
                    waited = time.perf_counter()
                    data = frame.result()
                    applied = time.perf_counter()
                    _add(result.spark_wait_s, write.target, applied - waited)
                    _add(result.staged, write.target, 0 if data is None else data.num_rows)
                    for counts in (result.deleted, result.inserted, result.updated):
                        counts.setdefault(write.target, 0)
                    if isinstance(write.replace, ReplaceWhere):
                        _apply_replace_where(conn, write, data, result, bulk)
                    else:
                        bulk.finish(conn, write.target)
                        if isinstance(write.replace, ReplaceKeys):
                            assert key_frame is not None
                            _delete_keys(conn, write, write.replace, key_frame, staged_keys, result)
                        if data is not None and data.num_rows:
                            staging = _temp_like(conn, write.target, data.column_names)
                            copy_arrow(conn, staging, data)
                            staged = sql.SQL("SELECT {} FROM {}").format(_columns(data.column_names), staging)
                            inserted, updated = _upsert(conn, write, staged, data.column_names)
                            _add(result.inserted, write.target, inserted)
                            _add(result.updated, write.target, updated)
                    _add(result.postgres_s, write.target, time.perf_counter() - applied)
                    del data
                    collector.pending.popleft()
                    collector.release()
                    collector.top_up()
                for target, seconds in bulk.finish(conn).items():
                    _add(result.postgres_s, target, seconds)
                result.index_build_s.update(bulk.seconds)
                commit = time.perf_counter()
                if finalize is not None:
                    finalize(conn)
            result.postgres_s["commit"] = time.perf_counter() - commit
        finally:
            collector.cancel()
    return result


def _delete_keys(
    conn: psycopg.Connection,
    write: TableWrite,
    replace: ReplaceKeys,
    key_frame: Future[pa.Table | None],
    staged_keys: dict[int, tuple[sql.Identifier, int]],
    result: WriteResult,
) -> None:
    """Delete `write.target`'s rows whose key is in the write's key set (staged once per key frame)."""
    if id(key_frame) not in staged_keys:
        key_data = key_frame.result()
        assert key_data is not None
        table = _temp_like(conn, write.target, list(replace.columns))
        staged_keys[id(key_frame)] = (table, copy_arrow(conn, table, key_data))
    key_table, result.staged_keys[write.target] = staged_keys[id(key_frame)]
    match = sql.SQL(" AND ").join(sql.SQL("t.{0} = k.{0}").format(sql.Identifier(c)) for c in replace.columns)
    deleted = conn.execute(
        sql.SQL("DELETE FROM {} t USING {} k WHERE {}").format(_qualified(write.target), key_table, match)
    ).rowcount
    _add(result.deleted, write.target, deleted)
    _add(result.replaced, write.target, deleted)
