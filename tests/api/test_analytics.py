"""/analytics/* against a real ClickHouse filled by the BI library's own replication, compared with pandas;
/docs/gold renders the semantic page.

The ClickHouse server is the BI tests' session fixture (`tests/bi/conftest.py::clickhouse_url`, imported
by tests/api/conftest.py: skipped with the install hint when ClickHouse is absent). The registry's gold tables live in a
Postgres database of this module's own, because the API fixtures' gold tables have the API contract's
columns, not the BI registry's.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from ingestion.bi.clickhouse import replicate_partition
from ingestion.bi.tables import FCT_PRICES_5MIN, FCT_PRICES_HOURLY
from tests.bi.conftest import create_gold_table, expected_realtime_kpis

UTC = dt.UTC
START = dt.datetime(2024, 5, 1, tzinfo=UTC)
DAYS = 6
NOW = dt.datetime(2024, 5, 3, 0, 30, tzinfo=UTC)


def _hourly() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    ts = pd.date_range(START, periods=24 * DAYS, freq="h")
    common = np.cumsum(rng.normal(0, 3, len(ts)))
    frames = []
    for i, zone in enumerate(["NO1", "NO2", "SE3"]):
        price = 40 + 10 * i + common * (1 - 0.4 * i) + rng.normal(0, 2 + i, len(ts))
        frames.append(pd.DataFrame({"zone": zone, "ts_utc": ts, "price_avg": price, "org_id": None}))
    # org_b's private series (e.g. from its uploads): only org_b may see it.
    frames.append(pd.DataFrame({"zone": "PRIV", "ts_utc": ts, "price_avg": common + 5, "org_id": "org_b"}))
    df = pd.concat(frames, ignore_index=True)
    df.loc[(df["zone"] == "NO2") & (df["ts_utc"] == START + dt.timedelta(days=4, hours=12)), "price_avg"] = 500.0
    df["market_date"] = df["ts_utc"].dt.date
    df["market"], df["currency"] = "DA", "EUR"
    df["price_min"], df["price_max"], df["n_obs"] = df["price_avg"] - 1, df["price_avg"] + 1, 4
    return df


def _nodal() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    ts = pd.date_range("2024-05-02 22:00", periods=48, freq="5min", tz="UTC")  # crosses midnight
    return pd.DataFrame(
        [
            (f"N{n}", f"Z{n % 3}", t, t.date(), "RT", "USD", None, float(rng.normal(50, 15)))
            for n in range(9)
            for t in ts
        ],
        columns=list(FCT_PRICES_5MIN.column_names),
    )


@pytest.fixture(scope="module")
def frames(database_url: str, clickhouse_url: str):
    """Gold tables in Postgres, replicated day by day into a fresh ClickHouse database; (url, frames)."""
    from clickhouse_driver import Client

    from infra import db

    name = f"optibid_api_bi_{os.getpid()}"
    pg_url = db.create_database(database_url, name, drop_existing=True)
    ch_name = f"api_test_{uuid.uuid4().hex[:10]}"
    admin = Client.from_url(clickhouse_url)
    admin.execute(f"CREATE DATABASE {ch_name}")
    ch_url = urlsplit(clickhouse_url)._replace(path=f"/{ch_name}").geturl()
    ch = Client.from_url(ch_url)
    hourly, nodal = _hourly(), _nodal()
    try:
        with psycopg.connect(pg_url, autocommit=True) as pg:
            for spec, df in ((FCT_PRICES_HOURLY, hourly), (FCT_PRICES_5MIN, nodal)):
                create_gold_table(pg, spec)
                cols = list(spec.column_names)
                with pg.cursor().copy(
                    sql.SQL("COPY {}.{} ({}) FROM STDIN").format(
                        sql.Identifier(spec.pg_schema),
                        sql.Identifier(spec.pg_table),
                        sql.SQL(", ").join(sql.Identifier(c) for c in cols),
                    )
                ) as copy:
                    for row in df[cols].itertuples(index=False):
                        copy.write_row([None if pd.isna(v) else v for v in row])
                for day in sorted(set(df["market_date"])):
                    replicate_partition(pg, ch, spec, day)
        yield ch_url, hourly, nodal
    finally:
        ch.disconnect()
        admin.execute(f"DROP DATABASE IF EXISTS {ch_name}")
        admin.disconnect()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def bi_client(api_settings, frames):
    from serving_api.app import create_app
    from serving_api.state import ApiOptions

    app = create_app(
        api_settings.model_copy(update={"clickhouse_url": frames[0]}),
        ApiOptions(user_rate_limit_per_minute=100_000),
    )
    with TestClient(app) as c:
        yield c


def _want_anomalies(hourly: pd.DataFrame, start, end, zones, window_h: int, min_points: int) -> pd.DataFrame:
    want = []
    for zone, g in hourly[hourly["zone"].isin(zones)].groupby("zone"):
        s = g.set_index("ts_utc")["price_avg"].sort_index()
        roll = s.rolling(f"{window_h}h", closed="left")
        f = pd.DataFrame({"value": s, "mean": roll.mean(), "std": roll.std(ddof=1), "n": roll.count()})
        f = f[(f.index >= start) & (f.index < end) & (f["n"] >= min_points) & (f["std"] > 0)]
        f["z"] = (f["value"] - f["mean"]) / f["std"]
        want.append(f.assign(zone=zone).reset_index(names="ts"))
    return pd.concat(want, ignore_index=True).sort_values(["zone", "ts"]).reset_index(drop=True)


def test_price_anomalies_match_pandas_and_respect_the_organization(bi_client, auth, frames):
    _, hourly, _ = frames
    start, end = START + dt.timedelta(days=2), START + dt.timedelta(days=DAYS)
    params = {"start": start.isoformat(), "end": end.isoformat(), "window_hours": 48, "z_threshold": 0}
    resp = bi_client.get("/api/v1/analytics/price-anomalies", headers=auth("org_a", "viewer"), params=params)
    assert resp.status_code == 200, resp.text
    got = pd.DataFrame(resp.json()["data"])
    want = _want_anomalies(hourly, start, end, ["NO1", "NO2", "SE3"], 48, 24)
    assert len(got) == len(want) == resp.json()["count"] > 200
    assert list(got["zone"]) == list(want["zone"])  # no PRIV: org_b's private series is invisible
    assert list(pd.to_datetime(got["ts"], utc=True)) == list(want["ts"])
    assert list(got["n"]) == list(want["n"].astype(int))
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-9)
    np.testing.assert_allclose(got["z"], want["z"], rtol=1e-7)

    flagged = bi_client.get(
        "/api/v1/analytics/price-anomalies",
        headers=auth("org_a", "viewer"),
        params={**params, "z_threshold": 4, "zones": "NO2"},
    ).json()["data"]
    assert [(r["zone"], pd.Timestamp(r["ts"])) for r in flagged] == [
        ("NO2", pd.Timestamp(START + dt.timedelta(days=4, hours=12)))
    ]
    assert all(r["org_id"] is None for r in resp.json()["data"])
    org_b = bi_client.get("/api/v1/analytics/price-anomalies", headers=auth("org_b", "viewer"), params=params)
    assert {r["org_id"] for r in org_b.json()["data"] if r["zone"] == "PRIV"} == {"org_b"}
    want_b = _want_anomalies(hourly, start, end, ["NO1", "NO2", "PRIV", "SE3"], 48, 24)
    assert len(org_b.json()["data"]) == len(want_b)


def test_correlations_match_pandas(bi_client, auth, frames):
    _, hourly, _ = frames
    first, last, window = dt.date(2024, 5, 3), dt.date(2024, 5, 6), 2
    resp = bi_client.get(
        "/api/v1/analytics/correlations",
        headers=auth("org_a", "analyst"),
        params={"start_day": first, "end_day": last, "window_days": window, "min_overlap": 24},
    )
    assert resp.status_code == 200, resp.text
    got = pd.DataFrame(resp.json()["data"])
    public = hourly[hourly["org_id"].isna()]
    wide = public.pivot(index="ts_utc", columns="zone", values="price_avg")
    days = wide.index.date
    want = []
    for end_day in pd.date_range(first, last).date:
        win = wide[(days > end_day - dt.timedelta(days=window)) & (days <= end_day)]
        for a, b in [("NO1", "NO2"), ("NO1", "SE3"), ("NO2", "SE3")]:
            pair = win[[a, b]].dropna()
            want.append({"zone_a": a, "zone_b": b, "end_day": end_day.isoformat(), "rho": pair[a].corr(pair[b])})
    want = pd.DataFrame(want).sort_values(["zone_a", "zone_b", "end_day"]).reset_index(drop=True)
    assert len(got) == len(want) == 12
    assert list(zip(got["zone_a"], got["zone_b"], got["end_day"], strict=True)) == list(
        zip(want["zone_a"], want["zone_b"], want["end_day"], strict=True)
    )
    np.testing.assert_allclose(got["rho"], want["rho"], rtol=1e-9)


def test_realtime_kpis_match_pandas(bi_client, auth, frames):
    _, _, df = frames
    resp = bi_client.get(
        "/api/v1/analytics/realtime-kpis",
        headers=auth("org_a", "viewer"),
        params={"minutes": 45, "now": NOW.isoformat()},
    )
    assert resp.status_code == 200, resp.text
    got = pd.DataFrame(resp.json()["data"]).set_index("zone")
    want = expected_realtime_kpis(df, NOW, minutes=45)
    assert list(got.index) == ["Z0", "Z1", "Z2"]
    assert list(got["n_obs"]) == list(want["n_obs"]) == [27, 27, 27]
    assert set(got["currency"]) == {"USD"} and got["org_id"].isna().all()
    for col in ("price_avg", "price_min", "price_max", "price_std", "price_last"):
        np.testing.assert_allclose(got[col], want[col], rtol=1e-9)
    assert {pd.Timestamp(t) for t in got["last_ts"]} == {pd.Timestamp(NOW)}


def test_bad_parameters_are_400_or_422_in_the_error_shape(bi_client, auth):
    h = auth("org_a", "viewer")
    url = "/api/v1/analytics/price-anomalies"
    resp = bi_client.get(url, headers=h, params={"start": "2024-05-03T00:00Z", "end": "2024-05-02T00:00Z"})
    assert resp.status_code == 400 and resp.json()["code"] == "invalid_parameter"
    assert "end must be after start" in resp.json()["message"]
    resp = bi_client.get(url, headers=h, params={"start": "2024-05-01", "end": "2024-05-02", "window_hours": 0})
    assert resp.status_code == 422 and resp.json()["code"] == "validation_error"
    resp = bi_client.get(
        "/api/v1/analytics/correlations",
        headers=h,
        params={"start_day": "2024-05-06", "end_day": "2024-05-01"},
    )
    assert resp.status_code == 400 and "end_day" in resp.json()["message"]
    resp = bi_client.get("/api/v1/analytics/realtime-kpis", headers=h, params={"zones": "NO1;DROP"})
    assert resp.status_code == 422


def test_clickhouse_down_or_unconfigured_is_503(api_settings, auth):
    from infra.processes import free_port
    from serving_api.app import create_app

    params = {"start": "2024-05-01", "end": "2024-05-02"}
    down = api_settings.model_copy(update={"clickhouse_url": f"clickhouse://default@127.0.0.1:{free_port()}/x"})
    with TestClient(create_app(down)) as c:
        resp = c.get("/api/v1/analytics/price-anomalies", headers=auth("org_a", "viewer"), params=params)
        assert resp.status_code == 503, resp.text
        assert resp.json()["code"] == "clickhouse_unavailable" and "unreachable" in resp.json()["message"]
        # The gold docs do not need ClickHouse.
        assert c.get("/api/v1/docs/gold", headers=auth("org_a", "viewer")).status_code == 200


def test_gold_docs_page_lists_tables_and_kpis(client, auth):
    resp = client.get("/api/v1/docs/gold", headers=auth("org_a", "viewer"))
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    html = resp.text
    assert "fct_prices_hourly" in html
    assert "avg_price" in html and "Average price" in html  # gold.kpi_catalog rows of the API fixtures
    assert client.get("/api/v1/docs/gold").status_code == 401
