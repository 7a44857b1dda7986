"""Silver market data (prices, load, generation, weather) for a window of market-local days.

Belongs here: the Spark logic that turns bronze uploads (`files__*`) and price ticks (`ticks__prices`) into
typed, unit-normalised, de-duplicated `silver.market__*` rows keyed by the zone's market-local day, the price
revision trail, and the gap/duplicate flags of `silver.quality__gaps`.

A build of days [start, end) recomputes those days from every bronze row that falls on them and replaces them in
one transaction, so re-running a day (or a backfill of many days) is idempotent. The latest ingested row of a key
wins; every delivery of the key is a numbered revision.

Every table of a build comes from one Spark job with one shuffle (all datasets in one row shape, partitioned by
dataset, zone, org and day), read from the bronze files whose Delta statistics can hold the window: a small
window costs one job, not one per table. A long window (a backfill) runs as slices of days of bounded bronze
rows, one job each, since each job's rows come back to the driver whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from infra.db import connect
from infra.lake import Lake
from ingestion.reference import MARKET_FEED_ORG
from ingestion.silver.bronze import daily_rows, delta_schema, files_overlapping, read_bronze
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
# Bronze rows one Spark job of a build may read: its result comes back to the driver whole (Arrow), so a backfill
# of years runs as slices of days in bounded memory, the next slice computed while the previous one is COPied.
SLICE_BRONZE_ROWS = 1_500_000


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
    # the windows of days built by one Spark job each (`market_slices`)
    slices: list[tuple[date, date]] = field(default_factory=list)
    # of postgres_s: building the indexes of tables first loaded into a bare heap
    index_build_s: dict[str, float] = field(default_factory=dict)


# Every dataset's rows share one shape, so that one Spark query builds the whole window: the series columns of
# every dataset (NULL where a dataset has no such column) and every measured value.
SERIES_TYPES: dict[str, str] = {"node": "string", "market": "string", "fuel": "string", "interval_minutes": "int"}
VALUE_TYPES: dict[str, str] = {c: t for d in SILVER_MARKET_TABLES.values() for c, t in d.values}
ROW_KEY = ("dataset", "zone", *SERIES_TYPES, "ts_utc", "org_id")
# Every key (a zone's series at one instant) and every series-day lies within one of these.
DAY_PARTITIONING = ("dataset", "zone", "org_id", "market_date")
ROW_COLUMNS = (
    "dataset", "ts_utc", "market_date", "zone", *SERIES_TYPES, *VALUE_TYPES, "org_id", "revision", "is_latest",
    "source", "source_ref", "batch_id", "ingested_at",
)
OBSERVATION_COLUMNS = (
    "dataset", "ts_utc", "zone", *SERIES_TYPES, *VALUE_TYPES, "org_id", "source", "source_ref", "batch_id",
    "ingested_at", "_order_a", "_order_b",
)
PRICES_COLUMNS = (
    "ts_utc", "market_date", "zone", "node", "market", "interval_minutes", "price", "currency", "org_id", "revision",
    "is_gap_filled", "source", "ingested_at",
)
PRICE_REVISIONS_COLUMNS = (
    "ts_utc", "market_date", "zone", "node", "market", "interval_minutes", "org_id", "revision", "price",
    "currency", "is_latest", "source", "source_ref", "batch_id", "ingested_at",
)
QUALITY_COLUMNS = (
    "dataset", "zone", "series_key", "org_id", "market_date", "issue", "interval_minutes", "expected_points",
    "observed_points", "affected_points", "first_ts", "last_ts",
)


def _typed(columns: Sequence[str], column: str, spark_type: str) -> Column:
    return F.col(column).cast(spark_type) if column in columns else F.lit(None).cast(spark_type)


def _normalised_currency(currency: Column) -> tuple[Column, Column]:
    """(ISO currency code, factor that turns a price per unit of energy into a price per MWh)."""
    text = F.upper(F.trim(currency))
    per_kwh = text.rlike(r"/\s*KWH$")
    code = F.trim(F.regexp_replace(text, r"\s*/\s*[KM]WH$", ""))
    # One lookup that names `code` once: a when/otherwise chain nesting `code` in both branches grows the
    # expression (and the regex evaluations per row) exponentially with the number of aliases.
    aliases = F.create_map(*[F.lit(v) for item in sorted(CURRENCY_ALIASES.items()) for v in item])
    return F.coalesce(F.try_element_at(aliases, code), code), F.when(per_kwh, F.lit(1000.0)).otherwise(F.lit(1.0))


def _text(*parts: str | Column) -> Column:
    """`parts` (literal text and columns) as one string, a NULL column written `null`: format_string's text
    without its per-row Java formatter (the `source_ref` column was a sixth of the time of a slice's
    `observations`)."""
    return F.concat(
        *[F.lit(p) if isinstance(p, str) else F.coalesce(p.cast("string"), F.lit("null")) for p in parts]
    )


def _files_rows(df: DataFrame, columns: Sequence[str], dataset: MarketDataset) -> DataFrame:
    """Uploaded rows (bronze `columns`) in the common shape: key, values, lineage and the ingestion order."""
    series = [
        F.lit(WEATHER_INTERVAL_MINUTES).cast("int").alias(c)
        if c == "interval_minutes" and dataset.name == "weather"
        else (_typed(columns, c, t) if c in dataset.series else F.lit(None).cast(t)).alias(c)
        for c, t in SERIES_TYPES.items()
    ]
    own_values = dict(dataset.values)
    return df.select(
        F.lit(dataset.name).alias("dataset"),
        F.col("ts_utc").cast("timestamp").alias("ts_utc"),
        F.col("zone").cast("string").alias("zone"),
        *series,
        *[(_typed(columns, c, t) if c in own_values else F.lit(None).cast(t)).alias(c) for c, t in VALUE_TYPES.items()],
        # The market-feed organization's uploads are the public feed: published with org_id NULL.
        F.when(_typed(columns, "_org_id", "string") == F.lit(MARKET_FEED_ORG), F.lit(None).cast("string"))
        .otherwise(_typed(columns, "_org_id", "string"))
        .alias("org_id"),
        F.lit("file").alias("source"),
        _text(
            "upload ", F.col("_upload_id"), " ", F.col("_file_name"),
            F.coalesce(F.concat(F.lit("["), _typed(columns, "_sheet", "string"), F.lit("]")), F.lit("")),
            "#", F.col("_row_number"),
        ).alias("source_ref"),
        F.col("_batch_id").alias("batch_id"),
        F.col("_ingested_at").alias("ingested_at"),
        F.col("_upload_id").cast("long").alias("_order_a"),
        F.col("_row_number").cast("long").alias("_order_b"),
    )


def _tick_rows(df: DataFrame) -> DataFrame:
    """Price ticks in the common shape."""
    return df.select(
        F.lit("prices").alias("dataset"),
        F.col("ts_utc").cast("timestamp").alias("ts_utc"),
        F.col("zone").cast("string").alias("zone"),
        F.col("node").cast("string").alias("node"),
        F.col("market").cast("string").alias("market"),
        F.lit(None).cast("string").alias("fuel"),
        F.col("interval_minutes").cast("int").alias("interval_minutes"),
        *[
            F.col(c).cast(t).alias(c) if c in ("price", "currency") else F.lit(None).cast(t).alias(c)
            for c, t in VALUE_TYPES.items()
        ],
        F.lit(None).cast("string").alias("org_id"),  # market feeds are public data
        F.lit("tick").alias("source"),
        _text(F.col("_topic"), "/", F.col("_partition"), "@", F.col("_offset")).alias("source_ref"),
        F.col("_batch_id").alias("batch_id"),
        F.col("_ingested_at").alias("ingested_at"),
        F.col("_partition").cast("long").alias("_order_a"),
        F.col("_offset").cast("long").alias("_order_b"),
    )


@dataclass(frozen=True)
class Zones:
    """`silver.ref__zones` as lookups: each zone's timezone and currency (NULL for a zone nobody registered).

    Literal maps in the query, not a joined frame: a few hundred zones at most, and no broadcast job per build.
    """

    timezones: dict[str, str]
    currencies: dict[str, str]

    @staticmethod
    def _lookup(mapping: dict[str, str], zone: Column) -> Column:
        if not mapping:
            return F.lit(None).cast("string")
        literal = F.create_map(*[F.lit(v) for item in sorted(mapping.items()) for v in item])
        return F.try_element_at(literal, zone)

    def timezone(self, zone: Column) -> Column:
        return self._lookup(self.timezones, zone)

    def currency(self, zone: Column) -> Column:
        return self._lookup(self.currencies, zone)


def read_zones(database_url: str) -> Zones:
    """The zones of `silver.ref__zones`."""
    with connect(database_url) as conn:
        rows = conn.execute("SELECT zone, timezone, currency FROM silver.ref__zones").fetchall()
    return Zones({z: tz for z, tz, _ in rows if tz is not None}, {z: c for z, _, c in rows if c is not None})


def _window_bronze(
    spark: SparkSession, lake: Lake, name: str, lo: datetime, hi: datetime
) -> tuple[DataFrame, list[str]] | None:
    """Rows of bronze table `name` with lo <= ts_utc < hi, read from the files that can hold them, and the table's
    columns; None when no file can (or the table is absent)."""
    table = lake.table("bronze", name)
    if table is None:
        return None
    files = files_overlapping(table, "ts_utc", lo, hi)
    if not files:
        return None
    schema = delta_schema(table)
    rows = read_bronze(spark, files, schema.simpleString(), schema, lake)
    return rows.where((F.col("ts_utc") >= F.lit(lo)) & (F.col("ts_utc") < F.lit(hi))), schema.fieldNames()


def observations(
    spark: SparkSession, lake: Lake, datasets: Sequence[str], zones: Zones, start: date, end: date
) -> tuple[DataFrame | None, list[str]]:
    """Every bronze delivery of `datasets` that can fall on market days [start, end), typed, normalised, dated,
    in the common shape plus `timezone` and `market_date`; and the datasets some bronze file can hold rows of
    (None and [] when none can).

    Rows whose zone is unknown get a NULL timezone and the UTC date; the caller flags them. The same uploaded row
    read twice (a retried batch) is still there twice: `revisions` drops it.
    """
    # Zones sit within UTC-12..UTC+14, so one day either side holds every candidate row.
    lo = datetime.combine(start - timedelta(days=1), time(), UTC)
    hi = datetime.combine(end + timedelta(days=1), time(), UTC)
    parts: list[DataFrame] = []
    present: list[str] = []
    for name in datasets:
        dataset = SILVER_MARKET_TABLES[name]
        found = len(parts)
        files = _window_bronze(spark, lake, f"files__{name}", lo, hi)
        if files is not None:
            parts.append(_files_rows(*files, dataset))
        if dataset.has_ticks:
            ticks = _window_bronze(spark, lake, "ticks__prices", lo, hi)
            if ticks is not None:
                parts.append(_tick_rows(ticks[0]))
        if len(parts) > found:
            present.append(name)
    if not parts:
        return None, []
    rows = parts[0]
    for part in parts[1:]:
        rows = rows.unionByName(part)
    # Normalised and dated once, above the union: one set of expressions for every part.
    timezone = zones.timezone(F.col("zone"))
    is_price = F.col("dataset") == F.lit("prices")
    code, factor = _normalised_currency(F.coalesce(F.col("currency"), zones.currency(F.col("zone"))))
    columns = {c: F.col(c) for c in OBSERVATION_COLUMNS}
    columns["price"] = F.when(is_price, F.col("price") * factor).otherwise(F.col("price"))
    columns["currency"] = F.when(is_price, code).otherwise(F.col("currency"))
    local = F.from_utc_timestamp(F.col("ts_utc"), F.coalesce(timezone, F.lit("UTC")))
    rows = rows.select(
        *[column.alias(name) for name, column in columns.items()],
        timezone.alias("timezone"),
        F.to_date(local).alias("market_date"),
    )
    return rows.where((F.col("market_date") >= F.lit(start)) & (F.col("market_date") < F.lit(end))), present


def revisions(observed: DataFrame) -> DataFrame:
    """`observed` rows (of any datasets) once per delivery, plus `revision` (1 = first delivery of the key),
    `deliveries` and `is_latest` (the last ingested delivery).

    Hash-partitioned by `DAY_PARTITIONING`, which every key and every series-day lies within: the windows here and
    the per-day aggregation of `window_frame` then need no further shuffle.
    """
    rows = observed.repartition(*DAY_PARTITIONING)
    # market_date follows from zone and ts_utc: naming it in the key changes no key, and keeps the partitioning.
    key = [*ROW_KEY, "market_date"]
    ordered = Window.partitionBy(*key).orderBy("ingested_at", "_order_a", "_order_b", "source_ref")
    # The same uploaded row read twice (a retried batch) is one delivery: a row whose source_ref an earlier
    # delivery of its key already had is dropped. Found in the one sort that also numbers the revisions (a
    # window per key and source_ref would sort every row a second time); a key has a handful of deliveries.
    earlier = F.collect_set("source_ref").over(ordered.rowsBetween(Window.unboundedPreceding, -1))
    rows = rows.withColumn("_copy", F.array_contains(earlier, F.col("source_ref")))
    rows = rows.where(~F.col("_copy")).drop("_copy")
    # The same window spec (a whole-key frame for the count): one Window operator on the rows as sorted above.
    whole_key = ordered.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    rows = rows.select(
        "*", F.row_number().over(ordered).alias("revision"), F.count(F.lit(1)).over(whole_key).alias("deliveries")
    )
    return rows.withColumn("is_latest", F.col("revision") == F.col("deliveries"))


def _series_key() -> Column:
    """`zone|series...` of each row's own dataset (`-` for a NULL series value)."""
    key: Column | None = None
    for dataset in SILVER_MARKET_TABLES.values():
        parts = [F.col("zone")] + [F.coalesce(F.col(c).cast("string"), F.lit("-")) for c in dataset.series]
        text = F.concat_ws("|", *parts)
        key = F.when(F.col("dataset") == dataset.name, text) if key is None else key.when(
            F.col("dataset") == dataset.name, text
        )
    assert key is not None
    return key


def window_frame(revised: DataFrame) -> DataFrame:
    """Everything a build writes, one row per series and market day (per zone and day for an unknown zone):
    `rows`, every delivery of every price key and the winning delivery of every other key (`ROW_COLUMNS`), and
    `flags`, the day's gap, duplicate and unknown-zone flags (`QUALITY_COLUMNS`). One Spark job; the driver
    splits it per table (`rows_of`, `price_revisions`, `quality_flags`).

    A key's latest delivery stands for the key (it carries the key's number of deliveries); the rows of an
    unknown zone are counted per zone, not per series.
    """
    known = F.col("timezone").isNotNull()
    latest = known & F.col("is_latest")
    kept = known & ((F.col("dataset") == F.lit("prices")) | F.col("is_latest"))
    row = F.struct(
        *[F.col(c).cast("int").alias(c) if c == "revision" else F.col(c) for c in ROW_COLUMNS]
    )
    # An unknown zone's rows form one group per zone, org and day: its series columns are left out of the key.
    series = [F.when(known, F.col(c)).alias(c) for c in SERIES_TYPES]
    group = [F.col("dataset"), F.col("zone"), *series, F.col("org_id"), F.col("market_date"), F.col("timezone")]
    day = revised.groupBy(*group).agg(
        F.collect_list(F.when(kept, row)).alias("rows"),
        F.count(F.lit(1)).alias("deliveries"),
        F.count_if(latest).alias("observed_points"),
        F.sum(F.when(latest, F.col("deliveries") - 1)).alias("extra_deliveries"),
        F.min(F.when(latest & (F.col("deliveries") > 1), F.col("ts_utc"))).alias("first_dup"),
        F.max(F.when(latest & (F.col("deliveries") > 1), F.col("ts_utc"))).alias("last_dup"),
        F.min("ts_utc").alias("first_ts"),
        F.max("ts_utc").alias("last_ts"),
        F.collect_list(F.when(latest, F.col("ts_utc"))).alias("observed"),
    )
    day_start = F.to_utc_timestamp(F.col("market_date").cast("timestamp"), F.col("timezone"))
    day_end = F.to_utc_timestamp(F.date_add(F.col("market_date"), 1).cast("timestamp"), F.col("timezone"))
    interval_s = F.col("interval_minutes").cast("long") * 60
    expected = ((F.unix_timestamp(day_end) - F.unix_timestamp(day_start)) / interval_s).cast("int")
    # The grid of expected timestamps is anchored on the series' own phase (an hourly UTC series in a
    # UTC+05:30 zone sits on :00 UTC, not on local midnight).
    start_s = F.unix_timestamp(day_start)
    anchor_s = start_s + F.pmod(F.unix_timestamp("first_ts") - start_s, interval_s)
    grid = F.sequence(anchor_s, F.unix_timestamp(day_end) - 1, interval_s)
    missing = F.filter(
        F.transform(grid, lambda s: F.timestamp_seconds(s)), lambda ts: ~F.array_contains(F.col("observed"), ts)
    )
    observed_points = F.col("observed_points").cast("int")
    interval = F.col("interval_minutes").cast("int")
    unknown_n = F.col("deliveries").cast("int")
    no_int = F.lit(None).cast("int")

    def flag(when: Column, issue: str, *fields: Column) -> Column:
        names = QUALITY_COLUMNS[6:]
        values = [F.col(c) for c in QUALITY_COLUMNS[:2]] + [fields[0].alias("series_key")] + [
            F.col(c) for c in QUALITY_COLUMNS[3:5]
        ]
        named = [f.alias(n) for f, n in zip(fields[1:], names, strict=True)]
        return F.when(when, F.struct(*values, F.lit(issue).alias("issue"), *named))

    flags = F.array(
        flag(known & (F.col("extra_deliveries") > 0), "duplicate", _series_key(), interval, expected, observed_points,
             F.col("extra_deliveries").cast("int"), F.col("first_dup"), F.col("last_dup")),
        flag(known & (observed_points < expected), "gap", _series_key(), interval, expected, observed_points,
             expected - observed_points, F.array_min(missing), F.array_max(missing)),
        flag(~known, "unknown_zone", F.col("zone"), no_int, no_int, unknown_n, unknown_n, F.col("first_ts"),
             F.col("last_ts")),
    )
    # Series-days in key order within each partition (each day's rows are in key order already): Postgres then
    # inserts into the tables' key indexes at a few points at a time instead of at random.
    ordered = day.sortWithinPartitions("dataset", "zone", *SERIES_TYPES, "org_id", "market_date")
    return ordered.select("rows", F.filter(flags, lambda f: f.isNotNull()).alias("flags"))


def _unnested(built: pa.Table, column: str) -> pa.Table:
    """The structs of list column `column` of a `window_frame`'s Arrow rows, as a table."""
    return pa.Table.from_struct_array(pc.list_flatten(built[column]))


def rows_of(built: pa.Table, dataset: str) -> pa.Table:
    """The silver rows of `dataset` in a `window_frame`'s Arrow rows (every revision for prices, else the latest)."""
    rows = _unnested(built, "rows")
    return rows.filter(pc.equal(rows["dataset"], dataset))


def _false(rows: int) -> pa.Array:
    return pa.nulls(rows, pa.bool_()).fill_null(False)


def silver_rows(dataset: MarketDataset) -> Callable[[pa.Table], pa.Table]:
    """`silver.market__<dataset>` rows (column order included) from a `window_frame`'s rows."""

    def project(built: pa.Table) -> pa.Table:
        rows = rows_of(built, dataset.name)
        columns = ["ts_utc", "market_date", "zone", *dataset.series, *[c for c, _ in dataset.values], "org_id",
                   "revision"]
        return rows.select(columns).append_column("is_gap_filled", _false(rows.num_rows)).append_column(
            "source", rows["source"]
        ).append_column("ingested_at", rows["ingested_at"])

    return project


def price_revisions(built: pa.Table) -> pa.Table:
    """`silver.market__price_revisions` rows (column order included) from a `window_frame`'s rows."""
    return rows_of(built, "prices").select(list(PRICE_REVISIONS_COLUMNS))


def quality_flags(built: pa.Table) -> pa.Table:
    """`silver.quality__gaps` rows (column order included) from a `window_frame`'s rows."""
    return _unnested(built, "flags").select(list(QUALITY_COLUMNS))


def latest_prices(revisions: pa.Table) -> pa.Table:
    """`silver.market__prices` rows (column order included) from `price_revisions` rows: the latest ones."""
    latest = revisions.filter(pc.field("is_latest"))
    columns = [c for c in PRICES_COLUMNS if c != "is_gap_filled"]
    return latest.select(columns).add_column(
        PRICES_COLUMNS.index("is_gap_filled"), "is_gap_filled", _false(latest.num_rows)
    )


def _tables(dataset: MarketDataset) -> list[str]:
    return [dataset.table] + (["silver.market__price_revisions"] if dataset.name == "prices" else [])


def market_slices(
    lake: Lake, datasets: Sequence[str], start: date, end: date, max_rows: int = SLICE_BRONZE_ROWS
) -> list[tuple[date, date]]:
    """Market days [start, end) as consecutive windows of whole days, each holding about `max_rows` bronze rows
    at most (by the Delta log's statistics; a day above it is a window of its own)."""
    days = (end - start).days
    per_day = np.zeros(days)
    for name in datasets:
        sources = [f"files__{name}"] + (["ticks__prices"] if SILVER_MARKET_TABLES[name].has_ticks else [])
        for source in sources:
            table = lake.table("bronze", source)
            if table is not None:
                per_day += daily_rows(table, "ts_utc", start, days)
    slices: list[tuple[date, date]] = []
    first, held = 0, 0.0
    for day, rows in enumerate(per_day):
        if day > first and held + rows > max_rows:
            slices.append((start + timedelta(days=first), start + timedelta(days=day)))
            first, held = day, 0.0
        held += rows
    slices.append((start + timedelta(days=first), end))
    return slices


def _slice_writes(
    spark: SparkSession, lake: Lake, zones: Zones, datasets: Sequence[str], start: date, end: date
) -> list[TableWrite]:
    """The writes that replace market days [start, end): one Spark job for all of them."""
    observed, present = observations(spark, lake, datasets, zones, start, end)
    built = None if observed is None else window_frame(revisions(observed))
    window = "market_date >= %s AND market_date < %s"
    writes: list[TableWrite] = []
    for name in datasets:
        dataset = SILVER_MARKET_TABLES[name]
        if built is None or name not in present:
            # No bronze file can hold a row of the window: its silver rows are just cleared, with no Spark job.
            writes.extend(
                TableWrite(None, table, dataset.key, ReplaceWhere(window, (start, end))) for table in _tables(dataset)
            )
            continue
        if name == "prices":
            writes.append(
                TableWrite(
                    Derived(built, price_revisions),
                    "silver.market__price_revisions",
                    (*dataset.key, "revision"),
                    ReplaceWhere(window, (start, end)),
                    conflict_constraint="market__price_revisions_key",
                )
            )
        writes.append(
            TableWrite(
                Derived("silver.market__price_revisions", latest_prices) if name == "prices"
                else Derived(built, silver_rows(dataset)),
                dataset.table,
                dataset.key,
                ReplaceWhere(window, (start, end)),
                conflict_constraint=dataset.constraint,
            )
        )
    writes.append(
        TableWrite(
            None if built is None else Derived(built, quality_flags),
            "silver.quality__gaps",
            ("dataset", "series_key", "org_id", "market_date", "issue"),
            ReplaceWhere(window + " AND dataset = ANY(%s)", (start, end, list(datasets))),
            conflict_constraint="quality__gaps_key",
        )
    )
    return writes


def build_market_window(
    spark: SparkSession,
    lake: Lake,
    database_url: str,
    start: date,
    end: date,
    datasets: Sequence[str] = tuple(SILVER_MARKET_TABLES),
    slice_rows: int = SLICE_BRONZE_ROWS,
) -> MarketBuildResult:
    """Rebuild market days [start, end) of the silver market tables, price revisions and quality flags.

    One Spark job per slice of days of about `slice_rows` bronze rows (`market_slices`: one for a day or a few
    weeks, a handful for a year) computes every table's rows; everything is replaced in one transaction; a day
    with no bronze rows ends up empty.
    """
    if end <= start:
        raise ValueError(f"empty market-day window [{start}, {end})")
    zones = read_zones(database_url)
    slices = market_slices(lake, datasets, start, end, slice_rows)
    # A generator: a slice's frames are planned when the writer reaches it, not all before the first job.
    writes = (write for first, last in slices for write in _slice_writes(spark, lake, zones, datasets, first, last))
    written = merge_dataframes(database_url, writes)
    return MarketBuildResult(
        start, end, dict(written.staged), dict(written.replaced), written.spark_wait_s, written.postgres_s, slices,
        written.index_build_s,
    )
