"""Silver (and, once wired, gold) build times on a realistic volume of market data.

Bronze: a year of hourly day-ahead prices and load for 50 zones (uploads) plus a month of 5-minute nodal
real-time prices for 500 nodes (ticks). Prints the full silver build time (one backfill run over every day) and
the time of an incremental one-day partition re-run after a revised upload for that day.

    python -m benchmarks.silver_gold_build            # full size (~5.2 M bronze rows); run it once
    python -m benchmarks.silver_gold_build --small    # smoke size

Gold: `gold_build` is the hook for the dbt part (see README_silver.md); it returns None until wired.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
from deltalake import write_deltalake

from benchmarks.harness import stopping_started_services
from infra import db
from infra.lake import Lake
from infra.services import warehouse_url
from infra.settings import get_settings
from infra.spark import spark_session
from ingestion.silver.market import build_market_window

TS = pa.timestamp("us", tz="UTC")
TIMEZONES = ["America/New_York", "America/Chicago", "America/Los_Angeles", "Europe/Paris", "Asia/Kolkata"]
FILE_LINEAGE = {
    "source_tz": pa.string(), "_upload_id": pa.int64(), "_file_name": pa.string(), "_row_number": pa.int64(),
    "_sheet": pa.string(), "_org_id": pa.string(), "_ingested_at": TS, "_batch_id": pa.string(),
}


def _lineage(n: int, upload_id: int, ingested_at: datetime) -> dict[str, pa.Array]:
    return {
        "source_tz": pa.array(["UTC"] * n),
        "_upload_id": pa.array(np.full(n, upload_id, dtype=np.int64)),
        "_file_name": pa.array([f"bench_{upload_id}.csv"] * n),
        "_row_number": pa.array(np.arange(1, n + 1, dtype=np.int64)),
        "_sheet": pa.nulls(n, pa.string()),
        "_org_id": pa.array(["org_bench"] * n),
        "_ingested_at": pa.array(np.full(n, int(ingested_at.timestamp() * 1e6), dtype=np.int64)).cast(TS),
        "_batch_id": pa.array([f"batch_{upload_id}"] * n),
    }


def _grid(start: datetime, days: int, minutes: int) -> np.ndarray:
    steps = days * 24 * 60 // minutes
    return int(start.timestamp() * 1e6) + np.arange(steps, dtype=np.int64) * minutes * 60_000_000


def zone_tables(zones: list[str], start: datetime, days: int, upload_id: int, ingested_at: datetime):
    """files__prices and files__load rows: hourly, every zone."""
    ts = _grid(start, days, 60)
    n = len(ts) * len(zones)
    rng = np.random.default_rng(upload_id)
    base = {
        "ts_utc": pa.array(np.tile(ts, len(zones))).cast(TS),
        "zone": pa.array(np.repeat(zones, len(ts))),
    }
    prices = pa.table(
        {
            **base,
            "node": pa.nulls(n, pa.string()),
            "market": pa.array(["DA"] * n),
            "interval_minutes": pa.array(np.full(n, 60, dtype=np.int32)),
            "price": pa.array(rng.normal(60, 20, n)),
            "currency": pa.array(["USD"] * n),
            **_lineage(n, upload_id, ingested_at),
        }
    )
    load = pa.table(
        {
            **base,
            "interval_minutes": pa.array(np.full(n, 60, dtype=np.int32)),
            "load_mw": pa.array(rng.uniform(1000, 30000, n)),
            **_lineage(n, upload_id, ingested_at),
        }
    )
    return prices, load


def tick_table(nodes: list[tuple[str, str]], start: datetime, days: int, ingested_at: datetime) -> pa.Table:
    """ticks__prices rows: 5-minute RT prices for every node."""
    ts = _grid(start, days, 5)
    n = len(ts) * len(nodes)
    rng = np.random.default_rng(7)
    return pa.table(
        {
            "zone": pa.array(np.repeat([z for z, _ in nodes], len(ts))),
            "node": pa.array(np.repeat([node for _, node in nodes], len(ts))),
            "ts_utc": pa.array(np.tile(ts, len(nodes))).cast(TS),
            "market": pa.array(["RT"] * n),
            "interval_minutes": pa.array(np.full(n, 5, dtype=np.int64)),
            "price": pa.array(rng.normal(55, 30, n)),
            "currency": pa.array(["USD"] * n),
            "_topic": pa.array(["optibid.market.ticks"] * n),
            "_partition": pa.array((np.arange(n) % 4).astype(np.int32)),
            "_offset": pa.array(np.arange(n, dtype=np.int64)),
            "_ingested_at": pa.array(np.full(n, int(ingested_at.timestamp() * 1e6), dtype=np.int64)).cast(TS),
            "_batch_id": pa.array(["ticks"] * n),
        }
    )


def gold_build(database_url: str) -> dict[str, float] | None:
    """Hook for the gold helper: run dbt on the silver tables just built and return {step: seconds}."""
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="smoke size: 5 zones x 14 days, 20 nodes x 3 days")
    args = parser.parse_args()
    n_zones, zone_days, n_nodes, node_days = (5, 14, 20, 3) if args.small else (50, 366, 500, 31)
    year_start = datetime(2024, 1, 1, tzinfo=UTC)
    # Nodal ticks sit inside the zone year (July; day 4 in the smoke run) so both builds see them.
    node_start = year_start + timedelta(days=3 if args.small else 182)

    settings = get_settings()
    admin = warehouse_url(settings)
    url = db.create_database(admin, "optibid_bench_silver", drop_existing=True)
    db.migrate(url)
    zones = [f"BZ{i:02d}" for i in range(n_zones)]
    with db.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO silver.ref__zones VALUES (%s, %s, 'BENCH', 'BENCH', %s, 'USD', 0, 0, -1000, 5000)",
            [(z, z, TIMEZONES[i % len(TIMEZONES)]) for i, z in enumerate(zones)],
        )
    nodes = [(zones[i % n_zones], f"N{i:04d}") for i in range(n_nodes)]

    lake = Lake(tempfile.mkdtemp(prefix="optibid-bench-lake-"))
    t0 = time.perf_counter()
    uploaded = datetime(2025, 1, 2, tzinfo=UTC)
    prices, load = zone_tables(zones, year_start - timedelta(days=1), zone_days + 2, 1, uploaded)
    write_deltalake(lake.table_uri("bronze", "files__prices"), prices)
    write_deltalake(lake.table_uri("bronze", "files__load"), load)
    ticks = tick_table(nodes, node_start, node_days, datetime(2025, 1, 2, tzinfo=UTC))
    write_deltalake(lake.table_uri("bronze", "ticks__prices"), ticks)
    bronze_rows = prices.num_rows + load.num_rows + ticks.num_rows
    print(f"bronze: {bronze_rows:,} rows written in {time.perf_counter() - t0:.1f} s "
          f"({n_zones} zones x {zone_days} d hourly prices+load, {n_nodes} nodes x {node_days} d 5-min ticks)")

    t0 = time.perf_counter()
    spark = spark_session(settings.spark_master, settings.spark_remote, app_name="optibid-bench")
    spark.sparkContext.setLogLevel("ERROR")
    print(f"spark session: {time.perf_counter() - t0:.1f} s")

    first, last = year_start.date(), year_start.date() + timedelta(days=zone_days)
    t0 = time.perf_counter()
    full = build_market_window(spark, lake, url, first, last)
    full_s = time.perf_counter() - t0
    silver_rows = sum(v for k, v in full.rows.items() if k != "silver.quality__gaps")
    print(f"full silver build ({first}..{last}, one run): {full_s:.1f} s, {silver_rows:,} silver rows "
          f"({silver_rows / full_s:,.0f} rows/s); per table {full.rows}")

    # A revised upload for one day, then that day's partition re-run.
    day = node_start.date() + timedelta(days=1)
    revised, _ = zone_tables(zones, datetime.combine(day, datetime.min.time(), UTC), 1, 2,
                             datetime(2025, 1, 3, tzinfo=UTC))
    write_deltalake(lake.table_uri("bronze", "files__prices"), revised, mode="append")
    t0 = time.perf_counter()
    inc = build_market_window(spark, lake, url, day, day + timedelta(days=1))
    inc_s = time.perf_counter() - t0
    print(f"incremental one-day build ({day}): {inc_s:.1f} s; per table {inc.rows}")
    print(f"ratio full / one day: {full_s / inc_s:.1f}x for {zone_days} days")

    gold = gold_build(url)
    print("gold build: " + ("not wired (gold_build hook)" if gold is None else
                            ", ".join(f"{k} {v:.1f} s" for k, v in gold.items())))
    spark.stop()


if __name__ == "__main__":
    with stopping_started_services():  # the embedded Postgres, when no OPTIBID_DATABASE_URL is set
        main()
