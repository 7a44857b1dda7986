"""Blocking data-quality checks: the Great Expectations suites of silver and gold tables as asset checks.

A failing check on a silver table stops the gold dbt models downstream in the same run; a failing check
on a gold table stops the ML and export assets. The checks own no automation condition on purpose: so they
ride along in every run (or backfill) the automation starts for their table, where they can block. Suites
and validation live in `expectations/`.
"""

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import dagster as dg

from infra.settings import get_settings
from orchestration.partitions import daily_partitions
from orchestration.resources import WarehouseResource

if TYPE_CHECKING:
    from expectations.runner import SuiteOutcome

# Great Expectations is imported inside the checks, not here: it takes ~7 s of CPU to import, and every
# Dagster run process (and the code server) loads this module whether or not its run evaluates a suite.


def _check_result(outcome: "SuiteOutcome", **extra: dg.MetadataValue) -> dg.AssetCheckResult:
    meta = outcome.as_metadata()
    return dg.AssetCheckResult(
        passed=outcome.success,
        severity=dg.AssetCheckSeverity.ERROR,
        description=outcome.summary()[:2000],
        metadata={
            "row_count": dg.MetadataValue.int(outcome.row_count),
            "evaluated_expectations": dg.MetadataValue.int(outcome.evaluated),
            "failed_expectations": dg.MetadataValue.int(len(outcome.failures)),
            "failing": dg.MetadataValue.json([f"{f['expectation']}({f['column'] or ''})" for f in meta["failures"]]),
            "unexpected_counts": dg.MetadataValue.json(
                {f"{f['expectation']}({f['column'] or ''})": f["unexpected_count"] for f in meta["failures"]}
            ),
            "failures": dg.MetadataValue.json(meta["failures"]),
            **extra,
        },
    )


def _kpi_codes(warehouse: WarehouseResource) -> list[str] | None:
    with warehouse.connect() as conn:
        exists = conn.execute("SELECT to_regclass('gold.kpi_catalog')").fetchone()
        if not exists or exists[0] is None:
            return None
        return [r[0] for r in conn.execute("SELECT kpi_code FROM gold.kpi_catalog")]


def _make_check(table: str) -> dg.AssetChecksDefinition:
    layer, name = table.split(".", 1)

    @dg.asset_check(
        asset=dg.AssetKey([layer, name]),
        name=f"{name}_expectations",
        blocking=True,
        partitions_def=daily_partitions,
        description=f"Great Expectations suite of {table} on the run's partition window.",
    )
    def _check(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
        from expectations.warehouse import validate_partition

        window = context.partition_time_window
        min_date = window.start.date()
        max_date = (window.end - timedelta(days=1)).date()
        outcome = validate_partition(
            warehouse.url,
            table,
            min_date,
            max_date,
            docs_dir=get_settings().reports_dir / "gx_docs",
            kpi_codes=_kpi_codes(warehouse) if table == "gold.kpi_values" else None,
            # Late data is the freshness policies' concern (they alert). A blocking staleness check would hold
            # every corrected past day of a backfill back from gold whenever today's feed is late.
            check_freshness=False,
        )
        context.log.info(outcome.summary())
        return _check_result(outcome)

    return _check


# Trading state is not partitioned: its checks validate the deliveries that matter now, from two weeks back
# (late clearing and trade corrections) to the day after tomorrow (bids for the next auctions).
TRADING_DAYS_BACK, TRADING_DAYS_AHEAD = 14, 2


def _make_trading_check(table: str) -> dg.AssetChecksDefinition:
    layer, name = table.split(".", 1)

    @dg.asset_check(
        asset=dg.AssetKey([layer, name]),
        name=f"{name}_expectations",
        blocking=True,
        description=(
            f"Great Expectations suite of {table} on deliveries from {TRADING_DAYS_BACK} days back to "
            f"{TRADING_DAYS_AHEAD} days ahead."
        ),
    )
    def _check(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
        from expectations.warehouse import validate_deliveries

        today = datetime.now(UTC).date()
        first, last = today - timedelta(days=TRADING_DAYS_BACK), today + timedelta(days=TRADING_DAYS_AHEAD)
        outcome = validate_deliveries(
            warehouse.url, table, first, last, docs_dir=get_settings().reports_dir / "gx_docs"
        )
        context.log.info(outcome.summary())
        return _check_result(outcome, deliveries=dg.MetadataValue.text(f"{first} .. {last}"))

    return _check


silver_market__prices_expectations = _make_check("silver.market__prices")
silver_market__load_expectations = _make_check("silver.market__load")
silver_market__generation_expectations = _make_check("silver.market__generation")
silver_market__weather_expectations = _make_check("silver.market__weather")
gold_fct_prices_hourly_expectations = _make_check("gold.fct_prices_hourly")
gold_fct_load_hourly_expectations = _make_check("gold.fct_load_hourly")
gold_kpi_values_expectations = _make_check("gold.kpi_values")
silver_trading__bids_expectations = _make_trading_check("silver.trading__bids")
silver_trading__trades_expectations = _make_trading_check("silver.trading__trades")
