"""Silver: Spark jobs that clean, type, deduplicate and CDC-merge bronze into Postgres `silver`, and the
blocking expectation checks that keep a bad silver batch out of gold.

Market data is one multi-asset per market-local day (daily partitions in the configured timezone); a backfill
of many days is a single run over the whole window. The trading tables follow bronze CDC incrementally (a
watermark per bronze table), so they are not partitioned. The Spark code is `ingestion/silver/`, the
suites `expectations/`; neither belongs here.

Automation: a market day is rebuilt when a landing run records it in `["bronze", "market_days"]` (any age),
today and yesterday when ticks land (the tick table carries no day), once the zone reference exists; the
trading tables follow every CDC batch once their bronze tables exist. A failing check stops the gold models
of the same run.
"""

from datetime import timedelta

import dagster as dg

from assets.bronze.files import MARKET_DAYS
from assets.shared import automation
from assets.shared.expectation_checks import (
    delivery_suite_check,
    import_suites_for_run,
    partition_suite_check,
)
from assets.shared.partitions import daily_partitions, market_date_window
from assets.shared.resources import LakeResource, SparkResource, WarehouseResource
from ingestion.silver.market import SILVER_MARKET_TABLES, build_market_window
from ingestion.silver.trading import ENTITIES, build_trading_entity

MARKET_BRONZE = [dg.AssetKey(["bronze", f"files__{name}"]) for name in SILVER_MARKET_TABLES] + [
    dg.AssetKey(["bronze", "ticks__prices"])
]
# Every market row is dated in its zone's timezone, read from the zone reference. As a parent it also orders a
# cold start: the market days wait for the reference run (reference tables, then the dimensions gold joins), so
# silver and every gold model of a day go in one run instead of the hourly facts following in a second one.
ZONES = dg.AssetKey(["silver", "ref__zones"])
# Spark runs one at a time, even on the platform's shared Spark Connect server: a market rebuild and a
# trading merge side by side on two cores took longer together than one after the other (measured).
SPARK_POOL = "spark"
# Landed files record their days in bronze/market_days; ticks (CDC) do not, and are about today.
MARKET_CONDITION = automation.day_partitions(
    unpartitioned_deps=dg.AssetSelection.assets(*MARKET_BRONZE, ZONES),
    recent_deps=dg.AssetSelection.assets(dg.AssetKey(["bronze", "ticks__prices"])),
    # A market with files but no tick feed, or a day with ticks but no file yet, still builds.
    optional_deps=dg.AssetSelection.assets(*MARKET_BRONZE, MARKET_DAYS),
)


def _market_spec(table: str, description: str, deps: list[dg.AssetKey]) -> dg.AssetSpec:
    return dg.AssetSpec(
        ["silver", table],
        group_name="silver",
        kinds={"spark", "postgres"},
        description=description,
        deps=[*deps, MARKET_DAYS, ZONES],
        automation_condition=MARKET_CONDITION,
    )


@dg.multi_asset(
    name="silver_market",
    specs=[
        _market_spec(
            "market__prices",
            "Prices per zone/node, market-local day, latest revision; currency per MWh.",
            [dg.AssetKey(["bronze", "files__prices"]), dg.AssetKey(["bronze", "ticks__prices"])],
        ),
        _market_spec(
            "market__price_revisions",
            "Every delivery of every price key, numbered in ingestion order.",
            [dg.AssetKey(["bronze", "files__prices"]), dg.AssetKey(["bronze", "ticks__prices"])],
        ),
        _market_spec("market__load", "Load (MW) per zone and interval.", [dg.AssetKey(["bronze", "files__load"])]),
        _market_spec(
            "market__generation",
            "Generation (MW) per zone, fuel and interval.",
            [dg.AssetKey(["bronze", "files__generation"])],
        ),
        _market_spec(
            "market__weather", "Weather per zone (hourly).", [dg.AssetKey(["bronze", "files__weather"])]
        ),
        _market_spec(
            "quality__gaps", "Gaps, duplicate deliveries and unknown zones per series and market day.", MARKET_BRONZE
        ),
    ],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=SPARK_POOL,
)
def silver_market(
    context: dg.AssetExecutionContext, spark: SparkResource, lake: LakeResource, warehouse: WarehouseResource
):
    """Rebuild the market-local days of the run's partition window (one day, or a whole backfill)."""
    import_suites_for_run(context)
    window = market_date_window(context)
    # build_market_window takes the half-open range [start, end).
    result = build_market_window(
        spark.session(), lake.lake, warehouse.url, window.first, window.last + timedelta(days=1)
    )
    for table, rows in result.rows.items():
        yield dg.MaterializeResult(
            asset_key=dg.AssetKey(["silver", table.removeprefix("silver.")]),
            metadata={
                "rows": dg.MetadataValue.int(rows),
                "rows_replaced": dg.MetadataValue.int(result.replaced.get(table, 0)),
                "market_dates": dg.MetadataValue.text(str(window)),
                # A backfill runs as slices of bounded bronze rows, one Spark job each.
                "spark_slices": dg.MetadataValue.int(len(result.slices)),
            },
        )


class TradingBuildConfig(dg.Config):
    """Rebuild from every bronze event instead of only the keys changed since the last run."""

    full_refresh: bool = False


def _trading_asset(entity: str) -> dg.AssetsDefinition:
    table = f"trading__{entity}"
    bronze = dg.AssetKey(["bronze", ENTITIES[entity].bronze_table])

    @dg.multi_asset(
        name=f"silver_{table}",
        specs=[
            dg.AssetSpec(
                ["silver", table],
                group_name="silver",
                kinds={"spark", "postgres"},
                description=f"Current state of each {entity} row (deleted rows absent).",
                deps=[bronze],
                automation_condition=automation.unpartitioned(require_parents=True),
            ),
            dg.AssetSpec(
                ["silver", f"{table}_history"],
                group_name="silver",
                kinds={"spark", "postgres"},
                description=f"SCD-2 history of {entity}: valid_from, valid_to, is_current, op.",
                deps=[bronze],
                automation_condition=automation.unpartitioned(require_parents=True),
            ),
        ],
        pool=SPARK_POOL,
    )
    def build(
        context: dg.AssetExecutionContext,
        config: TradingBuildConfig,
        spark: SparkResource,
        lake: LakeResource,
        warehouse: WarehouseResource,
    ):
        import_suites_for_run(context)
        result = build_trading_entity(
            spark.session(), lake.lake, warehouse.url, entity, full_refresh=config.full_refresh
        )
        common = {
            "bronze_version": dg.MetadataValue.int(-1 if result.bronze_version is None else result.bronze_version),
            "full_refresh": dg.MetadataValue.bool(result.full_refresh),
            "events_read": dg.MetadataValue.int(result.events_read),
            "keys_touched": dg.MetadataValue.int(result.keys_touched),
            "skipped_events": dg.MetadataValue.int(result.skipped_events),
            "orphan_deletes": dg.MetadataValue.int(result.orphan_deletes),
        }
        if result.skipped_events:
            context.log.warning(
                f"{result.skipped_events} {entity} CDC events have no key or an unknown op; they stay in bronze"
            )
        yield dg.MaterializeResult(
            asset_key=dg.AssetKey(["silver", table]),
            metadata={**common, "rows_written": dg.MetadataValue.int(result.current_rows)},
        )
        yield dg.MaterializeResult(
            asset_key=dg.AssetKey(["silver", f"{table}_history"]),
            metadata={**common, "rows_written": dg.MetadataValue.int(result.history_rows)},
        )

    return build


silver_trading = [_trading_asset(entity) for entity in ENTITIES]

# --- checks ---------------------------------------------------------------------------------------------

silver_market__prices_expectations = partition_suite_check("silver.market__prices")
silver_market__load_expectations = partition_suite_check("silver.market__load")
silver_market__generation_expectations = partition_suite_check("silver.market__generation")
silver_market__weather_expectations = partition_suite_check("silver.market__weather")

# Trading state is not partitioned: its checks validate the deliveries that matter now, from two weeks back
# (late clearing and trade corrections) to the day after tomorrow (bids for the next auctions).
TRADING_DAYS_BACK, TRADING_DAYS_AHEAD = 14, 2
silver_trading__bids_expectations = delivery_suite_check(
    "silver.trading__bids", TRADING_DAYS_BACK, TRADING_DAYS_AHEAD
)
silver_trading__trades_expectations = delivery_suite_check(
    "silver.trading__trades", TRADING_DAYS_BACK, TRADING_DAYS_AHEAD
)

defs = dg.Definitions(
    assets=[
        silver_market,
        *silver_trading,
    ],
    asset_checks=[
        silver_market__prices_expectations,
        silver_market__load_expectations,
        silver_market__generation_expectations,
        silver_market__weather_expectations,
        silver_trading__bids_expectations,
        silver_trading__trades_expectations,
    ],
)
