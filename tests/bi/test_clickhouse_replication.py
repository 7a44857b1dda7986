"""Replication of gold tables to a real ClickHouse: parity, idempotent re-materialisation, rollups."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from ingestion.bi.clickhouse import (
    duplicate_key_count,
    ensure_clickhouse_schema,
    replicate_partition,
    rollup_select_sql,
    row_count_parity,
)
from ingestion.bi.tables import FCT_PRICES_5MIN, FCT_PRICES_HOURLY, KPI_VALUES
from tests.bi.conftest import ENGINES, engine_client

D1, D2, D3 = dt.date(2024, 3, 30), dt.date(2024, 3, 31), dt.date(2024, 4, 1)


@pytest.fixture(params=ENGINES)
def ch(request: pytest.FixtureRequest):
    """Every test here runs on the ClickHouse server and on the current engine (chdb)."""
    return engine_client(request)


def insert_hourly(pg, day: dt.date, zones: list[str], base: float, org_id: str | None = None) -> None:
    pg.execute(
        """INSERT INTO gold.fct_prices_hourly
                  (zone, ts_utc, market_date, market, currency, org_id, price_avg, price_min, price_max, n_obs)
           SELECT z, ts, %(day)s, 'DA', 'EUR', %(org)s,
                  %(base)s + extract(hour FROM ts) + i, %(base)s - 5, %(base)s + 30 + i, 4
           FROM unnest(%(zones)s::text[]) WITH ORDINALITY AS u(z, i),
                generate_series(%(day)s::timestamp AT TIME ZONE 'UTC',
                                %(day)s::timestamp AT TIME ZONE 'UTC' + interval '23 hours',
                                interval '1 hour') ts""",
        {"day": day, "zones": zones, "base": base, "org": org_id},
    )


def ch_frame(ch, table: str, day: dt.date | None = None) -> pd.DataFrame:
    where = " WHERE market_date = %(day)s" if day else ""
    rows, cols = ch.execute(f"SELECT * FROM {table}{where}", {"day": day}, with_column_types=True)
    return pd.DataFrame(rows, columns=[c for c, _ in cols])


def test_replicate_then_rematerialize_a_day_replaces_it(pg, ch):
    insert_hourly(pg, D1, ["NO1", "NO2"], 10.0)
    insert_hourly(pg, D2, ["NO1", "NO2"], 20.0, org_id="acme")
    insert_hourly(pg, D3, ["NO1"], 30.0)
    for day in (D1, D2, D3):
        result = replicate_partition(pg, ch, FCT_PRICES_HOURLY, day)
        assert result.pg_count == result.ch_count == result.rows_loaded
    assert [row_count_parity(pg, ch, FCT_PRICES_HOURLY, d) for d in (D1, D2, D3)] == [
        (48, 48),
        (48, 48),
        (24, 24),
    ]

    # The day is rebuilt upstream: a zone disappears, values change, a new zone appears.
    pg.execute("DELETE FROM gold.fct_prices_hourly WHERE market_date = %s", (D2,))
    insert_hourly(pg, D2, ["NO2", "SE3", "DK1"], 50.0)
    before_d1 = ch_frame(ch, "fct_prices_hourly", D1)
    again = replicate_partition(pg, ch, FCT_PRICES_HOURLY, D2)
    replicate_partition(pg, ch, FCT_PRICES_HOURLY, D2)  # and once more: still no duplicates

    assert (again.pg_count, again.ch_count) == (72, 72)
    assert row_count_parity(pg, ch, FCT_PRICES_HOURLY, D2) == (72, 72)
    assert duplicate_key_count(ch, FCT_PRICES_HOURLY, D2) == 0
    got = ch_frame(ch, "fct_prices_hourly", D2).sort_values(["zone", "ts_utc"]).reset_index(drop=True)
    rows = pg.execute(
        "SELECT zone, price_avg, org_id FROM gold.fct_prices_hourly WHERE market_date = %s ORDER BY zone, ts_utc",
        (D2,),
    ).fetchall()
    assert list(got["zone"]) == [r[0] for r in rows]
    assert list(got["price_avg"]) == pytest.approx([r[1] for r in rows])
    assert got["org_id"].isna().all()  # the old 'acme' rows are gone
    # the other days of the same month and of the next month are untouched
    pd.testing.assert_frame_equal(ch_frame(ch, "fct_prices_hourly", D1), before_d1)
    assert row_count_parity(pg, ch, FCT_PRICES_HOURLY, D3) == (24, 24)
    # no staging tables are left behind
    assert not [t for (t,) in ch.execute("SHOW TABLES") if "__stage_" in t]


def test_daily_rollup_view_matches_the_replicated_rows(pg, ch):
    insert_hourly(pg, D1, ["NO1", "NO2"], 10.0)
    insert_hourly(pg, D2, ["NO1"], 20.0)
    insert_hourly(pg, D2, ["NO1"], 70.0, org_id="acme")  # a private series of the same zone: its own row
    for day in (D1, D2, D2):
        replicate_partition(pg, ch, FCT_PRICES_HOURLY, day)
    rollup = FCT_PRICES_HOURLY.rollups[0]
    got = ch_frame(ch, f"({rollup_select_sql(rollup)})").sort_values(["zone", "org_id", "market_date"])
    base = ch_frame(ch, "fct_prices_hourly").fillna({"org_id": ""})
    want = (
        base.groupby(["zone", "market", "currency", "org_id", "market_date"])
        .agg(
            price_avg=("price_avg", "mean"),
            price_min=("price_min", "min"),
            price_max=("price_max", "max"),
            n_obs=("n_obs", "sum"),
            n_hours=("zone", "size"),
        )
        .reset_index()
    )
    assert len(got) == 4
    assert list(got["org_id"]) == ["", "", "acme", ""]  # '' = public
    assert list(got["n_hours"]) == list(want["n_hours"]) == [24, 24, 24, 24]
    assert list(got["price_avg"]) == pytest.approx(list(want["price_avg"]))
    assert list(got["price_max"]) == pytest.approx(list(want["price_max"]))
    assert list(got["n_obs"]) == list(want["n_obs"])


def test_emptied_day_is_removed_and_hourly_rollup_of_5min_prices(pg, ch):
    pg.execute(
        """INSERT INTO gold.fct_prices_5min (node, zone, ts_utc, market_date, market, currency, org_id, price)
           SELECT CASE WHEN n = 0 THEN NULL ELSE 'N' || n END, 'Z' || (n %% 2), ts, %(day)s, 'RT', 'USD', NULL,
                  n * 10 + extract(minute FROM ts)
           FROM generate_series(0, 4) n,
                generate_series(%(day)s::timestamp AT TIME ZONE 'UTC',
                                %(day)s::timestamp AT TIME ZONE 'UTC' + interval '2 hours',
                                interval '5 minutes') ts""",
        {"day": D3},
    )
    replicate_partition(pg, ch, FCT_PRICES_5MIN, D3)
    assert row_count_parity(pg, ch, FCT_PRICES_5MIN, D3) == (125, 125)
    assert duplicate_key_count(ch, FCT_PRICES_5MIN, D3) == 0
    assert ch.execute("SELECT count() FROM fct_prices_5min WHERE isNull(node)")[0][0] == 25  # zone price
    hourly = ch_frame(ch, f"({rollup_select_sql(FCT_PRICES_5MIN.rollups[0])})")
    # per node ('' = the zone price Z0): 00:00-00:55 and 01:00-01:55 full (12), 02:00 alone (1)
    assert sorted(hourly["n_obs"]) == [1] * 5 + [12] * 10
    n1 = hourly[hourly["node"] == "N1"].sort_values("hour_utc")
    assert n1["price_avg"].iloc[0] == pytest.approx(10 + 27.5)
    zone_price = hourly[hourly["node"] == ""]
    assert set(zone_price["zone"]) == {"Z0"} and zone_price["price_avg"].iloc[0] == pytest.approx(27.5)

    # Upstream deletes the whole day (only day of its month): ClickHouse and the rollup lose it too.
    pg.execute("DELETE FROM gold.fct_prices_5min")
    result = replicate_partition(pg, ch, FCT_PRICES_5MIN, D3)
    assert (result.pg_count, result.ch_count, result.rows_in_month) == (0, 0, 0)
    assert ch.execute("SELECT count() FROM prices_5min_hourly")[0][0] == 0


def test_duplicate_key_count_treats_null_as_a_value(ch):
    """The grain check sees a repeated public row (NULL org/node) and not distinct owners as duplicates."""
    replicate_cols = "node, zone, ts_utc, market_date, market, currency, org_id, price"
    ensure_clickhouse_schema(ch, [FCT_PRICES_5MIN])
    ts = dt.datetime(2024, 4, 1, 10)
    rows = [
        (None, "Z", ts, D3, "RT", "USD", None, 1.0),
        (None, "Z", ts, D3, "RT", "USD", "acme", 2.0),
        ("N1", "Z", ts, D3, "RT", "USD", None, 3.0),
    ]
    ch.execute(f"INSERT INTO fct_prices_5min ({replicate_cols}) VALUES", rows)
    assert duplicate_key_count(ch, FCT_PRICES_5MIN, D3) == 0
    ch.execute(f"INSERT INTO fct_prices_5min ({replicate_cols}) VALUES", rows[:1])
    assert duplicate_key_count(ch, FCT_PRICES_5MIN, D3) == 1


def test_empty_day_on_a_fresh_table_and_stale_staging_cleanup(pg, ch):
    result = replicate_partition(pg, ch, FCT_PRICES_HOURLY, D1)  # nothing upstream, nothing downstream
    assert (result.pg_count, result.ch_count, result.rows_in_month) == (0, 0, 0)
    # a replication that crashed left its staging tables behind: the next run of that table removes them
    ch.execute("CREATE TABLE fct_prices_hourly__stage_20240330_dead AS fct_prices_hourly")
    ch.execute("CREATE TABLE prices_zone_daily__stage_20240330_dead AS prices_zone_daily")
    ch.execute("CREATE TABLE kpi_values__stage_20240330_keep (x UInt8) ENGINE = Memory")  # another table's
    insert_hourly(pg, D1, ["NO1"], 10.0)
    assert replicate_partition(pg, ch, FCT_PRICES_HOURLY, D1).ch_count == 24
    assert [t for (t,) in ch.execute("SHOW TABLES") if "__stage_" in t] == ["kpi_values__stage_20240330_keep"]


def test_kpi_table_and_missing_source_table_error(pg, ch):
    pg.execute(
        """INSERT INTO gold.kpi_values (kpi_code, grain, zone, org_id, period_start, market_date, value)
           VALUES ('price_spread', 'day', 'PJM', NULL, '2024-03-30 04:00+00', %s, 3.5),
                  ('price_volatility', 'day', 'PJM', NULL, '2024-03-30 04:00+00', %s, 0.2),
                  ('revenue', 'day', 'PJM', 'acme', '2024-03-30 04:00+00', %s, 1200)""",
        (D1, D1, D1),
    )
    assert replicate_partition(pg, ch, KPI_VALUES, D1).ch_count == 3
    assert duplicate_key_count(ch, KPI_VALUES, D1) == 0
    assert ch.execute("SELECT org_id FROM kpi_values WHERE kpi_code = 'revenue'") == [("acme",)]
    pg.execute("DROP TABLE gold.kpi_values")
    with pytest.raises(Exception, match="kpi_values"):
        replicate_partition(pg, ch, KPI_VALUES, D1)
    # the failed run kept the replicated day and released its lock (a second call fails the same way)
    assert ch.execute("SELECT count() FROM kpi_values")[0][0] == 3
    with pytest.raises(Exception, match="kpi_values"):
        replicate_partition(pg, ch, KPI_VALUES, D1)
