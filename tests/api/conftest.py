"""Fixtures of the API tests: gold tables other areas will own (created here with the contract's columns
and RLS), two organizations with one user per role, and a running app (TestClient with lifespan)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

# The BI tests' session ClickHouse server (skips when not installed), shared so one server serves both.

PASSWORD = "Correct-Horse-Battery-9"
ORGS = ("org_a", "org_b")
ROLES = ("admin", "analyst", "trader", "viewer")
# Past, immutable days (cacheable); the data sits in these two days.
DAY0 = (datetime.now(UTC) - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
DAY2 = DAY0 + timedelta(days=2)

FIXTURE_DDL = """
CREATE TABLE IF NOT EXISTS gold.fct_prices_hourly (zone text NOT NULL, ts_utc timestamptz NOT NULL,
    market_date date NOT NULL, market text NOT NULL, currency text NOT NULL, price_avg double precision,
    price_min double precision, price_max double precision, n_obs integer);
CREATE TABLE IF NOT EXISTS gold.fct_prices_5min (node text NOT NULL, zone text NOT NULL,
    ts_utc timestamptz NOT NULL, market_date date NOT NULL, price double precision);
CREATE TABLE IF NOT EXISTS gold.fct_load_hourly (zone text NOT NULL, ts_utc timestamptz NOT NULL,
    market_date date NOT NULL, load_mw_avg double precision, n_obs integer);
CREATE TABLE IF NOT EXISTS gold.fct_generation_hourly (zone text NOT NULL, ts_utc timestamptz NOT NULL,
    market_date date NOT NULL, fuel text NOT NULL, generation_mw_avg double precision, n_obs integer);
CREATE TABLE IF NOT EXISTS gold.kpi_catalog (kpi_code text PRIMARY KEY, name text NOT NULL, unit text,
    grains text[], scope text, definition text);
CREATE TABLE IF NOT EXISTS gold.kpi_values (kpi_code text NOT NULL, grain text NOT NULL, zone text NOT NULL,
    org_id text, period_start timestamptz NOT NULL, market_date date NOT NULL, value double precision);
CREATE TABLE IF NOT EXISTS gold.forecasts (zone text NOT NULL, ts_utc timestamptz NOT NULL,
    model text NOT NULL,
    model_version text, run_id text NOT NULL, y_hat double precision, q10 double precision,
    q50 double precision, q90 double precision, lo80 double precision, hi80 double precision,
    lo95 double precision, hi95 double precision, target text NOT NULL, created_at timestamptz DEFAULT now());
"""
# Optimization results (070_optimization.sql) and ops.uploads (040_uploads.sql) come from migrations.
RLS_TABLES = ("gold.kpi_values",)


def _seed(conn) -> None:
    conn.execute(FIXTURE_DDL)
    for table in RLS_TABLES:
        conn.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        conn.execute(f"DROP POLICY IF EXISTS org_isolation ON {table}")
        conn.execute(f"""CREATE POLICY org_isolation ON {table}
                         USING (org_id IS NULL OR org_id = current_setting('optibid.org_id', true))""")
        conn.execute(f"GRANT SELECT ON {table} TO optibid_api")
    for zone, tz, cur in (("PJM", "America/New_York", "USD"), ("NP", "Europe/Oslo", "EUR")):
        conn.execute(
            """INSERT INTO silver.ref__zones VALUES (%s, %s, 'DA', %s, %s, %s, 40, -75, -500, 3000)
               ON CONFLICT DO NOTHING""",
            (zone, zone + " zone", zone, tz, cur),
        )
        conn.execute(
            "INSERT INTO silver.ref__nodes VALUES (%s, %s, 40, -75) ON CONFLICT DO NOTHING",
            (zone + "_N1", zone),
        )
    for org in ORGS:
        conn.execute(
            "INSERT INTO silver.ref__organizations VALUES (%s, %s, 'US') ON CONFLICT DO NOTHING",
            (org, org.upper()),
        )
        conn.execute(
            """INSERT INTO silver.ref__assets VALUES (%s, %s, 'PJM', %s, 'battery', 10, 20, 1)
               ON CONFLICT DO NOTHING""",
            (f"{org}_bat", org, f"{org} battery"),
        )
    hours = [DAY0 + timedelta(hours=h) for h in range(48)]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO gold.fct_prices_hourly VALUES (%s, %s, %s, 'DA', 'USD', %s, %s, %s, 12)",
            [
                (z, t, t.date(), 30.0 + i, 20.0 + i, 40.0 + i)
                for z in ("PJM", "NP")
                for i, t in enumerate(hours)
            ],
        )
        cur.executemany(
            "INSERT INTO gold.fct_prices_5min VALUES ('PJM_N1', 'PJM', %s, %s, %s)",
            [(DAY0 + timedelta(minutes=5 * i), DAY0.date(), 25.0 + i % 7) for i in range(288)],
        )
        cur.executemany(
            "INSERT INTO gold.fct_load_hourly VALUES ('PJM', %s, %s, %s, 12)",
            [(t, t.date(), 9000.0 + i) for i, t in enumerate(hours)],
        )
        cur.executemany(
            "INSERT INTO gold.fct_generation_hourly VALUES ('PJM', %s, %s, %s, %s, 12)",
            [(t, t.date(), f, 100.0 + i) for i, t in enumerate(hours) for f in ("gas", "wind")],
        )
        cur.execute("""INSERT INTO gold.kpi_catalog VALUES
            ('avg_price', 'Average price', 'USD/MWh', '{minute,hour,day}', 'zone', 'mean of prices'),
            ('pnl', 'Profit and loss', 'USD', '{hour,day}', 'org', 'realized PnL') ON CONFLICT DO NOTHING""")
        cur.executemany(
            "INSERT INTO gold.kpi_values VALUES ('avg_price', 'hour', 'PJM', NULL, %s, %s, %s)",
            [(t, t.date(), 30.0 + i) for i, t in enumerate(hours)],
        )
        cur.executemany(
            "INSERT INTO gold.kpi_values VALUES ('pnl', 'hour', 'PJM', %s, %s, %s, %s)",
            [(org, t, t.date(), 1000.0 * (n + 1)) for n, org in enumerate(ORGS) for t in hours[:4]],
        )
        cur.executemany(
            """INSERT INTO gold.forecasts (zone, ts_utc, model, model_version, run_id, y_hat, q10, q50, q90,
                   lo80, hi80, lo95, hi95, target) VALUES ('PJM', %s, 'mstl', '1', 'fc1', %s, %s, %s, %s, %s,
                   %s, %s, %s, 'price')""",
            [(t, 30.0, 25.0, 30.0, 35.0, 26.0, 34.0, 22.0, 38.0) for t in hours[:24]],
        )
        for n, org in enumerate(ORGS):
            for problem in ("storage_dispatch", "bid_curves", "unit_commitment"):
                cur.execute(
                    """INSERT INTO ml.optimization_runs (run_id, org_id, problem, status, objective,
                           solve_time_s,
                           solver, options, inputs, outputs)
                       VALUES (%s, %s, %s, 'optimal', 100, 0.1, 'cp-sat', '{}', '{}', '{}')""",
                    (f"{problem}_{org}", org, problem),
                )
            cur.executemany(
                """INSERT INTO gold.storage_schedules (run_id, org_id, asset_id, interval_index,
                       interval_start,
                       interval_minutes, price, charge_mw, discharge_mw, net_mw, soc_mwh, revenue)
                   VALUES (%s, %s, %s, %s, %s, 60, 30, %s, 0, %s, 5, 0)""",
                [
                    (f"storage_dispatch_{org}", org, f"{org}_bat", i, t, 1.0 + n, -1.0 - n)
                    for i, t in enumerate(hours[:24])
                ],
            )
            cur.executemany(
                """INSERT INTO gold.bid_curves (run_id, org_id, zone, market, currency, asset_id,
                       asset_type, hour,
                       delivery_start, step, price, quantity_mw)
                   VALUES (%s, %s, 'PJM', 'DA', 'USD', %s, 'storage', 0, %s, %s, %s, 5)""",
                [(f"bid_curves_{org}", org, f"{org}_bat", hours[0], s, 10.0 * s) for s in range(3)],
            )
            cur.executemany(
                """INSERT INTO gold.unit_commitment (run_id, org_id, unit_id, hour, hour_start,
                       is_on, started,
                       output_mw, cost) VALUES (%s, %s, %s, %s, %s, true, false, 8, 80)""",
                [(f"unit_commitment_{org}", org, f"{org}_gen", h, t) for h, t in enumerate(hours[:6])],
            )
            cur.execute(
                """INSERT INTO ops.uploads (org_id, file_name, sha256, size_bytes, format, status, dataset,
                       rows_read, rows_landed, rows_quarantined, created_at)
                   VALUES (%s, 'prices.csv', %s, 100, 'csv', 'landed', 'prices', 48, 48, 0, %s)""",
                (org, f"sha_{org}", DAY0),
            )


@pytest.fixture(scope="session")
def api_database(database_url: str) -> str:
    from infra import db
    from serving_api import cli

    with db.connect(database_url) as conn:
        _seed(conn)
    for org in ORGS:
        for role in ROLES:
            cli.create_user(database_url, org, f"{role}@{org}.test", role, PASSWORD)
    return database_url


@pytest.fixture(scope="session")
def api_clickhouse_url(request) -> Iterator[str | None]:
    """A fresh ClickHouse database with the (empty) BI tables on the BI tests' session server, so the
    analytics endpoints answer; None when ClickHouse is not installed (they answer 503 then)."""
    from urllib.parse import urlsplit

    from clickhouse_driver import Client

    from ingestion.bi.clickhouse import ensure_clickhouse_schema

    try:
        server_url = request.getfixturevalue("clickhouse_url")
    except pytest.skip.Exception:
        yield None
        return
    name = f"api_{uuid.uuid4().hex[:10]}"
    admin = Client.from_url(server_url)
    admin.execute(f"CREATE DATABASE {name}")
    url = urlsplit(server_url)._replace(path=f"/{name}").geturl()
    client = Client.from_url(url)
    ensure_clickhouse_schema(client)
    client.disconnect()
    try:
        yield url
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.disconnect()


@pytest.fixture(scope="session")
def api_settings(settings, api_database, api_clickhouse_url, tmp_path_factory):
    """Settings of the app under test: this database, a home without a Dagster instance, and ClickHouse."""
    return settings.model_copy(
        update={
            "database_url": api_database,
            "home": tmp_path_factory.mktemp("api_home"),
            "clickhouse_url": api_clickhouse_url,
        }
    )


@pytest.fixture(scope="session")
def client(api_settings) -> Iterator[TestClient]:
    from serving_api.app import create_app
    from serving_api.state import ApiOptions

    app = create_app(
        api_settings,
        ApiOptions(
            ws_heartbeat_seconds=0.5,
            ws_queue_size=4,
            login_max_failures_per_ip=10_000,
            user_rate_limit_per_minute=100_000,
        ),
    )
    with TestClient(app) as c:
        yield c


_tokens: dict[tuple[str, str], dict] = {}


def login(client: TestClient, email: str, password: str = PASSWORD):
    return client.post("/api/v1/auth/token", data={"username": email, "password": password})


@pytest.fixture(scope="session")
def auth(client):
    """auth(org, role) -> headers with a bearer token of that user (one login per user per run)."""

    def headers(org: str = "org_a", role: str = "admin") -> dict[str, str]:
        if (org, role) not in _tokens:
            resp = login(client, f"{role}@{org}.test")
            assert resp.status_code == 200, resp.text
            _tokens[(org, role)] = resp.json()
        return {"Authorization": f"Bearer {_tokens[(org, role)]['access_token']}"}

    return headers


def window(day0: date | datetime = DAY0, days: int = 2) -> dict[str, str]:
    start = day0 if isinstance(day0, datetime) else datetime.combine(day0, datetime.min.time(), UTC)
    return {"from": start.isoformat(), "to": (start + timedelta(days=days)).isoformat()}
