"""The benchmark's DuckDB peer (benchmarks/peers/duckdb_silver.py) builds exactly OptiBid's silver rows.

The silver benchmark prints OptiBid's build time as a ratio to the peer's; that ratio means something only if
both apply the same rules to the same bronze snapshot, so the two must agree row for row: DST days, currency
normalisation, a re-delivered tick, a revised upload (duplicate flag), a missing hour (gap flag), an unknown zone.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from benchmarks.peers.duckdb_silver import build_market_window_duckdb
from ingestion.silver.market import build_market_window, market_slices
from tests.silver.conftest import FILES_LOAD_SCHEMA, FILES_PRICES_SCHEMA, TICKS_SCHEMA, append_bronze, file_row, query
from tests.silver.test_market import GAP, REVISED, UPLOADED, hourly_pjm_prices

TABLES = ("market__prices", "market__price_revisions", "market__load", "quality__gaps")


def _bronze(lake) -> None:
    append_bronze(lake, "files__prices", hourly_pjm_prices(), FILES_PRICES_SCHEMA)
    append_bronze(
        lake,
        "files__prices",
        [
            file_row(GAP + timedelta(hours=2), "PJM", 2, 1, REVISED, node=None, market="DA", interval_minutes=60,
                     price=99.5, currency="usd/MWh"),
            file_row(GAP, "ATLANTIS", 2, 2, REVISED, node=None, market="DA", interval_minutes=60, price=1.0,
                     currency="USD"),
        ],
        FILES_PRICES_SCHEMA,
    )
    tick = {"zone": "FR", "node": "FR_N1", "market": "RT", "interval_minutes": 5, "_topic": "optibid.market.ticks",
            "_partition": 0, "_ingested_at": UPLOADED, "_batch_id": "t1"}
    append_bronze(
        lake,
        "ticks__prices",
        [
            {**tick, "ts_utc": datetime(2024, 3, 9, 23, 30, tzinfo=UTC), "price": 0.0425, "currency": "EUR/kWh",
             "_offset": 7},
            {**tick, "ts_utc": datetime(2024, 3, 9, 23, 30, tzinfo=UTC), "price": 0.0425, "currency": "EUR/kWh",
             "_offset": 7},
            {**tick, "ts_utc": datetime(2024, 3, 9, 22, 55, tzinfo=UTC), "price": 40.0, "currency": "€",
             "_offset": 6},
            {**tick, "ts_utc": datetime(2024, 3, 10, 8, 0, tzinfo=UTC), "price": 41.0, "currency": None,
             "_offset": 9},
        ],
        TICKS_SCHEMA,
    )
    load_start = datetime(2024, 3, 9, 5, tzinfo=UTC)
    append_bronze(
        lake,
        "files__load",
        [file_row(load_start + timedelta(hours=i), "IEX_N", 3, i, UPLOADED, interval_minutes=60, load_mw=500.0 + i)
         for i in range(70) if i != 30],
        FILES_LOAD_SCHEMA,
    )


def _snapshot(database_url: str) -> dict[str, list[tuple]]:
    return {t: sorted(query(database_url, f"SELECT * FROM silver.{t}"), key=repr) for t in TABLES}


def test_duckdb_peer_builds_the_same_rows_as_spark(spark, lake, silver_db):
    _bronze(lake)
    start, end = date(2024, 3, 9), date(2024, 3, 12)
    build_market_window(spark, lake, silver_db, start, end)
    optibid = _snapshot(silver_db)
    assert all(optibid[t] for t in TABLES), {t: len(rows) for t, rows in optibid.items()}
    assert {r[5] for r in optibid["quality__gaps"]} == {"gap", "duplicate", "unknown_zone"}

    peer = build_market_window_duckdb(lake, silver_db, start, end, threads=1)
    assert peer.rows["silver.market__prices"] == len(optibid["market__prices"])
    assert _snapshot(silver_db) == optibid


def test_a_build_sliced_by_day_writes_the_rows_of_a_whole_window_build(spark, lake, silver_db):
    """A backfill runs as slices of bounded bronze rows (one Spark job each): slicing changes no row."""
    _bronze(lake)
    start, end = date(2024, 3, 9), date(2024, 3, 12)
    # The fixture's 72 hourly prices, 70 loads and 4 ticks, a day each way of every file's range, by Delta stats.
    assert market_slices(lake, ("prices", "load"), start, end, max_rows=10_000) == [(start, end)]
    assert market_slices(lake, ("prices", "load"), start, end, max_rows=60) == [
        (start, date(2024, 3, 10)), (date(2024, 3, 10), date(2024, 3, 11)), (date(2024, 3, 11), end)
    ]
    whole = build_market_window(spark, lake, silver_db, start, end)
    expected = _snapshot(silver_db)
    sliced = build_market_window(spark, lake, silver_db, start, end, slice_rows=1)
    assert _snapshot(silver_db) == expected
    assert (len(whole.slices), len(sliced.slices)) == (1, 3)
    assert sliced.rows == whole.rows
    assert sliced.replaced["silver.market__prices"] == len(expected["market__prices"])
