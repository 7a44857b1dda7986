"""The optimization assets against the real warehouse: rows land per delivery day, runs are stored and
re-solvable, re-materializing replaces instead of duplicating, and a day without inputs fails loudly."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from assets import optimization as opt_assets
from assets.shared.resources import WarehouseResource
from infra.db import connect
from ingestion.reference import seed_reference_data
from ml.optimization import resolve_run_record
from ml.optimization.delivery_day import delivery_day_violations, delivery_hours, stored_run_record

DAY = date(2024, 3, 20)
PARTITION = DAY.isoformat()
ASSETS = [opt_assets.storage_schedules, opt_assets.bid_curves, opt_assets.unit_commitment]
CHECKS = [
    opt_assets.storage_schedules_feasible,
    opt_assets.bid_curves_conform,
    opt_assets.unit_commitment_feasible,
]
# Contract columns (docs/data_contracts.md, dbt marts); created here when dbt has not built them in this run.
FIXTURE_DDL = """
CREATE TABLE IF NOT EXISTS gold.fct_prices_hourly (zone text NOT NULL, ts_utc timestamptz NOT NULL,
    market_date date NOT NULL, market text NOT NULL, currency text NOT NULL, org_id text,
    price_avg double precision, price_min double precision, price_max double precision, n_obs integer);
CREATE TABLE IF NOT EXISTS gold.fct_load_hourly (zone text NOT NULL, ts_utc timestamptz NOT NULL,
    market_date date NOT NULL, org_id text, load_mw_avg double precision, load_mw_max double precision,
    n_obs integer);
CREATE TABLE IF NOT EXISTS gold.forecasts (zone text NOT NULL, ts_utc timestamptz NOT NULL,
    model text NOT NULL, model_version text, run_id text NOT NULL, target text NOT NULL,
    y_hat double precision, q10 double precision, q50 double precision, q90 double precision,
    lo80 double precision, hi80 double precision,
    lo95 double precision, hi95 double precision, created_at timestamptz DEFAULT now());
"""
RESULT_TABLES = {
    "storage_schedules": "gold.storage_schedules",
    "bid_curves": "gold.bid_curves",
    "unit_commitment": "gold.unit_commitment",
}


def _price(ts: datetime, zone_shift: float) -> float:
    # Cheap nights, expensive evenings, a little day-to-day variation: something a battery can trade.
    return 40 + zone_shift + 25 * math.sin(2 * math.pi * (ts.hour - 9) / 24) + (ts.day % 3)


@pytest.fixture(scope="module")
def warehouse(database_url: str) -> WarehouseResource:
    start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC) - timedelta(days=8)
    history = [start + timedelta(hours=h) for h in range(8 * 24)]
    with connect(database_url) as conn:
        seed_reference_data(conn)
        conn.execute(FIXTURE_DDL)
        conn.execute("DELETE FROM gold.fct_prices_hourly WHERE ts_utc >= %s AND ts_utc < %s", (start, DAY))
        conn.execute("DELETE FROM gold.fct_load_hourly WHERE ts_utc >= %s AND ts_utc < %s", (start, DAY))
        conn.execute("DELETE FROM gold.forecasts WHERE run_id = 'fc-test'")
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO gold.fct_prices_hourly (zone, ts_utc, market_date, market, currency, price_avg,
                       price_min, price_max, n_obs) VALUES (%s, %s, %s, 'DA', 'USD', %s, %s, %s, 12)""",
                [
                    (zone, t, t.date(), _price(t, shift), _price(t, shift) - 5, _price(t, shift) + 5)
                    for zone, shift in (("PJM", 0.0), ("ERCOT", 10.0))
                    for t in history
                ],
            )
            cur.executemany(
                """INSERT INTO gold.fct_load_hourly (zone, ts_utc, market_date, load_mw_avg, n_obs)
                   VALUES ('PJM', %s, %s, %s, 12)""",
                [(t, t.date(), 9000 + 3000 * math.sin(2 * math.pi * (t.hour - 10) / 24)) for t in history],
            )
            # CAISO has a stored price forecast for the day; the other zones fall back to weekly-naive.
            caiso = delivery_hours(DAY, "America/Los_Angeles")
            cur.executemany(
                """INSERT INTO gold.forecasts (zone, ts_utc, model, model_version, run_id, target, y_hat, q10,
                       q50, q90, lo80, hi80, lo95, hi95) VALUES ('CAISO', %s, 'mstl', '1', 'fc-test', 'price',
                       %s, %s, %s, %s, %s, %s, %s, %s)""",
                [
                    (t, p, p - 8, p, p + 8, p - 8, p + 8, p - 15, p + 15)
                    for t in caiso
                    for p in [_price(t.astimezone(UTC), -5.0)]
                ],
            )
    return WarehouseResource(database_url=database_url)


def _materialize(
    warehouse: WarehouseResource, partition: str = PARTITION, **kwargs
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*ASSETS, *CHECKS], partition_key=partition, resources={"warehouse": warehouse}, **kwargs
    )


def _metadata(result: dg.ExecuteInProcessResult, name: str) -> dict:
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(["gold", name])
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _day_counts(database_url: str) -> dict[str, int]:
    window = (datetime(2024, 3, 19, tzinfo=UTC), datetime(2024, 3, 22, tzinfo=UTC))
    time_col = {
        "storage_schedules": "interval_start",
        "bid_curves": "delivery_start",
        "unit_commitment": "hour_start",
    }
    with connect(database_url) as conn:
        return {
            name: conn.execute(
                f"SELECT count(*) FROM {table} WHERE {time_col[name]} >= %s AND {time_col[name]} < %s", window
            ).fetchone()[0]
            for name, table in RESULT_TABLES.items()
        }


def test_materialize_writes_results_runs_and_plot(warehouse: WarehouseResource, database_url: str) -> None:
    result = _materialize(warehouse)
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == {c.check_key.name for c in CHECKS}
    assert all(e.passed and e.metadata["runs_checked"].value >= 1 for e in checks.values())
    storage = _metadata(result, "storage_schedules")
    bids = _metadata(result, "bid_curves")
    uc = _metadata(result, "unit_commitment")

    # acme-bess-1 (CAISO) uses the stored forecast; volt-bess-1 (IEX_N) has no prices at all and is skipped.
    assert storage["forecast_sources"]["acme/acme-bess-1"]["price"] == "gold.forecasts:mstl@fc-test"
    assert "volt-bess-1" in storage["skipped"] and "IEX_N" in storage["skipped"]["volt-bess-1"]
    # Other test modules of the session may add organizations' assets; acme's are what this test seeded.
    assert storage["solver_status"] == {"optimal": storage["instances"]}
    assert storage["objective"] > 0  # the daily spread pays for the round-trip losses
    assert Path(storage["plot"]).is_file() and Path(storage["plot"]).stat().st_size > 1000
    assert Path(storage["plot"]).parent.name == PARTITION
    from infra.settings import get_settings

    assert storage["plot_url"] == get_settings().report_url(storage["plot"]) is not None
    assert storage["all_plots"] == f"{get_settings().portal_url}/browse/optimization"
    assert "| asset_id" in storage["preview"]

    # Bid curves for PJM (thermal) and ERCOT (wind) from weekly-naive prices, CAISO (solar) from forecasts.
    assert bids["forecast_sources"]["acme/PJM"]["price"] == "weekly_naive:gold.fct_prices_hourly"
    assert bids["forecast_sources"]["acme/CAISO"]["price"] == "gold.forecasts:mstl@fc-test"
    assert {k for k in bids["forecast_sources"] if k.startswith("acme/")} == {
        "acme/CAISO",
        "acme/ERCOT",
        "acme/PJM",
    }
    assert bids["forecast_source_summary"]["weekly_naive"] >= 2
    assert bids["forecast_source_summary"]["gold.forecasts"] >= 1
    assert uc["forecast_sources"]["acme/PJM"]["load"] == "weekly_naive:gold.fct_load_hourly"
    assert uc["solver_status"] == {"optimal": uc["instances"]}

    with connect(database_url) as conn:
        rows = conn.execute(
            "SELECT count(*), min(interval_start), max(interval_start) FROM gold.storage_schedules "
            "WHERE asset_id = 'acme-bess-1' AND run_id = ANY(%s)",
            (storage["run_ids"],),
        ).fetchone()
        # 2024-03-20 in Los Angeles (PDT, UTC−7): 24 hours from 07:00 UTC.
        assert rows[0] == 24 and rows[1] == datetime(2024, 3, 20, 7, tzinfo=UTC)
        uc_rows = conn.execute(
            "SELECT count(*), sum(output_mw) FILTER (WHERE hour = 0) FROM gold.unit_commitment "
            "WHERE unit_id = 'acme-gas-1' AND run_id = ANY(%s)",
            (uc["run_ids"],),
        ).fetchone()
        assert uc_rows[0] == 24 and uc_rows[1] > 0
        curves = conn.execute(
            "SELECT count(DISTINCT (asset_id, hour)) FROM gold.bid_curves "
            "WHERE org_id = 'acme' AND run_id = ANY(%s)",
            (bids["run_ids"],),
        ).fetchone()[0]
        assert curves == 3 * 24  # solar, wind, gas × 24 hours
        run_ids = storage["run_ids"] + bids["run_ids"] + uc["run_ids"]
        runs = conn.execute(
            "SELECT problem, status, org_id FROM ml.optimization_runs WHERE run_id = ANY(%s)", (run_ids,)
        ).fetchall()
    assert len(runs) == len(run_ids) >= 5 and sum(r[2] == "acme" for r in runs) == 5
    assert {r[1] for r in runs if r[0] != "bid_curves"} == {"optimal"}


def test_rematerializing_replaces_rows_and_stored_runs_resolve(
    warehouse: WarehouseResource, database_url: str
) -> None:
    first = _materialize(warehouse)
    before = _day_counts(database_url)
    with connect(database_url) as conn:
        runs_before = conn.execute("SELECT count(*) FROM ml.optimization_runs").fetchone()[0]
    second = _materialize(warehouse)
    assert second.success
    assert _day_counts(database_url) == before and min(before.values()) > 0
    with connect(database_url) as conn:
        runs_after = conn.execute("SELECT count(*) FROM ml.optimization_runs").fetchone()[0]
        # Every run is kept; only the day's results were replaced.
        assert runs_after == runs_before + sum(
            len(_metadata(second, name)["run_ids"]) for name in RESULT_TABLES
        )
        old = _metadata(first, "storage_schedules")["run_ids"]
        assert (
            conn.execute(
                "SELECT count(*) FROM gold.storage_schedules WHERE run_id = ANY(%s)", (old,)
            ).fetchone()[0]
            == 0
        )
        records = [
            stored_run_record(conn, run_id)
            for name in ("storage_schedules", "unit_commitment")
            for run_id in _metadata(second, name)["run_ids"]
        ]
    for record in records:
        again = resolve_run_record(record)
        assert again.info.objective == pytest.approx(record["objective"], rel=1e-6, abs=1e-6)


def test_day_without_inputs_fails_with_reason(warehouse: WarehouseResource) -> None:
    result = dg.materialize(
        [opt_assets.storage_schedules],
        partition_key="2024-01-05",
        resources={"warehouse": warehouse},
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "nothing to optimize for 2024-01-05" in str(failure.event_specific_data.error)


def test_check_fails_when_gold_rows_disagree_with_the_run(
    warehouse: WarehouseResource, database_url: str
) -> None:
    first = _materialize(warehouse)
    with connect(database_url) as conn:
        (run_id,) = conn.execute(
            "SELECT DISTINCT run_id FROM gold.storage_schedules "
            "WHERE asset_id = 'acme-bess-1' AND run_id = ANY(%s)",
            (_metadata(first, "storage_schedules")["run_ids"],),
        ).fetchone()
        conn.execute("DELETE FROM gold.storage_schedules WHERE run_id = %s AND interval_index = 5", (run_id,))
        # The blocking check's logic (a check-only partitioned run is not something dg.materialize does).
        checked, problems = delivery_day_violations(conn, "storage_dispatch", DAY)
    assert checked >= 1
    assert problems[run_id] == ["gold.storage_schedules holds 23 rows of this run, its record has 24"]
