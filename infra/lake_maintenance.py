"""Delta table maintenance: compaction (optionally z-ordered), checkpoints, log clean-up and vacuum.

What belongs here: keeping one Delta table fast to read and bounded on disk without changing what any
version within the time-travel window reads, and without touching the exactly-once bookkeeping that the
CDC consumer keeps as app transactions in the same log (`ingestion.cdc.delta`). Which tables to maintain,
and when, is the caller's choice (`assets/maintenance.py`).

Why it is safe:
- Compaction and z-order commit `dataChange=false` rewrites: every row stays, in new files, and the log
  carries the app transactions (Kafka offsets) forward unchanged; a consumer that committed meanwhile from a
  stale snapshot still commits (a blind append does not conflict with a rewrite), and a rewrite that loses
  the race to such an append is retried on the new snapshot.
- Vacuum removes only files that no version younger than `retention_hours` references, so every version
  within that window still reads. Vacuum also deletes files not yet committed (a follow-mode batch being
  written right now) once they are older than the retention, so the platform's setting has a floor of a day
  (`OPTIBID_LAKE_TIME_TRAVEL_HOURS`, `infra/settings.py`); only tests go below it.
- Log clean-up keeps `delta.logRetentionDuration` (30 days by default) and runs after a checkpoint, so the
  log is never left without a starting point; offsets live in the checkpoint as `txn` actions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError

from infra.lake import Lake, writer_properties

DEFAULT_RETENTION_HOURS = 7 * 24
COMMIT_ATTEMPTS = 3
# Operations that rewrite or clean a table without changing its rows: readers that follow new data can
# ignore commits made of these alone.
MAINTENANCE_OPERATIONS = frozenset({"OPTIMIZE", "VACUUM START", "VACUUM END"})
# Commit-info key of other rewrites that add no rows (e.g. retention clearing archived raw payloads,
# `infra.retention`): their operation is a plain MERGE, so the marker is what tells them apart.
MAINTENANCE_MARKER = "optibid.maintenance"


class MaintenanceError(RuntimeError):
    """Maintenance would have changed what the table means (offsets, row count); nothing was removed."""


@dataclass
class TableMaintenance:
    """What maintaining one table did."""

    table: str
    version_before: int
    version_after: int
    files_before: int
    files_after: int
    bytes_before: int
    bytes_after: int
    rows: int
    files_compacted: int = 0
    zordered_by: list[str] = field(default_factory=list)
    files_vacuumed: int = 0
    checkpoint_version: int | None = None
    offsets_checked: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _files_and_bytes(table: DeltaTable) -> tuple[int, int, int]:
    """(files, bytes, rows) of the table's current version, from the log alone."""
    actions = pa.table(table.get_add_actions(flatten=False))
    if actions.num_rows == 0:
        return 0, 0, 0
    rows = int(pc.sum(actions.column("num_records")).as_py() or 0) if "num_records" in actions.column_names else 0
    return actions.num_rows, int(pc.sum(actions.column("size_bytes")).as_py() or 0), rows


def _offset_app_ids(table: DeltaTable) -> list[str]:
    """The CDC consumer's app ids (`<topic>-<partition>`, `.epoch`) recorded in this table's rows."""
    names = table.schema().to_arrow().names
    if "_topic" not in names or "_partition" not in names:
        return []
    pairs = (
        table.to_pyarrow_dataset()
        .to_table(columns=["_topic", "_partition"])
        .group_by(["_topic", "_partition"])
        .aggregate([])
    )
    ids = []
    for topic, partition in zip(
        pairs.column("_topic").to_pylist(), pairs.column("_partition").to_pylist(), strict=True
    ):
        if topic is not None and partition is not None:
            ids += [f"{topic}-{partition}", f"{topic}-{partition}.epoch"]
    return ids


def _rewrite(table: DeltaTable, zorder: Sequence[str], target_size: int | None) -> dict[str, object]:
    """Compact (or z-order) on the newest snapshot, retrying when a writer committed in between."""
    properties = writer_properties("ZSTD", 4)  # zstd at level 4 is delta-rs's own default for compaction
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            if zorder:
                return table.optimize.z_order(
                    list(zorder), target_size=target_size, max_concurrent_tasks=1, writer_properties=properties
                )
            return table.optimize.compact(
                target_size=target_size, max_concurrent_tasks=1, writer_properties=properties
            )
        except CommitFailedError:
            if attempt == COMMIT_ATTEMPTS - 1:
                raise
            table.update_incremental()
    raise AssertionError("unreachable")


def maintain_table(
    lake: Lake,
    layer: str,
    name: str,
    *,
    retention_hours: int = DEFAULT_RETENTION_HOURS,
    zorder_by: Sequence[str] = (),
    target_file_bytes: int | None = None,
) -> TableMaintenance | None:
    """Compact (z-order by `zorder_by` when given and the table has them), checkpoint, clean the log and
    vacuum files older than `retention_hours` of table `layer/name`; None when the table does not exist.

    Raises `MaintenanceError` (before anything is vacuumed) if the rewrite changed the row count or any
    Kafka offset recorded in the table.
    """
    if retention_hours < 0:
        raise ValueError(f"retention_hours must not be negative, not {retention_hours}")
    started = time.perf_counter()
    table = lake.table(layer, name)
    if table is None:
        return None
    files_before, bytes_before, rows_before = _files_and_bytes(table)
    app_ids = _offset_app_ids(table)
    offsets_before = {app: table.transaction_version(app) for app in app_ids}
    result = TableMaintenance(
        table=f"{layer}.{name}",
        version_before=table.version(),
        version_after=table.version(),
        files_before=files_before,
        files_after=files_before,
        bytes_before=bytes_before,
        bytes_after=bytes_before,
        rows=rows_before,
    )
    columns = set(table.schema().to_arrow().names)
    zorder = [c for c in zorder_by if c in columns] if files_before > 1 else []
    if files_before > 1:
        metrics = _rewrite(table, zorder, target_file_bytes)
        result.files_compacted = int(metrics.get("numFilesRemoved", 0))
        result.zordered_by = zorder if result.files_compacted else []
        table.update_incremental()
    # Offsets and rows are compared with the snapshot the rewrite started from: a consumer that appended
    # meanwhile only moves them forward.
    _, _, rows_now = _files_and_bytes(table)
    for app, before in offsets_before.items():
        after = table.transaction_version(app)
        if before is not None and (after is None or after < before):
            raise MaintenanceError(f"{layer}.{name}: offset of {app} went from {before} to {after}")
    if rows_now < rows_before:
        raise MaintenanceError(f"{layer}.{name}: {rows_before} rows before compaction, {rows_now} after")
    result.offsets_checked = sum(1 for v in offsets_before.values() if v is not None)
    table.create_checkpoint()
    result.checkpoint_version = table.version()
    table.cleanup_metadata()
    # Full: also the files no commit ever named, older than the window (a CDC fetch process's Parquet file whose
    # consumer died before committing it). The default mode looks only at files removed since the last
    # checkpoint, and the checkpoint just above made that nothing.
    vacuumed = table.vacuum(
        retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False, full=True
    )
    result.files_vacuumed = len(vacuumed)
    table.update_incremental()
    result.version_after = table.version()
    result.files_after, result.bytes_after, result.rows = _files_and_bytes(table)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def maintenance_commit_metadata(kind: str) -> dict[str, str]:
    """Commit metadata marking a rewrite that adds no rows as maintenance (`kind` says which)."""
    return {MAINTENANCE_MARKER: kind}


def only_maintenance_since(table: DeltaTable, version: int) -> bool:
    """True when every commit after `version` up to the table's current one is maintenance (no new rows):
    compaction and vacuum, or a commit carrying `maintenance_commit_metadata`."""
    newer = table.version() - version
    if newer <= 0:
        return False
    history = table.history(newer)
    return len(history) == newer and all(
        h.get("operation") in MAINTENANCE_OPERATIONS or MAINTENANCE_MARKER in h for h in history
    )


def summary_json(results: Sequence[TableMaintenance]) -> str:
    """The results as one JSON document (for logs and run metadata)."""
    return json.dumps([r.as_dict() for r in results], indent=2)
