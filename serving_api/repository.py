"""All reads of gold/silver/ops data the API serves, in one place.

Every function takes a connection from `OrgSession.conn()` (already `SET LOCAL ROLE optibid_api` with the
caller's organization), so row-level security decides which rows exist. The one exception is rows of archived
days, read from the cold tier: they pass the same organization rule here (see `archived_rows`). Identifiers are
never taken from the client: tables come from `SERVED_TABLES`, columns are checked against the table's
catalogue, and every value is a bound parameter.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import heapq
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from infra.retention import RETENTION_POLICIES, hot_rows_supersede, read_archive
from serving_api.errors import ApiError
from serving_api.state import ApiState


@dataclass(frozen=True)
class Dataset:
    """A tabular gold/ops table the API serves with time range, filters, cursor pages and exports."""

    key: str
    table: str  # schema.table
    time_col: str  # what `from`/`to` filter
    order_cols: tuple[str, ...]  # keyset order: non-null and unique together
    filter_cols: tuple[str, ...] = ()
    date_col: str | None = "market_date"  # partition column for cache versions

    @property
    def schema_name(self) -> str:
        return self.table.split(".", 1)[0]

    @property
    def table_name(self) -> str:
        return self.table.split(".", 1)[1]


SERVED_TABLES: dict[str, Dataset] = {
    d.key: d
    for d in [
        Dataset(
            "prices_hourly",
            "gold.fct_prices_hourly",
            "ts_utc",
            ("ts_utc", "zone", "market"),
            ("zone", "market"),
        ),
        Dataset(
            "prices_5min", "gold.fct_prices_5min", "ts_utc", ("ts_utc", "zone", "node"), ("zone", "node")
        ),
        Dataset("load_hourly", "gold.fct_load_hourly", "ts_utc", ("ts_utc", "zone"), ("zone",)),
        Dataset(
            "generation_hourly",
            "gold.fct_generation_hourly",
            "ts_utc",
            ("ts_utc", "zone", "fuel"),
            ("zone", "fuel"),
        ),
        Dataset(
            "kpi_values",
            "gold.kpi_values",
            "period_start",
            ("period_start", "zone", "grain", "kpi_code"),
            ("kpi_code", "zone", "grain"),
        ),
        Dataset(
            "forecasts",
            "gold.forecasts",
            "ts_utc",
            ("ts_utc", "zone", "model", "run_id"),
            ("zone", "target", "model", "run_id"),
            date_col=None,
        ),
        # Trading facts of the caller's organization (dbt marts fct_bids, fct_trades, fct_positions; RLS).
        Dataset(
            "bids",
            "gold.fct_bids",
            "delivery_start",
            ("delivery_start", "bid_id"),
            ("zone", "asset_id", "side", "status", "bid_id"),
        ),
        Dataset(
            "trades",
            "gold.fct_trades",
            "delivery_start",
            ("delivery_start", "trade_id"),
            ("zone", "side", "bid_id", "trade_id", "counterparty"),
        ),
        Dataset(
            "positions",
            "gold.fct_positions",
            "delivery_start",
            ("delivery_start", "zone", "org_id"),
            ("zone",),
        ),
        # Model monitoring (infra/sql/060_ml.sql, 150_drift_summaries.sql): market-level, no org_id.
        Dataset(
            "anomalies",
            "gold.anomalies",
            "ts_utc",
            ("ts_utc", "zone", "target", "kind"),
            ("zone", "target", "kind"),
        ),
        Dataset(
            "backtests",
            "ml.backtests",
            "created_at",
            ("created_at", "run_id", "zone", "target"),
            ("zone", "target", "run_id"),
            date_col=None,
        ),
        Dataset(
            "model_selections",
            "ml.model_selection",
            "selected_at",
            ("selected_at", "zone", "target"),
            ("zone", "target", "model"),
            date_col=None,
        ),
        Dataset(
            "current_models",
            "ml.current_models",
            "selected_at",
            ("zone", "target"),
            ("zone", "target", "model"),
            date_col=None,
        ),
        Dataset(
            "drift_summaries",
            "ml.drift_summaries",
            "current_end",
            ("current_end", "zone"),
            ("zone",),
            date_col=None,
        ),
        # Optimization results (infra/sql/070_optimization.sql): keyed by run, asset/unit and interval.
        Dataset(
            "optimization_runs",
            "ml.optimization_runs",
            "created_at",
            ("created_at", "run_id"),
            ("problem", "status", "run_id"),
            date_col=None,
        ),
        Dataset(
            "storage_schedules",
            "gold.storage_schedules",
            "interval_start",
            ("run_id", "asset_id", "interval_index"),
            ("run_id", "asset_id"),
            date_col=None,
        ),
        Dataset(
            "bid_curves",
            "gold.bid_curves",
            "delivery_start",
            ("run_id", "asset_id", "hour", "step"),
            ("run_id", "asset_id", "zone"),
            date_col=None,
        ),
        Dataset(
            "unit_commitment",
            "gold.unit_commitment",
            "hour_start",
            ("run_id", "unit_id", "hour"),
            ("run_id", "unit_id"),
            date_col=None,
        ),
        # infra/sql/040_uploads.sql
        Dataset(
            "uploads", "ops.uploads", "created_at", ("created_at", "id"), ("status", "id"), date_col=None
        ),
    ]
}


@dataclass(frozen=True)
class TableQuery:
    dataset: Dataset
    filters: dict[str, Any]
    t_from: datetime | None
    t_to: datetime | None
    fields: tuple[str, ...] | None
    limit: int
    cursor: str | None = None


async def table_columns(state: ApiState, conn: AsyncConnection, dataset: Dataset) -> dict[str, str]:
    """Column → data type of a dataset's table (cached); 503 while the table does not exist or lacks RLS."""
    now = time.monotonic()
    cached = state.table_catalog.get(dataset.table)
    if cached is not None:
        found = cached[1] is not None
        ttl = state.options.table_catalog_seconds if found else state.options.missing_table_recheck_seconds
        cached = cached if now - cached[0] <= ttl else None
    if cached is None:
        cur = await conn.execute(
            """SELECT a.attname, format_type(a.atttypid, a.atttypmod), c.relrowsecurity
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               WHERE n.nspname = %s AND c.relname = %s ORDER BY a.attnum""",
            (dataset.schema_name, dataset.table_name),
        )
        rows = await cur.fetchall()
        columns = {r[0]: r[1] for r in rows} or None
        rls = bool(rows and rows[0][2])
        state.table_catalog[dataset.table] = (now, columns, rls)
        cached = state.table_catalog[dataset.table]
    _, columns, rls = cached
    if columns is None:
        raise ApiError(503, "dataset_unavailable", f"{dataset.table} has not been materialized yet")
    if "org_id" in columns and not rls:
        # Contract: org-scoped tables carry RLS. Refuse rather than serve another organization's rows.
        raise ApiError(
            503,
            "dataset_unprotected",
            f"{dataset.table} has org_id but no row-level security; refusing to serve it",
        )
    if dataset.time_col not in columns or not set(dataset.order_cols) <= set(columns):
        raise ApiError(
            503, "dataset_schema_mismatch", f"{dataset.table} lacks a column the API orders or filters by"
        )
    return columns


def selected_columns(columns: dict[str, str], fields: Sequence[str] | None) -> list[str]:
    """The requested fields (all columns when None); 400 naming unknown ones."""
    if not fields:
        return list(columns)
    unknown = sorted(set(fields) - set(columns))
    if unknown:
        raise ApiError(
            400,
            "unknown_fields",
            "unknown field(s) in `fields`",
            {"unknown": unknown, "available": list(columns)},
        )
    return list(dict.fromkeys(fields))


def encode_cursor(values: Sequence[Any]) -> str:
    raw = json.dumps([_jsonable(v) for v in values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, types: Sequence[str]) -> list[Any]:
    """The keyset values of a cursor, typed like the order columns; 400 for anything tampered with."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
        if not isinstance(values, list) or len(values) != len(types):
            raise ValueError
        out: list[Any] = []
        for value, pg_type in zip(values, types, strict=True):
            if pg_type.startswith("timestamp"):
                out.append(datetime.fromisoformat(value))
            elif pg_type in ("integer", "bigint", "smallint"):
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError
                out.append(value)
            elif isinstance(value, str):
                out.append(value)
            else:
                raise ValueError
    except (ValueError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(
            400, "invalid_cursor", "cursor is malformed; use next_cursor from a previous page"
        ) from exc
    return out


def _where(query: TableQuery, columns: dict[str, str], order: list[str]) -> tuple[sql.Composable, list[Any]]:
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    for col, value in query.filters.items():
        if value is None:
            continue
        if col not in columns:
            raise ApiError(503, "dataset_schema_mismatch", f"{query.dataset.table} has no column {col}")
        clauses.append(sql.SQL("{} = %s").format(sql.Identifier(col)))
        params.append(value)
    time_col = sql.Identifier(query.dataset.time_col)
    if query.t_from is not None:
        clauses.append(sql.SQL("{} >= %s").format(time_col))
        params.append(query.t_from)
    if query.t_to is not None:
        clauses.append(sql.SQL("{} < %s").format(time_col))
        params.append(query.t_to)
    if query.cursor:
        values = decode_cursor(query.cursor, [columns[c] for c in order])
        clauses.append(
            sql.SQL("({}) > ({})").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in order),
                sql.SQL(", ").join(sql.Placeholder() for _ in order),
            )
        )
        params.extend(values)
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")
    return where, params


def _select(
    query: TableQuery, columns: dict[str, str], out_cols: list[str], order: list[str], limit: int | None
) -> tuple[sql.Composable, list[Any]]:
    where, params = _where(query, columns, order)
    select_cols = list(dict.fromkeys([*out_cols, *order]))
    stmt = sql.SQL("SELECT {} FROM {}{} ORDER BY {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in select_cols),
        sql.Identifier(query.dataset.schema_name, query.dataset.table_name),
        where,
        sql.SQL(", ").join(sql.Identifier(c) for c in order),
    )
    if limit is not None:
        stmt = stmt + sql.SQL(" LIMIT %s")
        params.append(limit)
    return stmt, params


def _order(dataset: Dataset, columns: dict[str, str]) -> list[str]:
    return list(dataset.order_cols)


async def fetch_page(state: ApiState, conn: AsyncConnection, query: TableQuery) -> dict[str, Any]:
    """One page: {"data": rows, "next_cursor": str | None, "count": n} (keyset pagination), archived days
    included."""
    columns = await table_columns(state, conn, query.dataset)
    out_cols = selected_columns(columns, query.fields)
    order = _order(query.dataset, columns)
    stmt, params = _select(query, columns, out_cols, order, query.limit + 1)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(stmt, params)
    hot = await cur.fetchall()
    cold = await archived_rows(state, conn, query, columns, order)
    rows = hot if cold is None else await _merged_page(hot, cold, order, query.limit + 1)
    next_cursor = None
    if len(rows) > query.limit:
        rows = rows[: query.limit]
        next_cursor = encode_cursor([rows[-1][c] for c in order])
    data = [{c: _jsonable(r[c]) for c in out_cols} for r in rows]
    return {"data": data, "next_cursor": next_cursor, "count": len(data)}


async def stream_rows(
    state: ApiState, conn: AsyncConnection, query: TableQuery
) -> tuple[list[str], dict[str, str], AsyncIterator[list[tuple]]]:
    """(columns, column types, chunks of rows) read through a server-side cursor, for exports; archived days
    are merged in, in the same order."""
    columns = await table_columns(state, conn, query.dataset)
    out_cols = selected_columns(columns, query.fields)
    order = _order(query.dataset, columns)
    where, params = _where(query, columns, order)
    read_cols = list(dict.fromkeys([*out_cols, *order]))
    stmt = sql.SQL("SELECT {} FROM {}{} ORDER BY {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in read_cols),
        sql.Identifier(query.dataset.schema_name, query.dataset.table_name),
        where,
        sql.SQL(", ").join(sql.Identifier(c) for c in order),
    )
    chunk = state.options.export_chunk_rows
    cold = await archived_rows(state, conn, query, columns, order)

    async def hot_chunks() -> AsyncIterator[list[tuple]]:
        async with conn.cursor(name="optibid_export") as cur:
            cur.itersize = chunk
            await cur.execute(stmt, params)
            while rows := await cur.fetchmany(chunk):
                yield rows

    async def chunks() -> AsyncIterator[list[tuple]]:
        width = len(out_cols)  # read_cols starts with out_cols; the order columns after them only sort
        if cold is None:
            async for rows in hot_chunks():
                yield rows if width == len(read_cols) else [r[:width] for r in rows]
            return
        key_at = [read_cols.index(c) for c in order]
        block: list[tuple] = []
        async for row in _merged(hot_chunks(), cold, lambda r: tuple(r[i] for i in key_at), read_cols):
            block.append(row[:width])
            if len(block) >= chunk:
                yield block
                block = []
        if block:
            yield block

    return out_cols, {c: columns[c] for c in out_cols}, chunks()


# --- archived days -------------------------------------------------------------------------------------------
# Days past their retention live in the cold tier (infra/retention.py). A read whose range reaches one merges
# its archived rows into the hot rows in keyset order, so the caller sees the same rows, pages and cursors as
# before the day was archived; only slower. The archived rows pass the same filters here as the hot rows do in
# SQL, the organization rule of the tables' row-level security included.

ARCHIVED_TABLES = frozenset(p.table for p in RETENTION_POLICIES if p.action == "archive")
# Days kept in memory per API process, as Arrow tables (a 5-minute day of a thousand nodes is ~10 MB), so a
# client paging through an archived range reads each day once.
ARCHIVED_DAYS_CACHED = 16


@functools.lru_cache(maxsize=ARCHIVED_DAYS_CACHED)
def _archived_day(archive_uri: str, table: str, day: date, checksum: str) -> pa.Table:
    """One archived day (cached by its checksum: archiving the day again is a new entry)."""
    return read_archive(archive_uri, table, day)


def _matching(day: pa.Table, query: TableQuery, org_id: str | None) -> pa.Table:
    """The rows of an archived day that the hot query's WHERE (and the row-level security) would keep."""
    masks = []
    if "org_id" in day.column_names:
        owner = day["org_id"]
        masks.append(pc.or_kleene(pc.is_null(owner), pc.equal(owner, org_id) if org_id else pc.is_null(owner)))
    for col, value in query.filters.items():
        if value is not None:
            masks.append(pc.equal(day[col], value))
    at = day[query.dataset.time_col]
    if query.t_from is not None:
        masks.append(pc.greater_equal(at, pa.scalar(query.t_from, at.type)))
    if query.t_to is not None:
        masks.append(pc.less(at, pa.scalar(query.t_to, at.type)))
    if not masks:
        return day
    return day.filter(pc.fill_null(functools.reduce(pc.and_kleene, masks), False))


def _hot_typed(value: Any, pg_type: str, tz: tzinfo) -> Any:
    """An archived value as psycopg returns the hot column's value (the archive keeps some types as text)."""
    if value is None:
        return None
    if pg_type.startswith("numeric") and isinstance(value, str):
        return Decimal(value)
    if pg_type in ("json", "jsonb") and isinstance(value, str):
        return json.loads(value)
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(tz)
    return value


async def _archived_days(conn: AsyncConnection, query: TableQuery) -> list[tuple[date, str]]:
    """(day, checksum) of the dataset's archived days that the request's range can reach and hot storage
    does not hold a newer build of, in day order."""
    dataset = query.dataset
    if dataset.date_col is None or dataset.table not in ARCHIVED_TABLES:
        return []
    # A market date is a zone-local day: its rows lie within a day either side of it in UTC.
    low = query.t_from.date() - timedelta(days=1) if query.t_from else None
    high = query.t_to.date() + timedelta(days=1) if query.t_to else None
    cur = await conn.execute(
        """SELECT day, checksum FROM ops.archived_partitions
           WHERE table_name = %(t)s AND restored_at IS NULL
             AND (%(low)s::date IS NULL OR day >= %(low)s) AND (%(high)s::date IS NULL OR day <= %(high)s)
           ORDER BY day""",
        {"t": dataset.table, "low": low, "high": high},
    )
    days = [(d, c) for d, c in await cur.fetchall()]
    if not days or not hot_rows_supersede(dataset.table):
        return days
    time_col, date_col = sql.Identifier(dataset.time_col), sql.Identifier(dataset.date_col)
    cur = await conn.execute(
        sql.SQL(
            """SELECT d FROM unnest(%s::date[]) AS d WHERE EXISTS (SELECT 1 FROM {table}
                 WHERE {date_col} = d AND {time_col} >= d - 1 AND {time_col} < d + 2)"""
        ).format(
            table=sql.Identifier(dataset.schema_name, dataset.table_name), date_col=date_col, time_col=time_col
        ),
        ([d for d, _ in days],),
    )
    rebuilt = {r[0] for r in await cur.fetchall()}
    return [(d, c) for d, c in days if d not in rebuilt]


async def archived_rows(
    state: ApiState, conn: AsyncConnection, query: TableQuery, columns: dict[str, str], order: list[str]
) -> AsyncIterator[dict[str, Any]] | None:
    """The request's archived rows in keyset order, read a day at a time as the consumer advances; None when
    the range reaches no archived day (the common case, which then costs one indexed lookup)."""
    days = await _archived_days(conn, query)
    if not days:
        return None
    dataset = query.dataset
    cur = await conn.execute("SELECT current_setting('optibid.org_id', true)")
    scope = await cur.fetchone()
    org_id = scope[0] if scope else None
    after = decode_cursor(query.cursor, [columns[c] for c in order]) if query.cursor else None
    tz = conn.info.timezone
    archive_uri = state.settings.resolved_archive_uri
    time_col = dataset.time_col
    # Rows are released once no later day can hold a smaller key: valid when the keyset starts with the time.
    streaming = order[0] == time_col
    if streaming and after is not None:
        first = after[0].date() - timedelta(days=1)
        days = [(d, c) for d, c in days if d >= first]

    async def rows() -> AsyncIterator[dict[str, Any]]:
        pending: list[tuple[tuple, int, dict[str, Any]]] = []
        seq = 0
        for day, checksum in days:
            if streaming:
                bound = datetime.combine(day - timedelta(days=1), datetime.min.time(), UTC)
                while pending and pending[0][0][0] < bound:
                    yield heapq.heappop(pending)[2]
            stored = await asyncio.to_thread(_archived_day, archive_uri, dataset.table, day, checksum)
            for raw in _matching(stored, query, org_id).to_pylist():
                row = {c: _hot_typed(raw.get(c), t, tz) for c, t in columns.items()}
                key = tuple(row[c] for c in order)
                if after is None or key > tuple(after):
                    heapq.heappush(pending, (key, seq, row))
                    seq += 1
        while pending:
            yield heapq.heappop(pending)[2]

    return rows()


async def _merged_page(
    hot: list[dict[str, Any]], cold: AsyncIterator[dict[str, Any]], order: list[str], size: int
) -> list[dict[str, Any]]:
    """The first `size` rows of the hot rows (already the first `size` in order) and the archived ones."""
    out: list[dict[str, Any]] = []
    i = 0
    nxt = await anext(cold, None)
    while len(out) < size and (i < len(hot) or nxt is not None):
        if nxt is None or (i < len(hot) and tuple(hot[i][c] for c in order) <= tuple(nxt[c] for c in order)):
            out.append(hot[i])
            i += 1
        else:
            out.append(nxt)
            nxt = await anext(cold, None)
    return out


async def _merged(
    hot: AsyncIterator[list[tuple]],
    cold: AsyncIterator[dict[str, Any]],
    key: Callable[[tuple], tuple],
    read_cols: list[str],
) -> AsyncIterator[tuple]:
    """Hot row tuples (in chunks) and archived rows (as dicts) as one stream of tuples in keyset order."""
    nxt = await anext(cold, None)
    async for rows in hot:
        for row in rows:
            while nxt is not None and key(cold_row := tuple(nxt[c] for c in read_cols)) < key(row):
                yield cold_row
                nxt = await anext(cold, None)
            yield row
    while nxt is not None:
        yield tuple(nxt[c] for c in read_cols)
        nxt = await anext(cold, None)


async def rows_of(conn: AsyncConnection, stmt: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(stmt, params)  # type: ignore[arg-type]  # static SQL from this module
    return [{k: _jsonable(v) for k, v in r.items()} for r in await cur.fetchall()]


async def zones(conn: AsyncConnection) -> list[dict[str, Any]]:
    return await rows_of(
        conn,
        """SELECT zone, name, market, iso, timezone, currency, latitude, longitude, price_floor, price_cap
           FROM silver.ref__zones ORDER BY zone""",
    )


async def nodes(conn: AsyncConnection, zone: str | None) -> list[dict[str, Any]]:
    return await rows_of(
        conn,
        """SELECT node, zone, latitude, longitude FROM silver.ref__nodes
           WHERE %(zone)s::text IS NULL OR zone = %(zone)s ORDER BY node""",
        {"zone": zone},  # type: ignore[arg-type]
    )


async def assets(conn: AsyncConnection, zone: str | None) -> list[dict[str, Any]]:
    return await rows_of(
        conn,
        """SELECT asset_id, org_id, zone, name, technology, capacity_mw, energy_mwh, marginal_cost
           FROM silver.ref__assets WHERE %(zone)s::text IS NULL OR zone = %(zone)s ORDER BY asset_id""",
        {"zone": zone},  # type: ignore[arg-type]
    )


async def kpi_catalog(
    state: ApiState, conn: AsyncConnection, code: str | None = None
) -> list[dict[str, Any]]:
    table = Dataset("kpi_catalog", "gold.kpi_catalog", "kpi_code", ("kpi_code",), date_col=None)
    await table_columns(state, conn, table)
    rows = await rows_of(
        conn,
        """SELECT kpi_code, name, unit, grains, scope, definition FROM gold.kpi_catalog
           WHERE %(code)s::text IS NULL OR kpi_code = %(code)s ORDER BY kpi_code""",
        {"code": code},  # type: ignore[arg-type]
    )
    for row in rows:
        grains = row.get("grains")
        if isinstance(grains, str):  # a comma-separated text column is accepted as well as text[]
            row["grains"] = [g.strip() for g in grains.strip("{}").split(",") if g.strip()]
    return rows


async def kpi_values_between(
    conn: AsyncConnection, code: str, zone: str, grain: str, start: datetime, end: datetime | None
) -> list[dict[str, Any]]:
    """KPI values with start <= period_start (<= end), oldest first (WebSocket backlog and pushes)."""
    return await rows_of(
        conn,
        """SELECT period_start, market_date, value, org_id FROM gold.kpi_values
           WHERE kpi_code = %(code)s AND zone = %(zone)s AND grain = %(grain)s
             AND period_start >= %(start)s AND (%(end)s::timestamptz IS NULL OR period_start <= %(end)s)
           ORDER BY period_start LIMIT 100000""",
        {"code": code, "zone": zone, "grain": grain, "start": start, "end": end},  # type: ignore[arg-type]
    )


async def audit(
    conn: AsyncConnection,
    org_id: str | None,
    actor: str,
    action: str,
    target: str | None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append to ops.audit_log in the caller's transaction (so it commits or rolls back with the write)."""
    await conn.execute(
        "INSERT INTO ops.audit_log (org_id, actor, action, target, details)"
        " VALUES (%s, %s, %s, %s, %s::jsonb)",
        (org_id, actor, action, target, json.dumps(details or {})),
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Infinity
    return value
