"""Asset checks from expectation suites: factories that wrap `expectations/` validations as Dagster checks.

Each domain declares the checks of its own tables with these factories (bronze, silver, gold). Checks of
partitioned tables validate the run's partition window; current-state tables a window of delivery dates;
append-only bronze tables only the rows the run appended. Checks own no automation condition, so they
ride along in every run (or backfill) of their asset, where blocking ones stop the assets downstream.
Suites and validation live in `expectations/`, which has no Dagster import.
"""

import functools
import importlib
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from assets.shared.evidence import evidence_links
from assets.shared.partitions import daily_partitions, market_date_window
from assets.shared.resources import LakeResource, WarehouseResource
from infra.settings import get_settings

if TYPE_CHECKING:
    from expectations.runner import SuiteOutcome

# Annotations stay evaluated (no `from __future__ import annotations`): Dagster reads the `context` type.
# Great Expectations is imported inside the checks, not here: it takes seconds of CPU to import, and every
# Dagster run process (and the code server) loads this module whether or not its run evaluates a suite.

KpiCodes = Callable[[WarehouseResource], "list[str] | None"]


# The assets the factories below gave a suite check: a run that builds one of them also runs its suite.
_ASSETS_WITH_SUITES: set[dg.AssetKey] = set()


def _suite_check(checks: dg.AssetChecksDefinition) -> dg.AssetChecksDefinition:
    _ASSETS_WITH_SUITES.update(key.asset_key for key in checks.check_keys)
    return checks


def import_suites_for_run(context: dg.AssetExecutionContext) -> None:
    """Import the suites' library (Great Expectations: ~10 s of CPU) in a background thread, once per process,
    when the run builds an asset with a suite check.

    Called by steps as they hand their work to another process (a Spark job, a dbt build): this process then sits
    waiting, and the checks that follow in the same run find the library imported instead of adding its import
    to the run's critical path. The run's selection decides, not the step's: the suite checks are steps of their
    own, outside the asset's.
    """
    selected = context.run.asset_selection
    if selected is None or selected & _ASSETS_WITH_SUITES:
        _import_suites_in_background()


@functools.cache
def _import_suites_in_background() -> None:
    threading.Thread(
        target=importlib.import_module, args=("expectations.runner",), name="import-suites", daemon=True
    ).start()


def suite_check_result(
    outcome: "SuiteOutcome",
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
    **extra: dg.MetadataValue,
) -> dg.AssetCheckResult:
    """A check result from a suite outcome: counts, the failing expectations by name, and their samples."""
    meta = outcome.as_metadata()
    links = evidence_links(outcome.docs_page, "data_docs")
    return dg.AssetCheckResult(
        passed=outcome.success,
        severity=severity,
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
            **links,
            **extra,
        },
    )


def _docs_dir() -> Path:
    return get_settings().reports_dir / "gx_docs"


def _split(table: str) -> tuple[str, str]:
    layer, name = table.split(".", 1)
    return layer, name


def partition_suite_check(table: str, kpi_codes: KpiCodes | None = None) -> dg.AssetChecksDefinition:
    """Blocking check `<name>_expectations` of a daily-partitioned Postgres table (e.g. "silver.market__load")
    on the run's partition window; `kpi_codes` reads the KPI codes a KPI table's suite accepts."""
    layer, name = _split(table)

    @dg.asset_check(
        asset=dg.AssetKey([layer, name]),
        name=f"{name}_expectations",
        blocking=True,
        partitions_def=daily_partitions,
        description=f"Great Expectations suite of {table} on the run's partition window.",
    )
    def _check(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
        from expectations.warehouse import validate_partition

        window = market_date_window(context)
        outcome = validate_partition(
            warehouse.url,
            table,
            window.first,
            window.last,
            docs_dir=_docs_dir(),
            kpi_codes=kpi_codes(warehouse) if kpi_codes else None,
            # Late data is the freshness policies' concern (they alert). A blocking staleness check would hold
            # every corrected past day of a backfill back from gold whenever today's feed is late.
            check_freshness=False,
        )
        context.log.info(outcome.summary())
        return suite_check_result(outcome)

    return _suite_check(_check)


def delivery_suite_check(table: str, days_back: int, days_ahead: int) -> dg.AssetChecksDefinition:
    """Blocking check `<name>_expectations` of an unpartitioned current-state table (e.g.
    "silver.trading__bids") on the deliveries from `days_back` days ago to `days_ahead` days ahead."""
    layer, name = _split(table)

    @dg.asset_check(
        asset=dg.AssetKey([layer, name]),
        name=f"{name}_expectations",
        blocking=True,
        description=f"Great Expectations suite of {table} on deliveries from {days_back} days back to "
        f"{days_ahead} days ahead.",
    )
    def _check(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
        from expectations.warehouse import validate_deliveries

        today = datetime.now(UTC).date()
        first, last = today - timedelta(days=days_back), today + timedelta(days=days_ahead)
        outcome = validate_deliveries(warehouse.url, table, first, last, docs_dir=_docs_dir())
        context.log.info(outcome.summary())
        return suite_check_result(outcome, deliveries=dg.MetadataValue.text(f"{first} .. {last}"))

    return _suite_check(_check)


# Metadata a bronze asset records on each materialization: the table's Delta version after the run, and
# before it (-1 when the table did not exist). The appended-rows checks read the rows between the two.
DELTA_VERSION = "delta_version"
PREVIOUS_DELTA_VERSION = "previous_delta_version"


def delta_version(lake: LakeResource, layer: str, name: str) -> int:
    """The table's current Delta version, -1 when it does not exist yet."""
    table = lake.lake.table(layer, name)
    return -1 if table is None else table.version()


def appended_rows_check(table: str) -> dg.AssetChecksDefinition:
    """Non-blocking check `<name>_expectations` of an append-only bronze Delta table (e.g.
    "bronze.files__prices") on the rows its latest materialization appended, read from the Delta versions
    the materialization recorded (`DELTA_VERSION`, `PREVIOUS_DELTA_VERSION`). Warns; it never holds silver
    back, which has its own blocking checks."""
    layer, name = _split(table)
    key = dg.AssetKey([layer, name])

    @dg.asset_check(
        asset=key,
        name=f"{name}_expectations",
        blocking=False,
        description=f"Great Expectations suite of {table} on the rows the latest run appended.",
    )
    def _check(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
        event = context.instance.get_latest_materialization_event(key)
        meta = event.asset_materialization.metadata if event and event.asset_materialization else {}
        if DELTA_VERSION not in meta:
            return dg.AssetCheckResult(passed=True, description="no Delta version recorded: nothing to validate")
        version = int(meta[DELTA_VERSION].value)
        since = int(meta[PREVIOUS_DELTA_VERSION].value) if PREVIOUS_DELTA_VERSION in meta else -1
        versions = dg.MetadataValue.text(f"({since}, {version}]")
        if version <= since:
            return dg.AssetCheckResult(
                passed=True, description="no rows appended", metadata={"delta_versions": versions}
            )
        from expectations.lake import validate_appended

        outcome = validate_appended(lake.lake, table, since if since >= 0 else None, version, docs_dir=_docs_dir())
        context.log.info(outcome.summary())
        return suite_check_result(outcome, dg.AssetCheckSeverity.WARN, delta_versions=versions)

    return _suite_check(_check)
