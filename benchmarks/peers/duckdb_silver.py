"""The silver market build done in DuckDB: the peer `benchmarks/silver_gold_build.py` times OptiBid against.

NOT a second silver implementation. The product's silver is `ingestion/silver/market.py` (Spark); this module
exists only so the benchmark can print how far OptiBid is from what a user without Spark would write: the same
bronze snapshot (the Delta tables' Parquet files), the same rules (market-local days, currency normalisation,
revisions in ingestion order, gap/duplicate/unknown-zone flags), written to the same Postgres tables by COPY in
one transaction. `tests/silver/test_duckdb_peer.py` checks that it produces exactly OptiBid's rows on a small
fixture, so the comparison is fair; nothing in the platform imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

import duckdb
import pyarrow as pa
from psycopg import sql

from infra.db import connect
from infra.lake import Lake
from ingestion.reference import MARKET_FEED_ORG
from ingestion.silver.market import CURRENCY_ALIASES, SILVER_MARKET_TABLES, WEATHER_INTERVAL_MINUTES, MarketDataset
from ingestion.silver.pg_writer import copy_arrow


@dataclass
class PeerBuildResult:
    """Rows written per silver table, and seconds spent in DuckDB and in Postgres."""

    rows: dict[str, int] = field(default_factory=dict)
    duckdb_s: float = 0.0
    postgres_s: float = 0.0


def _quote(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _parquet(files: Sequence[str]) -> str:
    return "read_parquet([" + ", ".join(_quote(f) for f in files) + "], union_by_name = true)"


def _files_select(dataset: MarketDataset, columns: set[str], files: Sequence[str], lo: date, hi: date) -> str:
    def col(name: str, sql_type: str) -> str:
        return f"CAST({name} AS {sql_type})" if name in columns else f"CAST(NULL AS {sql_type})"

    series = [
        f"CAST({WEATHER_INTERVAL_MINUTES} AS INTEGER) AS {c}"
        if c == "interval_minutes" and dataset.name == "weather"
        else f"{col(c, 'INTEGER' if c == 'interval_minutes' else 'VARCHAR')} AS {c}"
        for c in dataset.series
    ]
    values = [f"{col(c, 'DOUBLE' if t == 'double' else 'VARCHAR')} AS {c}" for c, t in dataset.values]
    return f"""
        SELECT ts_utc, CAST(zone AS VARCHAR) AS zone, {", ".join(series)}, {", ".join(values)},
               CASE WHEN {col("_org_id", "VARCHAR")} = {_quote(MARKET_FEED_ORG)} THEN NULL
                    ELSE {col("_org_id", "VARCHAR")} END AS org_id,
               'file' AS source,
               'upload ' || _upload_id || ' ' || _file_name
                   || coalesce('[' || {col("_sheet", "VARCHAR")} || ']', '') || '#' || _row_number AS source_ref,
               _batch_id AS batch_id, _ingested_at AS ingested_at,
               CAST(_upload_id AS BIGINT) AS order_a, CAST(_row_number AS BIGINT) AS order_b
        FROM {_parquet(files)}
        WHERE ts_utc >= TIMESTAMPTZ '{lo}' AND ts_utc < TIMESTAMPTZ '{hi}'
        QUALIFY row_number() OVER (PARTITION BY source_ref) = 1"""


def _ticks_select(files: Sequence[str], lo: date, hi: date) -> str:
    return f"""
        SELECT ts_utc, CAST(zone AS VARCHAR) AS zone, CAST(node AS VARCHAR) AS node,
               CAST(market AS VARCHAR) AS market, CAST(interval_minutes AS INTEGER) AS interval_minutes,
               CAST(price AS DOUBLE) AS price, CAST(currency AS VARCHAR) AS currency, CAST(NULL AS VARCHAR) AS org_id,
               'tick' AS source, _topic || '/' || _partition || '@' || _offset AS source_ref,
               _batch_id AS batch_id, _ingested_at AS ingested_at,
               CAST(_partition AS BIGINT) AS order_a, CAST(_offset AS BIGINT) AS order_b
        FROM {_parquet(files)}
        WHERE ts_utc >= TIMESTAMPTZ '{lo}' AND ts_utc < TIMESTAMPTZ '{hi}'
        QUALIFY row_number() OVER (PARTITION BY source_ref) = 1"""


def _currency_sql() -> tuple[str, str]:
    text = "upper(trim(coalesce(currency, zone_currency)))"
    code = f"trim(regexp_replace({text}, '\\s*/\\s*[KM]WH$', '', 'g'))"
    aliases = " ".join(f"WHEN {_quote(a)} THEN {_quote(iso)}" for a, iso in CURRENCY_ALIASES.items())
    return (
        f"CASE {code} {aliases} ELSE {code} END",
        f"CASE WHEN regexp_matches({text}, '/\\s*KWH$') THEN 1000.0 ELSE 1.0 END",
    )


def _revised_sql(dataset: MarketDataset, sources: list[str], start: date, end: date) -> str:
    key = ", ".join(dataset.key)
    union = " UNION ALL BY NAME ".join(f"({s})" for s in sources)
    if dataset.name == "prices":
        code, factor = _currency_sql()
        normalised = f"* REPLACE (price * {factor} AS price, {code} AS currency)"
    else:
        normalised = "*"
    return f"""
        WITH obs AS (SELECT o.*, z.timezone, z.zone_currency FROM ({union}) o LEFT JOIN zones z USING (zone)),
        norm AS (SELECT {normalised} FROM obs),
        dated AS (SELECT *, CAST(ts_utc AT TIME ZONE coalesce(timezone, 'UTC') AS DATE) AS market_date FROM norm)
        SELECT *,
               row_number() OVER (PARTITION BY {key} ORDER BY ingested_at, order_a, order_b, source_ref) AS revision,
               count(*) OVER (PARTITION BY {key}) AS deliveries
        FROM dated WHERE market_date >= DATE '{start}' AND market_date < DATE '{end}'"""


def _quality_sql(dataset: MarketDataset, revised: str) -> str:
    series = list(dataset.series)
    group = ", ".join(["zone", *series, "org_id", "market_date", "timezone"])
    series_key = " || '|' || ".join(["zone"] + [f"coalesce(CAST({c} AS VARCHAR), '-')" for c in series])
    secs = "(epoch_ms({}) // 1000)"
    start_s, end_s = secs.format("day_start"), secs.format("day_end")
    common = f"{_quote(dataset.name)} AS dataset, zone, {series_key} AS series_key, org_id, market_date"
    return f"""
        WITH per_key AS (
            SELECT {group}, ts_utc, max(deliveries) AS deliveries FROM {revised}
            WHERE timezone IS NOT NULL GROUP BY ALL),
        day AS (
            SELECT {group}, count(*) AS observed_points, sum(deliveries - 1) AS extra_deliveries,
                   min(ts_utc) FILTER (WHERE deliveries > 1) AS first_dup,
                   max(ts_utc) FILTER (WHERE deliveries > 1) AS last_dup,
                   min(ts_utc) AS first_obs, list(epoch_ms(ts_utc) // 1000) AS observed,
                   CAST(market_date AS TIMESTAMP) AT TIME ZONE timezone AS day_start,
                   CAST(market_date + 1 AS TIMESTAMP) AT TIME ZONE timezone AS day_end
            FROM per_key GROUP BY ALL),
        sized AS (
            SELECT *, CAST(interval_minutes AS BIGINT) * 60 AS interval_s,
                   CAST(({end_s} - {start_s}) // (CAST(interval_minutes AS BIGINT) * 60) AS INTEGER) AS expected_points
            FROM day),
        short AS (
            SELECT *, list_filter(
                       range({start_s} + ((((epoch_ms(first_obs) // 1000) - {start_s}) % interval_s) + interval_s)
                                         % interval_s, {end_s}, interval_s),
                       s -> NOT list_contains(observed, s)) AS missing
            FROM sized WHERE observed_points < expected_points)
        SELECT {common}, 'duplicate' AS issue, CAST(interval_minutes AS INTEGER) AS interval_minutes, expected_points,
               CAST(observed_points AS INTEGER) AS observed_points,
               CAST(extra_deliveries AS INTEGER) AS affected_points, first_dup AS first_ts, last_dup AS last_ts
        FROM sized WHERE extra_deliveries > 0
        UNION ALL
        SELECT {common}, 'gap', CAST(interval_minutes AS INTEGER), expected_points, CAST(observed_points AS INTEGER),
               CAST(expected_points - observed_points AS INTEGER),
               to_timestamp(list_min(missing)), to_timestamp(list_max(missing))
        FROM short
        UNION ALL
        SELECT {_quote(dataset.name)}, zone, zone, org_id, market_date, 'unknown_zone', NULL, NULL,
               CAST(count(*) AS INTEGER), CAST(count(*) AS INTEGER), min(ts_utc), max(ts_utc)
        FROM {revised} WHERE timezone IS NULL GROUP BY zone, org_id, market_date"""


def build_market_window_duckdb(
    lake: Lake,
    database_url: str,
    start: date,
    end: date,
    datasets: Sequence[str] = tuple(SILVER_MARKET_TABLES),
    threads: int | None = None,
) -> PeerBuildResult:
    """Rebuild market days [start, end) of the silver market tables like `build_market_window`, in DuckDB."""
    import time

    result = PeerBuildResult()
    t0 = time.perf_counter()
    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    db.execute("SET default_null_order = 'nulls_first'")  # Spark's ascending order
    if threads:
        db.execute(f"SET threads = {int(threads)}")
    with connect(database_url) as conn:
        zones = conn.execute("SELECT zone, timezone, currency FROM silver.ref__zones").fetchall()
    zone_table = pa.table(
        {k: pa.array([z[i] for z in zones], pa.string()) for i, k in enumerate(["zone", "timezone", "zone_currency"])}
    )
    db.register("zones", zone_table)
    lo, hi = start - timedelta(days=1), end + timedelta(days=1)
    outputs: list[tuple[str, pa.Table | None, str, tuple[object, ...]]] = []
    window = "market_date >= %s AND market_date < %s"
    quality: list[str] = []
    for name in datasets:
        dataset = SILVER_MARKET_TABLES[name]
        sources = []
        files_table = lake.table("bronze", f"files__{name}")
        if files_table is not None and files_table.file_uris():
            columns = set(files_table.schema().to_arrow().names)
            sources.append(_files_select(dataset, columns, files_table.file_uris(), lo, hi))
        ticks = lake.table("bronze", "ticks__prices") if dataset.has_ticks else None
        if ticks is not None and ticks.file_uris():
            sources.append(_ticks_select(ticks.file_uris(), lo, hi))
        tables = [dataset.table] + (["silver.market__price_revisions"] if name == "prices" else [])
        if not sources:
            outputs.extend((t, None, window, (start, end)) for t in tables)
            continue
        revised = f"revised_{name}"
        db.execute(f"CREATE TEMP TABLE {revised} AS {_revised_sql(dataset, sources, start, end)}")
        values = [c for c, _ in dataset.values]
        silver = db.sql(
            f"""SELECT ts_utc, market_date, zone, {", ".join(dataset.series)}, {", ".join(values)}, org_id,
                       CAST(revision AS INTEGER) AS revision, false AS is_gap_filled, source, ingested_at
                FROM {revised} WHERE revision = deliveries AND timezone IS NOT NULL"""
        ).to_arrow_table()
        outputs.append((dataset.table, silver, window, (start, end)))
        if name == "prices":
            revisions = db.sql(
                f"""SELECT ts_utc, market_date, zone, node, market, interval_minutes, org_id,
                           CAST(revision AS INTEGER) AS revision, price, currency, revision = deliveries AS is_latest,
                           source, source_ref, batch_id, ingested_at
                    FROM {revised} WHERE timezone IS NOT NULL"""
            ).to_arrow_table()
            outputs.append(("silver.market__price_revisions", revisions, window, (start, end)))
        db.execute(f"CREATE TEMP TABLE quality_{name} AS {_quality_sql(dataset, revised)}")
        quality.append(f"SELECT * FROM quality_{name}")
    flags = db.sql(" UNION ALL ".join(quality)).to_arrow_table() if quality else None
    outputs.append(("silver.quality__gaps", flags, window + " AND dataset = ANY(%s)", (start, end, list(datasets))))
    result.duckdb_s = time.perf_counter() - t0
    db.close()

    t0 = time.perf_counter()
    with connect(database_url) as conn:
        for table, data, predicate, params in outputs:
            schema, _, name = table.partition(".")
            target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
            conn.execute(sql.SQL("DELETE FROM {} WHERE ").format(target) + sql.SQL(predicate), params)  # type: ignore[arg-type]
            result.rows[table] = 0 if data is None else copy_arrow(conn, target, data)
    result.postgres_s = time.perf_counter() - t0
    return result
