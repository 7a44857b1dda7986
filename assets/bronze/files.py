"""Bronze files: the landing folder drained into `bronze/files__<dataset>`, with the job and sensor that
start the drains and the checks on what they land.

Files at the landing folder's root are the public market feed (organization `market`); files under
`<landing>/<org_id>/` belong to that organization. The library (`ingestion.files`) finds the waiting files
and does the detection, mapping, quarantine and exactly-once landing; `landing_files` only walks the list
and reports. `landing_folder_sensor` starts `landing_files_job` when files wait; the expectation suites of
the bronze file tables (non-blocking) validate the rows a run appended.

Bronze tables hold every day, so they are not partitioned; `["bronze", "market_days"]` is their view by
market day: a landing run records a materialization of each day its market rows fall on, and silver
rebuilds exactly those days (a corrected file for a past day rebuilds that day, weeks later too).
"""

import hashlib
from collections import Counter
from datetime import UTC, datetime

import dagster as dg

from assets.shared.automation import WAREHOUSE_RUN_TAGS
from assets.shared.expectation_checks import (
    DELTA_VERSION,
    PREVIOUS_DELTA_VERSION,
    appended_rows_check,
    delta_version,
)
from assets.shared.partitions import daily_partitions, market_days_touched
from assets.shared.resources import LakeResource, WarehouseResource
from infra.settings import get_settings
from ingestion.files import CANONICAL_DATASETS, ingest_landing_file, landing_files_by_org
from ingestion.silver.market import SILVER_MARKET_TABLES

MARKET_DAYS = dg.AssetKey(["bronze", "market_days"])

market_days = dg.AssetSpec(
    MARKET_DAYS,
    group_name="bronze",
    partitions_def=daily_partitions,
    deps=[
        *(dg.AssetKey(["bronze", f"files__{name}"]) for name in SILVER_MARKET_TABLES),
        dg.AssetKey(["bronze", "ticks__prices"]),
    ],
    description="The bronze market tables by market-local day: day D is materialized whenever a run lands "
    "market rows dated D (recorded by the landing run; bronze itself is one append-only table per dataset).",
)


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            ["bronze", f"files__{name}"],
            group_name="bronze",
            kinds={"delta", "python"},
            description=f"Uploaded {name} files landed append-only with lineage (file, row, upload id).",
        )
        for name in CANONICAL_DATASETS
    ],
    can_subset=False,
    description="Drain the landing folder: detect, map, validate, quarantine and land every waiting file.",
)
def landing_files(context: dg.AssetExecutionContext, warehouse: WarehouseResource, lake: LakeResource):
    settings = get_settings()
    landing = settings.resolved_landing_dir
    landing.mkdir(parents=True, exist_ok=True)
    waiting = landing_files_by_org(landing)
    versions_before = {name: delta_version(lake, "bronze", f"files__{name}") for name in CANONICAL_DATASETS}
    landed: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    days: Counter[str] = Counter()
    for index, (org_id, path) in enumerate(waiting, start=1):
        report = ingest_landing_file(
            path,
            org_id,
            database_url=warehouse.url,
            lake=lake.lake,
            storage_dir=settings.resolved_uploads_dir,
            max_bytes=settings.upload_max_bytes,
            default_tz=settings.market_timezone,
        )
        statuses[report["status"]] += 1
        dataset = report.get("dataset")
        if dataset:
            landed[dataset] += report.get("rows_landed") or 0
            quarantined[dataset] += report.get("rows_quarantined") or 0
        if dataset in SILVER_MARKET_TABLES and report["status"] == "landed" and report.get("rows_landed"):
            days.update(_days_of(report))
        context.log.info(
            f"[{index}/{len(waiting)}] {path.name} ({org_id}): {report['status']}"
            + (f", {report.get('rows_landed')} landed, {report.get('rows_quarantined')} quarantined" if dataset else "")
            + (f" - {report['error']}" if report.get("error") else "")
        )
    for day, files in sorted(days.items()):
        context.log_event(
            dg.AssetMaterialization(asset_key=MARKET_DAYS, partition=day, metadata={"files": files})
        )
    for name in CANONICAL_DATASETS:
        yield dg.MaterializeResult(
            asset_key=["bronze", f"files__{name}"],
            metadata={
                "files_seen": len(waiting),
                "rows_landed": landed[name],
                "rows_quarantined": quarantined[name],
                "upload_statuses": dict(statuses),
                "table_uri": lake.lake.table_uri("bronze", f"files__{name}"),
                PREVIOUS_DELTA_VERSION: versions_before[name],
                DELTA_VERSION: delta_version(lake, "bronze", f"files__{name}"),
            },
        )


def _days_of(report: dict) -> list[str]:
    """Partition keys of the market days an upload's rows fall on (from its profile's ts_utc range)."""
    span = ((report.get("profile") or {}).get("ranges") or {}).get("ts_utc")
    if not span:
        return []
    first, last = (datetime.fromisoformat(str(v)) for v in span)
    if first.tzinfo is None:  # profiles store ts_utc as UTC
        first, last = first.replace(tzinfo=UTC), last.replace(tzinfo=UTC)
    return market_days_touched(first, last)


# Expectation suites of the bronze file tables that have one, on the rows each landing run appended.
files__prices_expectations = appended_rows_check("bronze.files__prices")
files__load_expectations = appended_rows_check("bronze.files__load")

# --- starting the landing runs ------------------------------------------------------------------------

landing_files_job = dg.define_asset_job(
    "landing_files_job",
    selection=dg.AssetSelection.assets(landing_files),
    description="Land the files waiting in the landing folder.",
    tags=WAREHOUSE_RUN_TAGS,  # the first hop of a landed file's way to gold goes first in the queue
)


@dg.sensor(
    job=landing_files_job,
    minimum_interval_seconds=get_settings().new_data_poll_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def landing_folder_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    """Start a landing run when files wait in the landing folder; one run per distinct set of files."""
    landing = get_settings().resolved_landing_dir
    landing.mkdir(parents=True, exist_ok=True)
    waiting = landing_files_by_org(landing)
    if not waiting:
        return dg.SkipReason(f"no files waiting in {landing}")
    fingerprint = "|".join(f"{org}/{path.name}:{path.stat().st_mtime_ns}" for org, path in waiting)
    run_key = hashlib.sha256(fingerprint.encode()).hexdigest()[:32]
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=run_key, tags={"optibid/files": str(len(waiting))})])


defs = dg.Definitions(
    # An AssetSpec: Dagster records `market_days` (the landing run reports its days) but never materializes it.
    assets=[landing_files, market_days],
    asset_checks=[files__prices_expectations, files__load_expectations],
    jobs=[landing_files_job],
    sensors=[landing_folder_sensor],
)
