"""The ML assets against the real warehouse (migrated Postgres), real MLflow (SQLite) and real Evidently.

Fixture: 50 days of synthetic hourly prices and load for two zones (daily/weekly shape + AR noise, price
driven by load) in July-August 2024, with a price spike injected on the anomaly day.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from assets import forecasting as ml_assets
from assets.shared.resources import MlflowResource, WarehouseResource
from infra.db import connect
from ingestion.reference import seed_reference_data

ZONES = {"NYISO": "America/New_York", "IEX_N": "Asia/Kolkata"}
FIRST_DAY = date(2024, 7, 1)
N_DAYS = 50
DELIVERY_DAY = date(2024, 8, 20)  # the day after the last day of data
SPIKE_DAY = date(2024, 8, 10)
FIXTURE_DDL = """
CREATE TABLE IF NOT EXISTS gold.fct_prices_hourly (zone text NOT NULL, ts_utc timestamptz NOT NULL,
    market_date date NOT NULL, market text NOT NULL, currency text NOT NULL, org_id text,
    price_avg double precision, price_min double precision, price_max double precision, n_obs integer);
CREATE TABLE IF NOT EXISTS gold.fct_load_hourly (zone text NOT NULL, ts_utc timestamptz NOT NULL,
    market_date date NOT NULL, org_id text, load_mw_avg double precision, load_mw_max double precision,
    n_obs integer);
"""


def synthetic_facts(zone: str, tz: str, seed: int) -> tuple[pd.DataFrame, pd.Timestamp]:
    """Hourly load and price for N_DAYS local days of `zone`; the spike hour on SPIKE_DAY."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp(FIRST_DAY).tz_localize(tz).tz_convert("UTC")
    end = (pd.Timestamp(FIRST_DAY) + pd.Timedelta(days=N_DAYS)).tz_localize(tz).tz_convert("UTC")
    ts = pd.date_range(start, end, freq="h", inclusive="left")
    local = ts.tz_convert(tz)
    hour, dow = local.hour.to_numpy(), local.dayofweek.to_numpy()
    load = 10_000 + 2_500 * np.sin(2 * np.pi * (hour - 8) / 24) - 800 * (dow >= 5) + rng.normal(0, 150, len(ts))
    noise = np.zeros(len(ts))
    for i in range(1, len(ts)):
        noise[i] = 0.5 * noise[i - 1] + rng.normal(0, 2.0)
    price = 10 + 0.004 * load + 6 * np.sin(2 * np.pi * (hour - 17) / 24) + noise
    spike = pd.Timestamp(SPIKE_DAY).tz_localize(tz).tz_convert("UTC") + pd.Timedelta(hours=14)
    price[ts == spike] += 150.0
    frame = pd.DataFrame({"zone": zone, "ts_utc": ts, "market_date": local.date, "price": price, "load": load})
    return frame, spike


@pytest.fixture(scope="module")
def seeded(database_url: str) -> dict[str, pd.Timestamp]:
    spikes = {}
    with connect(database_url) as conn:
        seed_reference_data(conn)
        conn.execute(FIXTURE_DDL)
        for n, (zone, tz) in enumerate(ZONES.items()):
            frame, spikes[zone] = synthetic_facts(zone, tz, seed=n + 3)
            for table in ("gold.fct_prices_hourly", "gold.fct_load_hourly"):
                conn.execute(f"DELETE FROM {table} WHERE zone = %s", (zone,))
            with conn.cursor() as cur:
                cur.executemany(
                    """INSERT INTO gold.fct_prices_hourly (zone, ts_utc, market_date, market, currency,
                           price_avg, n_obs) VALUES (%s, %s, %s, 'DA', 'USD', %s, 1)""",
                    list(frame[["zone", "ts_utc", "market_date", "price"]].itertuples(index=False)),
                )
                # A real-time market alongside must not leak into the day-ahead series.
                cur.executemany(
                    """INSERT INTO gold.fct_prices_hourly (zone, ts_utc, market_date, market, currency,
                           price_avg, n_obs) VALUES (%s, %s, %s, 'RT', 'USD', %s, 1)""",
                    [
                        (z, t, d, 9999.0)
                        for z, t, d in frame[["zone", "ts_utc", "market_date"]].head(48).itertuples(index=False)
                    ],
                )
                cur.executemany(
                    """INSERT INTO gold.fct_load_hourly (zone, ts_utc, market_date, load_mw_avg, n_obs)
                       VALUES (%s, %s, %s, %s, 1)""",
                    list(frame[["zone", "ts_utc", "market_date", "load"]].itertuples(index=False)),
                )
    yield spikes
    with connect(database_url) as conn:
        for table in (
            "gold.fct_prices_hourly",
            "gold.fct_load_hourly",
            "gold.forecasts",
            "gold.anomalies",
            "ml.backtests",
            "ml.model_selection",
        ):
            conn.execute(f"DELETE FROM {table} WHERE zone = ANY(%s)", (list(ZONES),))


@pytest.fixture(scope="module")
def warehouse(database_url: str) -> WarehouseResource:
    return WarehouseResource(database_url=database_url)


def _forecast_rows(database_url: str) -> pd.DataFrame:
    with connect(database_url) as conn:
        rows = conn.execute(
            """SELECT zone, target, ts_utc, model, run_id, y_hat, lo95, lo80, q50, hi80, hi95, delivery_date
               FROM gold.forecasts WHERE zone = ANY(%s) AND delivery_date = %s""",
            (list(ZONES), DELIVERY_DAY),
        ).fetchall()
    cols = [
        "zone",
        "target",
        "ts_utc",
        "model",
        "run_id",
        "y_hat",
        "lo95",
        "lo80",
        "q50",
        "hi80",
        "hi95",
        "dd",
    ]
    return pd.DataFrame(rows, columns=cols)


def test_forecasts_per_zone_and_target_idempotent(seeded, warehouse, database_url: str, settings) -> None:
    config = {"ops": {"gold__forecasts": {"config": {"calibration_days": 2}}}}
    result = dg.materialize(
        [ml_assets.forecasts],
        partition_key=DELIVERY_DAY.isoformat(),
        resources={"warehouse": warehouse},
        run_config=config,
    )
    assert result.success
    rows = _forecast_rows(database_url)
    assert len(rows) == 24 * len(ZONES) * 2
    assert set(rows.groupby(["zone", "target"]).size()) == {24}
    for zone, tz in ZONES.items():
        expected = pd.date_range(pd.Timestamp(DELIVERY_DAY).tz_localize(tz), periods=24, freq="h")
        got = pd.DatetimeIndex(rows.loc[(rows["zone"] == zone) & (rows["target"] == "price"), "ts_utc"])
        assert sorted(got.tz_convert("UTC")) == list(expected.tz_convert("UTC"))
    assert rows[["y_hat", "lo95", "hi95"]].notna().all().all()
    assert (
        (rows["lo95"] <= rows["lo80"])
        & (rows["lo80"] <= rows["q50"])
        & (rows["q50"] <= rows["hi80"])
        & (rows["hi80"] <= rows["hi95"])
    ).all()
    # 49 days of history: enough for the production LEAR + DNN ensemble (with load as a price feature).
    assert set(rows["model"]) == {"ensemble"}
    price = rows[rows["target"] == "price"]
    assert price["y_hat"].between(20, 120).all()  # the 9999 RT rows never reached the model
    meta = result.asset_materializations_for_node("gold__forecasts")[0].metadata
    assert Path(meta["plot"].value).exists()
    assert meta["zones"].value == sorted(ZONES)
    # One click from the Dagster UI to the plot, served by the landing page (app/portal.py).
    assert meta["plot_url"].value == settings.report_url(meta["plot"].value)
    assert meta["plot_url"].value.startswith(f"{settings.portal_url}/reports/forecasts/{DELIVERY_DAY}/")

    again = dg.materialize(
        [ml_assets.forecasts],
        partition_key=DELIVERY_DAY.isoformat(),
        resources={"warehouse": warehouse},
        run_config=config,
    )
    rerun = _forecast_rows(database_url)
    assert len(rerun) == len(rows)
    assert set(rerun["run_id"]) == {again.run_id}


def _selections(database_url: str, run_id: str) -> tuple[dict[str, str], dict[str, tuple[list, dict]]]:
    """zone -> chosen model, and zone -> (candidate models, metrics) of one backtests run."""
    with connect(database_url) as conn:
        chosen = dict(
            conn.execute("SELECT zone, model FROM ml.model_selection WHERE backtest_run_id = %s", (run_id,)).fetchall()
        )
        rows = conn.execute("SELECT zone, models, metrics FROM ml.backtests WHERE run_id = %s", (run_id,)).fetchall()
    return chosen, {zone: (models, metrics) for zone, models, metrics in rows}


def _published(database_url: str, zones: list[str]) -> dict[str, set[tuple[str, str]]]:
    """zone -> {(model, model_version)} of the price rows published for DELIVERY_DAY."""
    with connect(database_url) as conn:
        rows = conn.execute(
            """SELECT zone, model, model_version FROM gold.forecasts
               WHERE zone = ANY(%s) AND delivery_date = %s AND target = 'price'""",
            (zones, DELIVERY_DAY),
        ).fetchall()
    out: dict[str, set[tuple[str, str]]] = {}
    for zone, model, version in rows:
        out.setdefault(zone, set()).add((model, version))
    return out


def _forecast_price(warehouse: WarehouseResource, zones: list[str]) -> dg.ExecuteInJobResult:
    config = {"calibration_days": 1, "targets": ["price"], "zones": zones}
    result = dg.materialize(
        [ml_assets.forecasts],
        partition_key=DELIVERY_DAY.isoformat(),
        resources={"warehouse": warehouse},
        run_config={"ops": {"gold__forecasts": {"config": config}}},
    )
    assert result.success
    return result


def test_backtests_keep_the_production_ensemble_unless_beaten(
    seeded, warehouse, database_url: str, tmp_path: Path
) -> None:
    """The LEAR + DNN ensemble is always a candidate; a single model that does not beat it leaves it champion."""
    from ml.forecasting.tracking import champion_version

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    config = {"days": 2, "warmup_days": 1, "models": ["seasonal_naive"], "zones": list(ZONES)}
    result = dg.materialize(
        [ml_assets.backtests],
        resources={"warehouse": warehouse, "mlflow": MlflowResource(tracking_uri=uri)},
        run_config={"ops": {"ml__backtests": {"config": config}}},
    )
    assert result.success
    meta = result.asset_materializations_for_node("ml__backtests")[0].metadata
    assert meta["skipped"].value == {}, meta["skipped"].value
    assert meta["candidates"].value == {f"{z}/price": ["ensemble", "seasonal_naive"] for z in ZONES}
    from mlflow.tracking import MlflowClient

    from infra.settings import get_settings

    # Each zone's MLflow run, linked from the materialization to its page in the MLflow UI.
    experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name("optibid-forecasting").experiment_id
    run_ids = {r.data.tags["zone"]: r.info.run_id for r in MlflowClient(tracking_uri=uri).search_runs([experiment])}
    for zone in ZONES:
        link = meta[f"mlflow_run {zone}/price"].value
        assert link == get_settings().mlflow_run_url(experiment, run_ids[zone]), link
    chosen, backtests = _selections(database_url, result.run_id)
    assert set(backtests) == set(ZONES)
    for zone, (models, metrics) in backtests.items():
        assert models == ["ensemble", "seasonal_naive"]
        # Same origins, same hours: both were scored on the 2 days' rows.
        assert metrics["ensemble"]["n"] == metrics["seasonal_naive"]["n"] == 48
        assert metrics["ensemble"]["mae"] < metrics["seasonal_naive"]["mae"], metrics
        assert chosen[zone] == "ensemble"
        assert champion_version(zone, uri) == "1"

    forecast = _forecast_price(warehouse, list(ZONES))
    published = _published(database_url, list(ZONES))
    assert set(published) == set(ZONES)
    for rows in published.values():
        ((model, version),) = rows  # one model per zone, and it is the production ensemble
        assert model == "ensemble" and version.startswith("ensemble-") and version.endswith("@registry-v1")
    summary = forecast.asset_materializations_for_node("gold__forecasts")[0].metadata["forecasts"].value
    assert "champion" in summary


PERIODIC_ZONE = "ERCOT"  # a seeded zone (America/Chicago), free in the module's data


@pytest.fixture()
def periodic_zone(seeded, database_url: str) -> Iterator[str]:
    """PERIODIC_ZONE with a price that repeats exactly every week: the weekly naive forecast is perfect."""
    tz = "America/Chicago"
    start = pd.Timestamp(FIRST_DAY).tz_localize(tz).tz_convert("UTC")
    ts = pd.date_range(start, periods=N_DAYS * 24, freq="h")
    hour = np.arange(len(ts))
    price = 40 + 15 * np.sin(2 * np.pi * hour / 24) + 5 * np.cos(2 * np.pi * hour / 168) + (hour % 168 == 30) * 20
    local_days = ts.tz_convert(tz).date
    tables = ("gold.fct_prices_hourly", "gold.forecasts", "ml.backtests", "ml.model_selection")
    with connect(database_url) as conn:
        for table in tables:
            conn.execute(f"DELETE FROM {table} WHERE zone = %s", (PERIODIC_ZONE,))
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO gold.fct_prices_hourly (zone, ts_utc, market_date, market, currency, price_avg,
                       n_obs) VALUES (%s, %s, %s, 'DA', 'USD', %s, 1)""",
                [(PERIODIC_ZONE, t, d, float(p)) for t, d, p in zip(ts, local_days, price, strict=True)],
            )
    yield PERIODIC_ZONE
    with connect(database_url) as conn:
        for table in tables:
            conn.execute(f"DELETE FROM {table} WHERE zone = %s", (PERIODIC_ZONE,))


def test_a_model_that_beats_the_ensemble_replaces_it(
    periodic_zone: str, warehouse, database_url: str, tmp_path: Path
) -> None:
    from ml.forecasting.tracking import champion_version

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    config = {"days": 2, "warmup_days": 1, "models": ["lear", "seasonal_naive"], "zones": [periodic_zone]}
    result = dg.materialize(
        [ml_assets.backtests],
        resources={"warehouse": warehouse, "mlflow": MlflowResource(tracking_uri=uri)},
        run_config={"ops": {"ml__backtests": {"config": config}}},
    )
    assert result.success
    chosen, backtests = _selections(database_url, result.run_id)
    models, metrics = backtests[periodic_zone]
    assert models == ["ensemble", "LEAR", "seasonal_naive"]  # LEAR is the production member itself
    assert metrics["seasonal_naive"]["mae"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["ensemble"]["mae"] > 0
    assert chosen == {periodic_zone: "seasonal_naive"}
    assert champion_version(periodic_zone, uri) == "1"

    _forecast_price(warehouse, [periodic_zone])
    ((model, version),) = _published(database_url, [periodic_zone])[periodic_zone]
    assert model == "seasonal_naive"
    assert version.startswith("seasonal_naive-") and version.endswith("@registry-v1")


def test_drift_report_and_check(seeded, warehouse, settings, database_url: str) -> None:
    for _ in range(2):  # a re-run of the same window replaces its summaries
        result = dg.materialize(
            [ml_assets.drift_report, ml_assets.drift_share_below_threshold],
            resources={"warehouse": warehouse},
            run_config={"ops": {"ml__drift_report": {"config": {"current_days": 7, "reference_days": 14}}}},
        )
        assert result.success
    meta = result.asset_materializations_for_node("ml__drift_report")[0].metadata
    reports = [Path(p) for p in meta["reports"].value]
    assert len(reports) >= len(ZONES) and all(p.exists() and p.stat().st_size > 10_000 for p in reports)
    assert set(ZONES) <= set(meta["drift_share"].value)
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 1 and checks[0].severity == dg.AssetCheckSeverity.WARN
    assert checks[0].metadata["zones_checked"].value >= len(ZONES)
    # The summaries the API serves (GET /drift) are the ones the report computed, once per window and zone.
    with connect(database_url) as conn:
        stored = conn.execute(
            """SELECT zone, drift_share, current_end - current_start, current_start - reference_start
               FROM ml.drift_summaries"""
        ).fetchall()
    shares = meta["drift_share"].value
    assert {z for z, *_ in stored} == set(shares) and len(stored) == len(shares)
    for zone, share, current, reference in stored:
        assert share == pytest.approx(shares[zone])
        assert (current.days, reference.days) == (7, 14)
    # The zones' report pages on the landing page, and the check's link to the most drifted zone's report.
    urls = meta["report_urls"].value
    assert set(ZONES) <= set(urls)
    assert all(url.startswith(f"{settings.portal_url}/reports/drift/") for url in urls.values())
    zone = next(iter(ZONES))
    assert meta[f"report {zone}"].value == urls[zone]
    assert checks[0].metadata["report"].value == urls[max(shares, key=shares.get)]


def test_anomalies_find_the_injected_spike_idempotently(seeded, warehouse, database_url: str) -> None:
    for _ in range(2):
        result = dg.materialize(
            [ml_assets.anomalies], partition_key=SPIKE_DAY.isoformat(), resources={"warehouse": warehouse}
        )
        assert result.success
    with connect(database_url) as conn:
        rows = conn.execute(
            """SELECT zone, ts_utc, target, kind, score FROM gold.anomalies
               WHERE market_date = %s AND zone = ANY(%s)""",
            (SPIKE_DAY, list(ZONES)),
        ).fetchall()
    spikes = {(z, pd.Timestamp(t)) for z, t, target, kind, _ in rows if target == "price" and kind == "spike"}
    for zone, ts in seeded.items():
        assert (zone, ts) in spikes
    assert len(rows) == len(set((z, t, tg, k) for z, t, tg, k, _ in rows))
