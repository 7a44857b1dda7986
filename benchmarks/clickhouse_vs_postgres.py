"""Benchmark: aggregate a year of 5-minute nodal prices by zone and day in ClickHouse vs Postgres.

    python -m benchmarks.clickhouse_vs_postgres [--nodes 100] [--days 365] [--pg-url URL]
        [--clickhouse-url URL]

Both engines generate the same deterministic data server-side (price = f(node, interval)), so the load is
not measured through Python; then the same `GROUP BY zone, day` (avg/min/max/count) runs `--repeats`
times in each and the best wall time is reported with the ratio. Results are checked to agree.
Default size is 100 nodes x 365 days x 288 intervals = 10.5 M rows (the issue's 1,000 nodes = 105 M rows
is too much for a shared 2-core machine; pass `--nodes 1000` on a bigger box).
Postgres comes from `--pg-url` or OPTIBID_DATABASE_URL (a table `bench.nodal_prices_5min` is created there,
UNLOGGED, and dropped unless `--keep`); ClickHouse from `--clickhouse-url`, CLICKHOUSE_URL, or a local server
started in a temporary directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import tempfile
import time
from pathlib import Path

import psycopg
from clickhouse_driver import Client

from infra.settings import get_settings

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
PRICE_MOD = 10007
ZONES = 10

PG_QUERY = """SELECT zone, market_date, avg(price), min(price), max(price), count(*)
FROM bench.nodal_prices_5min GROUP BY zone, market_date ORDER BY zone, market_date"""
CH_QUERY = """SELECT zone, market_date, avg(price), min(price), max(price), count()
FROM bench_nodal_prices_5min GROUP BY zone, market_date ORDER BY zone, market_date"""


def load_postgres(url: str, nodes: int, intervals: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
        conn.execute("DROP TABLE IF EXISTS bench.nodal_prices_5min")
        conn.execute(
            """CREATE UNLOGGED TABLE bench.nodal_prices_5min
               (node_id text, zone text, ts_utc timestamptz, market_date date, price float8)"""
        )
        conn.execute(
            """INSERT INTO bench.nodal_prices_5min
               SELECT 'N' || n, 'Z' || (n %% %(zones)s), %(start)s + k * interval '5 minutes',
                      ((%(start)s + k * interval '5 minutes') AT TIME ZONE 'UTC')::date,
                      ((n::bigint * 7919 + k::bigint * 104729) %% %(mod)s) / 100.0
               FROM generate_series(0, %(intervals)s - 1) k, generate_series(0, %(nodes)s - 1) n""",
            {"zones": ZONES, "start": START, "intervals": intervals, "nodes": nodes, "mod": PRICE_MOD},
        )
        conn.execute("VACUUM ANALYZE bench.nodal_prices_5min")
    return time.perf_counter() - started


def load_clickhouse(ch: Client, nodes: int, intervals: int) -> float:
    started = time.perf_counter()
    ch.execute("DROP TABLE IF EXISTS bench_nodal_prices_5min")
    ch.execute(
        """CREATE TABLE bench_nodal_prices_5min
           (node_id String, zone String, ts_utc DateTime('UTC'), market_date Date, price Float64)
           ENGINE = MergeTree PARTITION BY toYYYYMM(market_date) ORDER BY (zone, ts_utc, node_id)"""
    )
    ch.execute(
        """INSERT INTO bench_nodal_prices_5min
           SELECT concat('N', toString(n)), concat('Z', toString(modulo(n, %(zones)s))), ts, toDate(ts),
                  modulo(n * 7919 + k * 104729, %(mod)s) / 100.0
           FROM (SELECT modulo(number, %(nodes)s) AS n, intDiv(number, %(nodes)s) AS k,
                        toDateTime(%(start)s, 'UTC') + k * 300 AS ts
                 FROM numbers(%(rows)s))""",
        {
            "zones": ZONES,
            "mod": PRICE_MOD,
            "nodes": nodes,
            "rows": nodes * intervals,
            "start": START.replace(tzinfo=None),
        },
    )
    ch.execute("OPTIMIZE TABLE bench_nodal_prices_5min FINAL")  # steady state: merged parts, as in production
    return time.perf_counter() - started


def best_of(run, repeats: int) -> tuple[float, list]:
    best, result = math.inf, []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pg-url")
    parser.add_argument("--clickhouse-url")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark tables")
    args = parser.parse_args()
    settings = get_settings()
    pg_url = args.pg_url or settings.database_url
    if not pg_url:
        parser.error("pass --pg-url or set OPTIBID_DATABASE_URL (the benchmark needs a real Postgres server)")
    intervals = args.days * 288
    rows = args.nodes * intervals
    print(
        f"rows: {rows:,} ({args.nodes} nodes x {args.days} days x 288 five-minute intervals, {ZONES} zones)"
    )

    server = None
    ch_url = args.clickhouse_url or settings.clickhouse_url
    tmp = tempfile.TemporaryDirectory(prefix="optibid-ch-bench-")
    try:
        if not ch_url:
            from infra.clickhouse import start_clickhouse

            server = start_clickhouse(Path(tmp.name), database="bench")
            ch_url = server.url
        ch = Client.from_url(ch_url)
        version = ch.execute("SELECT version()")[0][0]
        ch_load = load_clickhouse(ch, args.nodes, intervals)
        print(f"load  clickhouse {version}: {ch_load:8.1f} s")
        pg_load = load_postgres(pg_url, args.nodes, intervals)
        with psycopg.connect(pg_url) as conn:
            pg_version = conn.execute("SHOW server_version").fetchone()[0]
            pg_time, pg_rows = best_of(lambda: conn.execute(PG_QUERY).fetchall(), args.repeats)
        print(f"load  postgres {pg_version}: {pg_load:8.1f} s")
        ch_time, ch_rows = best_of(lambda: ch.execute(CH_QUERY), args.repeats)

        if len(pg_rows) != len(ch_rows) or len(ch_rows) != min(ZONES, args.nodes) * args.days:
            raise RuntimeError(f"group counts differ: postgres {len(pg_rows)}, clickhouse {len(ch_rows)}")
        for p, c in zip(pg_rows, ch_rows, strict=True):
            if (p[0], p[1], p[5]) != (c[0], c[1], c[5]) or not math.isclose(p[2], c[2], rel_tol=1e-9):
                raise RuntimeError(f"results differ: postgres {p}, clickhouse {c}")
        print(f"query group by zone, day ({len(ch_rows)} groups), best of {args.repeats}:")
        print(f"  postgres   {pg_time:8.3f} s")
        print(f"  clickhouse {ch_time:8.3f} s")
        print(f"  ratio postgres/clickhouse: {pg_time / ch_time:6.1f}x")
        if not args.keep:
            ch.execute("DROP TABLE IF EXISTS bench_nodal_prices_5min")
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute("DROP TABLE IF EXISTS bench.nodal_prices_5min")
    finally:
        if server is not None:
            server.stop()
        tmp.cleanup()


if __name__ == "__main__":
    main()
