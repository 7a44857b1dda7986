"""Silver market data (prices, load, generation, weather) for a window of market-local days.

Belongs here: the Spark logic that turns bronze uploads (`files__*`) and price ticks (`ticks__prices`) into
typed, unit-normalised, de-duplicated `silver.market__*` rows keyed by the zone's market-local day, the price
revision trail, and the gap/duplicate flags of `silver.quality__gaps`.

A build of days [start, end) recomputes those days from every bronze row that falls on them and replaces them in
one transaction, so re-running a day (or a backfill of many days) is idempotent. The latest ingested row of a key
wins; every delivery of the key is a numbered revision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from infra.db import connect
from infra.lake import Lake
from ingestion.reference import MARKET_FEED_ORG
from ingestion.silver.bronze import local_frame, read_bronze_table
from ingestion.silver.pg_writer import Derived, ReplaceWhere, TableWrite, merge_dataframes

LINEAGE_FILES = (
    "source_tz string, _upload_id long, _file_name string, _row_number long, _sheet string, _org_id string, "
    "_ingested_at timestamp, _batch_id string"
)
LINEAGE_TICKS = "_topic string, _partition int, _offset long, _ingested_at timestamp, _batch_id string"
# Currency symbols and spellings seen in feeds -> ISO code.
CURRENCY_ALIASES = {"€": "EUR", "EURO": "EUR", "$": "USD", "US$": "USD", "£": "GBP", "₹": "INR", "RS": "INR"}


@dataclass(frozen=True)
class MarketDataset:
    """One silver market table: its bronze sources, series columns (besides zone/ts/org) and measured values."""

    name: str
    series: tuple[str, ...]  # key columns after zone, before ts_utc and org_id
    values: tuple[tuple[str, str], ...]  # (column, Spark SQL type)
    bronze_files_schema: str
    has_ticks: bool = False

    @property
    def table(self) -> str:
        return f"silver.market__{self.name}"

    @property
    def constraint(self) -> str:
        return f"market__{self.name}_key"

    @property
    def key(self) -> tuple[str, ...]:
        return ("zone", *self.series, "ts_utc", "org_id")


SILVER_MARKET_TABLES: dict[str, MarketDataset] = {
    d.name: d
    for d in [
        MarketDataset(
            "prices",
            ("node", "market", "interval_minutes"),
            (("price", "double"), ("currency", "string")),
            "ts_utc timestamp, zone string, node string, market string, interval_minutes int, price double, "
            "currency string, " + LINEAGE_FILES,
            has_ticks=True,
        ),
        MarketDataset(
            "load",
            ("interval_minutes",),
            (("load_mw", "double"),),
            "ts_utc timestamp, zone string, interval_minutes int, load_mw double, " + LINEAGE_FILES,
        ),
        MarketDataset(
            "generation",
            ("fuel", "interval_minutes"),
            (("generation_mw", "double"),),
            "ts_utc timestamp, zone string, fuel string, interval_minutes int, generation_mw double, "
            + LINEAGE_FILES,
        ),
        MarketDataset(
            "weather",
            ("interval_minutes",),
            (("temperature_c", "double"), ("wind_speed_ms", "double"), ("irradiance_wm2", "double")),
            "ts_utc timestamp, zone string, temperature_c double, wind_speed_ms double, irradiance_wm2 double, "
            + LINEAGE_FILES,
        ),
    ]
}
TICKS_SCHEMA = (
    "zone string, node string, ts_utc timestamp, market string, interval_minutes int, price double, "
    "currency string, " + LINEAGE_TICKS
)
WEATHER_INTERVAL_MINUTES = 60  # weather bronze has no interval column; feeds are hourly


@dataclass
class MarketBuildResult:
    """Rows written per silver table for market days [start, end)."""

    start: date
    end: date
    rows: dict[str, int] = field(default_factory=dict)
    # rows each table's window held before the build (replaced by the build's rows, or kept where identical)
    replaced: dict[str, int] = field(default_factory=dict)
    # seconds waiting for Spark's rows / applying them in Postgres, per table (see pg_writer.WriteResult)
    spark_wait_s: dict[str, float] = field(default_factory=dict)
    postgres_s: dict[str, float] = field(default_factory=dict)


def _col_or_null(df: DataFrame, column: str, spark_type: str) -> Column:
    return F.col(column).cast(spark_type) if column in df.columns else F.lit(None).cast(spark_type)


def _normalised_currency(currency: Column) -> tuple[Column, Column]:
    """(ISO currency code, factor that turns a price per unit of energy into a price per MWh)."""
    text = F.upper(F.trim(currency))
    per_kwh = text.rlike(r"/\s*KWH$")
    code = F.trim(F.regexp_replace(text, r"\s*/\s*[KM]WH$", ""))
    for alias, iso in CURRENCY_ALIASES.items():
        code = F.when(code == alias, F.lit(iso)).otherwise(code)
    return code, F.when(per_kwh, F.lit(1000.0)).otherwise(F.lit(1.0))


def _files_rows(df: DataFrame, dataset: MarketDataset) -> DataFrame:
    """Uploaded rows in the common shape: key, values, lineage and the ingestion order."""
    series = [
        F.lit(WEATHER_INTERVAL_MINUTES).cast("int").alias(c)
        if c == "interval_minutes" and dataset.name == "weather"
        else _col_or_null(df, c, "int" if c == "interval_minutes" else "string").alias(c)
        for c in dataset.series
    ]
    return df.select(
        F.col("ts_utc").cast("timestamp").alias("ts_utc"),
        F.col("zone").cast("string").alias("zone"),
        *series,
        *[_col_or_null(df, c, t).alias(c) for c, t in dataset.values],
        # The market-feed organization's uploads are the public feed: published with org_id NULL.
        F.when(_col_or_null(df, "_org_id", "string") == F.lit(MARKET_FEED_ORG), F.lit(None).cast("string"))
        .otherwise(_col_or_null(df, "_org_id", "string"))
        .alias("org_id"),
        F.lit("file").alias("source"),
        F.format_string(
            "upload %s %s%s#%s",
            F.col("_upload_id"),
            F.col("_file_name"),
            F.coalesce(F.concat(F.lit("["), _col_or_null(df, "_sheet", "string"), F.lit("]")), F.lit("")),
            F.col("_row_number"),
        ).alias("source_ref"),
        F.col("_batch_id").alias("batch_id"),
        F.col("_ingested_at").alias("ingested_at"),
        F.col("_upload_id").cast("long").alias("_order_a"),
        F.col("_row_number").cast("long").alias("_order_b"),
    )


def _tick_rows(df: DataFrame) -> DataFrame:
    return df.select(
        F.col("ts_utc").cast("timestamp").alias("ts_utc"),
        F.col("zone").cast("string").alias("zone"),
        F.col("node").cast("string").alias("node"),
        F.col("market").cast("string").alias("market"),
        F.col("interval_minutes").cast("int").alias("interval_minutes"),
        F.col("price").cast("double").alias("price"),
        F.col("currency").cast("string").alias("currency"),
        F.lit(None).cast("string").alias("org_id"),  # market feeds are public data
        F.lit("tick").alias("source"),
        F.format_string("%s/%s@%s", F.col("_topic"), F.col("_partition"), F.col("_offset")).alias("source_ref"),
        F.col("_batch_id").alias("batch_id"),
        F.col("_ingested_at").alias("ingested_at"),
        F.col("_partition").cast("long").alias("_order_a"),
        F.col("_offset").cast("long").alias("_order_b"),
    )


def zones_frame(spark: SparkSession, database_url: str) -> DataFrame:
    """zone, timezone, zone_currency of `silver.ref__zones` (a small broadcastable frame)."""
    with connect(database_url) as conn:
        rows = conn.execute("SELECT zone, timezone, currency FROM silver.ref__zones").fetchall()
    return local_frame(spark, rows, "zone string, timezone string, zone_currency string")


def observations(
    spark: SparkSession, lake: Lake, dataset: MarketDataset, zones: DataFrame, start: date, end: date
) -> DataFrame:
    """Every bronze delivery that can fall on market days [start, end), typed, normalised and dated.

    Rows whose zone is unknown get a NULL timezone and the UTC date; the caller flags them.
    """
    # Zones sit within UTC-12..UTC+14, so one day either side holds every candidate row.
    lo = datetime.combine(start - timedelta(days=1), time(), UTC)
    hi = datetime.combine(end + timedelta(days=1), time(), UTC)
    parts = []
    files = read_bronze_table(spark, lake, f"files__{dataset.name}", dataset.bronze_files_schema)
    files = files.where((F.col("ts_utc") >= F.lit(lo)) & (F.col("ts_utc") < F.lit(hi)))
    # The same uploaded row read twice (a retried batch) is one delivery.
    parts.append(_files_rows(files, dataset).dropDuplicates(["source_ref"]))
    if dataset.has_ticks:
        ticks = read_bronze_table(spark, lake, "ticks__prices", TICKS_SCHEMA)
        ticks = ticks.where((F.col("ts_utc") >= F.lit(lo)) & (F.col("ts_utc") < F.lit(hi)))
        parts.append(_tick_rows(ticks).dropDuplicates(["source_ref"]))
    rows = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
    rows = rows.join(F.broadcast(zones), "zone", "left")
    if dataset.name == "prices":
        code, factor = _normalised_currency(F.coalesce(F.col("currency"), F.col("zone_currency")))
        rows = rows.withColumn("price", F.col("price") * factor).withColumn("currency", code)
    local = F.from_utc_timestamp(F.col("ts_utc"), F.coalesce(F.col("timezone"), F.lit("UTC")))
    rows = rows.withColumn("market_date", F.to_date(local))
    return rows.where((F.col("market_date") >= F.lit(start)) & (F.col("market_date") < F.lit(end)))


def with_revisions(rows: DataFrame, dataset: MarketDataset) -> DataFrame:
    """`rows` plus `revision` (1 = first delivery of the key) and `is_latest` (the last ingested delivery)."""
    per_key = Window.partitionBy(*dataset.key)
    ordered = per_key.orderBy("ingested_at", "_order_a", "_order_b", "source_ref")
    return (
        rows.withColumn("revision", F.row_number().over(ordered))
        .withColumn("deliveries", F.count(F.lit(1)).over(per_key))
        .withColumn("is_latest", F.col("revision") == F.col("deliveries"))
    )


def _series_key(dataset: MarketDataset) -> Column:
    parts = [F.col("zone")] + [F.coalesce(F.col(c).cast("string"), F.lit("-")) for c in dataset.series]
    return F.concat_ws("|", *parts)


def quality_frame(revised: DataFrame, dataset: MarketDataset) -> DataFrame:
    """Gap and duplicate flags per series and market day, in `silver.quality__gaps` column order."""
    known = revised.where(F.col("timezone").isNotNull())
    group = ["zone", *dataset.series, "org_id", "market_date", "timezone"]
    per_key = known.groupBy(*group, "ts_utc").agg(F.max("deliveries").alias("deliveries"))
    day_start = F.to_utc_timestamp(F.col("market_date").cast("timestamp"), F.col("timezone"))
    day_end = F.to_utc_timestamp(F.date_add(F.col("market_date"), 1).cast("timestamp"), F.col("timezone"))
    interval_s = F.col("interval_minutes").cast("long") * 60
    day = per_key.groupBy(*group).agg(
        F.count(F.lit(1)).alias("observed_points"),
        F.sum(F.col("deliveries") - 1).alias("extra_deliveries"),
        F.min(F.when(F.col("deliveries") > 1, F.col("ts_utc"))).alias("first_dup"),
        F.max(F.when(F.col("deliveries") > 1, F.col("ts_utc"))).alias("last_dup"),
        F.min("ts_utc").alias("first_obs"),
        F.collect_list("ts_utc").alias("observed"),
    )
    day = day.withColumn("day_start", day_start).withColumn("day_end", day_end)
    day = day.withColumn(
        "expected_points",
        ((F.unix_timestamp("day_end") - F.unix_timestamp("day_start")) / interval_s).cast("int"),
    )
    series_key = _series_key(dataset)
    common = [
        F.lit(dataset.name).alias("dataset"),
        F.col("zone"),
        series_key.alias("series_key"),
        F.col("org_id"),
        F.col("market_date"),
    ]
    duplicates = day.where(F.col("extra_deliveries") > 0).select(
        *common,
        F.lit("duplicate").alias("issue"),
        F.col("interval_minutes").cast("int").alias("interval_minutes"),
        F.col("expected_points"),
        F.col("observed_points").cast("int").alias("observed_points"),
        F.col("extra_deliveries").cast("int").alias("affected_points"),
        F.col("first_dup").alias("first_ts"),
        F.col("last_dup").alias("last_ts"),
    )
    # The grid of expected timestamps is anchored on the series' own phase (an hourly UTC series in a
    # UTC+05:30 zone sits on :00 UTC, not on local midnight).
    anchor_s = F.unix_timestamp("day_start") + F.pmod(
        F.unix_timestamp("first_obs") - F.unix_timestamp("day_start"), interval_s
    )
    short = day.where(F.col("observed_points") < F.col("expected_points")).withColumn(
        "grid",
        F.sequence(anchor_s, F.unix_timestamp("day_end") - 1, interval_s),
    )
    missing = F.filter(
        F.transform(F.col("grid"), lambda s: F.timestamp_seconds(s)),
        lambda ts: ~F.array_contains(F.col("observed"), ts),
    )
    gaps = short.withColumn("missing", missing).select(
        *common,
        F.lit("gap").alias("issue"),
        F.col("interval_minutes").cast("int").alias("interval_minutes"),
        F.col("expected_points"),
        F.col("observed_points").cast("int").alias("observed_points"),
        (F.col("expected_points") - F.col("observed_points")).cast("int").alias("affected_points"),
        F.array_min("missing").alias("first_ts"),
        F.array_max("missing").alias("last_ts"),
    )
    unknown = (
        revised.where(F.col("timezone").isNull())
        .groupBy("zone", "org_id", "market_date")
        .agg(F.count(F.lit(1)).alias("n"), F.min("ts_utc").alias("first_ts"), F.max("ts_utc").alias("last_ts"))
        .select(
            F.lit(dataset.name).alias("dataset"),
            F.col("zone"),
            F.col("zone").alias("series_key"),
            F.col("org_id"),
            F.col("market_date"),
            F.lit("unknown_zone").alias("issue"),
            F.lit(None).cast("int").alias("interval_minutes"),
            F.lit(None).cast("int").alias("expected_points"),
            F.col("n").cast("int").alias("observed_points"),
            F.col("n").cast("int").alias("affected_points"),
            "first_ts",
            "last_ts",
        )
    )
    return duplicates.unionByName(gaps).unionByName(unknown)


def silver_frame(revised: DataFrame, dataset: MarketDataset) -> DataFrame:
    """The winning delivery of every key, in `silver.market__<dataset>` column order."""
    return revised.where(F.col("is_latest") & F.col("timezone").isNotNull()).select(
        "ts_utc",
        "market_date",
        "zone",
        *dataset.series,
        *[c for c, _ in dataset.values],
        "org_id",
        F.col("revision").cast("int").alias("revision"),
        F.lit(False).alias("is_gap_filled"),
        "source",
        "ingested_at",
    )


PRICES_COLUMNS = (
    "ts_utc", "market_date", "zone", "node", "market", "interval_minutes", "price", "currency", "org_id", "revision",
    "is_gap_filled", "source", "ingested_at",
)


def price_revisions_frame(revised: DataFrame) -> DataFrame:
    """Every delivery of every price key, in `silver.market__price_revisions` column order."""
    return revised.where(F.col("timezone").isNotNull()).select(
        "ts_utc", "market_date", "zone", "node", "market", "interval_minutes", "org_id",
        F.col("revision").cast("int").alias("revision"), "price", "currency", "is_latest", "source",
        "source_ref", "batch_id", "ingested_at",
    )


def latest_prices(revisions: pa.Table) -> pa.Table:
    """`silver.market__prices` rows (column order included) from `price_revisions_frame` rows: the latest ones."""
    latest = revisions.filter(pc.field("is_latest"))
    columns = [c for c in PRICES_COLUMNS if c != "is_gap_filled"]
    return latest.select(columns).add_column(
        PRICES_COLUMNS.index("is_gap_filled"), "is_gap_filled", pa.nulls(latest.num_rows, pa.bool_()).fill_null(False)
    )


def _clearing_writes(dataset: MarketDataset, window: str, start: date, end: date) -> list[TableWrite]:
    tables = [dataset.table] + (["silver.market__price_revisions"] if dataset.name == "prices" else [])
    return [TableWrite(None, table, dataset.key, ReplaceWhere(window, (start, end))) for table in tables]


def build_market_window(
    spark: SparkSession,
    lake: Lake,
    database_url: str,
    start: date,
    end: date,
    datasets: Sequence[str] = tuple(SILVER_MARKET_TABLES),
) -> MarketBuildResult:
    """Rebuild market days [start, end) of the silver market tables, price revisions and quality flags.

    Everything is replaced in one transaction; a day with no bronze rows ends up empty.
    """
    if end <= start:
        raise ValueError(f"empty market-day window [{start}, {end})")
    zones = zones_frame(spark, database_url)
    window = "market_date >= %s AND market_date < %s"
    writes: list[TableWrite] = []
    quality: list[DataFrame] = []
    cached: list[DataFrame] = []
    for name in datasets:
        dataset = SILVER_MARKET_TABLES[name]
        sources = [f"files__{name}"] + (["ticks__prices"] if dataset.has_ticks else [])
        if all(lake.table("bronze", source) is None for source in sources):
            # Nothing in bronze: the window's silver rows are just cleared, with no Spark job at all.
            writes.extend(_clearing_writes(dataset, window, start, end))
            continue
        revised = with_revisions(observations(spark, lake, dataset, zones, start, end), dataset).cache()
        cached.append(revised)
        if name == "prices":
            writes.append(
                TableWrite(
                    price_revisions_frame(revised),
                    "silver.market__price_revisions",
                    (*dataset.key, "revision"),
                    ReplaceWhere(window, (start, end)),
                    conflict_constraint="market__price_revisions_key",
                )
            )
        writes.append(
            TableWrite(
                # Prices are the latest revisions: projected from the revision rows on the driver.
                Derived("silver.market__price_revisions", latest_prices) if name == "prices"
                else silver_frame(revised, dataset),
                dataset.table,
                dataset.key,
                ReplaceWhere(window, (start, end)),
                conflict_constraint=dataset.constraint,
            )
        )
        quality.append(quality_frame(revised, dataset))
    flags = None
    for frame in quality:
        flags = frame if flags is None else flags.unionByName(frame)
    writes.append(
        TableWrite(
            flags,
            "silver.quality__gaps",
            ("dataset", "series_key", "org_id", "market_date", "issue"),
            ReplaceWhere(window + " AND dataset = ANY(%s)", (start, end, list(datasets))),
            conflict_constraint="quality__gaps_key",
        )
    )
    try:
        written = merge_dataframes(database_url, writes)
    finally:
        for frame in cached:
            frame.unpersist()
    return MarketBuildResult(
        start, end, dict(written.staged), dict(written.replaced), written.spark_wait_s, written.postgres_s
    )
