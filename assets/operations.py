"""Operations: the assets that keep the platform healthy for years, each run nightly by the automation.

- `ops/lake_maintenance`: compacts (z-ordered for the tables in `ZORDER_BY`), checkpoints, cleans the log of and
  vacuums every bronze Delta table (`infra.lake_maintenance`), recording files and bytes before and after and
  the duration per table, so the UI plots them run after run.
- `ops/backup`: an encrypted, verified backup of the warehouse (with the Dagster instance's storage), the
  home's state and the lake (`infra.backup`), then the older ones beyond `OPTIBID_BACKUP_KEEP` deleted. Its
  freshness is watched by `orchestration.alerting.alert_on_stale_backup`, which alerts through `ops.alerts`.
- `ops/retention`: archives the warehouse days past their retention to the cold tier, verified before the hot
  rows are deleted, moves the raw payloads of old bronze CDC rows there (the rows stay hot), and prunes the
  operational tables (`infra.retention`).

The work belongs to `infra`; this module only says which tables, when, and what to show.
"""

import dagster as dg

from assets.bronze import cdc as bronze_cdc
from assets.bronze import files as bronze_files
from assets.shared.automation import nightly
from assets.shared.resources import LakeResource, WarehouseResource
from infra.backup import create_backup, prune_backups
from infra.lake_maintenance import TableMaintenance, maintain_table
from infra.settings import get_settings

GROUP = "operations"
LAKE_MAINTENANCE = dg.AssetKey(["ops", "lake_maintenance"])
BACKUP = dg.AssetKey(["ops", "backup"])
RETENTION = dg.AssetKey(["ops", "retention"])

# Z-order where it pays, and measured, it does not yet: follow-mode batches arrive in time order, so plain
# compaction (which keeps insertion order) already clusters a table by day, and a day's read after compaction was
# as fast as after z-order by (ts_utc, zone) while z-order rewrites the whole table every night
# (benchmarks/lake_maintenance.py, benchmarks/README.md). A table read by another column goes here, e.g.
# {"files__weather": ("zone", "ts_utc")}.
ZORDER_BY: dict[str, tuple[str, ...]] = {}


def bronze_tables() -> list[str]:
    """Every bronze Delta table of the platform (the CDC tables, their bookkeeping tables, the file tables)."""
    keys = [*bronze_cdc.ALL_KEYS, *(k for k in bronze_files.landing_files.keys)]
    return sorted({key.path[-1] for key in keys})


def zorder_columns(table: str) -> tuple[str, ...]:
    return ZORDER_BY.get(table, ())


def _table_markdown(results: list[TableMaintenance]) -> str:
    lines = [
        "| table | files before | files after | MB before | MB after | vacuumed | z-order | seconds |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.table} | {r.files_before} | {r.files_after} | {r.bytes_before / 1e6:.2f} | "
            f"{r.bytes_after / 1e6:.2f} | {r.files_vacuumed} | {', '.join(r.zordered_by) or '-'} | {r.seconds} |"
        )
    return "\n".join(lines)


@dg.asset(
    key=LAKE_MAINTENANCE,
    group_name=GROUP,
    kinds={"delta"},
    deps=[dg.AssetKey(["bronze", t]) for t in bronze_tables()],
    automation_condition=nightly(get_settings().lake_maintenance_cron),
    description="Nightly compaction, checkpoint, log clean-up and vacuum of "
    "every bronze Delta table; versions of the last OPTIBID_LAKE_TIME_TRAVEL_HOURS stay readable and the CDC "
    "offsets stay in the log.",
)
def lake_maintenance(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    settings = get_settings()
    results: list[TableMaintenance] = []
    for table in bronze_tables():
        result = maintain_table(
            lake.lake,
            "bronze",
            table,
            retention_hours=settings.lake_time_travel_hours,
            zorder_by=zorder_columns(table),
        )
        if result is not None:
            context.log.info(
                f"{result.table}: {result.files_before} -> {result.files_after} files, "
                f"{result.files_vacuumed} vacuumed, {result.seconds} s"
            )
            results.append(result)
    metadata: dict[str, object] = {
        "tables": len(results),
        "files_before": sum(r.files_before for r in results),
        "files_after": sum(r.files_after for r in results),
        "bytes_before": sum(r.bytes_before for r in results),
        "bytes_after": sum(r.bytes_after for r in results),
        "files_vacuumed": sum(r.files_vacuumed for r in results),
        "duration_seconds": round(sum(r.seconds for r in results), 3),
        "retention_hours": settings.lake_time_travel_hours,
        "per_table": dg.MetadataValue.md(_table_markdown(results)),
    }
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    key=BACKUP,
    group_name=GROUP,
    kinds={"postgres", "delta"},
    # Without a key there is nothing to encrypt with: no nightly run (and no freshness alert) until one is set.
    automation_condition=nightly(get_settings().backup_cron) if get_settings().backup_key else None,
    description="Nightly encrypted backup (OPTIBID_BACKUP_KEY) of the warehouse, the Dagster instance, the home's "
    "keys and the lake into OPTIBID_BACKUP_DIR, verified before it is published; keeps OPTIBID_BACKUP_KEEP.",
)
def backup(context: dg.AssetExecutionContext, warehouse: WarehouseResource, lake: LakeResource) -> dg.MaterializeResult:
    settings = get_settings()
    taken = create_backup(settings, warehouse.url, lake.lake)
    pruned = prune_backups(settings)
    context.log.info(f"backup {taken.backup_id} in {taken.path}; deleted {pruned or 'none'}")
    parts = taken.manifest["parts"]
    return dg.MaterializeResult(
        metadata={
            "backup_id": taken.backup_id,
            "path": dg.MetadataValue.path(str(taken.path)),
            "bytes": taken.size_bytes,
            "database_dump_bytes": int(parts["postgres.dump"]["plain_bytes"]),
            "lake_bytes": int(parts["lake.tar"]["plain_bytes"]),
            "lake_tables": len(taken.manifest["lake"]["versions"]),
            "duration_seconds": taken.manifest["seconds"],
            "backups_deleted": len(pruned),
        }
    )


@dg.asset(
    key=RETENTION,
    group_name=GROUP,
    kinds={"postgres", "parquet", "delta"},
    automation_condition=nightly(get_settings().retention_cron),
    description="Nightly retention: warehouse days past their retention (OPTIBID_RETENTION_DAYS, defaults in "
    "infra/retention.py) and CDC dead letters past theirs archived to OPTIBID_ARCHIVE_URI and verified before "
    "deletion; raw payloads of bronze CDC rows past theirs archived, verified, then cleared in the hot rows; "
    "login attempts pruned.",
)
def retention(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, lake: LakeResource
) -> dg.MaterializeResult:
    from datetime import UTC, datetime

    from infra.retention import apply_retention

    started = datetime.now(UTC)
    outcomes = apply_retention(warehouse.url, get_settings(), started.date(), lake=lake.lake)
    per_table: dict[str, list[int]] = {}
    for outcome in outcomes:
        days_rows = per_table.setdefault(f"{outcome.action} {outcome.table}", [0, 0])
        days_rows[0] += 1
        days_rows[1] += outcome.rows
    lines = ["| what | days | rows |", "|---|---:|---:|"] + [f"| {k} | {d} | {r} |" for k, (d, r) in per_table.items()]
    context.log.info(f"{len(outcomes)} days archived or pruned")
    return dg.MaterializeResult(
        metadata={
            "days_archived": sum(1 for o in outcomes if o.action == "archive" and o.rows),
            "rows_archived": sum(o.rows for o in outcomes if o.action == "archive"),
            "rows_pruned": sum(o.rows for o in outcomes if o.action == "prune"),
            "payloads_archived": sum(o.rows for o in outcomes if o.action == "archive_payloads"),
            "duration_seconds": round((datetime.now(UTC) - started).total_seconds(), 3),
            "per_table": dg.MetadataValue.md("\n".join(lines)),
        }
    )


defs = dg.Definitions(assets=[lake_maintenance, backup, retention])
