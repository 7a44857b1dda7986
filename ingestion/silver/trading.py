"""Silver trading tables from bronze CDC: current state per key and SCD-2 history, built incrementally.

Belongs here: the entity definitions of the trading system's CDC tables and the Spark logic that turns their
change events into `silver.trading__<table>` and `silver.trading__<table>_history`.

Ordering of a key's changes is by source LSN, then source ts_ms, then Kafka offset; re-delivered events (same
key, LSN, ts_ms and op) count once; `t` tombstones are ignored. A run reads the bronze Delta files added since
the last processed version (kept in `ops.silver_watermarks`), finds the keys they touch, and re-derives the whole
history of only those keys from every bronze event of theirs, so late and out-of-order events land correctly.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import NumericType

from infra.db import connect
from infra.lake import Lake
from ingestion.silver.bronze import CDC_ENVELOPE, delta_schema, read_bronze
from ingestion.silver.pg_writer import ReplaceKeys, ReplaceWhere, TableWrite, merge_dataframes

CHANGE_OPS = ("c", "u", "d", "r")


@dataclass(frozen=True)
class Entity:
    """A CDC source table: its primary key and typed `after` columns (Spark SQL types), in silver order."""

    name: str
    key: str
    columns: tuple[tuple[str, str], ...]

    @property
    def bronze_table(self) -> str:
        return f"cdc__{self.name}"

    @property
    def current_table(self) -> str:
        return f"silver.trading__{self.name}"

    @property
    def history_table(self) -> str:
        return f"silver.trading__{self.name}_history"

    @property
    def value_columns(self) -> list[str]:
        return [c for c, _ in self.columns if c != self.key]


ENTITIES: dict[str, Entity] = {
    e.name: e
    for e in [
        Entity(
            "bids",
            "bid_id",
            (
                ("bid_id", "string"), ("org_id", "string"), ("asset_id", "string"), ("zone", "string"),
                ("delivery_start", "timestamp"), ("side", "string"), ("price", "double"),
                ("quantity_mw", "double"), ("status", "string"), ("cleared_quantity_mw", "double"),
                ("cleared_price", "double"), ("updated_at", "timestamp"),
            ),
        ),
        Entity(
            "trades",
            "trade_id",
            (
                ("trade_id", "string"), ("org_id", "string"), ("bid_id", "string"), ("zone", "string"),
                ("delivery_start", "timestamp"), ("side", "string"), ("price", "double"),
                ("quantity_mw", "double"), ("counterparty", "string"), ("traded_at", "timestamp"),
            ),
        ),
        Entity(
            "assets",
            "asset_id",
            (
                ("asset_id", "string"), ("org_id", "string"), ("zone", "string"), ("name", "string"),
                ("technology", "string"), ("capacity_mw", "double"), ("energy_mwh", "double"),
                ("marginal_cost", "double"), ("status", "string"), ("updated_at", "timestamp"),
            ),
        ),
        Entity(
            "market_orders",
            "order_id",
            (
                ("order_id", "string"), ("org_id", "string"), ("zone", "string"),
                ("delivery_start", "timestamp"), ("side", "string"), ("order_type", "string"),
                ("price", "double"), ("quantity_mw", "double"), ("status", "string"),
                ("updated_at", "timestamp"),
            ),
        ),
    ]
}


@dataclass
class TradingBuildResult:
    """What one incremental build of one entity did."""

    entity: str
    bronze_version: int | None
    previous_version: int | None
    full_refresh: bool
    events_read: int = 0
    keys_touched: int = 0
    history_rows: int = 0
    current_rows: int = 0
    skipped_events: int = 0  # change events without a usable key or with an unknown op (they stay in bronze)
    orphan_deletes: int = 0  # deletes of keys never seen created (nothing to delete; they stay in bronze)


def _typed(df: DataFrame, column: str, spark_type: str) -> Column:
    if column not in df.columns:  # an `after` column bronze has not seen yet
        return F.lit(None).cast(spark_type)
    if spark_type == "timestamp" and isinstance(df.schema[column].dataType, NumericType):
        # Debezium's MicroTimestamp/Timestamp arrive as epoch numbers; the magnitude tells the unit.
        epoch = F.col(column).cast("long")
        return (
            F.when(F.abs(epoch) >= 10**14, F.timestamp_micros(epoch))
            .when(F.abs(epoch) >= 10**11, F.timestamp_millis(epoch))
            .otherwise(F.timestamp_seconds(epoch))
        )
    return F.col(column).try_cast(spark_type)  # ISO-8601 strings (ZonedTimestamp) and typed values


def _event_key(df: DataFrame, entity: Entity) -> Column:
    """The primary key of a change: the flattened column, else the Kafka key JSON (plain or Debezium envelope)."""
    candidates = [F.col(entity.key).cast("string")] if entity.key in df.columns else []
    candidates += [
        F.get_json_object(F.col("key"), f"$.{entity.key}"),
        F.get_json_object(F.col("key"), f"$.payload.{entity.key}"),
        F.get_json_object(F.col("before_json"), f"$.{entity.key}"),
    ]
    return F.coalesce(*candidates)


def change_events(bronze: DataFrame, entity: Entity) -> DataFrame:
    """Typed, de-duplicated change events (c/u/d/r) with a `_key`, ordering columns and the entity's columns."""
    events = bronze.where(F.col("op").isin(*CHANGE_OPS)).withColumn("_key", _event_key(bronze, entity))
    events = events.where(F.col("_key").isNotNull())
    selected = events.select(
        "_key",
        "op",
        F.coalesce(F.col("source_lsn").cast("long"), F.lit(-1)).alias("_lsn"),
        F.coalesce(F.col("source_ts_ms").cast("long"), F.lit(-1)).alias("_ts_ms"),
        F.coalesce(F.col("_partition").cast("long"), F.lit(-1)).alias("_part"),
        F.coalesce(F.col("_offset").cast("long"), F.lit(-1)).alias("_off"),
        *[_typed(events, c, t).alias(c) for c, t in entity.columns if c != entity.key],
    )
    # A re-delivered message (same change, maybe another offset) counts once: keep its first delivery.
    first_delivery = Window.partitionBy("_key", "_lsn", "_ts_ms", "op").orderBy("_part", "_off")
    return (
        selected.withColumn("_delivery", F.row_number().over(first_delivery))
        .where(F.col("_delivery") == 1)
        .drop("_delivery")
    )


def history_frame(events: DataFrame, entity: Entity) -> DataFrame:
    """SCD-2 rows of every key in `events`, in `silver.trading__<table>_history` column order."""
    values = entity.value_columns
    order = ["_lsn", "_ts_ms", "_off"]
    per_key = Window.partitionBy("_key").orderBy(*order)
    so_far = per_key.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    # A delete carries the last known values of its key, so the history shows what was deleted (and its org).
    last_state = F.last(F.when(F.col("op") != "d", F.struct(*values)), ignorenulls=True).over(so_far)
    with_state = events.withColumn("_state", last_state)
    rows = with_state.where(F.col("_state").isNotNull()).select(
        "_key",
        "op",
        "_lsn",
        "_ts_ms",
        "_off",
        *[(F.when(F.col("op") == "d", F.col("_state")[c]).otherwise(F.col(c))).alias(c) for c in values],
    )
    valid_from = F.timestamp_millis(F.col("_ts_ms"))
    next_from = F.lead(valid_from).over(per_key)
    return rows.select(
        F.col("_key").alias(entity.key),
        F.row_number().over(per_key).alias("version"),
        *values,
        "op",
        valid_from.alias("valid_from"),
        F.when(F.col("op") == "d", valid_from).otherwise(next_from).alias("valid_to"),
        (next_from.isNull() & (F.col("op") != "d")).alias("is_current"),
        F.when(F.col("_lsn") >= 0, F.col("_lsn")).alias("source_lsn"),
    )


def current_frame(history: DataFrame, entity: Entity) -> DataFrame:
    """The live row of every key (deleted keys have none), in `silver.trading__<table>` column order."""
    return history.where("is_current").select(entity.key, *entity.value_columns, "op", "valid_from", "source_lsn")


def _watermark(database_url: str, source: str) -> int | None:
    with connect(database_url) as conn:
        row = conn.execute("SELECT bronze_version FROM ops.silver_watermarks WHERE source = %s", (source,)).fetchone()
    return int(row[0]) if row else None


def _save_watermark(source: str, version: int, rows_read: int, keys: int):
    def save(conn: psycopg.Connection) -> None:
        conn.execute(
            """INSERT INTO ops.silver_watermarks (source, bronze_version, rows_read, keys_touched, processed_at)
               VALUES (%s, %s, %s, %s, now())
               ON CONFLICT (source) DO UPDATE SET bronze_version = EXCLUDED.bronze_version,
                   rows_read = EXCLUDED.rows_read, keys_touched = EXCLUDED.keys_touched, processed_at = now()""",
            (source, version, rows_read, keys),
        )

    return save


def build_trading_entity(
    spark: SparkSession, lake: Lake, database_url: str, entity: Entity | str, *, full_refresh: bool = False
) -> TradingBuildResult:
    """Bring `silver.trading__<entity>` and its history up to the current bronze CDC version.

    Only keys changed in bronze files added since the watermark are rewritten; `full_refresh` (or a missing or
    unreadable watermark version) rebuilds the tables from every bronze event.
    """
    entity = ENTITIES[entity] if isinstance(entity, str) else entity
    source = f"bronze.{entity.bronze_table}"
    table = lake.table("bronze", entity.bronze_table)
    previous = _watermark(database_url, source)
    if table is None:  # no bronze yet: silver stays as it is
        return TradingBuildResult(entity.name, None, previous, full_refresh)
    version = table.version()
    if previous == version and not full_refresh:
        return TradingBuildResult(entity.name, version, previous, False)

    all_files = table.file_uris()
    schema = delta_schema(table)
    new_files = all_files
    if not full_refresh and previous is not None and previous < version:
        try:
            seen = set(lake.snapshot_files("bronze", entity.bronze_table, previous))
            new_files = [f for f in all_files if f not in seen]
        except Exception:  # that version's log was cleaned up: rebuild everything
            full_refresh = True
    else:
        full_refresh = True

    bronze_all = read_bronze(spark, all_files, CDC_ENVELOPE, schema, lake)
    result = TradingBuildResult(entity.name, version, previous, full_refresh)
    events_all = change_events(bronze_all, entity).cache()
    try:
        if full_refresh:
            events = events_all
            touched = events_all.select(F.col("_key").alias(entity.key)).distinct().cache()
            replace_history = ReplaceWhere("TRUE")
            replace_current = ReplaceWhere("TRUE")
            new_bronze = bronze_all
        else:
            new_bronze = read_bronze(spark, new_files, CDC_ENVELOPE, schema, lake)
            touched = change_events(new_bronze, entity).select(F.col("_key").alias(entity.key)).distinct().cache()
            events = events_all.join(F.broadcast(touched.withColumnRenamed(entity.key, "_key")), "_key", "left_semi")
            replace_history = ReplaceKeys(touched, (entity.key,))
            replace_current = ReplaceKeys(touched, (entity.key,))
        history = history_frame(events, entity).cache()
        stats = new_bronze.agg(
            F.count(F.lit(1)).alias("events"), F.sum(_unusable(new_bronze, entity).cast("int")).alias("unusable")
        ).first()
        result.events_read = int(stats["events"])
        result.skipped_events = int(stats["unusable"] or 0)
        result.keys_touched = touched.count()
        # keys whose every event is a delete have no history row (and nothing to delete)
        result.orphan_deletes = result.keys_touched - history.where("version = 1").count()
        written = merge_dataframes(
            database_url,
            [
                TableWrite(history, entity.history_table, (entity.key, "version"), replace_history),
                TableWrite(current_frame(history, entity), entity.current_table, (entity.key,), replace_current),
            ],
            finalize=_save_watermark(source, version, result.events_read, result.keys_touched),
        )
        result.history_rows = written.staged[entity.history_table]
        result.current_rows = written.staged[entity.current_table]
        history.unpersist()
        touched.unpersist()
    finally:
        events_all.unpersist()
    return result


def _unusable(bronze: DataFrame, entity: Entity) -> Column:
    """True for events that are neither a keyed change nor a tombstone (unknown op, or no key anywhere)."""
    usable = (F.col("op") == "t") | (F.col("op").isin(*CHANGE_OPS) & _event_key(bronze, entity).isNotNull())
    return F.coalesce(~usable, F.lit(True))
