"""Reading one bronze day of small follow-mode batches, before and after the nightly maintenance.

The follow-mode consumer commits one small Delta file per micro-batch; a day of ticks is thousands of them.
This writes `--days` days of tick batches through the consumer's own write path (`BronzeTables.append`, offsets
in every commit), copies the table twice, and times opening the table and reading one day (a `ts_utc` filter,
as a day's silver rebuild or an archive job reads it) on: the table as written, the copy compacted, and the
copy compacted with z-order by (ts_utc, zone) (whether z-order pays: `assets/operations.py` ZORDER_BY). Each
figure is the best of `--repeats`, with the load average beside it and the ratio to the uncompacted read.

    python -m benchmarks.lake_maintenance [--days 2 --batches-per-day 1000 --rows-per-batch 40]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from benchmarks.harness import load_average
from infra.lake import Lake
from infra.lake_maintenance import maintain_table
from ingestion.cdc.decode import TICKS_SCHEMA
from ingestion.cdc.delta import BronzeTables

TOPIC = "optibid.market.ticks"
START = datetime(2026, 11, 1, tzinfo=UTC)


def _batch(day: int, batch: int, batches_per_day: int, rows: int, offset: int) -> pa.Table:
    step = timedelta(days=1) / batches_per_day
    ts = START + day * timedelta(days=1) + batch * step
    now = datetime.now(UTC)
    columns = {
        "zone": [f"Z{i % 20:02d}" for i in range(rows)],
        "node": [None] * rows,
        "ts_utc": [ts] * rows,
        "market": ["RT"] * rows,
        "interval_minutes": [5] * rows,
        "price": [40.0 + (offset + i) % 97 for i in range(rows)],
        "currency": ["EUR"] * rows,
        "_topic": [TOPIC] * rows,
        "_partition": [0] * rows,
        "_offset": list(range(offset, offset + rows)),
        "_offset_epoch": [0] * rows,
        "_kafka_timestamp": [ts] * rows,
        "_ingested_at": [now] * rows,
        "_batch_id": [f"b{day}-{batch}"] * rows,
    }
    return pa.Table.from_pydict(columns, schema=TICKS_SCHEMA)


def write_follow_batches(lake: Lake, days: int, batches_per_day: int, rows: int) -> int:
    tables = BronzeTables(lake)
    offset = 0
    for day in range(days):
        for batch in range(batches_per_day):
            tables.append(
                "ticks__prices",
                _batch(day, batch, batches_per_day, rows, offset),
                topic_offsets={(TOPIC, 0): offset + rows - 1},
            )
            offset += rows
    return offset


def read_day(uri: str, day: datetime) -> int:
    """Open the table and read one day's rows (what a day's rebuild or archive reads)."""
    table = DeltaTable(uri)
    ts = pc.field("ts_utc")
    data = table.to_pyarrow_dataset().to_table(filter=(ts >= day) & (ts < day + timedelta(days=1)))
    return data.num_rows


def best_of(uri: str, day: datetime, repeats: int) -> tuple[float, int]:
    times, rows = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        rows = read_day(uri, day)
        times.append(time.perf_counter() - started)
    return min(times), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--batches-per-day", type=int, default=1000)
    parser.add_argument("--rows-per-batch", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench_lake_maintenance_"))
    try:
        written = Lake(str(root / "as_written"))
        started = time.perf_counter()
        rows = write_follow_batches(written, args.days, args.batches_per_day, args.rows_per_batch)
        print(
            f"wrote {rows:,} rows in {args.days * args.batches_per_day:,} follow-mode commits "
            f"({time.perf_counter() - started:.1f} s); {load_average()}"
        )
        compacted, zordered = Lake(str(root / "compacted")), Lake(str(root / "zordered"))
        for copy in (compacted, zordered):
            shutil.copytree(written.root, copy.root)

        timings = {}
        for name, lake, zorder in (("compacted", compacted, ()), ("z-ordered", zordered, ("ts_utc", "zone"))):
            result = maintain_table(lake, "bronze", "ticks__prices", retention_hours=0, zorder_by=zorder)
            assert result is not None
            timings[name] = result
            print(
                f"{name}: {result.files_before:,} -> {result.files_after} files, {result.bytes_before / 1e6:.2f} -> "
                f"{result.bytes_after / 1e6:.2f} MB, maintenance {result.seconds:.2f} s; {load_average()}"
            )

        day = START + timedelta(days=args.days // 2)
        base, base_rows = best_of(written.table_uri("bronze", "ticks__prices"), day, args.repeats)
        print(f"read one day, as written: {base * 1000:.1f} ms ({base_rows:,} rows); {load_average()}")
        for name, lake in (("compacted", compacted), ("z-ordered", zordered)):
            seconds, day_rows = best_of(lake.table_uri("bronze", "ticks__prices"), day, args.repeats)
            assert day_rows == base_rows, (name, day_rows, base_rows)
            print(
                f"read one day, {name}: {seconds * 1000:.1f} ms ({day_rows:,} rows), "
                f"{base / seconds:.1f}x faster than as written; {load_average()}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
