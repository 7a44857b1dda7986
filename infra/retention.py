"""Retention: how long each warehouse table's days stay hot, moving older days to the cold tier (compressed
Parquet under `OPTIBID_ARCHIVE_URI`), reading archived days back, restoring a day to hot, and pruning the
operational tables that need no archive.

What belongs here: the policies and their defaults, archiving and restoring one day of one table, the
combined hot + cold read, and the nightly pass (`apply_retention`) the `ops/retention` asset runs. Lake
maintenance (Delta files) is `infra.lake_maintenance`; backups are `infra.backup`.

Safety: a day is archived inside one REPEATABLE READ transaction: its rows are read, written to Parquet, the
Parquet file is read back into a temporary copy of the table whose row count and checksum (md5 of the rows'
text, as Postgres prints them) must equal the hot rows', and only then are exactly those rows deleted and the
day recorded in `ops.archived_partitions`. Anything else rolls back and leaves the hot rows where they were.
Rows written to that day by someone else meanwhile are not in the snapshot, so they are neither archived nor
deleted: they stay hot, and the day's next pass archives them.

Cold reads: `read_days` returns a table's rows for a range of days from hot storage and the archive alike,
value for value what the hot table held (the tests compare them). The API serves archived market days, audit
entries and dead letters as it served them hot (`serving_api.repository`); the BI replica in ClickHouse keeps
archived days; the Postgres `bi.*` views show hot days only (Postgres cannot read Parquet here).

The lake (bronze Delta tables) has two kinds of policy, both by `_ingested_at`:
- Dead letters move to the cold tier whole (`LakeRetentionPolicy`): nothing rebuilds from them.
- The other CDC tables keep every row hot, because silver rebuilds its SCD-2 history from every event's
  decoded columns; only the raw Kafka value (`payload_raw`, the widest column, kept for lineage and
  debugging) moves (`PayloadRetentionPolicy`, 90 days by default). It is appended with the row's lineage key
  to a zstd Delta table in the cold tier, read back and compared by count and SHA-256 of (key, payload), and
  only then cleared in exactly those hot rows (an update on the snapshot they were read from). That commit is
  marked as maintenance (silver's change detection skips it), keeps the Kafka offsets kept as app
  transactions, and does not conflict with the consumer's appends. `raw_payloads` reads a row's payload from
  hot or cold alike; `restore_payloads` writes the archived payloads back.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from psycopg import sql

from infra.lake import Lake, writer_properties
from infra.settings import Settings

if TYPE_CHECKING:
    from deltalake import CommitProperties, DeltaTable, WriterProperties

# `archive_payloads`: the raw Kafka values of bronze CDC rows moved to the cold tier, the rows staying hot.
Action = Literal["archive", "prune", "archive_payloads"]


@dataclass(frozen=True)
class RetentionPolicy:
    """`table`'s rows whose day (`day_sql`, an expression over the row) is older than `hot_days` are archived
    then deleted (`archive`) or deleted (`prune`, for rows nobody needs once old).

    `rebuilt`: the table's days are rebuilt whole from upstream (silver from bronze, gold from silver), so hot
    rows of an archived day are a newer build of the whole day and supersede the archive (reads take them
    alone; the next pass archives them in its place). Otherwise rows are only ever appended (the audit log),
    and hot rows of an archived day are additions: reads take both, and the next pass adds them to the archive.
    """

    table: str
    day_sql: str
    hot_days: int
    action: Action
    rebuilt: bool = False


UTC_DAY_OF_AT = "(at AT TIME ZONE 'UTC')::date"
# Sane defaults: market history stays hot for two years (backtests read 2 years), the audit log for its
# compliance period (400 days: a year plus the audit's own quarter), login attempts for the throttle's and
# an investigation's needs.
MARKET_HOT_DAYS = 730
RETENTION_POLICIES: tuple[RetentionPolicy, ...] = (
    *(
        RetentionPolicy(table, "market_date", MARKET_HOT_DAYS, "archive", rebuilt=True)
        for table in (
            "silver.market__prices",
            "silver.market__load",
            "silver.market__generation",
            "silver.market__weather",
            "gold.fct_prices_hourly",
            "gold.fct_prices_5min",
            "gold.fct_load_hourly",
            "gold.fct_generation_hourly",
            "gold.kpi_values",
        )
    ),
    RetentionPolicy("ops.audit_log", UTC_DAY_OF_AT, 400, "archive"),
    RetentionPolicy("ops.login_attempts", UTC_DAY_OF_AT, 30, "prune"),
)


class RetentionError(RuntimeError):
    """An archive did not verify, or a day cannot be restored; nothing was deleted."""


def policies(settings: Settings) -> list[RetentionPolicy]:
    """The default policies with `OPTIBID_RETENTION_DAYS` overrides applied (unknown table names refused)."""
    known = {p.table: p for p in RETENTION_POLICIES}
    lake_known = {f"bronze.{p.table}" for p in LAKE_RETENTION_POLICIES}
    # CDC tables are found in the lake, which may not hold them yet: any `bronze.cdc__<name>` is accepted.
    unknown = sorted(
        t for t in set(settings.retention_days) - set(known) - lake_known if not _CDC_SETTING.fullmatch(t)
    )
    if unknown:
        raise RetentionError(f"OPTIBID_RETENTION_DAYS names tables without a policy: {', '.join(unknown)}")
    out = []
    for policy in RETENTION_POLICIES:
        days = settings.retention_days.get(policy.table, policy.hot_days)
        if days < 1:
            raise RetentionError(f"OPTIBID_RETENTION_DAYS[{policy.table}] must be at least 1, not {days}")
        out.append(RetentionPolicy(policy.table, policy.day_sql, days, policy.action, policy.rebuilt))
    return out


def hot_rows_supersede(table: str) -> bool:
    """Whether hot rows of an archived day of `table` are a newer build of the whole day (`RetentionPolicy.rebuilt`)."""
    return any(p.table == table and p.rebuilt for p in RETENTION_POLICIES)


def policy_for(settings: Settings, table: str) -> RetentionPolicy:
    for policy in policies(settings):
        if policy.table == table:
            return policy
    raise RetentionError(f"no retention policy for {table}")


# --- table shapes -------------------------------------------------------------------------------------------

_ARROW_TYPES = {
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "bool": pa.bool_(),
    "text": pa.string(),
    "varchar": pa.string(),
    "date": pa.date32(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "timestamp": pa.timestamp("us"),
}


@dataclass(frozen=True)
class Column:
    name: str
    udt: str
    sql_type: str

    @property
    def arrow_type(self) -> pa.DataType:
        return _ARROW_TYPES.get(self.udt, pa.string())

    @property
    def as_text(self) -> bool:
        """Carried as its text form (jsonb, numeric, arrays, ...): exact, and cast back on restore."""
        return self.udt not in _ARROW_TYPES


def _split(table: str) -> tuple[str, str]:
    schema, name = table.split(".", 1)
    return schema, name


def table_columns(conn: psycopg.Connection, table: str) -> list[Column]:
    schema, name = _split(table)
    rows = conn.execute(
        """SELECT a.attname, t.typname, format_type(a.atttypid, a.atttypmod)
           FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
           WHERE a.attrelid = (quote_ident(%s) || '.' || quote_ident(%s))::regclass AND a.attnum > 0
             AND NOT a.attisdropped ORDER BY a.attnum""",
        (schema, name),
    ).fetchall()
    if not rows:
        raise RetentionError(f"table {table} does not exist")
    return [Column(n, u, s) for n, u, s in rows]


def _select_list(columns: Sequence[Column]) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(c.name)) if c.as_text else sql.Identifier(c.name) for c in columns
    )


def _arrow_schema(columns: Sequence[Column]) -> pa.Schema:
    return pa.schema([pa.field(c.name, c.arrow_type) for c in columns])


def _rows(
    conn: psycopg.Connection, relation: sql.Composable, columns: Sequence[Column], where: sql.Composable, params: tuple
) -> pa.Table:
    query = sql.SQL("SELECT {cols} FROM {rel} t WHERE {where} ORDER BY t::text").format(
        cols=_select_list(columns), rel=relation, where=where
    )
    rows = conn.execute(query, params).fetchall()
    arrays = [pa.array([r[i] for r in rows], type=c.arrow_type) for i, c in enumerate(columns)]
    return pa.Table.from_arrays(arrays, schema=_arrow_schema(columns))


def _day_rows(conn: psycopg.Connection, table: str, columns: Sequence[Column], day_sql: str, day: date) -> pa.Table:
    where = sql.SQL("{} = %s").format(sql.SQL(day_sql))
    return _rows(conn, sql.Identifier(*_split(table)), columns, where, (day,))


def _checksum(
    conn: psycopg.Connection, relation: sql.Composable, where: sql.Composable, params: tuple
) -> tuple[int, str]:
    query = sql.SQL(
        "SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {rel} t WHERE {where}"
    ).format(rel=relation, where=where)
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def _insert(conn: psycopg.Connection, relation: sql.Composable, columns: Sequence[Column], data: pa.Table) -> None:
    if data.num_rows == 0:
        return
    placeholders = sql.SQL(", ").join(
        sql.SQL("%s::{}").format(sql.SQL(c.sql_type)) if c.as_text else sql.SQL("%s") for c in columns
    )
    statement = sql.SQL("INSERT INTO {rel} ({cols}) VALUES ({values})").format(
        rel=relation, cols=sql.SQL(", ").join(sql.Identifier(c.name) for c in columns), values=placeholders
    )
    rows = list(zip(*(data.column(c.name).to_pylist() for c in columns), strict=True))
    with conn.cursor() as cur:
        cur.executemany(statement, rows)


# --- the cold tier ----------------------------------------------------------------------------------------------


def _archive_path(archive_uri: str, table: str, day: date) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path, URI) of a table's day in the archive."""
    uri = f"{archive_uri.rstrip('/')}/warehouse/{table}/day={day.isoformat()}.parquet"
    if "://" not in archive_uri:
        return pafs.LocalFileSystem(), uri, uri
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path, uri


def _write_archive(archive_uri: str, table: str, day: date, data: pa.Table) -> tuple[str, str]:
    fs, path, uri = _archive_path(archive_uri, table, day)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(data, path, filesystem=fs, compression="zstd", compression_level=9)
    with fs.open_input_stream(path) as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return uri, digest


def read_archive(archive_uri: str, table: str, day: date) -> pa.Table:
    fs, path, _ = _archive_path(archive_uri, table, day)
    return pq.read_table(path, filesystem=fs)


# --- archive, restore, read --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayOutcome:
    table: str
    day: date
    action: Action
    rows: int
    archive_uri: str | None = None


def archive_day(database_url: str, archive_uri: str, policy: RetentionPolicy, day: date) -> DayOutcome:
    """Move `day` of `policy.table` to the archive, verified, in one transaction (see the module doc). A day
    already archived is replaced by its newer build (`policy.rebuilt`) or extended by the hot rows."""
    schema, name = _split(policy.table)
    relation = sql.Identifier(schema, name)
    where = sql.SQL("{} = %s").format(sql.SQL(policy.day_sql))
    with psycopg.connect(database_url) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        columns = table_columns(conn, policy.table)
        hot_rows, _ = _checksum(conn, relation, where, (day,))
        if hot_rows == 0:
            return DayOutcome(policy.table, day, policy.action, 0)
        if policy.action == "prune":
            deleted = conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(relation, where), (day,)).rowcount
            return DayOutcome(policy.table, day, "prune", deleted)
        # What the archive must hold afterwards, in a temporary table so Postgres' own text form checks it.
        conn.execute(sql.SQL("CREATE TEMP TABLE archive_expected (LIKE {}) ON COMMIT DROP").format(relation))
        if not policy.rebuilt and (policy.table, day) in _archived_keys(conn, policy.table, day):
            _insert(conn, sql.Identifier("archive_expected"), columns, read_archive(archive_uri, policy.table, day))
        conn.execute(
            sql.SQL("INSERT INTO archive_expected SELECT * FROM {} WHERE {}").format(relation, where), (day,)
        )
        expected = _checksum(conn, sql.Identifier("archive_expected"), sql.SQL("TRUE"), ())
        data = _rows(conn, sql.Identifier("archive_expected"), columns, sql.SQL("TRUE"), ())
        uri, _ = _write_archive(archive_uri, policy.table, day, data)
        # Read back what is on the cold tier and compare it with the expected rows, value for value.
        archived = read_archive(archive_uri, policy.table, day)
        conn.execute(sql.SQL("CREATE TEMP TABLE archive_check (LIKE {}) ON COMMIT DROP").format(relation))
        _insert(conn, sql.Identifier("archive_check"), columns, archived)
        cold = _checksum(conn, sql.Identifier("archive_check"), sql.SQL("TRUE"), ())
        if cold != expected:
            raise RetentionError(
                f"{policy.table} {day}: archive holds {cold[0]} rows ({cold[1]}), expected {expected[0]} "
                f"({expected[1]}); nothing deleted"
            )
        deleted = conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(relation, where), (day,)).rowcount
        if deleted != hot_rows:
            raise RetentionError(f"{policy.table} {day}: {deleted} rows to delete, {hot_rows} archived; rolled back")
        conn.execute(
            """INSERT INTO ops.archived_partitions (table_name, day, row_count, checksum, archive_uri)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (table_name, day) DO UPDATE SET row_count = EXCLUDED.row_count,
                   checksum = EXCLUDED.checksum, archive_uri = EXCLUDED.archive_uri, archived_at = now(),
                   restored_at = NULL""",
            (policy.table, day, *expected, uri),
        )
    return DayOutcome(policy.table, day, "archive", hot_rows, uri)


def _archived_keys(conn: psycopg.Connection, table: str, day: date) -> set[tuple[str, date]]:
    rows = conn.execute(
        """SELECT table_name, day FROM ops.archived_partitions
           WHERE table_name = %s AND day = %s AND restored_at IS NULL""",
        (table, day),
    ).fetchall()
    return {(t, d) for t, d in rows}


def archived_days(conn: psycopg.Connection, table: str | None = None) -> list[tuple[str, date, int, str]]:
    """(table, day, rows, archive URI) of every day currently in the cold tier."""
    return conn.execute(
        """SELECT table_name, day, row_count, archive_uri FROM ops.archived_partitions
           WHERE restored_at IS NULL AND (%(t)s::text IS NULL OR table_name = %(t)s) ORDER BY 1, 2""",
        {"t": table},
    ).fetchall()


def restore_day(database_url: str, archive_uri: str, table: str, day: date) -> int:
    """Bring an archived day back into its hot table (checked against the recorded checksum); rows restored.
    A rebuilt table's day that hot storage holds a newer build of only loses its archived mark (0 rows)."""
    schema, name = _split(table)
    relation = sql.Identifier(schema, name)
    with psycopg.connect(database_url) as conn:
        record = conn.execute(
            """SELECT row_count, checksum FROM ops.archived_partitions
               WHERE table_name = %s AND day = %s AND restored_at IS NULL FOR UPDATE""",
            (table, day),
        ).fetchone()
        if record is None:
            raise RetentionError(f"{table} {day} is not in the archive")
        columns = table_columns(conn, table)
        data = read_archive(archive_uri, table, day)
        conn.execute(sql.SQL("CREATE TEMP TABLE archive_check (LIKE {}) ON COMMIT DROP").format(relation))
        _insert(conn, sql.Identifier("archive_check"), columns, data)
        if _checksum(conn, sql.Identifier("archive_check"), sql.SQL("TRUE"), ()) != (record[0], record[1]):
            raise RetentionError(f"{table} {day}: the archive no longer matches its recorded checksum")
        restored = data.num_rows
        policy = next((p for p in RETENTION_POLICIES if p.table == table), None)
        superseded = policy is not None and policy.rebuilt and _checksum(
            conn, relation, sql.SQL("{} = %s").format(sql.SQL(policy.day_sql)), (day,)
        )[0] > 0
        if superseded:
            restored = 0
        else:
            _insert(conn, relation, columns, data)
        conn.execute(
            "UPDATE ops.archived_partitions SET restored_at = now() WHERE table_name = %s AND day = %s", (table, day)
        )
    return restored


def read_days(database_url: str, archive_uri: str, table: str, start: date, end: date, day_sql: str) -> pa.Table:
    """Rows of `table` whose day is in [start, end), from hot storage and the archive alike."""
    parts = []
    with psycopg.connect(database_url) as conn:
        columns = table_columns(conn, table)
        cold = {d for t, d, _, _ in archived_days(conn, table) if start <= d < end}
        day = start
        while day < end:
            hot = _day_rows(conn, table, columns, day_sql, day)
            if day in cold and not (hot.num_rows and hot_rows_supersede(table)):
                parts.append(read_archive(archive_uri, table, day))
            parts.append(hot)
            day += timedelta(days=1)
    schema = _arrow_schema(columns)
    return pa.concat_tables([p.cast(schema) for p in parts]) if parts else schema.empty_table()


def apply_retention(
    database_url: str, settings: Settings, today: date, max_days_per_table: int = 31, lake: Lake | None = None
) -> list[DayOutcome]:
    """Archive or prune every day past its table's retention (oldest first, at most `max_days_per_table` per
    table and pass, so a first run on years of history is spread over nights), then, given the `lake`, the
    bronze rows past theirs (`LAKE_RETENTION_POLICIES`) and the raw payloads of the CDC tables' rows past
    theirs (`payload_policies`)."""
    outcomes = []
    for policy in policies(settings):
        cutoff = today - timedelta(days=policy.hot_days)
        schema, name = _split(policy.table)
        with psycopg.connect(database_url) as conn:
            if conn.execute("SELECT to_regclass(%s)", (policy.table,)).fetchone() == (None,):
                continue  # a gold model before its first build
            days = [
                r[0]
                for r in conn.execute(
                    sql.SQL("SELECT DISTINCT {day} AS d FROM {table} WHERE {day} < %s ORDER BY d LIMIT %s").format(
                        day=sql.SQL(policy.day_sql), table=sql.Identifier(schema, name)
                    ),
                    (cutoff, max_days_per_table),
                )
            ]
        for day in days:
            outcomes.append(archive_day(database_url, settings.resolved_archive_uri, policy, day))
    if lake is not None:
        now = datetime(today.year, today.month, today.day, tzinfo=UTC)
        for lake_policy in lake_policies(settings):
            outcome = archive_lake_rows(lake, settings.resolved_archive_uri, lake_policy, now)
            if outcome.rows:
                outcomes.append(outcome)
        for payload_policy in payload_policies(lake, settings):
            outcome = archive_payloads(
                lake, settings.resolved_archive_uri, payload_policy, now, max_days_per_pass=max_days_per_table
            )
            if outcome.rows:
                outcomes.append(outcome)
    return outcomes


def archived_audit_entries(archive_uri: str, days: Sequence[date], org_id: str, limit: int) -> list[dict[str, object]]:
    """The newest `limit` audit-log entries of `org_id` in the archived `days` (newest first), shaped as the hot
    table's rows read through the API: the same filter as the table's row-level security (the caller's
    organization only), `details` decoded from its JSON text."""
    import json

    out: list[dict[str, object]] = []
    for day in sorted(days, reverse=True):
        rows = read_archive(archive_uri, "ops.audit_log", day).to_pylist()
        mine = sorted((r for r in rows if r["org_id"] == org_id), key=lambda r: r["id"], reverse=True)
        for row in mine:
            row["details"] = json.loads(row["details"]) if row["details"] is not None else None
            out.append({k: row[k] for k in ("id", "at", "org_id", "actor", "action", "target", "details")})
            if len(out) >= limit:
                return out
    return out


# --- lake tables ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LakeRetentionPolicy:
    """Rows of bronze table `table` ingested (`_ingested_at`) more than `hot_days` ago are archived to the cold
    tier's Delta table of the same name, verified, then deleted from the hot table. Only for tables nothing
    rebuilds from: silver reads every CDC event and every market row, so those rows stay (the CDC events lose
    only their raw payload, `PayloadRetentionPolicy`)."""

    table: str
    hot_days: int
    column: str = "_ingested_at"


LAKE_RETENTION_POLICIES: tuple[LakeRetentionPolicy, ...] = (LakeRetentionPolicy("cdc__dead_letters", 30),)
ARCHIVE_VERSION_COLUMN = "_archived_from_version"


def lake_policies(settings: Settings) -> list[LakeRetentionPolicy]:
    out = []
    for policy in LAKE_RETENTION_POLICIES:
        days = settings.retention_days.get(f"bronze.{policy.table}", policy.hot_days)
        if days < 1:
            raise RetentionError(f"OPTIBID_RETENTION_DAYS[bronze.{policy.table}] must be at least 1, not {days}")
        out.append(LakeRetentionPolicy(policy.table, days, policy.column))
    return out


def archive_lake_uri(archive_uri: str, table: str) -> str:
    return f"{archive_uri.rstrip('/')}/lake/bronze/{table}"


def _cold_table(lake: Lake, uri: str) -> DeltaTable | None:
    """The cold tier's Delta table at `uri`; None before anything was archived to it."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(uri, storage_options=lake.storage_options or None)
    except TableNotFoundError:
        return None


def _rows_digest(data: pa.Table) -> str:
    keys = [(c, "ascending") for c in ("_topic", "_partition", "_offset_epoch", "_offset") if c in data.column_names]
    ordered = data.sort_by(keys) if keys else data
    return hashlib.sha256(repr(ordered.to_pylist()).encode()).hexdigest()


def _append_cold(lake: Lake, uri: str, batch: pa.Table, commit: CommitProperties | None = None) -> None:
    """Append `batch` to the cold tier's Delta table at `uri`, zstd compressed."""
    from deltalake import write_deltalake

    write_deltalake(
        uri,
        batch,
        mode="append",
        storage_options=lake.storage_options or None,
        writer_properties=writer_properties("ZSTD"),
        commit_properties=commit,
    )


def _hot_lake_table(lake: Lake, table: str, hot_days: int, now: datetime) -> tuple[str, datetime, DeltaTable | None]:
    """(qualified name, retention cut-off, the hot table or None before its first write) of a bronze table."""
    return f"bronze.{table}", now - timedelta(days=hot_days), lake.table("bronze", table)


def archive_lake_rows(lake: Lake, archive_uri: str, policy: LakeRetentionPolicy, now: datetime) -> DayOutcome:
    """Move the rows of `bronze.<policy.table>` older than its retention to the cold tier (see the class doc).

    The archive commit carries the hot version it was read from as an app transaction, so a pass that died
    between archiving and deleting does not archive the same rows twice the next night. The Kafka offsets kept
    in the hot table's log are untouched: deleting rows changes no app transaction.
    """
    from deltalake import CommitProperties, DeltaTable, Transaction

    name, cutoff, table = _hot_lake_table(lake, policy.table, policy.hot_days, now)
    if table is None:
        return DayOutcome(name, cutoff.date(), "archive", 0)
    version = table.version()
    column = pc.field(policy.column)
    old = table.to_pyarrow_dataset().to_table(filter=column < pa.scalar(cutoff, pa.timestamp("us", tz="UTC")))
    if old.num_rows == 0:
        return DayOutcome(name, cutoff.date(), "archive", 0)
    uri = archive_lake_uri(archive_uri, policy.table)
    app_id = f"retention-{policy.table}"
    archived = _cold_table(lake, uri)
    done = None if archived is None else archived.transaction_version(app_id)
    batch = old.append_column(ARCHIVE_VERSION_COLUMN, pa.array([version] * old.num_rows, pa.int64()))
    if done != version:
        _append_cold(lake, uri, batch, CommitProperties(app_transactions=[Transaction(app_id, version)]))
    readback = DeltaTable(uri, storage_options=lake.storage_options or None).to_pyarrow_dataset()
    mine = readback.to_table(filter=pc.field(ARCHIVE_VERSION_COLUMN) == version).drop_columns([ARCHIVE_VERSION_COLUMN])
    if mine.num_rows != old.num_rows or _rows_digest(mine.select(old.column_names)) != _rows_digest(old):
        raise RetentionError(f"{name}: the archive of {old.num_rows} rows does not match them; nothing deleted")
    table = lake.table("bronze", policy.table)
    assert table is not None
    metrics = table.delete(f"{policy.column} < '{cutoff.isoformat()}'")
    if int(metrics.get("num_deleted_rows", 0)) != old.num_rows:
        raise RetentionError(
            f"{name}: deleted {metrics.get('num_deleted_rows')} rows, archived {old.num_rows} (all are in the archive)"
        )
    return DayOutcome(name, cutoff.date(), "archive", old.num_rows, uri)


def read_archived_lake_rows(lake: Lake, archive_uri: str, table: str) -> pa.Table | None:
    """Every archived row of `bronze.<table>` (without the archive's bookkeeping column); None when none."""
    archived = _cold_table(lake, archive_lake_uri(archive_uri, table))
    return None if archived is None else archived.to_pyarrow_table().drop_columns([ARCHIVE_VERSION_COLUMN])


# --- raw CDC payloads --------------------------------------------------------------------------------------

PAYLOAD_COLUMN = "payload_raw"
INGESTED_AT = "_ingested_at"
# What identifies one Kafka record in a bronze table: its partition's offset within an offset epoch.
LINEAGE_KEY = ("_topic", "_partition", "_offset_epoch", "_offset")
LineageKey = tuple[str, int, int, int]
_KEY_TYPES = (pa.string(), pa.int32(), pa.int32(), pa.int64())  # as the consumer writes them (LINEAGE_FIELDS)
PAYLOAD_HOT_DAYS = 90
ALL_CDC_TABLES = "bronze.cdc__*"
_CDC_SETTING = re.compile(r"bronze\.cdc__(\*|\w+)")
PAYLOAD_COMMIT_ATTEMPTS = 5
_TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class PayloadRetentionPolicy:
    """The raw Kafka values (`payload_raw`) of `bronze.<table>` rows ingested (`_ingested_at`) more than
    `hot_days` ago move to the cold tier's Delta table `<table>__payloads`, verified, then are cleared (NULL) in
    the hot rows. The rows themselves stay: silver rebuilds from every CDC event's decoded columns, never from
    the raw value."""

    table: str
    hot_days: int


def cdc_payload_tables(lake: Lake) -> list[str]:
    """The bronze CDC tables of the lake that carry raw payloads (`cdc__*` with `payload_raw`, dead letters
    excepted: their rows move to the cold tier whole, `LAKE_RETENTION_POLICIES`)."""
    whole = {p.table for p in LAKE_RETENTION_POLICIES}
    out = []
    for name in lake.table_names("bronze"):
        if not name.startswith("cdc__") or name in whole:
            continue
        table = lake.table("bronze", name)
        if table is not None and PAYLOAD_COLUMN in table.schema().to_arrow().names:
            out.append(name)
    return out


def payload_policies(lake: Lake, settings: Settings) -> list[PayloadRetentionPolicy]:
    """A policy per CDC table of the lake: `OPTIBID_RETENTION_DAYS["bronze.<table>"]`, else
    `["bronze.cdc__*"]`, else `PAYLOAD_HOT_DAYS`."""
    default = settings.retention_days.get(ALL_CDC_TABLES, PAYLOAD_HOT_DAYS)
    out = []
    for table in cdc_payload_tables(lake):
        days = settings.retention_days.get(f"bronze.{table}", default)
        if days < 1:
            raise RetentionError(f"OPTIBID_RETENTION_DAYS for bronze.{table} must be at least 1, not {days}")
        out.append(PayloadRetentionPolicy(table, days))
    return out


def payload_archive_uri(archive_uri: str, table: str) -> str:
    return f"{archive_lake_uri(archive_uri, table)}__payloads"


def _payload_archive(lake: Lake, archive_uri: str, table: str) -> DeltaTable | None:
    return _cold_table(lake, payload_archive_uri(archive_uri, table))


def _payload_digest(data: pa.Table) -> str:
    """SHA-256 of (lineage key, payload) of every row, in key order: equal for equal contents however stored."""
    ordered = data.select([*LINEAGE_KEY, PAYLOAD_COLUMN]).sort_by([(c, "ascending") for c in LINEAGE_KEY])
    digest = hashlib.sha256()
    for batch in ordered.to_batches(max_chunksize=64 * 1024):
        parts = [pc.cast(batch.column(c), pa.string()) for c in LINEAGE_KEY] + [batch.column(PAYLOAD_COLUMN)]
        lines = pc.binary_join_element_wise(*parts, "\x1f", null_handling="replace", null_replacement="\\N")
        digest.update("".join(f"{line}\x1e" for line in lines.to_pylist()).encode())
    return digest.hexdigest()


def _key_predicate(target: str, source: str) -> str:
    return " AND ".join(f"{target}.{c} = {source}.{c}" for c in LINEAGE_KEY)


def _restore_merge(lake: Lake, table: str, source: pa.Table, window: tuple[datetime, datetime]) -> int:
    """Fill the cleared payloads of `source`'s rows (by lineage key, ingested within `window`) from `source`;
    the rows changed. Marked as maintenance like the clearing; the `_ingested_at` window lets delta-rs see
    that a concurrent consumer append (rows ingested now) cannot match, and a conflict it still reports is
    retried on the new snapshot."""
    from deltalake import CommitProperties
    from deltalake.exceptions import CommitFailedError

    from infra.lake_maintenance import maintenance_commit_metadata

    since, until = window
    predicate = (
        f"{_key_predicate('t', 's')} AND t.{INGESTED_AT} >= '{since.isoformat()}' "
        f"AND t.{INGESTED_AT} < '{until.isoformat()}'"
    )
    commit = CommitProperties(custom_metadata=maintenance_commit_metadata("payload-restore"))
    for attempt in range(1, PAYLOAD_COMMIT_ATTEMPTS + 1):
        hot = lake.table("bronze", table)
        if hot is None:
            raise RetentionError(f"bronze.{table} does not exist")
        try:
            metrics = (
                hot.merge(
                    source,
                    predicate,
                    source_alias="s",
                    target_alias="t",
                    writer_properties=_hot_writer(),
                    commit_properties=commit,
                )
                .when_matched_update({PAYLOAD_COLUMN: f"s.{PAYLOAD_COLUMN}"}, predicate=f"t.{PAYLOAD_COLUMN} IS NULL")
                .execute()
            )
            return int(metrics.get("num_target_rows_updated", 0))
        except CommitFailedError:
            if attempt == PAYLOAD_COMMIT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _archived_payload_rows(lake: Lake, archive_uri: str, table: str, flt: pc.Expression | None) -> pa.Table | None:
    archived = _payload_archive(lake, archive_uri, table)
    if archived is None:
        return None
    columns = [*LINEAGE_KEY, INGESTED_AT, PAYLOAD_COLUMN]
    return archived.to_pyarrow_dataset().to_table(columns=columns, filter=flt)


def archive_payloads(
    lake: Lake, archive_uri: str, policy: PayloadRetentionPolicy, now: datetime, max_days_per_pass: int = 31
) -> DayOutcome:
    """Move the raw payloads of `bronze.<policy.table>` rows older than the retention to the cold tier (see
    `PayloadRetentionPolicy`); the outcome's rows are the payloads cleared in the hot table. One pass takes
    the payloads of at most `max_days_per_pass` days of ingestion, the oldest, so a first pass over years of
    history is spread over nights and its memory stays bounded.

    Steps, on one snapshot of the hot table: read the old rows' lineage key, `_ingested_at` and payload; append
    to the archive those whose key it does not hold yet (so a pass that died before clearing, or payloads
    restored to hot, are not archived twice); read back every archived row of those keys and require the same
    row count and SHA-256 of (key, payload) as the hot rows; only then clear the payloads of exactly those rows
    (`_clear_payloads`). A mismatch raises `RetentionError` and leaves the hot table as it was. A commit
    conflict delta-rs cannot resolve (compaction committed meanwhile) runs the steps again on a new snapshot.
    """
    from deltalake.exceptions import CommitFailedError

    for attempt in range(1, PAYLOAD_COMMIT_ATTEMPTS + 1):
        try:
            return _archive_payloads_once(lake, archive_uri, policy, now, max_days_per_pass)
        except CommitFailedError:
            if attempt == PAYLOAD_COMMIT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _archive_payloads_once(
    lake: Lake, archive_uri: str, policy: PayloadRetentionPolicy, now: datetime, max_days_per_pass: int
) -> DayOutcome:

    name, cutoff, table = _hot_lake_table(lake, policy.table, policy.hot_days, now)
    if table is None:
        return DayOutcome(name, cutoff.date(), "archive_payloads", 0)
    version = table.version()
    dataset = table.to_pyarrow_dataset()
    has_payload = pc.field(PAYLOAD_COLUMN).is_valid()
    first = pc.min(
        dataset.to_table(columns=[INGESTED_AT], filter=(pc.field(INGESTED_AT) < pa.scalar(cutoff, _TS)) & has_payload)
        .column(INGESTED_AT)
    ).as_py()
    if first is None:
        return DayOutcome(name, cutoff.date(), "archive_payloads", 0)
    horizon = min(cutoff, first + timedelta(days=max_days_per_pass))
    is_old = (pc.field(INGESTED_AT) < pa.scalar(horizon, _TS)) & has_payload
    old = dataset.to_table(columns=[*LINEAGE_KEY, INGESTED_AT, PAYLOAD_COLUMN], filter=is_old)
    if old.num_rows == 0:
        return DayOutcome(name, cutoff.date(), "archive_payloads", 0)
    since = pc.min(old.column(INGESTED_AT)).as_py()
    until = pc.max(old.column(INGESTED_AT)).as_py()
    # Every archived copy of these rows was ingested at the same instant as its hot row: the window prunes the
    # archive's files by their statistics.
    in_window = (pc.field(INGESTED_AT) >= pa.scalar(since, _TS)) & (pc.field(INGESTED_AT) <= pa.scalar(until, _TS))
    uri = payload_archive_uri(archive_uri, policy.table)
    archived = _archived_payload_rows(lake, archive_uri, policy.table, in_window)
    keys = list(LINEAGE_KEY)
    pending = old if archived is None else old.join(archived.select(keys), keys, join_type="left anti")
    if pending.num_rows:
        batch = pending.select([*LINEAGE_KEY, INGESTED_AT, PAYLOAD_COLUMN]).append_column(
            ARCHIVE_VERSION_COLUMN, pa.array([version] * pending.num_rows, pa.int64())
        )
        _append_cold(lake, uri, batch)
    readback = _archived_payload_rows(lake, archive_uri, policy.table, in_window)
    assert readback is not None
    mine = old.select(keys).join(readback, keys, join_type="inner")
    if mine.num_rows != old.num_rows or _payload_digest(mine) != _payload_digest(old):
        raise RetentionError(
            f"{name}: the archive holds {mine.num_rows} copies of {old.num_rows} payloads past retention, or "
            "different bytes; no payload cleared"
        )
    cleared = _clear_payloads(table, since, until)
    if cleared != old.num_rows:
        raise RetentionError(f"{name}: cleared {cleared} payloads, {old.num_rows} were archived and verified")
    return DayOutcome(name, cutoff.date(), "archive_payloads", cleared, uri)


def _hot_writer() -> WriterProperties:
    """How rewritten hot files are compressed: as compaction writes them (zstd), not as delta-rs' update and
    merge would by default (snappy, which took a compacted CDC table from 4.9 to 10.2 MB)."""
    return writer_properties("ZSTD")


def _clear_payloads(table: DeltaTable, since: datetime, until: datetime) -> int:
    """Set the payloads of `table`'s rows ingested within [since, until] to NULL; the rows changed.

    `table` is the snapshot the archived rows were read from, and every row of it with a payload ingested
    within the bounds is one of them (they are all the rows with a payload ingested before the cut-off): the
    update clears exactly what was archived. Rows a consumer appended since are in files this snapshot does
    not hold, so the update neither touches nor conflicts with them. An update, unlike a merge, rewrites the
    files in their row order, which keeps the hot table as compressible as before.

    The commit is marked as maintenance (no new rows: silver's change detection skips it) and leaves the
    table's app transactions, the Kafka offsets, as they were.
    """
    from deltalake import CommitProperties

    from infra.lake_maintenance import maintenance_commit_metadata

    predicate = (
        f"{INGESTED_AT} >= '{since.isoformat()}' AND {INGESTED_AT} <= '{until.isoformat()}' "
        f"AND {PAYLOAD_COLUMN} IS NOT NULL"
    )
    metrics = table.update(
        updates={PAYLOAD_COLUMN: "NULL"},
        predicate=predicate,
        writer_properties=_hot_writer(),
        commit_properties=CommitProperties(custom_metadata=maintenance_commit_metadata("payload-archive")),
    )
    return int(metrics.get("num_updated_rows", 0))


def restore_payloads(lake: Lake, archive_uri: str, table: str) -> int:
    """Write the archived raw payloads of `bronze.<table>` back into their hot rows (those still cleared);
    the rows restored. The archive keeps its copy, so the next retention pass clears them again without
    archiving twice: raise the table's retention first if they must stay hot."""
    archived = _archived_payload_rows(lake, archive_uri, table, None)
    if archived is None or archived.num_rows == 0:
        raise RetentionError(f"bronze.{table} has no archived payloads")
    times = archived.column(INGESTED_AT)
    window = (pc.min(times).as_py(), pc.max(times).as_py() + timedelta(microseconds=1))
    # One source row per key: a merge refuses a target row matched twice.
    first = archived.group_by(list(LINEAGE_KEY), use_threads=False).aggregate([(PAYLOAD_COLUMN, "first")])
    source = first.rename_columns([c.removesuffix("_first") for c in first.column_names])
    return _restore_merge(lake, table, source, window)


def _rows_per_day(archived: DeltaTable, column: str) -> list[tuple[date, int]]:
    """(UTC day, rows) of a cold-tier table by its timestamp `column`, in day order."""
    instants = archived.to_pyarrow_dataset().to_table(columns=[column]).column(column)
    # The stored instants are UTC: without the zone, the date is the UTC date.
    days = pc.cast(pc.cast(instants, pa.timestamp("us")), pa.date32())
    counts = pa.table({"day": days}).group_by("day").aggregate([("day", "count")]).sort_by("day")
    return list(zip(counts["day"].to_pylist(), counts["day_count"].to_pylist(), strict=True))


def archived_lake_days(lake: Lake, archive_uri: str, table: str | None = None) -> list[tuple[str, date, int, str]]:
    """(what, UTC day, rows, archive URI) of the lake's data in the cold tier, of bronze `table` (`cdc__bids` or
    `bronze.cdc__bids`) or of every table: the rows of tables archived whole (`bronze.cdc__dead_letters`, by
    their policy's column) and the raw payloads of CDC tables (`bronze.cdc__bids (raw payloads)`, by day
    ingested; the rows stay hot). The archive keeps its payload copies after `restore_payloads`, so a restored
    day is still listed."""
    wanted = None if table is None else table.removeprefix("bronze.")
    # (what, cold table URI, its timestamp column, bronze table) of everything of the lake the cold tier can hold
    sources = [
        (f"bronze.{p.table}", archive_lake_uri(archive_uri, p.table), p.column, p.table)
        for p in LAKE_RETENTION_POLICIES
    ] + [
        (f"bronze.{t} (raw payloads)", payload_archive_uri(archive_uri, t), INGESTED_AT, t)
        for t in cdc_payload_tables(lake)
    ]
    out = []
    for what, uri, column, name in sources:
        archived = _cold_table(lake, uri) if wanted in (None, name) else None
        if archived is not None:
            out += [(what, day, rows, uri) for day, rows in _rows_per_day(archived, column)]
    return out


def _row_key(row: dict[str, Any]) -> LineageKey:
    return (row["_topic"], row["_partition"], row["_offset_epoch"], row["_offset"])


def raw_payloads(lake: Lake, archive_uri: str, table: str, keys: Sequence[LineageKey]) -> dict[LineageKey, str | None]:
    """The raw Kafka value of each row of `bronze.<table>` given by its lineage key (topic, partition, offset
    epoch, offset), from the hot table or, once archived, the cold tier; None for a row without one (a
    tombstone). Keys of rows the table does not hold are left out."""
    if not keys:
        return {}
    wanted = pa.table(
        [pa.array(list(column), t) for column, t in zip(zip(*keys, strict=True), _KEY_TYPES, strict=True)],
        names=list(LINEAGE_KEY),
    )
    narrow = pc.field("_topic").isin(wanted.column("_topic").unique()) & pc.field("_offset").isin(
        wanted.column("_offset").unique()
    )
    out: dict[LineageKey, str | None] = {}
    hot = lake.table("bronze", table)
    if hot is not None:
        rows = hot.to_pyarrow_dataset().to_table(columns=[*LINEAGE_KEY, PAYLOAD_COLUMN], filter=narrow)
        for row in rows.join(wanted, list(LINEAGE_KEY), join_type="inner").to_pylist():
            out[_row_key(row)] = row[PAYLOAD_COLUMN]
    if all(out.get(k) is not None for k in keys):
        return out
    cold = _archived_payload_rows(lake, archive_uri, table, narrow)
    if cold is not None:
        for row in cold.join(wanted, list(LINEAGE_KEY), join_type="inner").to_pylist():
            out[_row_key(row)] = row[PAYLOAD_COLUMN]
    return out

