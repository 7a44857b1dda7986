"""Silver tables and small, hand-computable rows for the gold and data-quality tests.

The silver tables themselves come from the silver layer's migration (infra/sql/050_silver.sql); these rows
stand in for what Spark writes. Expected KPI values in the tests are worked out by hand from the rows
below (comments there and in the tests show the arithmetic).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

_BID_INSERT = """INSERT INTO silver.trading__bids
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'c', now(), NULL)"""

NY = ZoneInfo("America/New_York")
CHICAGO = ZoneInfo("America/Chicago")
KOLKATA = ZoneInfo("Asia/Kolkata")

DAY = date(2024, 7, 10)  # a Wednesday: peak hours apply
DST_DAY = date(2024, 11, 3)  # America/New_York falls back: 25 hours
PJM_DAY_START = datetime(2024, 7, 10, 4, tzinfo=UTC)  # local midnight EDT


def pjm_da_price(local_hour: int) -> float:
    """PJM day-ahead price of local hour h on DAY: 10 + h, except a negative hour 3."""
    return -50.0 if local_hour == 3 else 10.0 + local_hour


def _local_date(ts: datetime, tz: ZoneInfo) -> date:
    return ts.astimezone(tz).date()


def price_rows() -> list[tuple]:
    rows: list[tuple] = []
    for h in range(24):
        ts = PJM_DAY_START + timedelta(hours=h)
        price = pjm_da_price(h)
        rows.append((ts, DAY, "PJM", None, "DA", 60, price, "USD", None))
        # PJM_COMED sits 4 below PJM in every UTC hour of PJM's day, so each zone is 2 off the market mean.
        rows.append((ts, _local_date(ts, CHICAGO), "PJM_COMED", None, "DA", 60, price - 4.0, "USD", None))
    # DST day in NYISO: 25 hourly prices 40 + i, i = 0..24 (local midnight EDT 04:00Z to midnight EST 05:00Z)
    nyiso_start = datetime(2024, 11, 3, 4, tzinfo=UTC)
    for i in range(25):
        ts = nyiso_start + timedelta(hours=i)
        assert _local_date(ts, NY) == DST_DAY
        rows.append((ts, DST_DAY, "NYISO", None, "DA", 60, 40.0 + i, "USD", None))
    # Real-time five-minute prices in PJM local hour 8 (12:00Z): zone 30, 36, 42 and one nodal price.
    for k, price in enumerate((30.0, 36.0, 42.0)):
        ts = datetime(2024, 7, 10, 12, 5 * k, tzinfo=UTC)
        rows.append((ts, DAY, "PJM", None, "RT", 5, price, "USD", None))
    rows.append(
        (datetime(2024, 7, 10, 12, 0, tzinfo=UTC), DAY, "PJM", "PJM.N0000", "RT", 5, 99.0, "USD", None)
    )
    # An organization's own uploaded price series: private to acme.
    rows.append((datetime(2024, 7, 10, 16, tzinfo=UTC), DAY, "ERCOT", None, "DA", 60, 77.0, "USD", "acme"))
    return rows


def load_rows() -> list[tuple]:
    """PJM load 1000 + 100 h MW in local hour h of DAY."""
    return [(PJM_DAY_START + timedelta(hours=h), DAY, "PJM", 60, 1000.0 + 100 * h, None) for h in range(24)]


def generation_rows() -> list[tuple]:
    """PJM local hour 12 (16:00Z): solar 300, wind 100, gas 600; local hour 13 (17:00Z): gas 1000."""
    h12 = datetime(2024, 7, 10, 16, tzinfo=UTC)
    h13 = datetime(2024, 7, 10, 17, tzinfo=UTC)
    return [
        (h12, DAY, "PJM", "solar", 60, 300.0, None),
        (h12, DAY, "PJM", "wind", 60, 100.0, None),
        (h12, DAY, "PJM", "gas", 60, 600.0, None),
        (h13, DAY, "PJM", "gas", 60, 1000.0, None),
    ]


def bid_rows() -> list[tuple]:
    h12 = datetime(2024, 7, 10, 16, tzinfo=UTC)
    h13 = datetime(2024, 7, 10, 17, tzinfo=UTC)
    ist18 = datetime(2024, 7, 10, 12, 30, tzinfo=UTC)  # 18:00 Asia/Kolkata
    at = datetime(2024, 7, 9, 12, tzinfo=UTC)
    return [
        ("b1", "acme", "acme-gas-1", "PJM", h12, "sell", 30.0, 50.0, "accepted", 50.0, 32.0, at),
        ("b2", "acme", "acme-gas-1", "PJM", h12, "sell", 45.0, 40.0, "partially_accepted", 10.0, 32.0, at),
        ("b3", "acme", "acme-gas-1", "PJM", h12, "buy", 25.0, 20.0, "rejected", None, None, at),
        ("b4", "acme", "acme-gas-1", "PJM", h12, "buy", 20.0, 10.0, "cancelled", None, None, at),
        ("b5", "acme", "acme-gas-1", "PJM", h13, "buy", 40.0, 30.0, "accepted", 30.0, 35.0, at),
        (
            "v1",
            "voltindia",
            "volt-solar-1",
            "IEX_W",
            ist18,
            "sell",
            5000.0,
            100.0,
            "accepted",
            100.0,
            4800.0,
            at,
        ),
    ]


def trade_rows() -> list[tuple]:
    h12 = datetime(2024, 7, 10, 16, tzinfo=UTC)
    at = datetime(2024, 7, 9, 13, tzinfo=UTC)
    return [
        ("t1", "acme", "b1", "PJM", h12, "sell", 32.0, 50.0, "PJM-EXCHANGE", at),  # execution of b1
        ("t2", "acme", None, "PJM", h12, "buy", 28.0, 5.0, "BROKER-A", at),
    ]


def load_fixture(database_url: str) -> None:
    """Reference data plus every fixture row, replacing what the silver tables held."""
    from infra import db
    from ingestion.reference import seed_reference_data

    with db.connect(database_url) as conn:
        seed_reference_data(conn)
        for table in (
            "market__prices",
            "market__load",
            "market__generation",
            "market__weather",
            "trading__bids",
            "trading__trades",
            "trading__assets",
            "trading__market_orders",
        ):
            conn.execute(f"TRUNCATE silver.{table}")  # type: ignore[arg-type]
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO silver.market__prices (ts_utc, market_date, zone, node, market,
                   interval_minutes, price, currency, org_id, revision, source, ingested_at)
                   VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,0,'fixture',now())""",
                price_rows(),
            )
            cur.executemany(
                """INSERT INTO silver.market__load (ts_utc, market_date, zone, interval_minutes, load_mw,
                   org_id, revision, source, ingested_at) VALUES (%s,%s,%s,%s,%s,%s,0,'fixture',now())""",
                load_rows(),
            )
            cur.executemany(
                """INSERT INTO silver.market__generation (ts_utc, market_date, zone, fuel, interval_minutes,
                   generation_mw, org_id, revision, source, ingested_at)
                   VALUES (%s,%s,%s,%s,%s,%s,%s,0,'fixture',now())""",
                generation_rows(),
            )
            cur.executemany(
                _BID_INSERT,
                bid_rows(),
            )
            cur.executemany(
                "INSERT INTO silver.trading__trades VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,'c',now(),NULL)",
                trade_rows(),
            )
            cur.execute(
                """INSERT INTO silver.trading__assets VALUES ('acme-gas-1', 'acme', 'PJM', 'Keystone CCGT',
                   'thermal', 420.0, NULL, 37.0, 'active', '2024-07-01T00:00:00Z', 'c', now(), NULL)"""
            )
