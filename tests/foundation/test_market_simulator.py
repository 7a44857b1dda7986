"""The market simulator: deterministic, one row per zone and interval, hours on each zone's local hours."""

from datetime import date

import pandas as pd

from ingestion.reference import simulated_zones
from ingestion.simulator.market import simulate_market

ZONES = {z.zone: z for z in simulated_zones()}


def test_same_seed_same_data_and_another_seed_differs() -> None:
    a = simulate_market(date(2026, 3, 1), 2, nodes_per_zone=1, seed=7)
    b = simulate_market(date(2026, 3, 1), 2, nodes_per_zone=1, seed=7)
    c = simulate_market(date(2026, 3, 1), 2, nodes_per_zone=1, seed=8)
    pd.testing.assert_frame_equal(a.prices_hourly, b.prices_hourly)
    pd.testing.assert_frame_equal(a.prices_5min, b.prices_5min)
    assert not a.prices_hourly["price"].equals(c.prices_hourly["price"])


def test_hourly_intervals_start_on_local_hours_and_tile_consecutive_days() -> None:
    # 2026-03-29 is the EU spring-forward day; IEX zones sit at +05:30, so their hours start at :30 UTC.
    data = simulate_market(date(2026, 3, 28), 3, nodes_per_zone=1, five_minute=False)
    for frame in (data.prices_hourly, data.load_hourly, data.weather_hourly):
        for zone, rows in frame.groupby("zone"):
            ts = pd.DatetimeIndex(rows["ts_utc"]).sort_values()
            local = ts.tz_convert(ZONES[zone].timezone)
            assert (local.minute == 0).all(), f"{zone}: an interval does not start on a local hour"
            assert ts.is_unique and len(ts) == 72
            assert (ts[1:] - ts[:-1] == pd.Timedelta(hours=1)).all(), f"{zone}: gap or overlap between days"
    iex = data.prices_hourly.loc[data.prices_hourly["zone"].str.startswith("IEX"), "ts_utc"]
    assert not iex.empty and (pd.DatetimeIndex(iex).minute == 30).all()


def test_five_minute_prices_fill_exactly_the_hourly_intervals() -> None:
    data = simulate_market(date(2026, 6, 1), 1, nodes_per_zone=2)
    rt, da = data.prices_5min, data.prices_hourly
    for zone in ("IEX_N", next(z for z in ZONES if not z.startswith("IEX"))):
        hours = pd.DatetimeIndex(da.loc[da["zone"] == zone, "ts_utc"]).sort_values()
        shift = pd.Timedelta(minutes=int(hours[0].minute))
        node_ts = rt.loc[rt["zone"] == zone].groupby("node")["ts_utc"]
        for _, ts in node_ts:
            five = pd.DatetimeIndex(ts).sort_values()
            assert len(five) == 288 and five[0] == hours[0] and five[-1] == hours[-1] + pd.Timedelta(minutes=55)
            assert set((five - shift).floor("h") + shift) == set(hours)
