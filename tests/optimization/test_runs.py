"""Run records: JSON round trip, re-solve reproducibility, and the frames loaded into the real tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from infra.db import connect
from ml.optimization import (
    BidCurveInput,
    PriceQuantile,
    RenewableGenerator,
    StorageAsset,
    StorageDispatchInput,
    ThermalUnit,
    UnitCommitmentInput,
    bid_curves_frame,
    optimization_runs_frame,
    record_result,
    resolve_run_record,
    run_record,
    solve,
    storage_schedules_frame,
    unit_commitment_frame,
)

START = datetime(2024, 3, 1, tzinfo=UTC)
STORAGE = StorageDispatchInput(
    asset=StorageAsset(asset_id="bess-1", power_mw=5, energy_mwh=10, round_trip_efficiency=0.88),
    price_forecast=[30, 25, -5, 20, 60, 90, 75, 40],
    start=START,
)
BIDS = BidCurveInput(
    zone="PJM",
    delivery_start=START,
    price_quantiles=[
        PriceQuantile(level=0.5, prices=[30, 45, 80, 20]),
        PriceQuantile(level=0.9, prices=[50, 70, 120, 35]),
    ],
    renewables=[RenewableGenerator(asset_id="wind-1", forecast_mw=[10, 12, 8, 5])],
    thermal=[ThermalUnit(unit_id="gt-1", min_output_mw=10, max_output_mw=40, marginal_cost=42)],
)
UC = UnitCommitmentInput(
    start=START,
    load_forecast_mw=[100, 160, 220, 130],
    reserve_fraction=0.1,
    units=[
        ThermalUnit(unit_id="a", min_output_mw=40, max_output_mw=150, marginal_cost=20, startup_cost=400),
        ThermalUnit(unit_id="b", min_output_mw=20, max_output_mw=120, marginal_cost=45, startup_cost=100),
    ],
)


@pytest.mark.parametrize("inp", [STORAGE, BIDS, UC], ids=["storage", "bids", "uc"])
def test_record_is_json_and_resolves_to_the_same_result(inp) -> None:
    result = solve(inp)
    record = json.loads(json.dumps(run_record(inp, result, org_id="org-a")))
    assert record["org_id"] == "org-a" and record["status"] == "optimal"
    again = resolve_run_record(record)
    stored = record_result(record)
    if record["problem"] == "bid_curves":
        assert [c.steps for c in again.curves] == [c.steps for c in stored.curves]
    else:
        assert again.info.objective == pytest.approx(record["objective"], rel=1e-9, abs=1e-9)
        assert again.info.objective == pytest.approx(stored.info.objective, rel=1e-9, abs=1e-9)


def test_frames_load_into_the_migrated_tables(optimization_db_url: str) -> None:
    records = [run_record(inp, solve(inp), org_id="org-a") for inp in (STORAGE, BIDS, UC)]
    frames = {
        "gold.storage_schedules": storage_schedules_frame(records[0]),
        "gold.bid_curves": bid_curves_frame(records[1]),
        "gold.unit_commitment": unit_commitment_frame(records[2]),
    }
    assert frames["gold.storage_schedules"]["interval_start"].iloc[1] == START.replace(hour=1)
    with connect(optimization_db_url) as conn:
        runs = optimization_runs_frame(records)
        _insert(conn, "ml.optimization_runs", runs, jsonb={"options", "inputs", "outputs"})
        for table, frame in frames.items():
            _insert(conn, table, frame)
        for table, frame in frames.items():
            count = conn.execute(f"SELECT count(*) FROM {table} WHERE org_id = 'org-a'").fetchone()[0]
            assert count == len(frame) > 0
        stored = conn.execute(
            "SELECT inputs FROM ml.optimization_runs WHERE run_id = %s", (records[0]["run_id"],)
        ).fetchone()[0]
    assert resolve_run_record(records[0] | {"inputs": stored}).info.objective == pytest.approx(
        records[0]["objective"]
    )


def _insert(conn, table: str, frame, jsonb: set[str] = frozenset()) -> None:
    cols = list(frame.columns)
    marks = ", ".join("%s::jsonb" if c in jsonb else "%s" for c in cols)
    rows = [
        tuple(None if v is None or (isinstance(v, float) and v != v) else v for v in row)
        for row in frame.astype(object).itertuples(index=False)
    ]
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", rows)
