"""ClickHouse analytics queries against a pandas computation of the same definition on the same data."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from ingestion.bi.analytics import (
    AnalyticsInputError,
    price_anomalies,
    realtime_kpis,
    zone_price_correlations,
)
from ingestion.bi.clickhouse import ensure_clickhouse_schema
from ingestion.bi.tables import FCT_PRICES_5MIN, FCT_PRICES_HOURLY
from tests.bi.conftest import ENGINES, engine_client, expected_realtime_kpis

UTC = dt.UTC
START = dt.datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture(params=ENGINES)
def ch(request: pytest.FixtureRequest):
    """Every test here runs on the ClickHouse server and on the current engine (chdb)."""
    return engine_client(request)


def insert_frame(ch, spec, df: pd.DataFrame) -> None:
    """`df` (the spec's columns, tz-aware ts_utc) inserted into the spec's ClickHouse table."""
    ensure_clickhouse_schema(ch, [spec])
    cols = list(spec.column_names)
    data = [
        [t.to_pydatetime().replace(tzinfo=None) for t in df[c]]
        if c == "ts_utc"
        else [None if pd.isna(v) else v for v in df[c]]
        for c in cols
    ]
    ch.execute(f"INSERT INTO {spec.ch_table} ({', '.join(cols)}) VALUES", data, columnar=True)


@pytest.fixture
def hourly(ch) -> pd.DataFrame:
    """`hourly_frame()` loaded into ClickHouse."""
    df = hourly_frame()
    insert_frame(ch, FCT_PRICES_HOURLY, df)
    return df


def hourly_frame() -> pd.DataFrame:
    """Ten days of hourly prices for three zones (with gaps and a planted spike).

    Besides the public day-ahead series: acme's private NO1 series (same hours) and public real-time NO1
    prices, which the default scope (public, DA) must not mix in.
    """
    rng = np.random.default_rng(7)
    ts = pd.date_range(START, periods=240, freq="h")
    common = np.cumsum(rng.normal(0, 3, len(ts)))
    frames = []
    for i, zone in enumerate(["NO1", "NO2", "SE3"]):
        price = 40 + 10 * i + common * (1 - 0.4 * i) + rng.normal(0, 2 + i, len(ts))
        frame = pd.DataFrame({"zone": zone, "ts_utc": ts, "price_avg": price, "market": "DA", "org_id": None})
        frames.append(frame.drop(index=rng.choice(len(ts), 15, replace=False)))  # gaps
    acme = 45 + common * 0.8 + rng.normal(0, 4, len(ts))
    frames.append(pd.DataFrame({"zone": "NO1", "ts_utc": ts, "price_avg": acme, "market": "DA", "org_id": "acme"}))
    frames.append(pd.DataFrame({"zone": "NO1", "ts_utc": ts, "price_avg": 900.0, "market": "RT", "org_id": None}))
    df = pd.concat(frames, ignore_index=True)
    spike = (df["zone"] == "NO2") & (df["ts_utc"] == START + dt.timedelta(days=6, hours=12))
    df.loc[spike, "price_avg"] = 500.0
    df["market_date"] = df["ts_utc"].dt.date
    df["currency"] = "EUR"
    df["price_min"] = df["price_avg"] - 1
    df["price_max"] = df["price_avg"] + 1
    df["n_obs"] = 4
    return df


def public_da(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["market"] == "DA") & df["org_id"].isna()]


def want_anomalies(df: pd.DataFrame, start, end, window_h: int, min_points: int) -> pd.DataFrame:
    want = []
    for (zone, owner), g in df.assign(owner=df["org_id"].fillna("")).groupby(["zone", "owner"]):
        s = g.set_index("ts_utc")["price_avg"].sort_index()
        roll = s.rolling(f"{window_h}h", closed="left")
        frame = pd.DataFrame({"value": s, "mean": roll.mean(), "std": roll.std(ddof=1), "n": roll.count()})
        frame = frame[(frame.index >= start) & (frame.index < end) & (frame["n"] >= min_points) & (frame["std"] > 0)]
        frame["z"] = (frame["value"] - frame["mean"]) / frame["std"]
        want.append(frame.assign(zone=zone, org_id=owner or None).reset_index(names="ts"))
    return pd.concat(want, ignore_index=True)


def test_zscore_anomalies_match_pandas_rolling_window(ch, hourly):
    start, end = START + dt.timedelta(days=2), START + dt.timedelta(days=9)
    got = pd.DataFrame(price_anomalies(ch, start=start, end=end, window_hours=48, z_threshold=0, min_points=24))
    want = want_anomalies(public_da(hourly), start, end, 48, 24).sort_values(["zone", "ts"])
    want = want.reset_index(drop=True)

    assert len(got) == len(want) > 400
    assert list(got["zone"]) == list(want["zone"])
    assert got["org_id"].isna().all()  # acme's series is not public
    assert list(pd.to_datetime(got["ts"], utc=True)) == list(want["ts"])
    assert list(got["n"]) == list(want["n"].astype(int))
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-9)  # the RT prices of 900 are not mixed in
    np.testing.assert_allclose(got["z"], want["z"], rtol=1e-7)

    flagged = price_anomalies(ch, start=start, end=end, zones=["NO2"], window_hours=48, z_threshold=4)
    assert [(r["zone"], r["ts"]) for r in flagged] == [("NO2", START + dt.timedelta(days=6, hours=12))]

    # acme sees the public series plus its own NO1 series, as a separate series (public first)
    visible = hourly[(hourly["market"] == "DA") & (hourly["org_id"].isna() | (hourly["org_id"] == "acme"))]
    mine = pd.DataFrame(price_anomalies(ch, start=start, end=end, org_id="acme", window_hours=48, z_threshold=0))
    want = want_anomalies(visible, start, end, 48, 24)
    want = want.assign(owner=want["org_id"].fillna("")).sort_values(["zone", "owner", "ts"])
    assert list(zip(mine["zone"], mine["org_id"].fillna(""), strict=True)) == list(
        zip(want["zone"], want["owner"], strict=True)
    )
    np.testing.assert_allclose(mine["z"], want["z"], rtol=1e-7)
    assert (mine["org_id"] == "acme").sum() > 100
    other = price_anomalies(ch, start=start, end=end, org_id="globex", window_hours=48, z_threshold=0)
    assert len(other) == len(got)  # another organisation sees the public rows only


def test_rolling_cross_zone_correlation_matches_pandas(ch, hourly):
    first, last, window = dt.date(2024, 5, 4), dt.date(2024, 5, 10), 3
    got = pd.DataFrame(zone_price_correlations(ch, start_day=first, end_day=last, window_days=window, min_overlap=24))
    wide = public_da(hourly).pivot(index="ts_utc", columns="zone", values="price_avg")
    days = wide.index.date
    want = []
    for end_day in pd.date_range(first, last).date:
        win = wide[(days > end_day - dt.timedelta(days=window)) & (days <= end_day)]
        for a, b in [("NO1", "NO2"), ("NO1", "SE3"), ("NO2", "SE3")]:
            pair = win[[a, b]].dropna()
            want.append({"zone_a": a, "zone_b": b, "end_day": end_day, "rho": pair[a].corr(pair[b]), "n": len(pair)})
    want = pd.DataFrame(want).sort_values(["zone_a", "zone_b", "end_day"]).reset_index(drop=True)

    assert len(got) == len(want) == 21
    assert list(got["end_day"]) == list(want["end_day"])
    assert list(got["n"]) == list(want["n"])
    np.testing.assert_allclose(got["rho"], want["rho"], rtol=1e-9)

    only = zone_price_correlations(ch, start_day=first, end_day=first, zones=["NO1", "SE3"], window_days=window)
    assert [(r["zone_a"], r["zone_b"]) for r in only] == [("NO1", "SE3")]

    # with acme's scope its NO1 series is a fourth series: public NO1 x acme NO1 is a pair of its own
    mine = pd.DataFrame(
        zone_price_correlations(ch, start_day=first, end_day=last, org_id="acme", window_days=window, min_overlap=24)
    )
    assert len(mine) == 6 * 7 and got["org_a"].isna().all()
    pair = mine[(mine["zone_a"] == "NO1") & mine["org_a"].isna() & (mine["zone_b"] == "NO1")]
    assert set(pair["org_b"]) == {"acme"}
    acme = hourly[hourly["org_id"] == "acme"].set_index("ts_utc")["price_avg"]
    both = pd.concat([wide["NO1"], acme], axis=1, keys=["pub", "acme"]).dropna()
    bdays = both.index.date
    for end_day, rho, n in zip(pair["end_day"], pair["rho"], pair["n"], strict=True):
        win = both[(bdays > end_day - dt.timedelta(days=window)) & (bdays <= end_day)]
        assert n == len(win)
        assert rho == pytest.approx(win["pub"].corr(win["acme"]), rel=1e-9)


def test_realtime_kpis_over_last_minutes_match_pandas(ch):
    rng = np.random.default_rng(3)
    ts = pd.date_range("2024-06-01 22:00", periods=48, freq="5min", tz="UTC")  # crosses midnight
    nodes = [(f"N{n}", f"Z{n % 3}") for n in range(9)] + [(None, f"Z{z}") for z in range(3)]  # + zone prices
    df = pd.DataFrame(
        [(node, zone, t, t.date(), "RT", "USD", None, float(rng.normal(50, 15))) for node, zone in nodes for t in ts],
        columns=list(FCT_PRICES_5MIN.column_names),
    )
    private = df[df["zone"] == "Z0"].assign(org_id="acme", price=1000.0)  # not visible without acme's scope
    insert_frame(ch, FCT_PRICES_5MIN, pd.concat([df, private], ignore_index=True))
    now = dt.datetime(2024, 6, 2, 0, 30, tzinfo=UTC)

    got = pd.DataFrame(realtime_kpis(ch, minutes=45, now=now)).set_index("zone")
    want = expected_realtime_kpis(df, now, minutes=45)

    assert list(got.index) == ["Z0", "Z1", "Z2"]
    assert list(got["n_obs"]) == list(want["n_obs"]) == [36, 36, 36]  # 9 intervals x (3 nodes + zone)
    assert list(got["n_nodes"]) == list(want["n_nodes"]) == [3, 3, 3]
    assert set(got["currency"]) == {"USD"} and got["org_id"].isna().all()
    for col in ("price_avg", "price_min", "price_max", "price_std", "price_last"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-9)
    assert set(got["last_ts"]) == {now}
    assert realtime_kpis(ch, minutes=45, now=now, zones=["Z1"])[0]["zone"] == "Z1"
    mine = realtime_kpis(ch, minutes=45, now=now, zones=["Z0"], org_id="acme")
    assert [(r["zone"], r["org_id"], r["n_obs"], r["price_avg"]) for r in mine] == [
        ("Z0", None, 36, pytest.approx(want.loc["Z0", "price_avg"])),
        ("Z0", "acme", 36, 1000.0),
    ]
    assert realtime_kpis(ch, minutes=45, now=now, market="DA") == []


def test_inputs_are_bound_or_rejected(ch, hourly):
    hostile = ["NO1' OR 1=1 --", "x`; DROP TABLE fct_prices_hourly; --"]
    assert price_anomalies(ch, start=START, end=START + dt.timedelta(days=9), zones=hostile, z_threshold=0) == []
    assert ch.execute("SELECT count() FROM fct_prices_hourly")[0][0] == len(hourly)
    assert price_anomalies(ch, start=START, end=START + dt.timedelta(days=9), org_id="x' OR 1=1 --") != []
    assert all(
        r["org_id"] is None
        for r in price_anomalies(
            ch, start=START, end=START + dt.timedelta(days=9), org_id="x' OR '1'='1", z_threshold=0
        )
    )
    with pytest.raises(AnalyticsInputError, match="no column"):
        price_anomalies(ch, start=START, end=START + dt.timedelta(days=1), value_column="price_avg; DROP TABLE x")
    with pytest.raises(AnalyticsInputError, match="not numeric"):
        zone_price_correlations(ch, start_day=START.date(), end_day=START.date(), value_column="zone")
    with pytest.raises(AnalyticsInputError, match="window_hours"):
        price_anomalies(ch, start=START, end=START + dt.timedelta(days=1), window_hours=0)
    with pytest.raises(AnalyticsInputError, match="minutes"):
        realtime_kpis(ch, minutes=10**9, now=START)
