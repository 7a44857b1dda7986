"""The whole silver build as one driver process, outside Dagster: `python -m ingestion.silver.job`.

Belongs here: the command that rebuilds the silver market tables for a window of market days and brings every
trading entity up to its bronze table, with the same library calls the silver assets make, on the session,
lake and warehouse the settings name (`SPARK_MASTER` / `SPARK_REMOTE`, `OPTIBID_LAKE_URI` and
`OPTIBID_LAKE_STORAGE_OPTIONS`, `OPTIBID_DATABASE_URL`). An operator tries a cluster or an S3 lake with it; the
scale tests and benchmarks run it as the driver of a standalone cluster. It prints one JSON line: the rows
written and the seconds each part took.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from datetime import date

from infra.lake import lake_from_settings
from infra.services import warehouse_url
from infra.settings import get_settings
from infra.spark import spark_session
from ingestion.silver.market import SILVER_MARKET_TABLES, build_market_window
from ingestion.silver.trading import ENTITIES, build_trading_entity


def run(
    start: date,
    end: date,
    *,
    full_refresh: bool = True,
    datasets: Sequence[str] = tuple(SILVER_MARKET_TABLES),
    entities: Sequence[str] = tuple(ENTITIES),
) -> dict[str, object]:
    """Build market days [start, end) of `datasets` and the trading `entities`; rows written and timings."""
    settings = get_settings()
    began = time.perf_counter()
    spark = spark_session(settings.spark_master, settings.spark_remote, app_name="optibid-silver-job")
    lake = lake_from_settings(settings)
    database_url = warehouse_url(settings)
    session_s = time.perf_counter() - began
    began = time.perf_counter()
    market = build_market_window(spark, lake, database_url, start, end, datasets)
    market_s = time.perf_counter() - began
    began = time.perf_counter()
    trading = {
        name: build_trading_entity(spark, lake, database_url, name, full_refresh=full_refresh).history_rows
        for name in entities
    }
    trading_s = time.perf_counter() - began
    return {
        "master": settings.spark_remote or settings.spark_master,
        "market_rows": market.rows,
        "trading_history_rows": trading,
        "session_s": round(session_s, 3),
        "market_s": round(market_s, 3),
        "trading_s": round(trading_s, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=date.fromisoformat, required=True, help="first market day (YYYY-MM-DD)")
    parser.add_argument("--end", type=date.fromisoformat, required=True, help="day after the last market day")
    parser.add_argument("--incremental", action="store_true", help="trading: only keys changed since last run")
    parser.add_argument("--datasets", default=",".join(SILVER_MARKET_TABLES), help="market tables (comma-separated)")
    parser.add_argument("--entities", default=",".join(ENTITIES), help="trading entities (comma-separated)")
    args = parser.parse_args(argv)
    datasets = [d for d in args.datasets.split(",") if d]
    entities = [e for e in args.entities.split(",") if e]
    unknown = sorted(set(datasets) - set(SILVER_MARKET_TABLES)) + sorted(set(entities) - set(ENTITIES))
    if unknown:
        parser.error(f"unknown market tables or trading entities: {', '.join(unknown)}")
    try:
        report = run(args.start, args.end, full_refresh=not args.incremental, datasets=datasets, entities=entities)
        print(json.dumps(report), flush=True)
    finally:
        settings = get_settings()
        # Ends the application, so a cluster frees its executors before the next driver asks for them.
        spark_session(settings.spark_master, settings.spark_remote, app_name="optibid-silver-job").stop()


if __name__ == "__main__":
    main()
