"""Unit commitment: exact optima by enumeration, constraint checks, infeasibility diagnostics."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from ml.optimization import (
    SolveStatus,
    ThermalUnit,
    UnitCommitmentInput,
    solve_unit_commitment,
    unit_commitment_violations,
)

UNITS = [
    ThermalUnit(
        unit_id="base",
        min_output_mw=50,
        max_output_mw=150,
        marginal_cost=20,
        no_load_cost=100,
        startup_cost=500,
    ),
    ThermalUnit(
        unit_id="mid",
        min_output_mw=30,
        max_output_mw=100,
        marginal_cost=35,
        no_load_cost=50,
        startup_cost=300,
    ),
    ThermalUnit(unit_id="peak", min_output_mw=5, max_output_mw=60, marginal_cost=70, startup_cost=50),
]


def brute_force_cost(units: list[ThermalUnit], load: list[float], reserve: list[float]) -> float:
    """Cheapest cost over all 2^(units·hours) commitments, each dispatched in merit order."""
    best = float("inf")
    for plan in itertools.product((0, 1), repeat=len(units) * len(load)):
        on = [plan[i * len(load) : (i + 1) * len(load)] for i in range(len(units))]
        cost, ok = 0.0, True
        for t, demand in enumerate(load):
            live = [u for i, u in enumerate(units) if on[i][t]]
            if (
                sum(u.max_output_mw for u in live) < demand + reserve[t]
                or sum(u.min_output_mw for u in live) > demand
            ):
                ok = False
                break
            rest = demand - sum(u.min_output_mw for u in live)
            for u in sorted(live, key=lambda u: u.marginal_cost):
                extra = min(rest, u.max_output_mw - u.min_output_mw)
                cost += u.marginal_cost * (u.min_output_mw + extra) + u.no_load_cost
                rest -= extra
        if not ok:
            continue
        for i, u in enumerate(units):
            prev = int(u.initial_on)
            for t in range(len(load)):
                cost += u.startup_cost * (on[i][t] and not prev)
                prev = on[i][t]
        best = min(best, cost)
    return best


@pytest.mark.parametrize("load", [[120.0, 180.0, 260.0, 140.0], [60.0, 40.0, 240.0, 280.0]])
def test_small_instance_matches_enumeration(load: list[float]) -> None:
    inp = UnitCommitmentInput(load_forecast_mw=load, reserve_fraction=0.1, units=UNITS, horizon_hours=4)
    result = solve_unit_commitment(inp)
    assert result.info.status == SolveStatus.OPTIMAL
    assert unit_commitment_violations(inp, result) == []
    assert result.total_cost == pytest.approx(brute_force_cost(UNITS, load, inp.reserve()), rel=1e-6)
    assert result.info.objective == pytest.approx(result.total_cost, rel=1e-6)
    # With the commitment fixed, the load-balance dual is the marginal cost of the unit at the margin.
    for hour in result.system:
        assert hour.marginal_price in {0.0, 20.0, 35.0, 70.0} or hour.marginal_price == pytest.approx(20.0)


def test_min_up_down_and_ramps_are_respected() -> None:
    units = [
        ThermalUnit(
            unit_id="coal",
            min_output_mw=80,
            max_output_mw=300,
            marginal_cost=18,
            no_load_cost=300,
            startup_cost=5000,
            min_up_hours=6,
            min_down_hours=6,
            ramp_up_mw_per_h=60,
            ramp_down_mw_per_h=60,
            initial_on=True,
            initial_hours_in_state=2,
            initial_output_mw=150,
        ),
        ThermalUnit(
            unit_id="ccgt",
            min_output_mw=50,
            max_output_mw=200,
            marginal_cost=32,
            no_load_cost=150,
            startup_cost=1500,
            min_up_hours=3,
            min_down_hours=2,
            ramp_up_mw_per_h=100,
            ramp_down_mw_per_h=100,
        ),
        ThermalUnit(unit_id="ocgt", min_output_mw=10, max_output_mw=80, marginal_cost=80, startup_cost=100),
    ]
    load = [160, 150, 140, 180, 260, 330, 380, 400, 360, 300, 220, 170]
    inp = UnitCommitmentInput(load_forecast_mw=load, reserve_mw=[20.0] * 12, units=units)
    result = solve_unit_commitment(inp)
    assert result.info.status == SolveStatus.OPTIMAL
    assert unit_commitment_violations(inp, result) == []
    coal = [r for r in result.units if r.unit_id == "coal"]
    assert all(r.on for r in coal[:4])  # still inside its 6 h minimum up time


def test_capacity_shortfall_is_reported_with_the_hour() -> None:
    inp = UnitCommitmentInput(load_forecast_mw=[100.0, 400.0], reserve_fraction=0.05, units=UNITS)
    result = solve_unit_commitment(inp)
    assert result.info.status == SolveStatus.INFEASIBLE
    (diag,) = result.diagnostics
    assert (diag.constraint, diag.hour) == ("capacity", 1)
    assert diag.shortfall_mw == pytest.approx(400 + 20 - 310)
    assert "capacity 310.0 MW < load 400.0 + reserve 20.0 MW at hour 1" in diag.detail


def test_ramp_limits_from_the_initial_state_are_diagnosed() -> None:
    slow = ThermalUnit(
        unit_id="slow",
        min_output_mw=50,
        max_output_mw=400,
        marginal_cost=10,
        ramp_up_mw_per_h=50,
        ramp_down_mw_per_h=50,
        initial_on=True,
        initial_output_mw=100,
    )
    inp = UnitCommitmentInput(load_forecast_mw=[120.0, 300.0], units=[slow])
    result = solve_unit_commitment(inp)
    assert result.info.status == SolveStatus.INFEASIBLE
    assert [(d.constraint, d.hour) for d in result.diagnostics] == [("ramp_up", 0), ("ramp_up", 1)] or [
        (d.constraint, d.hour) for d in result.diagnostics
    ] == [("ramp_up", 1)]


def test_intertemporal_conflict_found_by_the_elastic_pass() -> None:
    # Each hour alone is feasible, but hour 0's low load caps the base unit for hour 1 through its ramp.
    units = [
        ThermalUnit(
            unit_id="base",
            min_output_mw=50,
            max_output_mw=200,
            marginal_cost=20,
            ramp_up_mw_per_h=80,
            ramp_down_mw_per_h=80,
            initial_on=True,
            initial_output_mw=100,
            min_up_hours=4,
        ),
        ThermalUnit(unit_id="peak", min_output_mw=10, max_output_mw=100, marginal_cost=60),
    ]
    result = solve_unit_commitment(UnitCommitmentInput(load_forecast_mw=[100.0, 290.0], units=units))
    assert result.info.status == SolveStatus.INFEASIBLE
    assert [(d.constraint, d.hour, round(d.shortfall_mw, 6)) for d in result.diagnostics] == [
        ("load_balance", 1, 10.0)
    ]


def test_must_run_minimum_above_load_is_diagnosed() -> None:
    stuck = ThermalUnit(
        unit_id="nuke",
        min_output_mw=500,
        max_output_mw=1000,
        marginal_cost=5,
        min_up_hours=24,
        initial_on=True,
        initial_hours_in_state=1,
        initial_output_mw=600,
    )
    result = solve_unit_commitment(UnitCommitmentInput(load_forecast_mw=[700.0, 300.0], units=[stuck]))
    assert [(d.constraint, d.hour) for d in result.diagnostics] == [("min_output", 1)]


def test_validation_errors() -> None:
    with pytest.raises(ValidationError, match="horizon mismatch"):
        UnitCommitmentInput(load_forecast_mw=[1.0] * 5, horizon_hours=6, units=UNITS)
    with pytest.raises(ValidationError, match="load_forecast_mw is negative"):
        UnitCommitmentInput(load_forecast_mw=[1.0, -5.0], units=UNITS)
    with pytest.raises(ValidationError, match="unit_id repeated"):
        UnitCommitmentInput(load_forecast_mw=[1.0], units=UNITS + UNITS[:1])
    with pytest.raises(ValidationError, match="initial_output_mw"):
        ThermalUnit(
            unit_id="u",
            min_output_mw=10,
            max_output_mw=20,
            marginal_cost=1,
            initial_on=True,
            initial_output_mw=50,
        )
