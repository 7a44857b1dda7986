"""KPIs, facts and dimensions of gold against values worked out by hand from tests/gold/silver_fixture.py."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

import pytest

from infra import db

PJM_DAY = date(2024, 7, 10)


def kpi(
    url: str, code: str, grain: str, zone: str, period_start: datetime, org_id: str | None = None
) -> float:
    with db.connect(url) as conn:
        rows = conn.execute(
            """SELECT value FROM gold.kpi_values WHERE kpi_code = %s AND grain = %s AND zone = %s
               AND period_start = %s AND org_id IS NOT DISTINCT FROM %s""",
            (code, grain, zone, period_start, org_id),
        ).fetchall()
    assert len(rows) == 1, f"{code}/{grain}/{zone}/{period_start}/{org_id}: {rows}"
    return rows[0][0]


def day_kpi(url: str, code: str, zone: str, market_date: date, org_id: str | None = None) -> float | None:
    with db.connect(url) as conn:
        rows = conn.execute(
            """SELECT value FROM gold.kpi_values WHERE kpi_code = %s AND grain = 'day' AND zone = %s
               AND market_date = %s AND org_id IS NOT DISTINCT FROM %s""",
            (code, zone, market_date, org_id),
        ).fetchall()
    assert len(rows) <= 1
    return rows[0][0] if rows else None


def test_zone_day_price_kpis(gold_built: str) -> None:
    url = gold_built
    # PJM DA prices of local hour h are 10 + h except hour 3 = -50 (a negative price is legal: floor -1000).
    # sum = (10 + ... + 33) - 13 - 50 = 516 - 63 = 453 over 24 hours
    assert day_kpi(url, "price_avg", "PJM", PJM_DAY) == pytest.approx(453 / 24)  # 18.875
    # PJM peak = 07:00-23:00 local on weekdays: hours 7..22 -> 10 + 14.5 = 24.5
    assert day_kpi(url, "price_peak_avg", "PJM", PJM_DAY) == pytest.approx(24.5)
    # off-peak: hours 0,1,2,3,4,5,6,23 -> 10 + 11 + 12 - 50 + 14 + 15 + 16 + 33 = 61 over 8
    assert day_kpi(url, "price_offpeak_avg", "PJM", PJM_DAY) == pytest.approx(61 / 8)
    assert day_kpi(url, "price_max", "PJM", PJM_DAY) == 33.0
    assert day_kpi(url, "price_min", "PJM", PJM_DAY) == -50.0
    # population sd: sum of squares = (10^2 + ... + 33^2) - 13^2 + 50^2 = 12244 - 169 + 2500 = 14575
    assert day_kpi(url, "price_volatility", "PJM", PJM_DAY) == pytest.approx(
        math.sqrt(14575 / 24 - (453 / 24) ** 2)
    )
    # PJM_COMED is PJM - 4 in every hour, so PJM sits +2 above the PJM-market mean and COMED -2 below it
    assert day_kpi(url, "price_spread", "PJM", PJM_DAY) == pytest.approx(2.0)
    assert day_kpi(url, "price_spread", "PJM_COMED", PJM_DAY) == pytest.approx(-2.0)
    assert kpi(url, "price_spread", "hour", "PJM", datetime(2024, 7, 10, 16, tzinfo=UTC)) == pytest.approx(
        2.0
    )
    assert day_kpi(url, "price_coverage", "PJM", PJM_DAY) == pytest.approx(1.0)
    # COMED's Chicago day 2024-07-10 got only 23 of PJM's 24 UTC hours (the first is its 2024-07-09 23:00)
    assert day_kpi(url, "price_coverage", "PJM_COMED", PJM_DAY) == pytest.approx(23 / 24)
    # hour grain: local hour 8 of PJM is 12:00Z, DA price 18
    assert kpi(url, "price_avg", "hour", "PJM", datetime(2024, 7, 10, 12, tzinfo=UTC)) == 18.0


def test_minute_prices_and_hourly_fact(gold_built: str) -> None:
    url = gold_built
    for minute, price in ((0, 30.0), (5, 36.0), (10, 42.0)):
        assert kpi(url, "price_avg", "minute", "PJM", datetime(2024, 7, 10, 12, minute, tzinfo=UTC)) == price
    with db.connect(url) as conn:
        rt = conn.execute(
            """SELECT price_avg, price_min, price_max, n_obs FROM gold.fct_prices_hourly
               WHERE zone = 'PJM' AND market = 'RT' AND ts_utc = '2024-07-10T12:00:00Z'"""
        ).fetchone()
        nodal = conn.execute("SELECT price FROM gold.fct_prices_5min WHERE node = 'PJM.N0000'").fetchall()
        minute_rows = conn.execute(
            "SELECT count(*) FROM gold.kpi_values WHERE kpi_code = 'price_avg' AND grain = 'minute'"
        ).fetchone()
    # the nodal price (99) stays out of zone aggregates and zone minute KPIs
    assert rt == (36.0, 30.0, 42.0, 3)
    assert nodal == [(99.0,)]
    assert minute_rows == (3,)


def test_dst_fall_back_day_counts_25_hours(gold_built: str) -> None:
    url = gold_built
    day = date(2024, 11, 3)
    with db.connect(url) as conn:
        hours = conn.execute(
            "SELECT hours_in_day, day_start_utc FROM gold.dim_calendar"
            " WHERE zone = 'NYISO' AND market_date = %s",
            (day,),
        ).fetchone()
        spring = conn.execute(
            "SELECT hours_in_day FROM gold.dim_calendar WHERE zone = 'NYISO' AND market_date = '2024-03-10'"
        ).fetchone()
        hour_rows = conn.execute(
            """SELECT count(*) FROM gold.kpi_values WHERE kpi_code = 'price_avg' AND grain = 'hour'
               AND zone = 'NYISO' AND market_date = %s""",
            (day,),
        ).fetchone()
    assert hours == (25, datetime(2024, 11, 3, 4, tzinfo=UTC))
    assert spring == (23,)
    # both 01:00 local hours (05:00Z EDT and 06:00Z EST) stay separate hours
    assert hour_rows == (25,)
    # prices 40 + i for i = 0..24: (25 * 40 + 300) / 25 = 52, not the 24-hour 51.5
    assert day_kpi(url, "price_avg", "NYISO", day) == pytest.approx(52.0)
    assert day_kpi(url, "price_coverage", "NYISO", day) == pytest.approx(1.0)
    # a Sunday: no peak hours, every hour is off-peak
    assert day_kpi(url, "price_peak_avg", "NYISO", day) is None
    assert day_kpi(url, "price_offpeak_avg", "NYISO", day) == pytest.approx(52.0)
    assert kpi(url, "price_avg", "day", "NYISO", datetime(2024, 11, 3, 4, tzinfo=UTC)) == pytest.approx(52.0)


def test_load_generation_kpis(gold_built: str) -> None:
    url = gold_built
    # load 1000 + 100 h: mean 2150, peak 3300
    assert day_kpi(url, "load_avg", "PJM", PJM_DAY) == pytest.approx(2150.0)
    assert day_kpi(url, "load_peak", "PJM", PJM_DAY) == pytest.approx(3300.0)
    assert day_kpi(url, "load_factor", "PJM", PJM_DAY) == pytest.approx(2150 / 3300)
    h12, h13 = datetime(2024, 7, 10, 16, tzinfo=UTC), datetime(2024, 7, 10, 17, tzinfo=UTC)
    # hour 12: (300 solar + 100 wind) / 1000; hour 13: gas only; day: 400 / 2000
    assert kpi(url, "renewable_share", "hour", "PJM", h12) == pytest.approx(0.4)
    assert kpi(url, "renewable_share", "hour", "PJM", h13) == pytest.approx(0.0)
    assert day_kpi(url, "renewable_share", "PJM", PJM_DAY) == pytest.approx(0.2)
    # imbalance = generation - load: 1000 - 2200, 1000 - 2300; day mean over the two hours with both
    assert kpi(url, "imbalance", "hour", "PJM", h12) == pytest.approx(-1200.0)
    assert kpi(url, "imbalance", "hour", "PJM", h13) == pytest.approx(-1300.0)
    assert day_kpi(url, "imbalance", "PJM", PJM_DAY) == pytest.approx(-1250.0)


def test_org_kpis(gold_built: str) -> None:
    url = gold_built
    h12, h13 = datetime(2024, 7, 10, 16, tzinfo=UTC), datetime(2024, 7, 10, 17, tzinfo=UTC)
    # hour 12: b1 accepted, b2 partially accepted, b3 rejected, b4 cancelled (no decision) -> 2/3
    assert kpi(url, "bid_acceptance_rate", "hour", "PJM", h12, "acme") == pytest.approx(2 / 3)
    assert kpi(url, "bid_acceptance_rate", "hour", "PJM", h13, "acme") == pytest.approx(1.0)
    assert day_kpi(url, "bid_acceptance_rate", "PJM", PJM_DAY, "acme") == pytest.approx(3 / 4)
    # cleared: 50 + 10 in hour 12, 30 in hour 13
    assert kpi(url, "cleared_volume", "hour", "PJM", h12, "acme") == pytest.approx(60.0)
    assert day_kpi(url, "cleared_volume", "PJM", PJM_DAY, "acme") == pytest.approx(90.0)
    # revenue hour 12: 50*32 + 10*32 - 5*28 (unlinked trade t2; t1 executes b1 and is not double counted)
    assert kpi(url, "revenue", "hour", "PJM", h12, "acme") == pytest.approx(1600 + 320 - 140)
    assert kpi(url, "revenue", "hour", "PJM", h13, "acme") == pytest.approx(-30 * 35)
    assert day_kpi(url, "revenue", "PJM", PJM_DAY, "acme") == pytest.approx(1780 - 1050)
    # net position (bought - sold): 5 - 60 in hour 12, +30 in hour 13
    assert kpi(url, "net_position", "hour", "PJM", h12, "acme") == pytest.approx(-55.0)
    assert day_kpi(url, "net_position", "PJM", PJM_DAY, "acme") == pytest.approx(-25.0)
    # India is UTC+05:30: the 18:00 IST hour starts at 12:30Z
    assert (
        kpi(url, "revenue", "hour", "IEX_W", datetime(2024, 7, 10, 12, 30, tzinfo=UTC), "voltindia")
        == 480000.0
    )


def test_catalog_lists_every_kpi(gold_built: str) -> None:
    with db.connect(gold_built) as conn:
        catalog = {
            r[0]: (r[1], r[2]) for r in conn.execute("SELECT kpi_code, scope, grains FROM gold.kpi_catalog")
        }
        produced = {r[0] for r in conn.execute("SELECT DISTINCT kpi_code FROM gold.kpi_values")}
    assert produced <= set(catalog)
    assert catalog["revenue"][0] == "org" and catalog["price_avg"] == ("zone", "minute,hour,day")


def test_models_land_in_gold_and_staging_in_gold_staging(gold_built: str) -> None:
    with db.connect(gold_built) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'gold'"
            )
        }
        views = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.views WHERE table_schema = 'gold_staging'"
            )
        }
    assert {
        "dim_zone",
        "dim_node",
        "dim_asset",
        "dim_org",
        "dim_calendar",
        "fct_prices_hourly",
        "fct_prices_5min",
        "fct_load_hourly",
        "fct_generation_hourly",
        "fct_bids",
        "fct_trades",
        "fct_positions",
        "kpi_values",
        "kpi_catalog",
    } <= tables
    assert "stg_market__prices" in views and "stg_market__prices" not in tables
