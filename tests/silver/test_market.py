"""Bronze uploads and ticks -> silver market tables: market-local days (DST), revisions, flags, idempotent days."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from ingestion.silver.market import build_market_window
from tests.silver.conftest import (
    FILES_LOAD_SCHEMA,
    FILES_PRICES_SCHEMA,
    TICKS_SCHEMA,
    append_bronze,
    file_row,
    query,
)

UPLOADED = datetime(2024, 3, 12, 8, tzinfo=UTC)
REVISED = datetime(2024, 3, 13, 8, tzinfo=UTC)
GAP = datetime(2024, 3, 10, 10, tzinfo=UTC)
PRICES_SQL = """SELECT ts_utc, market_date, zone, node, market, interval_minutes, price, currency, org_id, revision,
                       is_gap_filled, source FROM silver.market__prices ORDER BY zone, node NULLS FIRST, ts_utc"""


def hourly_pjm_prices() -> list[dict]:
    """Hourly DA prices for PJM from 2024-03-09 00:00Z to 2024-03-11 23:00Z, except 2024-03-10 10:00Z."""
    start = datetime(2024, 3, 9, tzinfo=UTC)
    rows = []
    for i in range(72):
        ts = start + timedelta(hours=i)
        if ts == GAP:
            continue
        rows.append(
            file_row(ts, "PJM", 1, i + 1, UPLOADED, node=None, market="DA", interval_minutes=60,
                     price=float(i), currency="USD")
        )
    return rows


def test_prices_by_market_local_day_with_dst_revisions_and_flags(spark, lake, silver_db):
    append_bronze(lake, "files__prices", hourly_pjm_prices(), FILES_PRICES_SCHEMA)
    append_bronze(
        lake,
        "files__prices",
        [  # a corrected upload of one hour, and the zone nobody registered
            file_row(datetime(2024, 3, 10, 12, tzinfo=UTC), "PJM", 2, 1, REVISED, node=None, market="DA",
                     interval_minutes=60, price=99.5, currency="usd/MWh"),
            file_row(datetime(2024, 3, 10, 12, tzinfo=UTC), "ATLANTIS", 2, 2, REVISED, node=None, market="DA",
                     interval_minutes=60, price=1.0, currency="USD"),
        ],
        FILES_PRICES_SCHEMA,
    )
    tick = {"zone": "FR", "node": "FR_N1", "market": "RT", "interval_minutes": 5, "_topic": "optibid.market.ticks",
            "_partition": 0, "_ingested_at": UPLOADED, "_batch_id": "t1"}
    append_bronze(
        lake,
        "ticks__prices",
        [  # 23:30Z on the 9th is 00:30 on the 10th in Paris; the same tick delivered twice counts once
            {**tick, "ts_utc": datetime(2024, 3, 9, 23, 30, tzinfo=UTC), "price": 0.0425, "currency": "EUR/kWh",
             "_offset": 7},
            {**tick, "ts_utc": datetime(2024, 3, 9, 23, 30, tzinfo=UTC), "price": 0.0425, "currency": "EUR/kWh",
             "_offset": 7},
            {**tick, "ts_utc": datetime(2024, 3, 9, 22, 55, tzinfo=UTC), "price": 40.0, "currency": "€",
             "_offset": 6},
        ],
        TICKS_SCHEMA,
    )

    result = build_market_window(spark, lake, silver_db, date(2024, 3, 10), date(2024, 3, 11))
    rows = query(silver_db, PRICES_SQL)
    pjm = [r for r in rows if r[2] == "PJM"]
    # 2024-03-10 in New York is 05:00Z..04:00Z next day: 23 hours (spring forward), one of them missing
    assert len(pjm) == 22
    assert {r[1] for r in pjm} == {date(2024, 3, 10)}
    assert pjm[0][0] == datetime(2024, 3, 10, 5, tzinfo=UTC)
    assert pjm[-1][0] == datetime(2024, 3, 11, 3, tzinfo=UTC)
    revised = [r for r in pjm if r[0] == datetime(2024, 3, 10, 12, tzinfo=UTC)]
    assert revised == [
        (datetime(2024, 3, 10, 12, tzinfo=UTC), date(2024, 3, 10), "PJM", None, "DA", 60, 99.5, "USD", "org_a", 2,
         False, "file")
    ]
    # the Paris tick: EUR/kWh normalised to EUR/MWh, dated by the local calendar; 22:55Z is still the 9th there
    assert [r for r in rows if r[2] == "FR"] == [
        (datetime(2024, 3, 9, 23, 30, tzinfo=UTC), date(2024, 3, 10), "FR", "FR_N1", "RT", 5, 42.5, "EUR", None, 1,
         False, "tick")
    ]
    assert query(
        silver_db,
        """SELECT revision, price, currency, is_latest, source_ref FROM silver.market__price_revisions
           WHERE zone = 'PJM' AND ts_utc = '2024-03-10T12:00Z' ORDER BY revision""",
    ) == [(1, 36.0, "USD", False, "upload 1 upload1.csv#37"), (2, 99.5, "USD", True, "upload 2 upload2.csv#1")]
    assert query(
        silver_db,
        """SELECT dataset, zone, series_key, org_id, market_date, issue, interval_minutes, expected_points,
                  observed_points, affected_points, first_ts, last_ts
           FROM silver.quality__gaps ORDER BY zone, issue""",
    ) == [
        ("prices", "ATLANTIS", "ATLANTIS", "org_a", date(2024, 3, 10), "unknown_zone", None, None, 1, 1,
         datetime(2024, 3, 10, 12, tzinfo=UTC), datetime(2024, 3, 10, 12, tzinfo=UTC)),
        ("prices", "FR", "FR|FR_N1|RT|5", None, date(2024, 3, 10), "gap", 5, 288, 1, 287,
         datetime(2024, 3, 9, 23, 0, tzinfo=UTC), datetime(2024, 3, 10, 22, 55, tzinfo=UTC)),
        ("prices", "PJM", "PJM|-|DA|60", "org_a", date(2024, 3, 10), "duplicate", 60, 23, 22, 1,
         datetime(2024, 3, 10, 12, tzinfo=UTC), datetime(2024, 3, 10, 12, tzinfo=UTC)),
        ("prices", "PJM", "PJM|-|DA|60", "org_a", date(2024, 3, 10), "gap", 60, 23, 22, 1, GAP, GAP),
    ]
    assert result.rows["silver.market__prices"] == 23

    # re-running the day replaces it with exactly the same rows
    tables = ("market__prices", "market__price_revisions", "quality__gaps")
    before = {t: sorted(query(silver_db, f"SELECT * FROM silver.{t}"), key=repr) for t in tables}
    again = build_market_window(spark, lake, silver_db, date(2024, 3, 10), date(2024, 3, 11))
    assert again.replaced["silver.market__prices"] == 23
    for table, rows_before in before.items():
        assert sorted(query(silver_db, f"SELECT * FROM silver.{table}"), key=repr) == rows_before

    # a three-day backfill in one run: each day gets the bronze hours of its own local calendar day
    build_market_window(spark, lake, silver_db, date(2024, 3, 9), date(2024, 3, 12))
    per_day = query(silver_db, "SELECT market_date, count(*) FROM silver.market__prices WHERE zone = 'PJM' "
                               "GROUP BY 1 ORDER BY 1")
    # the 9th (EST) is 05:00Z..05:00Z, all present; the 11th (EDT) starts 04:00Z and bronze ends at 23:00Z
    assert per_day == [(date(2024, 3, 9), 24), (date(2024, 3, 10), 22), (date(2024, 3, 11), 20)]


def test_fall_back_day_and_load_partition_rerun(spark, lake, silver_db):
    start = datetime(2024, 11, 3, 4, tzinfo=UTC)  # 00:00 EDT; the local day has 25 hours
    rows = [file_row(start + timedelta(hours=i), "PJM", 5, i, UPLOADED, interval_minutes=60, load_mw=1000.0 + i)
            for i in range(25)]
    append_bronze(lake, "files__load", rows, FILES_LOAD_SCHEMA)
    build_market_window(spark, lake, silver_db, date(2024, 11, 3), date(2024, 11, 4), datasets=("load",))
    got = query(silver_db, "SELECT min(ts_utc), max(ts_utc), count(*), min(market_date), max(market_date) "
                           "FROM silver.market__load")
    assert got == [(start, start + timedelta(hours=24), 25, date(2024, 11, 3), date(2024, 11, 3))]
    assert query(silver_db, "SELECT count(*) FROM silver.quality__gaps") == [(0,)]  # 25 of 25 expected hours

    # the day's bronze is superseded by a shorter upload: the re-run replaces the day, leaving a flagged gap
    append_bronze(
        lake, "files__load",
        [file_row(start + timedelta(hours=i), "PJM", 6, i, REVISED, interval_minutes=60, load_mw=2000.0)
         for i in range(3)],
        FILES_LOAD_SCHEMA,
    )
    build_market_window(spark, lake, silver_db, date(2024, 11, 3), date(2024, 11, 4), datasets=("load",))
    assert query(silver_db, "SELECT count(*), sum(load_mw), max(revision) FROM silver.market__load") == [
        (25, 3 * 2000.0 + sum(1000.0 + i for i in range(3, 25)), 2)
    ]
    assert query(silver_db, "SELECT issue, affected_points FROM silver.quality__gaps") == [("duplicate", 3)]


def test_a_replayed_delivery_after_a_revision_stays_an_earlier_revision(spark, lake, silver_db):
    # Offset 7 is delivered, revised by offset 9, then offset 7's batch is replayed (read again, ingested later):
    # the replay is the same delivery, so offset 9 stays the latest price and the key has two revisions.
    tick = {"zone": "FR", "node": "FR_N1", "market": "RT", "interval_minutes": 5, "_topic": "optibid.market.ticks",
            "_partition": 0, "currency": "EUR", "ts_utc": datetime(2024, 3, 10, 11, 0, tzinfo=UTC)}
    append_bronze(
        lake,
        "ticks__prices",
        [
            {**tick, "price": 40.0, "_offset": 7, "_ingested_at": UPLOADED, "_batch_id": "b1"},
            {**tick, "price": 41.0, "_offset": 9, "_ingested_at": UPLOADED + timedelta(minutes=5), "_batch_id": "b2"},
            {**tick, "price": 40.0, "_offset": 7, "_ingested_at": REVISED, "_batch_id": "b1-replayed"},
        ],
        TICKS_SCHEMA,
    )
    build_market_window(spark, lake, silver_db, date(2024, 3, 10), date(2024, 3, 11), datasets=("prices",))
    assert query(
        silver_db,
        "SELECT revision, price, is_latest, source_ref, batch_id FROM silver.market__price_revisions ORDER BY revision",
    ) == [
        (1, 40.0, False, "optibid.market.ticks/0@7", "b1"),
        (2, 41.0, True, "optibid.market.ticks/0@9", "b2"),
    ]
    assert query(silver_db, "SELECT price, revision FROM silver.market__prices") == [(41.0, 2)]
    assert query(silver_db, "SELECT issue, affected_points FROM silver.quality__gaps WHERE issue = 'duplicate'") == [
        ("duplicate", 1)
    ]
