"""Scale-out paths on this machine: a Spark standalone cluster (master and two workers as separate JVMs), a
Spark Connect server on it, and the lake on moto's S3 server, all started by the project's own code
(`infra/spark_cluster.py`, `infra/s3_server.py`) and always stopped.

The silver build runs as its own driver process (`python -m ingestion.silver.job`) with the settings a user
would set, and its result is compared with the `local[*]` build row for row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from infra.db import connect
from infra.lake import Lake
from tests.conftest import REPO_ROOT
from tests.silver.conftest import (
    CDC_SCHEMA,
    FILES_LOAD_SCHEMA,
    FILES_PRICES_SCHEMA,
    SILVER_TABLES,
    TICKS_SCHEMA,
    bid_event,
    file_row,
    silver_db,  # noqa: F401  (the fixture, shared with the silver tests)
)

START, END = date(2024, 3, 9), date(2024, 3, 13)  # the market days every build covers
EXECUTOR_MEMORY = "512m"


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A standalone master and two 1-core, 512 MB workers on 127.0.0.1, stopped after the module."""
    from infra.spark_cluster import start_standalone_cluster

    cluster = start_standalone_cluster(tmp_path_factory.mktemp("spark-cluster"), workers=2, cores=1,
                                       memory=EXECUTOR_MEMORY)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """moto's S3 server on a free port of 127.0.0.1, stopped after the module."""
    from infra.s3_server import start_s3_server

    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()


def _append(lake: Lake, name: str, rows: list[dict], schema: pa.Schema) -> None:
    write_deltalake(lake.table_uri("bronze", name), pa.Table.from_pylist(rows, schema=schema), mode="append",
                    storage_options=lake.storage_options or None)


def write_scale_bronze(lake: Lake) -> None:
    """Bronze with what silver must get right (revisions, duplicates, gaps, an unknown zone, DST, late and
    re-delivered CDC events, deletes), spread over several commits so that reads span many files."""
    uploaded = datetime(2024, 3, 12, 8, tzinfo=UTC)
    start = datetime(2024, 3, 8, tzinfo=UTC)
    for upload, zone in enumerate(["PJM", "FR", "IEX_N"], start=1):
        _append(lake, "files__prices", [
            file_row(start + timedelta(hours=i), zone, upload, i + 1, uploaded, node=None, market="DA",
                     interval_minutes=60, price=float(i % 97) + upload, currency="usd/MWh" if zone == "PJM" else None)
            for i in range(6 * 24) if i != 40 + upload  # one missing hour per zone
        ], FILES_PRICES_SCHEMA)
        _append(lake, "files__load", [
            file_row(start + timedelta(hours=i), zone, 10 + upload, i + 1, uploaded, interval_minutes=60,
                     load_mw=1000.0 + i * upload)
            for i in range(6 * 24)
        ], FILES_LOAD_SCHEMA)
    revised = uploaded + timedelta(days=1)
    _append(lake, "files__prices", [  # a corrected hour, and a zone nobody registered
        file_row(datetime(2024, 3, 10, 12, tzinfo=UTC), "PJM", 7, 1, revised, node=None, market="DA",
                 interval_minutes=60, price=99.5, currency="USD"),
        file_row(datetime(2024, 3, 10, 12, tzinfo=UTC), "ATLANTIS", 7, 2, revised, node=None, market="DA",
                 interval_minutes=60, price=1.0, currency="USD"),
    ], FILES_PRICES_SCHEMA)
    tick = {"zone": "FR", "node": "FR_N1", "market": "RT", "interval_minutes": 5, "currency": "EUR/kWh",
            "_topic": "optibid.market.ticks", "_partition": 0, "_ingested_at": uploaded, "_batch_id": "t1"}
    ticks = [{**tick, "ts_utc": datetime(2024, 3, 9, 22, tzinfo=UTC) + timedelta(minutes=5 * i),
              "price": 0.04 + i / 1000, "_offset": i} for i in range(48)]
    _append(lake, "ticks__prices", ticks, TICKS_SCHEMA)
    _append(lake, "ticks__prices", ticks[:5], TICKS_SCHEMA)  # a re-delivered batch
    _append(lake, "cdc__bids", [
        bid_event("c", "B1", 100, "2024-03-10T10:00:00", 0),
        bid_event("u", "B1", 200, "2024-03-10T10:05:00", 1, status="accepted"),
        bid_event("c", "B2", 110, "2024-03-10T10:01:00", 2),
        bid_event("d", "B2", 300, "2024-03-10T10:10:00", 3),
        bid_event("t", "B2", 0, "2024-03-10T10:10:00", 4),
        bid_event("r", "B3", 50, "2024-03-10T09:00:00", 5, price=42.0),
        bid_event("d", "B9", 60, "2024-03-10T09:30:00", 6),
    ], CDC_SCHEMA)
    _append(lake, "cdc__bids", [
        bid_event("u", "B1", 150, "2024-03-10T10:03:00", 7, price=55.0),
        bid_event("c", "B1", 100, "2024-03-10T10:00:00", 3, partition=1),
        *[bid_event("c", f"K{i}", 400 + i, "2024-03-10T11:00:00", 8 + i, price=float(i)) for i in range(40)],
    ], CDC_SCHEMA)


def run_silver_job(database_url: str, lake: Lake, spark_env: dict[str, str], cwd: Path) -> dict:
    """Run the silver build as its own driver process with `spark_env` (SPARK_MASTER or SPARK_REMOTE)."""
    env = {key: value for key, value in os.environ.items() if key not in ("SPARK_MASTER", "SPARK_REMOTE")}
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        OPTIBID_DATABASE_URL=database_url,
        OPTIBID_LAKE_URI=lake.root,
        OPTIBID_LAKE_STORAGE_OPTIONS=json.dumps(lake.storage_options),
        SPARK_EXECUTOR_MEMORY=EXECUTOR_MEMORY,  # what the workers offer (spark-submit reads it)
        **spark_env,
    )
    done = subprocess.run(
        [sys.executable, "-m", "ingestion.silver.job", "--start", START.isoformat(), "--end", END.isoformat(),
         # what the fixture bronze fills; the other tables' builds would only clear them
         "--datasets", "prices,load", "--entities", "bids"],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def silver_snapshot(database_url: str) -> dict[str, list[tuple]]:
    """Every row of every silver table, in a stable order."""
    with connect(database_url) as conn:
        return {t: sorted(conn.execute(f"SELECT * FROM silver.{t}").fetchall(), key=repr) for t in SILVER_TABLES}


def clear_silver(database_url: str) -> None:
    with connect(database_url) as conn:
        conn.execute("TRUNCATE " + ", ".join(f"silver.{t}" for t in SILVER_TABLES))
        conn.execute("DELETE FROM ops.silver_watermarks")


@pytest.fixture
def local_lake(tmp_path: Path) -> Iterator[Lake]:
    lake = Lake(str(tmp_path / "lake"))
    write_scale_bronze(lake)
    yield lake
