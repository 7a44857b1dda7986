"""Shared pieces of the analyst-surface tests (forecast jobs, accuracy tracking, explanations): synthetic
hourly facts for two zones written to the real gold tables, an API app on this area's database, and users
of two organizations."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

import numpy as np
import pandas as pd
from fastapi.testclient import TestClient

from infra.db import connect
from ingestion.reference import seed_reference_data

ZONES = {"ERCOT": "America/Chicago", "CAISO": "America/Los_Angeles"}
PASSWORD = "Forecast-Horse-Battery-5"
PREFIX = "/api/v1"
ORGS = ("acme", "voltindia")
FACT_DDL = """
CREATE TABLE IF NOT EXISTS gold.fct_prices_hourly (zone text NOT NULL, ts_utc timestamptz NOT NULL,
    market_date date NOT NULL, market text NOT NULL, currency text NOT NULL, org_id text,
    price_avg double precision, price_min double precision, price_max double precision, n_obs integer);
CREATE TABLE IF NOT EXISTS gold.fct_load_hourly (zone text NOT NULL, ts_utc timestamptz NOT NULL,
    market_date date NOT NULL, org_id text, load_mw_avg double precision, load_mw_max double precision,
    n_obs integer);
"""


def synthetic_facts(zone: str, tz: str, first_day: date, days: int, seed: int) -> pd.DataFrame:
    """Hourly load and price of `days` local days: daily and weekly shape, AR(1) noise, price driven by load."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(first_day).tz_localize(tz).tz_convert("UTC")
    end = (pd.Timestamp(first_day) + pd.Timedelta(days=days)).tz_localize(tz).tz_convert("UTC")
    ts = pd.date_range(start, end, freq="h", inclusive="left")
    local = ts.tz_convert(tz)
    hour, dow = local.hour.to_numpy(), local.dayofweek.to_numpy()
    load = 10_000 + 2_500 * np.sin(2 * np.pi * (hour - 8) / 24) - 800 * (dow >= 5) + rng.normal(0, 150, len(ts))
    noise = np.zeros(len(ts))
    for i in range(1, len(ts)):
        noise[i] = 0.5 * noise[i - 1] + rng.normal(0, 2.0)
    price = 10 + 0.004 * load + 6 * np.sin(2 * np.pi * (hour - 17) / 24) + noise
    return pd.DataFrame({"zone": zone, "ts_utc": ts, "market_date": local.date, "price": price, "load": load})


def write_facts(database_url: str, frames: list[pd.DataFrame]) -> None:
    """Replace the zones' public facts with `frames` (creating the fact tables as dbt would, if absent)."""
    with connect(database_url) as conn:
        seed_reference_data(conn)
        conn.execute(FACT_DDL)
        for frame in frames:
            zone = str(frame["zone"].iloc[0])
            for table in ("gold.fct_prices_hourly", "gold.fct_load_hourly"):
                conn.execute(f"DELETE FROM {table} WHERE zone = %s", (zone,))
            with conn.cursor() as cur:
                cur.executemany(
                    """INSERT INTO gold.fct_prices_hourly (zone, ts_utc, market_date, market, currency,
                           price_avg, n_obs) VALUES (%s, %s, %s, 'DA', 'USD', %s, 1)""",
                    list(frame[["zone", "ts_utc", "market_date", "price"]].itertuples(index=False)),
                )
                cur.executemany(
                    """INSERT INTO gold.fct_load_hourly (zone, ts_utc, market_date, load_mw_avg, n_obs)
                       VALUES (%s, %s, %s, %s, 1)""",
                    list(frame[["zone", "ts_utc", "market_date", "load"]].itertuples(index=False)),
                )


def clear_zones(database_url: str) -> None:
    with connect(database_url) as conn:
        for table in (
            "gold.fct_prices_hourly",
            "gold.fct_load_hourly",
            "gold.forecasts",
            "ml.shadow_forecasts",
            "ml.forecast_accuracy",
            "ml.promotion_decisions",
            "ml.forecast_explanations",
            "ml.model_selection",
        ):
            conn.execute(f"DELETE FROM {table} WHERE zone = ANY(%s)", (list(ZONES),))


@contextmanager
def api_client(database_url: str, settings, home, **options) -> Iterator[tuple[TestClient, callable]]:
    """A running app on `database_url` and `auth(org, role)` -> bearer headers of that organization's user."""
    from serving_api import cli
    from serving_api.app import create_app
    from serving_api.state import ApiOptions

    with connect(database_url) as conn:
        seed_reference_data(conn)
        taken = {r[0] for r in conn.execute("SELECT email FROM ops.users WHERE email LIKE '%%.forecast.test'")}
    for org in ORGS:
        for role in ("analyst", "viewer"):
            if f"{role}@{org}.forecast.test" not in taken:
                cli.create_user(database_url, org, f"{role}@{org}.forecast.test", role, PASSWORD)
    app_settings = settings.model_copy(update={"database_url": database_url, "home": home})
    app = create_app(
        app_settings,
        ApiOptions(
            user_rate_limit_per_minute=100_000,
            login_max_failures_per_ip=10_000,
            ws_heartbeat_seconds=0.5,
            **options,
        ),
    )
    tokens: dict[tuple[str, str], str] = {}
    with TestClient(app) as client:

        def auth(org: str = "acme", role: str = "analyst") -> dict[str, str]:
            if (org, role) not in tokens:
                resp = client.post(
                    f"{PREFIX}/auth/token",
                    data={"username": f"{role}@{org}.forecast.test", "password": PASSWORD},
                )
                assert resp.status_code == 200, resp.text
                tokens[(org, role)] = resp.json()["access_token"]
            return {"Authorization": f"Bearer {tokens[(org, role)]}"}

        yield client, auth


def wait_for_job(client: TestClient, headers: dict, job_id: str, timeout_s: float = 240) -> dict:
    """Poll a forecast job until it is finished; its final body."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        resp = client.get(f"{PREFIX}/forecasts/jobs/{job_id}", headers=headers)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        if body["status"] in ("succeeded", "failed", "timed_out"):
            return body
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {body['status']} after {timeout_s} s")
