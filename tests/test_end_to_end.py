"""The end-to-end slice: simulated market files and trading events -> bronze (Delta) -> silver (Spark) ->
gold (dbt, with blocking Great Expectations checks) -> the API, materialized layer by layer through the
Dagster instance (runs recorded as in the running platform; the automation itself is the soak test's)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import psycopg
import pytest
from fastapi.testclient import TestClient

from infra import db
from infra.dagster_instance import write_dagster_home
from ingestion.reference import seed_reference_data, simulated_zones
from ingestion.simulator.files import write_landing_files
from ingestion.simulator.market import simulate_market

PASSWORD = "End-to-end-Pa55word!"
DAYS = 2


@pytest.fixture(scope="module")
def database_url(database_url: str) -> Iterator[str]:
    """The slice's own database, exported the way `optibid services up` exports it to Dagster's processes."""
    from infra.settings import get_settings
    from tests.conftest import private_database

    shared = os.environ["OPTIBID_DATABASE_URL"]
    for url in private_database(database_url, "optibid_test_e2e"):
        os.environ["OPTIBID_DATABASE_URL"] = url
        get_settings.cache_clear()
        try:
            yield url
        finally:
            os.environ["OPTIBID_DATABASE_URL"] = shared
            get_settings.cache_clear()


@pytest.fixture(scope="module")
def pipeline_run(settings, database_url: str, broker_bootstrap: str) -> dict:
    """Simulate two days, produce trading events, and materialize reference..gold through Dagster."""
    from infra.services import kafka_security_config
    from ingestion.simulator.live import produce_simulated_trading

    os.environ["DAGSTER_HOME"] = str(write_dagster_home(settings))
    first = date.today() - timedelta(days=DAYS + 1)
    last = first + timedelta(days=DAYS - 1)
    zones = [z for z in simulated_zones() if z.zone in {"PJM", "ERCOT", "IEX_N"}]
    market = simulate_market(first, DAYS, zones=zones, nodes_per_zone=2, seed=7)
    landing = settings.resolved_landing_dir
    from ingestion.simulator.market import iter_market_days

    for day in iter_market_days(first, DAYS, zones=zones, nodes_per_zone=2, seed=7):
        write_landing_files(day, landing)
    produce_simulated_trading(broker_bootstrap, 400, 0, 7, False, kafka_security_config(settings))
    with db.connect(database_url) as conn:
        seed_reference_data(conn)
    materialize_layers(first, last, groups=("reference", "bronze", "silver", "gold"))
    return {"first": first, "last": last, "market": market, "zones": [z.zone for z in zones]}


def materialize_layers(first: date, last: date, groups: tuple[str, ...]) -> None:
    """Every asset of `groups`, group by group, in the instance of DAGSTER_HOME; partitioned assets over
    `first`..`last` in one run (their backfill policies are single-run)."""
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    job = defs.resolve_implicit_global_asset_job_def()
    instance = dg.DagsterInstance.get()
    for group in groups:
        keys = [
            k for k in graph.get_all_asset_keys() if graph.get(k).group_name == group and graph.get(k).is_materializable
        ]
        for partitioned in (False, True):
            selection = [k for k in keys if (graph.get(k).partitions_def is not None) == partitioned]
            if not selection:
                continue
            tags = (
                {"dagster/asset_partition_range_start": str(first), "dagster/asset_partition_range_end": str(last)}
                if partitioned
                else {}
            )
            result = job.execute_in_process(asset_selection=selection, instance=instance, tags=tags)
            assert result.success, f"materializing {group} failed"


def test_every_landed_file_was_accounted_for(pipeline_run: dict, settings, database_url: str) -> None:
    landing = settings.resolved_landing_dir
    assert not [p for p in landing.iterdir() if p.is_file()], "every landing file is processed and archived"
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT status, rows_read, rows_landed, rows_quarantined FROM ops.uploads WHERE org_id = 'market'"
        ).fetchall()
    assert rows and all(status == "landed" for status, *_ in rows), rows
    assert all(read == landed + quarantined for _, read, landed, quarantined in rows)
    expected = sum(
        len(getattr(pipeline_run["market"], f))
        for f in ("prices_hourly", "prices_5min", "load_hourly", "generation_hourly", "weather_hourly")
    )
    assert sum(r[2] for r in rows) == expected


def simulated_in_window(pipeline_run: dict) -> pd.DataFrame:
    """Simulated hourly prices whose market day (the zone's local date) lies in the materialized window:
    the first UTC hours of the window belong to the previous market day in the Americas, and are not built."""
    from ingestion.reference import ZONES_BY_CODE

    prices = pipeline_run["market"].prices_hourly.copy()
    prices["market_date"] = [
        ts.tz_convert(ZONES_BY_CODE[zone].timezone).date() for ts, zone in zip(prices.ts_utc, prices.zone, strict=True)
    ]
    return prices[(prices.market_date >= pipeline_run["first"]) & (prices.market_date <= pipeline_run["last"])]


def test_gold_hourly_prices_equal_the_simulated_prices(pipeline_run: dict, database_url: str) -> None:
    # IEX_N is on IST (+05:30): its hours start at :30 UTC in the simulator and in gold alike.
    simulated = simulated_in_window(pipeline_run)
    with psycopg.connect(database_url) as conn:
        gold = pd.DataFrame(
            conn.execute(
                """SELECT zone, ts_utc, price_avg FROM gold.fct_prices_hourly
                   WHERE market = 'DA' AND org_id IS NULL"""
            ).fetchall(),
            columns=["zone", "ts_utc", "price_avg"],
        )
    gold["ts_utc"] = pd.to_datetime(gold["ts_utc"], utc=True)
    merged = simulated.merge(gold, on=["zone", "ts_utc"], how="left")
    assert set(merged.zone) == {"PJM", "ERCOT", "IEX_N"}
    assert len(merged) > 100  # three zones, two market days, less the hours of neighbouring market days
    assert merged["price_avg"].notna().all(), "every simulated hour of the window reached gold"
    assert (merged["price"] - merged["price_avg"]).abs().max() < 1e-9


def test_kpis_and_trading_reach_gold(pipeline_run: dict, database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        kpis = dict(conn.execute("SELECT kpi_code, count(*) FROM gold.kpi_values GROUP BY 1").fetchall())
        bids = conn.execute("SELECT count(*) FROM silver.trading__bids").fetchone()[0]
    assert kpis.get("price_avg", 0) > 0 and bids > 0, (kpis, bids)


def test_the_api_serves_gold_prices(pipeline_run: dict, settings, database_url: str, tmp_path: Path) -> None:
    from serving_api import cli
    from serving_api.app import create_app

    email = "e2e-analyst@acme.example"
    with psycopg.connect(database_url) as conn:
        exists = conn.execute("SELECT 1 FROM ops.users WHERE email = %s", (email,)).fetchone()
    if not exists:
        cli.create_user(database_url, "acme", email, "analyst", PASSWORD)
    app = create_app(settings.model_copy(update={"database_url": database_url}))
    with TestClient(app) as client:
        token = client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD}).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        day = pipeline_run["first"].isoformat()
        next_day = (pipeline_run["first"] + timedelta(days=1)).isoformat()
        response = client.get(
            "/api/v1/prices",
            params={"zone": "PJM", "market": "DA", "from": f"{day}T00:00:00Z", "to": f"{next_day}T00:00:00Z"},
            headers=headers,
        )
    assert response.status_code == 200, response.text
    served = {pd.Timestamp(row["ts_utc"]): row["price_avg"] for row in response.json()["data"]}
    simulated = simulated_in_window(pipeline_run)
    pjm = simulated[(simulated.zone == "PJM") & (simulated.ts_utc.dt.date == pipeline_run["first"])]
    assert len(pjm) == 19, "PJM's market day starts at 05:00 UTC: 19 of the window's first UTC hours are in it"
    assert served == pytest.approx(dict(zip(pjm.ts_utc, pjm.price, strict=True)))
