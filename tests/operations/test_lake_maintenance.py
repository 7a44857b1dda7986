"""Lake maintenance on real Delta tables written through the CDC consumer's own write path: fewer files, the
same rows, the same Kafka offsets, time travel within the window, and a stale writer still committing."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from infra.lake import Lake
from infra.lake_maintenance import maintain_table, only_maintenance_since
from ingestion.cdc.delta import BronzeTables, offset_app_id
from ingestion.cdc.fetch import write_parquet

TOPIC = "optibid.market.ticks"


def _batch(start: int, rows: int) -> pa.Table:
    base = datetime(2026, 12, 1)
    return pa.table(
        {
            "zone": pa.array([f"Z{i % 3}" for i in range(start, start + rows)]),
            "ts_utc": pa.array([base + timedelta(minutes=i) for i in range(start, start + rows)], pa.timestamp("us")),
            "price": pa.array([float(i) for i in range(start, start + rows)]),
            "_topic": pa.array([TOPIC] * rows),
            "_partition": pa.array([i % 2 for i in range(start, start + rows)], pa.int32()),
            "_offset": pa.array(list(range(start, start + rows)), pa.int64()),
        }
    )


def _follow_batches(lake: Lake, batches: int, rows: int = 10) -> BronzeTables:
    tables = BronzeTables(lake)
    for b in range(batches):
        start = b * rows
        tables.append(
            "ticks__prices",
            _batch(start, rows),
            topic_offsets={(TOPIC, 0): start + rows - 2, (TOPIC, 1): start + rows - 1},
        )
    return tables


def _rows(lake: Lake, version: int | None = None) -> list[tuple]:
    table = lake.table("bronze", "ticks__prices", version)
    assert table is not None
    data = table.to_pyarrow_table().sort_by("_offset")
    return list(zip(*(data.column(c).to_pylist() for c in ("zone", "ts_utc", "price", "_offset")), strict=True))


def test_compaction_keeps_rows_offsets_and_every_version_within_the_window(lake: Lake) -> None:
    writer = _follow_batches(lake, 25)
    versions = {v: _rows(lake, v) for v in (0, 12, 24)}
    offsets = {p: writer.last_offset("ticks__prices", TOPIC, p) for p in (0, 1)}

    result = maintain_table(lake, "bronze", "ticks__prices", retention_hours=24, zorder_by=("ts_utc", "zone"))

    assert result is not None
    assert (result.files_before, result.files_after) == (25, 1)
    assert result.bytes_after < result.bytes_before
    assert result.rows == 250 and result.zordered_by == ["ts_utc", "zone"]
    assert result.offsets_checked == 2 and result.checkpoint_version == result.version_before + 1
    assert result.files_vacuumed == 0  # the rewritten files are younger than the window
    # every version within the window still reads exactly what it read before
    for version, rows in versions.items():
        assert _rows(lake, version) == rows
    assert _rows(lake) == versions[24]
    # the consumer's positions are where they were, read the way the consumer reads them
    fresh = BronzeTables(lake)
    assert {p: fresh.last_offset("ticks__prices", TOPIC, p) for p in (0, 1)} == offsets == {0: 248, 1: 249}


def test_a_consumer_holding_a_snapshot_from_before_compaction_still_commits_its_offsets(lake: Lake) -> None:
    writer = _follow_batches(lake, 5)
    writer.table("ticks__prices")  # cached snapshot, as a follow-mode consumer holds it
    maintain_table(lake, "bronze", "ticks__prices", retention_hours=24)
    writer.append("ticks__prices", _batch(50, 10), topic_offsets={(TOPIC, 0): 58, (TOPIC, 1): 59})

    fresh = BronzeTables(lake)
    assert fresh.last_offset("ticks__prices", TOPIC, 0) == 58
    assert [r[3] for r in _rows(lake)] == list(range(60))  # no row lost, none twice


def test_vacuum_beyond_the_window_removes_only_unreferenced_files(lake: Lake) -> None:
    _follow_batches(lake, 6)
    current = _rows(lake)
    result = maintain_table(lake, "bronze", "ticks__prices", retention_hours=0)
    assert result is not None and result.files_vacuumed == 6 and result.files_after == 1
    assert _rows(lake) == current
    table = lake.table("bronze", "ticks__prices")
    assert table is not None and table.transaction_version(offset_app_id(TOPIC, 1)) == 59
    # a version older than the window has lost its files: that is what the window means
    with pytest.raises(Exception, match="not found"):
        _rows(lake, 0)


def test_a_fetch_file_never_committed_is_never_read_and_vacuumed_only_past_the_window(lake: Lake) -> None:
    # A fetch process writes its Parquet file into the table, then the consumer dies before committing it.
    _follow_batches(lake, 3)
    current = _rows(lake)
    name, _, _ = write_parquet(lake.table_uri("bronze", "ticks__prices"), _batch(1000, 10))
    orphan = Path(lake.table_uri("bronze", "ticks__prices")) / name
    assert _rows(lake) == current
    # Within the window the file may still be a live consumer's next commit: vacuum leaves it.
    maintain_table(lake, "bronze", "ticks__prices", retention_hours=24)
    assert orphan.exists()
    past_window = time.time() - 25 * 3600
    os.utime(orphan, (past_window, past_window))
    result = maintain_table(lake, "bronze", "ticks__prices", retention_hours=24)
    assert result is not None and result.files_vacuumed == 1
    assert not orphan.exists()
    assert _rows(lake) == current


def test_maintenance_commits_are_recognised_as_adding_no_rows(lake: Lake) -> None:
    writer = _follow_batches(lake, 3)
    before = lake.table("bronze", "ticks__prices").version()
    maintain_table(lake, "bronze", "ticks__prices", retention_hours=0)
    table = lake.table("bronze", "ticks__prices")
    assert table.version() > before and only_maintenance_since(table, before)
    writer.append("ticks__prices", _batch(30, 5), topic_offsets={(TOPIC, 0): 34})
    assert not only_maintenance_since(lake.table("bronze", "ticks__prices"), before)


def test_the_maintenance_asset_runs_nightly_and_records_what_it_did(lake: Lake) -> None:
    from assets.operations import lake_maintenance
    from assets.shared.resources import LakeResource

    _follow_batches(lake, 4)
    result = dg.materialize([lake_maintenance], resources={"lake": LakeResource(lake_uri=lake.root)})
    assert result.success
    [mat] = result.asset_materializations_for_node("ops__lake_maintenance")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert (meta["tables"], meta["files_before"], meta["files_after"]) == (1, 4, 1)
    assert meta["bytes_after"] < meta["bytes_before"] and meta["duration_seconds"] > 0
    assert "bronze.ticks__prices" in meta["per_table"]

    # the automation asks for it once after the cron tick, and not again until the next one
    defs = dg.Definitions(assets=[lake_maintenance], resources={"lake": LakeResource(lake_uri=lake.root)})
    with dg.instance_for_test() as instance:
        evening = datetime(2026, 12, 1, 23, 0)
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=evening)
        assert first.total_requested == 0
        night = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=first.cursor, evaluation_time=evening + timedelta(hours=4)
        )
        assert night.total_requested == 1
        later = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=night.cursor, evaluation_time=evening + timedelta(hours=5)
        )
        assert later.total_requested == 0
