"""Scale-out figures on one machine: silver on a Spark standalone cluster vs `local[*]`, the lake on S3 (moto's
server) vs a local folder, and concurrent Delta committers on S3 and locally.

    python -m benchmarks.scale_out            # 10 zones x 120 days hourly, 40 nodes x 14 days 5-minute ticks
    python -m benchmarks.scale_out --small    # smoke size
    python -m benchmarks.scale_out --only lake,committers

Every silver build is its own driver process (`python -m ingestion.silver.job`), as a cluster runs it: the wall
time includes the JVM start; the job's own market and trading seconds are printed beside it. The cluster is two
workers of one core each on this machine (started by `infra/spark_cluster.py`): on two cores it shows the cost of
the cluster protocol (scheduling, shuffles between executor JVMs), not a speed-up. The load average is printed
beside every figure, since the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from benchmarks.harness import REPO_ROOT, load_average
from benchmarks.silver_gold_build import TIMEZONES, tick_table, zone_tables
from infra import db
from infra.lake import Lake
from infra.s3_server import start_s3_server
from infra.services import warehouse_url
from infra.settings import get_settings
from infra.spark_cluster import start_standalone_cluster

SILVER = ["market__prices", "market__price_revisions", "market__load", "quality__gaps"]
TOPIC = "bench.cdc"


def write_bronze(lake: Lake, zones: list[str], days: int, nodes: int, node_days: int, start: datetime) -> int:
    """The benchmark's bronze (prices, load, ticks) in `lake`; its row count."""
    uploaded = datetime(2025, 1, 2, tzinfo=UTC)
    prices, load = zone_tables(zones, start - timedelta(days=1), days + 2, 1, uploaded)
    ticks = tick_table([(zones[i % len(zones)], f"N{i:04d}") for i in range(nodes)], start, node_days, uploaded)
    for name, table in (("files__prices", prices), ("files__load", load), ("ticks__prices", ticks)):
        write_deltalake(lake.table_uri("bronze", name), table, mode="append",
                        storage_options=lake.storage_options or None)
    return prices.num_rows + load.num_rows + ticks.num_rows


def silver_job(database_url: str, lake: Lake, spark_env: dict[str, str], start: date, end: date) -> dict:
    """Run the silver build as its own driver process; its JSON report plus `wall_s`."""
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_MASTER", "SPARK_REMOTE")}
    env.update(PYTHONPATH=str(REPO_ROOT), OPTIBID_DATABASE_URL=database_url, OPTIBID_LAKE_URI=lake.root,
               OPTIBID_LAKE_STORAGE_OPTIONS=json.dumps(lake.storage_options), SPARK_EXECUTOR_MEMORY="768m",
               **spark_env)
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ingestion.silver.job", "--start", str(start), "--end", str(end)],
                          env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["wall_s"] = time.perf_counter() - began
    return report


def silver_rows(database_url: str) -> dict[str, list[tuple]]:
    with db.connect(database_url) as conn:
        return {t: sorted(conn.execute(f"SELECT * FROM silver.{t}").fetchall(), key=repr) for t in SILVER}


def bench_spark(url: str, local: Lake, s3: Lake, start: date, end: date, work: Path) -> None:
    cluster = start_standalone_cluster(work / "spark", workers=2, cores=1, memory="768m")
    try:
        runs = {
            "local[*], local lake": ({"SPARK_MASTER": "local[*]"}, local),
            "cluster 2x1 core, local lake": ({"SPARK_MASTER": cluster.master_url}, local),
            "local[*], S3 lake": ({"SPARK_MASTER": "local[*]"}, s3),
            "cluster 2x1 core, S3 lake": ({"SPARK_MASTER": cluster.master_url}, s3),
        }
        reports, baseline = {}, None
        for name, (env, lake) in runs.items():
            report = silver_job(url, lake, env, start, end)
            rows = silver_rows(url)
            baseline = baseline or rows
            reports[name] = report
            build = report["market_s"] + report["trading_s"]
            first = reports["local[*], local lake"]
            ratio = build / (first["market_s"] + first["trading_s"])
            print(f"silver {name}: process {report['wall_s']:.1f} s, session {report['session_s']:.1f} s, "
                  f"market {report['market_s']:.1f} s, trading {report['trading_s']:.1f} s; build {ratio:.2f}x "
                  f"local[*]/local lake; rows identical to the first build: {rows == baseline}; {load_average()}")
    finally:
        cluster.stop()


def bench_lake(local: Lake, s3: Lake, zones: list[str], days: int, nodes: int, node_days: int,
               start: datetime) -> None:
    timings = {}
    for name, lake in (("local", local), ("S3", s3)):
        began = time.perf_counter()
        rows = write_bronze(lake, zones, days, nodes, node_days, start)
        write_s = time.perf_counter() - began
        began = time.perf_counter()
        read = sum(
            DeltaTable(lake.table_uri("bronze", t), storage_options=lake.storage_options or None)
            .to_pyarrow_table().num_rows
            for t in ("files__prices", "files__load", "ticks__prices")
        )
        read_s = time.perf_counter() - began
        timings[name] = (write_s, read_s)
        print(f"lake {name}: delta-rs write {rows:,} bronze rows {write_s:.2f} s ({rows / write_s:,.0f} rows/s), "
              f"read {read:,} rows {read_s:.2f} s ({read / read_s:,.0f} rows/s); {load_average()}")
    (lw, lr), (sw, sr) = timings["local"], timings["S3"]
    print(f"lake S3 / local: write {sw / lw:.2f}x, read {sr / lr:.2f}x; {load_average()}")


def committer(root: str, options: str, partition: int, commits: int) -> None:
    """One committing process: `commits` appends of 100 rows with its partition's offsets (the CDC writer)."""
    from ingestion.cdc.delta import BronzeTables

    tables = BronzeTables(Lake(root, json.loads(options)))
    tables.table("events")  # the consumer's snapshot, loaded before the clock starts
    began = time.time()
    for i in range(commits):
        offsets = pa.array(range(i * 100, (i + 1) * 100), pa.int64())
        data = pa.table({"_partition": pa.array([partition] * 100, pa.int32()), "_offset": offsets,
                         "value": pa.array([float(partition)] * 100)})
        # As the consumer does: the cached snapshot; delta-rs catches up with other writers' versions on a race.
        tables.append("events", data, topic_offsets={(TOPIC, partition): (i + 1) * 100 - 1})
    print(json.dumps({"start": began, "end": time.time()}), flush=True)


def bench_committers(local: Lake, s3: Lake, commits: int) -> None:
    for name, base in (("local", local), ("S3", s3)):
        single = None
        for writers in (1, 2, 3):
            lake = Lake(f"{base.root}-committers-{writers}", base.storage_options)
            schema = pa.schema([("_partition", pa.int32()), ("_offset", pa.int64()), ("value", pa.float64())])
            write_deltalake(lake.table_uri("bronze", "events"), schema.empty_table(), mode="append",
                            storage_options=lake.storage_options or None)
            procs = [
                subprocess.Popen([sys.executable, "-m", "benchmarks.scale_out", "--committer", lake.root,
                                  json.dumps(lake.storage_options), str(p), str(commits)],
                                 env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdout=subprocess.PIPE, text=True)
                for p in range(writers)
            ]
            spans = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
            if any(p.returncode for p in procs):
                raise RuntimeError(f"a committer failed ({name}, {writers} writers)")
            # From the first commit of any process to the last one (interpreter starts excluded).
            seconds = max(s["end"] for s in spans) - min(s["start"] for s in spans)
            table = DeltaTable(lake.table_uri("bronze", "events"), storage_options=lake.storage_options or None)
            assert table.version() == writers * commits, "a commit was lost"
            rate = writers * commits / seconds
            single = single or rate
            print(f"committers {name}: {writers} process(es) x {commits} commits in {seconds:.1f} s = "
                  f"{rate:.1f} commits/s ({rate / single:.2f}x one process), versions {table.version()}; "
                  f"{load_average()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--only", default="spark,lake,committers")
    parser.add_argument("--committer", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.committer:
        root, options, partition, commits = args.committer
        committer(root, options, int(partition), int(commits))
        return
    parts = set(args.only.split(","))
    n_zones, days, nodes, node_days, commits = (3, 14, 10, 2, 5) if args.small else (10, 120, 40, 14, 20)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    zones = [f"BZ{i:02d}" for i in range(n_zones)]
    work = Path(tempfile.mkdtemp(prefix="optibid-bench-scale-"))
    s3_server = start_s3_server(work / "s3")
    try:
        local = Lake(str(work / "lake"))
        s3 = s3_server.lake("bench")
        print(f"bronze: {n_zones} zones x {days} d hourly prices+load, {nodes} nodes x {node_days} d 5-min ticks; "
              f"S3 endpoint {s3_server.endpoint_url} (moto)")
        if "lake" in parts or "spark" in parts:
            bench_lake(local, s3, zones, days, nodes, node_days, start)
        if "spark" in parts:
            admin = warehouse_url(get_settings())
            url = db.create_database(admin, "optibid_bench_scale", drop_existing=True)
            db.migrate(url)
            with db.connect(url) as conn, conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO silver.ref__zones VALUES (%s, %s, 'BENCH', 'BENCH', %s, 'USD', 0, 0, -1000, 5000)",
                    [(z, z, TIMEZONES[i % len(TIMEZONES)]) for i, z in enumerate(zones)],
                )
            bench_spark(url, local, s3, start.date(), start.date() + timedelta(days=days), work)
        if "committers" in parts:
            bench_committers(local, s3, commits)
    finally:
        s3_server.stop()


if __name__ == "__main__":
    main()
