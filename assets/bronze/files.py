"""Bronze assets for file uploads: the landing folder drained into `bronze/files__<dataset>`.

Files at the landing folder's root are the public market feed (organization `market`); files under
`<landing>/<org_id>/` belong to that organization. The library (`ingestion.files.service`) does the
detection, mapping, quarantine and exactly-once landing; this asset only walks the folder and reports.

Bronze tables hold every day, so they are not partitioned; `["bronze", "market_days"]` is their view by
market day: a landing run records a materialization of each day its market rows fall on, and silver
rebuilds exactly those days (a corrected file for a past day rebuilds that day, weeks later too).
"""

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from infra.settings import get_settings
from ingestion.files.canonical import CANONICAL_DATASETS
from ingestion.files.service import ingest_landing_file, scan_landing_folder
from ingestion.reference import MARKET_FEED_ORG
from ingestion.silver.market import SILVER_MARKET_TABLES
from orchestration.partitions import daily_partitions, market_days_touched
from orchestration.resources import LakeResource, WarehouseResource

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


def landing_files_by_org(landing_dir: Path) -> list[tuple[str, Path]]:
    """(org_id, path) of every file waiting in the landing folder and its per-organization subfolders."""
    waiting = [(MARKET_FEED_ORG, path) for path in scan_landing_folder(landing_dir, min_age_seconds=1)]
    for sub in sorted(p for p in landing_dir.iterdir() if p.is_dir()):
        if sub.name in {"processed", "rejected"}:
            continue
        waiting += [(sub.name, path) for path in scan_landing_folder(sub, min_age_seconds=1)]
    return waiting


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
